"""``onecard-central`` commands for card and money operations, people, the audit log,
anomalies, settings and API tokens (see ``docs/operations.md``).

Every operation runs through :func:`central.operations.execute`, exactly like the API:
idempotent by ``--request-id`` (default: a fresh one, printed, so a script can retry with
it), audited with the operator (``--operator``, default the login user) and source
``hq:cli``. A refusal prints its reason code and exits 1.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
import msgspec

from central.cli_common import DB_OPTION, DbTarget, run_op, who
from central.core.amounts import parse_yuan
from central.core.clearing import format_yuan


def _op_options(f: Any) -> Any:
    f = click.option("--json", "as_json", is_flag=True, help="print the result as JSON")(f)
    f = click.option(
        "--request-id", help="idempotency key (retry with the same one: applied once)"
    )(f)
    f = click.option("--operator", default=who, show_default="login user")(f)
    return DB_OPTION(f)


def _run(db_path: DbTarget, op: Any) -> Any:
    return run_op(db_path, op)


def _yuan(_ctx: Any, _param: Any, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_yuan(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def execute(db_path: DbTarget, cls: type, opts: dict[str, Any], **fields: Any) -> None:
    """Build request ``cls`` from ``fields``, run it, print the outcome."""
    from central import operations
    from central.core.effects import Accepted

    rid = opts.pop("request_id") or f"cli-{uuid.uuid4().hex[:16]}"
    as_json = opts.pop("as_json")
    if any(isinstance(v, datetime) for v in fields.values()):
        fields = _in_utc(fields, hq_zone(db_path))
    try:
        request: Any = msgspec.convert(
            {"request_id": rid, "operator": opts.pop("operator"), "source": "hq:cli", **fields},
            cls,
        )
    except msgspec.ValidationError as exc:
        raise click.ClickException(f"invalid request: {exc}") from None
    outcome = _run(db_path, lambda conn: operations.execute(conn, request))
    result = outcome.result
    if as_json:
        click.echo(msgspec.json.encode(result))
    elif isinstance(result, Accepted):
        again = " (already done: the stored result)" if outcome.replayed else ""
        click.echo(f"{result.audit.action} {result.audit.target}: accepted{again}")
        for key, value in result.audit.after.items():
            click.echo(f"  {key}: {_show(key, value)}")
        if outcome.blacklist_version is not None:
            click.echo(f"  blacklist version: {outcome.blacklist_version}")
        for skipped in result.skipped:
            click.echo(f"  skipped {skipped.person_id}: {skipped.reason}")
        click.echo(f"  request id: {rid}")
    else:
        click.echo(f"refused ({result.reason_code}): {result.message}", err=True)
        if outcome.replayed:
            click.echo(
                "  (the stored answer to this request id, given when it was first sent;"
                " to try again after fixing the cause, use a new request id)",
                err=True,
            )
        click.echo(f"  request id: {rid}", err=True)
    if not isinstance(result, Accepted):
        sys.exit(1)


def _show(key: str, value: Any) -> str:
    from edge_agent.core.reasons import yuan

    if key.endswith("_fen") and isinstance(value, int):
        return f"{yuan(value)} ({value} fen)"
    return str(value)


def hq_zone(db_path: DbTarget) -> ZoneInfo:
    """HQ's time zone (``clearing config --timezone``): how times typed at HQ are read."""
    from central import finance

    return ZoneInfo(run_op(db_path, lambda conn: finance.clearing_config(conn, None)).timezone)


def _in_utc(fields: dict[str, Any], zone: ZoneInfo) -> dict[str, Any]:
    """Naive datetimes typed on the command line are HQ local time; the wire is UTC."""
    return {
        key: value.replace(tzinfo=zone).astimezone(UTC).isoformat()
        if isinstance(value, datetime)
        else value
        for key, value in fields.items()
    }


# -- any operation from JSON ------------------------------------------------------------------


