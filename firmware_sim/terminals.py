"""Firmware simulators of the four terminal kinds: door, attendance clock, POS, recharge kiosk.

Each behaves like the firmware a vendor would ship against ``docs/terminal-protocol.md``:
it connects (TCP or serial), authenticates with its key (and checks the edge's proof),
sends heartbeats, numbers every transaction with a persisted record number, retransmits
on timeout, obeys TIME/CONFIG/LIST_UPDATE, and shows on :attr:`Terminal.display` what a real
screen would show. Door readers and attendance clocks keep working when the link is cut:
they decide from their local list and upload the buffered records when it returns.

In **smart** mode (``TerminalSettings.smart``, 智能终端) a door reader or clock decides every
card on its own from the lists the edge pushes (blacklist, and whitelist per door), names
them in HELLO, buffers every record, uploads them within a second (and after each WELCOME,
once a first HEARTBEAT has let the edge bring its lists up to date), and keeps a journal of
its recent records to answer the edge's RECORD_REQUEST for numbers it found missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from edge_agent.adapters.transport import open_stream, parse_endpoint
from edge_agent.adapters.waiting import wait_event
from edge_agent.core.reasons import yuan
from firmware_sim.link import FrameLink, LinkClosedError, PeerError, ReplyTimeoutError
from firmware_sim.state import PendingRecharge, StateFile
from protocol import auth
from protocol.errors import AuthError, ProtocolError
from protocol.framing import Frame
from protocol.terminal import (
    MAX_UPLOAD_RECORDS,
    Ack,
    Auth,
    Body,
    BufferedRecord,
    Challenge,
    Config,
    Decision,
    DoorOpen,
    Error,
    Event,
    EventName,
    Heartbeat,
    Hello,
    LineItem,
    ListUpdate,
    RechargeAbort,
    RechargeCommit,
    RechargePrepare,
    RechargeResult,
    RecordReply,
    RecordRequest,
    RecordUpload,
    Tap,
    TerminalKind,
    Time,
    Welcome,
)

LINK_ERRORS = (LinkClosedError, ReplyTimeoutError, OSError)


@dataclass(slots=True)
class TerminalSettings:
    """How a simulated terminal is set up (what an installer keys into a real one)."""

    terminal_id: str
    key: bytes
    connect: str
    firmware: str = "onecard-sim/0.1"
    state_file: Path | None = None
    retry_s: float = 1.0
    retries: int = 3
    #: Decide every card locally from pushed lists (door readers and clocks only).
    smart: bool = False
    #: Smart mode: upload buffered records at least this often while linked.
    upload_every_s: float = 1.0
    #: Smart mode: recent records kept to answer RECORD_REQUEST.
    journal: int = 1000


class SmartState(msgspec.Struct, kw_only=True):
    """What a smart terminal keeps beside its basic state: whitelists per door ("" for a
    terminal with one list) with their versions, and its journal of recent records."""

    whitelists: dict[str, list[str]] = {}
    whitelist_versions: dict[str, int] = {}
    journal: list[BufferedRecord] = []


def _save_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one transaction, as the terminal saw it."""

    rec: int
    ok: bool
    code: str
    display: str
    latency_ms: float
    amount: int | None = None
    balance: int | None = None
    open_ms: int | None = None
    #: True when the terminal decided on its own because the edge was unreachable.
    local: bool = False


class SimulatedCrashError(Exception):
    """Raised by a test hook to stop a terminal mid-transaction, as a power cut would."""


@dataclass(slots=True)
class TerminalCounters:
    """What a terminal counts about its own link."""

    connects: int = 0
    auth_failures: int = 0
    link_failures: int = 0
    local_decisions: int = 0
    uploaded: int = 0
    #: Smart mode: LIST_UPDATEs applied, version-gap NAKs, RECORD_REQUESTs answered.
    list_updates: int = 0
    version_gaps: int = 0
    record_requests: int = 0


