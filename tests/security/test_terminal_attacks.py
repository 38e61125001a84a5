"""Attacks on the terminal link of a running edge: a wrong key, a replayed handshake,
requests before the handshake, a replayed TAP, hostile bodies on a live link.

Each is spoken in raw frames from the attacker's side (no simulator smoothing anything
over). Each must be refused with the documented ERROR code, logged, and leave no trace in
the site's data: no outbox record, no balance change (a bad body is kept as a dead letter,
which is the point of a dead letter).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import pytest
from edge_fixtures import MEMBER, SITE
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from edge_agent.metrics import health_message
from protocol import auth
from protocol.framing import Frame, FrameDecoder, FrameType, encode_frame
from protocol.terminal import (
    Auth,
    Body,
    BufferedRecord,
    Challenge,
    Config,
    Decision,
    DoorOpen,
    Error,
    Event,
    Heartbeat,
    HeartbeatAck,
    Hello,
    RechargePrepare,
    RecordUpload,
    Tap,
    Welcome,
    message_frame,
    parse_frame,
)

pytestmark = pytest.mark.integration

T0 = 1_795_440_000_000  # 2026-11-23T13:20:00Z


@dataclass
class RawLink:
    """The attacker's end of a TCP connection to the edge, in frames."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    pending: list[Frame] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)

    @classmethod
    async def open(cls, port: int) -> RawLink:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, body: Body, seq: int) -> bytes:
        data = encode_frame(message_frame(body, seq))
        await self.send_bytes(data)
        return data

    async def reply(self, within_s: float = 5) -> Frame:
        """The next frame from the edge (EOF is an error here)."""
        async with asyncio.timeout(within_s):
            while not self.pending:
                data = await self.reader.read(4096)
                if not data:
                    raise ConnectionError("the edge closed the link")
                self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    async def body(self, within_s: float = 5) -> Body:
        return parse_frame(await self.reply(within_s))

    async def closed_by_edge(self, within_s: float = 5) -> bool:
        """True once the edge has closed the connection (nothing more to read)."""
        async with asyncio.timeout(within_s):
            while data := await self.reader.read(4096):
                self.pending += self.decoder.feed(data)
        return True

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def handshake(
    link: RawLink, terminal: str, key: bytes, kind: Literal["door", "pos"] = "pos"
) -> Welcome:
    """A terminal's HELLO → CHALLENGE → AUTH → WELCOME with ``key``."""
    nonce_t = auth.new_nonce()
    await link.send(Hello(terminal_id=terminal, kind=kind, firmware="sim", nonce=nonce_t), 1)
    challenge = await link.body()
    assert isinstance(challenge, Challenge), challenge
    mac = auth.terminal_proof(key, terminal, nonce_t, challenge.nonce)
    await link.send(Auth(mac=mac), 2)
    welcome = await link.body()
    assert isinstance(welcome, Welcome), welcome
    auth.verify(auth.edge_proof(key, terminal, nonce_t, challenge.nonce), welcome.mac, "edge")
    return welcome


def outbox_kinds(edge) -> list[str]:
    """The kind of every record the site wrote (what central would be sent)."""
    return [str(row[0]) for row in edge.rows("SELECT kind FROM outbox ORDER BY rowid")]


def site_accounts(edge) -> list[tuple[object, ...]]:
    """Every account row at the site (a refused attack changes none)."""
    return edge.rows("SELECT * FROM accounts ORDER BY person_id")


def tap(rec: int, amount: int = 500) -> Tap:
    return Tap(rec=rec, uid=MEMBER, time_ms=T0, amount=amount)


