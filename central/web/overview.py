"""The overview: every site, whether it is online, how far behind its outbox and its copies
of master data and the blacklist are, and its open anomalies — live: ``/live/overview``
sends the summary and the sites table again when a site's state changes (see live.py)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.responses import Response

from central import master
from central.web import alerts as alert_pages
from central.web import live
from central.web.page import PageContext

#: Feed lag is counted up to this many changes (a site that far behind gets a snapshot).
LAG_CAP = 10_000
#: An outbox whose oldest record is older than this is flagged.
STALE_OUTBOX_S = 120.0

_state = msgspec.json.Decoder(dict[str, Any])


@dataclass(frozen=True, slots=True)
class SiteRow:
    """One site as the overview shows it."""

    id: str
    online: bool
    last_seen_ms: int | None
    version: str | None
    outbox_depth: int | None
    outbox_oldest_age_s: float | None
    feed_version: int
    feed_head: int
    feed_behind: int
    blacklist_version: int
    blacklist_behind: int
    terminals_online: int | None
    terminals_total: int | None
    open_anomalies: int

    @property
    def status(self) -> str:
        """online, offline, or never (has not connected yet)."""
        if self.online:
            return "online"
        return "offline" if self.last_seen_ms is not None else "never"

    @property
    def outbox_stale(self) -> bool:
        """Records have waited too long to reach HQ."""
        return (self.outbox_oldest_age_s or 0.0) > STALE_OUTBOX_S


@dataclass(frozen=True, slots=True)
class Overview:
    """Every site, and central's blacklist head."""

    sites: list[SiteRow]
    blacklist_head: int

    @property
    def online(self) -> int:
        """How many sites are online."""
        return sum(s.online for s in self.sites)


def overview(conn: sqlite3.Connection) -> Overview:
    """Every site not removed, by id (runs in a store operation)."""
    blacklist_head = master.blacklist_version(conn)
    return Overview(sites=_site_rows(conn, blacklist_head, None), blacklist_head=blacklist_head)


def site_row(conn: sqlite3.Connection, site: str) -> SiteRow | None:
    """One site as the overview shows it (None if there is no such site)."""
    rows = _site_rows(conn, master.blacklist_version(conn), site)
    return rows[0] if rows else None


def _site_rows(conn: sqlite3.Connection, blacklist_head: int, only: str | None) -> list[SiteRow]:
    global_head = _scope_head(conn, "")
    alerts = dict(
        conn.execute(
            "SELECT site, count(*) FROM anomalies WHERE state = 'open' AND site IS NOT NULL"
            " GROUP BY site"
        ).fetchall()
    )
    rows = conn.execute(
        "SELECT id, online, last_seen_ms, version, outbox_depth, outbox_oldest_age_s,"
        " feed_version, blacklist_version, state FROM sites WHERE removed = 0"
        " AND (CAST(? AS TEXT) IS NULL OR id = ?) ORDER BY id",
        (only, only),
    ).fetchall()
    health = latest_health(conn)
    sites = []
    for sid, online, seen, version, birth_depth, birth_age, feed, black, state in rows:
        online_terms, total_terms = _terminals(state)
        depth, age = birth_depth, birth_age
        if sid in health:
            # The edge's periodic health report is newer than its birth message.
            reported, depth = health[sid]
            online_terms = sum(1 for t in reported.values() if t[0])
            total_terms = len(reported)
            age = birth_age if depth else None
        sites.append(
            SiteRow(
                id=sid,
                online=bool(online),
                last_seen_ms=seen,
                version=version,
                outbox_depth=depth,
                outbox_oldest_age_s=age,
                feed_version=feed,
                feed_head=max(global_head, _scope_head(conn, sid)),
                feed_behind=_feed_behind(conn, sid, feed),
                blacklist_version=black,
                blacklist_behind=max(0, blacklist_head - black),
                terminals_online=online_terms,
                terminals_total=total_terms,
                open_anomalies=int(alerts.get(sid, 0)),
            )
        )
    return sites


