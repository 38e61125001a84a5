"""HQ's remote "open door now": the command to the site, the answer, the audit line.

The door's terminal comes from master data; the command (``door.open``) expires
:data:`EXPIRES_S` after it is issued, so a site that was cut off never opens a door
minutes later when its queued messages arrive. The edge sends DOOR_OPEN to the terminal,
records a ``remote_open`` event at the site, and replies; central waits up to
:data:`ANSWER_S` for that reply. Every attempt is audited with its outcome — including
those that never reached the door.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from central import master
from central.core.effects import AuditEntry
from central.operations import write_audit
from protocol.messages import AnyRecord, DoorOpen, Reply, TerminalEvent

if TYPE_CHECKING:
    from central.service import CentralService

#: A door open not carried out within this long is dropped by the edge.
EXPIRES_S = 30.0
#: How long HQ waits for the site's answer.
ANSWER_S = 8.0


@dataclass(frozen=True)
class DoorOpenOutcome:
    """What happened, for the API/dashboard: ``done`` (the terminal released the lock),
    ``failed`` (the terminal is offline or refused), ``rejected`` (not a door, expired),
    ``unreachable`` (central has no broker link, or the site did not answer in time)."""

    status: Literal["done", "failed", "rejected", "unreachable"]
    detail: str
    command_id: str


class UnknownDoorError(LookupError):
    """No such door at the site."""


#: The terminal events that become alerts (``central.core.alerts``: door_forced, door_held).
ALERTED_EVENTS = frozenset({"door_forced", "door_held"})


def collect_events(
    conn: sqlite3.Connection, site: str, records: Iterable[tuple[int, AnyRecord]]
) -> int:
    """Keep the forced and held-open door events among ``records`` (being applied by
    ingest, in its transaction) for the alert rules; idempotent by record id."""
    rows = [
        (
            record.id,
            site,
            record.door or record.terminal or "?",
            record.terminal,
            record.event,
            int(record.at.timestamp() * 1000),
        )
        for _, record in records
        if isinstance(record, TerminalEvent) and record.event in ALERTED_EVENTS
    ]
    if rows:
        conn.executemany(
            "INSERT OR IGNORE INTO door_events (record_id, site, door, terminal, event, at_ms)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
    return len(rows)


async def open_door(
    service: CentralService,
    *,
    site: str,
    door_id: str,
    open_ms: int,
    operator: str,
    role: str | None = None,
    ip: str | None = None,
    source: str = "hq:web",
    answer_s: float = ANSWER_S,
) -> DoorOpenOutcome:
    """Ask ``site`` to open ``door_id`` for ``open_ms`` now; audited whatever the outcome."""
    door = await service.store.run(lambda conn: master.get(conn, site, "door", door_id))
    if door is None:
        raise UnknownDoorError(f"no door {door_id} at {site}")
    issued = datetime.now(UTC)
    command = DoorOpen(
        id=f"door-{uuid.uuid4().hex[:16]}",
        issued_at=issued,
        expires_at=issued + timedelta(seconds=EXPIRES_S),
        terminal=str(door["terminal_id"]),
        door=door_id,
        open_ms=open_ms,
        operator=operator,
    )
    outcome = await _send(service, site, command, answer_s)
    entry = AuditEntry(
        request_id=command.id,
        operator=operator,
        source=source,
        action="door.open",
        target=f"{site}/{door_id}",
        at=issued,
        outcome="accepted" if outcome.status == "done" else "rejected",
        reason_code=None if outcome.status == "done" else outcome.status,
        after={"terminal": command.terminal, "open_ms": open_ms, "result": outcome.status},
        note=outcome.detail,
    )

    def audit(conn: sqlite3.Connection) -> None:
        write_audit(conn, entry, role=role, ip=ip)

    await service.store.run(audit)
    return outcome


async def _send(
    service: CentralService, site: str, command: DoorOpen, answer_s: float
) -> DoorOpenOutcome:
    with service.expect_reply(command.id) as answer:
        if not await service.send_command(site, command):
            return DoorOpenOutcome(
                "unreachable", "central is not connected to the broker", command.id
            )
        try:
            async with asyncio.timeout(answer_s):
                reply: Reply = await answer
        except TimeoutError:
            return DoorOpenOutcome(
                "unreachable", f"{site} did not answer within {answer_s:.0f} s", command.id
            )
    status = reply.status if reply.status in ("done", "failed", "rejected") else "failed"
    return DoorOpenOutcome(status, reply.detail, command.id)
