"""Frame bodies: one MessagePack Struct per frame type, round-tripping exactly; a payload
that is not the body of its frame type is a MessageError naming the field."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import terminal as t
from protocol.errors import FramingError, MessageError, ProtocolError
from protocol.framing import MAX_PAYLOAD, Frame, FrameDecoder, FrameType, encode_frame
from protocol.terminal import (
    BODY_TYPES,
    FRAME_TYPES,
    decode_body,
    encode_body,
    message_frame,
    parse_frame,
)

ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
LOWER = "abcdefghijklmnopqrstuvwxyz"
#: 2000-01-01 and 2200-01-01 in Unix milliseconds: the documented bounds of a frame time.
TIME_MS_MIN, TIME_MS_MAX = 946_684_800_000, 7_258_118_400_000
TAP_TIME = 1_795_406_706_000  # 2026-11-23T04:05:06Z


def led_by(first: str, rest: str, max_rest: int) -> st.SearchStrategy[str]:
    return st.builds(str.__add__, st.sampled_from(first), st.text(alphabet=rest, max_size=max_rest))


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


terminal_ids = led_by(ALNUM, ALNUM + "_-", 31)
card_uids = st.sampled_from([4, 7, 8, 10]).flatmap(
    lambda n: st.binary(min_size=n, max_size=n).map(lambda b: b.hex().upper())
)
pay_refs = st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)], min_size=1, max_size=64)
codes = led_by(LOWER, LOWER + "0123456789_", 31)
shorts = st.text(max_size=64)
#: Door names: at most 32 characters on the wire.
names32 = st.text(max_size=32)
displays = st.text(max_size=80)
u32 = st.integers(0, 2**32 - 1)
times_ms = st.integers(TIME_MS_MIN, TIME_MS_MAX)
fen = st.integers(0, 1_000_000_000)
signed_fen = st.integers(-1_000_000_000, 1_000_000_000)
nonces = st.binary(min_size=16, max_size=16)
macs = st.binary(min_size=32, max_size=32)
#: What a config map may hold: MessagePack's own value space (64-bit ints, finite floats).
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
configs = st.dictionaries(st.text(max_size=10), msgpack_values, max_size=5)

EVENT_NAMES = ["door_forced", "door_held", "tamper", "low_paper", "power_fail", "reader_fault"]
events = st.sampled_from(EVENT_NAMES)


def max_length(body: type[t.Body], field: str) -> int:
    """A list field's documented maximum, read from the schema so the tests follow it."""
    (info,) = (f for f in msgspec.inspect.type_info(body).fields if f.name == field)
    assert isinstance(info.type, msgspec.inspect.ListType)
    assert info.type.max_length is not None
    return info.type.max_length


tap_line_items = st.builds(t.LineItem, sku=shorts, qty=st.integers(1, 999))
buffered_taps = st.builds(
    t.BufferedRecord,
    rec=u32,
    time_ms=times_ms,
    what=st.just("tap"),
    uid=card_uids,
    granted=st.booleans(),
    door=optional(names32),
    event=optional(events),
    punch=optional(st.sampled_from(["in", "out"])),
)
buffered_events = st.builds(
    t.BufferedRecord,
    rec=u32,
    time_ms=times_ms,
    what=st.just("event"),
    uid=optional(card_uids),
    granted=optional(st.booleans()),
    door=optional(names32),
    event=events,
    punch=optional(st.sampled_from(["in", "out"])),
)
buffered_records = buffered_taps | buffered_events
#: A POS terminal sends exactly one of ``amount`` and ``items``; other terminals neither.
tap_charges = st.one_of(
    st.fixed_dictionaries({"amount": fen}),
    st.fixed_dictionaries({"items": st.lists(tap_line_items, max_size=5)}),
    st.just({}),
)

