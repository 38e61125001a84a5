"""Pure edge logic: decisions and sync planning over values, no I/O."""