@click.command("op")
@click.argument("request_file", type=click.File("rb"))
@_op_options
def op_command(request_file: Any, **opts: Any) -> None:
    """Run any operation request from a JSON file ('-' for stdin), e.g.
    {"op": "money.recharge", "card_uid": "04A1…", "amount_fen": 5000, "method": "cash"}."""
    from central.core.operations import AnyRequest

    try:
        fields = json.loads(request_file.read())
        tag = fields.pop("op")
    except (ValueError, KeyError, AttributeError):
        raise click.ClickException("the file must be a JSON object with an 'op' field") from None
    types = {str(t.__struct_config__.tag): t for t in AnyRequest.__args__}
    if tag not in types:
        raise click.ClickException(f"unknown op {tag!r}; one of {', '.join(sorted(types))}")
    if fields.get("request_id"):
        opts["request_id"] = opts["request_id"] or fields.pop("request_id")
    fields.pop("operator", None)
    fields.pop("source", None)
    execute(opts.pop("db_path"), types[tag], opts, **fields)


# -- cards ------------------------------------------------------------------------------------


@click.group()
def card() -> None:
    """Card lifecycle: issue, lost, unlost, reissue, cancel, freeze, unfreeze, show."""


@card.command("issue")
@click.argument("uid")
@click.argument("person_id")
@click.option("--type", "card_type", help="card type (its deposit is taken); default: policy's")
@click.option("--valid-to", type=click.DateTime(), help="card expiry (local time)")
@click.option("--deposit-method", type=click.Choice(["cash", "bank", "online"]), default="cash")
@click.option("--deposit-pay-ref")
@_op_options
def card_issue(
    uid: str,
    person_id: str,
    card_type: str | None,
    valid_to: datetime | None,
    deposit_method: str,
    deposit_pay_ref: str | None,
    **opts: Any,
) -> None:
    """发卡: bind card UID to PERSON_ID, taking the card type's deposit."""
    from central.core.cards import IssueCard

    execute(
        opts.pop("db_path"),
        IssueCard,
        opts,
        card_uid=uid.upper(),
        person_id=person_id,
        card_type=card_type,
        valid_to=valid_to,
        deposit_method=deposit_method,
        deposit_pay_ref=deposit_pay_ref,
    )


@card.command("lost")
@click.argument("uid")
@click.option("--at", type=click.DateTime(), help="when it was reported (local; default now)")
@_op_options
def card_lost(uid: str, at: datetime | None, **opts: Any) -> None:
    """挂失: the card is refused at every site from now (or --at)."""
    from central.core.cards import ReportLost

    execute(opts.pop("db_path"), ReportLost, opts, card_uid=uid.upper(), reported_at=at)


@card.command("unlost")
@click.argument("uid")
@click.option("--clear-for-reuse", is_flag=True, help="put the card in stock instead")
@_op_options
def card_unlost(uid: str, clear_for_reuse: bool, **opts: Any) -> None:
    """解挂: a found card back to its holder (or into stock)."""
    from central.core.cards import Unlost

    execute(
        opts.pop("db_path"), Unlost, opts, card_uid=uid.upper(), clear_for_reuse=clear_for_reuse
    )


@card.command("reissue")
@click.argument("old_uid")
@click.argument("new_uid")
@click.option("--type", "card_type")
@click.option("--deposit-method", type=click.Choice(["cash", "bank", "online"]), default="cash")
@click.option("--deposit-pay-ref")
@_op_options
def card_reissue(
    old_uid: str,
    new_uid: str,
    card_type: str | None,
    deposit_method: str,
    deposit_pay_ref: str | None,
    **opts: Any,
) -> None:
    """补卡: NEW_UID replaces OLD_UID for the same person (balance and tickets stay)."""
    from central.core.cards import Reissue

    execute(
        opts.pop("db_path"),
        Reissue,
        opts,
        card_uid=old_uid.upper(),
        new_card_uid=new_uid.upper(),
        card_type=card_type,
        deposit_method=deposit_method,
        deposit_pay_ref=deposit_pay_ref,
    )