async def test_a_wrong_key_is_refused_logged_and_leaves_nothing(edge):
    before = site_accounts(edge)
    link = await RawLink.open(edge.port)
    with capture_logs() as logs:
        nonce_t = auth.new_nonce()
        await link.send(Hello(terminal_id="POS-01", kind="pos", firmware="x", nonce=nonce_t), 1)
        challenge = await link.body()
        assert isinstance(challenge, Challenge)
        forged = auth.terminal_proof(auth.new_key(), "POS-01", nonce_t, challenge.nonce)
        await link.send(Auth(mac=forged), 2)
        refused = await link.body()
        await link.send(tap(1), 3)  # too late: the edge hangs up on a failed proof
        assert await link.closed_by_edge()
    assert isinstance(refused, Error) and refused.code == "auth_failed"
    assert link.pending == []  # the TAP got no answer at all
    failed = [e for e in logs if e["event"] == "terminal.auth_failed"]
    assert len(failed) == 1 and failed[0]["terminal"] == "POS-01"
    assert failed[0]["log_level"] == "warning"
    assert outbox_kinds(edge) == []
    assert site_accounts(edge) == before
    # counted where an operator sees it: status / up/health per terminal, and /metrics
    service = edge.service
    status = await service.site.status(service.registry, version="test")
    assert status["refused"] == {"auth_failed": 1}
    [pos] = [t for t in status["terminals"] if t["id"] == "POS-01"]
    assert pos["auth_failures"] == 1
    health = {t.id: t for t in health_message(SITE, status, None).terminals}
    assert health["POS-01"].auth_failures == 1
    service.metrics.collector.status = status
    scraped = generate_latest(service.metrics.registry).decode()
    assert 'onecard_edge_terminal_refusals_total{code="auth_failed"} 1.0' in scraped
    await link.close()


async def test_a_replayed_handshake_on_a_new_connection_is_refused(edge):
    key = edge.keys["POS-01"]
    genuine = await RawLink.open(edge.port)
    await handshake(genuine, "POS-01", key)
    hello_bytes, auth_bytes = genuine.sent  # what a wiretap saw
    await genuine.close()

    replay = await RawLink.open(edge.port)
    with capture_logs() as logs:
        await replay.send_bytes(hello_bytes)
        challenge = await replay.body()
        assert isinstance(challenge, Challenge)  # a fresh nonce: the old proof is now wrong
        await replay.send_bytes(auth_bytes)
        refused = await replay.body()
        await replay.send(tap(9), 3)
        assert await replay.closed_by_edge()
    assert isinstance(refused, Error) and refused.code == "auth_failed"
    assert [e["terminal"] for e in logs if e["event"] == "terminal.auth_failed"] == ["POS-01"]
    assert outbox_kinds(edge) == []
    await replay.close()


BEFORE_HANDSHAKE = [
    pytest.param(Auth(mac=bytes(32)), id="AUTH-before-HELLO"),
    pytest.param(Heartbeat(time_ms=T0), id="HEARTBEAT"),
    pytest.param(tap(1), id="TAP"),
    pytest.param(
        RechargePrepare(
            rec=1, uid=MEMBER, amount=10_000, method="cash", pay_ref="PAY-1", time_ms=T0
        ),
        id="RECHARGE_PREPARE",
    ),
    pytest.param(Event(rec=1, time_ms=T0, event="door_forced"), id="EVENT"),
    pytest.param(
        RecordUpload(
            records=[BufferedRecord(rec=1, time_ms=T0, what="tap", uid=MEMBER, granted=True)]
        ),
        id="RECORD_UPLOAD",
    ),
]


@pytest.mark.parametrize("body", BEFORE_HANDSHAKE)
async def test_requests_before_the_handshake_is_done_are_refused_and_close_the_link(
    edge, body: Body
):
    before = site_accounts(edge)
    # Straight away, and after a HELLO whose AUTH never came.
    for say_hello in (False, True):
        link = await RawLink.open(edge.port)
        if say_hello:
            nonce = auth.new_nonce()
            await link.send(Hello(terminal_id="POS-01", kind="pos", firmware="x", nonce=nonce), 1)
            assert isinstance(await link.body(), Challenge)
            if isinstance(body, Auth):
                await link.close()
                continue  # an AUTH after HELLO is the wrong-key case
        await link.send(body, 7)
        refused = await link.body()
        assert isinstance(refused, Error) and refused.code == "unauthenticated", refused
        assert await link.closed_by_edge()
        await link.close()
    assert outbox_kinds(edge) == []
    assert site_accounts(edge) == before


