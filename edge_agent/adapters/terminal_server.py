"""Terminal sessions: the edge's side of the terminal protocol over TCP and serial lines.

One :class:`TerminalSession` per connection. It authenticates the terminal (HELLO →
CHALLENGE → AUTH → WELCOME, with the key from the site's terminal table), then hands every
request to a :class:`SiteHandler` and writes the reply the handler returns — which the
handler returns only once the request's record is committed. Frames that fail the CRC are
dropped and counted by the decoder; payloads that fail validation get an ERROR reply, are
counted and dead-lettered; neither ends the session. A terminal that fails authentication
gets an ERROR, is logged, and its connection is closed; nothing it sent is ever decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from protocol import auth
from protocol.errors import AuthError, MessageError
from protocol.framing import PARTIAL_FRAME_TIMEOUT_S, Frame, FrameDecoder, FrameType, encode_frame
from protocol.terminal import (
    Auth,
    Body,
    Challenge,
    Error,
    Heartbeat,
    HeartbeatAck,
    Hello,
    RecordUpload,
    Welcome,
    message_frame,
    parse_frame,
)

log = structlog.get_logger("edge.terminals")

#: A terminal must finish HELLO/AUTH within this long after connecting.
HANDSHAKE_TIMEOUT_S = 10.0
#: Replies a terminal may send us; anything else from a terminal is a request.
_REPLIES = frozenset({FrameType.ACK, FrameType.ERROR, FrameType.RECORD_REPLY})
_CLOSING_CODES = frozenset({"unknown_terminal", "auth_failed", "unauthenticated"})


class TerminalIdentity(Protocol):
    """What the session needs to know about a registered terminal."""

    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def key(self) -> bytes: ...
    @property
    def config(self) -> dict[str, object]: ...


class SiteHandler(Protocol):
    """The site logic behind the sessions (implemented by ``edge_agent.site.Site``)."""

    @property
    def site(self) -> str: ...
    @property
    def heartbeat_s(self) -> int: ...

    def terminal(self, terminal_id: str) -> TerminalIdentity | None:
        """The registered terminal with this id, or None if the site does not know it."""

    async def handle(self, terminal: TerminalIdentity, body: Body) -> Body:
        """Decide and durably record ``body``; return the reply to send.

        Must be idempotent per (terminal, record number): a retransmission gets the original
        reply. Raises nothing for a valid body (problems become ERROR/denial replies).
        """

    async def dead_letter(self, source: str, reason: str, payload: bytes) -> None:
        """Keep something a peer sent that could not be accepted."""


class ListPort(Protocol):
    """The keeper of lists and records of terminals that decide locally
    (``edge_agent.lists.ListKeeper``)."""

    def attach(self, session: TerminalSession, kinds: Sequence[str], last_rec: int) -> bool:
        """Bring the terminal's lists up to date, then call ``session.open_gate()``. False
        if it cannot (the session then opens its gate at once)."""

    def noted_upload(self, terminal_id: str, newest: int) -> None:
        """The terminal's RECORD_UPLOAD up to record ``newest`` was stored."""

    def noted_heartbeat(self, terminal_id: str, buffered: int) -> None:
        """The terminal's HEARTBEAT said ``buffered`` records wait for upload."""


@dataclass(slots=True)
class SessionStats:
    """Per-terminal link counters (exported in health)."""

    frames_in: int = 0
    frames_out: int = 0
    bad_messages: int = 0
    auth_failures: int = 0


