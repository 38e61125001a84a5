"""Terminals that decide locally (智能终端): their lists pushed (名单下发), their records
collected without gaps (数据采集). See ``docs/terminal-protocol.md`` 15.1 and 16.1.

A terminal that names ``lists`` in HELLO decides every card on its own and reports what it
did with RECORD_UPLOAD. For each such terminal the :class:`ListKeeper`:

- **pushes its lists** — the site's blacklist; the whitelist per door of a door terminal
  (cards with a right to the door's group), or every active card for a clock. It remembers
  per (terminal, list) the version the terminal acknowledged and the UIDs it then held
  (``terminal_lists`` / ``terminal_list_uids``), so a change goes out as a delta; a list it
  never gave the terminal, or a ``version_gap`` NAK, gets a full reload. The versions on the
  link are the edge's own chain per terminal and list, numbered from its clock so they never
  repeat across a reset of either side; ``covers`` says which site version the content is.
- **holds the terminal's requests after WELCOME** until its lists are up to date (the
  session's gate, at most ``PUSH_TIMEOUT_S``): a card blacklisted while the terminal was cut
  off is refused before it can be accepted again.
- **finds missing record numbers** after each upload and each HEARTBEAT with nothing
  buffered, asks for them with RECORD_REQUEST, stores what comes back through the site's
  idempotent upload path, and marks numbers the terminal does not hold as void.
- **tracks lag**: ``behind_ms`` on a list whose content differs from the site's (set for
  disconnected terminals too, when the site's lists change), reported per terminal in the
  edge's status and ``up/health`` so HQ can raise *terminal list lag*.

Pure planning (:func:`plan_updates`, :func:`full_reload`, :func:`missing_between`,
:func:`rec_ranges`) is separate from the SQL and from the per-session loops.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
from msgspec import UNSET

from edge_agent.adapters.sqlite_store import EdgeStore, get_meta
from edge_agent.adapters.waiting import wait_event
from protocol.errors import ProtocolError
from protocol.terminal import (
    MAX_LIST_UIDS,
    MAX_UPLOAD_RECORDS,
    Ack,
    Body,
    ListKind,
    ListUpdate,
    RecordReply,
    RecordRequest,
    RecordUpload,
)

if TYPE_CHECKING:
    from edge_agent.adapters.terminal_server import TerminalSession

log = structlog.get_logger("edge.lists")

#: After WELCOME the terminal's requests wait at most this long for its lists.
PUSH_TIMEOUT_S = 3.0
#: Lists are compared and missing records asked for again at least this often.
RECHECK_S = 30.0
#: One edge request (LIST_UPDATE, RECORD_REQUEST) waits this long, retransmissions included.
REQUEST_TIMEOUT_S = 2.0
#: At most this many missing numbers are asked for per pass (the rest on the next pass).
MAX_ASK = 10 * MAX_UPLOAD_RECORDS
#: Numbers scanned for gaps per pass: a counter that jumped does not stall the edge.
MAX_SCAN = 100_000
_LINK_ERRORS = (TimeoutError, ConnectionError, OSError, ProtocolError)


# -- pure planning ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteList:
    """A list as the site has it now, for one terminal."""

    key: str  # "blacklist", "whitelist" or "whitelist:<door>"
    kind: ListKind
    door: str | None
    #: The site version it stands for (blacklist version; feed version for whitelists).
    version: int
    uids: frozenset[str]


@dataclass(frozen=True, slots=True)
class Applied:
    """What a terminal holds of one list, as of its last acknowledged LIST_UPDATE."""

    version: int
    covers: int
    uids: frozenset[str]


def next_version(after: int, now_ms: int) -> int:
    """A link version after ``after``: the clock in ms, so versions never repeat even if
    the edge's or the terminal's memory of the chain was lost."""
    return max(after + 1, now_ms)


def plan_updates(target: SiteList, applied: Applied | None, now_ms: int) -> list[ListUpdate]:
    """The LIST_UPDATEs that take a terminal from ``applied`` to ``target`` (empty: it
    already holds the same UIDs). A list never given to it is a full reload."""
    if applied is None:
        return full_reload(target, 0, now_ms)
    add = sorted(target.uids - applied.uids)
    remove = sorted(applied.uids - target.uids)
    changes: list[tuple[str, bool]] = [(u, True) for u in add] + [(u, False) for u in remove]
    updates = []
    version = applied.version
    for start in range(0, len(changes), MAX_LIST_UIDS):
        chunk = changes[start : start + MAX_LIST_UIDS]
        new = next_version(version, now_ms)
        updates.append(
            ListUpdate(
                kind=target.kind,
                version=new,
                prev_version=version,
                add=[u for u, adding in chunk if adding],
                remove=[u for u, adding in chunk if not adding],
                door=target.door if target.door is not None else UNSET,
            )
        )
        version = new
    return updates


def full_reload(target: SiteList, after: int, now_ms: int) -> list[ListUpdate]:
    """The whole list: a ``full`` update with the first UIDs, chained deltas with the rest."""
    uids = sorted(target.uids)
    door = target.door if target.door is not None else UNSET
    version = next_version(after, now_ms)
    updates = [
        ListUpdate(
            kind=target.kind,
            version=version,
            prev_version=after,
            full=True,
            add=uids[:MAX_LIST_UIDS],
            door=door,
        )
    ]
    for start in range(MAX_LIST_UIDS, len(uids), MAX_LIST_UIDS):
        new = next_version(version, now_ms)
        chunk = uids[start : start + MAX_LIST_UIDS]
        updates.append(
            ListUpdate(kind=target.kind, version=new, prev_version=version, add=chunk, door=door)
        )
        version = new
    return updates


def missing_between(held: Iterable[int], low: int, high: int) -> list[int]:
    """Numbers in ``low..high`` (inclusive) not in ``held``."""
    have = set(held)
    return [n for n in range(low, high + 1) if n not in have]


def rec_ranges(recs: Iterable[int], most: int = MAX_UPLOAD_RECORDS) -> list[tuple[int, int]]:
    """Sorted numbers as inclusive ranges of consecutive numbers, each at most ``most`` long
    (one RECORD_REQUEST each)."""
    out: list[tuple[int, int]] = []
    for n in sorted(set(recs)):
        if out and n == out[-1][1] + 1 and n - out[-1][0] < most:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


# -- the store ------------------------------------------------------------------------------------


#: A card, grant or level valid at ``:now`` (NULL bounds are open).
_DOOR_WHITELIST = """
    SELECT DISTINCT c.uid FROM doors d
    JOIN access_levels l ON l.door_group_id = d.group_id
    JOIN access_grants g ON g.access_level_id = l.id
    JOIN cards c ON c.person_id = g.person_id
    WHERE d.id = :door AND d.terminal_id = :terminal AND c.status = 'active'
      AND (c.valid_from_ms IS NULL OR c.valid_from_ms <= :now)
      AND (c.valid_to_ms IS NULL OR c.valid_to_ms > :now)
      AND (g.valid_from_ms IS NULL OR g.valid_from_ms <= :now)
      AND (g.valid_to_ms IS NULL OR g.valid_to_ms > :now)
      AND (l.valid_from_ms IS NULL OR l.valid_from_ms <= :now)
      AND (l.valid_to_ms IS NULL OR l.valid_to_ms > :now)
