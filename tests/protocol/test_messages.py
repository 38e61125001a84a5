"""MQTT payloads: every message round-trips; anything off-contract is a MessageError naming
the field, and no input whatsoever raises anything else."""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import messages as m
from protocol.errors import MessageError, ProtocolError
from protocol.messages import (
    COMMAND_TYPES,
    MAX_BATCH_RECORDS,
    MAX_FEN,
    MAX_PAYLOAD_BYTES,
    RECORD_TYPES,
    decode,
    decode_batch,
    decode_batch_records,
    decode_command,
    decode_record,
    decode_site_state,
    encode,
)

# --- field strategies: the documented value spaces -----------------------------------------

ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
site_ids = (
    st.lists(st.text(alphabet=ALNUM, min_size=1, max_size=6), min_size=1, max_size=4)
    .map("-".join)
    .filter(lambda s: len(s) >= 2)
)
LOWER = "abcdefghijklmnopqrstuvwxyz"


def led_by(first: str, rest: str, max_rest: int) -> st.SearchStrategy[str]:
    """One character of ``first`` then up to ``max_rest`` of ``rest`` (an ``^[..][..]{0,n}``)."""
    return st.builds(str.__add__, st.sampled_from(first), st.text(alphabet=rest, max_size=max_rest))


terminal_ids = led_by(ALNUM, ALNUM + "_-", 31)
card_uids = st.sampled_from([4, 7, 8, 10]).flatmap(
    lambda n: st.binary(min_size=n, max_size=n).map(lambda b: b.hex().upper())
)
record_ids = led_by(ALNUM + LOWER, ALNUM + LOWER + "._:-", 95)
pay_refs = st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)], min_size=1, max_size=64)
reason_codes = led_by(LOWER, LOWER + "0123456789_", 31)
sha256_hex = st.binary(min_size=32, max_size=32).map(bytes.hex)
names = st.text(min_size=1, max_size=64)
texts = st.text(max_size=100)
fen = st.integers(0, MAX_FEN)
positive_fen = st.integers(1, MAX_FEN)
seqs = st.integers(1, 2**63 - 1)
seqs_or_zero = st.integers(0, 2**63 - 1)
epochs = st.integers(1, 2**53 - 1)
versions = st.integers(0, 2**63 - 1)
counts = st.integers(0, 2**31 - 1)
term_recs = st.integers(0, 2**32 - 1)
utc_times = st.datetimes(timezones=st.just(UTC))
non_negative_floats = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
log_levels = st.sampled_from(["debug", "info", "warning", "error", "critical"])
terminal_kinds = st.sampled_from(["door", "attendance", "pos", "recharge", "desk"])
#: JSON values as the free-form ``data``/``fields`` maps carry them (64-bit ints, finite floats).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=4)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


# --- message strategies --------------------------------------------------------------------


def record_fields() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "id": record_ids,
        "seq": seqs,
        "site": site_ids,
        "terminal": optional(terminal_ids),
        "term_rec": optional(term_recs),
        "at": utc_times,
        "received_at": utc_times,
        "offline": st.booleans(),
        "card_uid": optional(card_uids),
    }


def command_fields() -> dict[str, st.SearchStrategy[Any]]:
    return {"id": names, "issued_at": utc_times, "expires_at": optional(utc_times)}


pos_line_items = st.builds(
    m.LineItem, sku=names, qty=st.integers(1, 999), unit_fen=st.integers(0, 100_000)
)


@st.composite
def purchases(draw: st.DrawFn) -> m.Purchase:
    items = draw(optional(st.lists(pos_line_items, max_size=5)))
    amount = draw(fen) if items is None else sum(i.qty * i.unit_fen for i in items)
    approved = draw(st.booleans())
    subsidy = draw(st.integers(0, amount)) if approved else 0
    cash = amount - subsidy if approved else 0
    return draw(
        st.builds(
            m.Purchase,
            **record_fields(),
            approved=st.just(approved),
            reason=reason_codes,
            amount=st.just(amount),
            subsidy_fen=st.just(subsidy),
            cash_fen=st.just(cash),
            items=st.just(items),
            meal_period=optional(names),
        )
    )


@st.composite
def card_intents(draw: st.DrawFn) -> m.CardIntent:
    action = draw(
        st.sampled_from(
            ["issue", "report_lost", "unlost", "reissue", "cancel", "freeze", "unfreeze"]
        )
    )
    return draw(
        st.builds(
            m.CardIntent,
            **{**record_fields(), "card_uid": card_uids},
            action=st.just(action),
            person_id=names if action == "issue" else optional(names),
            new_card_uid=card_uids if action == "reissue" else optional(card_uids),
            operator=names,
            reason=texts,
        )
    )


