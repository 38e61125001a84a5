"""What HQ reads and the small writes around operations: people, cards, the audit log,
anomalies, API tokens. Shared by the JSON API and the CLI; every function runs inside a
store operation (``store.run``) and returns plain JSON-ready values.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from central import master
from central.core.effects import AuditEntry
from central.operations import load_holder, write_audit
from edge_agent.adapters.sqlite_store import now_ms

Role = Literal["admin", "operator", "finance", "technician", "auditor"]
ROLES: tuple[Role, ...] = ("admin", "operator", "finance", "technician", "auditor")
AnomalyState = Literal["open", "acknowledged", "resolved"]

_dict = msgspec.json.Decoder(dict[str, Any])
_MAX_LIMIT = 500


class NotFoundError(LookupError):
    """The thing asked for does not exist."""


class ConflictError(ValueError):
    """The change asked for is not allowed from the current state."""


def iso(ms: int | None) -> str | None:
    """Unix ms as an ISO-8601 UTC string."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _limit(limit: int) -> int:
    return max(1, min(int(limit), _MAX_LIMIT))


# -- people and cards -------------------------------------------------------------------------


def search_persons(conn: sqlite3.Connection, q: str, *, limit: int = 50) -> list[dict[str, Any]]:
    """People whose id, staff/member number or card UID is ``q``, or whose name contains it."""
    q = q.strip()
    if not q:
        return []
    ids: dict[str, None] = {}
    for (key,) in conn.execute(
        "SELECT key FROM master WHERE scope = '' AND entity = 'person' AND (key = ?"
        " OR json_extract(data, '$.number') = ? OR json_extract(data, '$.name') LIKE ?)"
        " ORDER BY key LIMIT ?",
        (q, q, f"%{q}%", _limit(limit)),
    ).fetchall():
        ids[key] = None
    card = master.get(conn, "", "card", q.upper().replace(" ", ""))
    if card is not None:
        ids[card["person_id"]] = None
    out = []
    for person_id in list(ids)[: _limit(limit)]:
        person = master.get(conn, "", "person", person_id)
        if person is not None:
            out.append(person)
    return out


def person_view(conn: sqlite3.Connection, person_id: str, *, recent: int = 50) -> dict[str, Any]:
    """A person with purses, limits, cards (with blacklist state), tickets and recent
    ledger entries, newest first."""
    holder = load_holder(conn, person_id)
    if holder is None:
        raise NotFoundError(f"no person {person_id}")
    listed = {
        uid: (reason, effective)
        for uid, reason, effective in conn.execute(
            "SELECT uid, reason, effective_ms FROM blacklist WHERE uid IN"
            " (SELECT key FROM master WHERE scope = '' AND entity = 'card'"
            " AND json_extract(data, '$.person_id') = ?)",
            (person_id,),
        ).fetchall()
    }
    account = holder.account
    return {
        "person": msgspec.to_builtins(holder.person),
        "balance": msgspec.to_builtins(holder.balance),
        "limits": {
            "txn_limit_fen": account.txn_limit_fen if account else None,
            "daily_limit_fen": account.daily_limit_fen if account else None,
        },
        "subsidy_expires_at": (
            account.subsidy_expires_at.isoformat()
            if account and account.subsidy_expires_at
            else None
        ),
        "cards": [
            {
                **msgspec.to_builtins(card),
                "blacklisted": card.uid in listed,
                "blacklist_reason": listed[card.uid][0] if card.uid in listed else None,
                "blacklisted_since": iso(listed[card.uid][1]) if card.uid in listed else None,
            }
            for card in holder.cards
        ],
        "tickets": [msgspec.to_builtins(t) for t in holder.tickets],
        "ledger": ledger_entries(conn, person_id=person_id, limit=recent),
    }


