"""Realistic multi-service trace traffic for the dev stack, tests and benchmarks."""