"""
_CARD_WHITELIST = """
    SELECT uid FROM cards c WHERE c.status = 'active'
      AND (c.valid_from_ms IS NULL OR c.valid_from_ms <= :now)
      AND (c.valid_to_ms IS NULL OR c.valid_to_ms > :now)
"""


def site_lists(
    conn: sqlite3.Connection,
    terminal_id: str,
    terminal_kind: str,
    kinds: Iterable[str],
    now_ms: int,
) -> list[SiteList]:
    """The lists a terminal that keeps ``kinds`` should hold now."""
    out = []
    for kind in sorted(set(kinds)):
        if kind == "blacklist":
            out.append(target_list(conn, terminal_id, "blacklist", now_ms))
        elif kind == "whitelist" and terminal_kind == "door":
            doors = conn.execute(
                "SELECT id FROM doors WHERE terminal_id = ? ORDER BY id", (terminal_id,)
            ).fetchall()
            out.extend(target_list(conn, terminal_id, f"whitelist:{d}", now_ms) for (d,) in doors)
        elif kind == "whitelist":
            out.append(target_list(conn, terminal_id, "whitelist", now_ms))
    return out


def target_list(conn: sqlite3.Connection, terminal_id: str, key: str, now_ms: int) -> SiteList:
    """The site's current content of list ``key`` for ``terminal_id``."""
    if key == "blacklist":
        version = int(get_meta(conn, "blacklist_version") or 0)
        uids = frozenset(r[0] for r in conn.execute("SELECT uid FROM blacklist"))
        return SiteList(key, "blacklist", None, version, uids)
    version = int(get_meta(conn, "feed_version") or 0)
    door = key.partition(":")[2] or None
    if door is None:
        rows = conn.execute(_CARD_WHITELIST, {"now": now_ms})
    else:
        rows = conn.execute(_DOOR_WHITELIST, {"door": door, "terminal": terminal_id, "now": now_ms})
    return SiteList(key, "whitelist", door, version, frozenset(r[0] for r in rows))