STRATEGIES: dict[type[t.Body], st.SearchStrategy[Any]] = {
    t.Hello: st.builds(
        t.Hello,
        terminal_id=terminal_ids,
        kind=st.sampled_from(["door", "attendance", "pos", "recharge"]),
        firmware=shorts,
        proto=st.integers(1, 255),
        nonce=nonces,
        last_rec=u32,
        lists=st.just(msgspec.UNSET)
        | st.lists(st.sampled_from(["blacklist", "whitelist"]), max_size=2),
    ),
    t.Challenge: st.builds(t.Challenge, nonce=nonces),
    t.Auth: st.builds(t.Auth, mac=macs),
    t.Welcome: st.builds(
        t.Welcome,
        mac=macs,
        time_ms=times_ms,
        site=shorts,
        heartbeat_s=st.integers(1, 600),
        config=configs,
    ),
    t.Heartbeat: st.builds(
        t.Heartbeat, time_ms=times_ms, buffered=u32, flags=st.lists(codes, max_size=16)
    ),
    t.HeartbeatAck: st.builds(t.HeartbeatAck, time_ms=times_ms),
    t.LineItem: tap_line_items,
    t.Tap: tap_charges.flatmap(
        lambda charge: st.builds(
            t.Tap,
            rec=u32,
            uid=card_uids,
            time_ms=times_ms,
            punch=optional(st.sampled_from(["in", "out"])),
            door=optional(names32),
            **{k: st.just(v) for k, v in charge.items()},
        )
    ),
    t.Decision: st.builds(
        t.Decision,
        rec=u32,
        ok=st.booleans(),
        code=codes,
        display=displays,
        amount=optional(fen),
        balance=optional(signed_fen),
        open_ms=optional(st.integers(0, 60000)),
    ),
    t.RechargePrepare: st.builds(
        t.RechargePrepare,
        rec=u32,
        uid=card_uids,
        amount=st.integers(1, 1_000_000_000),
        method=st.sampled_from(["cash", "bank", "online"]),
        pay_ref=pay_refs,
        time_ms=times_ms,
    ),
    t.RechargeCommit: st.builds(t.RechargeCommit, rec=u32, pay_ref=pay_refs, time_ms=times_ms),
    t.RechargeAbort: st.builds(
        t.RechargeAbort, rec=u32, pay_ref=pay_refs, reason=shorts, time_ms=times_ms
    ),
    t.RechargeResult: st.builds(
        t.RechargeResult,
        rec=u32,
        pay_ref=pay_refs,
        ok=st.booleans(),
        code=codes,
        display=displays,
        balance=optional(signed_fen),
    ),
    t.Event: st.builds(
        t.Event,
        rec=u32,
        time_ms=times_ms,
        event=events,
        door=optional(names32),
        detail=shorts,
    ),
    t.Time: st.builds(t.Time, time_ms=times_ms),
    t.Config: st.builds(t.Config, config=configs),
    t.ListUpdate: st.builds(
        t.ListUpdate,
        kind=st.sampled_from(["blacklist", "whitelist"]),
        version=st.integers(0, 2**64 - 1),
        prev_version=st.integers(0, 2**64 - 1),
        full=st.booleans(),
        add=st.lists(card_uids, max_size=8),
        remove=st.lists(card_uids, max_size=8),
        door=st.just(msgspec.UNSET) | shorts,
    ),
    t.DoorOpen: st.builds(
        t.DoorOpen,
        door=st.none() | st.text(max_size=64),
        open_ms=st.integers(500, 60000),
    ),
    t.BufferedRecord: buffered_records,
    t.RecordUpload: st.builds(
        t.RecordUpload, records=st.lists(buffered_records, min_size=1, max_size=5)
    ),
    t.RecordRequest: st.tuples(u32, st.integers(0, t.MAX_UPLOAD_RECORDS - 1))
    .filter(lambda r: r[0] + r[1] <= 0xFFFFFFFF)
    .map(lambda r: t.RecordRequest(from_rec=r[0], to_rec=r[0] + r[1])),
    t.RecordReply: st.builds(t.RecordReply, records=st.lists(buffered_records, max_size=5)),
    t.Ack: st.builds(t.Ack, ok=st.booleans(), upto=optional(u32), code=optional(codes)),
    t.Error: st.builds(t.Error, code=codes, message=displays),
}
#: Bodies nested inside other bodies, never sent as a frame of their own.
NESTED = {t.LineItem, t.BufferedRecord}


