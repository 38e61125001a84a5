"""``onecard-central access …``: door groups, doors, time zones, holidays and access levels
per site; grants to persons and departments (see ``docs/attendance.md`` § Access). Every
change goes to the sites through the feed and into the audit log."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import click

from central.cli_common import DB_OPTION, DbTarget, run_op, who

OPERATOR = click.option("--operator", default=who, show_default="login user")


def _run(db_path: DbTarget, op: Any) -> Any:
    from central.access import AccessError
    from central.attendance import AttendanceError

    try:
        return run_op(db_path, op)
    except (AccessError, AttendanceError) as exc:
        raise click.ClickException(str(exc)) from None


def _when(_ctx: Any, _param: Any, value: str | None) -> datetime | None:
    """An ISO time with its zone (validity periods are instants)."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a time like 2026-12-01T00:00+08:00") from None
    if at.tzinfo is None:
        raise click.BadParameter(f"{value!r} needs its zone, like 2026-12-01T00:00+08:00")
    return at


def _put(db_path: DbTarget, site: str, value: Any, operator: str) -> None:
    from central import access

    version = _run(db_path, lambda conn: access.put(conn, site, value, operator=operator))
    click.echo(f"{site}: {type(value).__name__} {access.site_key(value)} (feed version {version})")


@click.group()
def access() -> None:
    """Access administration: where and when cards open doors."""


@access.command("zone")
@click.argument("site")
@click.argument("zone_id")
@click.option("--weekly", multiple=True, help="days and spans, e.g. 'mon-fri 08:00-18:00'")
@click.option("--holiday", "holiday_spans", default="", help="spans on holidays, e.g. 09:00-12:00")
@OPERATOR
@DB_OPTION
def zone_cmd(
    site: str,
    zone_id: str,
    weekly: tuple[str, ...],
    holiday_spans: str,
    operator: str,
    db_path: DbTarget,
) -> None:
    """A weekly time zone (门禁时段): when a level opens its doors."""
    from central.access import AccessError, parse_intervals, parse_weekly
    from edge_agent.core.model import TimeZone

    try:
        zone = TimeZone(
            id=zone_id, weekly=parse_weekly(list(weekly)), holiday=parse_intervals(holiday_spans)
        )
    except AccessError as exc:
        raise click.BadParameter(str(exc)) from None
    _put(db_path, site, zone, operator)


@access.command("group")
@click.argument("site")
@click.argument("group_id")
@click.option("--name", default="")
@click.option("--anti-passback", type=click.Choice(["none", "soft", "hard"]), default="none")
@click.option("--fail-mode", type=click.Choice(["secure", "safe"]), default="secure")
@OPERATOR
@DB_OPTION
def group_cmd(
    site: str,
    group_id: str,
    name: str,
    anti_passback: str,
    fail_mode: str,
    operator: str,
    db_path: DbTarget,
) -> None:
    """A door group: doors sharing rules and anti-passback (反潜回)."""
    from edge_agent.core.model import DoorGroup

    group = DoorGroup(id=group_id, name=name, anti_passback=anti_passback, fail_mode=fail_mode)  # type: ignore[arg-type]
    _put(db_path, site, group, operator)


@access.command("door")
@click.argument("site")
@click.argument("door_id")
@click.option("--group", "group_id", required=True)
@click.option("--terminal", "terminal_id", required=True)
@click.option("--name", default="")
@click.option("--direction", type=click.Choice(["in", "out"]))
@click.option("--open-ms", type=click.IntRange(500, 60000), default=3000, show_default=True)
@OPERATOR
@DB_OPTION
def door_cmd(
    site: str,
    door_id: str,
    group_id: str,
    terminal_id: str,
    name: str,
    direction: str | None,
    open_ms: int,
    operator: str,
    db_path: DbTarget,
) -> None:
    """A door, opened by a terminal, in a door group."""
    from edge_agent.core.model import Door

    door = Door(
        id=door_id,
        group_id=group_id,
        terminal_id=terminal_id,
        name=name,
        direction=direction,  # type: ignore[arg-type]
        open_ms=open_ms,
    )
    _put(db_path, site, door, operator)


@access.command("level")
@click.argument("site")
@click.argument("level_id")
@click.option("--group", "group_id", required=True, help="the door group")
@click.option("--zone", "zone_id", required=True, help="the time zone")
@click.option("--from", "valid_from", callback=_when)
@click.option("--to", "valid_to", callback=_when)
@OPERATOR
@DB_OPTION
def level_cmd(
    site: str,
    level_id: str,
    group_id: str,
    zone_id: str,
    valid_from: datetime | None,
    valid_to: datetime | None,
    operator: str,
    db_path: DbTarget,
) -> None:
    """An access level: a door group during a time zone, optionally for a period."""
    from edge_agent.core.model import AccessLevel

    level = AccessLevel(
        id=level_id,
        door_group_id=group_id,
        time_zone_id=zone_id,
        valid_from=valid_from,
        valid_to=valid_to,
    )
    _put(db_path, site, level, operator)


