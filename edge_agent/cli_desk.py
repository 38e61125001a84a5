"""``onecard-edge desk …``: card operations at a branch's service desk, card in hand.

Each command waits for a card on the desk's PC/SC reader, reads its UID, asks the running
daemon (its desk socket, :mod:`edge_agent.desk`) what it knows of the card, shows what it
will do, asks for confirmation (``--yes`` skips it), then — only if the *same* card is
still on the reader — sends the operation. A card pulled or swapped before that point
aborts the command: nothing is sent, nothing is recorded. Once sent, the daemon records the
operation in one transaction before answering, so a card pulled afterwards changes nothing.

Amounts: ``--yuan 12.50`` (元, two decimals at most) or ``--fen 1250`` (分), exactly one.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import msgspec

from central.core.amounts import AmountError, format_yuan, parse_yuan
from edge_agent.adapters.pcsc_reader import PcscReader, PresentedCard, ReaderError
from edge_agent.cli_options import CONFIG_OPTION, load_or_fail
from edge_agent.config import EdgeConfig
from edge_agent.desk_wire import (
    CardHistory,
    CardInfo,
    CardView,
    DeskRecharge,
    DeskReply,
    DeskRequest,
    DeskUnavailableError,
    IssueCard,
    ReportLost,
    call,
)

#: Attempts to deliver a change when the daemon does not answer (same request id each time).
SEND_ATTEMPTS = 3


def _options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            CONFIG_OPTION,
            click.option("--reader", help="PC/SC reader name (default: [desk] reader, or first)"),
            click.option(
                "--wait",
                type=click.FloatRange(0.1, 3600),
                default=60.0,
                show_default=True,
                help="seconds to wait for a card",
            ),
            click.option("--json", "as_json", is_flag=True, help="print the reply as JSON"),
        ]
    ):
        command = option(command)
    return command


def _change_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--yes", "-y", is_flag=True, help="do not ask before sending")(command)
    command = click.option(
        "--request-id", help="reuse to retry an operation whose answer was lost (default: new)"
    )(command)
    command = click.option("--operator", help="recorded as the operator (default: [desk])")(command)
    return _options(command)


@click.group()
def desk() -> None:
    """Service desk: issue, recharge, read, report lost — with the card on the PC/SC reader.

    \b
    Talks to the running daemon ([desk] enabled = true in edge.toml); works while HQ is
    unreachable (the operations go to HQ as intents when the link returns).
      onecard-edge desk readers
      onecard-edge desk read
      onecard-edge desk issue --person M3001
      onecard-edge desk recharge --yuan 50
      onecard-edge desk lost --reason "lost on the bus"
    """


@desk.command()
@CONFIG_OPTION
def readers(config_path: Path) -> None:
    """List PC/SC readers and whether a card is on each (is pcscd seeing the reader?)."""
    config = load_or_fail(config_path)
    try:
        states = asyncio.run(PcscReader(config.desk.reader).readers())
    except ReaderError as exc:
        raise click.ClickException(f"{exc.code}: {exc}") from None
    if not states:
        raise click.ClickException("no PC/SC reader is connected (is it plugged in? lsusb)")
    for state in states:
        mark = "*" if state.name == (config.desk.reader or states[0].name) else " "
        card = "card present" if state.card_present else "empty"
        click.echo(f"{mark} {state.name}  ({card})")


@desk.command()
@_options
@click.option("--limit", type=click.IntRange(1, 200), default=10, show_default=True)
def read(config_path: Path, reader: str | None, wait: float, as_json: bool, limit: int) -> None:
    """Show the card: holder, status, balance (HQ's + not yet synced) and recent records."""
    _show_card(config_path, reader, wait, as_json, limit)


@desk.command()
@_options
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
def history(config_path: Path, reader: str | None, wait: float, as_json: bool, limit: int) -> None:
    """The card's recent records at this site (purchases, recharges, doors, desk work)."""
    _show_card(config_path, reader, wait, as_json, limit)


@desk.command()
@_change_options
@click.option("--person", "person_id", required=True, help="the person's id (e.g. M3001)")
def issue(person_id: str, **common: Any) -> None:
    """Issue the card on the reader to a person (发卡). Usable here at once; HQ confirms."""

    def build(card: PresentedCard, request_id: str, operator: str) -> DeskRequest:
        return IssueCard(
            uid=card.uid, request_id=request_id, person_id=person_id, operator=operator
        )

    _change(common, build, lambda uid: f"issue card {uid} to person {person_id}")


@desk.command()
@_change_options
@click.option("--yuan", help="amount in yuan (元), e.g. 50 or 12.50")
@click.option("--fen", type=click.IntRange(1), help="amount in fen (分), e.g. 1250")
def recharge(yuan: str | None, fen: int | None, **common: Any) -> None:
    """Credit cash taken at the desk to the card (exactly once per request)."""
    amount = _amount(yuan, fen)

    def build(card: PresentedCard, request_id: str, operator: str) -> DeskRequest:
        return DeskRecharge(
            uid=card.uid, request_id=request_id, amount_fen=amount, operator=operator
        )

    _change(common, build, lambda uid: f"credit ¥{format_yuan(amount)} cash to card {uid}")


@desk.command()
@_change_options
@click.option("--reason", default="", help="noted with the report")
def lost(reason: str, **common: Any) -> None:
    """Report the card lost (挂失): refused at this site at once, then everywhere."""

    def build(card: PresentedCard, request_id: str, operator: str) -> DeskRequest:
        return ReportLost(uid=card.uid, request_id=request_id, operator=operator, reason=reason)

    _change(common, build, lambda uid: f"report card {uid} lost")


# -- the flow ----------------------------------------------------------------------------------


def _amount(yuan: str | None, fen: int | None) -> int:
    if (yuan is None) == (fen is None):
        raise click.UsageError("give the amount once: --yuan 12.50 or --fen 1250")
    if fen is not None:
        return fen
    try:
        return parse_yuan(yuan or "")
    except AmountError as exc:
        raise click.BadParameter(str(exc), param_hint="--yuan") from None


def _status(text: str) -> None:
    click.echo(text, err=True)


def _wait_card(config: EdgeConfig, reader_name: str | None, wait: float) -> PresentedCard:
    reader = PcscReader(reader_name or config.desk.reader, on_status=_status)
    try:
        card = asyncio.run(reader.wait_for_card(wait))
    except ReaderError as exc:
        raise click.ClickException(f"{exc.code}: {exc}") from None
    _status(f"card {card.uid} on {card.reader}")
    return card


def _ask(config: EdgeConfig, request: DeskRequest) -> DeskReply:
    try:
        return asyncio.run(call(config.desk.socket, request))
    except DeskUnavailableError as exc:
        raise click.ClickException(str(exc)) from None


def _show_card(
    config_path: Path, reader: str | None, wait: float, as_json: bool, limit: int
) -> None:
    config = load_or_fail(config_path)
    card = _wait_card(config, reader, wait)
    reply = _ask(config, CardHistory(uid=card.uid, limit=limit))
    if as_json:
        click.echo(msgspec.json.encode(reply).decode())
    else:
        _print_card(reply.card)
        click.echo("recent records:" if reply.history else "no records of this card here")
        for entry in reply.history:
            amount = "" if entry.amount_fen is None else _signed(entry.amount_fen)
            state = "synced" if entry.synced else "not yet at HQ"
            when = entry.at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
            click.echo(f"  {when}  {entry.kind:<16} {amount:>10}  {entry.detail}  ({state})")
    if not reply.ok:
        raise click.exceptions.Exit(1)


def _signed(fen: int) -> str:
    return ("+" if fen > 0 else "") + format_yuan(fen)


def _print_card(view: CardView | None) -> None:
    if view is None:
        return
    if not view.known:
        listed = " (on the blacklist)" if view.blacklisted else ""
        click.echo(f"card {view.uid}: not known at this site{listed}")
        return
    who = view.person_name or "?"
    number = f", {view.person_number}" if view.person_number else ""
    note = "  (issued here, HQ has not confirmed yet)" if view.unconfirmed else ""
    click.echo(f"card {view.uid}  {view.status}  {who} ({view.person_id}{number}){note}")
    click.echo(
        f"balance ¥{format_yuan(view.balance_fen)}  (cash ¥{format_yuan(view.cash_fen)},"
        f" subsidy ¥{format_yuan(view.subsidy_fen)}; ¥{format_yuan(view.pending_fen)}"
        " of it not yet at HQ)"
    )
    if view.offline:
        click.echo("site is OFFLINE: HQ will see this when the link returns")


def _change(
    common: dict[str, Any],
    build: Callable[[PresentedCard, str, str], DeskRequest],
    describe: Callable[[str], str],
) -> None:
    config = load_or_fail(common["config_path"])
    card = _wait_card(config, common["reader"], common["wait"])
    info = _ask(config, CardInfo(uid=card.uid))
    if not common["as_json"]:
        _print_card(info.card)
    operator = common["operator"] or config.desk.operator or _who()
    request_id = common["request_id"] or uuid.uuid4().hex
    request = build(card, request_id, operator)
    click.echo(f"will {describe(card.uid)} (operator {operator}, request {request_id})")
    if not common["yes"]:
        click.confirm("go ahead?", abort=True)
    reader = PcscReader(card.reader)
    try:
        asyncio.run(reader.check_still(card))
    except ReaderError as exc:
        raise click.ClickException(
            f"{exc.code}: {exc} — aborted: nothing was sent, nothing recorded"
        ) from None
    reply = _send(config, request)
    if common["as_json"]:
        click.echo(msgspec.json.encode(reply).decode())
    elif reply.ok:
        again = " (already done before: nothing done again)" if reply.replayed else ""
        click.echo(f"OK: {reply.message}{again}")
        _print_card(reply.card)
    if not reply.ok:
        raise click.ClickException(f"refused ({reply.code}): {reply.message}")


def _send(config: EdgeConfig, request: DeskRequest) -> DeskReply:
    """Send, retrying with the same request id when the daemon did not answer (it records a
    request once, whichever attempt reaches it)."""
    for attempt in range(1, SEND_ATTEMPTS + 1):
        try:
            return asyncio.run(call(config.desk.socket, request))
        except DeskUnavailableError as exc:
            if not exc.sent:
                raise click.ClickException(f"{exc} — nothing was sent, nothing recorded") from None
            if attempt == SEND_ATTEMPTS:
                raise click.ClickException(
                    f"{exc} — it may have been recorded: to find out, run the command again"
                    f" with --request-id {getattr(request, 'request_id', '')}"
                ) from None
            _status(f"no answer, asking again with the same request id ({exc})")
    raise AssertionError("unreachable")  # pragma: no cover


def _who() -> str:
    """The login user (the sudo caller under sudo): who is at the desk."""
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's bare uid)
        return "desk"
