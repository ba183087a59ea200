"""Read-through caching: an in-process L1 in front of a shared Redis L2."""
