"""OSDP door readers on an RS-485 bus: the edge as the bus's OSDP Control Panel (libosdp).

One :class:`OsdpPanel` per serial port owns one libosdp control panel for every reader
(Peripheral Device, PD) configured on that port. libosdp is driven by a refresh thread of its
own (:class:`Refresher`): it wakes when bytes arrive on the port, when a command was
queued, or at least every 10 ms (libosdp needs a refresh every 50 ms). libosdp
calls our event callback on that thread; the callback only hops into the event loop with
``loop.call_soon_threadsafe`` — every decision and every record happens on the loop.

A card read becomes a ``msg.Tap`` for the reader's registered ``door`` terminal and goes
through :meth:`edge_agent.site.Site.handle` unchanged, so the record is committed before the
reader is told anything (brief, invariant 1). Only then are the commands queued: granted →
relay (output 0) pulsed for the door's open time, LED green, a short beep; refused → LED
flashing red and three beeps. OSDP readers have no record numbers of their own: the panel
allocates one per reader, continuing from the highest in ``terminal_txns`` at start, so
dedup and the outbox see the same shape as for our own terminals.

Secure channel: each reader's SCBK comes from a key file; the panel sets libosdp's
``ENFORCE_SECURE`` so SCBK-D is never used and a reader is never re-keyed by the daemon. A
reader with ``install_mode = true`` runs without its key (loudly logged) — only during
provisioning (docs/hardware.md, ``onecard-edge osdp provision``).

Link supervision: libosdp reports a reader online/offline as notifications; they become
``online`` / ``offline`` terminal events, and a reader that answers but keeps failing the
handshake (wrong SCBK, a swapped reader) an ``auth_failed`` one. An offline reader is parked
by libosdp for minutes, so the panel re-enables it itself with a backoff
(:data:`RETRY_MIN_S` … :data:`RETRY_MAX_S`): a reader that drops and returns comes back on
its own. A vanished serial port (a USB adapter pulled) is reopened by
:class:`~edge_agent.adapters.osdp_link.SerialChannel`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import osdp  # type: ignore[import-untyped]
import osdp_sys  # type: ignore[import-not-found]
import structlog

from edge_agent.adapters.osdp_link import (
    NOTE_PD,
    NOTE_SC,
    OsdpError,
    Refresher,
    SerialChannel,
    card_uid,
    deny_commands,
    grant_commands,
    pd_info,
    read_scbk,
)
from protocol import terminal as msg

if TYPE_CHECKING:
    from edge_agent.adapters.sqlite_store import EdgeStore
    from edge_agent.adapters.terminal_server import TerminalIdentity
    from edge_agent.config import OsdpReaderConfig

log = structlog.get_logger("edge.osdp")

#: Backoff between attempts to bring an offline reader back.
RETRY_MIN_S = 2.0
RETRY_MAX_S = 30.0
#: How long after the panel starts a reader may take for its first handshake.
FIRST_CONTACT_S = 5.0
#: Card reads (and reader events) waiting for a decision, per reader. A full queue drops the
#: new read: a reader flooding the bus is broken, and a cardholder simply presents again.
QUEUE_SIZE = 64
#: A stopping panel lets the decision in hand finish, and its commands leave, within this.
DRAIN_TIMEOUT_S = 5.0
#: Default door open time when neither the reader's config nor the door says otherwise.
DEFAULT_OPEN_MS = 3000
#: A connection attempt that fails this soon failed in the handshake (an absent reader takes
#: libosdp ~8 s of probing); this many such failures in a row: the reader refuses our key.
FAST_FAILURE_S = 2.0
AUTH_FAILURES = 3

ReaderEvent = Literal["online", "offline", "auth_failed", "tamper", "power_fail", "reader_fault"]


@dataclass(frozen=True, slots=True)
class _CardRead:
    """A card read to decide."""

    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _LinkChange:
    """The link to the reader changed: recorded by the site, no record number."""

    event: ReaderEvent
    detail: str


@dataclass(frozen=True, slots=True)
class _ReaderReport:
    """Something the reader reported (tamper, power): a terminal EVENT with a record number."""

    event: msg.EventName
    detail: str


_Work = _CardRead | _LinkChange | _ReaderReport


class ReaderSite(Protocol):
    """What the panel needs from the site (implemented by ``edge_agent.site.Site``)."""

    def terminal(self, terminal_id: str) -> TerminalIdentity | None:
        """The registered terminal with this id, or None."""

    async def handle(self, terminal: Any, body: msg.Body) -> msg.Body:
        """Decide and durably record ``body``; return the reply (see ``SiteHandler``)."""

    async def dead_letter(self, source: str, reason: str, payload: bytes) -> None:
        """Keep something a peer sent that could not be accepted."""

    async def record_event(
        self, terminal_id: str, event: ReaderEvent, *, door: str | None = None, detail: str = ""
    ) -> None:
        """Record an event the edge saw itself at one of its terminals (no record number)."""


# -- the panel ---------------------------------------------------------------------------------


@dataclass
class Reader:
    """One configured reader (PD) on the bus, and what the panel knows about its link."""

    config: OsdpReaderConfig
    index: int
    scbk: bytes | None
    queue: asyncio.Queue[_Work | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    online: bool = False
    sc_active: bool = False
    #: While the panel itself disables the reader (a reconnect): its notifications are ours.
    disabling: bool = False
    attempt_started: float = 0.0
    fast_failures: int = 0
    auth_failed_noted: bool = False
    retry_at: float = 0.0
    backoff_s: float = RETRY_MIN_S
    last_rec: int = 0
    tamper: bool = False
    power_fail: bool = False
    dropped: int = 0
    #: perf_counter() of the last card read's arrival and of its commands' submission.
    last_read_at: float = 0.0
    last_commands_at: float = 0.0

    @property
    def terminal_id(self) -> str:
        return self.config.terminal


@dataclass
class OsdpPanel:
    """The control panel of one RS-485 bus (one serial port) and its readers."""

    port: str
    readers: list[OsdpReaderConfig]
    site: ReaderSite
    store: EdgeStore
    baud: int = 9600
    _readers: list[Reader] = field(default_factory=list)
    _refresher: Refresher | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _accepting: bool = False

    # -- public -----------------------------------------------------------------------------

    def online(self, terminal_id: str) -> bool:
        """True while the reader of this terminal is online over a secure channel (or, in
        install mode, online at all)."""
        reader = self._reader(terminal_id)
        return reader is not None and reader.online

    def stop(self) -> None:
        """Ask :meth:`run` to finish (idempotent)."""
        self._stopping.set()

    async def run(self) -> None:
        """Drive the bus until :meth:`stop`; a reader that cannot start is logged and skipped."""
        self._loop = asyncio.get_running_loop()
        self._readers = self._prepare()
        if not self._readers:
            log.error("osdp.no_readers", port=self.port)
            return
        for reader in self._readers:
            reader.last_rec = await self._last_rec(reader.terminal_id)
            if self.site.terminal(reader.terminal_id) is None:
                log.error("osdp.unknown_terminal", terminal=reader.terminal_id, port=self.port)
        channel = SerialChannel(self.port, self.baud)
        osdp_sys.set_loglevel(osdp.LogLevel.Warning)
        try:
            ctx = osdp_sys.ControlPanel(
                [pd_info(r.config, channel, r.scbk, self._flags(r)) for r in self._readers]
            )
        except Exception as exc:  # noqa: BLE001 - one bad bus must not stop the daemon
            channel.close()
            log.error("osdp.bus_refused", port=self.port, error=f"libosdp: {exc}")  # noqa: TRY400 - a refusal, not a bug: no traceback
            return
        ctx.set_event_callback(self._on_event_thread)
        self._refresher = Refresher(ctx, channel, f"osdp:{self.port}")
        started = time.monotonic()
        for reader in self._readers:
            reader.retry_at = started + FIRST_CONTACT_S
            reader.attempt_started = started
        self._accepting = True
        self._refresher.start()
        log.info(
            "osdp.started",
            port=self.port,
            readers=[(r.terminal_id, r.config.address) for r in self._readers],
        )
        try:
            async with asyncio.TaskGroup() as group:
                workers = [
                    group.create_task(self._work(r), name=f"osdp:{r.terminal_id}")
                    for r in self._readers
                ]
                supervisor = group.create_task(self._supervise(), name=f"osdp-link:{self.port}")
                await self._stopping.wait()
                self._accepting = False
                supervisor.cancel()
                await self._drain(workers)
        finally:
            self._accepting = False
            refresher, self._refresher = self._refresher, None
            await asyncio.to_thread(refresher.stop)
            del ctx  # libosdp's teardown runs when the context is freed
            channel.close()
            log.info("osdp.stopped", port=self.port)

    # -- set-up -------------------------------------------------------------------------------

    def _prepare(self) -> list[Reader]:
        readers: list[Reader] = []
        for config in self.readers:
            scbk = None
            if config.install_mode:
                log.warning(
                    "osdp.INSTALL_MODE",
                    terminal=config.terminal,
                    port=self.port,
                    address=config.address,
                    warning="reader runs WITHOUT its secure channel key; provision it and set "
                    "install_mode = false (docs/hardware.md)",
                )
            else:
                try:
                    scbk = read_scbk(config.scbk_file) if config.scbk_file else None
                except OsdpError as exc:
                    log.error("osdp.reader_refused", terminal=config.terminal, error=str(exc))  # noqa: TRY400
                    continue
                if scbk is None:
                    log.error("osdp.reader_refused", terminal=config.terminal, error="no SCBK")
                    continue
            readers.append(Reader(config, len(readers), scbk))
        return readers

    @staticmethod
    def _flags(reader: Reader) -> list[int]:
        flags = [osdp.LibFlag.EnableNotification]
        # ENFORCE_SECURE: never SCBK-D, never a KEYSET of its own (no automatic re-keying).
        if not reader.config.install_mode:
            flags.append(osdp.LibFlag.EnforceSecure)
        return flags

    async def _last_rec(self, terminal_id: str) -> int:
        rows = await self.store.read(
            "SELECT COALESCE(MAX(term_rec), 0) FROM terminal_txns WHERE terminal_id = ?",
            (terminal_id,),
        )
        return int(rows[0][0])

    def _reader(self, terminal_id: str) -> Reader | None:
        return next((r for r in self._readers if r.terminal_id == terminal_id), None)

    # -- libosdp's thread → the loop ---------------------------------------------------------

    def _on_event_thread(self, index: int, event: dict[str, Any]) -> int:
        # On the refresh thread, inside refresh(), holding the context's lock: hop only. An
        # exception must not escape into libosdp's C code.
        arrived = time.perf_counter()
        try:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._on_event, index, event, arrived)
        except RuntimeError:  # the loop is closing
            pass
        except Exception:
            log.exception("osdp.callback_failed")
        return 0

    def _on_event(self, index: int, event: dict[str, Any], arrived: float) -> None:
        if not self._accepting or not 0 <= index < len(self._readers):
            return
        reader = self._readers[index]
        kind = event.get("event")
        if kind == osdp.Event.CardRead:
            reader.last_read_at = arrived
            self._enqueue(reader, _CardRead(event))
        elif kind == osdp.Event.Notification and not reader.disabling:
            self._on_notification(reader, event)
        elif kind == osdp.Event.Status:
            self._on_status(reader, event)

    def _on_notification(self, reader: Reader, event: dict[str, Any]) -> None:
        note, arg0 = event.get("type"), event.get("arg0")
        if note == NOTE_SC:
            reader.sc_active = arg0 == 1
        elif note == NOTE_PD and arg0 == 1 and not reader.online:
            reader.online, reader.fast_failures, reader.auth_failed_noted = True, 0, False
            reader.backoff_s = RETRY_MIN_S
            log.info("osdp.reader_online", terminal=reader.terminal_id, sc=reader.sc_active)
            how = "secure channel" if reader.sc_active else "install mode, no secure channel"
            self._enqueue(reader, _LinkChange("online", how))
        elif note == NOTE_PD and arg0 == 0 and reader.online:
            reader.online = False
            reader.retry_at = time.monotonic() + reader.backoff_s
            log.warning("osdp.reader_offline", terminal=reader.terminal_id)
            self._enqueue(reader, _LinkChange("offline", "no reply on the bus"))
        elif note == NOTE_PD and arg0 == 0:
            self._attempt_failed(reader)

    def _attempt_failed(self, reader: Reader) -> None:
        # libosdp says no more than "offline" for every failed attempt. An absent reader
        # fails after seconds of probing; one that answers but fails the secure channel (wrong
        # SCBK, a swapped reader) fails at once, every time. A stale sequence number after a
        # restart also fails at once, but only once: the next attempt starts afresh.
        fast = time.monotonic() - reader.attempt_started < FAST_FAILURE_S
        reader.fast_failures = reader.fast_failures + 1 if fast else 0
        if reader.fast_failures >= AUTH_FAILURES and not reader.auth_failed_noted:
            reader.auth_failed_noted = True
            log.warning("osdp.secure_channel_failed", terminal=reader.terminal_id)
            detail = "reader refuses the secure channel: wrong SCBK or a swapped reader?"
            self._enqueue(reader, _LinkChange("auth_failed", detail))

    def _on_status(self, reader: Reader, event: dict[str, Any]) -> None:
        report = event.get("report")
        if not isinstance(report, bytes):
            return
        if event.get("type") == osdp.StatusReportType.Local and len(report) >= 2:
            tamper, power = report[0] != 0, report[1] != 0
            if tamper != reader.tamper:
                reader.tamper = tamper
                detail = "tamper" if tamper else "tamper cleared"
                self._enqueue(reader, _ReaderReport("tamper", detail))
            if power != reader.power_fail:
                reader.power_fail = power
                detail = "power failure" if power else "power restored"
                self._enqueue(reader, _ReaderReport("power_fail", detail))
        elif event.get("type") == osdp.StatusReportType.Remote:
            for number, state in enumerate(report):
                if state == 2:  # OSDP reader status: 1 not connected, 2 tamper
                    self._enqueue(reader, _ReaderReport("tamper", f"reader {number} tamper"))
                elif state == 1:
                    detail = f"reader {number} not connected"
                    self._enqueue(reader, _ReaderReport("reader_fault", detail))

    def _enqueue(self, reader: Reader, item: _Work) -> None:
        try:
            reader.queue.put_nowait(item)
        except asyncio.QueueFull:
            reader.dropped += 1
            log.warning("osdp.queue_full", terminal=reader.terminal_id, dropped=reader.dropped)

    # -- deciding ------------------------------------------------------------------------------

    async def _work(self, reader: Reader) -> None:
        while (item := await reader.queue.get()) is not None:
            try:
                if isinstance(item, _CardRead):
                    await self._card(reader, item.event)
                elif self.site.terminal(reader.terminal_id) is None:
                    log.warning("osdp.event_dropped", terminal=reader.terminal_id, item=item)
                elif isinstance(item, _LinkChange):
                    await self.site.record_event(reader.terminal_id, item.event, detail=item.detail)
                else:
                    await self._report(reader, item)
            except Exception as exc:
                log.exception("osdp.failed", terminal=reader.terminal_id, error=repr(exc))

    async def _card(self, reader: Reader, event: dict[str, Any]) -> None:
        uid = card_uid(event)
        terminal = self.site.terminal(reader.terminal_id)
        if uid is None or terminal is None or terminal.kind != "door":
            reason = "unreadable card data" if uid is None else "terminal not a registered door"
            log.warning("osdp.card_refused", terminal=reader.terminal_id, reason=reason)
            await self.site.dead_letter(
                f"osdp:{reader.terminal_id}", reason, bytes(event.get("data") or b"")
            )
            self._submit(reader, deny_commands())
            return
        reader.last_rec += 1
        tap = msg.Tap(rec=reader.last_rec, uid=uid, time_ms=time.time_ns() // 1_000_000)
        reply = await self.site.handle(terminal, tap)
        if isinstance(reply, msg.Decision) and reply.ok:
            configured = reader.config.open_time_s
            open_ms = int(configured * 1000) if configured else None
            self._submit(reader, grant_commands(open_ms or reply.open_ms or DEFAULT_OPEN_MS))
        else:
            self._submit(reader, deny_commands())

    async def _report(self, reader: Reader, report: _ReaderReport) -> None:
        # The same path as a terminal's EVENT frame: a record number, recorded once.
        terminal = self.site.terminal(reader.terminal_id)
        reader.last_rec += 1
        event = msg.Event(
            rec=reader.last_rec,
            time_ms=time.time_ns() // 1_000_000,
            event=report.event,
            detail=report.detail,
        )
        await self.site.handle(terminal, event)

    def _submit(self, reader: Reader, commands: list[dict[str, Any]]) -> None:
        refresher = self._refresher
        if refresher is None:
            return
        for command in commands:
            if not refresher.call(refresher.ctx.submit_command, reader.index, command):
                log.error("osdp.command_refused", terminal=reader.terminal_id, command=command)
        reader.last_commands_at = time.perf_counter()
        refresher.kick()

    # -- link supervision ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for reader in self._readers:
                if reader.online or now < reader.retry_at:
                    continue
                await self._reconnect(reader)
                reader.retry_at = time.monotonic() + reader.backoff_s
                reader.backoff_s = min(RETRY_MAX_S, reader.backoff_s * 2)

    async def _reconnect(self, reader: Reader) -> None:
        # libosdp parks an offline PD for minutes; disabling and re-enabling it starts a new
        # handshake now. The disable takes effect on the next refresh, hence the pause.
        refresher = self._refresher
        if refresher is None:
            return
        ctx = refresher.ctx
        if refresher.call(ctx.is_pd_enabled, reader.index):
            reader.disabling = True
            try:
                refresher.call(ctx.disable_pd, reader.index)
                refresher.kick()
                await asyncio.sleep(0.2)
            finally:
                reader.disabling = False
        if refresher.call(ctx.enable_pd, reader.index):
            reader.attempt_started = time.monotonic()
            log.info("osdp.reconnecting", terminal=reader.terminal_id)
        refresher.kick()

    async def _drain(self, workers: list[asyncio.Task[None]]) -> None:
        for reader in self._readers:
            while True:
                try:
                    reader.queue.put_nowait(None)
                    break
                except asyncio.QueueFull:
                    reader.queue.get_nowait()  # the oldest waiting read is given up
        _, pending = await asyncio.wait(workers, timeout=DRAIN_TIMEOUT_S)
        for task in pending:
            task.cancel()
        await asyncio.sleep(0.2)  # the last commands leave on the next refreshes


def panels_for(
    readers: list[OsdpReaderConfig], site: ReaderSite, store: EdgeStore
) -> list[OsdpPanel]:
    """One panel per serial port (an RS-485 bus may carry several readers)."""
    ports: dict[str, list[OsdpReaderConfig]] = {}
    for reader in readers:
        ports.setdefault(reader.port, []).append(reader)
    return [
        OsdpPanel(port, group, site, store, baud=group[0].baud) for port, group in ports.items()
    ]


__all__ = ["OsdpError", "OsdpPanel", "panels_for"]