@card.command("cancel")
@click.argument("uid")
@click.option("--recycle", is_flag=True, help="the card was handed back: put it in stock")
@click.option("--payout-method", type=click.Choice(["cash", "bank", "online"]), default="cash")
@_op_options
def card_cancel(uid: str, recycle: bool, payout_method: str, **opts: Any) -> None:
    """退卡/销户: pay back cash and deposit minus the fee; subsidy is forfeited."""
    from central.core.cancel import CancelCard

    execute(
        opts.pop("db_path"),
        CancelCard,
        opts,
        card_uid=uid.upper(),
        recycle=recycle,
        payout_method=payout_method,
    )


@card.command("freeze")
@click.argument("uid")
@click.option("--reason", default="")
@_op_options
def card_freeze(uid: str, reason: str, **opts: Any) -> None:
    """冻结: refused everywhere until unfrozen."""
    from central.core.cards import FreezeCard

    execute(opts.pop("db_path"), FreezeCard, opts, card_uid=uid.upper(), reason=reason)


@card.command("unfreeze")
@click.argument("uid")
@_op_options
def card_unfreeze(uid: str, **opts: Any) -> None:
    """解冻."""
    from central.core.cards import UnfreezeCard

    execute(opts.pop("db_path"), UnfreezeCard, opts, card_uid=uid.upper())


@card.command("show")
@click.argument("uid")
@DB_OPTION
def card_show(uid: str, db_path: DbTarget) -> None:
    """A card, its holder and blacklist state, as JSON."""
    from central import queries

    try:
        view = _run(db_path, lambda conn: queries.card_view(conn, uid))
    except queries.NotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(view, ensure_ascii=False, indent=2))


# -- money ------------------------------------------------------------------------------------


@click.group()
def money() -> None:
    """Recharge, purchase correction and refund, limits."""


@money.command("recharge")
@click.argument("uid")
@click.argument("amount", callback=_yuan, metavar="YUAN")
@click.option("--method", type=click.Choice(["cash", "bank", "online"]), default="cash")
@click.option("--pay-ref", help="payment reference (required for bank and online)")
@_op_options
def money_recharge(uid: str, amount: int, method: str, pay_ref: str | None, **opts: Any) -> None:
    """充值: add YUAN (100, 12.50 …) to the card holder's cash purse."""
    from central.core.money import Recharge

    execute(
        opts.pop("db_path"),
        Recharge,
        opts,
        card_uid=uid.upper(),
        amount_fen=amount,
        method=method,
        pay_ref=pay_ref,
    )


@money.command("correct")
@click.argument("record_id")
@click.argument("amount", callback=_yuan, metavar="YUAN")
@click.option("--reason", required=True)
@_op_options
def money_correct(record_id: str, amount: int, reason: str, **opts: Any) -> None:
    """消费更正: purchase RECORD_ID should have cost YUAN; the difference is credited."""
    from central.core.money import CorrectPurchase

    execute(
        opts.pop("db_path"),
        CorrectPurchase,
        opts,
        original_id=record_id,
        corrected_amount_fen=amount,
        reason=reason,
    )


@money.command("refund")
@click.argument("record_id")
@click.argument("amount", callback=_yuan, metavar="YUAN")
@click.option("--reason", required=True)
@_op_options
def money_refund(record_id: str, amount: int, reason: str, **opts: Any) -> None:
    """退款: give back YUAN of purchase RECORD_ID (goods returned)."""
    from central.core.money import RefundPurchase

    execute(
        opts.pop("db_path"),
        RefundPurchase,
        opts,
        original_id=record_id,
        amount_fen=amount,
        reason=reason,
    )


@money.command("limits")
@click.argument("uid")
@click.option("--per-sale", callback=_yuan, help="yuan per purchase (omit: no limit)")
@click.option("--per-day", callback=_yuan, help="yuan per day (omit: no limit)")
@_op_options
def money_limits(uid: str, per_sale: int | None, per_day: int | None, **opts: Any) -> None:
    """Spending limits of the card holder's account."""
    from central.core.money import SetLimits

    execute(
        opts.pop("db_path"),
        SetLimits,
        opts,
        card_uid=uid.upper(),
        txn_limit_fen=per_sale,
        daily_limit_fen=per_day,
    )


