"""The blacklist: central's current version, every entry, and how far each site has applied
it (the version each site last reported, against the head)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from starlette.responses import Response

from central import master
from central.web.page import PageContext


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed card."""

    uid: str
    reason: str
    since_ms: int
    version: int


@dataclass(frozen=True, slots=True)
class SiteVersion:
    """A site's applied blacklist version."""

    id: str
    online: bool
    applied: int
    behind: int


@dataclass(frozen=True, slots=True)
class Blacklist:
    """The head, the entries (newest first) and the sites."""

    version: int
    entries: list[Entry]
    sites: list[SiteVersion]

    @property
    def sites_current(self) -> int:
        """How many sites have applied the head."""
        return sum(1 for s in self.sites if s.behind == 0)


def blacklist(conn: sqlite3.Connection) -> Blacklist:
    """The blacklist as the page shows it (runs in a store operation)."""
    head = master.blacklist_version(conn)
    entries = [
        Entry(uid=uid, reason=reason, since_ms=since, version=version)
        for uid, reason, since, version in conn.execute(
            "SELECT uid, reason, effective_ms, version FROM blacklist ORDER BY version DESC, uid"
        ).fetchall()
    ]
    sites = [
        SiteVersion(id=sid, online=bool(online), applied=applied, behind=max(0, head - applied))
        for sid, online, applied in conn.execute(
            "SELECT id, online, blacklist_version FROM sites WHERE removed = 0 ORDER BY id"
        ).fetchall()
    ]
    return Blacklist(version=head, entries=entries, sites=sites)


async def show(ctx: PageContext) -> Response:
    """GET /blacklist"""
    data = await ctx.web.store.run(blacklist)
    return ctx.render("blacklist.html", title=ctx.t("blacklist.title"), data=data)