RECORD_STRATEGIES: dict[type[m.Record], st.SearchStrategy[Any]] = {
    m.DoorAccess: st.builds(
        m.DoorAccess,
        **record_fields(),
        door=names,
        direction=optional(st.sampled_from(["in", "out"])),
        granted=st.booleans(),
        reason=reason_codes,
        blacklist_version=versions,
    ),
    m.TerminalEvent: st.builds(
        m.TerminalEvent,
        **record_fields(),
        event=st.sampled_from(
            [
                "door_forced",
                "door_held",
                "tamper",
                "low_paper",
                "power_fail",
                "reader_fault",
                "auth_failed",
                "online",
                "offline",
            ]
        ),
        door=optional(names),
        detail=texts,
    ),
    m.AttendancePunch: st.builds(
        m.AttendancePunch,
        **record_fields(),
        punch=st.sampled_from(["in", "out", "auto"]),
        accepted=st.booleans(),
        reason=reason_codes,
    ),
    m.Purchase: purchases(),
    m.TicketUse: st.builds(
        m.TicketUse,
        **record_fields(),
        ticket_id=names,
        uses=st.integers(1, 100),
        approved=st.booleans(),
        reason=reason_codes,
    ),
    m.RechargePrepare: st.builds(
        m.RechargePrepare,
        **record_fields(),
        pay_ref=pay_refs,
        amount=positive_fen,
        method=st.sampled_from(["cash", "bank", "online"]),
    ),
    m.RechargeCommit: st.builds(
        m.RechargeCommit, **record_fields(), pay_ref=pay_refs, amount=positive_fen
    ),
    m.RechargeAbort: st.builds(m.RechargeAbort, **record_fields(), pay_ref=pay_refs, reason=texts),
    m.Refund: st.builds(
        m.Refund,
        **record_fields(),
        original_id=record_ids,
        amount=positive_fen,
        reason=texts,
        operator=names,
    ),
    m.Correction: st.builds(
        m.Correction,
        **record_fields(),
        original_id=record_ids,
        delta=st.integers(-MAX_FEN, MAX_FEN).filter(bool),
        reason=texts,
        operator=names,
    ),
    m.CardIntent: card_intents(),
}
any_record = st.one_of(*RECORD_STRATEGIES.values())


@st.composite
def record_batches(draw: st.DrawFn, max_records: int = 5) -> m.RecordBatch:
    site = draw(site_ids)
    records = draw(st.lists(any_record, min_size=1, max_size=max_records))
    first = draw(st.integers(1, 2**63 - len(records)))
    return m.RecordBatch(
        site=site,
        epoch=draw(epochs),
        first_seq=first,
        last_seq=first + len(records) - 1,
        records=[
            msgspec.structs.replace(r, seq=first + i, site=site) for i, r in enumerate(records)
        ],
    )


COMMAND_STRATEGIES: dict[type[m.Command], st.SearchStrategy[Any]] = {
    m.ResendFrom: st.builds(m.ResendFrom, **command_fields(), epoch=epochs, from_seq=seqs),
    m.Resync: st.builds(
        m.Resync, **command_fields(), what=st.sampled_from(["feed", "blacklist", "all"])
    ),
    m.LogsTail: st.builds(
        m.LogsTail,
        **command_fields(),
        stream=names,
        level=log_levels,
        duration_s=st.integers(1, 3600),
        match=optional(st.text(max_size=200)),
    ),
    m.LogsStop: st.builds(m.LogsStop, **command_fields(), stream=names),
    m.SetLogLevel: st.builds(
        m.SetLogLevel,
        **command_fields(),
        level=log_levels,
        duration_s=optional(st.integers(1, 86400)),
    ),
    m.Upgrade: st.builds(
        m.Upgrade,
        **command_fields(),
        rollout_id=names,
        version=names,
        manifest_url=st.text(min_size=1, max_size=200),
        manifest_sha256=sha256_hex,
    ),
    m.DoorOpen: st.builds(
        m.DoorOpen,
        **command_fields(),
        terminal=terminal_ids,
        door=optional(names),
        open_ms=st.integers(500, 60000),
        operator=names,
    ),
    m.SetTime: st.builds(m.SetTime, **command_fields(), now=utc_times),
}

terminal_statuses = st.builds(
    m.TerminalStatus,
    id=terminal_ids,
    kind=terminal_kinds,
    online=st.booleans(),
    last_seen=optional(utc_times),
)
terminal_healths = st.builds(
    m.TerminalHealth,
    id=terminal_ids,
    kind=terminal_kinds,
    online=st.booleans(),
    last_seen=optional(utc_times),
    rtt_ms=optional(non_negative_floats),
    frames_in=counts,
    frames_out=counts,
    frame_errors=counts,
    auth_failures=counts,
)
log_lines = st.builds(
    m.LogLine,
    at=utc_times,
    level=log_levels,
    event=st.text(max_size=200),
    logger=optional(names),
    fields=json_objects,
)


@st.composite
def feed_changes(draw: st.DrawFn) -> m.FeedChange:
    op = draw(st.sampled_from(["upsert", "delete"]))
    return m.FeedChange(
        op=op,
        entity=draw(
            st.sampled_from(
                [
                    "person",
                    "card",
                    "account",
                    "ticket",
                    "door",
                    "door_group",
                    "time_zone",
                    "holiday",
                    "access_level",
                    "terminal",
                    "policy",
                    "site_config",
                ]
            )
        ),
        key=draw(names),
        data=draw(json_objects) if op == "upsert" else None,
    )


