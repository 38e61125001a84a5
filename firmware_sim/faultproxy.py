"""A fault-injecting TCP proxy for loopback tests: the network between an edge and its broker.

Each edge's ``[mqtt] url`` points at its own proxy, which forwards to the real broker. The
chaos controller switches the proxy's :class:`Mode` at run time to make the WAN misbehave the
ways real ones do:

- ``pass``: forward both ways;
- ``delay``: forward, each chunk held back ``delay_ms`` first (order kept);
- ``drop``: a blackhole — connections stay open, every byte either way is discarded, new
  connections are accepted and go nowhere. A connection that lost bytes stays dead after the
  mode changes back (its stream is corrupt, as TLS would notice): the client must find out
  by its own keepalive and reconnect;
- ``stall``: stop reading either side; bytes wait in the kernel buffers (TCP backpressure)
  and flow again, intact, when the mode changes back;
- ``reset``: every open connection is aborted with an RST; new ones are reset at once;
- ``half_open``: the broker's side is closed (so the broker sees the client go and publishes
  its Will) while the client's side stays open and silent — it believes it is connected
  until its keepalive says otherwise. Dead for good, like ``drop``.

The proxy is bytes-only (it never parses MQTT or TLS), so it cannot be the cause of a lost
or doubled record: it can only delay, withhold or cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from enum import StrEnum

import structlog

log = structlog.get_logger(__name__)
CHUNK = 65536


class Mode(StrEnum):
    """How the proxy treats traffic right now."""

    PASS = "pass"  # noqa: S105 - a mode, not a password
    DELAY = "delay"
    DROP = "drop"
    STALL = "stall"
    RESET = "reset"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class ProxyStats:
    """What the proxy did (for the chaos report and tests)."""

    accepted: int = 0
    resets: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    dropped_bytes: int = 0


@dataclass(eq=False, slots=True)
class _Pipe:
    """One proxied connection: the client's stream and the upstream's."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None
    #: Set once bytes were discarded or the upstream was cut: never forwards again.
    dead: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0) rather than a FIN, as a middlebox reset would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Listen on ``listen_host:listen_port`` (0: a free port) and forward to ``target``."""

    def __init__(
        self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1"
    ) -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port = 0
        self.mode = Mode.PASS
        self.delay_ms = 0
        self.stats = ProxyStats()
        self._pipes: set[_Pipe] = set()
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self, port: int = 0) -> int:
        """Start listening; returns the port."""
        self._server = await asyncio.start_server(self._accept, self.listen_host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        if self._server is not None:
            self._server.close()
        tasks = [t for pipe in self._pipes for t in pipe.tasks]
        writers = [w for pipe in self._pipes for w in (pipe.client, pipe.upstream) if w]
        for pipe in list(self._pipes):
            self._cut(pipe, rst=False)
        self._flowing.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await asyncio.gather(*tasks, return_exceptions=True)
                for writer in writers:
                    with contextlib.suppress(ConnectionError, OSError):
                        await writer.wait_closed()
                if self._server is not None:
                    await self._server.wait_closed()

    @property
    def connections(self) -> int:
        """Client connections open right now (dead ones included)."""
        return len(self._pipes)

    def set_mode(self, mode: Mode | str, *, delay_ms: int = 0) -> None:
        """Switch the fault; takes effect on open connections at once."""
        self.mode = Mode(mode)
        self.delay_ms = delay_ms if self.mode is Mode.DELAY else 0
        if self.mode is Mode.STALL:
            self._flowing.clear()
        else:
            self._flowing.set()
        if self.mode is Mode.RESET:
            for pipe in list(self._pipes):
                self.stats.resets += 1
                self._cut(pipe, rst=True)
        elif self.mode in (Mode.DROP, Mode.HALF_OPEN):
            for pipe in self._pipes:
                self._poison(pipe)
        log.info("faultproxy.mode", port=self.port, mode=str(self.mode), delay_ms=self.delay_ms)

    def _poison(self, pipe: _Pipe) -> None:
        pipe.dead = True
        if self.mode is Mode.HALF_OPEN and pipe.upstream is not None:
            pipe.upstream.close()  # the broker sees a clean close; the client sees nothing
            pipe.upstream = None

    def _cut(self, pipe: _Pipe, *, rst: bool) -> None:
        self._pipes.discard(pipe)
        for writer in (pipe.client, pipe.upstream):
            if writer is None:
                continue
            if rst:
                _abort(writer)
            else:
                writer.close()
        current = asyncio.current_task()
        for task in pipe.tasks:
            if task is not current:
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self.mode is Mode.RESET:
            self.stats.resets += 1
            _abort(writer)
            return
        pipe = _Pipe(client=writer, upstream=None)
        pipe.tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        self._pipes.add(pipe)
        if self.mode in (Mode.DROP, Mode.HALF_OPEN):
            pipe.dead = True  # accepted, and never connected anywhere
            await self._pump(pipe, reader, None, up=True)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._cut(pipe, rst=True)  # the broker is down: the client sees a refusal
            return
        pipe.upstream = up_writer
        down = asyncio.create_task(self._pump(pipe, up_reader, writer, up=False))
        pipe.tasks.append(down)
        try:
            await self._pump(pipe, reader, up_writer, up=True)
        finally:
            down.cancel()

    async def _pump(
        self,
        pipe: _Pipe,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | None,
        *,
        up: bool,
    ) -> None:
        """Copy ``reader`` to ``writer`` under the current mode until either side ends."""
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()  # a stall that began while we waited to read
                if pipe.dead or self.mode in (Mode.DROP, Mode.HALF_OPEN):
                    self._poison(pipe)
                    self.stats.dropped_bytes += len(data)
                    continue
                if self.mode is Mode.DELAY and self.delay_ms:
                    await asyncio.sleep(self.delay_ms / 1000)
                if writer is None or (up and pipe.upstream is None):
                    continue
                writer.write(data)
                await writer.drain()
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            self._ended(pipe, up=up)

    def _ended(self, pipe: _Pipe, *, up: bool) -> None:
        """One direction ended. The broker's end of a dead connection going away is not
        passed on: across a blackhole the client would never hear of it."""
        if pipe not in self._pipes:
            return
        if pipe.dead and not up:
            if pipe.upstream is not None:
                pipe.upstream.close()
                pipe.upstream = None
            return
        self._cut(pipe, rst=False)
