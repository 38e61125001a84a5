"""Remote log tail, HQ side: one tail session per site, shared by its viewers.

A viewer (a dashboard page's EventSource, or ``onecard-central logs``) joins a site's
session; the first viewer starts it by sending ``logs.tail`` on the site's ``down/cmd``.
Each ``up/logs`` batch of the session fans out to every viewer's queue, filtered by that
viewer's own level and grep. The session asks the edge for the lowest level any viewer
wants (and for the grep, when every viewer has the same one). While viewers stay, the
tail is renewed before the edge's TTL runs out; when the last viewer leaves, ``logs.stop``
is sent. If HQ dies, the edge stops on its own at the TTL.

Each viewer's tail is written to the audit log when it starts and when it ends (who,
which site, level, grep, how many lines). A viewer joining a running session gets the
lines the session has already received since its ``since`` (the edge replays ``since``
only for the viewer that starts the session).

Viewer queues are bounded (``VIEWER_QUEUE``): a viewer too slow to read loses lines, and
is told how many, rather than holding HQ's memory.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
import structlog

from central.core.effects import AuditEntry
from central.operations import write_audit
from central.store import Store
from edge_agent.adapters.waiting import raise_if_cancelling, wait_event
from protocol.errors import MessageError
from protocol.messages import (
    Command,
    LogBatch,
    LogLine,
    LogsStop,
    LogsTail,
    SetLogLevel,
    decode,
)

log = structlog.get_logger("central.logtail")

#: Roles that may tail a site's log.
TAIL_ROLES = frozenset({"admin", "technician"})
#: The edge stops a tail by itself this long after the last renewal (HQ gone, link lost).
TTL_S = 900
#: A session is renewed when less than this is left of its TTL.
RENEW_BEFORE_S = 300
#: The edge's line rate limit (lines/s) that HQ asks for.
MAX_LINES_PER_S = 50
#: Lines a session keeps for viewers who join later.
SESSION_LINES = 2000
#: Longest temporary log level change HQ sends (the edge reverts it after that).
MAX_LEVEL_S = 86400
#: Events a viewer's queue holds before lines are dropped for it.
VIEWER_QUEUE = 5000
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
SOURCE = "hq:logtail"

EventKind = Literal["line", "caught_up", "end", "notice"]


class TailError(Exception):
    """A tail cannot be started (unknown site, too many viewers …); the message says why."""


@dataclass(frozen=True, slots=True)
class ViewerEvent:
    """What a viewer receives: a line, the end of the replay, the end of the tail, or a
    notice (lines lost, the tail renewed …)."""

    kind: EventKind
    data: dict[str, Any]


@dataclass(eq=False)
class Viewer:
    """One person watching one site's log."""

    site: str
    user: str
    role: str
    ip: str | None
    level: int
    grep: str | None
    since_s: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    queue: asyncio.Queue[ViewerEvent] = field(
        default_factory=lambda: asyncio.Queue(maxsize=VIEWER_QUEUE)
    )
    lines: int = 0
    lost: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: str | None = None

    def wants(self, line: LogLine) -> bool:
        """Whether ``line`` passes this viewer's level and grep."""
        if LEVELS.get(line.level, 20) < self.level:
            return False
        return self.grep is None or self.grep in line_text(line).casefold()

    def put(self, event: ViewerEvent) -> None:
        """Queue ``event``; a full queue loses it (counted, and said once there is room)."""
        if self.lost and self.queue.qsize() < VIEWER_QUEUE - 1:
            notice = ViewerEvent("notice", {"text": f"{self.lost} lines lost (viewer too slow)"})
            self.queue.put_nowait(notice)
            self.lost = 0
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lost += 1
        else:
            self.lines += event.kind == "line"


@dataclass
class SiteTail:
    """The tail session of one site."""

    site: str
    stream: str
    viewers: list[Viewer] = field(default_factory=list)
    recent: deque[tuple[float, LogLine]] = field(
        default_factory=lambda: deque(maxlen=SESSION_LINES)
    )
    sent_level: str = ""
    sent_match: str | None = None
    renew_at: float = 0.0
    next_batch: int = 0
    lost_batches: int = 0
    suppressed: int = 0
    caught_up: bool = False