@st.composite
def feeds(draw: st.DrawFn) -> m.Feed:
    snapshot = draw(st.booleans())
    prev = draw(st.integers(0, 2**63 - 2))
    version = draw(versions if snapshot else st.integers(prev + 1, 2**63 - 1))
    parts = draw(st.integers(1, 50))
    return m.Feed(
        site=draw(site_ids),
        feed_version=version,
        prev_version=prev,
        snapshot=snapshot,
        part=draw(st.integers(1, parts)),
        parts=parts,
        changes=draw(st.lists(feed_changes(), max_size=4)),
    )


blacklist_changes = st.builds(
    m.BlacklistChange,
    op=st.sampled_from(["add", "remove"]),
    card_uid=card_uids,
    reason=st.sampled_from(["lost", "cancelled", "replaced", "frozen", "fraud", "restored"]),
    effective_at=utc_times,
)


@st.composite
def blacklist_deltas(draw: st.DrawFn) -> m.BlacklistDelta:
    prev = draw(st.integers(0, 2**63 - 2))
    return m.BlacklistDelta(
        version=draw(st.integers(prev + 1, 2**63 - 1)),
        prev_version=prev,
        at=draw(utc_times),
        changes=draw(st.lists(blacklist_changes, max_size=4)),
    )


#: Every Struct of protocol.messages that travels on its own or inside another one.
STRATEGIES: dict[type[msgspec.Struct], st.SearchStrategy[Any]] = {
    **RECORD_STRATEGIES,
    **COMMAND_STRATEGIES,
    m.LineItem: pos_line_items,
    m.RecordBatch: record_batches(),
    m.Ack: st.builds(m.Ack, epoch=epochs, lane=st.sampled_from([0, 1]), acked_seq=seqs_or_zero),
    m.TerminalStatus: terminal_statuses,
    m.SiteBirth: st.builds(
        m.SiteBirth,
        at=utc_times,
        version=names,
        epoch=epochs,
        acked=st.lists(seqs_or_zero, min_size=2, max_size=2),
        outbox_depth=counts,
        outbox_oldest_age_s=optional(non_negative_floats),
        feed_version=versions,
        blacklist_version=versions,
        terminals=st.lists(terminal_statuses, max_size=3),
    ),
    m.SiteDeath: st.just(m.SiteDeath()),
    m.TerminalHealth: terminal_healths,
    m.Health: st.builds(
        m.Health,
        site=site_ids,
        at=utc_times,
        terminals=st.lists(terminal_healths, max_size=3),
        outbox_depth=counts,
        disk_free_bytes=optional(st.integers(0, 2**63 - 1)),
    ),
    m.LogLine: log_lines,
    m.LogBatch: st.builds(
        m.LogBatch,
        site=site_ids,
        stream=names,
        batch=counts,
        lines=st.lists(log_lines, max_size=3),
        dropped=counts,
        final=st.booleans(),
    ),
    m.Reply: st.builds(
        m.Reply,
        site=site_ids,
        cmd_id=names,
        at=utc_times,
        status=st.sampled_from(["accepted", "progress", "done", "failed", "rejected"]),
        detail=texts,
        data=json_objects,
    ),
    m.CentralState: st.builds(m.CentralState, online=st.booleans(), at=optional(utc_times)),
    m.FeedChange: feed_changes(),
    m.Feed: feeds(),
    m.BlacklistChange: blacklist_changes,
    m.BlacklistDelta: blacklist_deltas(),
}
#: Bases and helpers that are not messages of their own.
NOT_MESSAGES = {m.Message, m.Record, m.Command, m.RawRecordBatch, m._OnlineProbe}


def test_every_message_struct_has_a_round_trip_strategy() -> None:
    structs = {
        obj
        for obj in vars(m).values()
        if inspect.isclass(obj) and issubclass(obj, msgspec.Struct) and obj.__module__ == m.__name__
    }
    assert set(STRATEGIES) == structs - NOT_MESSAGES
    assert set(RECORD_TYPES) == set(RECORD_STRATEGIES)
    assert set(COMMAND_TYPES) == set(COMMAND_STRATEGIES)


# --- round trips ---------------------------------------------------------------------------


def type_id(cls: type) -> str:
    return cls.__name__


@pytest.mark.parametrize("cls", list(STRATEGIES), ids=type_id)
@given(data=st.data())
@settings(max_examples=20)
def test_message_round_trips_through_json(cls: type[m.Message], data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[cls])
    payload = encode(message)

    assert type(message) is cls
    assert decode(payload, cls) == message
    # Records and commands also come back as themselves through the dispatching decoders.
    if cls in RECORD_STRATEGIES:
        assert json.loads(payload)["kind"] == cls.__struct_config__.tag
        assert type(decode_record(payload)) is cls
        assert decode_record(payload) == message
    if cls in COMMAND_STRATEGIES:
        assert json.loads(payload)["cmd"] == cls.__struct_config__.tag
        assert type(decode_command(payload)) is cls
        assert decode_command(payload) == message


@given(record_batches())
@settings(max_examples=30)
def test_batch_round_trips_through_decode_batch(batch: m.RecordBatch) -> None:
    assert decode_batch(encode(batch)) == batch


@given(record_batches())
@settings(max_examples=30)
def test_raw_batch_decodes_record_by_record_to_the_same_records(batch: m.RecordBatch) -> None:
    raw = decode(encode(batch), m.RawRecordBatch)

    assert decode_batch_records(raw) == batch.records
    assert (raw.site, raw.epoch, raw.first_seq, raw.last_seq) == (
        batch.site,
        batch.epoch,
        batch.first_seq,
        batch.last_seq,
    )


