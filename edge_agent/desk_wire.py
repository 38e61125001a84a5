"""The desk socket's messages: what ``onecard-edge desk`` asks the daemon, and its replies.

A message on the wire is a 4-byte big-endian length then that many bytes of JSON
(:data:`MAX_MESSAGE` at most); requests are tagged by ``op``. The daemon side is
:mod:`edge_agent.desk`; :func:`call` is the client.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from protocol import messages as rec

#: Largest message either side accepts (a history reply of 200 entries is ~40 KiB).
MAX_MESSAGE = 256 * 1024

RequestId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,56}\Z")]
Operator = Annotated[str, Meta(min_length=1, max_length=64)]


class _Request(Struct, tag_field="op", kw_only=True, frozen=True, forbid_unknown_fields=True):
    uid: rec.CardUid


class CardInfo(_Request, tag="info", kw_only=True, frozen=True):
    """The card, its holder and its purses as this site sees them."""


class CardHistory(_Request, tag="history", kw_only=True, frozen=True):
    """The card's most recent records at this site, newest first."""

    limit: Annotated[int, Meta(ge=1, le=200)] = 20


class IssueCard(_Request, tag="issue", kw_only=True, frozen=True):
    """发卡: bind the card to ``person_id`` (an intent for central)."""

    request_id: RequestId
    person_id: rec.Name
    operator: Operator


class DeskRecharge(_Request, tag="recharge", kw_only=True, frozen=True):
    """Cash taken at the desk, credited to the card's cash purse once."""

    request_id: RequestId
    amount_fen: Annotated[int, Meta(ge=1, le=rec.MAX_FEN)]
    operator: Operator


class ReportLost(_Request, tag="lost", kw_only=True, frozen=True):
    """挂失: the card is refused here at once; an intent for central."""

    request_id: RequestId
    operator: Operator
    reason: rec.Text = ""


DeskRequest = CardInfo | CardHistory | IssueCard | DeskRecharge | ReportLost
Change = IssueCard | DeskRecharge | ReportLost


class CardView(Struct, kw_only=True, frozen=True):
    """A card as the desk shows it. Purses are central's balance plus pending deltas."""

    uid: str
    known: bool = False
    status: str | None = None
    person_id: str | None = None
    person_name: str | None = None
    person_number: str | None = None
    blacklisted: bool = False
    #: Issued at this desk; central's feed has not confirmed it yet.
    unconfirmed: bool = False
    cash_fen: int = 0
    subsidy_fen: int = 0
    balance_fen: int = 0
    #: This site's money effects central's balance does not include yet.
    pending_fen: int = 0
    #: The site is offline (central unreachable past the configured time).
    offline: bool = False


class HistoryEntry(Struct, kw_only=True, frozen=True):
    """One record of the card at this site."""

    record_id: str
    kind: str
    at: datetime
    #: Money moved for the holder, signed (+ credited); None when none moved.
    amount_fen: int | None = None
    ok: bool | None = None
    detail: str = ""
    #: Central has acknowledged the record.
    synced: bool = False
    offline: bool = False


class DeskReply(Struct, kw_only=True, frozen=True):
    """The answer to any desk request. Act on ``ok``; ``code`` says why."""

    ok: bool
    code: str
    message: str = ""
    card: CardView | None = None
    history: list[HistoryEntry] = msgspec.field(default_factory=list)
    #: The outbox records this operation wrote.
    records: list[str] = msgspec.field(default_factory=list)
    #: The answer stored for this request id earlier (nothing was done again).
    replayed: bool = False


_request_decoder = msgspec.json.Decoder(DeskRequest)
_reply_decoder = msgspec.json.Decoder(DeskReply)
_json = msgspec.json.Encoder()


class DeskProtocolError(Exception):
    """A desk message that cannot be read (too long, cut short, not JSON of a request)."""