def line_text(line: LogLine) -> str:
    """A line as one searchable text: its event and its fields."""
    return f"{line.level} {line.event} {msgspec.json.encode(line.fields).decode()}"


def line_json(line: LogLine) -> dict[str, Any]:
    """A line as JSON-ready data."""
    data: dict[str, Any] = msgspec.to_builtins(line)
    return data


SendCommand = Callable[[str, Command], Awaitable[bool]]


@dataclass
class TailHub:
    """Every site's tail session (see the module docstring). ``send(site, command)``
    publishes on the site's ``down/cmd`` and says whether it could."""

    store: Store
    send: SendCommand | None = None
    ttl_s: int = TTL_S
    renew_before_s: float = RENEW_BEFORE_S
    max_lines_per_s: int = MAX_LINES_PER_S
    clock: Callable[[], float] = time.monotonic
    sessions: dict[str, SiteTail] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _audits: list[tuple[AuditEntry, str, str | None]] = field(default_factory=list)
    _stops: list[tuple[str, str]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def count(self, name: str, n: int = 1) -> None:
        """Bump a counter."""
        self.stats[name] = self.stats.get(name, 0) + n

    # -- viewers -----------------------------------------------------------------------------

    async def join(
        self,
        site: str,
        *,
        user: str,
        role: str,
        ip: str | None,
        level: str = "info",
        grep: str | None = None,
        since_s: int = 0,
    ) -> Viewer:
        """Add a viewer of ``site``'s log (starting its tail if it is the first); audited.

        Raises :class:`PermissionError` for a role that may not tail (audited as refused),
        :class:`TailError` for an unknown site or when HQ cannot reach the broker.
        """
        if level not in LEVELS:
            raise TailError(f"level {level!r}: use one of {', '.join(LEVELS)}")
        if role not in TAIL_ROLES:
            self.count("refused")
            await self._audit_now(site, user, role, ip, "logs.tail.start", refused=True)
            raise PermissionError(f"role {role} may not tail logs (admin or technician only)")
        await self._check_site(site)
        viewer = Viewer(
            site=site,
            user=user,
            role=role,
            ip=ip,
            level=LEVELS[level],
            grep=grep.casefold() if grep else None,
            since_s=since_s,
        )
        session = self.sessions.get(site)
        fresh = session is None
        if session is None:
            session = self.sessions[site] = SiteTail(site, f"tail-{uuid.uuid4().hex[:12]}")
        else:
            self._replay(session, viewer)
        session.viewers.append(viewer)
        await self._audit_now(
            site, user, role, ip, "logs.tail.start", viewer=viewer, stream=session.stream
        )
        self.count("viewers_joined")
        sent = await self._send_tail(session, since_s=since_s if fresh else 0)
        if not sent:
            viewer.put(ViewerEvent("notice", {"text": "HQ is not connected to the broker"}))
        return viewer

    async def set_level(
        self,
        site: str,
        level: str,
        duration_s: int,
        *,
        user: str,
        role: str,
        ip: str | None,
    ) -> str:
        """Send ``log_level``: ``site``'s daemon logs at ``level`` for ``duration_s``, then
        reverts by itself. Audited (``logs.level``); the command's id is returned. Raises
        like :meth:`join`."""
        if level not in LEVELS:
            raise TailError(f"level {level!r}: use one of {', '.join(LEVELS)}")
        if not 1 <= duration_s <= MAX_LEVEL_S:
            raise TailError(f"duration must be 1 s to {MAX_LEVEL_S // 3600} h")
        refused = role not in TAIL_ROLES
        entry = AuditEntry(
            request_id=f"logtail:{uuid.uuid4().hex[:12]}:level",
            operator=user,
            source=SOURCE,
            action="logs.level",
            target=f"site:{site}",
            at=datetime.now(UTC),
            outcome="rejected" if refused else "accepted",
            reason_code="forbidden" if refused else None,
            after={"level": level, "duration_s": duration_s},
        )
        if refused:
            await self.store.run(lambda conn: write_audit(conn, entry, role=role, ip=ip))
            raise PermissionError(f"role {role} may not change log levels")
        await self._check_site(site)
        assert self.send is not None  # noqa: S101 - _check_site checked it
        command = SetLogLevel(
            id=f"logs-{next(self._ids)}-{uuid.uuid4().hex[:8]}",
            issued_at=datetime.now(UTC),
            level=level,  # type: ignore[arg-type]
            duration_s=duration_s,
        )
        if not await self.send(site, command):
            raise TailError("HQ is not connected to the broker right now; try again")
        await self.store.run(lambda conn: write_audit(conn, entry, role=role, ip=ip))
        return command.id

    async def _check_site(self, site: str) -> None:
        known = await self.store.run(
            lambda conn: conn.execute(
                "SELECT 1 FROM sites WHERE id = ? AND removed = 0", (site,)
            ).fetchone()
        )
        if known is None:
            raise TailError(f"no site {site}")
        if self.send is None:
            raise TailError("this central is not connected to the broker (serve --http)")

    def leave(self, viewer: Viewer, reason: str = "closed") -> None:
        """Remove ``viewer`` (never blocks: the audit row and a ``logs.stop`` are written by
        :meth:`run`). Safe to call twice."""
        session = self.sessions.get(viewer.site)
        if viewer.ended is not None:
            return
        viewer.ended = reason
        self._audits.append(self._stop_entry(viewer))
        if session is not None and viewer in session.viewers:
            session.viewers.remove(viewer)
            if not session.viewers:
                del self.sessions[viewer.site]
                self._stops.append((viewer.site, session.stream))
        self._wake.set()

    def _replay(self, session: SiteTail, viewer: Viewer) -> None:
        horizon = time.time() - viewer.since_s if viewer.since_s else None
        if horizon is not None:
            for at, line in session.recent:
                if at >= horizon and viewer.wants(line):
                    viewer.put(ViewerEvent("line", line_json(line)))
        if session.caught_up:
            viewer.put(ViewerEvent("caught_up", {}))

    # -- batches from the edge -------------------------------------------------------------------

    def receive(self, site: str, payload: bytes) -> None:
        """An ``up/logs`` payload from ``site``: fan its lines out to the viewers.

        Raises :class:`MessageError` for a payload that is not a log batch of this site
        (the caller dead-letters it). A batch of a stream no viewer waits for is ignored.
        """
        batch = decode(payload, LogBatch)
        if batch.site != site:
            raise MessageError(f"payload site {batch.site} is not the topic's site {site}")
        session = self.sessions.get(site)
        if session is None or batch.stream != session.stream:
            self.count("batches_orphaned")
            return
        self.count("batches")
        if batch.batch > session.next_batch:
            missing = batch.batch - session.next_batch
            session.lost_batches += missing
            self._broadcast(session, ViewerEvent("notice", {"text": f"{missing} batches lost"}))
        session.next_batch = batch.batch + 1
        session.suppressed += batch.dropped
        now = time.time()
        for line in batch.lines:
            session.recent.append((now, line))
            data = line_json(line)
            for viewer in session.viewers:
                if viewer.wants(line) or line.logger == "logtail":
                    viewer.put(ViewerEvent("line", data))
        if batch.caught_up and not session.caught_up:
            session.caught_up = True
            self._broadcast(session, ViewerEvent("caught_up", {}))
        if batch.final:
            reason = batch.reason or "ended"
            self._broadcast(session, ViewerEvent("end", {"reason": reason}))
            del self.sessions[site]
            for viewer in list(session.viewers):
                self.leave(viewer, reason)
            log.info("logtail.ended_by_edge", site=site, stream=session.stream, reason=reason)

    def _broadcast(self, session: SiteTail, event: ViewerEvent) -> None:
        for viewer in session.viewers:
            viewer.put(event)

    # -- talking to the edge ------------------------------------------------------------------

    def _wanted(self, session: SiteTail) -> tuple[str, str | None]:
        level = min(v.level for v in session.viewers)
        greps = {v.grep for v in session.viewers}
        match = next(iter(greps)) if len(greps) == 1 else None
        return next(k for k, v in LEVELS.items() if v == level), match

    async def _send_tail(self, session: SiteTail, *, since_s: int = 0) -> bool:
        level, match = self._wanted(session)
        unchanged = (level, match) == (session.sent_level, session.sent_match)
        if unchanged and not since_s and self.clock() < session.renew_at:
            return True
        assert self.send is not None  # noqa: S101 - join() checked it
        command = LogsTail(
            id=f"logs-{next(self._ids)}-{uuid.uuid4().hex[:8]}",
            issued_at=datetime.now(UTC),
            stream=session.stream,
            level=level,  # type: ignore[arg-type]
            duration_s=self.ttl_s,
            match=match,
            since_s=min(since_s, 86400),
            max_lines_per_s=self.max_lines_per_s,
        )
        sent = await self.send(session.site, command)
        if sent:
            session.sent_level, session.sent_match = level, match
            session.renew_at = self.clock() + max(1.0, self.ttl_s - self.renew_before_s)
            self.count("tail_commands")
        return sent

    async def run(self, stopping: asyncio.Event) -> None:
        """Renew sessions that have viewers, send ``logs.stop`` for those that lost their
        last one, and write the audit rows of viewers who left; until ``stopping`` is set,
        then end every viewer's stream."""
        while not stopping.is_set():
            raise_if_cancelling()
            self._wake.clear()
            await self.flush()
            await wait_event(self._wake, 1.0)
        self.close()
        await self.flush()

    async def flush(self) -> None:
        """One round of :meth:`run`'s work."""
        stops, self._stops = self._stops, []
        for site, stream in stops:
            if self.send is not None:
                stop = LogsStop(
                    id=f"logs-{next(self._ids)}-{uuid.uuid4().hex[:8]}",
                    issued_at=datetime.now(UTC),
                    stream=stream,
                )
                await self.send(site, stop)
                self.count("stop_commands")
        for session in list(self.sessions.values()):
            if session.viewers and self.clock() >= session.renew_at:
                await self._send_tail(session)
        audits, self._audits = self._audits, []
        if audits:
            await self.store.run(lambda conn: _write_all(conn, audits))

    def close(self) -> None:
        """End every viewer's stream (HQ is stopping)."""
        for session in list(self.sessions.values()):
            self._broadcast(session, ViewerEvent("end", {"reason": "shutdown"}))
            for viewer in list(session.viewers):
                self.leave(viewer, "shutdown")

    # -- audit ------------------------------------------------------------------------------------

    async def _audit_now(
        self,
        site: str,
        user: str,
        role: str,
        ip: str | None,
        action: str,
        *,
        refused: bool = False,
        viewer: Viewer | None = None,
        stream: str = "",
    ) -> None:
        after: dict[str, Any] = {}
        if viewer is not None:
            after = {
                "viewer": viewer.id,
                "stream": stream,
                "level": _level_name(viewer.level),
                "grep": viewer.grep or "",
                "since_s": viewer.since_s,
            }
        entry = AuditEntry(
            request_id=f"logtail:{viewer.id if viewer else uuid.uuid4().hex[:12]}:start",
            operator=user,
            source=SOURCE,
            action=action,
            target=f"site:{site}",
            at=datetime.now(UTC),
            outcome="rejected" if refused else "accepted",
            reason_code="forbidden" if refused else None,
            after=after,
        )
        await self.store.run(lambda conn: write_audit(conn, entry, role=role, ip=ip))

    def _stop_entry(self, viewer: Viewer) -> tuple[AuditEntry, str, str | None]:
        entry = AuditEntry(
            request_id=f"logtail:{viewer.id}:stop",
            operator=viewer.user,
            source=SOURCE,
            action="logs.tail.stop",
            target=f"site:{viewer.site}",
            at=datetime.now(UTC),
            after={
                "viewer": viewer.id,
                "lines": viewer.lines,
                "seconds": int(time.monotonic() - viewer.started),
            },
            note=viewer.ended or "",
        )
        return entry, viewer.role, viewer.ip


def _level_name(level: int) -> str:
    return next((k for k, v in LEVELS.items() if v == level), "info")


def _write_all(conn: Any, audits: list[tuple[AuditEntry, str, str | None]]) -> None:
    for entry, role, ip in audits:
        write_audit(conn, entry, role=role, ip=ip)