@given(st.one_of(STRATEGIES[m.SiteBirth], STRATEGIES[m.SiteDeath]))
@settings(max_examples=30)
def test_decode_site_state_tells_birth_from_death(state: m.SiteBirth | m.SiteDeath) -> None:
    assert decode_site_state(encode(state)) == state


def test_encoded_times_are_utc_with_z_and_money_is_an_integer() -> None:
    at = datetime(2026, 11, 23, 4, 5, 6, 123456, tzinfo=UTC)
    record = m.RechargeCommit(
        id="r1", seq=1, site="BJ01", at=at, received_at=at, offline=False, pay_ref="P1", amount=5
    )

    wire = json.loads(encode(record))

    assert wire["at"] == "2026-11-23T04:05:06.123456Z"
    assert wire["amount"] == 5
    assert wire["v"] == 1
    assert wire["kind"] == "recharge.commit"


def test_decoded_times_are_aware_utc() -> None:
    state = decode(b'{"online":true,"at":"2026-11-23T04:05:06.5+00:00"}', m.CentralState)

    assert state.at is not None
    assert state.at.utcoffset() == timedelta(0)
    assert state.at == datetime(2026, 11, 23, 4, 5, 6, 500000, tzinfo=UTC)


# --- rejections, each naming the field --------------------------------------------------

AT = "2026-11-23T04:05:06Z"


def purchase_json(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "v": 1,
        "kind": "pos.purchase",
        "id": "BJ01-1-1",
        "seq": 1,
        "site": "BJ01",
        "terminal": "POS-1",
        "term_rec": 17,
        "at": AT,
        "received_at": AT,
        "offline": False,
        "card_uid": "04A1B2C3",
        "approved": True,
        "reason": "ok",
        "amount": 1200,
        "subsidy_fen": 200,
        "cash_fen": 1000,
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not ...}


def batch_json(records: list[dict[str, Any]] | None = None, **changes: Any) -> dict[str, Any]:
    records = [purchase_json()] if records is None else records
    batch: dict[str, Any] = {
        "v": 1,
        "site": "BJ01",
        "epoch": 1,
        "first_seq": 1,
        "last_seq": len(records),
        "records": records,
    }
    batch.update(changes)
    return {k: v for k, v in batch.items() if v is not ...}


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def reject(decoder: Callable[[bytes], Any], value: Any) -> MessageError:
    payload = value if isinstance(value, bytes) else dumps(value)
    with pytest.raises(MessageError) as info:
        decoder(payload)
    return info.value


def test_the_fixtures_above_are_valid() -> None:
    assert isinstance(decode_record(dumps(purchase_json())), m.Purchase)
    assert len(decode_batch(dumps(batch_json())).records) == 1


def test_unknown_top_level_field_is_rejected_by_name() -> None:
    error = reject(decode_batch, batch_json(priority="high"))

    assert "`priority`" in str(error)


def test_unknown_record_field_is_rejected_with_its_path() -> None:
    error = reject(decode_batch, batch_json([purchase_json(tip=5)]))

    assert "`tip`" in str(error)
    assert error.path == "$.records[0]"


def test_missing_required_field_is_rejected_by_name() -> None:
    error = reject(decode_batch, batch_json(epoch=...))

    assert "`epoch`" in str(error)


def test_missing_required_record_field_is_rejected_with_its_path() -> None:
    error = reject(decode_batch, batch_json([purchase_json(amount=...)]))

    assert "`amount`" in str(error)
    assert error.path == "$.records[0]"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", "1200"),
        ("amount", None),
        ("amount", True),
        ("offline", 0),
        ("seq", "1"),
        ("at", 1732334706),
        ("card_uid", 4),
        ("approved", "yes"),
    ],
)
def test_wrongly_typed_field_is_rejected_with_its_path(field: str, value: object) -> None:
    error = reject(decode_batch, batch_json([purchase_json(**{field: value})]))

    assert error.path == f"$.records[0].{field}"


def test_negative_money_is_rejected() -> None:
    error = reject(decode_record, purchase_json(amount=-1, subsidy_fen=0, cash_fen=-1))

    assert error.path == "$.amount"
    assert ">= 0" in str(error)


def test_money_above_the_cap_is_rejected() -> None:
    error = reject(decode_record, purchase_json(amount=MAX_FEN + 1))

    assert error.path == "$.amount"


def test_float_money_is_rejected_even_when_whole() -> None:
    error = reject(decode_batch, batch_json([purchase_json(amount=1200.0)]))

    assert error.path == "$.records[0].amount"
    assert "float" in str(error)


@pytest.mark.parametrize("at", ["2026-11-23T12:05:06+08:00", "2026-11-23T04:05:06-00:30"])
def test_time_with_another_offset_is_rejected(at: str) -> None:
    error = reject(decode_batch, batch_json([purchase_json(at=at)]))

    assert "`at` must be a UTC time" in str(error)
    assert error.path == "$.records[0]"


