"""The hex examples in docs/terminal-protocol.md are golden vectors for the real codec.

Each ``Vector: NAME`` line in the document is followed by a fenced ``hex`` block. For a frame
vector this test decodes the bytes with :class:`FrameDecoder`, parses the body, compares it
with the message written out below (independently of the document), and re-encodes the
message to the exact same bytes. Any divergence between the document and the code fails.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from typing import Any

import pytest

from protocol import auth
from protocol.errors import ChecksumError
from protocol.framing import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameType,
    crc16,
    encode_frame,
)
from protocol.terminal import (
    BODY_TYPES,
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
    Heartbeat,
    HeartbeatAck,
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
    Time,
    Welcome,
    message_frame,
    parse_frame,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "terminal-protocol.md"

KEY = bytes(range(32))
NONCE_T = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
NONCE_E = bytes.fromhex("b0b1b2b3b4b5b6b7b8b9babbbcbdbebf")
TERMINAL_ID = "POS-01"
UID = "04A1B2C3D4E5F6"
T0 = 1_795_440_000_000  # 2026-11-23T13:20:00Z
PAY_REF = "BK20261123000123"
PAY_REF_DECLINED = "BK20261123000124"
# The proofs as HMAC-SHA256 over the layout the document specifies, computed here with
# hashlib rather than protocol.auth so the two can be compared.
TERMINAL_PROOF_INPUT = b"onecard/v1 terminal proof\x00POS-01\x00" + NONCE_T + NONCE_E
EDGE_PROOF_INPUT = b"onecard/v1 edge proof\x00POS-01\x00" + NONCE_E + NONCE_T
TERMINAL_PROOF = hmac.new(KEY, TERMINAL_PROOF_INPUT, hashlib.sha256).digest()
EDGE_PROOF = hmac.new(KEY, EDGE_PROOF_INPUT, hashlib.sha256).digest()

#: name -> (frame type, seq, body) for every frame vector in the document.
FRAMES: dict[str, tuple[FrameType, int, Body]] = {
    "HELLO": (
        FrameType.HELLO,
        1,
        Hello(
            terminal_id="POS-01",
            kind="pos",
            firmware="acme-pos 2.4.1",
            proto=1,
            nonce=NONCE_T,
            last_rec=41,
        ),
    ),
    "CHALLENGE": (FrameType.CHALLENGE, 1, Challenge(nonce=NONCE_E)),
    "AUTH": (FrameType.AUTH, 2, Auth(mac=TERMINAL_PROOF)),
    "WELCOME": (
        FrameType.WELCOME,
        2,
        Welcome(mac=EDGE_PROOF, time_ms=T0, site="SZ-FUTIAN", heartbeat_s=10, config={}),
    ),
    "HEARTBEAT": (
        FrameType.HEARTBEAT,
        3,
        Heartbeat(time_ms=1_795_440_010_000, buffered=0, flags=[]),
    ),
    "HEARTBEAT_ACK": (FrameType.HEARTBEAT_ACK, 3, HeartbeatAck(time_ms=1_795_440_010_004)),
    "TAP": (
        FrameType.TAP,
        4,
        Tap(rec=42, uid=UID, time_ms=1_795_440_012_345, amount=1250),
    ),
    "DECISION": (
        FrameType.DECISION,
        4,
        Decision(
            rec=42,
            ok=True,
            code="ok",
            display="消费 12.50元\n余额 87.50元",
            amount=1250,
            balance=8750,
            open_ms=None,
        ),
    ),
    "TAP_MENU": (
        FrameType.TAP,
        5,
        Tap(
            rec=43,
            uid=UID,
            time_ms=1_795_440_030_000,
            items=[LineItem(sku="A01", qty=2), LineItem(sku="D07", qty=1)],
        ),
    ),
    "DECISION_DECLINED": (
        FrameType.DECISION,
        5,
        Decision(
            rec=43,
            ok=False,
            code="insufficient_funds",
            display="余额不足\n余额 3.20元",
            balance=320,
        ),
    ),
    "EVENT": (
        FrameType.EVENT,
        6,
        Event(rec=44, time_ms=1_795_440_060_000, event="low_paper", door=None, detail=""),
    ),
    "ACK": (FrameType.ACK, 6, Ack(ok=True, upto=None, code=None)),
    "TIME": (FrameType.TIME, 1, Time(time_ms=1_795_443_600_000)),
    "CONFIG": (
        FrameType.CONFIG,
        2,
        Config(config={"pos_mode": "fixed", "price_fen": 1200}),
    ),
    "LIST_UPDATE": (
        FrameType.LIST_UPDATE,
        1,
        ListUpdate(
            kind="blacklist",
            version=1842,
            prev_version=1841,
            full=False,
            add=["04C0FFEE123456"],
            remove=["5A6B7C8D"],
        ),
    ),
    "ACK_VERSION_GAP": (FrameType.ACK, 1, Ack(ok=False, code="version_gap")),
    "DOOR_OPEN": (FrameType.DOOR_OPEN, 2, DoorOpen(door="D1", open_ms=5000)),
    "RECORD_UPLOAD": (
        FrameType.RECORD_UPLOAD,
        7,
        RecordUpload(
            records=[
                BufferedRecord(
                    rec=100,
                    time_ms=1_795_440_090_000,
                    what="tap",
                    uid=UID,
                    granted=True,
                    door="D1",
                ),
                BufferedRecord(
                    rec=101,
                    time_ms=1_795_440_095_000,
                    what="event",
                    door="D1",
                    event="door_held",
                ),
            ]
        ),
    ),
    "ACK_UPTO": (FrameType.ACK, 7, Ack(upto=101)),
    "HELLO_SMART": (
        FrameType.HELLO,
        1,
        Hello(
            terminal_id="CLOCK-01",
            kind="attendance",
            firmware="acme-clock 3.1",
            proto=1,
            nonce=NONCE_T,
            last_rec=230,
            lists=["blacklist", "whitelist"],
        ),
    ),
    "LIST_UPDATE_WHITELIST": (
        FrameType.LIST_UPDATE,
        2,
        ListUpdate(
            kind="whitelist",
            version=7,
            prev_version=6,
            full=False,
            add=[UID],
            remove=[],
            door="D2",
        ),
    ),
    "RECORD_REQUEST": (FrameType.RECORD_REQUEST, 3, RecordRequest(from_rec=102, to_rec=104)),
    "RECORD_REPLY": (
        FrameType.RECORD_REPLY,
        3,
        RecordReply(
            records=[
                BufferedRecord(
                    rec=102,
                    time_ms=1_795_440_091_000,
                    what="tap",
                    uid=UID,
                    granted=True,
                    punch="in",
                )
            ]
        ),
    ),
    "RECHARGE_PREPARE": (
        FrameType.RECHARGE_PREPARE,
        8,
        RechargePrepare(
            rec=7,
            uid=UID,
            amount=20000,
            method="bank",
            pay_ref=PAY_REF,
            time_ms=1_795_440_120_000,
        ),
    ),
    "RECHARGE_RESULT_PREPARED": (
        FrameType.RECHARGE_RESULT,
        8,
        RechargeResult(
            rec=7,
            pay_ref=PAY_REF,
            ok=True,
            code="ok",
            display="充值 200.00元\n请刷银行卡付款",
        ),
    ),
    "RECHARGE_COMMIT": (
        FrameType.RECHARGE_COMMIT,
        9,
        RechargeCommit(rec=8, pay_ref=PAY_REF, time_ms=1_795_440_150_000),
    ),
    "RECHARGE_RESULT": (
        FrameType.RECHARGE_RESULT,
        9,
        RechargeResult(
            rec=8,
            pay_ref=PAY_REF,
            ok=True,
            code="ok",
            display="充值成功 200.00元\n余额 287.50元",
            balance=28750,
        ),
    ),
    "RECHARGE_ABORT": (
        FrameType.RECHARGE_ABORT,
        11,
        RechargeAbort(
            rec=10,
            pay_ref=PAY_REF_DECLINED,
            reason="bank_declined",
            time_ms=1_795_440_180_000,
        ),
    ),
    "RECHARGE_RESULT_ABORTED": (
        FrameType.RECHARGE_RESULT,
        11,
        RechargeResult(rec=10, pay_ref=PAY_REF_DECLINED, ok=True, code="ok", display="充值已取消"),
    ),
    "ERROR": (
        FrameType.ERROR,
        1,
        Error(code="unauthenticated", message="send HELLO first"),
    ),
    "ERROR_AUTH_FAILED": (
        FrameType.ERROR,
        2,
        Error(code="auth_failed", message="terminal proof does not match"),
    ),
}
#: Vectors that are not one good frame; each has its own test below.
OTHER_VECTORS = {
    "CRC_CHECK",
    "TERMINAL_KEY",
    "TERMINAL_PROOF_INPUT",
    "EDGE_PROOF_INPUT",
    "CORRUPT_TAP",
    "NOISE_THEN_HEARTBEAT_ACK",
}

_VECTOR_LINE = re.compile(r"^Vector: ([A-Z0-9_]+)$")
_HEX_PAIR = re.compile(r"^[0-9A-Fa-f]{2}$")


def _load_vectors() -> dict[str, bytes]:
    """Every ``Vector: NAME`` + ```hex block of the document; a stray hex block is an error."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    vectors: dict[str, bytes] = {}
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip() == "```hex":
            raise AssertionError(f"line {index + 1}: hex block without a `Vector: NAME` line")
        match = _VECTOR_LINE.match(line)
        if match is None:
            index += 1
            continue
        name = match.group(1)
        assert name not in vectors, f"vector {name} appears twice"
        assert lines[index + 1] == "```hex", f"vector {name} is not followed by a hex block"
        end = lines.index("```", index + 2)
        tokens = " ".join(lines[index + 2 : end]).split()
        bad = [token for token in tokens if not _HEX_PAIR.match(token)]
        assert not bad, f"vector {name} has non-hex tokens {bad[:3]}"
        vectors[name] = bytes.fromhex("".join(tokens))
        index = end + 1
    return vectors


