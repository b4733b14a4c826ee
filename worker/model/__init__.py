"""Pure types shared by every layer (series, deltas, descriptors, values, errors); imports nothing else."""