class Terminal:
    """Common firmware: connect, authenticate, heartbeat, record numbers, display."""

    kind: ClassVar[TerminalKind]
    #: Whether the terminal decides locally and buffers records when cut off.
    decides_offline: ClassVar[bool] = False

    def __init__(
        self, settings: TerminalSettings, *, on_display: Callable[[str, str], None] | None = None
    ) -> None:
        self.settings = settings
        self.id = settings.terminal_id
        self.store = StateFile(settings.state_file)
        self.config: dict[str, Any] = {}
        self.site = ""
        self.heartbeat_s = 10
        self.display = "启动中…"
        self.history: list[str] = []
        self.counters = TerminalCounters()
        #: Simulated drift of the terminal's clock against true UTC, in ms.
        self.clock_skew_ms = 0
        self._on_display = on_display
        self._link: FrameLink | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._authenticated = False
        self.smart = settings.smart and self.decides_offline
        self._smart_path = (
            None
            if settings.state_file is None
            else settings.state_file.with_suffix(settings.state_file.suffix + ".lists")
        )
        self.lists = self._load_smart()
        self._upload_lock = asyncio.Lock()
        self._upload_wake = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Terminal:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def online(self) -> bool:
        """True while authenticated on a live link."""
        return self._authenticated and self._link is not None and not self._link.closed

    async def connect(self) -> None:
        """Open the link and authenticate; raises AuthError, PeerError or OSError on failure."""
        await self.close()
        reader, writer = await open_stream(parse_endpoint(self.settings.connect))
        link = FrameLink(
            reader,
            writer,
            self._on_request,
            retry_s=self.settings.retry_s,
            retries=self.settings.retries,
        )
        self._link = link
        self._tasks.append(asyncio.create_task(link.run(), name=f"{self.id}-link"))
        try:
            await self._handshake(link)
        except BaseException:
            await self.close()
            raise
        self.counters.connects += 1
        if self.smart:
            # The edge answers only once it has brought our lists up to date: a card
            # blacklisted while we were cut off is refused from here on.
            await link.request(self._heartbeat())
        self._tasks.append(asyncio.create_task(self._heartbeats(link), name=f"{self.id}-hb"))
        if self.smart:
            self._tasks.append(asyncio.create_task(self._uploader(link), name=f"{self.id}-up"))
        self.show(self.idle_text())
        await self.upload_buffered()
        await self.on_connected()

    async def on_connected(self) -> None:
        """Finish what a previous link left open (overridden per kind)."""

    async def close(self) -> None:
        """Drop the link and stop background work (idempotent)."""
        self._authenticated = False
        tasks, self._tasks = self._tasks, []
        link, self._link = self._link, None
        if link is not None:
            await link.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def run(self, stop: asyncio.Event, *, backoff_max_s: float = 30.0) -> None:
        """Stay connected until ``stop`` is set, reconnecting with capped backoff."""
        delay = 0.5
        while not stop.is_set():
            try:
                await self.connect()
                delay = 0.5
                link = self._link
                if link is None:
                    continue
                closed = asyncio.ensure_future(link.wait_closed())
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
                stopping.cancel()
            except (AuthError, PeerError) as exc:
                self.counters.auth_failures += 1
                self.show(f"终端未授权 {exc}"[:80])
            except (*LINK_ERRORS, ProtocolError):
                self.counters.link_failures += 1
                self.show("网络故障 重连中")
            await wait_event(stop, delay)
            delay = min(delay * 2, backoff_max_s)
        await self.close()

    # -- protocol ---------------------------------------------------------------------------

    async def _handshake(self, link: FrameLink) -> None:
        nonce_t = auth.new_nonce()
        hello = Hello(
            terminal_id=self.id,
            kind=self.kind,
            firmware=self.settings.firmware,
            nonce=nonce_t,
            last_rec=self.store.state.next_rec - 1,
            lists=["blacklist", "whitelist"] if self.smart else msgspec.UNSET,
        )
        challenge = await link.request(hello)
        if not isinstance(challenge, Challenge):
            raise AuthError(f"expected CHALLENGE, got {type(challenge).__name__}")
        proof = auth.terminal_proof(self.settings.key, self.id, nonce_t, challenge.nonce)
        welcome = await link.request(Auth(mac=proof))
        if not isinstance(welcome, Welcome):
            raise AuthError(f"expected WELCOME, got {type(welcome).__name__}")
        expected = auth.edge_proof(self.settings.key, self.id, nonce_t, challenge.nonce)
        auth.verify(expected, welcome.mac, "edge")  # never trust a forged edge's config
        self._set_clock(welcome.time_ms)
        self.site = welcome.site
        self.heartbeat_s = welcome.heartbeat_s
        self.config = dict(welcome.config)
        self._authenticated = True

    def _heartbeat(self) -> Heartbeat:
        return Heartbeat(time_ms=self.now_ms(), buffered=len(self.store.state.buffered))

    async def _heartbeats(self, link: FrameLink) -> None:
        while not link.closed:
            await asyncio.sleep(self.heartbeat_s)
            beat = self._heartbeat()
            try:
                await link.request(beat)
            except (*LINK_ERRORS, PeerError, ProtocolError):
                self.counters.link_failures += 1
                await link.close()
                self.show("网络故障")
                return

    async def _on_request(self, _frame: Frame, body: Body) -> Body | None:
        if not self._authenticated:
            return Error(code="unauthenticated", message="not authenticated")
        if isinstance(body, Time):
            self._set_clock(body.time_ms)
            return Ack()
        if isinstance(body, Config):
            self.config = dict(body.config)
            return Ack()
        if isinstance(body, ListUpdate):
            return self._apply_list(body)
        if isinstance(body, RecordRequest) and self.smart:
            return self._records_for(body)
        return Error(code="unsupported", message=f"{type(body).__name__} not supported")

    def _apply_list(self, update: ListUpdate) -> Ack:
        state = self.store.state
        if update.kind == "whitelist" and self.smart:
            return self._apply_whitelist(update)
        if update.kind != "blacklist":
            return Ack(ok=False, code="unsupported")
        if update.version == state.blacklist_version and not update.full:
            return Ack()  # a retransmission of an update already applied
        if update.full:
            state.blacklist = sorted(set(update.add))
        elif update.prev_version != state.blacklist_version:
            self.counters.version_gaps += 1
            return Ack(ok=False, code="version_gap")
        else:
            current = set(state.blacklist) | set(update.add)
            state.blacklist = sorted(current - set(update.remove))
        state.blacklist_version = update.version
        self.store.save()
        self.counters.list_updates += 1
        return Ack()

    def _apply_whitelist(self, update: ListUpdate) -> Ack:
        door = update.door if isinstance(update.door, str) else ""
        version = self.lists.whitelist_versions.get(door, 0)
        if update.version == version and not update.full:
            return Ack()  # a retransmission
        if update.full:
            uids = set(update.add)
        elif update.prev_version != version:
            self.counters.version_gaps += 1
            return Ack(ok=False, code="version_gap")
        else:
            uids = (set(self.lists.whitelists.get(door, [])) | set(update.add)) - set(update.remove)
        self.lists.whitelists[door] = sorted(uids)
        self.lists.whitelist_versions[door] = update.version
        self._save_smart()
        self.counters.list_updates += 1
        return Ack()

    def _records_for(self, request: RecordRequest) -> RecordReply:
        """The records of the range still held (buffered or in the journal), oldest first."""
        self.counters.record_requests += 1
        held = {r.rec: r for r in self.lists.journal}
        held.update((r.rec, r) for r in self.store.state.buffered)
        wanted = range(request.from_rec, request.to_rec + 1)
        return RecordReply(records=[held[n] for n in wanted if n in held])

    def _load_smart(self) -> SmartState:
        path = self._smart_path
        if path is None or not path.exists():
            return SmartState()
        return msgspec.json.decode(path.read_bytes(), type=SmartState)

    def _save_smart(self) -> None:
        if self._smart_path is not None:
            _save_atomic(self._smart_path, msgspec.json.encode(self.lists))

    def _buffer(self, record: BufferedRecord) -> None:
        """Keep a record for upload (and, in smart mode, in the journal), persisted."""
        self.store.state.buffered.append(record)
        self.store.save()
        if self.smart:
            self.lists.journal = [*self.lists.journal, record][-self.settings.journal :]
            self._save_smart()
            self._upload_wake.set()

    def local_grant(self, uid: str, door: str | None) -> bool:
        """A local decision: not on the blacklist and, once a whitelist is held for the
        door (or the terminal's only one), on it."""
        if uid in set(self.store.state.blacklist):
            return False
        lists = self.lists.whitelists
        key = door or ""
        if key not in lists and door is None and len(lists) == 1:
            key = next(iter(lists))  # a reader with one door: its door's list
        if key in lists and self.lists.whitelist_versions.get(key, 0) > 0:
            return uid in set(lists[key])
        return True

    def drop_buffered(self, recs: set[int]) -> None:
        """Test hook: lose these buffered records (a bad flash page) but keep them in the
        journal, as a terminal whose upload queue was corrupted would."""
        self.store.state.buffered = [r for r in self.store.state.buffered if r.rec not in recs]
        self.store.save()

    async def _uploader(self, link: FrameLink) -> None:
        """Smart mode: upload buffered records as they come, and at least every
        ``upload_every_s`` while linked."""
        while not link.closed:
            await wait_event(self._upload_wake, self.settings.upload_every_s)
            self._upload_wake.clear()
            if self.store.state.buffered:
                await self.upload_buffered()

    def _set_clock(self, edge_ms: int) -> None:
        # A real terminal sets its RTC; the simulator keeps an offset (plus any injected skew).
        self._clock_offset_ms = edge_ms - int(time.time() * 1000)

    def now_ms(self) -> int:
        """The terminal's idea of UTC now, in ms."""
        offset = getattr(self, "_clock_offset_ms", 0)
        return int(time.time() * 1000) + offset + self.clock_skew_ms

    def show(self, text: str) -> None:
        """Put ``text`` on the display (and tell the observer, if any)."""
        self.display = text
        self.history.append(text)
        if self._on_display is not None:
            self._on_display(self.id, text)

    def idle_text(self) -> str:
        """What the display shows between transactions."""
        return "请刷卡"

    async def _transact(self, body: Body) -> Body:
        if not self.online or self._link is None:
            raise LinkClosedError("terminal is offline")
        return await self._link.request(body)

    async def tap_card(self, tap: Tap) -> Outcome:
        """Send a TAP and show the DECISION; fall back to a local decision if cut off."""
        started = time.perf_counter()
        if self.smart:
            return self._decide_smart(tap, started)
        try:
            reply = await self._transact(tap)
        except LINK_ERRORS:
            return self._decide_locally(tap, started)
        except PeerError as exc:
            self.show(exc.error.message)
            return Outcome(tap.rec, False, exc.error.code, exc.error.message, _ms(started))
        if not isinstance(reply, Decision):
            raise ProtocolError(f"expected DECISION, got {type(reply).__name__}")
        self.show(reply.display)
        return Outcome(
            rec=tap.rec,
            ok=reply.ok,
            code=reply.code,
            display=reply.display,
            latency_ms=_ms(started),
            amount=reply.amount,
            balance=reply.balance,
            open_ms=reply.open_ms,
        )

    def _decide_smart(self, tap: Tap, started: float) -> Outcome:
        """Smart mode: every card is decided here, online or not, and buffered."""
        granted = self.local_grant(tap.uid, tap.door)
        self._buffer(
            BufferedRecord(
                rec=tap.rec,
                time_ms=tap.time_ms,
                what="tap",
                uid=tap.uid,
                granted=granted,
                door=tap.door,
                punch=tap.punch,
            )
        )
        self.counters.local_decisions += 1
        text = self.smart_text(granted) if self.online else self.offline_text(granted)
        self.show(text)
        code = "ok" if granted else "not_allowed"
        return Outcome(tap.rec, granted, code, text, _ms(started), local=True)

    def smart_text(self, granted: bool) -> str:
        """Display text for a local decision while linked."""
        return "请通行" if granted else "禁止通行"

    def _decide_locally(self, tap: Tap, started: float) -> Outcome:
        self.counters.link_failures += 1
        if not self.decides_offline:
            self.show("网络故障 请稍后再试")
            return Outcome(tap.rec, False, "link_down", self.display, _ms(started))
        granted = self.local_grant(tap.uid, tap.door)
        self._buffer(
            BufferedRecord(
                rec=tap.rec,
                time_ms=tap.time_ms,
                what="tap",
                uid=tap.uid,
                granted=granted,
                door=tap.door,
            )
        )
        self.counters.local_decisions += 1
        text = self.offline_text(granted)
        self.show(text)
        code = "ok" if granted else "blacklisted"
        return Outcome(tap.rec, granted, code, text, _ms(started), local=True)

    def offline_text(self, granted: bool) -> str:
        """Display text for a decision taken without the edge."""
        return "离线通行" if granted else "卡已挂失 禁止通行"

    async def upload_buffered(self) -> int:
        """Upload records decided while cut off; returns how many the edge accepted."""
        async with self._upload_lock:
            return await self._upload()

    async def _upload(self) -> int:
        state = self.store.state
        uploaded = 0
        while state.buffered and self.online:
            chunk = state.buffered[:MAX_UPLOAD_RECORDS]
            try:
                reply = await self._transact(RecordUpload(records=chunk))
            except (*LINK_ERRORS, PeerError):
                break
            if not isinstance(reply, Ack) or not reply.ok or reply.upto is None:
                break
            upto = reply.upto
            kept = [r for r in state.buffered if r.rec > upto]
            uploaded += len(state.buffered) - len(kept)
            state.buffered = kept
            self.store.save()
        self.counters.uploaded += uploaded
        return uploaded

    async def report_event(
        self, event: EventName, *, door: str | None = None, detail: str = ""
    ) -> bool:
        """Send an EVENT (door forced, tamper, …); buffered if cut off. True if acked."""
        rec = self.store.take_rec()
        body = Event(rec=rec, time_ms=self.now_ms(), event=event, door=door, detail=detail)
        try:
            reply = await self._transact(body)
        except LINK_ERRORS:
            self._buffer(
                BufferedRecord(rec=rec, time_ms=body.time_ms, what="event", event=event, door=door)
            )
            return False
        return isinstance(reply, Ack) and reply.ok


