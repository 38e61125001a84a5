"""The fault proxy between an edge and its broker: each mode does to real sockets what it says."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from firmware_sim.faultproxy import FaultProxy, Mode

QUIET_S = 0.3  # how long "nothing arrives" is watched for


@dataclass
class EchoServer:
    """An upstream that echoes and notes when a client's connection ends."""

    closed: int = 0
    server: asyncio.Server | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.closed += 1
            self.ended.set()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@asynccontextmanager
async def proxied() -> AsyncIterator[tuple[FaultProxy, EchoServer, list[asyncio.StreamWriter]]]:
    echo = EchoServer()
    echo.server = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
    port = echo.server.sockets[0].getsockname()[1]
    proxy = FaultProxy("127.0.0.1", port)
    await proxy.start()
    clients: list[asyncio.StreamWriter] = []
    try:
        yield proxy, echo, clients
    finally:
        for writer in clients:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await proxy.close()
        echo.server.close()
        for writer in echo.writers:
            writer.close()
        await asyncio.sleep(0.05)  # let the transports finish closing before the loop ends


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, within: float = 5
) -> bytes:
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(within):
        return await reader.readexactly(len(data))


async def nothing_arrives(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(QUIET_S):
            data = await reader.read(1)
    except TimeoutError:
        return True
    return data == b""  # closed would be "something happened" too: caller checks


async def test_pass_forwards_both_ways():
    async with proxied() as (proxy, _, clients):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        clients.append(writer)
        assert await roundtrip(reader, writer, b"hello") == b"hello"
        assert proxy.stats.bytes_up == proxy.stats.bytes_down == 5


async def test_delay_holds_each_chunk_back_and_keeps_order():
    async with proxied() as (proxy, _, clients):
        proxy.set_mode(Mode.DELAY, delay_ms=150)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        clients.append(writer)
        started = time.monotonic()
        assert await roundtrip(reader, writer, b"abc") == b"abc"
        assert time.monotonic() - started >= 0.29  # 150 ms up and 150 ms down


async def test_drop_blackholes_and_the_connection_stays_dead_after_healing():
    async with proxied() as (proxy, echo, clients):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        clients.append(writer)
        assert await roundtrip(reader, writer, b"x") == b"x"
        proxy.set_mode(Mode.DROP)
        writer.write(b"lost")
        await writer.drain()
        assert await nothing_arrives(reader)
        assert not reader.at_eof()
        proxy.set_mode(Mode.PASS)
        writer.write(b"still lost")
        await writer.drain()
        assert await nothing_arrives(reader)
        assert proxy.stats.dropped_bytes >= len(b"lost")
        # A new connection after healing works.
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        clients.append(w2)
        assert await roundtrip(r2, w2, b"new") == b"new"
        assert echo.closed == 0 or echo.ended.is_set()


async def test_drop_accepts_new_connections_that_go_nowhere():
    async with proxied() as (proxy, _echo, clients):
        proxy.set_mode(Mode.DROP)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        clients.append(writer)
        writer.write(b"anyone?")
        await writer.drain()
        assert await nothing_arrives(reader)
        assert not reader.at_eof()
        assert proxy.connections == 1


async def test_stall_withholds_bytes_and_delivers_them_intact_when_released():
    async with proxied() as (proxy, _, clients):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        clients.append(writer)
        proxy.set_mode(Mode.STALL)
        writer.write(b"queued")
        await writer.drain()
        assert await nothing_arrives(reader)
        proxy.set_mode(Mode.PASS)
        async with asyncio.timeout(5):
            assert await reader.readexactly(6) == b"queued"


async def test_reset_aborts_open_connections_and_refuses_new_ones():
    async with proxied() as (proxy, _, clients):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        clients.append(writer)
        assert await roundtrip(reader, writer, b"x") == b"x"
        proxy.set_mode(Mode.RESET)
        async with asyncio.timeout(5):
            try:
                data = await reader.read(1)
            except ConnectionResetError:
                data = b""
        assert data == b""
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        clients.append(w2)
        async with asyncio.timeout(5):
            try:
                data = await r2.read(1)
            except ConnectionResetError:
                data = b""
        assert data == b""
        assert proxy.stats.resets >= 2


async def test_half_open_closes_the_brokers_side_only():
    async with proxied() as (proxy, echo, clients):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        clients.append(writer)
        assert await roundtrip(reader, writer, b"x") == b"x"
        proxy.set_mode(Mode.HALF_OPEN)
        async with asyncio.timeout(5):
            await echo.ended.wait()  # the upstream saw its client go
        writer.write(b"into the void")
        await writer.drain()
        assert await nothing_arrives(reader)
        assert not reader.at_eof()  # …while the client still believes it is connected


async def test_a_broker_that_is_down_is_a_refused_connection():
    async with proxied() as (proxy, echo, clients):
        assert echo.server is not None
        echo.server.close()
        await echo.server.wait_closed()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        clients.append(writer)
        async with asyncio.timeout(5):
            try:
                data = await reader.read(1)
            except ConnectionResetError:
                data = b""
        assert data == b""