def ledger_entries(
    conn: sqlite3.Connection, *, person_id: str, limit: int = 50
) -> list[dict[str, Any]]:
    """A person's ledger entries, newest first."""
    rows = conn.execute(
        "SELECT id, kind, cash_fen, subsidy_fen, deposit_fen, ticket_id, ticket_uses,"
        " record_id, site, at_ms, pay_ref, ref, card_uid, method FROM ledger"
        " WHERE person_id = ? ORDER BY id DESC LIMIT ?",
        (person_id, _limit(limit)),
    ).fetchall()
    return [
        {
            "id": row[0],
            "kind": row[1],
            "cash_fen": row[2],
            "subsidy_fen": row[3],
            "deposit_fen": row[4],
            "ticket_id": row[5],
            "ticket_uses": row[6],
            "record_id": row[7],
            "site": row[8],
            "at": iso(row[9]),
            "pay_ref": row[10],
            "ref": row[11],
            "card_uid": row[12],
            "method": row[13],
        }
        for row in rows
    ]


def card_view(conn: sqlite3.Connection, uid: str) -> dict[str, Any]:
    """A card, its holder's id and its blacklist state."""
    uid = uid.upper()
    card = master.get(conn, "", "card", uid)
    if card is None:
        raise NotFoundError(f"no card {uid}")
    row = conn.execute(
        "SELECT reason, effective_ms, version FROM blacklist WHERE uid = ?", (uid,)
    ).fetchone()
    return {
        **card,
        "blacklist": None
        if row is None
        else {"reason": row[0], "since": iso(row[1]), "version": row[2]},
    }


# -- the audit log ----------------------------------------------------------------------------