@dataclass
class TerminalSession:
    """One connection from (or serial line to) a terminal."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    handler: SiteHandler
    peer: str
    registry: TerminalRegistry
    terminal: TerminalIdentity | None = None
    stats: SessionStats = field(default_factory=SessionStats)
    last_seen: float = field(default_factory=time.monotonic)
    _decoder: FrameDecoder = field(default_factory=FrameDecoder)
    _nonce_t: bytes = b""
    _nonce_e: bytes = b""
    _claimed_id: str | None = None
    _next_seq: int = 0
    _pending: dict[int, asyncio.Future[Frame]] = field(default_factory=dict)
    _closed: bool = False
    #: Set by a stopping daemon: finish the request in hand, take no new ones.
    draining: bool = False
    #: True while a request is being decided and answered.
    busy: bool = False
    #: Pushes lists to terminals that decide locally (None: such terminals get no lists).
    lists: ListPort | None = None
    _hello_msg: Hello | None = None
    #: Requests that arrived while the terminal's lists were being brought up to date
    #: (None: the gate is open).
    _held: list[Frame] | None = None

    @property
    def authenticated(self) -> bool:
        """True once the terminal has proven its key."""
        return self.terminal is not None

    @property
    def closed(self) -> bool:
        """True once the link was closed."""
        return self._closed

    async def open_gate(self) -> None:
        """The terminal's lists are up to date (or could not be): answer the requests held
        since WELCOME, in order, then serve new ones as they come (idempotent)."""
        while self._held:
            await self._serve(self._held.pop(0))
        self._held = None

    async def run(self) -> None:
        """Serve the connection until it closes."""
        log.info("terminal.connected", peer=self.peer)
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S) as deadline:
                while not self.authenticated and not self._closed:
                    if not await self._read_once():
                        return
                deadline.reschedule(None)
            while not self._closed and not self.draining and await self._read_once():
                pass
        except TimeoutError:
            log.warning("terminal.handshake_timeout", peer=self.peer, claimed=self._claimed_id)
        except (ConnectionError, OSError) as exc:
            log.info("terminal.link_error", peer=self.peer, error=str(exc))
        finally:
            await self.close()
            if self.terminal is not None:
                self.registry.gone(self)
                log.info("terminal.disconnected", terminal=self.terminal.id, peer=self.peer)

    async def _read_once(self) -> bool:
        if not self._decoder.buffered:
            # Between frames (nearly always): no timer to arm and cancel per read.
            data = await self.reader.read(4096)
            if not data:
                return False
            frames = self._decoder.feed(data)
        else:
            try:
                async with asyncio.timeout(PARTIAL_FRAME_TIMEOUT_S):
                    data = await self.reader.read(4096)
            except TimeoutError:
                frames = self._decoder.expire()
            else:
                if not data:
                    return False
                frames = self._decoder.feed(data)
        for error in self._decoder.take_errors():
            log.debug("terminal.frame_error", peer=self.peer, error=str(error))
        for frame in frames:
            self.stats.frames_in += 1
            self.last_seen = time.monotonic()
            self.busy = True
            try:
                await self._dispatch(frame)
            finally:
                self.busy = False
            if self._closed or self.draining:
                return False
        return True

    async def _dispatch(self, frame: Frame) -> None:
        if frame.type in _REPLIES:
            future = self._pending.get(frame.seq)
            if future is not None and not future.done():
                future.set_result(frame)
            return
        if self._held is not None:
            self._held.append(frame)  # answered once the terminal's lists are up to date
            return
        await self._serve(frame)

    async def _serve(self, frame: Frame) -> None:
        try:
            body = parse_frame(frame)
        except MessageError as exc:
            self.stats.bad_messages += 1
            log.warning("terminal.bad_message", peer=self.peer, error=str(exc), type=frame.type)
            await self.handler.dead_letter(
                f"terminal:{self.terminal.id if self.terminal else self.peer}",
                str(exc),
                frame.payload,
            )
            await self._reply(Error(code="bad_message", message=str(exc)[:80]), frame.seq)
            return
        if isinstance(body, Hello):
            await self._hello(body, frame.seq)
        elif isinstance(body, Auth):
            await self._auth(body, frame.seq)
        elif self.terminal is None:
            log.warning("terminal.unauthenticated", peer=self.peer, request=type(body).__name__)
            await self._refuse("unauthenticated", "send HELLO first", frame.seq)
        elif isinstance(body, Heartbeat):
            await self._reply(HeartbeatAck(time_ms=time.time_ns() // 1_000_000), frame.seq)
            if self.lists is not None:
                self.lists.noted_heartbeat(self.terminal.id, body.buffered)
        else:
            reply = await self.handler.handle(self.terminal, body)
            await self._reply(reply, frame.seq)
            if self.lists is not None and isinstance(body, RecordUpload):
                self.lists.noted_upload(self.terminal.id, max(r.rec for r in body.records))

    async def _hello(self, hello: Hello, seq: int) -> None:
        if self.terminal is not None:
            await self._reply(Error(code="not_allowed", message="already authenticated"), seq)
            return
        if self._claimed_id == hello.terminal_id and self._nonce_t == hello.nonce:
            await self._reply(Challenge(nonce=self._nonce_e), seq)  # retransmitted HELLO
            return
        if self.handler.terminal(hello.terminal_id) is None:
            self.stats.auth_failures += 1
            log.warning("terminal.unknown", claimed=hello.terminal_id, peer=self.peer)
            await self._refuse("unknown_terminal", "终端未登记 unknown terminal", seq)
            return
        self._claimed_id = hello.terminal_id
        self._hello_msg = hello
        self._nonce_t, self._nonce_e = hello.nonce, auth.new_nonce()
        await self._reply(Challenge(nonce=self._nonce_e), seq)

    async def _auth(self, body: Auth, seq: int) -> None:
        known = self.handler.terminal(self._claimed_id) if self._claimed_id else None
        if known is None:
            await self._refuse("unauthenticated", "send HELLO first", seq)
            return
        try:
            expected = auth.terminal_proof(known.key, known.id, self._nonce_t, self._nonce_e)
            auth.verify(expected, body.mac, known.id)
        except AuthError:
            self.stats.auth_failures += 1
            # The Sunday story: a swapped spare with the wrong key shows up here.
            log.warning("terminal.auth_failed", terminal=known.id, peer=self.peer)
            failures = self.registry.auth_failures
            failures[known.id] = failures.get(known.id, 0) + 1
            await self._refuse("auth_failed", "终端未授权 terminal not authorised", seq)
            return
        self.terminal = known
        hello = self._hello_msg
        smart = hello is not None and bool(hello.lists) and self.lists is not None
        if smart:
            # a terminal that decides locally: hold its requests until its lists are pushed
            self._held = []
        await self.registry.arrived(self)
        log.info("terminal.authenticated", terminal=known.id, kind=known.kind, peer=self.peer)
        await self._reply(
            Welcome(
                mac=auth.edge_proof(known.key, known.id, self._nonce_t, self._nonce_e),
                time_ms=time.time_ns() // 1_000_000,
                site=self.handler.site,
                heartbeat_s=self.handler.heartbeat_s,
                config=dict(known.config),
            ),
            seq,
        )
        if smart and hello is not None and self.lists is not None:  # after WELCOME: pushes may go
            lists = list(hello.lists) if hello.lists else []
            if not self.lists.attach(self, lists, hello.last_rec):
                await self.open_gate()

    async def _refuse(self, code: str, message: str, seq: int) -> None:
        await self._reply(Error(code=code, message=message[:80]), seq)
        if code in _CLOSING_CODES:
            self.registry.refused[code] = self.registry.refused.get(code, 0) + 1
            await self.close()

    async def _reply(self, body: Body, seq: int) -> None:
        await self._write(encode_frame(message_frame(body, seq)))

    async def _write(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            await self.close()
            return
        self.stats.frames_out += 1

    async def request(self, body: Body, *, timeout_s: float = 2.0) -> Body:
        """Send an edge-originated request (TIME, CONFIG, LIST_UPDATE); return the reply."""
        self._next_seq = (self._next_seq + 1) & 0xFFFF
        seq = self._next_seq
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        try:
            data = encode_frame(message_frame(body, seq))
            for _ in range(3):
                await self._write(data)
                try:
                    async with asyncio.timeout(timeout_s / 3):
                        frame = await asyncio.shield(future)
                    return parse_frame(frame)
                except TimeoutError:
                    continue
            raise TimeoutError(f"no reply to {type(body).__name__}")
        finally:
            self._pending.pop(seq, None)

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(1):
                await self.writer.wait_closed()


#: Bytes one TCP read takes at most (frames are small; bigger ones take several reads).
_READ_BUFFER = 16 * 1024


class _TerminalStreamProtocol(asyncio.StreamReaderProtocol, asyncio.BufferedProtocol):
    """``asyncio.start_server``'s protocol, reading into one buffer per connection.

    As a plain protocol, the transport reads every chunk with ``recv(256 KiB)``: a fresh
    256 KiB bytes object per TAP — with glibc an mmap, mremap and munmap — ~25 µs a read on
    this platform, against ~4 µs for ``recv_into`` a buffer that is reused."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], None],
    ) -> None:
        super().__init__(reader, client_connected_cb)
        self._buffer = bytearray(_READ_BUFFER)

    def get_buffer(self, sizehint: int) -> bytearray:  # noqa: ARG002 - any size will do
        """Where the transport reads into."""
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` arrived in the buffer: hand a copy to the stream reader."""
        self.data_received(bytes(self._buffer[:nbytes]))


async def start_tcp_server(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], None],
    host: str | None,
    port: int,
) -> asyncio.Server:
    """``asyncio.start_server`` for terminal links (see :class:`_TerminalStreamProtocol`)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _TerminalStreamProtocol(asyncio.StreamReader(), client_connected_cb), host, port
    )


@dataclass
class TerminalRegistry:
    """Which terminals are connected, and when each was last heard from."""

    sessions: dict[str, TerminalSession] = field(default_factory=dict)
    last_seen_wall: dict[str, float] = field(default_factory=dict)
    on_change: Callable[[str, bool], Awaitable[None]] | None = None
    #: Connections refused before or at authentication, by code (unknown_terminal,
    #: auth_failed, unauthenticated), and failed authentications per claimed terminal id.
    refused: dict[str, int] = field(default_factory=dict)
    auth_failures: dict[str, int] = field(default_factory=dict)
    #: Terminals driven by another adapter (OSDP readers): whether each is online now.
    drivers: dict[str, Callable[[], bool]] = field(default_factory=dict)

    async def arrived(self, session: TerminalSession) -> None:
        """A terminal authenticated; an older link of the same terminal is dropped."""
        if session.terminal is None:
            return
        tid = session.terminal.id
        old = self.sessions.get(tid)
        self.sessions[tid] = session
        self.last_seen_wall[tid] = time.time()
        if old is not None and old is not session:
            await old.close()

    def gone(self, session: TerminalSession) -> None:
        """A link closed."""
        if session.terminal is None:
            return
        tid = session.terminal.id
        self.last_seen_wall[tid] = time.time()
        if self.sessions.get(tid) is session:
            del self.sessions[tid]

    def online(self, terminal_id: str, *, heartbeat_s: int) -> bool:
        """Connected and heard from within three heartbeat intervals."""
        driver = self.drivers.get(terminal_id)
        if driver is not None:
            if driver():
                self.last_seen_wall[terminal_id] = time.time()
                return True
            return False
        session = self.sessions.get(terminal_id)
        if session is None:
            return False
        return time.monotonic() - session.last_seen < 3 * heartbeat_s

    async def close_all(self) -> None:
        """Drop every link (shutdown)."""
        for session in list(self.sessions.values()):
            await session.close()