class DoorReader(Terminal):
    """A door reader/controller: tap → open the door (or not)."""

    kind = "door"
    decides_offline = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Remote opens obeyed (DOOR_OPEN from the edge): (door, open_ms, terminal time ms).
        self.remote_opens: list[tuple[str | None, int, int]] = []

    async def _on_request(self, frame: Frame, body: Body) -> Body | None:
        if isinstance(body, DoorOpen) and self._authenticated:
            self.remote_opens.append((body.door, body.open_ms, self.now_ms()))
            self.show("远程开门")  # the lock releases for open_ms
            return Ack()
        return await super()._on_request(frame, body)

    async def tap(self, uid: str, *, door: str | None = None) -> Outcome:
        """Present card ``uid``; the door opens for ``open_ms`` if granted."""
        rec = self.store.take_rec()
        return await self.tap_card(Tap(rec=rec, uid=uid, time_ms=self.now_ms(), door=door))


class AttendanceClock(Terminal):
    """An attendance clock: tap → punch recorded."""

    kind = "attendance"
    decides_offline = True

    def offline_text(self, granted: bool) -> str:
        """Attendance takes every punch offline; HQ sorts them out later."""
        return "打卡已记录(离线)" if granted else "卡已挂失"

    def smart_text(self, granted: bool) -> str:
        """A punch decided by the clock itself."""
        return "打卡已记录" if granted else "无效卡"

    async def punch(self, uid: str, *, punch: str | None = None) -> Outcome:
        """Present card ``uid`` (optionally choosing the in/out key first)."""
        rec = self.store.take_rec()
        tap = Tap(rec=rec, uid=uid, time_ms=self.now_ms(), punch=punch)  # type: ignore[arg-type]
        return await self.tap_card(tap)


