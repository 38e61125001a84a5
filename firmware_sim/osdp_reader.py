"""A simulated OSDP door reader: a libosdp PeripheralDevice on one end of a serial line.

What the tests and ``bench/osdp_taps.py`` put on the reader's end of a pty pair, opposite
the edge's control panel: it presents cards, reports tamper, and records every command it
receives (relay, LED, buzzer) with the ``perf_counter()`` of its arrival.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

import osdp  # type: ignore[import-untyped]

from edge_agent.adapters.osdp_link import SerialChannel

#: A real reader's capabilities: a relay, an LED, a buzzer, card data, secure channel.
CAPS = osdp.PDCapabilities(
    [
        (osdp.Capability.OutputControl, 1, 1),
        (osdp.Capability.LEDControl, 1, 1),
        (osdp.Capability.AudibleControl, 1, 1),
        (osdp.Capability.CardDataFormat, 1, 1),
        (osdp.Capability.CommunicationSecurity, 1, 1),
    ]
)


class _FastPD(osdp.PeripheralDevice):  # type: ignore[misc]
    """A PD whose refresh loop runs every 1 ms, like a reader's firmware (libosdp's default
    thread sleeps longer, which would be counted as the edge's latency)."""

    @staticmethod
    def refresh(event: threading.Event, lock: threading.Lock, ctx: Any) -> None:
        while not event.is_set():
            with lock:
                ctx.refresh()
            time.sleep(0.001)


class SimulatedReader:
    """The reader. ``key`` None: a new reader in its install mode (one session on SCBK-D)."""

    def __init__(self, path: Path, address: int, key: bytes | None, *, fast: bool = False) -> None:
        self.channel = SerialChannel(str(path))
        #: (perf_counter() at arrival, command) for every command received.
        self.commands: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        flag = osdp.LibFlag.EnforceSecure if key else osdp.LibFlag.InstallMode
        info = osdp.PDInfo(address, self.channel, scbk=key, flags=[flag])
        device = _FastPD if fast else osdp.PeripheralDevice
        self.pd = device(info, CAPS, log_level=osdp.LogLevel.Warning, command_handler=self._on)
        self.pd.start()
        self.running = True

    def _on(self, command: dict[str, Any]) -> tuple[int, None]:
        self.commands.put((time.perf_counter(), command))
        return 0, None

    def present(self, uid: str) -> float:
        """A card held to the reader (its UID as raw card data, whole bytes); returns the
        ``perf_counter()`` at which the read was submitted."""
        data = bytes.fromhex(uid)
        event = {
            "event": osdp.Event.CardRead,
            "reader_no": 0,
            "direction": 0,
            "format": osdp.CardFormat.Unspecified,
            "length": len(data) * 8,
            "data": data,
        }
        started = time.perf_counter()
        if not self.pd.submit_event(event):
            raise RuntimeError("the PD refused the card-read event")
        return started

    def tamper(self) -> None:
        """The reader's tamper switch opens."""
        report = {
            "event": osdp.Event.Status,
            "type": osdp.StatusReportType.Local,
            "nr_entries": 2,
            "report": b"\x01\x00",
        }
        if not self.pd.submit_event(report):
            raise RuntimeError("the PD refused the status report")

    def unplug(self) -> None:
        """Disconnected from the bus: it answers nothing any more."""
        if self.running:
            self.running = False
            self.pd.teardown()
            self.channel.close()
