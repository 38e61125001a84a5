"""Rollouts at central: :mod:`central.core.rollout`'s state machine, stored and driven.

Every change is one transaction (:func:`transact`): load the rollout, apply one event, store
the new value, and write what the transition asks for — ``upgrade`` commands and retained
desired-version messages into ``rollout_messages`` (an outbox), audit lines into
``rollout_log``. The CLI only ever does that; :class:`RolloutDriver`, a task of ``serve``,
publishes the outbox, feeds sites' ``up/reply`` and birth messages into the rollouts, and
ticks them (timeouts).

The **desired version** of a site is a retained ``upgrade`` command on its ``down/cmd``: a
site that was offline gets it when it subscribes again and converges (the edge answers a
command for the version it already runs with ``done``). When the desired version becomes
the one the site runs (it failed, the rollout paused or was aborted) the retained message
is cleared (an empty retained payload, which the edge ignores).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec
import structlog

from central.artifacts import PREFIX, ReleaseStore
from central.core.rollout import (
    AuditLine,
    Event,
    PublishDesired,
    Rollout,
    RolloutError,
    SendUpgrade,
    SiteSeen,
    Tick,
    Transition,
    apply,
    parse_stages,
    report_from_reply,
    start_rollout,
)
from central.store import Store
from edge_agent.adapters.sqlite_store import now_ms
from edge_agent.adapters.waiting import raise_if_cancelling, wait_event
from protocol.errors import MessageError
from protocol.messages import Reply, decode, encode
from protocol.topics import Channel, site_topic

log = structlog.get_logger("central.rollouts")

TICK_S = 1.0
#: Rollouts that still take reports: not aborted, the newest this many.
RECENT = 50
_decoder = msgspec.json.Decoder(Rollout)

Publish = Callable[[str, bytes, bool], Awaitable[None]]


# --- storage -------------------------------------------------------------------------------


def load(conn: sqlite3.Connection, rollout_id: str) -> Rollout:
    """The rollout ``rollout_id``; :class:`RolloutError` if there is none."""
    row = conn.execute("SELECT data FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
    if row is None:
        raise RolloutError(f"no rollout {rollout_id!r} (onecard-central rollout status)")
    return _decoder.decode(row[0])


def _store(conn: sqlite3.Connection, transition: Transition, *, new: bool = False) -> None:
    r = transition.rollout
    data = msgspec.json.encode(r)
    at = now_ms()
    if new:
        conn.execute(
            "INSERT INTO rollouts (id, version, status, data, created_ms, updated_ms)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (r.id, r.version, r.status, data, at, at),
        )
    else:
        conn.execute(
            "UPDATE rollouts SET status = ?, data = ?, updated_ms = ? WHERE id = ?",
            (r.status, data, at, r.id),
        )
    for effect in transition.effects:
        if isinstance(effect, SendUpgrade):
            _message(conn, r.id, effect.site, encode(effect.command), retain=False)
        elif isinstance(effect, PublishDesired):
            payload = encode(effect.command) if effect.command is not None else b""
            _message(conn, r.id, effect.site, payload, retain=True)
        elif isinstance(effect, AuditLine):
            conn.execute(
                "INSERT INTO rollout_log (rollout_id, at_ms, action, site, operator, detail)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    effect.rollout_id,
                    int(effect.at.timestamp() * 1000),
                    effect.action,
                    effect.site,
                    effect.operator,
                    effect.detail,
                ),
            )


def _message(
    conn: sqlite3.Connection, rollout_id: str, site: str, payload: bytes, *, retain: bool
) -> None:
    conn.execute(
        "INSERT INTO rollout_messages (rollout_id, site, topic, payload, retain)"
        " VALUES (?, ?, ?, ?, ?)",
        (rollout_id, site, site_topic(site, Channel.DOWN_CMD), payload, int(retain)),
    )


def transact(conn: sqlite3.Connection, rollout_id: str, event: Event) -> Transition:
    """Apply ``event`` to the stored rollout and store the result with its effects.
    :class:`RolloutError` (an operator's command that does not apply) changes nothing."""
    before = load(conn, rollout_id)
    transition = apply(before, event)
    if transition.rollout is not before or transition.effects:
        _store(conn, transition)  # a tick that changed nothing writes nothing
    return transition


def recent_ids(conn: sqlite3.Connection) -> list[str]:
    """Rollouts that still take reports and births (see :data:`RECENT`)."""
    rows = conn.execute(
        "SELECT id FROM rollouts WHERE status != 'aborted' ORDER BY updated_ms DESC LIMIT ?",
        (RECENT,),
    ).fetchall()
    return [row[0] for row in rows]


def list_rollouts(conn: sqlite3.Connection) -> list[Rollout]:
    """Every rollout, newest first."""
    rows = conn.execute("SELECT data FROM rollouts ORDER BY created_ms DESC, id").fetchall()
    return [_decoder.decode(row[0]) for row in rows]


def history(conn: sqlite3.Connection, rollout_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` lines of a rollout's log, oldest first."""
    rows = conn.execute(
        "SELECT at_ms, action, site, operator, detail FROM rollout_log WHERE rollout_id = ?"
        " ORDER BY id DESC LIMIT ?",
        (rollout_id, limit),
    ).fetchall()
    keys = ("at_ms", "action", "site", "operator", "detail")
    return [dict(zip(keys, row, strict=True)) for row in reversed(rows)]


def create(
    conn: sqlite3.Connection,
    *,
    rollout_id: str,
    version: str,
    releases: ReleaseStore,
    base_url: str,
    sites: Sequence[str] | None,
    stages: str,
    canary: Sequence[str],
    operator: str,
    timeout_s: int,
    at: datetime,
) -> Transition:
    """Plan and start a rollout of the published ``version`` to ``sites`` (None: every
    registered site)."""
    sha = releases.manifest_sha256(version)
    if sha is None:
        raise RolloutError(f"{version} is not published (onecard-central release publish DIR)")
    if not base_url.startswith(("https://", "http://")):
        raise RolloutError(f"--base-url {base_url!r}: the URL edges reach central's HTTP at")
    registered = dict(conn.execute("SELECT id, version FROM sites WHERE removed = 0").fetchall())
    targets = list(registered) if sites is None else list(sites)
    unknown = [s for s in targets if s not in registered]
    if unknown:
        raise RolloutError(f"not registered sites: {', '.join(unknown)}")
    exists = conn.execute("SELECT 1 FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
    if exists:
        raise RolloutError(f"rollout {rollout_id} exists; choose another --id")
    transition = start_rollout(
        rollout_id=rollout_id,
        version=version,
        manifest_url=f"{base_url.rstrip('/')}{PREFIX}{version}/manifest.json",
        manifest_sha256=sha,
        targets=sorted(targets),
        current_versions={s: registered[s] for s in targets},
        stages=parse_stages(stages),
        at=at,
        operator=operator,
        canary=canary,
        timeout_s=timeout_s,
    )
    _store(conn, transition, new=True)
    return transition


def _pending(conn: sqlite3.Connection, limit: int = 100) -> list[tuple[int, str, bytes, int]]:
    rows: list[tuple[int, str, bytes, int]] = conn.execute(
        "SELECT id, topic, payload, retain FROM rollout_messages WHERE published_ms IS NULL"
        " ORDER BY id LIMIT ?",
        (limit,),
    ).fetchall()
    return rows


def _published(conn: sqlite3.Connection, ids: list[int]) -> None:
    conn.executemany(
        "UPDATE rollout_messages SET published_ms = ? WHERE id = ?", [(now_ms(), i) for i in ids]
    )


def _feed(conn: sqlite3.Connection, make: Callable[[str], Event | None]) -> int:
    """Apply ``make(rollout_id)`` to every recent rollout it gives an event for."""
    applied = 0
    for rollout_id in recent_ids(conn):
        event = make(rollout_id)
        if event is not None:
            transact(conn, rollout_id, event)
            applied += 1
    return applied


def _tick(conn: sqlite3.Connection, at: datetime) -> int:
    tick = Tick(at=at)
    return _feed(conn, lambda _: tick)


# --- the driver ----------------------------------------------------------------------------


@dataclass
class RolloutDriver:
    """Publishes rollouts' messages, feeds replies and births into them, ticks them."""

    store: Store
    publish: Publish
    tick_s: float = TICK_S
    stats: dict[str, int] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

    async def run(self) -> None:
        """Until cancelled: tick, then publish the outbox, every ``tick_s`` (or sooner when
        a reply changed something)."""
        while True:
            raise_if_cancelling()
            await self.store.run(partial(_tick, at=datetime.now(UTC)))
            await self.flush()
            self._wake.clear()
            await wait_event(self._wake, self.tick_s)

    async def flush(self) -> None:
        """Publish every pending message, oldest first, marking each batch once sent."""
        while True:
            rows = await self.store.run(_pending)
            if not rows:
                return
            for _id, topic, payload, retain in rows:
                await self.publish(topic, payload, bool(retain))
            await self.store.run(partial(_published, ids=[row[0] for row in rows]))
            self.count("messages_published", len(rows))

    async def on_reply(self, site: str, payload: bytes) -> str | None:
        """A site's ``up/reply``; an error message when it is bad input (dead-letter it),
        None otherwise (replies to other commands are not ours and are ignored)."""
        try:
            reply = decode(payload, Reply)
        except MessageError as exc:
            return str(exc)
        if reply.site != site:
            return f"payload site {reply.site} is not the topic's site {site}"
        parsed = report_from_reply(reply, received_at=datetime.now(UTC))
        if parsed is None:
            return None
        rollout_id, report = parsed

        def feed(conn: sqlite3.Connection) -> int:
            if rollout_id not in recent_ids(conn):
                return 0
            transact(conn, rollout_id, report)
            return 1

        if await self.store.run(feed):
            self.count("reports")
            log.info("rollout.report", site=site, rollout=rollout_id, state=report.state)
            self._wake.set()
        return None

    async def on_birth(self, site: str, version: str) -> None:
        """A site announced the version it runs."""
        seen = SiteSeen(site=site, at=datetime.now(UTC), version=version)

        def feed(conn: sqlite3.Connection) -> int:
            def only_targets(rollout_id: str) -> Event | None:
                return seen if site in load(conn, rollout_id).sites else None

            return _feed(conn, only_targets)

        if await self.store.run(feed):
            self._wake.set()
