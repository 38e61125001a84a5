"""Firmware simulators: terminals, a virtual PC/SC card, a load generator and the demo."""
