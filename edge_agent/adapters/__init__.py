"""Edge adapters, one module per technology (sqlite, mqtt, tcp, serial, osdp, pcsc)."""