def test_naive_time_is_rejected() -> None:
    error = reject(decode_batch, batch_json([purchase_json(received_at="2026-11-23T04:05:06")]))

    assert error.path == "$.records[0].received_at"
    assert "timezone" in str(error)


def test_plus_zero_offset_is_utc_and_accepted() -> None:
    record = decode_record(dumps(purchase_json(at="2026-11-23T04:05:06+00:00")))

    assert record.at == datetime(2026, 11, 23, 4, 5, 6, tzinfo=UTC)


def test_constructing_a_message_with_a_non_utc_time_fails_too() -> None:
    cst = timezone(timedelta(hours=8))
    with pytest.raises(ValueError, match="UTC"):
        m.CentralState(online=True, at=datetime(2026, 11, 23, 12, tzinfo=cst))


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_unknown_schema_version_is_rejected(version: object) -> None:
    error = reject(decode_batch, batch_json(v=version))

    assert error.path == "$.v"


def test_unknown_schema_version_of_a_record_is_rejected() -> None:
    error = reject(decode_batch, batch_json([purchase_json(v=2)]))

    assert error.path == "$.records[0].v"


def test_missing_schema_version_defaults_to_one() -> None:
    assert decode(b'{"epoch": 1, "acked_seq": 0}', m.Ack) == m.Ack(epoch=1, acked_seq=0)


def test_unknown_record_kind_is_rejected_at_the_tag() -> None:
    error = reject(decode_batch, batch_json([purchase_json(kind="pos.tip")]))

    assert error.path == "$.records[0].kind"
    assert "pos.tip" in str(error)


def test_record_without_kind_is_rejected() -> None:
    error = reject(decode_record, purchase_json(kind=...))

    assert "`kind`" in str(error)


def test_unknown_command_is_rejected_at_the_tag() -> None:
    error = reject(decode_command, {"cmd": "self_destruct", "id": "c1", "issued_at": AT})

    assert error.path == "$.cmd"
    assert "self_destruct" in str(error)


def test_command_without_cmd_is_rejected() -> None:
    error = reject(decode_command, {"id": "c1", "issued_at": AT})

    assert "`cmd`" in str(error)


@pytest.mark.parametrize(
    "payload", [b"", b"{", b'{"v":1,}', b"nul", b"\xff\xfe", b"'{}'", b'{"v":1', b"\x00{}"]
)
def test_malformed_json_is_a_message_error(payload: bytes) -> None:
    error = reject(decode_batch, payload)

    assert "malformed JSON" in str(error)
    assert error.path is None


@pytest.mark.parametrize(
    "payload",
    [b'{"site": "BJ\xff01"}', b'{"\xff": 1}', b'{"records": [{"kind": "\xc3"}]}'],
    ids=["in-value", "in-key", "in-nested-tag"],
)
def test_invalid_utf8_is_malformed_json(payload: bytes) -> None:
    assert "malformed JSON" in str(reject(decode_batch, payload))


def test_valid_json_followed_by_trailing_bytes_is_malformed() -> None:
    error = reject(decode_batch, dumps(batch_json()) + b" {}")

    assert "malformed JSON" in str(error)


@pytest.mark.parametrize("payload", [b"[]", b"1", b'"batch"', b"null", b"true"])
def test_json_that_is_not_an_object_is_rejected(payload: bytes) -> None:
    reject(decode_batch, payload)


def test_payload_over_the_cap_is_rejected_before_parsing() -> None:
    payload = b" " * (MAX_PAYLOAD_BYTES + 1)

    error = reject(decode_batch, payload)

    assert str(MAX_PAYLOAD_BYTES) in str(error)


def test_payload_at_the_cap_is_parsed() -> None:
    body = dumps(batch_json())
    payload = body + b" " * (MAX_PAYLOAD_BYTES - len(body))

    assert len(payload) == MAX_PAYLOAD_BYTES
    assert decode_batch(payload).site == "BJ01"