class DeskUnavailableError(Exception):
    """The daemon's desk socket cannot be reached, or did not answer; the message says what
    to check. ``sent``: the request may have reached the daemon (resend it with the same
    ``request_id`` to learn its answer); False: it certainly did not."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


def encode_message(message: Struct) -> bytes:
    """One message on the wire: length prefix and JSON."""
    data = _json.encode(message)
    return len(data).to_bytes(4, "big") + data


async def read_message(reader: asyncio.StreamReader) -> bytes | None:
    """The next message's JSON, or None at a clean end of stream."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise DeskProtocolError("connection closed inside a length prefix") from None
        return None
    size = int.from_bytes(head, "big")
    if size > MAX_MESSAGE:
        raise DeskProtocolError(f"message of {size} bytes (at most {MAX_MESSAGE})")
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise DeskProtocolError("connection closed inside a message") from None


def decode_request(data: bytes) -> DeskRequest:
    """A request from its JSON; :class:`DeskProtocolError` naming the bad field otherwise."""
    try:
        request: DeskRequest = _request_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise DeskProtocolError(str(exc)) from None
    return request


async def call(path: Path, request: DeskRequest, *, within: float = 15.0) -> DeskReply:
    """Send one request to the daemon at ``path`` and return its reply.

    Raises :class:`DeskUnavailableError` when the socket cannot be reached (daemon not
    running, desk not enabled, no permission) or the daemon did not answer in time — a
    change request may then have been recorded: resend it with the same ``request_id``.
    """
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_unix_connection(str(path))
    except FileNotFoundError:
        raise DeskUnavailableError(
            f"{path}: no desk socket — is onecard-edge running with [desk] enabled = true?",
            sent=False,
        ) from None
    except PermissionError:
        raise DeskUnavailableError(
            f"{path}: permission denied — add this user to the daemon's group (onecard)",
            sent=False,
        ) from None
    except (ConnectionRefusedError, TimeoutError) as exc:
        raise DeskUnavailableError(
            f"{path}: the daemon does not answer ({exc!r})", sent=False
        ) from None
    try:
        async with asyncio.timeout(within):
            writer.write(encode_message(request))
            await writer.drain()
            data = await read_message(reader)
    except (TimeoutError, OSError, DeskProtocolError) as exc:
        raise DeskUnavailableError(
            f"{path}: no reply from the daemon ({exc!r})", sent=True
        ) from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if data is None:
        raise DeskUnavailableError(
            f"{path}: the daemon closed the connection without a reply", sent=True
        )
    try:
        return _reply_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise DeskUnavailableError(f"{path}: unreadable reply ({exc})", sent=True) from None


def yuan(fen: int) -> str:
    """Fen as yuan with two decimals (``1250`` → ``"12.50"``), from integers only."""
    sign = "-" if fen < 0 else ""
    whole, part = divmod(abs(fen), 100)
    return f"{sign}{whole}.{part:02d}"


def history_entry(record: rec.Record, *, synced: bool) -> HistoryEntry:
    """What the desk shows of one record: the money it moved and a short detail."""
    amount: int | None = None
    ok: bool | None = None
    detail = ""
    if isinstance(record, rec.Purchase):
        ok = record.approved
        amount = -(record.cash_fen + record.subsidy_fen) if ok else None
        detail = record.reason
    elif isinstance(record, rec.RechargeCommit):
        ok, amount, detail = True, record.amount, record.pay_ref
    elif isinstance(record, rec.RechargePrepare):
        detail = f"{record.method} ¥{yuan(record.amount)} prepared ({record.pay_ref})"
    elif isinstance(record, rec.RechargeAbort):
        detail = f"aborted: {record.reason}"
    elif isinstance(record, rec.Refund):
        ok, amount, detail = True, record.amount, record.reason
    elif isinstance(record, rec.Correction):
        ok, amount, detail = True, record.delta, record.reason
    elif isinstance(record, rec.CardIntent):
        detail = f"{record.action} by {record.operator}"
        if record.person_id:
            detail += f" for {record.person_id}"
    elif isinstance(record, rec.DoorAccess):
        ok, detail = record.granted, f"door {record.door}: {record.reason}"
    elif isinstance(record, rec.AttendancePunch):
        ok, detail = record.accepted, f"{record.punch}: {record.reason}"
    elif isinstance(record, rec.TicketUse):
        ok, detail = record.approved, f"ticket {record.ticket_id}: {record.reason}"
    return HistoryEntry(
        record_id=record.id,
        kind=rec.record_kind(record),
        at=record.at,
        amount_fen=amount,
        ok=ok,
        detail=detail,
        synced=synced,
        offline=record.offline,
    )
