"""Access administration at HQ: door groups, doors, weekly time zones, holidays and access
levels per site; access levels granted to persons or to departments, with validity periods.

Everything here is master data: each write is a row of ``master`` and a change in the feed,
so a site's edge enforces it as soon as the change reaches it (seconds when online; on
reconnect otherwise). Every write is audited.

A department's grant is expanded into person grants (``access_grant``, the entity the
edges know) for everyone in the department and below it; :func:`sync_department_grants`
keeps them in step when people move, join or leave (central runs it with its housekeeping,
and after every change made here). A person's own grant of the same level wins and is never
touched by the expansion.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

import msgspec

from central import attendance, master
from central.core.effects import AuditEntry
from central.operations import write_audit
from edge_agent.core.model import (
    AccessGrant,
    AccessLevel,
    Door,
    DoorGroup,
    Holiday,
    Interval,
    TimeZone,
)

#: The per-site entities this module writes, and their structs.
SITE_TYPES: dict[str, type[msgspec.Struct]] = {
    "door_group": DoorGroup,
    "door": Door,
    "time_zone": TimeZone,
    "holiday": Holiday,
    "access_level": AccessLevel,
}
_json = msgspec.json.Encoder()


class AccessError(ValueError):
    """An access change that cannot be made (unknown site, door group, level …)."""


def site_key(value: msgspec.Struct) -> str:
    """The ``master`` key of a per-site entity (a holiday is keyed by its date)."""
    if isinstance(value, Holiday):
        return value.day.isoformat()
    return str(value.id)  # type: ignore[attr-defined]


def put(conn: sqlite3.Connection, site: str, value: msgspec.Struct, *, operator: str) -> int:
    """Create or replace a door group, door, time zone, holiday or access level at ``site``,
    after checking what it refers to exists there; returns the feed version."""
    entity = next((name for name, cls in SITE_TYPES.items() if isinstance(value, cls)), None)
    if entity is None:
        raise AccessError(f"{type(value).__name__} is not site access data")
    _site(conn, site)
    if isinstance(value, Door):
        _exists(conn, site, "door_group", value.group_id)
    if isinstance(value, AccessLevel):
        _exists(conn, site, "door_group", value.door_group_id)
        _exists(conn, site, "time_zone", value.time_zone_id)
    if isinstance(value, TimeZone):
        _check_zone(value)
    key = site_key(value)
    before = master.get(conn, site, entity, key)
    version = master.upsert(conn, site, entity, key, _json.encode(value))
    _audit(conn, operator, f"access.{entity}_put", f"{site}/{key}", before, value)
    return version


def remove(conn: sqlite3.Connection, site: str, entity: str, key: str, *, operator: str) -> int:
    """Remove a per-site entity; refuses one that others still use."""
    if entity not in SITE_TYPES:
        raise AccessError(f"unknown access entity {entity}")
    before = master.get(conn, site, entity, key)
    if before is None:
        raise AccessError(f"no {entity} {key} at {site}")
    users = {
        "door_group": [("door", "group_id"), ("access_level", "door_group_id")],
        "time_zone": [("access_level", "time_zone_id")],
    }.get(entity, [])
    for other, field in users:
        used = conn.execute(
            "SELECT key FROM master WHERE scope = ? AND entity = ?"
            " AND json_extract(data, '$.' || ?) = ? LIMIT 1",
            (site, other, field, key),
        ).fetchone()
        if used is not None:
            raise AccessError(f"{entity} {key} is still used by {other} {used[0]}")
    if entity == "access_level":
        granted = conn.execute(
            "SELECT key FROM master WHERE scope = '' AND entity = 'access_grant'"
            " AND json_extract(data, '$.access_level_id') = ? LIMIT 1",
            (key,),
        ).fetchone()
        if granted is not None or _dept_grants_of(conn, key):
            raise AccessError(f"access level {key} is still granted; revoke it first")
    version = master.delete(conn, site, entity, key)
    _audit(conn, operator, f"access.{entity}_remove", f"{site}/{key}", before, None)
    return version


def grant(
    conn: sqlite3.Connection, value: AccessGrant, *, operator: str, source: str = "hq:cli"
) -> int:
    """Grant a person an access level (a person's own grant: expansion never touches it)."""
    _person(conn, value.person_id)
    _level(conn, value.access_level_id)
    _check_period(value.valid_from, value.valid_to)
    key = f"{value.person_id}:{value.access_level_id}"
    before = master.get(conn, "", "access_grant", key)
    conn.execute(
        "DELETE FROM access_derived WHERE person_id = ? AND level_id = ?",
        (value.person_id, value.access_level_id),
    )
    version = master.upsert(conn, "", "access_grant", key, _json.encode(value))
    _audit(conn, operator, "access.grant", key, before, value, source=source)
    return version


def revoke(
    conn: sqlite3.Connection,
    person_id: str,
    level_id: str,
    *,
    operator: str,
    source: str = "hq:cli",
) -> None:
    """Withdraw a person's own grant (a department's grant may then give it back)."""
    key = f"{person_id}:{level_id}"
    before = master.get(conn, "", "access_grant", key)
    derived = conn.execute(
        "SELECT 1 FROM access_derived WHERE person_id = ? AND level_id = ?", (person_id, level_id)
    ).fetchone()
    if before is None or derived is not None:
        raise AccessError(f"{person_id} holds no grant of their own for {level_id}")
    master.delete(conn, "", "access_grant", key)
    _audit(conn, operator, "access.revoke", key, before, None, source=source)
    sync_department_grants(conn)


def grant_department(
    conn: sqlite3.Connection,
    department: str,
    level_id: str,
    *,
    valid_from: datetime | None = None,
    valid_to: datetime | None = None,
    operator: str,
    source: str = "hq:cli",
) -> int:
    """Grant everyone in ``department`` (and below) a level; returns person grants changed."""
    if not attendance.ancestors(conn, department):
        raise AccessError(f"unknown department {department}")
    _level(conn, level_id)
    _check_period(valid_from, valid_to)
    conn.execute(
        "INSERT INTO access_dept_grants (department, level_id, valid_from, valid_to)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (department, level_id) DO UPDATE SET"
        " valid_from = excluded.valid_from, valid_to = excluded.valid_to",
        (department, level_id, _iso(valid_from), _iso(valid_to)),
    )
    _audit(
        conn,
        operator,
        "access.grant_department",
        f"department:{department}:{level_id}",
        None,
        {"from": _iso(valid_from), "to": _iso(valid_to)},
        source=source,
    )
    return sync_department_grants(conn)


def revoke_department(
    conn: sqlite3.Connection,
    department: str,
    level_id: str,
    *,
    operator: str,
    source: str = "hq:cli",
) -> int:
    """Withdraw a department's grant; returns person grants changed."""
    gone = conn.execute(
        "DELETE FROM access_dept_grants WHERE department = ? AND level_id = ?",
        (department, level_id),
    ).rowcount
    if not gone:
        raise AccessError(f"department {department} holds no grant for {level_id}")
    _audit(
        conn,
        operator,
        "access.revoke_department",
        f"department:{department}:{level_id}",
        source=source,
    )
    return sync_department_grants(conn)


def sync_department_grants(conn: sqlite3.Connection) -> int:
    """Bring the derived person grants in line with departments' grants and membership;
    returns how many person grants were written or removed (0 when nothing moved)."""
    wanted: dict[tuple[str, str], AccessGrant] = {}
    for department, level_id, valid_from, valid_to in conn.execute(
        "SELECT department, level_id, valid_from, valid_to FROM access_dept_grants"
        " ORDER BY department, level_id"
    ).fetchall():
        for member in attendance.members(conn, department, staff_only=False):
            pair = (member.person_id, level_id)
            candidate = AccessGrant(
                person_id=member.person_id,
                access_level_id=level_id,
                valid_from=_parse(valid_from),
                valid_to=_parse(valid_to),
            )
            wanted[pair] = _widest(wanted.get(pair), candidate)
    derived = set(conn.execute("SELECT person_id, level_id FROM access_derived").fetchall())
    changed = 0
    for (person, level), value in wanted.items():
        key = f"{person}:{level}"
        current = master.get(conn, "", "access_grant", key)
        if current is not None and (person, level) not in derived:
            continue  # the person's own grant wins
        data = _json.encode(value)
        if current != msgspec.json.decode(data):
            master.upsert(conn, "", "access_grant", key, data)
            changed += 1
        conn.execute(
            "INSERT OR IGNORE INTO access_derived (person_id, level_id) VALUES (?, ?)",
            (person, level),
        )
    for person, level in derived - set(wanted):
        master.delete(conn, "", "access_grant", f"{person}:{level}")
        conn.execute(
            "DELETE FROM access_derived WHERE person_id = ? AND level_id = ?", (person, level)
        )
        changed += 1
    return changed


def grants_of(conn: sqlite3.Connection, person_id: str) -> list[dict[str, Any]]:
    """A person's grants, each marked ``derived`` (from a department) or not."""
    derived = {
        level
        for (level,) in conn.execute(
            "SELECT level_id FROM access_derived WHERE person_id = ?", (person_id,)
        )
    }
    out = []
    for (data,) in conn.execute(
        "SELECT data FROM master WHERE scope = '' AND entity = 'access_grant'"
        " AND json_extract(data, '$.person_id') = ? ORDER BY key",
        (person_id,),
    ):
        row = msgspec.json.decode(data)
        row["derived"] = row["access_level_id"] in derived
        out.append(row)
    return out


# -- parsing what operators type -------------------------------------------------------------------

_DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


def parse_weekly(specs: list[str]) -> dict[int, list[Interval]]:
    """``["mon-fri 08:00-18:00", "sat 09:00-12:00,14:00-17:00"]`` → weekday → intervals."""
    weekly: dict[int, list[Interval]] = {}
    for spec in specs:
        try:
            days_text, spans = spec.split()
        except ValueError:
            raise AccessError(
                f"{spec!r}: expected days and spans, like 'mon-fri 08:00-18:00'"
            ) from None
        days = _parse_days(days_text)
        intervals = parse_intervals(spans)
        for day in days:
            weekly.setdefault(day, []).extend(intervals)
    return weekly


def parse_intervals(spans: str) -> list[Interval]:
    """``"08:00-12:00,13:00-18:00"`` → minutes since midnight (``24:00`` ends the day)."""
    out = []
    for span in filter(None, spans.split(",")):
        try:
            start, end = (_minutes(part) for part in span.split("-"))
        except ValueError:
            raise AccessError(f"{span!r} is not a span like 08:00-18:00") from None
        if not 0 <= start < end <= 1440:
            raise AccessError(f"{span!r}: the end must be after the start, within the day")
        out.append(Interval(start, end))
    return out


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    value = int(hours) * 60 + int(minutes)
    if not 0 <= int(minutes) < 60:
        raise ValueError(text)
    return value


def _parse_days(text: str) -> list[int]:
    days: list[int] = []
    for part in text.lower().split(","):
        ends = [_day(p) for p in part.split("-")]
        if len(ends) == 1:
            days.append(ends[0])
        elif len(ends) == 2 and ends[0] <= ends[1]:
            days.extend(range(ends[0], ends[1] + 1))
        else:
            raise AccessError(f"{part!r} is not a day or a range like mon-fri")
    return days


def _day(text: str) -> int:
    if text in _DAYS:
        return _DAYS[text]
    if text.isdigit() and int(text) < 7:
        return int(text)
    raise AccessError(f"{text!r} is not a weekday (mon … sun, or 0 … 6)")


# -- checks and helpers ---------------------------------------------------------------------------


def _site(conn: sqlite3.Connection, site: str) -> None:
    row = conn.execute("SELECT removed FROM sites WHERE id = ?", (site,)).fetchone()
    if row is None or row[0]:
        raise AccessError(f"unknown site {site}")


def _exists(conn: sqlite3.Connection, site: str, entity: str, key: str) -> None:
    if master.get(conn, site, entity, key) is None:
        raise AccessError(f"no {entity.replace('_', ' ')} {key} at {site}")


def _level(conn: sqlite3.Connection, level_id: str) -> None:
    row = conn.execute(
        "SELECT 1 FROM master WHERE entity = 'access_level' AND key = ? LIMIT 1", (level_id,)
    ).fetchone()
    if row is None:
        raise AccessError(f"no access level {level_id} at any site")


def _person(conn: sqlite3.Connection, person_id: str) -> None:
    if master.get(conn, "", "person", person_id) is None:
        raise AccessError(f"unknown person {person_id}")


def _check_zone(zone: TimeZone) -> None:
    for day, intervals in zone.weekly.items():
        if not 0 <= day <= 6:
            raise AccessError(f"time zone {zone.id}: weekday {day} is not 0 … 6")
        for interval in [*intervals]:
            if not 0 <= interval.start < interval.end <= 1440:
                raise AccessError(f"time zone {zone.id}: {interval} is not within a day")


def _check_period(valid_from: datetime | None, valid_to: datetime | None) -> None:
    for value in (valid_from, valid_to):
        if value is not None and value.tzinfo is None:
            raise AccessError("validity times must be timezone-aware")
    if valid_from and valid_to and valid_to <= valid_from:
        raise AccessError("a grant must end after it starts")


def _dept_grants_of(conn: sqlite3.Connection, level_id: str) -> list[str]:
    return [
        d
        for (d,) in conn.execute(
            "SELECT department FROM access_dept_grants WHERE level_id = ?", (level_id,)
        )
    ]


def _widest(a: AccessGrant | None, b: AccessGrant) -> AccessGrant:
    """Two departments granting the same level: the union of their periods."""
    if a is None:
        return b
    start = (
        None if a.valid_from is None or b.valid_from is None else min(a.valid_from, b.valid_from)
    )
    end = None if a.valid_to is None or b.valid_to is None else max(a.valid_to, b.valid_to)
    return AccessGrant(
        person_id=a.person_id, access_level_id=a.access_level_id, valid_from=start, valid_to=end
    )


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _audit(  # noqa: PLR0917 - the parts of an audit line
    conn: sqlite3.Connection,
    operator: str,
    action: str,
    target: str,
    before: Any = None,
    after: Any = None,
    *,
    source: str = "hq:cli",
) -> None:
    now = datetime.now(UTC)

    def summary(value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        data = value if isinstance(value, dict) else msgspec.to_builtins(value)
        return {
            k: v if isinstance(v, str | int | bool) or v is None else _json.encode(v).decode()
            for k, v in data.items()
        }

    write_audit(
        conn,
        AuditEntry(
            request_id=f"{action}:{target}:{int(now.timestamp() * 1000)}",
            operator=operator,
            source=source,
            action=action,
            target=target,
            at=now,
            before=summary(before),
            after=summary(after),
        ),
    )