async def test_a_replayed_tap_in_a_later_session_gets_the_original_decision_and_no_second_charge(
    edge,
):
    key = edge.keys["POS-01"]
    first = await RawLink.open(edge.port)
    await handshake(first, "POS-01", key)
    sale = await first.send(tap(77, amount=700), 10)
    original = await first.reply()
    await first.close()
    decision = parse_frame(original)
    assert isinstance(decision, Decision) and decision.ok and decision.amount == 700

    again = await RawLink.open(edge.port)
    await handshake(again, "POS-01", key)
    for _ in range(2):  # replayed twice over, byte for byte
        await again.send_bytes(sale)
        assert await again.reply() == original
    await again.close()
    assert outbox_kinds(edge) == ["pos.purchase"]


def nested(depth: int) -> bytes:
    """``{"config": {"a": [[[…]]]}}`` with ``depth`` one-element arrays: only a free-form
    map like CONFIG's is decoded that deep (typed fields stop at the first wrong type)."""
    return b"\x81\xa6config\x81\xa1a" + b"\x91" * depth + b"\xc0"


HOSTILE = [
    pytest.param(FrameType.CONFIG, nested(8000), "nested too deeply", id="deeply-nested"),
    pytest.param(FrameType.TAP, b"\xc1" * 100, "malformed MessagePack", id="not-messagepack"),
    pytest.param(
        FrameType.TAP,
        msgspec.msgpack.encode({**msgspec.structs.asdict(tap(5)), "admin": True}),
        "admin",
        id="stray-field",
    ),
    pytest.param(
        FrameType.TAP,
        msgspec.msgpack.encode({**msgspec.structs.asdict(tap(5)), "amount": -500}),
        "amount",
        id="negative-amount",
    ),
    pytest.param(
        FrameType.TAP,
        msgspec.msgpack.encode({**msgspec.structs.asdict(tap(5)), "uid": "X" * 8000}),
        "uid",
        id="huge-field",
    ),
    pytest.param(0x6A, b"\x80", "unknown frame type", id="unknown-type"),
]


@pytest.mark.parametrize(("ftype", "payload", "needle"), HOSTILE)
async def test_a_hostile_body_on_a_live_link_is_dead_lettered_and_the_session_goes_on(
    edge, ftype: int, payload: bytes, needle: str
):
    link = await RawLink.open(edge.port)
    await handshake(link, "POS-01", edge.keys["POS-01"])
    with capture_logs() as logs:
        await link.send_bytes(encode_frame(Frame(ftype, 40, payload)))
        refused = await link.body()
    assert isinstance(refused, Error) and refused.code == "bad_message", refused
    [letter] = edge.rows("SELECT source, reason, payload FROM dead_letters")
    assert letter[0] == "terminal:POS-01" and needle in str(letter[1])
    assert letter[2] == payload  # kept as it came, for the operator to look at
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["terminal.bad_message"]
    # A frame declaring more than the largest payload is dropped by the decoder unanswered.
    await link.send_bytes(b"\x02\x01\x10\x00\x29\xff\xff" + b"\x00" * 64)
    # The session goes on: a heartbeat and a real sale are answered.
    await link.send(Heartbeat(time_ms=T0), 41)
    assert isinstance(await link.body(), HeartbeatAck)
    await link.send(tap(6), 42)
    decision = await link.body()
    assert isinstance(decision, Decision) and decision.ok
    await link.close()
    assert outbox_kinds(edge) == ["pos.purchase"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(Decision(rec=1, ok=True, code="ok", display="free", amount=0), id="DECISION"),
        pytest.param(Config(config={"role": "admin"}), id="CONFIG"),
        pytest.param(DoorOpen(open_ms=60_000), id="DOOR_OPEN"),
    ],
)
async def test_an_edge_only_message_from_a_terminal_is_refused_and_recorded_nowhere(
    edge, body: Body
):
    link = await RawLink.open(edge.port)
    await handshake(link, "DOOR-01", edge.keys["DOOR-01"], kind="door")
    await link.send(body, 50)
    refused = await link.body()
    assert isinstance(refused, Error) and refused.code == "unsupported", refused
    await link.send(Heartbeat(time_ms=T0), 51)
    assert isinstance(await link.body(), HeartbeatAck)
    await link.close()
    assert outbox_kinds(edge) == []