def test_every_frame_type_has_exactly_one_body_type() -> None:
    assert set(BODY_TYPES) == set(FrameType)
    assert len(set(BODY_TYPES.values())) == len(BODY_TYPES)
    assert all(FRAME_TYPES[body] is ftype for ftype, body in BODY_TYPES.items())


def test_every_body_struct_has_a_round_trip_strategy() -> None:
    bodies = {
        obj
        for obj in vars(t).values()
        if inspect.isclass(obj) and issubclass(obj, t.Body) and obj is not t.Body
    }
    assert set(STRATEGIES) == bodies
    assert bodies - NESTED == set(BODY_TYPES.values())


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("ftype", list(FrameType), ids=lambda f: f.name)
@given(data=st.data(), seq=st.integers(0, 0xFFFF))
@settings(max_examples=25)
def test_body_round_trips_through_message_frame_and_parse_frame(
    ftype: FrameType, data: st.DataObject, seq: int
) -> None:
    body = data.draw(STRATEGIES[BODY_TYPES[ftype]])

    frame = message_frame(body, seq)

    assert frame.type == ftype
    assert frame.seq == seq
    assert frame.payload == encode_body(body)
    assert parse_frame(frame) == body
    assert type(parse_frame(frame)) is BODY_TYPES[ftype]


@given(data=st.data(), seq=st.integers(0, 0xFFFF))
@settings(max_examples=60)
def test_any_body_survives_the_wire(data: st.DataObject, seq: int) -> None:
    body = data.draw(st.one_of([STRATEGIES[b] for b in BODY_TYPES.values()]))
    frame = message_frame(body, seq)

    (received,) = FrameDecoder().feed(encode_frame(frame))

    assert parse_frame(received) == body


def test_a_body_too_big_for_one_frame_is_refused_by_the_encoder_not_truncated() -> None:
    frame = message_frame(t.Config(config={"logo": bytes(MAX_PAYLOAD)}), 1)

    assert len(frame.payload) > MAX_PAYLOAD
    with pytest.raises(FramingError, match="exceeds"):
        encode_frame(frame)


TEN_BYTE_UID = "0123456789ABCDEF0123"


def test_the_largest_valid_list_update_fits_in_one_frame() -> None:
    half = t.MAX_LIST_UIDS // 2
    body = t.ListUpdate(
        kind="whitelist",
        version=2**64 - 1,
        prev_version=2**64 - 2,
        add=[TEN_BYTE_UID] * half,
        remove=[TEN_BYTE_UID] * (t.MAX_LIST_UIDS - half),
    )

    assert len(message_frame(body, 1).payload) <= MAX_PAYLOAD


def test_the_largest_valid_door_whitelist_update_fits_in_one_frame() -> None:
    body = t.ListUpdate(
        kind="whitelist",
        version=2**64 - 1,
        prev_version=2**64 - 2,
        add=[TEN_BYTE_UID] * t.MAX_LIST_UIDS,
        door="门" * 64,
    )

    assert len(message_frame(body, 1).payload) <= MAX_PAYLOAD


def test_a_record_request_asks_for_at_most_one_upload_of_records() -> None:
    t.RecordRequest(from_rec=100, to_rec=100 + t.MAX_UPLOAD_RECORDS - 1)
    with pytest.raises(ValueError, match="at most"):
        t.RecordRequest(from_rec=100, to_rec=100 + t.MAX_UPLOAD_RECORDS)
    with pytest.raises(ValueError, match="from_rec <= to_rec"):
        t.RecordRequest(from_rec=101, to_rec=100)


