"""The edge's remote log tail: rate limit, TTL, filters, redaction, temporary levels."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import structlog

from edge_agent import logs
from edge_agent.logtail import TAP, LogTail, LogTap
from protocol.errors import MessageError
from protocol.messages import LogBatch, LogsStop, LogsTail, SetLogLevel, decode

NOW = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Uplink:
    """Collects what the tail publishes (``up`` False: the broker is unreachable)."""

    def __init__(self) -> None:
        self.batches: list[LogBatch] = []
        self.payloads: list[bytes] = []
        self.qos: list[int] = []
        self.up = True

    async def __call__(self, payload: bytes, qos: int) -> bool:
        if not self.up:
            return False
        self.payloads.append(payload)
        self.batches.append(decode(payload, LogBatch))
        self.qos.append(qos)
        return True

    def lines(self) -> list[str]:
        return [line.event for b in self.batches for line in b.lines]


def emit(tap: LogTap, event: str, level: str = "info", **fields: Any) -> None:
    with contextlib.suppress(structlog.DropEvent):
        tap(None, level, {"event": event, "level": level, "timestamp": "x", **fields})


def tail(**fields: Any) -> LogsTail:
    fields.setdefault("stream", "S1")
    return LogsTail(id="cmd-1", issued_at=NOW, **fields)


def make(clock: Clock | None = None) -> tuple[LogTap, LogTail, Uplink, Clock]:
    clock = clock or Clock()
    tap, uplink = LogTap(), Uplink()
    return tap, LogTail("SZ-FUTIAN", uplink, tap=tap, clock=clock), uplink, clock


async def test_live_lines_over_the_rate_are_suppressed_and_counted():
    tap, logtail, uplink, clock = make()
    assert logtail.command(tail(max_lines_per_s=10))[0] == "done"
    await logtail.tick()  # the start: caught up, nothing to replay
    assert uplink.batches[0].caught_up and uplink.batches[0].lines == []
    for i in range(100):
        emit(tap, f"line {i}")
    await logtail.tick()
    batch = uplink.batches[-1]
    assert batch.dropped == 90
    assert [line.event for line in batch.lines] == [
        *(f"line {i}" for i in range(10)),
        "90 lines suppressed",
    ]
    assert batch.lines[-1].fields["suppressed"] == 90
    # A second later the bucket holds 10 tokens again: 10 more of the next 20 go out.
    clock.now += 1
    for i in range(20):
        emit(tap, f"more {i}")
    await logtail.tick()
    assert uplink.batches[-1].dropped == 10
    assert len(uplink.batches[-1].lines) == 11
    assert logtail.stats["lines_suppressed"] == 100


async def test_lines_that_fell_off_the_ring_before_sending_count_as_suppressed():
    clock = Clock()
    tap, uplink = LogTap(size=50), Uplink()
    logtail = LogTail("SZ-FUTIAN", uplink, tap=tap, clock=clock)
    logtail.command(tail(max_lines_per_s=1000))
    await logtail.tick()
    for i in range(80):
        emit(tap, f"line {i}")
    await logtail.tick()
    batch = uplink.batches[-1]
    assert batch.dropped == 30
    assert batch.lines[0].event == "line 30"
    assert batch.lines[-1].event == "30 lines suppressed"


async def test_a_batch_keeps_to_its_byte_budget_and_the_rest_follows_unlost():
    tap, uplink, clock = LogTap(), Uplink(), Clock()
    logtail = LogTail("SZ-FUTIAN", uplink, tap=tap, clock=clock, batch_bytes=4000)
    logtail.command(tail(max_lines_per_s=1000))
    await logtail.tick()
    for i in range(60):
        emit(tap, f"line {i}", detail="x" * 200)
    await logtail.tick()
    assert all(len(p) <= 4000 + 600 for p in uplink.payloads)
    while len(uplink.lines()) < 60:
        await logtail.tick()
    assert uplink.lines() == [f"line {i}" for i in range(60)]
    assert sum(b.dropped for b in uplink.batches) == 0


async def test_the_tail_stops_by_itself_at_its_ttl():
    tap, logtail, uplink, clock = make()
    logtail.command(tail(duration_s=5))
    await logtail.tick()
    emit(tap, "before")
    clock.now += 4.9
    await logtail.tick()
    assert not uplink.batches[-1].final
    clock.now += 0.2
    emit(tap, "last one")
    await logtail.tick()
    final = uplink.batches[-1]
    assert final.final and final.reason == "ttl"
    assert [line.event for line in final.lines] == ["last one"]
    assert uplink.qos[-1] == 1
    assert logtail.sessions == {}
    emit(tap, "after the end")
    await logtail.tick()
    assert "after the end" not in uplink.lines()


async def test_a_renewal_moves_the_deadline_and_logs_stop_ends_the_tail():
    _, logtail, uplink, clock = make()
    logtail.command(tail(duration_s=5))
    clock.now += 4
    status, detail = logtail.command(tail(duration_s=5))
    assert status == "done" and "renewed" in detail
    clock.now += 4  # past the first deadline, not the renewed one
    await logtail.tick()
    assert not any(b.final for b in uplink.batches)
    assert logtail.command(LogsStop(id="c2", issued_at=NOW, stream="S1")) == (
        "done",
        "tail S1 stopping",
    )
    await logtail.tick()
    assert uplink.batches[-1].final and uplink.batches[-1].reason == "stopped"
    assert logtail.command(LogsStop(id="c3", issued_at=NOW, stream="S1"))[0] == "rejected"


async def test_only_lines_at_the_level_and_matching_the_grep_are_sent():
    tap, logtail, uplink, _ = make()
    logtail.command(tail(level="warning", match="pos-02"))
    await logtail.tick()
    emit(tap, "tap.decided", "info", terminal="POS-02")
    emit(tap, "link.lost", "warning", terminal="POS-01")
    emit(tap, "link.lost", "warning", terminal="POS-02")
    emit(tap, "db.failed", "error", detail="on pos-02 (any case)")
    await logtail.tick()
    sent = uplink.batches[-1].lines
    assert [(line.level, line.event) for line in sent] == [
        ("warning", "link.lost"),
        ("error", "db.failed"),
    ]
    assert sent[0].fields == {"terminal": "POS-02"}


async def test_since_replays_recent_lines_without_the_rate_limit_then_goes_live():
    tap, logtail, uplink, _ = make()
    for i in range(30):
        emit(tap, f"old {i}")
    logtail.command(tail(since_s=600, max_lines_per_s=5))
    emit(tap, "new")
    await logtail.tick()
    first = uplink.batches[0]
    assert first.caught_up and first.dropped == 0
    assert [line.event for line in first.lines] == [*(f"old {i}" for i in range(30)), "new"]


async def test_an_unsent_batch_is_retried_and_loses_nothing():
    tap, logtail, uplink, _ = make()
    logtail.command(tail())
    await logtail.tick()
    uplink.up = False
    emit(tap, "while the broker is away")
    await logtail.tick()
    uplink.up = True
    await logtail.tick()
    assert uplink.lines() == ["while the broker is away"]
    assert logtail.stats["batches_unsent"] == 1


async def test_shutdown_sends_every_tail_a_final_batch():
    _, logtail, uplink, _ = make()
    logtail.command(tail(stream="A"))
    logtail.command(tail(stream="B"))
    runner = asyncio.create_task(logtail.run())
    await logtail.close()
    await runner
    finals = {b.stream: b.reason for b in uplink.batches if b.final}
    assert finals == {"A": "shutdown", "B": "shutdown"}


async def test_secrets_and_card_uids_never_leave_the_edge_in_a_tail(capsys):
    logs.configure_logging("info", "json", site="SZ-FUTIAN")
    uplink = Uplink()
    logtail = LogTail("SZ-FUTIAN", uplink)
    assert logtail.tap is TAP
    logtail.command(tail(stream="R1"))
    await logtail.tick()
    structlog.get_logger("test").warning(
        "terminal.auth_failed",
        terminal="POS-01",
        card_uid="04A1B2C3D4E5F6",
        password="hunter2-secret",  # noqa: S106 - the secret that must not leak
        key_hex="00112233445566778899aabbccddeeff",
        error="login failed: token=abc123def and url mqtts://site:pw-in-url@hq:8883",
        nested={"session_token": "tok-xyz"},
    )
    try:
        _refuse()
    except ConnectionError:
        structlog.get_logger("test").exception("sync.failed")
    await logtail.tick()
    payload = b"".join(uplink.payloads).decode()
    assert "sync.failed" in payload and "ConnectionError" in payload
    assert "exc-secret" not in payload
    for secret in ("hunter2-secret", "00112233445566778899aabbccddeeff", "abc123def"):
        assert secret not in payload
    assert "pw-in-url" not in payload and "tok-xyz" not in payload
    assert "04A1B2C3D4E5F6" not in payload and "**********E5F6" in payload
    assert "terminal.auth_failed" in payload
    capsys.readouterr()


def _refuse() -> None:
    raise ConnectionError("broker said: password=exc-secret rejected")


async def test_a_debug_tail_sees_debug_lines_that_the_journal_does_not_get(capsys):
    logs.configure_logging("info", "json", site="SZ-FUTIAN")
    uplink = Uplink()
    logtail = LogTail("SZ-FUTIAN", uplink)
    logtail.command(tail(stream="D1", level="debug"))
    await logtail.tick()
    structlog.get_logger("test").debug("sync.detail", n=1)
    await logtail.tick()
    assert uplink.lines() == ["logtail.started", "sync.detail"]
    assert "sync.detail" not in capsys.readouterr().err
    logtail.command(LogsStop(id="c", issued_at=NOW, stream="D1"))
    await logtail.tick()
    structlog.get_logger("test").debug("sync.unseen")
    assert all(e.event.get("event") != "sync.unseen" for e in TAP.ring)


async def test_a_temporary_log_level_reverts_by_itself(capsys):
    logs.configure_logging("info", "json", site="SZ-FUTIAN")
    clock = Clock()
    logtail = LogTail("SZ-FUTIAN", Uplink(), clock=clock)
    status, detail = logtail.command(
        SetLogLevel(id="lv", issued_at=NOW, level="debug", duration_s=60)
    )
    assert status == "done" and detail == "log level debug for 60 s"
    structlog.get_logger("test").debug("debug.while_raised")
    clock.now += 59
    await logtail.tick()
    structlog.get_logger("test").debug("debug.still_raised")
    clock.now += 2
    await logtail.tick()
    structlog.get_logger("test").debug("debug.after_revert")
    out = capsys.readouterr().err
    assert "debug.while_raised" in out and "debug.still_raised" in out
    assert "debug.after_revert" not in out
    assert '"log.level_reverted"' in out
    assert TAP.output_level == logs.LEVELS["info"] and TAP.temporary is None


def test_the_tap_path_only_appends_to_the_ring():
    tap = LogTap(size=100)
    event = {"event": "tap.decided", "level": "info", "timestamp": "t", "terminal": "POS-01"}
    started = time.perf_counter()
    for _ in range(10_000):
        tap(None, "info", dict(event))
    per_call = (time.perf_counter() - started) / 10_000
    assert len(tap.ring) == 100 and tap.last_seq == 10_000
    assert per_call < 50e-6, f"{per_call * 1e6:.1f} µs per log call"
    msgspec.json.encode([e.event for e in tap.ring])  # the entries are plain data


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        (b'{"v":1,"site":"SZ-FUTIAN","stream":"S","batch":0,"lines":[],"reason":"ttl"}', None),
        (b'{"v":1,"site":"SZ-FUTIAN","stream":"S","batch":-1,"lines":[]}', "$.batch"),
        (b'{"v":2,"site":"SZ-FUTIAN","stream":"S","batch":0,"lines":[]}', "$.v"),
        (b'{"v":1,"site":"sz","stream":"S","batch":0,"lines":[]}', "$.site"),
        (
            (
                b'{"v":1,"site":"SZ-FUTIAN","stream":"S","batch":0,"lines":'
                b'[{"at":"2026-11-27T12:00:00+08:00","level":"info","event":"x"}]}'
            ),
            None,
        ),
        (
            b'{"v":1,"site":"SZ-FUTIAN","stream":"S","batch":0,"lines":[],"extra":1}',
            None,
        ),
    ],
)
def test_a_bad_log_batch_is_refused_with_a_specific_error(payload: bytes, path: str | None):
    with pytest.raises(MessageError) as refused:
        decode(payload, LogBatch)
    if path is not None:
        assert refused.value.path == path
    assert str(refused.value)
