"""Remote log tail: the edge side of ``logs.tail`` / ``logs.stop`` / ``log_level``.

Three parts:

- :class:`LogTap`, a structlog processor placed right after redaction (so it only ever sees
  redacted events). It appends every event to an in-memory ring of the last
  ``RING_LINES`` — a ``deque.append``, nothing more: no I/O, no lock, no rendering, so the
  tap path never waits for a tail. The ring is what ``since`` replays from.
- The log level, which is two levels: the *output* level (the configured one, or a
  temporary ``log_level`` change that reverts by itself) and the *capture* level (the
  lowest of the output level and every tail's level). structlog filters at the capture
  level; the tap drops what is below the output level after putting it in the ring, so a
  tail at ``debug`` sees debug lines without them reaching the journal.
- :class:`LogTail`, one task that every ``TICK_S`` reads each session's new ring entries,
  filters them (level, ``match``), rate-limits them (a token bucket of
  ``max_lines_per_s``), fits them into a ``BATCH_BYTES`` budget and publishes a
  :class:`~protocol.messages.LogBatch` on ``up/logs``. Lines over the rate — or that fell
  off the ring before they could be sent — are counted and announced by an
  ``N lines suppressed`` marker line. A session ends at its deadline (``ttl``), on
  ``logs.stop`` (``stopped``) or when the daemon stops (``shutdown``), with a final batch
  saying so.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from edge_agent.adapters.waiting import wait_event
from edge_agent.logs import LEVELS, render_json, scrub_text
from protocol.messages import LogBatch, LogLine, LogsStop, LogsTail, SetLogLevel, encode

log = structlog.get_logger("edge.logtail")

#: Lines the ring keeps for ``since`` (whatever their level).
RING_LINES = 2000
#: A session publishes at most one batch this often.
TICK_S = 0.2
#: Most encoded bytes of lines in one batch; lines over it wait for the next batch.
BATCH_BYTES = 32 * 1024
#: Most lines in one batch (the message allows 1000; one is kept for the marker).
BATCH_LINES = 999
#: Tails at once (central runs one per site; more are refused).
MAX_SESSIONS = 4
#: How long stopping waits for the final batches.
CLOSE_WAIT_S = 2.0
_NAMES = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "critical"}
_ALIASES = {"warn": "warning", "exception": "error", "err": "error", "fatal": "critical"}
_OWN_KEYS = ("timestamp", "level", "event")


def level_number(name: object) -> int:
    """A structlog level name (``warn``, ``exception`` too) as a number; unknown → info."""
    text = str(name)
    return LEVELS.get(_ALIASES.get(text, text), 20)


# --- the tap and the levels -------------------------------------------------------------------


@dataclass(slots=True)
class Entry:
    """One event as the ring keeps it: its number, wall time, level and redacted fields."""

    seq: int
    at: float
    level: int
    event: dict[str, Any]


class LogTap:
    """The always-on ring of recent events, and the process's log levels (see the module
    docstring). Install it as a processor after ``redact`` (``configure_logging`` does)."""

    def __init__(self, size: int = RING_LINES, *, drives_structlog: bool = False) -> None:
        #: Whether level changes reconfigure structlog (only the process's own tap does).
        self.drives_structlog = drives_structlog
        self.ring: deque[Entry] = deque(maxlen=size)
        self._seq = itertools.count(1)
        self.base_level = LEVELS["info"]
        self.output_level = LEVELS["info"]
        self.capture_level = LEVELS["info"]
        self._temporary: tuple[int, float | None] | None = None
        self._tail_levels: dict[str, int] = {}

    def __call__(self, _: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        level = level_number(event.get("level"))
        entry = dict(event)
        if "exc_info" in entry:  # rendered now: later there is no exception to format
            entry = dict(structlog.processors.format_exc_info(None, "", entry))
            if isinstance(entry.get("exception"), str):  # a message may quote a secret
                entry["exception"] = scrub_text(entry["exception"])
        self.ring.append(Entry(next(self._seq), time.time(), level, entry))
        if level < self.output_level:
            raise structlog.DropEvent  # produced only because a tail asked for it
        return event

    @property
    def last_seq(self) -> int:
        """The number of the newest entry (0 when empty)."""
        return self.ring[-1].seq if self.ring else 0

    def after(self, seq: int) -> tuple[list[Entry], int]:
        """The entries newer than ``seq``, and how many newer ones already fell off."""
        ring = list(self.ring)  # a snapshot: other threads may append meanwhile
        if not ring:
            return [], 0
        first = ring[0].seq
        lost = max(0, first - seq - 1)
        start = max(0, seq + 1 - first)
        return ring[start:], lost

    def seq_before(self, wall: float) -> int:
        """The number of the newest entry older than ``wall`` (where a replay starts)."""
        seq = self.ring[0].seq - 1 if self.ring else self.last_seq
        for entry in list(self.ring):
            if entry.at >= wall:
                break
            seq = entry.seq
        return seq

    # -- levels --------------------------------------------------------------------------------

    def configure(self, level: int) -> None:
        """The configured level (``configure_logging`` calls this); temporary changes end."""
        self.base_level = level
        self._temporary = None
        self._apply()

    def set_temporary(self, level: int, until: float | None) -> None:
        """Log at ``level`` until monotonic time ``until`` (None: until the next restart)."""
        self._temporary = (level, until)
        self._apply()

    def revert_due(self, now: float) -> bool:
        """End a temporary level whose time is up; True if one ended."""
        if self._temporary is None or self._temporary[1] is None or now < self._temporary[1]:
            return False
        self._temporary = None
        self._apply()
        return True

    @property
    def temporary(self) -> tuple[int, float | None] | None:
        """The temporary level and its monotonic end, if one is in force."""
        return self._temporary

    def set_tail_levels(self, levels: dict[str, int]) -> None:
        """The levels the running tails ask for (the capture level follows them)."""
        if levels != self._tail_levels:
            self._tail_levels = dict(levels)
            self._apply()

    def _apply(self) -> None:
        self.output_level = self._temporary[0] if self._temporary else self.base_level
        self.capture_level = min([self.output_level, *self._tail_levels.values()])
        if not self.drives_structlog:
            return
        # Loggers are not cached (cache_logger_on_first_use=False), so this takes effect
        # for every module-level logger at its next call.
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(self.capture_level))


#: The daemon's tap (a process has one log configuration, so one tap).
TAP = LogTap(drives_structlog=True)


# --- sessions --------------------------------------------------------------------------------


@dataclass
class TailSession:
    """One ``logs.tail`` stream."""

    stream: str
    level: int
    match: str | None
    deadline: float
    rate: int
    cursor: int
    replay_end: int
    tokens: float
    refilled: float
    batch: int = 0
    dropped: int = 0
    caught_up: bool = False
    ended: str | None = None
    sent_lines: int = 0
    total_dropped: int = 0

    def renew(self, command: LogsTail, now: float) -> None:
        """A renewal: the new deadline, level, match and rate (no replay)."""
        self.level = LEVELS[command.level]
        self.match = _fold(command.match)
        self.deadline = now + command.duration_s
        self.rate = command.max_lines_per_s


def _fold(match: str | None) -> str | None:
    return match.casefold() if match else None


Publish = Callable[[bytes, int], Awaitable[bool]]


@dataclass
class LogTail:
    """The tail sessions of this edge and the task publishing them (see the module doc).

    ``publish(payload, qos)`` sends on ``up/logs`` and says whether it could (False while
    the broker is unreachable: the batch is kept and retried at the next tick).
    """

    site: str
    publish: Publish
    tap: LogTap = field(default_factory=lambda: TAP)
    tick_s: float = TICK_S
    batch_bytes: int = BATCH_BYTES
    clock: Callable[[], float] = time.monotonic
    sessions: dict[str, TailSession] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _closed: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, name: str, n: int = 1) -> None:
        """Bump a counter."""
        self.stats[name] = self.stats.get(name, 0) + n

    # -- commands ----------------------------------------------------------------------------

    def command(self, command: LogsTail | LogsStop | SetLogLevel) -> tuple[str, str]:
        """Apply a command; (reply status, detail)."""
        now = self.clock()
        if isinstance(command, LogsTail):
            return self.start(command, now)
        if isinstance(command, LogsStop):
            session = self.sessions.get(command.stream)
            if session is None:
                return "rejected", f"no tail {command.stream}"
            session.ended = session.ended or "stopped"
            self._wake.set()
            return "done", f"tail {command.stream} stopping"
        level = LEVELS[command.level]
        until = None if command.duration_s is None else now + command.duration_s
        self.tap.set_temporary(level, until)
        log.warning(
            "log.level_changed",
            to=command.level,
            duration_s=command.duration_s,
            configured=_NAMES.get(self.tap.base_level, "info"),
        )
        span = f"for {command.duration_s} s" if command.duration_s else "until restart"
        return "done", f"log level {command.level} {span}"

    def start(self, command: LogsTail, now: float) -> tuple[str, str]:
        """Start (or renew) a tail session."""
        session = self.sessions.get(command.stream)
        if session is not None and session.ended is None:
            session.renew(command, now)
            self._levels_changed()
            self.count("tails_renewed")
            return "done", f"tail {command.stream} renewed for {command.duration_s} s"
        if len([s for s in self.sessions.values() if s.ended is None]) >= MAX_SESSIONS:
            self.count("tails_refused")
            return "rejected", f"already {MAX_SESSIONS} tails running"
        live_from = self.tap.last_seq
        cursor = (
            self.tap.seq_before(time.time() - command.since_s) if command.since_s else live_from
        )
        self.sessions[command.stream] = TailSession(
            stream=command.stream,
            level=LEVELS[command.level],
            match=_fold(command.match),
            deadline=now + command.duration_s,
            rate=command.max_lines_per_s,
            cursor=cursor,
            replay_end=live_from,
            tokens=float(command.max_lines_per_s),
            refilled=now,
        )
        self._levels_changed()
        self.count("tails_started")
        log.info(
            "logtail.started",
            stream=command.stream,
            tail_level=command.level,
            match=command.match,
            duration_s=command.duration_s,
            since_s=command.since_s,
        )
        self._wake.set()
        return "done", f"tailing at {command.level} for {command.duration_s} s"

    def _levels_changed(self) -> None:
        self.tap.set_tail_levels(
            {s.stream: s.level for s in self.sessions.values() if s.ended is None}
        )

    # -- the publishing task -------------------------------------------------------------------

    async def run(self) -> None:
        """Publish every session's lines every ``tick_s`` until :meth:`close`."""
        while not self._closing.is_set():
            await self.tick()
            self._wake.clear()
            await wait_event(self._wake, self.tick_s)
        try:
            for session in self.sessions.values():
                session.ended = session.ended or "shutdown"
            await self.tick()  # the final batches, best effort
        finally:
            self._closed.set()

    async def close(self) -> None:
        """End every session (``shutdown``, said in a final batch while the link is still
        up) and stop :meth:`run`; waits for that at most ``CLOSE_WAIT_S``."""
        self._closing.set()
        self._wake.set()
        await wait_event(self._closed, CLOSE_WAIT_S)

    async def tick(self) -> None:
        """One round: expire sessions, revert a level, publish what each session has."""
        now = self.clock()
        if self.tap.revert_due(now):
            log.warning("log.level_reverted", to=_NAMES.get(self.tap.base_level, "info"))
        for session in list(self.sessions.values()):
            if session.ended is None and now >= session.deadline:
                session.ended = "ttl"
            if not await self._publish_next(session, now):
                continue
            if session.ended is not None:
                del self.sessions[session.stream]
                self._levels_changed()
                log.info(
                    "logtail.ended",
                    stream=session.stream,
                    reason=session.ended,
                    lines=session.sent_lines,
                    suppressed=session.total_dropped,
                )

    async def _publish_next(self, session: TailSession, now: float) -> bool:
        """Send the session's next batch; False if it could not be sent (retried later)."""
        session.tokens = min(
            float(session.rate), session.tokens + (now - session.refilled) * session.rate
        )
        session.refilled = now
        entries, lost = self.tap.after(session.cursor)
        dropped = session.dropped + lost
        lines: list[LogLine] = []
        size, cursor = 0, session.cursor
        spent = 0.0
        for entry in entries:
            if entry.level < session.level or not _matches(entry, session.match):
                cursor = entry.seq
                continue
            live = entry.seq > session.replay_end  # live lines are rate limited, replay not
            if live and session.tokens - spent < 1:
                dropped += 1
                cursor = entry.seq
                continue
            line, line_size = _to_line(entry, self.batch_bytes)
            if lines and (size + line_size > self.batch_bytes or len(lines) >= BATCH_LINES):
                break  # the rest waits for the next batch
            if live:
                spent += 1
            lines.append(line)
            size += line_size
            cursor = entry.seq
        caught_up = not session.caught_up and cursor >= session.replay_end
        final = session.ended is not None
        if not lines and not dropped and not caught_up and not final:
            session.cursor = cursor
            return True
        if dropped:
            lines.append(_suppressed_marker(dropped, session.rate))
        batch = LogBatch(
            site=self.site,
            stream=session.stream,
            batch=session.batch,
            lines=lines,
            dropped=dropped,
            final=final,
            reason=session.ended,
            caught_up=caught_up,
        )
        if not await self.publish(encode(batch), 1 if final or caught_up else 0):
            session.dropped = 0 if final else dropped
            self.count("batches_unsent")
            return final  # a final batch that cannot go is given up, not retried for ever
        session.cursor = cursor
        session.tokens -= spent
        session.dropped = 0
        session.batch += 1
        session.caught_up = session.caught_up or caught_up
        session.sent_lines += len(lines) - (1 if dropped else 0)
        session.total_dropped += dropped
        self.count("batches_sent")
        self.count("lines_sent", len(lines))
        self.count("lines_suppressed", dropped)
        return True