def test_a_reply_with_the_largest_records_fits_in_one_frame() -> None:
    record = t.BufferedRecord(
        rec=2**32 - 1,
        time_ms=7_258_118_400_000,
        what="tap",
        uid=TEN_BYTE_UID,
        granted=True,
        door="门" * 32,
        event="reader_fault",
        punch="out",
    )
    body = t.RecordReply(records=[record] * t.MAX_UPLOAD_RECORDS)

    assert len(message_frame(body, 1).payload) <= MAX_PAYLOAD


def test_a_full_list_update_of_ten_byte_uids_fits_in_one_frame() -> None:
    uids = [TEN_BYTE_UID] * max_length(t.ListUpdate, "add")
    body = t.ListUpdate(kind="whitelist", version=2**64 - 1, prev_version=0, full=True, add=uids)

    assert len(message_frame(body, 1).payload) <= MAX_PAYLOAD


def test_list_update_refuses_more_uids_than_fit_in_a_frame() -> None:
    with pytest.raises(ValueError, match="together"):
        t.ListUpdate(
            kind="blacklist",
            version=2,
            prev_version=1,
            add=[TEN_BYTE_UID] * t.MAX_LIST_UIDS,
            remove=[TEN_BYTE_UID],
        )


def test_the_largest_valid_record_upload_fits_in_one_frame() -> None:
    record = t.BufferedRecord(
        rec=2**32 - 1,
        time_ms=TIME_MS_MAX,
        what="tap",
        uid=TEN_BYTE_UID,
        granted=True,
        door="门" * 32,
        event="door_forced",
        punch="out",
    )
    body = t.RecordUpload(records=[record] * max_length(t.RecordUpload, "records"))

    assert len(message_frame(body, 1).payload) <= MAX_PAYLOAD


def test_defaults_are_filled_in_on_decode() -> None:
    payload = msgspec.msgpack.encode({"time_ms": TAP_TIME})

    assert decode_body(FrameType.HEARTBEAT, payload) == t.Heartbeat(
        time_ms=TAP_TIME, buffered=0, flags=[]
    )


# --- rejections ----------------------------------------------------------------------------