VECTORS = _load_vectors()


def _decode_one(data: bytes) -> Frame:
    decoder = FrameDecoder()
    frames = decoder.feed(data)
    assert decoder.take_errors() == []
    assert decoder.buffered == 0
    assert len(frames) == 1
    return frames[0]


def _body(name: str) -> Any:
    return parse_frame(_decode_one(VECTORS[name]))


def test_document_holds_exactly_the_vectors_this_test_checks() -> None:
    assert set(VECTORS) == set(FRAMES) | OTHER_VECTORS


def test_every_frame_type_has_a_vector() -> None:
    assert {ftype for ftype, _, _ in FRAMES.values()} == set(FrameType)


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_vector_decodes_to_the_expected_message(name: str) -> None:
    ftype, seq, body = FRAMES[name]
    frame = _decode_one(VECTORS[name])
    assert (frame.type, frame.seq, frame.version) == (ftype, seq, 1)
    assert parse_frame(frame) == body


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_expected_message_encodes_to_the_vector_bytes(name: str) -> None:
    ftype, seq, body = FRAMES[name]
    frame = message_frame(body, seq)
    assert frame.type == ftype
    assert encode_frame(frame) == VECTORS[name]


def test_all_frame_vectors_decode_in_order_from_one_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    stream = b"".join(VECTORS[name] for name in FRAMES)
    frames = [frame for byte in stream for frame in decoder.feed(bytes([byte]))]
    assert [(f.type, f.seq, parse_frame(f)) for f in frames] == list(FRAMES.values())
    assert decoder.take_errors() == []


