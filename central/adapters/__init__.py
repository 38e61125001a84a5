"""Central adapters, one module per technology (sqlite, postgres, mqtt)."""
