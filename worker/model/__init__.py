"""Pure types shared by every layer: series identity, deltas, descriptors, values, errors.

No I/O, and no imports of other project modules."""
