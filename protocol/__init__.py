"""onecard's wire formats: MQTT topics and payloads, and the edge ⇄ terminal frame protocol.

Pure data and codecs. Nothing in this package does I/O or imports asyncio, so every codec
can be tested byte for byte and reused by the edge, central and the simulators alike.
"""