def test_crc_check_value_is_0x29b1_for_123456789() -> None:
    data = VECTORS["CRC_CHECK"]
    assert data[:-2] == b"123456789"
    assert int.from_bytes(data[-2:], "big") == crc16(data[:-2]) == 0x29B1


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_frame_crc_covers_the_bytes_after_stx_up_to_the_crc(name: str) -> None:
    data = VECTORS[name]
    assert data[0] == 0x02
    assert int.from_bytes(data[5:7], "big") == len(data) - HEADER_SIZE - 2 <= MAX_PAYLOAD
    assert int.from_bytes(data[-2:], "big") == crc16(data[1:-2])


def test_documented_key_is_the_fixed_key() -> None:
    assert VECTORS["TERMINAL_KEY"] == KEY
    assert auth.parse_key(KEY.hex()) == KEY


def test_proof_inputs_follow_the_documented_layout() -> None:
    assert VECTORS["TERMINAL_PROOF_INPUT"] == TERMINAL_PROOF_INPUT
    assert VECTORS["EDGE_PROOF_INPUT"] == EDGE_PROOF_INPUT
    assert auth.terminal_proof(KEY, TERMINAL_ID, NONCE_T, NONCE_E) == TERMINAL_PROOF
    assert auth.edge_proof(KEY, TERMINAL_ID, NONCE_T, NONCE_E) == EDGE_PROOF