@pytest.mark.parametrize("payload", ["{}", None, 42, {"v": 1}, ["{}"]])
@pytest.mark.parametrize(
    "decoder",
    [decode_batch, decode_record, decode_command, decode_site_state],
    ids=lambda f: f.__name__,
)
def test_non_bytes_payload_is_a_message_error(
    decoder: Callable[[Any], Any], payload: object
) -> None:
    with pytest.raises(MessageError, match="must be bytes"):
        decoder(payload)


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_bytes_like_payloads_are_accepted(kind: type) -> None:
    assert decode(kind(b'{"epoch": 1, "acked_seq": 3}'), m.Ack).acked_seq == 3


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json_is_a_message_error(depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    payload = b'{"site":"BJ01","cmd_id":"c","at":"' + AT.encode() + b'","status":"done",'
    payload += b'"data":{"x":' + nested + b"}}"

    with pytest.raises(MessageError):
        decode(payload, m.Reply)


def test_message_error_is_a_protocol_error_with_its_code() -> None:
    error = reject(decode_batch, b"{")

    assert isinstance(error, ProtocolError)
    assert error.code == "bad_message"


# --- batch rules ---------------------------------------------------------------------------


def records_json(first: int, count: int, site: str = "BJ01") -> list[dict[str, Any]]:
    return [purchase_json(id=f"r{first + i}", seq=first + i, site=site) for i in range(count)]


def test_batch_records_must_run_contiguously_from_first_seq() -> None:
    records = records_json(5, 3)
    records[1]["seq"] = 9

    error = reject(decode_batch, batch_json(records, first_seq=5, last_seq=7))

    assert "records[1].seq is 9, expected 6" in str(error)


def test_batch_records_must_start_at_first_seq() -> None:
    error = reject(decode_batch, batch_json(records_json(5, 2), first_seq=4, last_seq=5))

    assert "records[0].seq" in str(error)


@pytest.mark.parametrize(("first", "last"), [(1, 3), (1, 1), (3, 2), (2, 3)])
def test_batch_seq_range_must_match_the_record_count(first: int, last: int) -> None:
    reject(decode_batch, batch_json(records_json(1, 2), first_seq=first, last_seq=last))


def test_batch_with_last_seq_below_first_seq_is_rejected() -> None:
    error = reject(decode_batch, batch_json(records_json(2, 1), first_seq=2, last_seq=1))

    assert "below" in str(error)


def test_record_of_another_site_is_rejected_in_a_batch() -> None:
    records = records_json(1, 2)
    records[1]["site"] = "SH02"

    error = reject(decode_batch, batch_json(records))

    assert "records[1].site" in str(error)


def test_empty_batch_is_rejected() -> None:
    error = reject(decode_batch, batch_json([], last_seq=1))

    assert error.path == "$.records"


def test_batch_of_the_maximum_size_is_accepted_and_one_more_is_rejected() -> None:
    full = batch_json(records_json(1, MAX_BATCH_RECORDS))
    assert len(decode_batch(dumps(full)).records) == MAX_BATCH_RECORDS

    error = reject(decode_batch, batch_json(records_json(1, MAX_BATCH_RECORDS + 1)))
    assert error.path == "$.records"


@pytest.mark.parametrize(
    ("field", "value"),
    [("epoch", 0), ("first_seq", 0), ("site", "bj01"), ("epoch", 2**53), ("last_seq", 2**63)],
)
def test_batch_envelope_fields_are_range_checked(field: str, value: object) -> None:
    error = reject(decode_batch, batch_json(**{field: value}))

    assert error.path == f"$.{field}"


def test_raw_batch_dead_letters_only_the_bad_record() -> None:
    records = records_json(1, 4)
    records[2]["amount"] = -5
    raw = decode(dumps(batch_json(records)), m.RawRecordBatch)

    results = decode_batch_records(raw)

    assert [type(r).__name__ for r in results] == [
        "Purchase",
        "Purchase",
        "MessageError",
        "Purchase",
    ]
    error = results[2]
    assert isinstance(error, MessageError)
    assert "records[2]" in str(error)
    assert error.path == "$.records[2].amount"
    assert [r.seq for r in results if isinstance(r, m.Purchase)] == [1, 2, 4]


def test_raw_batch_dead_letters_a_record_of_unknown_kind() -> None:
    records = records_json(1, 2)
    records[0]["kind"] = "pos.tip"
    raw = decode(dumps(batch_json(records)), m.RawRecordBatch)

    first, second = decode_batch_records(raw)

    assert isinstance(first, MessageError)
    assert first.path == "$.records[0].kind"
    assert isinstance(second, m.Purchase)


@pytest.mark.parametrize(("field", "value"), [("seq", 7), ("site", "SH02")])
def test_raw_batch_dead_letters_a_record_that_disagrees_with_the_envelope(
    field: str, value: object
) -> None:
    records = records_json(1, 3)
    records[1][field] = value
    raw = decode(dumps(batch_json(records)), m.RawRecordBatch)

    results = decode_batch_records(raw)

    assert isinstance(results[1], MessageError)
    assert "records[1]" in str(results[1])
    assert results[1].path == f"$.records[1].{field}"
    assert isinstance(results[0], m.Purchase)
    assert isinstance(results[2], m.Purchase)


def test_raw_batch_still_checks_its_envelope() -> None:
    reject(lambda p: decode(p, m.RawRecordBatch), batch_json(records_json(1, 2), last_seq=5))
    reject(lambda p: decode(p, m.RawRecordBatch), batch_json([]))


# --- money rules of a purchase ------------------------------------------------------------


def test_approved_purchase_splits_its_amount_between_subsidy_and_cash() -> None:
    record = decode_record(dumps(purchase_json(amount=1200, subsidy_fen=200, cash_fen=1000)))

    assert isinstance(record, m.Purchase)
    assert record.subsidy_fen + record.cash_fen == record.amount


@pytest.mark.parametrize(("subsidy", "cash"), [(200, 999), (0, 0), (1200, 1), (1201, 0)])
def test_approved_purchase_parts_must_add_up_to_the_amount(subsidy: int, cash: int) -> None:
    error = reject(decode_record, purchase_json(amount=1200, subsidy_fen=subsidy, cash_fen=cash))

    assert "must equal `amount`" in str(error)


def test_declined_purchase_takes_no_money() -> None:
    declined = purchase_json(approved=False, reason="insufficient_funds", subsidy_fen=0, cash_fen=0)
    record = decode_record(dumps(declined))
    assert isinstance(record, m.Purchase)
    assert not record.approved

    error = reject(decode_record, purchase_json(approved=False, subsidy_fen=0, cash_fen=1200))
    assert "declined sale takes no money" in str(error)


def test_purchase_items_must_add_up_to_the_amount() -> None:
    items = [{"sku": "rice", "qty": 2, "unit_fen": 150}, {"sku": "soup", "qty": 1, "unit_fen": 300}]
    ok = decode_record(dumps(purchase_json(amount=600, subsidy_fen=0, cash_fen=600, items=items)))
    assert isinstance(ok, m.Purchase)
    assert ok.items is not None
    assert [i.sku for i in ok.items] == ["rice", "soup"]

    error = reject(
        decode_record, purchase_json(amount=700, subsidy_fen=0, cash_fen=700, items=items)
    )
    assert "`items` do not add up" in str(error)


def test_purchase_line_item_quantity_is_range_checked() -> None:
    items = [{"sku": "rice", "qty": 0, "unit_fen": 150}]

    error = reject(decode_record, purchase_json(amount=0, subsidy_fen=0, cash_fen=0, items=items))

    assert error.path == "$.items[0].qty"


# --- other record and message rules ------------------------------------------------------


def test_correction_of_zero_is_rejected() -> None:
    record = purchase_json(kind="money.correction", original_id="r0", delta=0, reason="x")
    record.update(operator="ops")
    for key in ("approved", "amount", "subsidy_fen", "cash_fen"):
        del record[key]

    error = reject(decode_record, record)

    assert "`delta`" in str(error)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"card_uid": ...}, "needs `card_uid`"),
        ({"action": "reissue"}, "needs `new_card_uid`"),
        ({"action": "issue"}, "needs `person_id`"),
    ],
)
def test_card_intent_requires_what_its_action_needs(changes: dict[str, Any], message: str) -> None:
    record = {
        k: v
        for k, v in purchase_json(kind="card.intent", action="freeze", operator="desk1").items()
        if k not in {"approved", "reason", "amount", "subsidy_fen", "cash_fen"}
    }
    assert isinstance(decode_record(dumps(record)), m.CardIntent)
    record.update(changes)

    error = reject(decode_record, {k: v for k, v in record.items() if v is not ...})

    assert message in str(error)