def applied_list(conn: sqlite3.Connection, terminal_id: str, key: str) -> Applied | None:
    """What the terminal acknowledged of list ``key`` (None: never pushed, or forgotten)."""
    row = conn.execute(
        "SELECT version, covers FROM terminal_lists WHERE terminal_id = ? AND list = ?",
        (terminal_id, key),
    ).fetchone()
    if row is None:
        return None
    uids = conn.execute(
        "SELECT uid FROM terminal_list_uids WHERE terminal_id = ? AND list = ?", (terminal_id, key)
    )
    return Applied(int(row[0]), int(row[1]), frozenset(r[0] for r in uids))


def save_applied(
    conn: sqlite3.Connection,
    terminal_id: str,
    key: str,
    update: ListUpdate,
    *,
    covers: int | None,
    now_ms: int,
) -> None:
    """The terminal acknowledged ``update``: keep its version and its UIDs. ``covers`` is the
    site version once the last update of a push is in (None: keep the old one)."""
    if update.full:
        conn.execute(
            "DELETE FROM terminal_list_uids WHERE terminal_id = ? AND list = ?", (terminal_id, key)
        )
    conn.executemany(
        "DELETE FROM terminal_list_uids WHERE terminal_id = ? AND list = ? AND uid = ?",
        [(terminal_id, key, uid) for uid in update.remove],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO terminal_list_uids (terminal_id, list, uid) VALUES (?, ?, ?)",
        [(terminal_id, key, uid) for uid in update.add],
    )
    conn.execute(
        "INSERT INTO terminal_lists (terminal_id, list, version, covers, behind_ms, updated_ms)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (terminal_id, list) DO UPDATE SET"
        " version = excluded.version, covers = coalesce(?, terminal_lists.covers),"
        " behind_ms = CASE WHEN ? IS NULL THEN terminal_lists.behind_ms END,"
        " updated_ms = excluded.updated_ms",
        (
            terminal_id,
            key,
            update.version,
            covers or 0,
            None if covers is not None else now_ms,
            now_ms,
            covers,
            covers,
        ),
    )


def mark_in_step(conn: sqlite3.Connection, terminal_id: str, key: str, covers: int) -> None:
    """The terminal holds what the site has (``covers``): not behind."""
    conn.execute(
        "UPDATE terminal_lists SET covers = ?, behind_ms = NULL WHERE terminal_id = ? AND list = ?",
        (covers, terminal_id, key),
    )


def mark_behind(conn: sqlite3.Connection, terminal_id: str, key: str, now_ms: int) -> None:
    """The terminal's list differs from the site's: remember since when (first time only).
    A list never pushed gets a row at version 0, so its lag is tracked from now."""
    conn.execute(
        "INSERT INTO terminal_lists (terminal_id, list, version, covers, behind_ms, updated_ms)"
        " VALUES (?, ?, 0, 0, ?, ?) ON CONFLICT (terminal_id, list) DO UPDATE SET"
        " behind_ms = coalesce(terminal_lists.behind_ms, excluded.behind_ms)",
        (terminal_id, key, now_ms, now_ms),
    )


