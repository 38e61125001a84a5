"""The OpenAPI 3.1 document of HQ's JSON API, served at ``GET /api/v1/openapi.json``.

Request and result bodies are described by the very msgspec Structs the API decodes and
encodes (``msgspec.json.schema_components``), so a field added to an operation appears here
by itself. What no Struct describes (the views of persons, cards, the audit log and
anomalies, the query parameters) is written out below, one :class:`Endpoint` per route.

:func:`endpoints` must name every ``/api/v1`` route the server answers, and nothing else:
``tests/central/test_central_openapi.py`` walks the Starlette routes and fails otherwise.
A new route is one entry here (and one in the security tests' permission table).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from central import api, operations, queries
from central.core.clearing import DayReport, Settlement
from central.core.effects import Accepted, Rejected
from central.core.member_rows import Issue
from central.core.members import ImportCounts
from central.core.operations import AnyRequest
from central.core.rollout import Rollout
from central.core.state import Balance, CardType, Policy
from central.finance import ReconciliationRun
from central.logtail import LEVELS, MAX_LEVEL_S, TAIL_ROLES
from central.web import rollouts
from central.web.doors import DOOR_ROLES, OpenRequest
from central.web.logs import MAX_GREP, LevelChange
from edge_agent.core.model import Card, Person, Ticket

Schema = dict[str, Any]

#: Largest integer a query parameter may carry (SQLite's INTEGER is signed 64-bit).
INT64_MAX = 2**63 - 1

_REF = "#/components/schemas/{name}"
#: Structs whose Python names are private in ``central.api``: their names in the document.
_RENAMED = {"_AnomalyChange": "AnomalyChange", "_Settings": "SettingsChange"}
_OCTET = "application/octet-stream"
_CSV = "text/csv; charset=utf-8"


def ref(name: str) -> Schema:
    """A reference to component schema ``name``."""
    return {"$ref": _REF.format(name=name)}


def nullable(schema: Schema) -> Schema:
    """``schema`` or null."""
    return {"anyOf": [schema, {"type": "null"}]}


_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_TIME: Schema = nullable({"type": "string", "format": "date-time"})
#: A rollout in one row (``central.web.rollouts.summary``).
_ROLLOUT_ROW: Schema = {
    "type": "object",
    "properties": {
        "id": _STR,
        "version": _STR,
        "status": {"type": "string", "enum": ["running", "paused", "aborted", "completed"]},
        "pause_reason": nullable({"type": "string"}),
        "created_at": {"type": "string", "format": "date-time"},
        "created_by": _STR,
        "sites": _INT,
        "counts": {"type": "object", "additionalProperties": _INT},
    },
    "required": ["id", "version", "status", "created_at", "sites", "counts"],
}


def _object(required: Mapping[str, Schema]) -> Schema:
    return {"type": "object", "properties": dict(required), "required": list(required)}


@dataclass(frozen=True)
class Param:
    """A query or path parameter."""

    name: str
    schema: Schema
    description: str
    where: str = "query"
    required: bool = False

    def to_json(self) -> Schema:
        """The OpenAPI parameter object."""
        return {
            "name": self.name,
            "in": self.where,
            "required": self.required or self.where == "path",
            "description": self.description,
            "schema": self.schema,
        }


@dataclass(frozen=True)
class Endpoint:
    """One method of one route, as the document describes it."""

    summary: str
    tag: str
    #: The roles whose token may call it (the role sets of ``central.api``).
    roles: frozenset[str]
    #: The body of its success answer (``status``), by media type.
    ok: Mapping[str, Schema]
    description: str = ""
    params: tuple[Param, ...] = ()
    #: The request body, by media type (None: no body).
    body: Mapping[str, Schema] | None = None
    #: Other answers: status → (description, body by media type).
    other: Mapping[int, tuple[str, Mapping[str, Schema]]] = field(default_factory=dict)
    #: The error statuses it may answer besides 401 and 403 (body: ``Error``).
    errors: tuple[int, ...] = ()
    #: The names of the security schemes it accepts (any one of them).
    security: tuple[str, ...] = ("bearerToken",)
    #: Response headers of the success answer.
    headers: Mapping[str, Schema] = field(default_factory=dict)
    #: Examples of the (JSON) request body, by name.
    examples: Mapping[str, Schema] = field(default_factory=dict)
    #: The status of its success answer.
    status: int = 200


def _json(schema: Schema) -> dict[str, Schema]:
    return {"application/json": schema}


def _limit(default: int) -> Param:
    return Param(
        "limit",
        {"type": "integer", "minimum": -INT64_MAX, "maximum": INT64_MAX, "default": default},
        "at most this many (clamped to 1..500)",
    )


_FORMAT = Param(
    "format",
    {"type": "string", "enum": ["json", "csv"], "default": "json"},
    "`csv` for a spreadsheet (UTF-8 with BOM)",
)
_TIMEZONE = Param(
    "timezone",
    {"type": "string", "default": "Asia/Shanghai"},
    "the IANA zone of the file's local times",
)
_DAY: Schema = {"type": "string", "format": "date"}
_DAYS = f" (YYYY-MM-DD, {api.FIRST_DAY} to {api.LAST_DAY})"
_STATES = ("open", "acknowledged", "resolved")
_FLAG: Schema = {"type": "string", "enum": ["0", "1", "true", "false", "yes", "no"]}
_ERROR_TEXT = {
    400: "bad JSON, a missing or wrong field or query parameter (the message names it)",
    404: "no such thing",
    409: "not allowed from the current state",
    413: "the body is over 8 MiB",
    503: "not available now (central is not on the broker, or too many viewers)",
}


def _endpoints() -> dict[tuple[str, str], Endpoint]:
    # Built on first use: the views refer to component names generated from the Structs.
    return {
        ("GET", "/api/v1/openapi.json"): Endpoint(
            "This document",
            "meta",
            frozenset(queries.ROLES),
            _json({"type": "object"}),
            description="Any valid token may read it.",
        ),
        ("POST", "/api/v1/operations"): Endpoint(
            "Run a card or money operation",
            "operations",
            api.OPERATE,
            _json(ref("Accepted")),
            description=(
                "The body is one operation tagged by `op`. The operator is the token's name and"
                " the source `hq:api`: `operator` and `source` in the body are ignored. A retry"
                " with the same `request_id` and body is answered with the first result and the"
                " header `Idempotent-Replayed: true`; the same `request_id` with another body is"
                " refused (`request_id_reused`)."
            ),
            body=_json(ref("OperationRequest")),
            examples={
                "recharge": {
                    "summary": "¥50 paid online onto a card",
                    "value": {
                        "op": "money.recharge",
                        "request_id": "erp-20261127-0001",
                        "card_uid": "04B1B2B3B4B5B6",
                        "amount_fen": 5000,
                        "method": "online",
                        "pay_ref": "WX20261127A001",
                    },
                },
                "report_lost": {
                    "summary": "A card reported lost (blacklisted at every site)",
                    "value": {
                        "op": "card.report_lost",
                        "request_id": "erp-20261127-0003",
                        "card_uid": "04B1B2B3B4B5B6",
                        "reported_at": "2026-11-27T07:30:00Z",
                    },
                },
            },
            other={422: ("the operation was refused (nothing changed)", _json(ref("Rejected")))},
            errors=(400, 413),
            headers={
                "Idempotent-Replayed": {
                    "description": "`true` when this is the stored answer of an earlier call",
                    "schema": {"type": "string", "enum": ["true"]},
                },
                "Blacklist-Version": {
                    "description": "the blacklist version this operation created",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
            },
        ),
        ("GET", "/api/v1/persons"): Endpoint(
            "Find people",
            "people",
            api.READ_PEOPLE,
            _json(_object({"persons": {"type": "array", "items": ref("Person")}})),
            description="By id, staff/member number or card UID (exact), or part of the name.",
            params=(Param("q", _STR, "what to look for (empty: nobody)"), _limit(50)),
            errors=(400,),
        ),
        ("GET", "/api/v1/persons/{person_id}"): Endpoint(
            "A person: purses, limits, cards, tickets and recent ledger entries",
            "people",
            api.READ_PEOPLE,
            _json(ref("PersonView")),
            params=(Param("person_id", _STR, "the person's id", where="path"),),
            errors=(404,),
        ),
        ("GET", "/api/v1/cards/{uid}"): Endpoint(
            "A card, its holder's id and its blacklist state",
            "people",
            api.READ_PEOPLE,
            _json(ref("CardView")),
            params=(Param("uid", _STR, "the card UID (hex, any case)", where="path"),),
            errors=(404,),
        ),
        ("GET", "/api/v1/audit"): Endpoint(
            "The audit log, newest first",
            "audit",
            api.READ_AUDIT,
            _json(_object({"audit": {"type": "array", "items": ref("AuditLine")}})),
            params=(
                Param("operator", _STR, "only this operator (a user or token name)"),
                Param("action", _STR, "only this action (`money.recharge`, `user.add` …)"),
                Param("target", _STR, "only this target (`card:UID`, `person:ID` …)"),
                Param("outcome", {"type": "string", "enum": ["accepted", "rejected"]}, "only"),
                Param(
                    "before_id",
                    {"type": "integer", "minimum": -INT64_MAX, "maximum": INT64_MAX},
                    "lines older than this id (the next page)",
                ),
                _limit(100),
            ),
            errors=(400,),
        ),
        ("GET", "/api/v1/anomalies"): Endpoint(
            "Anomalies, newest first",
            "anomalies",
            api.READ_PEOPLE,
            _json(_object({"anomalies": {"type": "array", "items": ref("Anomaly")}})),
            params=(
                Param(
                    "state", {"type": "string", "enum": ["open", "acknowledged", "resolved"]}, ""
                ),
                Param("kind", _STR, "only this kind (`negative_balance`, `seq_gap` …)"),
                Param("site", _STR, "only this site"),
                _limit(100),
            ),
            errors=(400,),
        ),
        ("POST", "/api/v1/anomalies/{anomaly_id}"): Endpoint(
            "Acknowledge or resolve an anomaly",
            "anomalies",
            api.HANDLE_ANOMALIES,
            _json(ref("Anomaly")),
            description="open → acknowledged → resolved; resolved is final (409).",
            params=(Param("anomaly_id", _INT, "the anomaly's id", where="path"),),
            body=_json(ref("AnomalyChange")),
            errors=(400, 404, 409, 413),
        ),
        ("POST", "/api/v1/imports/members"): Endpoint(
            "Check, then import, a member file (CSV in UTF-8/GBK, or XLSX)",
            "imports",
            api.OPERATE,
            _json(ref("ImportReport")),
            description=(
                "The body is the file's bytes. Nothing is imported when the file has an error"
                " (422 with the same report) or with `dry_run=1`."
            ),
            params=(
                Param("filename", _STR, "the file's name, for the report and the audit log"),
                Param("batch", _STR, "the batch id (a re-run with the same id changes nothing)"),
                Param("dry_run", _FLAG, "only check"),
                _TIMEZONE,
            ),
            body={_OCTET: {"type": "string", "format": "binary"}},
            other={422: ("the file has errors; nothing imported", _json(ref("ImportReport")))},
            errors=(400, 413),
        ),
        ("GET", "/api/v1/clearing"): Endpoint(
            "A day's clearing (日结) per site and HQ",
            "finance",
            api.READ_FINANCE,
            {
                "application/json": {"type": "array", "items": ref("DayReport")},
                _CSV: {"type": "string"},
            },
            description="Cleared now: late records make a new revision.",
            params=(
                Param("day", _DAY, "the business day" + _DAYS, required=True),
                Param("site", _STR, "one site, or `HQ` (default: every site and HQ)"),
                _FORMAT,
            ),
            errors=(400,),
        ),
        ("GET", "/api/v1/settlement"): Endpoint(
            "HQ's settlement list over 1 to 93 days",
            "finance",
            api.READ_FINANCE,
            {"application/json": ref("Settlement"), _CSV: {"type": "string"}},
            params=(
                Param("from", _DAY, "the first day" + _DAYS, required=True),
                Param("to", _DAY, "the last day" + _DAYS, required=True),
                _FORMAT,
            ),
            errors=(400,),
        ),
        ("POST", "/api/v1/reconciliations"): Endpoint(
            "Reconcile a payment channel's statement against recharges",
            "finance",
            api.FINANCE,
            _json(ref("ReconciliationRun")),
            description="The body is the statement file; `apply=1` credits and voids.",
            params=(
                Param("filename", _STR, "the file's name"),
                Param("apply", _FLAG, "apply the credits and voids (default: only report)"),
                Param(
                    "grace_minutes",
                    {"type": "integer", "minimum": 0, "maximum": api.MAX_GRACE_MINUTES},
                    "a prepared recharge this old without a commit is uncommitted (default 30)",
                ),
                _TIMEZONE,
            ),
            body={_OCTET: {"type": "string", "format": "binary"}},
            errors=(400, 413),
        ),
        ("GET", "/api/v1/sites/{site}/logs"): Endpoint(
            "Tail a site's log (Server-Sent Events)",
            "sites",
            TAIL_ROLES,
            {"text/event-stream": {"type": "string"}},
            description=(
                "Events `line` (JSON `{at, level, event, logger, fields}`), `caught_up` (the"
                " lines of `since` are all sent; without `follow` the stream ends), `notice`"
                " and `end`. Every tail is audited. 503 when central is not on the broker or"
                " the site has too many viewers."
            ),
            params=(
                Param("site", _STR, "the site id", where="path"),
                Param(
                    "level",
                    {"type": "string", "enum": [*LEVELS, "warn"], "default": "info"},
                    "the lowest level shown",
                ),
                Param("since", _STR, "lines from this far back: `30s`, `10m`, `2h`, seconds"),
                Param("grep", {"type": "string", "maxLength": MAX_GREP}, "only lines with this"),
                Param("follow", _FLAG, "keep streaming after `caught_up` (default 1)"),
            ),
            errors=(400, 404, 503),
        ),
        ("POST", "/api/v1/sites/{site}/log-level"): Endpoint(
            "Have a site's daemon log at another level for a while",
            "sites",
            TAIL_ROLES,
            _json(_object({"command_id": _STR})),
            description=(
                "The site logs at `level` for `duration_s` seconds (1 to"
                f" {MAX_LEVEL_S}), then reverts by itself. Accepted (202) once the command"
                " is sent; audited as `logs.level`."
            ),
            params=(Param("site", _STR, "the site id", where="path"),),
            body=_json(ref("LevelChange")),
            errors=(400, 404, 413, 503),
            status=202,
        ),
        ("POST", "/api/v1/sites/{site}/doors/{door}/open"): Endpoint(
            "Open a door now, from HQ",
            "sites",
            DOOR_ROLES,
            _json(
                _object(
                    {
                        "status": {
                            "type": "string",
                            "enum": ["done", "failed", "rejected", "unreachable"],
                        },
                        "detail": _STR,
                        "command_id": _STR,
                    }
                )
            ),
            description=(
                "The site's door terminal releases its lock for `open_ms` milliseconds. The"
                " answer says what happened: `done`, `failed` (terminal offline or refused),"
                " `rejected`, `unreachable` (no broker link or no answer in time). Audited."
            ),
            params=(
                Param("site", _STR, "the site id", where="path"),
                Param("door", _STR, "the door terminal's id", where="path"),
            ),
            body=_json(ref("OpenRequest")),
            errors=(400, 404, 413, 503),
        ),
        ("GET", "/api/v1/rollouts"): Endpoint(
            "Every rollout of a release to the sites, newest first",
            "upgrades",
            rollouts.READ,
            _json({"type": "array", "items": _ROLLOUT_ROW}),
        ),
        ("GET", "/api/v1/rollouts/{rollout_id}"): Endpoint(
            "One rollout: its stages, every site's state and step, and its log",
            "upgrades",
            rollouts.READ,
            _json(
                {
                    "allOf": [
                        ref("Rollout"),
                        _object({"log": {"type": "array", "items": {"type": "object"}}}),
                    ]
                }
            ),
            params=(Param("rollout_id", _STR, "the rollout's id", where="path"),),
            errors=(404,),
        ),
        ("POST", "/api/v1/rollouts/{rollout_id}/{action}"): Endpoint(
            "Pause, resume, abort a rollout, or retry failed sites",
            "upgrades",
            rollouts.CONTROL,
            _json(_ROLLOUT_ROW),
            description=(
                "`pause` (with a `note`): no more upgrade commands, sites installing finish;"
                " `resume`: go on, the failures so far acknowledged; `abort`: stop for good;"
                " `retry` (with `sites`): queue failed sites again. Audited (`rollout.ACTION`)."
            ),
            params=(
                Param("rollout_id", _STR, "the rollout's id", where="path"),
                Param(
                    "action",
                    {"type": "string", "enum": list(rollouts.ACTIONS)},
                    "what to do",
                    where="path",
                ),
            ),
            body=_json(ref("ControlRequest")),
            errors=(400, 404, 409, 413),
        ),
        ("GET", "/api/v1/settings"): Endpoint(
            "The money policy and card types",
            "settings",
            api.READ_PEOPLE,
            _json(ref("SettingsView")),
        ),
        ("PUT", "/api/v1/settings"): Endpoint(
            "Change the money policy and/or card types",
            "settings",
            api.ADMIN,
            _json(ref("SettingsView")),
            description="Only the policy fields named change; `card_types` replaces the list.",
            body=_json(ref("SettingsChange")),
            errors=(400, 413),
        ),
    }


def _components() -> dict[str, Schema]:
    """Component schemas: the Structs, then the views written out here."""
    _, generated = msgspec.json.schema_components(
        [
            AnyRequest,
            Accepted,
            Rejected,
            DayReport,
            Settlement,
            ReconciliationRun,
            Policy,
            CardType,
            Balance,
            Person,
            Card,
            Ticket,
            ImportCounts,
            Issue,
            api._AnomalyChange,  # the bodies the API decodes
            api._Settings,
            LevelChange,
            OpenRequest,
            Rollout,
            rollouts.ControlRequest,
        ],
        ref_template=_REF,
    )
    text = json.dumps(generated)
    for old, new in _RENAMED.items():
        text = text.replace(_REF.format(name=old), _REF.format(name=new))
    schemas: dict[str, Schema] = {_RENAMED.get(k, k): v for k, v in json.loads(text).items()}
    for name in _RENAMED.values():
        schemas[name]["title"] = name
    (request_union,), _ = msgspec.json.schema_components([AnyRequest], ref_template=_REF)
    schemas["OperationRequest"] = request_union
    for option in request_union["anyOf"]:
        _from_token(schemas[option["$ref"].rsplit("/", 1)[1]])
    # A change names only the fields it changes; an unknown one is refused.
    schemas["PolicyChange"] = {**schemas["Policy"], "additionalProperties": False}
    schemas["PolicyChange"]["title"] = "PolicyChange"
    # What change_settings checks beyond the types.
    amount = {"type": "integer", "minimum": 0, "maximum": operations.MAX_SETTING}
    change = schemas["PolicyChange"]["properties"] = dict(schemas["Policy"]["properties"])
    for name in ("cancel_fee_fen", "reissue_fee_fen", "recharge_cap_fen", "clock_skew_s"):
        change[name] = {**change[name], **amount}
    change["recharge_cap_fen"]["minimum"] = 1
    change["default_card_type"] = {**change["default_card_type"], "minLength": 1}
    card_type = schemas["CardType"]["properties"]
    card_type["deposit_fen"] = {**card_type["deposit_fen"], **amount}
    card_type["name"] = {**card_type["name"], "minLength": 1}
    door = schemas["OpenRequest"]["properties"]
    door["open_ms"] = {**door["open_ms"], "minimum": 500, "maximum": 60_000}
    schemas["SettingsChange"]["properties"]["policy"] = nullable(ref("PolicyChange"))
    schemas.update(_views(schemas))
    ecma: dict[str, Schema] = _ecma_patterns(schemas)
    return ecma


def _ecma_patterns(value: Any) -> Any:
    """``value`` with Python's end-of-text anchor ``\\Z`` written as ECMA-262's ``$`` (JSON
    Schema patterns are ECMA-262, where ``$`` without the m flag is the end of the text)."""
    if isinstance(value, dict):
        return {
            k: v.replace("\\Z", "$") if k == "pattern" and isinstance(v, str) else _ecma_patterns(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_ecma_patterns(v) for v in value]
    return value


def _from_token(op: Schema) -> None:
    # The API fills operator and source from the token; what the body says is ignored.
    op["required"] = [k for k in op["required"] if k not in {"operator", "source"}]
    for name in ("operator", "source"):
        op["properties"][name] = {**op["properties"][name], "description": "ignored"}


def _views(schemas: Mapping[str, Schema]) -> dict[str, Schema]:
    card = schemas["Card"]
    card_view = {
        **card,
        "title": "CardView",
        "properties": {
            **card["properties"],
            "blacklist": nullable(
                _object({"reason": _STR, "since": _TIME, "version": _INT}),
            ),
        },
        "required": [*card["required"], "blacklist"],
    }
    held_card = {
        **card,
        "title": "HeldCard",
        "properties": {
            **card["properties"],
            "blacklisted": {"type": "boolean"},
            "blacklist_reason": nullable(_STR),
            "blacklisted_since": _TIME,
        },
        "required": [*card["required"], "blacklisted", "blacklist_reason", "blacklisted_since"],
    }
    ledger_entry = _object(
        {
            "id": _INT,
            "kind": _STR,
            "cash_fen": _INT,
            "subsidy_fen": _INT,
            "deposit_fen": nullable(_INT),
            "ticket_id": nullable(_STR),
            "ticket_uses": _INT,
            "record_id": nullable(_STR),
            "site": nullable(_STR),
            "at": _TIME,
            "pay_ref": nullable(_STR),
            "ref": nullable(_STR),
            "card_uid": nullable(_STR),
            "method": nullable(_STR),
        }
    )
    person_view = _object(
        {
            "person": ref("Person"),
            "balance": ref("Balance"),
            "limits": _object({"txn_limit_fen": nullable(_INT), "daily_limit_fen": nullable(_INT)}),
            "subsidy_expires_at": _TIME,
            "cards": {"type": "array", "items": ref("HeldCard")},
            "tickets": {"type": "array", "items": ref("Ticket")},
            "ledger": {"type": "array", "items": ref("LedgerEntry")},
        }
    )
    scalars = {
        "type": "object",
        "additionalProperties": {"type": ["string", "integer", "boolean", "number", "null"]},
    }
    audit_line = _object(
        {
            "id": _INT,
            "at": _TIME,
            "request_id": nullable(_STR),
            "operator": _STR,
            "role": nullable(_STR),
            "source": _STR,
            "ip": nullable(_STR),
            "action": _STR,
            "target": _STR,
            "outcome": {"type": "string", "enum": ["accepted", "rejected"]},
            "reason_code": nullable(_STR),
            "before": scalars,
            "after": scalars,
            "note": _STR,
        }
    )
    anomaly = _object(
        {
            "id": _INT,
            "at": _TIME,
            "kind": _STR,
            "site": nullable(_STR),
            "record_id": nullable(_STR),
            "detail": {"type": "object"},
            "state": {"type": "string", "enum": list(_STATES)},
            "acted_by": nullable(_STR),
            "acted_at": _TIME,
            "note": _STR,
        }
    )
    import_report = _object(
        {
            "applied": {"type": "boolean"},
            "batch_id": _STR,
            "file": _STR,
            "format": {"type": "string", "enum": ["csv", "xlsx"]},
            "encoding": nullable(_STR),
            "ok": {"type": "boolean"},
            "counts": ref("ImportCounts"),
            "totals": _object(
                {"cash_fen": _INT, "cash_yuan": _STR, "subsidy_fen": _INT, "subsidy_yuan": _STR}
            ),
            "errors_by_reason": {"type": "object", "additionalProperties": _INT},
            "errors": {"type": "array", "items": ref("Issue")},
            "notes": {"type": "array", "items": _STR},
        }
    )
    settings_view = _object(
        {"policy": ref("Policy"), "card_types": {"type": "array", "items": ref("CardType")}}
    )
    error = _object(
        {
            "error": _object(
                {
                    "code": {
                        "type": "string",
                        "description": "stable: `bad_json`, `invalid_request`,"
                        " `invalid_statement`, `unauthenticated`, `forbidden`, `not_found`,"
                        " `method_not_allowed`, `conflict`, `too_large`, `unavailable`",
                    },
                    "message": {"type": "string", "description": "for people; may change"},
                }
            )
        }
    )
    return {
        "CardView": card_view,
        "HeldCard": held_card,
        "LedgerEntry": ledger_entry,
        "PersonView": person_view,
        "AuditLine": audit_line,
        "Anomaly": anomaly,
        "ImportReport": import_report,
        "SettingsView": settings_view,
        "Error": error,
    }


def _operation(method: str, path: str, doc: Endpoint) -> Schema:
    responses: dict[str, Schema] = {
        str(doc.status): {
            "description": "done" if doc.status == 200 else "accepted",
            "content": {media: {"schema": schema} for media, schema in doc.ok.items()},
            **({"headers": dict(doc.headers)} if doc.headers else {}),
        }
    }
    for status, (text, content) in doc.other.items():
        responses[str(status)] = {
            "description": text,
            "content": {media: {"schema": schema} for media, schema in content.items()},
        }
    for status in sorted({401, 403, *doc.errors}):
        responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    roles = ", ".join(r for r in queries.ROLES if r in doc.roles)
    operation: Schema = {
        "operationId": _operation_id(method, path),
        "summary": doc.summary,
        "description": (doc.description + f"\n\nRoles: {roles}.").strip(),
        "tags": [doc.tag],
        "x-roles": [r for r in queries.ROLES if r in doc.roles],
        "parameters": [p.to_json() for p in doc.params],
        "responses": responses,
        "security": [{name: []} for name in doc.security],
    }
    if doc.body is not None:
        content = {media: {"schema": schema} for media, schema in doc.body.items()}
        if doc.examples:
            content["application/json"]["examples"] = dict(doc.examples)
        operation["requestBody"] = {"required": True, "content": content}
    return operation


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}").replace(".", "_") for w in path.removeprefix("/api/v1/").split("/")]
    return method.lower() + "_" + "_".join(words)


@functools.cache
def endpoints() -> dict[tuple[str, str], Endpoint]:
    """Every documented ``(method, path)`` (paths as Starlette spells them)."""
    return _endpoints()


@functools.cache
def document() -> Schema:
    """The OpenAPI document (built once)."""
    paths: dict[str, Schema] = {}
    for (method, path), doc in endpoints().items():
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, doc)
    error = {"application/json": {"schema": ref("Error")}}
    described = {**_ERROR_TEXT, 401: "no token, or an unknown or revoked one", 403: "role"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "onecard HQ API",
            "version": "1",
            "description": (
                "HQ's card, money, people, finance and audit operations. Amounts are integer"
                " fen; times are ISO 8601 UTC. See docs/api.md and docs/operations.md."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerToken": []}],
        "paths": paths,
        "components": {
            "schemas": _components(),
            "responses": {
                f"E{status}": {"description": text, "content": error}
                for status, text in sorted(described.items())
            },
            "securitySchemes": {
                "bearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <token>`; a token is made with"
                    " `onecard-central token add NAME --role ROLE`.",
                },
            },
        },
    }


@functools.cache
def document_json() -> bytes:
    """The document as JSON bytes (what the endpoint serves)."""
    return msgspec.json.encode(document())