def test_auth_and_welcome_macs_are_the_proofs_for_the_documented_nonces() -> None:
    hello, challenge = _body("HELLO"), _body("CHALLENGE")
    key = VECTORS["TERMINAL_KEY"]
    terminal = auth.terminal_proof(key, hello.terminal_id, hello.nonce, challenge.nonce)
    edge = auth.edge_proof(key, hello.terminal_id, hello.nonce, challenge.nonce)
    auth.verify(terminal, _body("AUTH").mac, "terminal")
    auth.verify(edge, _body("WELCOME").mac, "edge")
    assert terminal != edge


def test_corrupted_frame_is_dropped_with_a_checksum_error() -> None:
    corrupt, good = VECTORS["CORRUPT_TAP"], VECTORS["TAP"]
    differing = [i for i, (a, b) in enumerate(zip(corrupt, good, strict=True)) if a != b]
    assert len(differing) == 1
    assert HEADER_SIZE <= differing[0] < len(good) - 2  # inside the payload
    decoder = FrameDecoder()
    assert decoder.feed(corrupt) == []
    assert any(isinstance(error, ChecksumError) for error in decoder.take_errors())
    assert decoder.stats.crc_errors == 1
    # The retransmission that follows gets through.
    assert decoder.feed(good) == [_decode_one(good)]


def test_noise_before_a_frame_is_skipped() -> None:
    data, frame_bytes = VECTORS["NOISE_THEN_HEARTBEAT_ACK"], VECTORS["HEARTBEAT_ACK"]
    assert data.endswith(frame_bytes)
    decoder = FrameDecoder()
    assert decoder.feed(data) == [_decode_one(frame_bytes)]
    assert decoder.take_errors() != []
    assert decoder.stats.bytes_skipped == len(data) - len(frame_bytes)


def _field_tables() -> list[list[str]]:
    """The first column of every Markdown table in the document whose header is ``field``."""
    tables: list[list[str]] = []
    rows: list[str] | None = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            rows = None
        elif cells[0] == "field":
            rows = []
            tables.append(rows)
        elif rows is not None and not set(cells[0]) <= {"-", ":"}:
            rows.append(cells[0].strip("`"))
    return tables


def test_field_tables_list_every_body_field_in_encoding_order() -> None:
    documented = sorted(_field_tables())
    bodies: set[type[Body]] = {*BODY_TYPES.values(), LineItem, BufferedRecord}
    assert documented == sorted(list(body.__struct_fields__) for body in bodies)


def test_message_type_table_lists_every_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    for ftype in FrameType:
        assert f"| 0x{ftype.value:02X} | {ftype.name} |" in text