def pack(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


def reject(ftype: int, payload: bytes) -> MessageError:
    with pytest.raises(MessageError) as info:
        decode_body(ftype, payload)
    return info.value


TAP = {"rec": 42, "uid": "04A1B2C3", "time_ms": TAP_TIME, "amount": 1200}


@pytest.mark.parametrize("ftype", [0x00, 0x08, 0x12, 0x47, 0x80, 0xFF])
def test_unknown_frame_type_is_a_message_error(ftype: int) -> None:
    assert ftype not in set(FrameType)

    error = reject(ftype, pack(TAP))

    assert "unknown frame type" in str(error)
    with pytest.raises(MessageError, match="unknown frame type"):
        parse_frame(Frame(ftype, 1, pack(TAP)))


def test_tap_payload_under_decision_names_the_stray_field() -> None:
    error = reject(FrameType.DECISION, pack(TAP))

    assert str(error).startswith("DECISION:")
    assert "`uid`" in str(error)


def test_decision_missing_a_field_names_it() -> None:
    error = reject(FrameType.DECISION, pack({"rec": 42, "ok": True, "code": "ok"}))

    assert "`display`" in str(error)


@pytest.mark.parametrize(
    ("ftype", "payload", "path"),
    [
        (FrameType.DECISION, {"rec": 1, "ok": "yes", "code": "ok", "display": ""}, "$.ok"),
        (FrameType.DECISION, {"rec": -1, "ok": True, "code": "ok", "display": ""}, "$.rec"),
        (FrameType.DECISION, {"rec": 1, "ok": True, "code": "OK", "display": ""}, "$.code"),
        (
            FrameType.DECISION,
            {"rec": 1, "ok": True, "code": "ok", "display": "x" * 81},
            "$.display",
        ),
        (FrameType.TAP, {**TAP, "uid": "04a1b2c3"}, "$.uid"),
        (FrameType.TAP, {**TAP, "uid": "04A1B2"}, "$.uid"),
        (FrameType.TAP, {**TAP, "amount": -1}, "$.amount"),
        (FrameType.TAP, {**TAP, "amount": 12.0}, "$.amount"),
        (FrameType.TAP, {**TAP, "rec": 2**32}, "$.rec"),
        (FrameType.TAP, {**TAP, "time_ms": TIME_MS_MIN - 1}, "$.time_ms"),
        (FrameType.TAP, {**TAP, "time_ms": TIME_MS_MAX + 1}, "$.time_ms"),
        (FrameType.TAP, {**TAP, "items": [{"sku": "rice", "qty": 0}]}, "$.items[0].qty"),
        (FrameType.TAP, {**TAP, "punch": "sideways"}, "$.punch"),
        (
            FrameType.HELLO,
            {"terminal_id": "T1", "kind": "pos", "firmware": "1", "nonce": b"x"},
            "$.nonce",
        ),
        (
            FrameType.HELLO,
            {"terminal_id": "t1", "kind": "pos", "firmware": "1", "nonce": bytes(16)},
            "$.terminal_id",
        ),
        (
            FrameType.HELLO,
            {"terminal_id": "T1", "kind": "desk", "firmware": "1", "nonce": bytes(16)},
            "$.kind",
        ),
        (FrameType.AUTH, {"mac": bytes(31)}, "$.mac"),
        (FrameType.AUTH, {"mac": "00" * 32}, "$.mac"),
        (
            FrameType.RECHARGE_PREPARE,
            {
                "rec": 1,
                "uid": "04A1B2C3",
                "amount": 0,
                "method": "cash",
                "pay_ref": "P1",
                "time_ms": TAP_TIME,
            },
            "$.amount",
        ),
        (
            FrameType.RECHARGE_COMMIT,
            {"rec": 1, "pay_ref": "has space", "time_ms": TAP_TIME},
            "$.pay_ref",
        ),
        (
            FrameType.RECORD_UPLOAD,
            {"records": [{"rec": 1, "time_ms": TAP_TIME, "what": "nap"}]},
            "$.records[0].what",
        ),
        (
            FrameType.LIST_UPDATE,
            {"kind": "blacklist", "version": 1, "prev_version": 0, "add": ["zz"]},
            "$.add[0]",
        ),
        (
            FrameType.WELCOME,
            {"mac": bytes(32), "time_ms": TAP_TIME, "site": "BJ01", "config": {1: 2}},
            "$.config",
        ),
    ],
)
def test_invalid_field_is_rejected_with_its_path(
    ftype: FrameType, payload: dict[Any, Any], path: str
) -> None:
    error = reject(ftype, pack(payload))

    assert error.path is not None
    assert error.path.startswith(path)
    assert str(error).startswith(f"{ftype.name}:")


def test_record_upload_must_carry_at_least_one_record() -> None:
    assert reject(FrameType.RECORD_UPLOAD, pack({"records": []})).path == "$.records"


def test_record_upload_beyond_its_maximum_is_rejected() -> None:
    record = {"rec": 1, "time_ms": TAP_TIME, "what": "tap", "uid": "04A1B2C3", "granted": True}
    most = max_length(t.RecordUpload, "records")

    assert decode_body(FrameType.RECORD_UPLOAD, pack({"records": [record] * most}))
    error = reject(FrameType.RECORD_UPLOAD, pack({"records": [record] * (most + 1)}))
    assert error.path == "$.records"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"what": "tap", "granted": True}, "needs `uid` and `granted`"),
        ({"what": "tap", "uid": "04A1B2C3"}, "needs `uid` and `granted`"),
        ({"what": "event", "door": "east"}, "needs `event`"),
    ],
)
def test_buffered_record_carries_what_its_kind_needs(record: dict[str, Any], message: str) -> None:
    payload = pack({"records": [{"rec": 1, "time_ms": TAP_TIME, **record}]})

    error = reject(FrameType.RECORD_UPLOAD, payload)

    assert message in str(error)
    assert error.path == "$.records[0]"