def forget_applied(conn: sqlite3.Connection, terminal_id: str, key: str) -> None:
    """The terminal NAKed a delta: its content is unknown until a full reload."""
    conn.execute(
        "DELETE FROM terminal_list_uids WHERE terminal_id = ? AND list = ?", (terminal_id, key)
    )


def forget_other_lists(conn: sqlite3.Connection, terminal_id: str, keep: Iterable[str]) -> None:
    """Drop what is kept about lists the terminal no longer gets (a door removed from it),
    so they do not count as behind for ever."""
    kept = set(keep)
    for (key,) in conn.execute(
        "SELECT list FROM terminal_lists WHERE terminal_id = ?", (terminal_id,)
    ).fetchall():
        if key not in kept:
            conn.execute(
                "DELETE FROM terminal_lists WHERE terminal_id = ? AND list = ?", (terminal_id, key)
            )
            forget_applied(conn, terminal_id, key)


def refresh_lag(conn: sqlite3.Connection, kinds: dict[str, str], now_ms: int) -> None:
    """For every (terminal, list) the edge keeps: behind or not, by content. ``kinds`` maps
    terminal ids to their kind (terminals no longer registered are left alone)."""
    rows = conn.execute("SELECT terminal_id, list FROM terminal_lists").fetchall()
    for terminal_id, key in rows:
        if terminal_id not in kinds:
            continue
        target = target_list(conn, terminal_id, key, now_ms)
        applied = applied_list(conn, terminal_id, key)
        if applied is not None and applied.version > 0 and applied.uids == target.uids:
            mark_in_step(conn, terminal_id, key, target.version)
        else:
            mark_behind(conn, terminal_id, key, now_ms)


def find_gaps(conn: sqlite3.Connection, terminal_id: str, bound: int, now_ms: int) -> list[int]:
    """Record numbers up to ``bound`` the edge holds neither as a request nor as an upload
    (nor knows to be void), from the first it ever got; kept in ``terminal_gaps``. Returns
    every number still missing."""
    row = conn.execute(
        "SELECT checked_upto FROM terminal_recs WHERE terminal_id = ?", (terminal_id,)
    ).fetchone()
    if row is None:
        first = conn.execute(
            "SELECT min(term_rec) FROM terminal_txns WHERE terminal_id = ?", (terminal_id,)
        ).fetchone()[0]
        if first is None:
            return []
        checked = int(first) - 1
        conn.execute(
            "INSERT INTO terminal_recs (terminal_id, checked_upto) VALUES (?, ?)",
            (terminal_id, checked),
        )
    else:
        checked = int(row[0])
    end = min(bound, checked + MAX_SCAN)
    if end > checked:
        held = [
            r[0]
            for r in conn.execute(
                "SELECT term_rec FROM terminal_txns WHERE terminal_id = ?"
                " AND term_rec > ? AND term_rec <= ?",
                (terminal_id, checked, end),
            )
        ]
        known = [
            r[0]
            for r in conn.execute(
                "SELECT rec FROM terminal_gaps WHERE terminal_id = ? AND rec > ? AND rec <= ?",
                (terminal_id, checked, end),
            )
        ]
        missing = missing_between([*held, *known], checked + 1, end)
        conn.executemany(
            "INSERT OR IGNORE INTO terminal_gaps (terminal_id, rec, state, found_ms)"
            " VALUES (?, ?, 'missing', ?)",
            [(terminal_id, n, now_ms) for n in missing],
        )
        # filled since: a late upload (or the reply to a request) brought them
        conn.execute(
            "DELETE FROM terminal_gaps WHERE terminal_id = ? AND state = 'missing' AND rec IN"
            " (SELECT term_rec FROM terminal_txns WHERE terminal_id = ?)",
            (terminal_id, terminal_id),
        )
        still = _missing(conn, terminal_id)
        upto = (min(still) - 1) if still else end
        conn.execute(
            "UPDATE terminal_recs SET checked_upto = ? WHERE terminal_id = ?",
            (max(checked, upto), terminal_id),
        )
    return _missing(conn, terminal_id)