def test_feed_delta_must_move_forward_but_a_snapshot_may_restart() -> None:
    change = {"op": "delete", "entity": "card", "key": "C1"}
    feed = {"site": "BJ01", "feed_version": 5, "prev_version": 5, "changes": [change]}

    assert "above `prev_version`" in str(reject(lambda p: decode(p, m.Feed), feed))
    assert decode(dumps({**feed, "snapshot": True}), m.Feed).snapshot
    backwards = {**feed, "feed_version": 4, "changes": []}
    assert "below `prev_version`" in str(reject(lambda p: decode(p, m.Feed), backwards))


def test_feed_may_carry_only_blacklist_catch_up_without_moving_the_version() -> None:
    delta = {
        "version": 8,
        "prev_version": 7,
        "at": "2026-11-23T06:00:00Z",
        "changes": [
            {"op": "add", "card_uid": "04A1B2C3", "reason": "lost",
             "effective_at": "2026-11-23T06:00:00Z"}
        ],
    }  # fmt: skip
    feed = {"site": "BJ01", "feed_version": 5, "prev_version": 5, "changes": []}
    decoded = decode(dumps({**feed, "blacklist": [delta]}), m.Feed)
    assert decoded.blacklist[0].version == 8


def test_feed_part_must_not_exceed_parts() -> None:
    feed = {"site": "BJ01", "feed_version": 6, "prev_version": 5, "part": 3, "parts": 2}

    assert "`part` is beyond `parts`" in str(
        reject(lambda p: decode(p, m.Feed), {**feed, "changes": []})
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"op": "upsert", "entity": "card", "key": "C1"}, "an upsert needs `data`"),
        ({"op": "delete", "entity": "card", "key": "C1", "data": {}}, "a delete carries no"),
        ({"op": "merge", "entity": "card", "key": "C1"}, "Invalid enum value"),
        ({"op": "delete", "entity": "salary", "key": "C1"}, "Invalid enum value"),
    ],
)
def test_feed_change_shape_is_checked(change: dict[str, Any], message: str) -> None:
    feed = {"site": "BJ01", "feed_version": 6, "prev_version": 5, "changes": [change]}

    error = reject(lambda p: decode(p, m.Feed), feed)

    assert message in str(error)
    assert error.path is not None
    assert error.path.startswith("$.changes[0]")


def test_blacklist_delta_must_move_forward() -> None:
    delta = {"version": 3, "prev_version": 3, "at": AT, "changes": []}

    assert "above `prev_version`" in str(reject(lambda p: decode(p, m.BlacklistDelta), delta))


def test_blacklist_change_card_uid_must_be_upper_case_hex() -> None:
    change = {"op": "add", "card_uid": "04a1b2c3", "reason": "lost", "effective_at": AT}
    delta = {"version": 4, "prev_version": 3, "at": AT, "changes": [change]}

    error = reject(lambda p: decode(p, m.BlacklistDelta), delta)

    assert error.path == "$.changes[0].card_uid"


# --- site state: birth or death -----------------------------------------------------------

