"""A terminal-protocol link over an asyncio stream: frames, requests, replies, retransmission.

Both ends of the simulated link use it (the terminal simulators, and the tiny test endpoint
that stands in for the edge). Each side numbers the requests it originates with its own u16
counter; a reply carries the request's seq. A request with no reply after ``retry_s`` is sent
again, byte for byte (same seq), up to ``retries`` more times.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from protocol.errors import MessageError, ProtocolError
from protocol.framing import PARTIAL_FRAME_TIMEOUT_S, Frame, FrameDecoder, FrameType, encode_frame
from protocol.terminal import Body, Error, message_frame, parse_frame

#: Frame types that answer a request (everything else is a request).
REPLY_TYPES = frozenset(
    {
        FrameType.CHALLENGE,
        FrameType.WELCOME,
        FrameType.HEARTBEAT_ACK,
        FrameType.DECISION,
        FrameType.RECHARGE_RESULT,
        FrameType.ACK,
        FrameType.ERROR,
    }
)

RequestHandler = Callable[[Frame, Body], Awaitable[Body | None]]


class LinkClosedError(ConnectionError):
    """The peer went away (or the link was closed) before a reply arrived."""


class ReplyTimeoutError(TimeoutError):
    """No reply after every retransmission."""


class PeerError(Exception):
    """The peer answered a request with an ERROR frame."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


@dataclass(slots=True)
class LinkStats:
    """Counters for one link."""

    frames_in: int = 0
    frames_out: int = 0
    retransmits: int = 0
    bad_messages: int = 0


class FrameLink:
    """Owns one stream. Call :meth:`run` in a task; then :meth:`request` from anywhere.

    ``on_request`` answers frames the peer originates: return a body to send as the reply
    (with the request's seq), or None to send nothing.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_request: RequestHandler,
        *,
        retry_s: float = 1.0,
        retries: int = 3,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_request = on_request
        self.retry_s = retry_s
        self.retries = retries
        self.decoder = FrameDecoder()
        self.stats = LinkStats()
        self._next_seq = 0
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._closed = asyncio.Event()
        self._write_lock = asyncio.Lock()

    @property
    def closed(self) -> bool:
        """True once the stream has ended or :meth:`close` was called."""
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        """Return once the link has closed."""
        await self._closed.wait()

    async def run(self) -> None:
        """Read frames until the stream ends; answer requests, resolve replies."""
        try:
            while True:
                timeout = PARTIAL_FRAME_TIMEOUT_S if self.decoder.buffered else None
                try:
                    async with asyncio.timeout(timeout):
                        data = await self._reader.read(4096)
                except TimeoutError:
                    frames = self.decoder.expire()
                else:
                    if not data:
                        return
                    frames = self.decoder.feed(data)
                for frame in frames:
                    await self._dispatch(frame)
        except (ConnectionError, OSError):
            return
        finally:
            self._mark_closed()

    async def _dispatch(self, frame: Frame) -> None:
        self.stats.frames_in += 1
        if frame.type in REPLY_TYPES:
            future = self._pending.get(frame.seq)
            if future is not None and not future.done():
                future.set_result(frame)
            return  # a late duplicate reply to a retransmitted request: ignore
        try:
            body = parse_frame(frame)
        except MessageError as exc:
            self.stats.bad_messages += 1
            await self.send(Error(code=exc.code, message=str(exc)[:80]), frame.seq)
            return
        reply = await self._on_request(frame, body)
        if reply is not None:
            await self.send(reply, frame.seq)

    async def send(self, body: Body, seq: int) -> None:
        """Send ``body`` as a frame with ``seq`` (a reply, or a one-off)."""
        await self._write(encode_frame(message_frame(body, seq)))

    async def _write(self, data: bytes) -> None:
        if self.closed:
            raise LinkClosedError("link is closed")
        async with self._write_lock:
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                self._mark_closed()
                raise LinkClosedError(str(exc)) from exc
        self.stats.frames_out += 1

    async def request(self, body: Body, *, retry_s: float | None = None) -> Body:
        """Send ``body`` as a request and return the peer's reply body.

        Raises :class:`PeerError` for an ERROR reply, :class:`ReplyTimeoutError` after all
        retransmissions, :class:`LinkClosedError` if the link drops meanwhile.
        """
        self._next_seq = (self._next_seq + 1) & 0xFFFF
        seq = self._next_seq
        data = encode_frame(message_frame(body, seq))
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        closed: asyncio.Future[Any] = asyncio.ensure_future(self._closed.wait())
        waiters: set[asyncio.Future[Any]] = {future, closed}
        try:
            for attempt in range(self.retries + 1):
                if attempt:
                    self.stats.retransmits += 1
                await self._write(data)
                done, _ = await asyncio.wait(
                    waiters,
                    timeout=retry_s or self.retry_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if future in done:
                    break
                if closed in done:
                    raise LinkClosedError("link closed while waiting for a reply")
            else:
                raise ReplyTimeoutError(f"no reply to {type(body).__name__} after retries")
        finally:
            self._pending.pop(seq, None)
            closed.cancel()
        frame = future.result()
        try:
            reply = parse_frame(frame)
        except ProtocolError:
            self.stats.bad_messages += 1
            raise
        if isinstance(reply, Error):
            raise PeerError(reply)
        return reply

    def _mark_closed(self) -> None:
        self._closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(LinkClosedError("link closed while waiting for a reply"))

    async def close(self) -> None:
        """Close the stream (idempotent)."""
        self._mark_closed()
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(1):
                await self._writer.wait_closed()
