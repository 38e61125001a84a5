"""onecard-edge: the per-site daemon that serves terminals from a local SQLite replica."""