class PosTerminal(Terminal):
    """A POS till. Modes (from the edge's config ``pos_mode``): ``fixed`` (one price per
    tap, ``price_fen``), ``menu`` (the cashier picks items by sku) or ``keyed`` (the cashier
    keys in an amount). Money is only ever decided by the edge."""

    kind = "pos"
    #: The outcome of a TAP resent on the last reconnect (see :meth:`on_connected`).
    resent: Outcome | None = None

    @property
    def mode(self) -> str:
        """The configured POS mode."""
        return str(self.config.get("pos_mode", "keyed"))

    def idle_text(self) -> str:
        """Fixed-price tills show the price; others wait for the cashier."""
        if self.mode == "fixed" and "price_fen" in self.config:
            return f"请刷卡 {yuan(int(self.config['price_fen']))}"
        return "请输入金额" if self.mode == "keyed" else "请选择菜品"

    async def on_connected(self) -> None:
        """Resend a TAP whose DECISION never arrived: the edge answers with what it decided
        (it may have charged the card), never deciding twice."""
        pending = self.store.state.pending_tap
        self.resent = None
        if pending is not None:
            outcome = await self.tap_card(pending)
            self.resent = outcome
            self.show(f"上笔交易: {outcome.display}"[:80])

    async def tap_card(self, tap: Tap) -> Outcome:
        """Money taps are remembered until answered (see :meth:`on_connected`)."""
        self.store.state.pending_tap = tap
        self.store.save()
        outcome = await super().tap_card(tap)
        if outcome.code != "link_down":
            self.store.state.pending_tap = None
            self.store.save()
        return outcome

    async def sale(
        self,
        uid: str,
        *,
        amount: int | None = None,
        items: list[tuple[str, int]] | None = None,
    ) -> Outcome:
        """Charge card ``uid``: ``amount`` in keyed mode, ``items`` in menu mode, nothing in
        fixed mode."""
        line_items = None
        if self.mode == "fixed":
            amount = int(self.config.get("price_fen", 0))
        elif self.mode == "menu":
            if not items:
                raise ValueError("menu mode needs items")
            line_items = [LineItem(sku=sku, qty=qty) for sku, qty in items]
            amount = None
        elif amount is None:
            raise ValueError("keyed mode needs an amount")
        rec = self.store.take_rec()
        tap = Tap(rec=rec, uid=uid, time_ms=self.now_ms(), amount=amount, items=line_items)
        return await self.tap_card(tap)