# -- tickets and subsidies --------------------------------------------------------------------


@click.group()
def ticket() -> None:
    """Count (计次) and period (期限) tickets."""


@ticket.command("sell")
@click.argument("uid")
@click.argument("ticket_id")
@click.option("--service", required=True, help="the service a terminal consumes it for")
@click.option("--price", callback=_yuan, required=True, metavar="YUAN")
@click.option("--uses", type=int, help="a count ticket: number of uses")
@click.option("--valid-from", type=click.DateTime())
@click.option("--valid-to", type=click.DateTime(), help="a period ticket: its end (local)")
@_op_options
def ticket_sell(
    uid: str,
    ticket_id: str,
    service: str,
    price: int,
    uses: int | None,
    valid_from: datetime | None,
    valid_to: datetime | None,
    **opts: Any,
) -> None:
    """Sell TICKET_ID (your id for it) to the card's holder, paid from the cash purse."""
    from central.core.tickets import SellTicket

    execute(
        opts.pop("db_path"),
        SellTicket,
        opts,
        card_uid=uid.upper(),
        ticket_id=ticket_id,
        kind="count" if uses is not None else "period",
        service=service,
        price_fen=price,
        uses=uses,
        valid_from=valid_from,
        valid_to=valid_to,
    )


@click.group()
def subsidy() -> None:
    """补贴 batches: grant, expire."""


def _persons(person: tuple[str, ...], persons_file: Any) -> list[str]:
    ids = list(person)
    if persons_file is not None:
        ids += [line.strip() for line in persons_file.read().splitlines() if line.strip()]
    if not ids:
        raise click.UsageError("name the persons: --person ID … or --persons-file FILE")
    return ids


@subsidy.command("grant")
@click.argument("amount", callback=_yuan, metavar="YUAN")
@click.option("--person", multiple=True, help="a person id (repeatable)")
@click.option("--persons-file", type=click.File(), help="one person id per line")
@click.option("--expires", type=click.DateTime(), help="usable until (local time)")
@click.option("--reset", is_flag=True, help="monthly reset: the unspent remainder expires first")
@_op_options
def subsidy_grant(
    amount: int,
    person: tuple[str, ...],
    persons_file: Any,
    expires: datetime | None,
    reset: bool,
    **opts: Any,
) -> None:
    """Grant YUAN of subsidy to each person; the request id is the batch id."""
    from central.core.subsidy import GrantSubsidy

    execute(
        opts.pop("db_path"),
        GrantSubsidy,
        opts,
        person_ids=_persons(person, persons_file),
        amount_fen=amount,
        expires_at=expires,
        mode="reset" if reset else "add",
    )


@subsidy.command("expire")
@click.option("--person", multiple=True)
@click.option("--persons-file", type=click.File())
@_op_options
def subsidy_expire(person: tuple[str, ...], persons_file: Any, **opts: Any) -> None:
    """Expire the remainders of these persons that are past their expiry."""
    from central.core.subsidy import ExpireSubsidy

    execute(opts.pop("db_path"), ExpireSubsidy, opts, person_ids=_persons(person, persons_file))


# -- people, audit, anomalies -----------------------------------------------------------------


@click.group()
def person() -> None:
    """Find people and see their purses, cards, tickets and ledger."""


@person.command("find")
@click.argument("query")
@DB_OPTION
def person_find(query: str, db_path: DbTarget) -> None:
    """By id, staff/member number, card UID or part of the name."""
    from central import queries

    for p in _run(db_path, lambda conn: queries.search_persons(conn, query)):
        click.echo(f"{p['id']:<16} {p.get('number', ''):<12} {p['name']}")