def audit_log(
    conn: sqlite3.Connection,
    *,
    operator: str | None = None,
    action: str | None = None,
    target: str | None = None,
    outcome: str | None = None,
    since_ms: int | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Audit lines, newest first, filtered by any of the arguments."""
    where: list[str] = ["1 = 1"]
    args: list[object] = []
    for column, value in (
        ("operator", operator),
        ("action", action),
        ("target", target),
        ("outcome", outcome),
    ):
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    if since_ms is not None:
        where.append("at_ms >= ?")
        args.append(since_ms)
    if before_id is not None:
        where.append("id < ?")
        args.append(before_id)
    columns = (
        "id, at_ms, request_id, operator, role, source, ip, action, target, outcome,"
        " reason_code, before, after, note"
    )
    condition = " AND ".join(where)  # fixed column names; values are parameters
    sql = f"SELECT {columns} FROM audit WHERE {condition} ORDER BY id DESC LIMIT ?"  # noqa: S608
    rows = conn.execute(sql, (*args, _limit(limit))).fetchall()
    return [
        {
            "id": r[0],
            "at": iso(r[1]),
            "request_id": r[2],
            "operator": r[3],
            "role": r[4],
            "source": r[5],
            "ip": r[6],
            "action": r[7],
            "target": r[8],
            "outcome": r[9],
            "reason_code": r[10],
            "before": _dict.decode(r[11]),
            "after": _dict.decode(r[12]),
            "note": r[13],
        }
        for r in rows
    ]


# -- anomalies --------------------------------------------------------------------------------


def anomalies(
    conn: sqlite3.Connection,
    *,
    state: str | None = None,
    kind: str | None = None,
    site: str | None = None,
    anomaly_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Anomalies, newest first."""
    where: list[str] = ["1 = 1"]
    args: list[object] = []
    for column, value in (("state", state), ("kind", kind), ("site", site), ("id", anomaly_id)):
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    columns = "id, at_ms, kind, site, record_id, detail, state, acted_by, acted_ms, note"
    condition = " AND ".join(where)  # fixed column names; values are parameters
    sql = f"SELECT {columns} FROM anomalies WHERE {condition} ORDER BY id DESC LIMIT ?"  # noqa: S608
    rows = conn.execute(sql, (*args, _limit(limit))).fetchall()
    return [
        {
            "id": r[0],
            "at": iso(r[1]),
            "kind": r[2],
            "site": r[3],
            "record_id": r[4],
            "detail": _dict.decode(r[5]),
            "state": r[6],
            "acted_by": r[7],
            "acted_at": iso(r[8]),
            "note": r[9],
        }
        for r in rows
    ]


_NEXT_STATES: dict[str, frozenset[str]] = {
    "open": frozenset({"acknowledged", "resolved"}),
    "acknowledged": frozenset({"resolved"}),
    "resolved": frozenset(),
}


def set_anomaly_state(
    conn: sqlite3.Connection,
    anomaly_id: int,
    state: AnomalyState,
    *,
    operator: str,
    source: str,
    note: str = "",
    role: str | None = None,
    ip: str | None = None,
) -> dict[str, Any]:
    """Acknowledge or resolve an anomaly (open → acknowledged → resolved; resolved is
    final), recording who and when, in the audit log too."""
    row = conn.execute("SELECT state FROM anomalies WHERE id = ?", (anomaly_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"no anomaly {anomaly_id}")
    if state not in _NEXT_STATES[row[0]]:
        raise ConflictError(f"anomaly {anomaly_id} is {row[0]}; it cannot become {state}")
    at = now_ms()
    conn.execute(
        "UPDATE anomalies SET state = ?, acted_by = ?, acted_ms = ?, note = ? WHERE id = ?",
        (state, operator, at, note, anomaly_id),
    )
    write_audit(
        conn,
        AuditEntry(
            request_id=f"anomaly:{anomaly_id}:{state}",
            operator=operator,
            source=source,
            action=f"anomaly.{'acknowledge' if state == 'acknowledged' else 'resolve'}",
            target=f"anomaly:{anomaly_id}",
            at=datetime.fromtimestamp(at / 1000, UTC),
            before={"state": row[0]},
            after={"state": state},
            note=note,
        ),
        role=role,
        ip=ip,
    )
    return anomalies(conn, anomaly_id=anomaly_id)[0]


# -- API tokens -------------------------------------------------------------------------------


def token_digest(token: str) -> str:
    """What is stored for a token: its SHA-256 (a 256-bit random secret needs no KDF)."""
    return hashlib.sha256(token.encode()).hexdigest()


def add_token(
    conn: sqlite3.Connection, name: str, role: Role, *, operator: str = "-", source: str = "hq:cli"
) -> str:
    """Create an API token; returns the secret (shown once, never stored). Audited."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = "oc_" + secrets.token_urlsafe(32)
    try:
        conn.execute(
            "INSERT INTO api_tokens (name, role, digest, created_ms) VALUES (?, ?, ?, ?)",
            (name, role, token_digest(token), now_ms()),
        )
    except sqlite3.IntegrityError:
        raise ConflictError(f"a token named {name!r} exists; revoke it first") from None
    _audit_token(conn, "token.add", name, operator, source, {"role": role})
    return token


def _audit_token(  # noqa: PLR0917 - one audit line
    conn: sqlite3.Connection,
    action: str,
    name: str,
    operator: str,
    source: str,
    after: dict[str, str | int | bool | None],
) -> None:
    at = now_ms()
    write_audit(
        conn,
        AuditEntry(
            request_id=f"{action}:{name}:{at}",
            operator=operator,
            source=source,
            action=action,
            target=f"token:{name}",
            at=datetime.fromtimestamp(at / 1000, UTC),
            after=after,
        ),
    )


def revoke_token(
    conn: sqlite3.Connection, name: str, *, operator: str = "-", source: str = "hq:cli"
) -> None:
    """Revoke a token by name (kept for the audit trail). Audited."""
    cursor = conn.execute(
        "UPDATE api_tokens SET revoked_ms = ?, name = name || '#' || id"
        " WHERE name = ? AND revoked_ms IS NULL",
        (now_ms(), name),
    )
    if not cursor.rowcount:
        raise NotFoundError(f"no active token {name!r}")
    _audit_token(conn, "token.revoke", name, operator, source, {"revoked": True})


def tokens(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every token: name, role, created, revoked."""
    return [
        {"name": n, "role": r, "created": iso(c), "revoked": iso(v)}
        for n, r, c, v in conn.execute(
            "SELECT name, role, created_ms, revoked_ms FROM api_tokens ORDER BY id"
        ).fetchall()
    ]


def token_identity(conn: sqlite3.Connection, token: str) -> tuple[str, Role] | None:
    """(name, role) of an active token, or None."""
    row = conn.execute(
        "SELECT name, role FROM api_tokens WHERE digest = ? AND revoked_ms IS NULL",
        (token_digest(token),),
    ).fetchone()
    return None if row is None else (str(row[0]), row[1])
