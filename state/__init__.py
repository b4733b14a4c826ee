"""The Redis state store: series codec, atomic merge with offsets, emission reads, expiry."""