@person.command("show")
@click.argument("person_id")
@DB_OPTION
def person_show(person_id: str, db_path: DbTarget) -> None:
    """Everything about a person, as JSON."""
    from central import queries

    try:
        view = _run(db_path, lambda conn: queries.person_view(conn, person_id))
    except queries.NotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(view, ensure_ascii=False, indent=2))


@click.command("audit")
@click.option("--operator")
@click.option("--action", help="e.g. money.recharge")
@click.option("--target", help="e.g. card:04A1B2C3")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@DB_OPTION
def audit_command(
    operator: str | None,
    action: str | None,
    target: str | None,
    limit: int,
    as_json: bool,
    db_path: DbTarget,
) -> None:
    """The audit log, newest first."""
    from central import queries

    rows = _run(
        db_path,
        lambda conn: queries.audit_log(
            conn, operator=operator, action=action, target=target, limit=limit
        ),
    )
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for r in rows:
        why = f" ({r['reason_code']})" if r["reason_code"] else ""
        click.echo(
            f"{r['at'][:19]} {r['operator']:<12} {r['source']:<18} {r['action']:<18}"
            f" {r['target']:<24} {r['outcome']}{why}"
        )


@click.group()
def anomaly() -> None:
    """Anomalies: list, acknowledge, resolve."""