def _missing(conn: sqlite3.Connection, terminal_id: str) -> list[int]:
    return [
        int(r[0])
        for r in conn.execute(
            "SELECT rec FROM terminal_gaps WHERE terminal_id = ? AND state = 'missing'"
            " ORDER BY rec",
            (terminal_id,),
        )
    ]


def resolve_range(conn: sqlite3.Connection, terminal_id: str, low: int, high: int) -> int:
    """After the terminal's RECORD_REPLY for ``low..high`` was stored: numbers now held are no
    longer missing; the others the terminal does not hold are void. Returns how many void."""
    conn.execute(
        "DELETE FROM terminal_gaps WHERE terminal_id = ? AND state = 'missing' AND rec IN"
        " (SELECT term_rec FROM terminal_txns WHERE terminal_id = ? AND term_rec BETWEEN ? AND ?)",
        (terminal_id, terminal_id, low, high),
    )
    cursor = conn.execute(
        "UPDATE terminal_gaps SET state = 'void', asked = asked + 1 WHERE terminal_id = ?"
        " AND state = 'missing' AND rec BETWEEN ? AND ?",
        (terminal_id, low, high),
    )
    return int(cursor.rowcount)


def max_rec(conn: sqlite3.Connection, terminal_id: str) -> int:
    """The newest record number the edge holds from ``terminal_id`` (0: none)."""
    row = conn.execute(
        "SELECT max(term_rec) FROM terminal_txns WHERE terminal_id = ?", (terminal_id,)
    ).fetchone()
    return int(row[0] or 0)


async def list_status(store: EdgeStore, now_ms: int) -> dict[str, dict[str, Any]]:
    """Per terminal that decides locally: its lists' link versions, how many lists are behind
    the site's and for how long, and its missing and void record numbers (for status and
    ``up/health``)."""
    out: dict[str, dict[str, Any]] = {}

    def entry(tid: str) -> dict[str, Any]:
        return out.setdefault(
            tid,
            {
                "lists": {},
                "lists_behind": 0,
                "lists_behind_s": None,
                "records_missing": 0,
                "records_void": 0,
            },
        )

    for tid, key, version, behind_ms in await store.read(
        "SELECT terminal_id, list, version, behind_ms FROM terminal_lists ORDER BY 1, 2"
    ):
        item = entry(tid)
        item["lists"][key] = int(version)
        if behind_ms is not None:
            item["lists_behind"] += 1
            age = max(0.0, (now_ms - int(behind_ms)) / 1000)
            item["lists_behind_s"] = max(item["lists_behind_s"] or 0.0, round(age, 1))
    for tid, state, count in await store.read(
        "SELECT terminal_id, state, count(*) FROM terminal_gaps GROUP BY 1, 2"
    ):
        entry(tid)["records_missing" if state == "missing" else "records_void"] = int(count)
    return out


# -- the keeper -----------------------------------------------------------------------------------