def test_tap_carries_amount_or_items_but_not_both() -> None:
    items = [{"sku": "rice", "qty": 1}]
    assert decode_body(FrameType.TAP, pack({**TAP, "amount": None, "items": items}))

    error = reject(FrameType.TAP, pack({**TAP, "items": items}))

    assert "either `amount` or `items`" in str(error)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1", b"\x81", b"\x81\xa3rec", b"\xdf\xff\xff\xff\xff", pack(TAP) + b"\x00"],
    ids=["empty", "never-used-byte", "truncated-map", "truncated-value", "huge-map", "trailing"],
)
def test_malformed_messagepack_is_a_message_error(payload: bytes) -> None:
    error = reject(FrameType.TAP, payload)

    assert "malformed MessagePack" in str(error)


@pytest.mark.parametrize(
    "payload",
    [b"\x81\xa3uid\xa4\x30\x34\xff\x41", b"\x81\xa1\xff\x01", b"\x81\xa4door\xa1\xc3"],
    ids=["in-value", "in-key", "truncated-sequence"],
)
def test_invalid_utf8_is_malformed_messagepack(payload: bytes) -> None:
    assert "malformed MessagePack" in str(reject(FrameType.TAP, payload))


@pytest.mark.parametrize("value", [[1, 2], 7, "tap", None, b"\x01"])
def test_a_body_that_is_not_a_map_is_rejected(value: object) -> None:
    reject(FrameType.TAP, pack(value))


@pytest.mark.parametrize("depth", [1_000, MAX_PAYLOAD - 20])
def test_deeply_nested_config_is_a_message_error(depth: int) -> None:
    payload = b"\x81\xa6config\x81\xa1a" + b"\x91" * depth + b"\x90"
    assert len(payload) <= MAX_PAYLOAD

    with pytest.raises(MessageError):
        decode_body(FrameType.CONFIG, payload)


def test_body_errors_are_protocol_errors() -> None:
    error = reject(FrameType.TAP, b"\xc1")

    assert isinstance(error, ProtocolError)
    assert error.code == "bad_message"


# --- fuzz: only MessageError, whatever the payload --------------------------------------

FIELD_NAMES = sorted({name for body in STRATEGIES for name in body.__struct_fields__})
fuzz_values = st.recursive(
    msgpack_values | st.sampled_from([TAP_TIME, "04A1B2C3", bytes(16), bytes(32)]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=5), inner, max_size=6)
    ),
    max_leaves=20,
)


def decode_or_message_error(ftype: int, payload: bytes) -> None:
    with contextlib.suppress(MessageError):
        decode_body(ftype, payload)


@pytest.mark.parametrize("ftype", list(FrameType), ids=lambda f: f.name)
@given(payload=st.binary(max_size=200))
@settings(max_examples=40)
def test_random_bytes_as_any_body_raise_only_message_error(
    ftype: FrameType, payload: bytes
) -> None:
    decode_or_message_error(ftype, payload)


@pytest.mark.parametrize("ftype", list(FrameType), ids=lambda f: f.name)
@given(value=fuzz_values)
@settings(max_examples=25)
def test_random_messagepack_as_any_body_raises_only_message_error(
    ftype: FrameType, value: Any
) -> None:
    decode_or_message_error(ftype, pack(value))


@given(ftype=st.integers(0, 0xFF), payload=st.binary(max_size=64))
@settings(max_examples=100)
def test_any_frame_type_with_any_payload_raises_only_message_error(
    ftype: int, payload: bytes
) -> None:
    decode_or_message_error(ftype, payload)