def _matches(entry: Entry, match: str | None) -> bool:
    return match is None or match in render_json(entry.event).casefold()


def _to_line(entry: Entry, budget: int) -> tuple[LogLine, int]:
    fields = {k: v for k, v in entry.event.items() if k not in _OWN_KEYS}
    try:
        fields = msgspec.to_builtins(fields, enc_hook=repr, str_keys=True)
    except (TypeError, ValueError, OverflowError):
        fields = {k: repr(v) for k, v in fields.items()}
    line = LogLine(
        at=datetime.fromtimestamp(entry.at, UTC),
        level=_NAMES.get(entry.level, "info"),  # type: ignore[arg-type]
        event=str(entry.event.get("event", ""))[:2000],
        fields=fields,
    )
    size = len(msgspec.json.encode(line))
    if size > budget // 2:  # one huge line must not crowd out every other one
        line = LogLine(
            at=line.at, level=line.level, event=line.event[:500], fields={"truncated": size}
        )
        size = len(msgspec.json.encode(line))
    return line, size


def _suppressed_marker(dropped: int, rate: int) -> LogLine:
    return LogLine(
        at=datetime.now(UTC),
        level="warning",
        event=f"{dropped} lines suppressed",
        logger="logtail",
        fields={"suppressed": dropped, "max_lines_per_s": rate},
    )


def level_name(level: int) -> str:
    """A level number as its name (``logging`` numbers)."""
    return _NAMES.get(level, logging.getLevelName(level).lower())
