"""FrameLink: request/reply correlation, retransmission, stalls and hang-ups on a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from firmware_sim.link import FrameLink, LinkClosedError, PeerError, ReplyTimeoutError
from protocol.framing import Frame, FrameDecoder, FrameType, encode_frame
from protocol.terminal import Body, Error, Heartbeat, HeartbeatAck, message_frame, parse_frame

Peer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
NOW = 1_795_440_000_000


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Peer], Awaitable[FrameLink]]]:
    """Start a raw TCP peer and return a FrameLink connected to it."""
    servers: list[asyncio.Server] = []
    links: list[FrameLink] = []
    tasks: list[asyncio.Task[None]] = []

    async def start(peer: Peer) -> FrameLink:
        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        servers.append(server)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.sockets[0].getsockname()[1]
        )

        async def no_requests(frame: Frame, body: Body) -> Body | None:
            return Error(code="unsupported", message="test")

        link = FrameLink(reader, writer, no_requests, retry_s=0.2, retries=2)
        links.append(link)
        tasks.append(asyncio.create_task(link.run()))
        return link

    yield start
    for link in links:
        await link.close()
    for task in tasks:
        task.cancel()
    for server in servers:
        server.close()
        await server.wait_closed()


async def _frames(reader: asyncio.StreamReader, decoder: FrameDecoder) -> list[Frame]:
    data = await reader.read(4096)
    return decoder.feed(data) if data else []


async def test_unanswered_request_is_retransmitted_byte_for_byte(serve):
    seen: list[bytes] = []

    async def deaf_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        while frames := await _frames(reader, decoder):
            for frame in frames:
                seen.append(encode_frame(frame))
                if len(seen) == 2:  # ignore the first copy, answer the retransmission
                    writer.write(encode_frame(message_frame(HeartbeatAck(time_ms=NOW), frame.seq)))
        writer.close()

    link = await serve(deaf_once)
    reply = await link.request(Heartbeat(time_ms=NOW))
    assert reply == HeartbeatAck(time_ms=NOW)
    assert len(seen) == 2 and seen[0] == seen[1]
    assert link.stats.retransmits == 1


async def test_request_times_out_after_every_retransmission(serve):
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass
        writer.close()

    link = await serve(silent)
    with pytest.raises(ReplyTimeoutError):
        await link.request(Heartbeat(time_ms=NOW))
    assert link.stats.retransmits == 2


async def test_peer_hanging_up_fails_the_pending_request_at_once(serve):
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        writer.close()

    link = await serve(hang_up)
    with pytest.raises(LinkClosedError):
        await link.request(Heartbeat(time_ms=NOW), retry_s=5)
    assert link.closed


async def test_error_reply_raises_peer_error(serve):
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        for frame in await _frames(reader, decoder):
            writer.write(encode_frame(message_frame(Error(code="busy", message="忙"), frame.seq)))
        await reader.read(4096)
        writer.close()

    link = await serve(refuse)
    with pytest.raises(PeerError, match="busy"):
        await link.request(Heartbeat(time_ms=NOW))


async def test_false_start_is_expired_and_the_frame_behind_it_is_served():
    """A lone STX with a large declared length must not stall the link for good."""
    answered = asyncio.Event()

    async def on_request(frame: Frame, body: Body) -> Body | None:
        answered.set()
        return HeartbeatAck(time_ms=NOW)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = FrameLink(reader, writer, on_request)
        try:
            await link.run()
        finally:
            await link.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        false_start = bytes([0x02, 0x01, FrameType.TAP, 0x00, 0x01, 0x10, 0x00])  # claims 4096 B
        writer.write(false_start + encode_frame(message_frame(Heartbeat(time_ms=NOW), 5)))
        await writer.drain()
        async with asyncio.timeout(3):
            await answered.wait()
            frames = await _frames(reader, FrameDecoder())
        assert parse_frame(frames[0]) == HeartbeatAck(time_ms=NOW) and frames[0].seq == 5
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