class RechargeKiosk(Terminal):
    """A self-service recharge kiosk: two-phase recharge keyed by a payment reference.

    prepare (before taking money) → take the money → commit; or abort when no money was
    taken. A pending recharge survives a crash in the state file and is finished by
    :meth:`resume_pending` on the next start, so a paid recharge is never lost.
    """

    kind = "recharge"

    def idle_text(self) -> str:
        """Kiosk idle screen."""
        return "请放卡 选择充值金额"

    async def on_connected(self) -> None:
        """After a restart or a cut link, finish every open recharge first."""
        await self.resume_pending()

    async def _phase(self, body: Body) -> RechargeResult:
        reply = await self._transact(body)
        if not isinstance(reply, RechargeResult):
            raise ProtocolError(f"expected RECHARGE_RESULT, got {type(reply).__name__}")
        self.show(reply.display)
        return reply

    async def recharge(
        self,
        uid: str,
        amount: int,
        *,
        method: str = "bank",
        pay_ref: str | None = None,
        payment_ok: bool = True,
        crash_after_payment: bool = False,
    ) -> Outcome:
        """Run a whole recharge. ``payment_ok=False`` simulates a declined bank card;
        ``crash_after_payment=True`` stops after the money was taken (单边账 test hook)."""
        started = time.perf_counter()
        rec = self.store.take_rec()
        pay_ref = pay_ref or f"{self.id}-{rec}-{int(time.time())}"
        pending = PendingRecharge(rec=rec, uid=uid, amount=amount, pay_ref=pay_ref)
        self.store.state.pending_recharges.append(pending)
        self.store.save()
        prepare = RechargePrepare(
            rec=rec,
            uid=uid,
            amount=amount,
            method=method,  # type: ignore[arg-type]
            pay_ref=pay_ref,
            time_ms=self.now_ms(),
        )
        try:
            prepared = await self._phase(prepare)
        except LINK_ERRORS:
            # Unanswered: the edge may have prepared it. Keep it, unpaid, so the next
            # connection aborts it explicitly rather than leaving it dangling.
            self.show("网络故障 暂停充值")
            return Outcome(rec, False, "link_down", self.display, _ms(started))
        if not prepared.ok:
            self._forget(pay_ref)
            return Outcome(rec, False, prepared.code, prepared.display, _ms(started))
        if not payment_ok:
            return await self._abort(pending, "payment_declined", started)
        pending.paid = True  # the bank took the money: from here on we must commit
        self.store.save()
        if crash_after_payment:
            raise SimulatedCrashError(f"kiosk {self.id} crashed after payment {pay_ref}")
        return await self._commit(pending, started)

    async def _commit(self, pending: PendingRecharge, started: float) -> Outcome:
        rec = self.store.take_rec()
        body = RechargeCommit(rec=rec, pay_ref=pending.pay_ref, time_ms=self.now_ms())
        result = await self._phase(body)
        self._forget(pending.pay_ref)
        return Outcome(
            rec,
            result.ok,
            result.code,
            result.display,
            _ms(started),
            amount=pending.amount,
            balance=result.balance,
        )

    async def _abort(self, pending: PendingRecharge, reason: str, started: float) -> Outcome:
        rec = self.store.take_rec()
        body = RechargeAbort(rec=rec, pay_ref=pending.pay_ref, reason=reason, time_ms=self.now_ms())
        result = await self._phase(body)
        self._forget(pending.pay_ref)
        return Outcome(rec, False, reason, result.display, _ms(started))

    def _forget(self, pay_ref: str) -> None:
        state = self.store.state
        state.pending_recharges = [p for p in state.pending_recharges if p.pay_ref != pay_ref]
        self.store.save()

    async def resume_pending(self) -> list[Outcome]:
        """After a restart: commit every paid recharge, abort every unpaid one."""
        outcomes = []
        for pending in list(self.store.state.pending_recharges):
            started = time.perf_counter()
            if pending.paid:
                outcomes.append(await self._commit(pending, started))
            else:
                outcomes.append(await self._abort(pending, "kiosk_restarted", started))
        return outcomes


KINDS: dict[str, type[Terminal]] = {
    "door": DoorReader,
    "attendance": AttendanceClock,
    "pos": PosTerminal,
    "recharge": RechargeKiosk,
}


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


@dataclass(slots=True)
class Fleet:
    """A group of simulated terminals, connected and closed together."""

    terminals: list[Terminal] = field(default_factory=list)

    async def connect_all(self) -> None:
        """Connect every terminal (concurrently)."""
        await asyncio.gather(*(t.connect() for t in self.terminals))

    async def close_all(self) -> None:
        """Close every terminal."""
        await asyncio.gather(*(t.close() for t in self.terminals), return_exceptions=True)
