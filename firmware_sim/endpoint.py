"""A tiny stand-in for the edge, for simulator tests and the demo.

It speaks the edge's side of the terminal protocol faithfully — authentication with
per-terminal keys, heartbeats, decisions answered once per (terminal, record number) and
repeated verbatim for retransmissions, two-phase recharges keyed by payment reference,
record uploads — but keeps its cards and balances in a dict. The real decisions live in
``edge_agent``; this exists so the simulators can be proven against an independent peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from edge_agent.adapters.transport import Endpoint, open_stream
from edge_agent.core.reasons import yuan
from firmware_sim.link import FrameLink
from protocol import auth
from protocol.errors import AuthError
from protocol.framing import Frame
from protocol.terminal import (
    Ack,
    Auth,
    Body,
    Challenge,
    Decision,
    Error,
    Event,
    Heartbeat,
    HeartbeatAck,
    Hello,
    RechargeAbort,
    RechargeCommit,
    RechargePrepare,
    RechargeResult,
    RecordUpload,
    Tap,
    Welcome,
)


def _display_zone() -> ZoneInfo | None:
    try:
        return ZoneInfo("Asia/Shanghai")
    except ZoneInfoNotFoundError:  # no tzdata: fall back to UTC in displays
        return None


@dataclass(slots=True)
class SimCard:
    """A card the endpoint knows."""

    uid: str
    balance: int
    name: str = ""
    blacklisted: bool = False


@dataclass(slots=True)
class _Recharge:
    uid: str
    amount: int
    state: str = "prepared"  # prepared → committed | aborted
    result: RechargeResult | None = None


@dataclass(slots=True)
class _Session:
    link: FrameLink
    terminal_id: str | None = None
    kind: str = ""
    nonce_t: bytes = b""
    nonce_e: bytes = b""
    authenticated: bool = False


@dataclass
class TestEndpoint:
    """The edge's side of the terminal protocol over an in-memory card table."""

    __test__ = False  # not a pytest test class, despite the name

    keys: dict[str, bytes]
    cards: dict[str, SimCard] = field(default_factory=dict)
    site: str = "SIM-SITE"
    terminal_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    heartbeat_s: int = 10
    #: Every record the endpoint took, as (terminal id, record number, kind, details).
    records: list[tuple[str, int, str, dict[str, Any]]] = field(default_factory=list)
    auth_failures: int = 0
    sessions: dict[str, _Session] = field(default_factory=dict)
    _decisions: dict[tuple[str, int], Body] = field(default_factory=dict)
    _recharges: dict[str, _Recharge] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _servers: list[asyncio.Server] = field(default_factory=list)

    # -- serving -----------------------------------------------------------------------------

    async def serve_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen for terminals on TCP; returns the bound port."""
        server = await asyncio.start_server(self._on_connection, host, port)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def serve_serial(self, endpoint: Endpoint) -> None:
        """Open a serial port (the edge opens serial lines) and serve the terminal on it."""
        reader, writer = await open_stream(endpoint)
        self._spawn(self.serve_stream(reader, writer))

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._spawn(self.serve_stream(reader, writer))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve one terminal link until it closes."""
        sessions: list[_Session] = []

        async def handle(frame: Frame, body: Body) -> Body | None:
            return await self._handle(sessions[0], frame, body)

        link = FrameLink(reader, writer, handle)
        session = _Session(link)
        sessions.append(session)
        try:
            await link.run()
        finally:
            await link.close()
            if session.terminal_id and self.sessions.get(session.terminal_id) is session:
                del self.sessions[session.terminal_id]

    async def close(self) -> None:
        """Stop listening and drop every link."""
        for server in self._servers:
            server.close()
        for session in list(self.sessions.values()):
            await session.link.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for server in self._servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await server.wait_closed()

    async def push(self, terminal_id: str, body: Body) -> Body:
        """Send an edge-originated request (TIME, CONFIG, LIST_UPDATE) and return the reply."""
        return await self.sessions[terminal_id].link.request(body)

    # -- requests ----------------------------------------------------------------------------

    async def _handle(self, session: _Session, frame: Frame, body: Body) -> Body | None:
        if isinstance(body, Hello):
            if body.terminal_id not in self.keys:
                self.auth_failures += 1
                await self._refuse(session, frame, "unknown_terminal", "终端未登记")
                return None
            if session.terminal_id == body.terminal_id and session.nonce_t == body.nonce:
                return Challenge(nonce=session.nonce_e)  # a retransmitted HELLO
            session.terminal_id, session.kind = body.terminal_id, body.kind
            session.nonce_t, session.nonce_e = body.nonce, auth.new_nonce()
            return Challenge(nonce=session.nonce_e)
        if isinstance(body, Auth):
            return await self._authenticate(session, frame, body)
        if not session.authenticated or session.terminal_id is None:
            return Error(code="unauthenticated", message="请先认证")
        tid = session.terminal_id
        if isinstance(body, Heartbeat):
            return HeartbeatAck(time_ms=_now_ms())
        if isinstance(body, Tap | RechargePrepare | RechargeCommit | RechargeAbort | Event):
            # A retransmission (same terminal, same record number) gets the original answer.
            cached = self._decisions.get((tid, body.rec))
            if cached is not None:
                return cached
            reply = self._decide(session, body)
            self._decisions[(tid, body.rec)] = reply
            return reply
        if isinstance(body, RecordUpload):
            for rec in body.records:
                if (tid, rec.rec) not in self._decisions:
                    self._decisions[(tid, rec.rec)] = Ack()
                    self.records.append(
                        (tid, rec.rec, f"buffered.{rec.what}", msgspec.structs.asdict(rec))
                    )
            return Ack(upto=body.records[-1].rec)
        return Error(code="unsupported", message=f"{type(body).__name__} 不支持")

    async def _refuse(self, session: _Session, frame: Frame, code: str, message: str) -> None:
        await session.link.send(Error(code=code, message=message), frame.seq)
        await session.link.close()

    async def _authenticate(self, session: _Session, frame: Frame, body: Auth) -> Body | None:
        tid = session.terminal_id
        if tid is None:
            await self._refuse(session, frame, "unauthenticated", "HELLO first")
            return None
        key = self.keys[tid]
        try:
            auth.verify(
                auth.terminal_proof(key, tid, session.nonce_t, session.nonce_e), body.mac, tid
            )
        except AuthError:
            self.auth_failures += 1
            await self._refuse(session, frame, "auth_failed", "终端未授权")
            return None
        session.authenticated = True
        old = self.sessions.get(tid)
        self.sessions[tid] = session
        if old is not None and old is not session:
            await old.link.close()  # the terminal reconnected; the old link is dead
        return Welcome(
            mac=auth.edge_proof(key, tid, session.nonce_t, session.nonce_e),
            time_ms=_now_ms(),
            site=self.site,
            heartbeat_s=self.heartbeat_s,
            config=self.terminal_config.get(tid, {}),
        )

    # -- decisions ---------------------------------------------------------------------------

    def _decide(self, session: _Session, body: Body) -> Body:
        tid = session.terminal_id or ""
        if isinstance(body, Event):
            self.records.append((tid, body.rec, "event", {"event": body.event}))
            return Ack()
        if isinstance(body, Tap):
            return self._decide_tap(session, body)
        if isinstance(body, RechargePrepare):
            return self._prepare(tid, body)
        if isinstance(body, RechargeCommit | RechargeAbort):
            return self._finish(tid, body)
        return Error(code="unsupported", message="不支持")

    def _decide_tap(self, session: _Session, tap: Tap) -> Decision:
        tid = session.terminal_id or ""
        card = self.cards.get(tap.uid)
        if card is None:
            return self._deny(tid, tap, "unknown_card", "无效卡")
        if card.blacklisted:
            return self._deny(tid, tap, "blacklisted", "卡已挂失")
        if session.kind == "door":
            self.records.append((tid, tap.rec, "door", {"uid": tap.uid, "granted": True}))
            return Decision(rec=tap.rec, ok=True, code="ok", display="请通行", open_ms=3000)
        if session.kind == "attendance":
            self.records.append((tid, tap.rec, "punch", {"uid": tap.uid}))
            at = datetime.fromtimestamp(tap.time_ms / 1000, UTC).astimezone(_display_zone())
            text = f"打卡成功 {card.name} {at:%H:%M}".replace("  ", " ")
            return Decision(rec=tap.rec, ok=True, code="ok", display=text)
        amount = self._price(tid, tap)
        if amount is None:
            return self._deny(tid, tap, "not_allowed", "金额无效")
        if amount > card.balance:
            return self._deny(tid, tap, "insufficient_funds", f"余额不足 {yuan(card.balance)}")
        card.balance -= amount
        self.records.append((tid, tap.rec, "purchase", {"uid": tap.uid, "amount": amount}))
        return Decision(
            rec=tap.rec,
            ok=True,
            code="ok",
            display=f"消费{yuan(amount)} 余额{yuan(card.balance)}",
            amount=amount,
            balance=card.balance,
        )

    def _price(self, tid: str, tap: Tap) -> int | None:
        if tap.items:
            menu = self.terminal_config.get(tid, {}).get("menu", {})
            if any(item.sku not in menu for item in tap.items):
                return None
            return sum(int(menu[item.sku]["price_fen"]) * item.qty for item in tap.items)
        return tap.amount

    def _deny(self, tid: str, tap: Tap, code: str, text: str) -> Decision:
        self.records.append((tid, tap.rec, "denied", {"uid": tap.uid, "code": code}))
        return Decision(rec=tap.rec, ok=False, code=code, display=text)

    def _prepare(self, tid: str, body: RechargePrepare) -> RechargeResult:
        card = self.cards.get(body.uid)
        if card is None or card.blacklisted:
            code = "unknown_card" if card is None else "blacklisted"
            return RechargeResult(
                rec=body.rec, pay_ref=body.pay_ref, ok=False, code=code, display="此卡不能充值"
            )
        existing = self._recharges.get(body.pay_ref)
        if existing is not None and (existing.uid, existing.amount) != (body.uid, body.amount):
            return RechargeResult(
                rec=body.rec, pay_ref=body.pay_ref, ok=False, code="duplicate", display="单号重复"
            )
        self._recharges.setdefault(body.pay_ref, _Recharge(body.uid, body.amount))
        self.records.append((tid, body.rec, "recharge.prepare", {"pay_ref": body.pay_ref}))
        return RechargeResult(
            rec=body.rec,
            pay_ref=body.pay_ref,
            ok=True,
            code="ok",
            display=f"请付款 {yuan(body.amount)}",
        )

    def _finish(self, tid: str, body: RechargeCommit | RechargeAbort) -> RechargeResult:
        pending = self._recharges.get(body.pay_ref)
        if pending is None:
            return RechargeResult(
                rec=body.rec, pay_ref=body.pay_ref, ok=False, code="not_allowed", display="无此充值"
            )
        wanted = "committed" if isinstance(body, RechargeCommit) else "aborted"
        if pending.result is not None and pending.state != wanted:
            return RechargeResult(
                rec=body.rec,
                pay_ref=body.pay_ref,
                ok=False,
                code="not_allowed",
                display=f"充值已{'取消' if pending.state == 'aborted' else '完成'}",
            )
        if pending.result is not None:  # commit/abort are idempotent by pay_ref
            return RechargeResult(
                rec=body.rec,
                pay_ref=body.pay_ref,
                ok=pending.result.ok,
                code=pending.result.code,
                display=pending.result.display,
                balance=pending.result.balance,
            )
        card = self.cards[pending.uid]
        if isinstance(body, RechargeCommit):
            card.balance += pending.amount
            pending.state = "committed"
            result = RechargeResult(
                rec=body.rec,
                pay_ref=body.pay_ref,
                ok=True,
                code="ok",
                display=f"充值成功 {yuan(pending.amount)} 余额{yuan(card.balance)}",
                balance=card.balance,
            )
        else:
            pending.state = "aborted"
            result = RechargeResult(
                rec=body.rec, pay_ref=body.pay_ref, ok=True, code="ok", display="充值已取消"
            )
        pending.result = result
        self.records.append((tid, body.rec, f"recharge.{pending.state}", {"pay_ref": body.pay_ref}))
        return result


def _now_ms() -> int:
    return int(time.time() * 1000)