@anomaly.command("list")
@click.option("--state", type=click.Choice(["open", "acknowledged", "resolved"]))
@click.option("--kind")
@click.option("--site")
@click.option("--limit", type=click.IntRange(1, 500), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@DB_OPTION
def anomaly_list(
    state: str | None,
    kind: str | None,
    site: str | None,
    limit: int,
    as_json: bool,
    db_path: DbTarget,
) -> None:
    """Newest first."""
    from central import queries

    rows = _run(
        db_path,
        lambda conn: queries.anomalies(conn, state=state, kind=kind, site=site, limit=limit),
    )
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for r in rows:
        click.echo(
            f"#{r['id']:<5} {r['at'][:19]} {r['state']:<12} {r['kind']:<20} {r['site'] or '-':<14}"
            f" {json.dumps(r['detail'], ensure_ascii=False)}"
        )


def _set_anomaly(db_path: DbTarget, anomaly_id: int, state: Any, note: str, operator: str) -> None:
    from central import queries

    try:
        row = _run(
            db_path,
            lambda conn: queries.set_anomaly_state(
                conn, anomaly_id, state, operator=operator, source="hq:cli", note=note
            ),
        )
    except (queries.NotFoundError, queries.ConflictError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"anomaly #{row['id']} is {row['state']} ({row['acted_by']})")


@anomaly.command("ack")
@click.argument("anomaly_id", type=int)
@click.option("--note", default="")
@click.option("--operator", default=who)
@DB_OPTION
def anomaly_ack(anomaly_id: int, note: str, operator: str, db_path: DbTarget) -> None:
    """Acknowledge: someone is on it."""
    _set_anomaly(db_path, anomaly_id, "acknowledged", note, operator)


@anomaly.command("resolve")
@click.argument("anomaly_id", type=int)
@click.option("--note", required=True, help="what was done")
@click.option("--operator", default=who)
@DB_OPTION
def anomaly_resolve(anomaly_id: int, note: str, operator: str, db_path: DbTarget) -> None:
    """Resolve (final)."""
    _set_anomaly(db_path, anomaly_id, "resolved", note, operator)


# -- settings and tokens ----------------------------------------------------------------------


@click.group()
def settings() -> None:
    """HQ's money policy and card types."""


@settings.command("show")
@DB_OPTION
def settings_show(db_path: DbTarget) -> None:
    """As JSON."""
    from central import operations

    def read(conn: Any) -> dict[str, Any]:
        return {
            "policy": msgspec.to_builtins(operations.load_policy(conn)),
            "card_types": [
                msgspec.to_builtins(t) for t in operations.load_card_types(conn).values()
            ],
        }

    click.echo(json.dumps(_run(db_path, read), ensure_ascii=False, indent=2))


@settings.command("set")
@click.option("--cancel-fee", callback=_yuan, help="退卡手续费, yuan")
@click.option("--reissue-fee", callback=_yuan, help="补卡工本费, yuan")
@click.option("--recharge-cap", callback=_yuan, help="largest single recharge, yuan")
@click.option("--default-card-type")
@click.option(
    "--freeze-on-negative/--no-freeze-on-negative",
    default=None,
    help="freeze a card whose balance goes below zero once offline sales are merged",
)
@click.option("--clock-skew-seconds", type=click.IntRange(1), help="terminal clock tolerance")
@click.option(
    "--card-type",
    "card_types",
    multiple=True,
    metavar="NAME=DEPOSIT_YUAN",
    help="replace the card types (repeatable), e.g. --card-type standard=20",
)
@click.option("--operator", default=who)
@DB_OPTION
def settings_set(
    cancel_fee: int | None,
    reissue_fee: int | None,
    recharge_cap: int | None,
    default_card_type: str | None,
    freeze_on_negative: bool | None,
    clock_skew_seconds: int | None,
    card_types: tuple[str, ...],
    operator: str,
    db_path: DbTarget,
) -> None:
    """Change the policy and/or card types (audited)."""
    from central import operations
    from central.core.state import CardType

    types: list[CardType] | None = None
    if card_types:
        types = []
        for spec in card_types:
            name, eq, deposit = spec.partition("=")
            if not eq or not name:
                raise click.BadParameter(f"{spec!r}: use NAME=DEPOSIT_YUAN")
            types.append(CardType(name=name, deposit_fen=_yuan(None, None, deposit) or 0))

    def change(conn: Any) -> None:
        policy = operations.load_policy(conn)
        new = msgspec.structs.replace(
            policy,
            **{
                k: v
                for k, v in {
                    "cancel_fee_fen": cancel_fee,
                    "reissue_fee_fen": reissue_fee,
                    "recharge_cap_fen": recharge_cap,
                    "default_card_type": default_card_type,
                    "freeze_on_negative": freeze_on_negative,
                    "clock_skew_s": clock_skew_seconds,
                }.items()
                if v is not None
            },
        )
        operations.change_settings(
            conn, policy=new, card_types=types, operator=operator, source="hq:cli"
        )

    try:
        _run(db_path, change)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("settings changed")


@click.group()
def token() -> None:
    """API tokens (Authorization: Bearer …) for integrations and scripts."""


@token.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["admin", "operator", "finance", "technician", "auditor"]),
    required=True,
)
@click.option("--operator", default=who, show_default="login user")
@DB_OPTION
def token_add(name: str, role: Any, operator: str, db_path: DbTarget) -> None:
    """Create a token; it is printed once and never stored."""
    from central import queries

    try:
        secret = _run(db_path, lambda conn: queries.add_token(conn, name, role, operator=operator))
    except queries.ConflictError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(secret)


@token.command("list")
@DB_OPTION
def token_list(db_path: DbTarget) -> None:
    """Names, roles, created and revoked times (never the secrets)."""
    from central import queries

    for t in _run(db_path, queries.tokens):
        state = f"revoked {t['revoked'][:19]}" if t["revoked"] else "active"
        click.echo(f"{t['name']:<24} {t['role']:<10} {t['created'][:19]} {state}")


@token.command("revoke")
@click.argument("name")
@click.option("--operator", default=who, show_default="login user")
@DB_OPTION
def token_revoke(name: str, operator: str, db_path: DbTarget) -> None:
    """Revoke a token at once."""
    from central import queries

    try:
        _run(db_path, lambda conn: queries.revoke_token(conn, name, operator=operator))
    except queries.NotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"token {name} revoked")


# -- imports ----------------------------------------------------------------------------------


@click.group("import")
def import_group() -> None:
    """Bring data from the previous system."""