@access.command("holiday")
@click.argument("site")
@click.argument("day", type=click.DateTime(["%Y-%m-%d"]))
@click.option("--name", default="")
@OPERATOR
@DB_OPTION
def holiday_cmd(site: str, day: datetime, name: str, operator: str, db_path: DbTarget) -> None:
    """A holiday at the site: time zones use their holiday spans that day."""
    from edge_agent.core.model import Holiday

    _put(db_path, site, Holiday(day=date(day.year, day.month, day.day), name=name), operator)


@access.command("remove")
@click.argument("site")
@click.argument(
    "entity", type=click.Choice(["door_group", "door", "time_zone", "holiday", "access_level"])
)
@click.argument("key")
@OPERATOR
@DB_OPTION
def remove_cmd(site: str, entity: str, key: str, operator: str, db_path: DbTarget) -> None:
    """Remove a site's access entity (refused while something still uses it)."""
    from central import access as acc

    _run(db_path, lambda conn: acc.remove(conn, site, entity, key, operator=operator))
    click.echo(f"{site}: removed {entity} {key}")


@access.command("grant")
@click.argument("person_id")
@click.argument("level_id")
@click.option("--from", "valid_from", callback=_when)
@click.option("--to", "valid_to", callback=_when)
@OPERATOR
@DB_OPTION
def grant_cmd(
    person_id: str,
    level_id: str,
    valid_from: datetime | None,
    valid_to: datetime | None,
    operator: str,
    db_path: DbTarget,
) -> None:
    """Grant a person an access level."""
    from central import access as acc
    from edge_agent.core.model import AccessGrant

    value = AccessGrant(
        person_id=person_id, access_level_id=level_id, valid_from=valid_from, valid_to=valid_to
    )
    _run(db_path, lambda conn: acc.grant(conn, value, operator=operator))
    click.echo(f"{person_id}: granted {level_id}")


@access.command("revoke")
@click.argument("person_id")
@click.argument("level_id")
@OPERATOR
@DB_OPTION
def revoke_cmd(person_id: str, level_id: str, operator: str, db_path: DbTarget) -> None:
    """Withdraw a person's own grant."""
    from central import access as acc

    _run(db_path, lambda conn: acc.revoke(conn, person_id, level_id, operator=operator))
    click.echo(f"{person_id}: revoked {level_id}")


@access.command("grant-dept")
@click.argument("department")
@click.argument("level_id")
@click.option("--from", "valid_from", callback=_when)
@click.option("--to", "valid_to", callback=_when)
@OPERATOR
@DB_OPTION
def grant_dept_cmd(
    department: str,
    level_id: str,
    valid_from: datetime | None,
    valid_to: datetime | None,
    operator: str,
    db_path: DbTarget,
) -> None:
    """Grant everyone in a department (and below it) an access level."""
    from central import access as acc

    changed = _run(
        db_path,
        lambda conn: acc.grant_department(
            conn, department, level_id, valid_from=valid_from, valid_to=valid_to, operator=operator
        ),
    )
    click.echo(f"department {department}: granted {level_id} ({changed} person grants written)")


@access.command("revoke-dept")
@click.argument("department")
@click.argument("level_id")
@OPERATOR
@DB_OPTION
def revoke_dept_cmd(department: str, level_id: str, operator: str, db_path: DbTarget) -> None:
    """Withdraw a department's grant (people's own grants stay)."""
    from central import access as acc

    changed = _run(
        db_path,
        lambda conn: acc.revoke_department(conn, department, level_id, operator=operator),
    )
    click.echo(f"department {department}: revoked {level_id} ({changed} person grants removed)")


@access.command("show")
@click.argument("person_id")
@DB_OPTION
def show_cmd(person_id: str, db_path: DbTarget) -> None:
    """A person's access levels (own or from a department) and their periods."""
    from central import access as acc

    for row in _run(db_path, lambda conn: acc.grants_of(conn, person_id)):
        source = "department" if row["derived"] else "own"
        period = f"{row.get('valid_from') or '…'} → {row.get('valid_to') or '…'}"
        click.echo(f"{row['access_level_id']:<16} {source:<10} {period}")


COMMANDS = [access]