BIRTH = {
    "online": True,
    "at": AT,
    "version": "0.1.0",
    "epoch": 1,
    "acked": [0, 0],
    "outbox_depth": 0,
    "feed_version": 0,
    "blacklist_version": 0,
}


def test_site_state_online_true_is_a_birth() -> None:
    state = decode_site_state(dumps(BIRTH))

    assert isinstance(state, m.SiteBirth)
    assert state.terminals == []


def test_site_state_online_false_is_a_death() -> None:
    assert decode_site_state(b'{"online": false}') == m.SiteDeath()
    assert decode_site_state(b'{"v": 1, "online": false}') == m.SiteDeath()


def test_birth_missing_a_field_is_rejected_by_name() -> None:
    error = reject(decode_site_state, {k: v for k, v in BIRTH.items() if k != "epoch"})

    assert "`epoch`" in str(error)


def test_death_carrying_birth_fields_is_rejected() -> None:
    error = reject(decode_site_state, {**BIRTH, "online": False})

    assert "unknown field" in str(error)


@pytest.mark.parametrize("payload", [b"{}", b'{"online": "yes"}', b'{"online": null}', b"[true]"])
def test_site_state_without_a_boolean_online_is_rejected(payload: bytes) -> None:
    reject(decode_site_state, payload)


def test_site_state_of_another_schema_version_is_rejected() -> None:
    assert reject(decode_site_state, {**BIRTH, "v": 2}).path == "$.v"
    assert reject(decode_site_state, {"online": False, "v": 2}).path == "$.v"


# --- fuzz: nothing but MessageError, whatever arrives -------------------------------------

TOP_LEVEL = [
    cls
    for cls in STRATEGIES
    if issubclass(cls, m.Message) and cls not in RECORD_STRATEGIES and cls not in COMMAND_TYPES
]
DECODERS: dict[str, Callable[[bytes], Any]] = {
    "decode_record": decode_record,
    "decode_batch": decode_batch,
    "decode_command": decode_command,
    "decode_site_state": decode_site_state,
    "decode_batch_records": lambda p: decode_batch_records(decode(p, m.RawRecordBatch)),
    **{f"decode[{cls.__name__}]": (lambda p, c=cls: decode(p, c)) for cls in TOP_LEVEL},
}
#: Keys the decoders know, so fuzzed objects get past "unknown field" into value checks.
FIELD_NAMES = sorted(
    {name for cls in STRATEGIES for name in cls.__struct_fields__} | {"kind", "cmd"}
)
fuzz_json = st.recursive(
    json_values
    | st.integers()
    | st.sampled_from([AT, "2026-11-23T12:05:06+08:00", "2026-11-23T04:05:06", "BJ01", "04A1B2C3"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=5), inner, max_size=6)
    ),
    max_leaves=20,
)


def decode_or_message_error(decoder: Callable[[bytes], Any], payload: bytes) -> None:
    with contextlib.suppress(MessageError):
        decoder(payload)


@pytest.mark.parametrize("name", list(DECODERS))
@given(payload=st.binary(max_size=200))
@settings(max_examples=40)
def test_arbitrary_bytes_raise_only_message_error(name: str, payload: bytes) -> None:
    decode_or_message_error(DECODERS[name], payload)


@pytest.mark.parametrize("name", list(DECODERS))
@given(value=fuzz_json)
@settings(max_examples=25)
def test_arbitrary_json_raises_only_message_error(name: str, value: Any) -> None:
    decode_or_message_error(DECODERS[name], dumps(value))


def mutations(value: Any) -> st.SearchStrategy[Any]:
    """``value`` with one node somewhere replaced, dropped or joined by a stray key."""
    if isinstance(value, dict) and value:
        key = st.sampled_from(sorted(value))
        return st.one_of(
            key.map(lambda k: {kk: vv for kk, vv in value.items() if kk != k}),
            st.tuples(key, fuzz_json).map(lambda kv: {**value, kv[0]: kv[1]}),
            st.tuples(st.sampled_from(FIELD_NAMES), fuzz_json).map(
                lambda kv: {**value, kv[0]: kv[1]}
            ),
            key.flatmap(lambda k: mutations(value[k]).map(lambda sub: {**value, k: sub})),
        )
    if isinstance(value, list) and value:
        index = st.integers(0, len(value) - 1)
        return st.one_of(
            index.map(lambda i: value[:i] + value[i + 1 :]),
            index.map(lambda i: [*value, value[i]]),
            index.flatmap(
                lambda i: mutations(value[i]).map(lambda sub: [*value[:i], sub, *value[i + 1 :]])
            ),
        )
    return fuzz_json


@pytest.mark.parametrize("cls", [*TOP_LEVEL, m.Purchase, m.CardIntent, m.Upgrade], ids=type_id)
@given(data=st.data())
@settings(max_examples=15)
def test_mutated_valid_messages_raise_only_message_error(
    cls: type[m.Message], data: st.DataObject
) -> None:
    original = json.loads(encode(data.draw(STRATEGIES[cls])))
    mutated = data.draw(mutations(original))
    decoder = (
        decode_record
        if cls in RECORD_STRATEGIES
        else decode_command
        if cls in COMMAND_STRATEGIES
        else DECODERS[f"decode[{cls.__name__}]"]
    )

    decode_or_message_error(decoder, dumps(mutated))