#: The parts of the page the live stream replaces: element id -> partial template.
LIVE_PARTS = {
    "overview-summary": "_overview_summary.html",
    "overview-sites": "_overview_sites.html",
    "overview-alerts": "_overview_alerts.html",
}


def _values(ctx: PageContext, data: Overview, now_ms: int) -> dict[str, Any]:
    return {
        "title": ctx.t("overview.title"),
        "data": data,
        "now_ms": now_ms,
        "lag_cap": LAG_CAP,
    }


async def show(ctx: PageContext) -> Response:
    """GET /: the sites table."""
    data = await ctx.web.store.run(overview)
    alert_block = await alert_pages.overview_block(ctx)
    return ctx.render(
        "overview.html",
        live_url="/live/overview",
        alert_block=alert_block,
        **_values(ctx, data, ctx.now_ms),
    )


async def stream(ctx: PageContext) -> Response:
    """GET /live/overview: the summary and the sites table, again whenever they change."""

    async def render() -> dict[str, str]:
        data = await ctx.web.store.run(overview)
        alert_block = await alert_pages.overview_block(ctx)
        now_ms = int(ctx.web.config.clock() * 1000)
        values = _values(ctx, data, now_ms)
        return live.render_parts(ctx, LIVE_PARTS, alert_block=alert_block, **values)

    return live.stream(ctx, fingerprint, render)


def fingerprint(conn: sqlite3.Connection) -> object:
    """What changes when anything the overview shows does (cheap: no lag counting)."""
    heads = conn.execute(
        "SELECT (SELECT max(version) FROM changes), (SELECT max(version) FROM blacklist_log),"
        " (SELECT count(*) FROM anomalies WHERE state = 'open')"
    ).fetchone()
    sites = conn.execute(
        "SELECT id, online, last_seen_ms, version, outbox_depth, outbox_oldest_age_s,"
        " feed_version, blacklist_version FROM sites WHERE removed = 0 ORDER BY id"
    ).fetchall()
    health = latest_health(conn)
    # Alerts open, are acknowledged and resolve: each changes one row's state or adds one.
    alerts = conn.execute(
        "SELECT max(id), group_concat(state) FROM (SELECT id, state FROM alerts"
        " WHERE state != 'resolved' ORDER BY id)"
    ).fetchone()
    return (
        tuple(heads),
        tuple(sites),
        sorted((k, str(v)) for k, v in health.items()),
        tuple(alerts),
    )


def latest_health(conn: sqlite3.Connection) -> dict[str, tuple[dict[str, tuple[bool]], int]]:
    """Each site's last ``up/health`` report (the alerts' ``site_health`` table):
    ``{site: ({terminal: (online,)}, outbox depth)}``."""
    found = {}
    for site, terminals, depth in conn.execute(
        "SELECT site, terminals, outbox_depth FROM site_health"
    ).fetchall():
        try:
            listed = _health_terminals.decode(terminals)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        found[str(site)] = ({t.id: (t.online,) for t in listed}, int(depth))
    return found


class _HealthTerminal(msgspec.Struct, frozen=True):
    id: str
    online: bool = False


_health_terminals = msgspec.json.Decoder(list[_HealthTerminal])


def _scope_head(conn: sqlite3.Connection, scope: str) -> int:
    row = conn.execute("SELECT max(version) FROM changes WHERE scope = ?", (scope,)).fetchone()
    return int(row[0] or 0)


def _feed_behind(conn: sqlite3.Connection, site: str, feed_version: int) -> int:
    # The site's feed is the changes in scopes '' and its own (master.changes_since).
    row = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM changes WHERE scope IN ('', ?) AND version > ?"
        " LIMIT ?)",
        (site, feed_version, LAG_CAP),
    ).fetchone()
    return int(row[0])


def _terminals(state: bytes | str | None) -> tuple[int | None, int | None]:
    # The site's last birth message (stored as the edge sent it).
    if not state:
        return None, None
    try:
        terminals = _state.decode(state).get("terminals")
    except msgspec.DecodeError:
        return None, None
    if not isinstance(terminals, list):
        return None, None
    online = sum(1 for t in terminals if isinstance(t, dict) and t.get("online") is True)
    return online, len(terminals)