@dataclass
class SmartLink:
    """One authenticated session of a terminal that decides locally."""

    session: TerminalSession
    terminal_id: str
    terminal_kind: str
    kinds: tuple[str, ...]
    last_rec: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Check for gaps up to this number (0: nothing new to check).
    gap_bound: int = 0
    #: True when a HEARTBEAT said nothing is buffered: check up to the newest held.
    check_all: bool = False
    #: The site's lists changed since they were last compared for this terminal.
    lists_due: bool = False


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class ListKeeper:
    """Keeps the lists and records of every terminal that decides locally (module doc).

    :meth:`run` owns one task per such session. Sessions call :meth:`attach` after WELCOME
    and :meth:`noted_upload` / :meth:`noted_heartbeat` as frames arrive; the sync calls
    :meth:`poke` when the site's lists changed."""

    store: EdgeStore
    #: terminal id → kind of every terminal the site knows now (it changes on reload).
    terminal_kinds: Callable[[], dict[str, str]] = dict
    stats: dict[str, int] = field(default_factory=dict)
    _links: dict[str, SmartLink] = field(default_factory=dict)
    _group: asyncio.TaskGroup | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def count(self, name: str, n: int = 1) -> None:
        """Bump a counter."""
        self.stats[name] = self.stats.get(name, 0) + n

    async def run(self, stopping: asyncio.Event) -> None:
        """Serve attached sessions, and mark lag of terminals not connected, until stopped."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                while not stopping.is_set():
                    await self._refresh_lag()
                    self._changed.clear()
                    waiters = {
                        asyncio.ensure_future(self._changed.wait()),
                        asyncio.ensure_future(stopping.wait()),
                    }
                    try:
                        await asyncio.wait(
                            waiters, timeout=RECHECK_S, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        for waiter in waiters:
                            waiter.cancel()
            finally:
                self._group = None
                for task in self._tasks:
                    task.cancel()

    def poke(self) -> None:
        """The site's blacklist or master data changed: push to connected terminals now."""
        self._changed.set()
        for link in self._links.values():
            link.lists_due = True
            link.wake.set()

    def attach(self, session: TerminalSession, kinds: Iterable[str], last_rec: int) -> bool:
        """A terminal that keeps ``kinds`` authenticated on ``session``: bring its lists up
        to date, then open the session's gate. False if the keeper is not running (the
        caller opens the gate itself)."""
        terminal = session.terminal
        if self._group is None or terminal is None:
            return False
        link = SmartLink(session, terminal.id, terminal.kind, tuple(kinds), last_rec=last_rec)
        self._links[terminal.id] = link
        task = self._group.create_task(self._serve(link), name=f"lists:{terminal.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def noted_upload(self, terminal_id: str, newest: int) -> None:
        """The terminal uploaded records up to ``newest``: numbers below it should be held."""
        link = self._links.get(terminal_id)
        if link is not None:
            link.gap_bound = max(link.gap_bound, newest)
            link.wake.set()

    def noted_heartbeat(self, terminal_id: str, buffered: int) -> None:
        """A HEARTBEAT: with nothing buffered, every number up to the newest should be held."""
        link = self._links.get(terminal_id)
        if link is not None and buffered == 0:
            link.check_all = True
            link.wake.set()

    async def _serve(self, link: SmartLink) -> None:
        session = link.session
        try:
            try:
                async with asyncio.timeout(PUSH_TIMEOUT_S):
                    await self._push_lists(link)
            except TimeoutError:
                self.count("push_timeouts")
                log.warning("lists.push_timeout", terminal=link.terminal_id)
                link.lists_due = True  # a long list (or a slow line): go on right after
                link.wake.set()
            finally:
                await session.open_gate()
            while not session.closed:
                woke = await wait_event(link.wake, RECHECK_S)
                link.wake.clear()
                if session.closed:
                    break
                if link.lists_due or not woke:  # changed, or the periodic comparison
                    link.lists_due = False
                    await self._push_lists(link)
                if link.gap_bound or link.check_all or not woke:
                    await self._collect(link)  # periodically: ask for the missing again
        except _LINK_ERRORS as exc:
            log.info("lists.link_lost", terminal=link.terminal_id, error=str(exc))
        except Exception:  # one terminal's trouble must not stop the edge
            self.count("errors")
            log.exception("lists.failed", terminal=link.terminal_id)
        finally:
            await session.open_gate()  # never leave a session's requests held
            if self._links.get(link.terminal_id) is link:
                del self._links[link.terminal_id]

    # -- lists ----------------------------------------------------------------------------------

    async def _push_lists(self, link: SmartLink) -> None:
        now = _now_ms()
        targets = await self.store.run(
            lambda c: site_lists(c, link.terminal_id, link.terminal_kind, link.kinds, now)
        )
        keys = [t.key for t in targets]
        await self.store.run(lambda c: forget_other_lists(c, link.terminal_id, keys))
        for target in targets:
            try:
                await self._push(link, target)
            except _LINK_ERRORS:
                await self.store.run(
                    partial(mark_behind, terminal_id=link.terminal_id, key=target.key, now_ms=now)
                )
                raise

    async def _push(self, link: SmartLink, target: SiteList) -> None:
        tid = link.terminal_id
        applied = await self.store.run(lambda c: applied_list(c, tid, target.key))
        updates = plan_updates(target, applied, _now_ms())
        if not updates:
            if applied is not None:
                await self.store.run(lambda c: mark_in_step(c, tid, target.key, target.version))
            return
        if not await self._send(link, target, updates):
            # a version gap: the terminal's list is not what we think; send all of it
            self.count("full_reloads")
            after = applied.version if applied is not None else 0
            await self.store.run(lambda c: forget_applied(c, tid, target.key))
            if not await self._send(link, target, full_reload(target, after, _now_ms())):
                now = _now_ms()
                await self.store.run(lambda c: mark_behind(c, tid, target.key, now))
                log.warning("lists.reload_refused", terminal=tid, list=target.key)
                return
        log.info(
            "lists.pushed",
            terminal=tid,
            list=target.key,
            version=target.version,
            full=updates[0].full,
            uids=len(target.uids),
        )

    async def _send(self, link: SmartLink, target: SiteList, updates: list[ListUpdate]) -> bool:
        """Send a chain of updates, keeping each acknowledged one; False on a NAK."""
        tid = link.terminal_id
        for i, update in enumerate(updates):
            reply = await link.session.request(update, timeout_s=REQUEST_TIMEOUT_S)
            if not isinstance(reply, Ack) or not reply.ok:
                code = getattr(reply, "code", None)
                self.count("list_naks")
                log.info("lists.nak", terminal=tid, list=target.key, code=code)
                return False
            last = i == len(updates) - 1
            await self.store.run(
                partial(
                    save_applied,
                    terminal_id=tid,
                    key=target.key,
                    update=update,
                    covers=target.version if last else None,
                    now_ms=_now_ms(),
                )
            )
            self.count("list_updates")
        return True

    async def _refresh_lag(self) -> None:
        kinds = self.terminal_kinds()
        now = _now_ms()
        try:
            await self.store.run(lambda c: refresh_lag(c, kinds, now))
        except Exception as exc:  # noqa: BLE001 - lag figures are best effort, never fatal
            log.warning("lists.lag_refresh_failed", error=repr(exc))

    # -- records ----------------------------------------------------------------------------------

    async def _collect(self, link: SmartLink) -> None:
        tid = link.terminal_id
        bound, link.gap_bound = link.gap_bound, 0
        if link.check_all:
            link.check_all = False
            held = await self.store.run(lambda c: max_rec(c, tid))
            bound = max(bound, held, link.last_rec)
        now = _now_ms()
        missing = await self.store.run(lambda c: find_gaps(c, tid, bound, now))
        for low, high in rec_ranges(missing[:MAX_ASK]):
            await self._ask(link, low, high)

    async def _ask(self, link: SmartLink, low: int, high: int) -> None:
        session, tid = link.session, link.terminal_id
        self.count("record_requests")
        reply: Body = await session.request(
            RecordRequest(from_rec=low, to_rec=high), timeout_s=REQUEST_TIMEOUT_S
        )
        if not isinstance(reply, RecordReply):
            log.info("lists.record_request_refused", terminal=tid, reply=type(reply).__name__)
            return
        records = [r for r in reply.records if low <= r.rec <= high]
        if records and session.terminal is not None:
            answer = await session.handler.handle(session.terminal, RecordUpload(records=records))
            if not isinstance(answer, Ack) or not answer.ok:
                return  # not stored: the numbers stay missing and are asked for again
            self.count("records_recovered", len(records))
        void = await self.store.run(lambda c: resolve_range(c, tid, low, high))
        if void:
            self.count("records_void", void)
        log.info(
            "lists.records_requested",
            terminal=tid,
            from_rec=low,
            to_rec=high,
            recovered=len(records),
            void=void,
        )