@import_group.command("members")
@click.argument("member_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="check and report; change nothing")
@click.option(
    "--batch",
    "batch_id",
    help="import batch id (default: from the file's content, so a re-run is the same batch)",
)
@click.option(
    "--timezone", default="Asia/Shanghai", show_default=True, help="for dates in the file"
)
@click.option("--json", "as_json", is_flag=True, help="the report as JSON")
@click.option("--operator", default=who, show_default="login user")
@DB_OPTION
def import_members(
    member_file: Path,
    dry_run: bool,
    batch_id: str | None,
    timezone: str,
    as_json: bool,
    operator: str,
    db_path: DbTarget,
) -> None:
    """Persons, cards, opening balances and tickets from a CSV (UTF-8 or GBK) or XLSX
    file. All or nothing; exits 1 if the file has errors (nothing is imported)."""
    from central.core.members import report_json, report_text
    from central.imports import import_members as run_import

    data = member_file.read_bytes()
    try:
        plan = _run(
            db_path,
            lambda conn: run_import(
                conn,
                data,
                member_file.name,
                operator=operator,
                batch_id=batch_id,
                dry_run=dry_run,
                timezone=timezone,
            ),
        )
    except ValueError as exc:  # a bad --batch or --timezone
        raise click.ClickException(str(exc)) from None
    click.echo(report_json(plan) if as_json else report_text(plan))
    if not as_json:
        verdict = "dry run: nothing changed" if dry_run else "imported" if plan.ok else "refused"
        click.echo(f"{verdict} (batch {plan.batch_id})")
    if not plan.ok:
        sys.exit(1)


# -- clearing and reconciliation --------------------------------------------------------------


def _day(_ctx: Any, _param: Any, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use YYYY-MM-DD") from None


@click.group()
def clearing() -> None:
    """日结: daily clearing per site and business day, and the 通存通兑 settlement."""


@clearing.command("day")
@click.option("--date", "day", callback=_day, help="business day YYYY-MM-DD (default: yesterday)")
@click.option("--site", help="one site (default: every site and HQ)")
@click.option("--hq", is_flag=True, help="HQ's own desk only")
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path),
              help="write the Excel-friendly CSV (UTF-8 with BOM) there")  # fmt: skip
@DB_OPTION
def clearing_day(
    day: date | None,
    site: str | None,
    hq: bool,
    as_json: bool,
    csv_file: Path | None,
    db_path: DbTarget,
) -> None:
    """Clear a business day (again: the same report, or a new revision if late offline
    records have arrived)."""
    from central import finance
    from central.core.clearing import to_csv, to_json

    when = day or (datetime.now(hq_zone(db_path)) - timedelta(days=1)).date()

    def run(conn: Any) -> list[Any]:
        if hq:
            return [finance.clear(conn, None, when)]
        if site:
            return [finance.clear(conn, site, when)]
        return finance.clear_all(conn, when)

    reports = _run(db_path, run)
    if csv_file is not None:
        csv_file.write_bytes(to_csv(reports))
    if as_json:
        click.echo("[" + ",".join(to_json(r).decode() for r in reports) + "]")
        return
    click.echo(
        f"{'site':<16} {'rev':>3} {'taken in':>12} {'served':>12} {'net':>12} "
        f"{'recharge':>12} {'purchases':>12} {'subsidy used':>12}"
    )
    for r in reports:
        t = r.totals
        click.echo(
            f"{r.site or 'HQ':<16} {r.revision:>3} {format_yuan(t.taken_in_fen):>12}"
            f" {format_yuan(t.consumption_fen):>12} {format_yuan(t.net_position_fen):>12}"
            f" {format_yuan(t.recharge_fen):>12} {format_yuan(t.purchase_fen):>12}"
            f" {format_yuan(t.subsidy_used_fen):>12}"
        )
        for revision in r.revisions:
            click.echo(f"    revision {revision.revision}: {revision.because}")


@clearing.command("settle")
@click.option("--from", "first", callback=_day, required=True)
@click.option("--to", "last", callback=_day, required=True)
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path))
@DB_OPTION
def clearing_settle(first: date, last: date, csv_file: Path | None, db_path: DbTarget) -> None:
    """HQ's settlement list: what HQ pays each site, or the site remits."""
    from central import finance
    from central.core.clearing import settlement_csv

    result = _run(db_path, lambda conn: finance.settlement(conn, first, last))
    if csv_file is not None:
        csv_file.write_bytes(settlement_csv(result))
    for line in result.lines:
        click.echo(
            f"{line.site:<16} {line.direction:<18} {format_yuan(abs(line.net_fen)):>12}"
            f"  (served {format_yuan(line.consumption_fen)},"
            f" taken in {format_yuan(line.taken_in_fen)})"
        )
    click.echo(f"{'HQ':<16} net {format_yuan(result.hq_net_fen)}")


@clearing.command("config")
@click.option("--cutoff-hour", type=click.IntRange(0, 23),
              help="every site's business day starts at this local hour")  # fmt: skip
@click.option("--timezone", help="HQ's time zone (its desk, and times typed at HQ)")
@click.option("--operator", default=who, show_default="login user")
@DB_OPTION
def clearing_config(
    cutoff_hour: int | None, timezone: str | None, operator: str, db_path: DbTarget
) -> None:
    """Show or change the business day (sites keep their own time zone)."""
    from central import finance

    def change(conn: Any) -> Any:
        if cutoff_hour is None and timezone is None:
            return finance.clearing_config(conn, None)
        return finance.set_clearing_config(
            conn, cutoff_hour=cutoff_hour, timezone=timezone, operator=operator
        )

    try:
        config = _run(db_path, change)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"business day starts at {config.cutoff_hour:02d}:00 local time;"
        f" HQ time zone {config.timezone}"
    )


@click.command("reconcile")
@click.argument("statement", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--apply", is_flag=True, help="credit proven 单边账 once and void unproven ones")
@click.option("--grace-minutes", type=int, default=30, show_default=True)
@click.option("--timezone", default="Asia/Shanghai", show_default=True)
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--operator", default=who, show_default="login user")
@DB_OPTION
def reconcile_command(
    statement: Path,
    apply: bool,
    grace_minutes: int,
    timezone: str,
    csv_file: Path | None,
    operator: str,
    db_path: DbTarget,
) -> None:
    """对账: match a bank or payment-channel statement CSV against onecard's payments."""
    from central import finance
    from central.core.reconcile import StatementError, to_csv

    data = statement.read_bytes()
    try:
        run = _run(
            db_path,
            lambda conn: finance.reconcile_statement(
                conn,
                data,
                statement.name,
                operator=operator,
                source="hq:cli",
                apply=apply,
                grace=timedelta(minutes=grace_minutes),
                timezone=timezone,
            ),
        )
    except StatementError as exc:
        raise click.ClickException(f"{statement.name}: {exc}") from None
    if csv_file is not None:
        csv_file.write_bytes(to_csv(run.result))
    s = run.result.summary
    click.echo(
        f"statement lines {s.statement_lines} ({s.statement_errors} unreadable),"
        f" onecard payments {s.onecard_payments}"
    )
    click.echo(
        f"matched {s.matched}, amount differs {s.amount_differs},"
        f" only in statement {s.only_in_statement}, only in onecard {s.only_in_onecard}"
    )
    for item in run.result.items:
        if item.resolution != "ok":
            click.echo(
                f"  {item.pay_ref:<24} {item.category:<18} {item.resolution:<12} {item.reason}"
            )
    for error in run.statement_errors:
        click.echo(f"  {error}")
    if apply:
        click.echo(f"applied: credited {len(run.credited)}, voided {len(run.voided)}")
    else:
        click.echo(
            f"not applied (run again with --apply): {s.credit_once} to credit, {s.void} to void"
        )


COMMANDS = (
    clearing,
    reconcile_command,
    import_group,
    op_command,
    card,
    money,
    ticket,
    subsidy,
    person,
    audit_command,
    anomaly,
    settings,
    token,
)
