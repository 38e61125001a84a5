"""Every MQTT payload of the architecture brief, as strict msgspec Structs.

Conventions, enforced by decoding rather than by comment:

- JSON on the wire; every message carries a schema version ``v`` (currently 1). A payload
  with a ``v`` this code does not know is rejected, never guessed at.
- Unknown fields, missing fields and wrongly typed values are errors naming the field
  (:class:`~protocol.errors.MessageError` with ``path`` such as ``$.records[2].amount``).
- Money is integer fen (分). There are no floats anywhere near money.
- Times are timezone-aware UTC (``2026-11-23T04:05:06.123Z``); any other offset is rejected,
  so nobody ever has to ask which clock a time was read from.

Decode with the ``decode_*`` functions; encode any message with :func:`encode`.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from protocol.errors import MessageError
from protocol.topics import SITE_ID_PATTERN

SCHEMA_VERSION = 1
#: Hard cap on an MQTT payload we are willing to decode (before any parsing).
MAX_PAYLOAD_BYTES = 1 << 20
#: Most records in one uplink batch (the edge plans smaller batches; see the sync docs).
MAX_BATCH_RECORDS = 500
#: Most changes in one feed or blacklist message; bigger snapshots are sent in parts.
MAX_CHANGES = 5000
#: ¥10,000,000.00 — no single amount in a one-card system comes near this.
MAX_FEN = 1_000_000_000

# --- field types -------------------------------------------------------------------------

Fen = Annotated[int, Meta(ge=0, le=MAX_FEN, description="non-negative amount in fen (分)")]
SignedFen = Annotated[int, Meta(ge=-MAX_FEN, le=MAX_FEN, description="signed amount in fen")]
Seq = Annotated[int, Meta(ge=1, le=2**63 - 1)]
SeqOrZero = Annotated[int, Meta(ge=0, le=2**63 - 1)]
#: A site database generation: its creation time in Unix ms (a recreated database gets a new one).
Epoch = Annotated[int, Meta(ge=1, le=2**53 - 1)]
Version = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Count = Annotated[int, Meta(ge=0, le=2**31 - 1)]
SiteId = Annotated[str, Meta(pattern=SITE_ID_PATTERN)]
TerminalId = Annotated[str, Meta(pattern=r"^[A-Z0-9][A-Z0-9_-]{0,31}\Z")]
#: 4-, 7- or 10-byte ISO 14443 UIDs (and 8-byte FeliCa IDm), upper-case hex, no separators.
CardUid = Annotated[str, Meta(pattern=r"^(?:[0-9A-F]{2}){4,10}\Z")]
RecordId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,95}\Z")]
#: A payment reference from a bank, kiosk or online channel: printable ASCII, no spaces.
PayRef = Annotated[str, Meta(pattern=r"^[\x21-\x7e]{1,64}\Z")]
#: A terminal's own persisted record number (u32).
TermRecNo = Annotated[int, Meta(ge=0, le=2**32 - 1)]
Name = Annotated[str, Meta(min_length=1, max_length=64)]
Text = Annotated[str, Meta(max_length=500)]
ReasonCode = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,31}\Z")]
Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}\Z")]
UtcTime = Annotated[datetime, Meta(tz=True)]

TerminalKind = Literal["door", "attendance", "pos", "recharge", "desk"]
#: Uplink lanes, each its own contiguous seq stream per epoch: 0 carries card-state intents
#: and money (synced first after an outage, and what balances' ``covers`` refer to), 1 the
#: rest (door, attendance, events).
Lane = Literal[0, 1]
LANES: tuple[Lane, Lane] = (0, 1)
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
RechargeMethod = Literal["cash", "bank", "online"]

_ZERO = timedelta(0)


def _require_utc(**times: datetime | None) -> None:
    for name, value in times.items():
        if value is not None and value.utcoffset() != _ZERO:
            raise ValueError(f"`{name}` must be a UTC time (…Z), got {value.isoformat()}")


class Message(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Base of every payload: keyword-only, immutable, strict about unknown fields."""

    v: Literal[1] = 1


# --- records (edge → central, inside a RecordBatch) ----------------------------------------


class Record(Message, tag_field="kind", kw_only=True, frozen=True):
    """Something that happened at a site, written to the edge's outbox before anyone was told.

    ``id`` is globally unique; central drops a second copy of the same id and raises an
    anomaly if the same id arrives with different content. ``seq`` is the record's position
    in the site's outbox for the current epoch. ``at`` is when it happened by the terminal's
    clock (or the edge's, if the terminal has none); ``received_at`` is the edge's clock when
    it took the record, so central can spot clock skew.
    """

    id: RecordId
    seq: Seq
    site: SiteId
    terminal: TerminalId | None = None
    term_rec: TermRecNo | None = None
    at: UtcTime
    received_at: UtcTime
    offline: bool
    card_uid: CardUid | None = None

    def __post_init__(self) -> None:
        _require_utc(at=self.at, received_at=self.received_at)


class DoorAccess(Record, tag="door.access", kw_only=True, frozen=True):
    """A card presented at a door reader, and whether the door opened."""

    door: Name
    direction: Literal["in", "out"] | None = None
    granted: bool
    reason: ReasonCode
    blacklist_version: Version


class TerminalEvent(Record, tag="terminal.event", kw_only=True, frozen=True):
    """Something a terminal reported that is not a card transaction."""

    event: Literal[
        "door_forced",
        "door_held",
        "tamper",
        "low_paper",
        "power_fail",
        "reader_fault",
        "auth_failed",
        "online",
        "offline",
        "remote_open",
    ]
    door: Name | None = None
    detail: Text = ""


class AttendancePunch(Record, tag="attendance.punch", kw_only=True, frozen=True):
    """A card presented at an attendance clock."""

    punch: Literal["in", "out", "auto"] = "auto"
    accepted: bool
    reason: ReasonCode


class LineItem(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One line of a menu-mode POS sale."""

    sku: Name
    qty: Annotated[int, Meta(ge=1, le=999)]
    unit_fen: Fen


class Purchase(Record, tag="pos.purchase", kw_only=True, frozen=True):
    """A POS sale against the card's purses (subsidy is spent before cash).

    When ``approved`` is true, ``subsidy_fen + cash_fen == amount``; a declined sale is
    recorded too (with both parts zero) so HQ can see refusals and their reasons.
    """

    approved: bool
    reason: ReasonCode
    amount: Fen
    subsidy_fen: Fen = 0
    cash_fen: Fen = 0
    items: list[LineItem] | None = None
    meal_period: Name | None = None
    #: The blacklist version the edge held when it decided (None from older edges): a
    #: sale approved although that version lists the card is an anomaly at HQ.
    blacklist_version: Version | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.approved and self.subsidy_fen + self.cash_fen != self.amount:
            raise ValueError("`subsidy_fen` + `cash_fen` must equal `amount` for an approved sale")
        if not self.approved and (self.subsidy_fen or self.cash_fen):
            raise ValueError("a declined sale takes no money: `subsidy_fen` and `cash_fen` = 0")
        if self.items is not None and sum(i.qty * i.unit_fen for i in self.items) != self.amount:
            raise ValueError("`items` do not add up to `amount`")


class TicketUse(Record, tag="ticket.use", kw_only=True, frozen=True):
    """One use of a count ticket (计次票) or a visit on a period ticket (期限票)."""

    ticket_id: Name
    uses: Annotated[int, Meta(ge=1, le=100)] = 1
    approved: bool
    reason: ReasonCode
    #: As for a purchase: the blacklist version the edge held.
    blacklist_version: Version | None = None


class RechargePrepare(Record, tag="recharge.prepare", kw_only=True, frozen=True):
    """Phase 1 of a recharge: the kiosk is about to take money under ``pay_ref``."""

    pay_ref: PayRef
    amount: Annotated[int, Meta(ge=1, le=MAX_FEN)]
    method: RechargeMethod


class RechargeCommit(Record, tag="recharge.commit", kw_only=True, frozen=True):
    """Phase 2: the money was taken; credit the card. Keyed by ``pay_ref``."""

    pay_ref: PayRef
    amount: Annotated[int, Meta(ge=1, le=MAX_FEN)]


class RechargeAbort(Record, tag="recharge.abort", kw_only=True, frozen=True):
    """Phase 2, the other way: no money was taken under ``pay_ref``."""

    pay_ref: PayRef
    reason: Text


class Refund(Record, tag="money.refund", kw_only=True, frozen=True):
    """Money given back for an earlier purchase (goods returned): credits the card."""

    original_id: RecordId
    amount: Annotated[int, Meta(ge=1, le=MAX_FEN)]
    reason: Text
    operator: Name


class Correction(Record, tag="money.correction", kw_only=True, frozen=True):
    """A supervisor's fix of a wrongly keyed purchase (消费更正).

    ``delta`` is credited to the card: positive when too much was charged, negative when
    too little. The original record is never changed.
    """

    original_id: RecordId
    delta: SignedFen
    reason: Text
    operator: Name

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.delta == 0:
            raise ValueError("`delta` of a correction must not be zero")


class CardIntent(Record, tag="card.intent", kw_only=True, frozen=True):
    """A card operation taken at a branch desk: an intent central accepts or rejects."""

    action: Literal["issue", "report_lost", "unlost", "reissue", "cancel", "freeze", "unfreeze"]
    person_id: Name | None = None
    new_card_uid: CardUid | None = None
    operator: Name
    reason: Text = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.card_uid is None:
            raise ValueError("a card intent needs `card_uid`")
        if self.action == "reissue" and self.new_card_uid is None:
            raise ValueError("a reissue needs `new_card_uid`")
        if self.action == "issue" and self.person_id is None:
            raise ValueError("issuing a card needs `person_id`")


AnyRecord = (
    DoorAccess
    | TerminalEvent
    | AttendancePunch
    | Purchase
    | TicketUse
    | RechargePrepare
    | RechargeCommit
    | RechargeAbort
    | Refund
    | Correction
    | CardIntent
)
RECORD_TYPES: tuple[type[Record], ...] = (
    DoorAccess,
    TerminalEvent,
    AttendancePunch,
    Purchase,
    TicketUse,
    RechargePrepare,
    RechargeCommit,
    RechargeAbort,
    Refund,
    Correction,
    CardIntent,
)


_RECORD_KINDS: dict[type[Record], str] = {
    cls: str(cls.__struct_config__.tag) for cls in RECORD_TYPES
}


def record_kind(record: Record) -> str:
    """The ``kind`` tag of a record (``"pos.purchase"``, …)."""
    return _RECORD_KINDS[type(record)]


class RecordBatch(Message, kw_only=True, frozen=True):
    """``site/{site}/up/records``: a contiguous run ``first_seq..last_seq`` of one lane of
    one epoch."""

    site: SiteId
    epoch: Epoch
    lane: Lane = 0
    first_seq: Seq
    last_seq: Seq
    records: Annotated[list[AnyRecord], Meta(min_length=1, max_length=MAX_BATCH_RECORDS)]

    def __post_init__(self) -> None:
        _check_batch_envelope(self.first_seq, self.last_seq, len(self.records))
        for i, rec in enumerate(self.records):
            if rec.seq != self.first_seq + i:
                raise ValueError(f"records[{i}].seq is {rec.seq}, expected {self.first_seq + i}")
            if rec.site != self.site:
                raise ValueError(f"records[{i}].site {rec.site!r} is not the batch's site")


class RawRecordBatch(Message, kw_only=True, frozen=True):
    """The same envelope with records left undecoded, so one bad record can be dead-lettered
    on its own instead of rejecting (and so blocking) the whole batch."""

    site: SiteId
    epoch: Epoch
    lane: Lane = 0
    first_seq: Seq
    last_seq: Seq
    records: Annotated[list[msgspec.Raw], Meta(min_length=1, max_length=MAX_BATCH_RECORDS)]

    def __post_init__(self) -> None:
        _check_batch_envelope(self.first_seq, self.last_seq, len(self.records))


def _check_batch_envelope(first_seq: int, last_seq: int, count: int) -> None:
    if last_seq < first_seq:
        raise ValueError("`last_seq` is below `first_seq`")
    if last_seq - first_seq + 1 != count:
        raise ValueError(f"seq range {first_seq}..{last_seq} does not match {count} records")


# --- acks and site state ------------------------------------------------------------------


class Ack(Message, kw_only=True, frozen=True):
    """``site/{site}/down/ack``: central has durably committed every seq of ``lane`` up to
    ``acked_seq`` (the highest contiguous one)."""

    epoch: Epoch
    lane: Lane = 0
    acked_seq: SeqOrZero


class TerminalStatus(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A terminal as the edge sees it, in the birth message."""

    id: TerminalId
    kind: TerminalKind
    online: bool
    last_seen: UtcTime | None = None

    def __post_init__(self) -> None:
        _require_utc(last_seen=self.last_seen)


class SiteBirth(Message, kw_only=True, frozen=True):
    """``site/{site}/up/state`` (retained) when the edge connects."""

    online: Literal[True] = True
    at: UtcTime
    version: Name
    epoch: Epoch
    #: Central's ack watermark the edge holds, per lane (index = lane).
    acked: Annotated[list[SeqOrZero], Meta(min_length=2, max_length=2)]
    outbox_depth: Count
    outbox_oldest_age_s: Annotated[float, Meta(ge=0)] | None = None
    feed_version: Version
    blacklist_version: Version
    terminals: list[TerminalStatus] = []

    def __post_init__(self) -> None:
        _require_utc(at=self.at)


class SiteDeath(Message, kw_only=True, frozen=True):
    """``site/{site}/up/state``: the Will, or a clean goodbye."""

    online: Literal[False] = False


class TerminalHealth(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Per-terminal link health in ``up/health``."""

    id: TerminalId
    kind: TerminalKind
    online: bool
    last_seen: UtcTime | None = None
    rtt_ms: Annotated[float, Meta(ge=0)] | None = None
    frames_in: Count = 0
    frames_out: Count = 0
    frame_errors: Count = 0
    auth_failures: Count = 0
    #: A terminal that decides locally (docs/terminal-protocol.md 15.1): the version of each
    #: list it acknowledged (the edge's chain for that terminal), how many lists differ from
    #: the site's and for how long, and record numbers missing (asked for again) or void.
    lists: dict[Annotated[str, Meta(max_length=80)], Annotated[int, Meta(ge=0)]] = {}
    lists_behind: Count = 0
    lists_behind_s: Annotated[float, Meta(ge=0)] | None = None
    records_missing: Count = 0
    records_void: Count = 0

    def __post_init__(self) -> None:
        _require_utc(last_seen=self.last_seen)


class Health(Message, kw_only=True, frozen=True):
    """``site/{site}/up/health``: periodic terminal and edge health."""

    site: SiteId
    at: UtcTime
    terminals: list[TerminalHealth] = []
    outbox_depth: Count = 0
    disk_free_bytes: Annotated[int, Meta(ge=0)] | None = None
    #: ``ok``; ``low``: below the edge's reserve, new money refused; ``full``: nothing can
    #: be recorded (doors follow their fail mode). None: an edge that does not say.
    disk_state: Literal["ok", "low", "full"] | None = None
    #: What the edge has applied (the birth message says it only at connect, before the
    #: snapshot and the deltas that follow): HQ's lag figures come from here.
    feed_version: Version | None = None
    blacklist_version: Version | None = None

    def __post_init__(self) -> None:
        _require_utc(at=self.at)


class LogLine(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One structured log line (structlog event dict, already redacted)."""

    at: UtcTime
    level: LogLevel
    event: Annotated[str, Meta(max_length=2000)]
    logger: Name | None = None
    fields: dict[str, Any] = {}

    def __post_init__(self) -> None:
        _require_utc(at=self.at)


class LogBatch(Message, kw_only=True, frozen=True):
    """``site/{site}/up/logs``: lines of a tail that central asked for.

    ``stream`` is the tail's session id (from ``logs.tail``); ``batch`` counts up from 0
    per stream, so a viewer can tell a lost batch. ``dropped`` lines were suppressed by
    the rate limit since the previous batch (the batch also carries a marker line saying
    so). ``caught_up`` marks the batch that ends the replay of ``since_s``: later lines are
    live. The last batch of a stream has ``final`` and says why in ``reason`` (``ttl``,
    ``stopped``, ``shutdown``).
    """

    site: SiteId
    stream: Name
    batch: Count
    lines: Annotated[list[LogLine], Meta(max_length=1000)]
    dropped: Count = 0
    final: bool = False
    reason: ReasonCode | None = None
    caught_up: bool = False

    def __post_init__(self) -> None:
        if self.reason is not None and not self.final:
            raise ValueError("only the `final` batch of a stream carries a `reason`")


class Reply(Message, kw_only=True, frozen=True):
    """``site/{site}/up/reply``: the result (or progress) of a command."""

    site: SiteId
    cmd_id: Name
    at: UtcTime
    status: Literal["accepted", "progress", "done", "failed", "rejected"]
    detail: Text = ""
    data: dict[str, Any] = {}

    def __post_init__(self) -> None:
        _require_utc(at=self.at)


class CentralState(Message, kw_only=True, frozen=True):
    """``central/state`` (retained, also central's Will)."""

    online: bool
    at: UtcTime | None = None

    def __post_init__(self) -> None:
        _require_utc(at=self.at)


# --- downlink: feed, blacklist, commands ------------------------------------------------------

FeedEntity = Literal[
    "person",
    "card",
    "account",
    "ticket",
    "door",
    "door_group",
    "time_zone",
    "holiday",
    "access_level",
    "access_grant",
    "terminal",
    "policy",
    "site_config",
]


class FeedChange(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One master-data change. ``data`` is the full new row for an upsert."""

    op: Literal["upsert", "delete"]
    entity: FeedEntity
    key: Name
    data: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.op == "upsert" and self.data is None:
            raise ValueError("an upsert needs `data`")
        if self.op == "delete" and self.data is not None:
            raise ValueError("a delete carries no `data`")


class BlacklistChange(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A card added to or removed from the blacklist, effective from ``effective_at``."""

    op: Literal["add", "remove"]
    card_uid: CardUid
    reason: Literal["lost", "cancelled", "replaced", "frozen", "fraud", "restored"]
    effective_at: UtcTime

    def __post_init__(self) -> None:
        _require_utc(effective_at=self.effective_at)


class BlacklistDelta(Message, kw_only=True, frozen=True):
    """``broadcast/blacklist``: version chain ``prev_version`` → ``version``.

    An edge whose own version is not ``prev_version`` has missed a delta and asks for a
    ``resync`` instead of applying this one.
    """

    version: Version
    prev_version: Version
    at: UtcTime
    changes: Annotated[list[BlacklistChange], Meta(max_length=MAX_CHANGES)]

    def __post_init__(self) -> None:
        _require_utc(at=self.at)
        if self.version <= self.prev_version:
            raise ValueError("`version` must be above `prev_version`")


class Feed(Message, kw_only=True, frozen=True):
    """``site/{site}/down/feed``: changes ``prev_version`` → ``feed_version``, or a snapshot.

    A snapshot too big for one message is sent as ``parts`` messages sharing
    ``feed_version``; the edge applies it only once every part has arrived. ``blacklist``
    carries blacklist deltas this site missed (catch-up after a reconnect), applied in order
    with the same version-chain rule as ``broadcast/blacklist``; a message may carry only
    those (then ``feed_version == prev_version`` and ``changes`` is empty).
    """

    site: SiteId
    feed_version: Version
    prev_version: Version
    snapshot: bool = False
    part: Annotated[int, Meta(ge=1)] = 1
    parts: Annotated[int, Meta(ge=1)] = 1
    changes: Annotated[list[FeedChange], Meta(max_length=MAX_CHANGES)]
    blacklist: Annotated[list[BlacklistDelta], Meta(max_length=1000)] = []

    def __post_init__(self) -> None:
        if not self.snapshot and self.changes and self.feed_version <= self.prev_version:
            raise ValueError("`feed_version` must be above `prev_version`")
        if not self.snapshot and self.feed_version < self.prev_version:
            raise ValueError("`feed_version` is below `prev_version`")
        if self.part > self.parts:
            raise ValueError("`part` is beyond `parts`")


class Command(Message, tag_field="cmd", kw_only=True, frozen=True):
    """``site/{site}/down/cmd``. The edge answers each on ``up/reply`` with the same ``id``;
    a command past ``expires_at`` is rejected rather than run late."""

    id: Name
    issued_at: UtcTime
    expires_at: UtcTime | None = None

    def __post_init__(self) -> None:
        _require_utc(issued_at=self.issued_at, expires_at=self.expires_at)


class ResendFrom(Command, tag="resend_from", kw_only=True, frozen=True):
    """Central saw a gap: resend ``lane`` of the outbox from ``from_seq`` of ``epoch``."""

    epoch: Epoch
    lane: Lane = 0
    from_seq: Seq


class Resync(Command, tag="resync", kw_only=True, frozen=True):
    """Replay the feed and/or the blacklist from scratch (a snapshot follows)."""

    what: Literal["feed", "blacklist", "all"] = "all"


class LogsTail(Command, tag="logs.tail", kw_only=True, frozen=True):
    """Stream log lines at ``level`` or above (containing ``match``, if given) on
    ``up/logs`` for ``duration_s``, then stop. The same ``stream`` again renews a running
    tail (new deadline, level and match; no replay). ``since_s`` first replays the lines of
    that many seconds back that the edge still holds; at most ``max_lines_per_s`` lines a
    second are sent, the rest are counted as dropped."""

    stream: Name
    level: LogLevel = "info"
    duration_s: Annotated[int, Meta(ge=1, le=3600)] = 900
    match: Annotated[str, Meta(max_length=200)] | None = None
    since_s: Annotated[int, Meta(ge=0, le=86400)] = 0
    max_lines_per_s: Annotated[int, Meta(ge=1, le=1000)] = 50


class LogsStop(Command, tag="logs.stop", kw_only=True, frozen=True):
    """Stop a tail before its time is up."""

    stream: Name


class SetLogLevel(Command, tag="log_level", kw_only=True, frozen=True):
    """Change the edge's log level, for ``duration_s`` or until the next restart."""

    level: LogLevel
    duration_s: Annotated[int, Meta(ge=1, le=86400)] | None = None


class Upgrade(Command, tag="upgrade", kw_only=True, frozen=True):
    """Install a signed release (see the upgrade docs); progress comes back as replies."""

    rollout_id: Name
    version: Name
    manifest_url: Annotated[str, Meta(min_length=1, max_length=1000)]
    manifest_sha256: Sha256Hex


class DoorOpen(Command, tag="door.open", kw_only=True, frozen=True):
    """Open a door remotely for ``open_ms`` (audited at central by ``operator``)."""

    terminal: TerminalId
    door: Name | None = None
    open_ms: Annotated[int, Meta(ge=500, le=60000)] = 5000
    operator: Name


class SetTime(Command, tag="time", kw_only=True, frozen=True):
    """Central's clock, for sites without NTP; the edge passes it on to its terminals."""

    now: UtcTime

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_utc(now=self.now)


AnyCommand = ResendFrom | Resync | LogsTail | LogsStop | SetLogLevel | Upgrade | DoorOpen | SetTime
COMMAND_TYPES: tuple[type[Command], ...] = (
    ResendFrom,
    Resync,
    LogsTail,
    LogsStop,
    SetLogLevel,
    Upgrade,
    DoorOpen,
    SetTime,
)

# --- codec ---------------------------------------------------------------------------------

M = TypeVar("M", bound=Message)
_encoder = msgspec.json.Encoder()
_decoders: dict[object, msgspec.json.Decoder[Any]] = {}
#: msgspec ends a ValidationError with " - at `$.path`" (or " - at `key` in `$.path`").
_PATH_RE = re.compile(r" - at (?:`key` in )?`([^`]*)`$")


def encode(message: Message) -> bytes:
    """Serialise any message to its JSON wire form."""
    return _encoder.encode(message)


def _decode(payload: bytes | bytearray | memoryview, type_: object) -> Any:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise MessageError(f"payload must be bytes, not {type(payload).__name__}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH_RE.search(text)
        raise MessageError(text, path=match.group(1) if match else None) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MessageError(f"malformed JSON: {exc}") from None
    except RecursionError:
        # msgspec recurses per nesting level; a peer must not crash us with `[[[[…`.
        raise MessageError("malformed JSON: nested too deeply") from None


def decode(payload: bytes | bytearray | memoryview, type_: type[M]) -> M:
    """Decode ``payload`` as exactly ``type_`` or raise :class:`MessageError`."""
    result: M = _decode(payload, type_)
    return result


def decode_record(payload: bytes | bytearray | memoryview) -> AnyRecord:
    """Decode one record of any kind (dispatching on its ``kind`` field)."""
    result: AnyRecord = _decode(payload, AnyRecord)
    return result


def decode_batch(payload: bytes | bytearray | memoryview) -> RecordBatch:
    """Decode an uplink batch, every record included; one bad record rejects the batch."""
    return decode(payload, RecordBatch)


def decode_batch_records(batch: RawRecordBatch) -> list[AnyRecord | MessageError]:
    """Decode each record of a raw batch on its own: a record, or the error that rejected it.

    Also checks that each record's ``seq`` and ``site`` agree with the envelope.
    """
    out: list[AnyRecord | MessageError] = []
    for i, raw in enumerate(batch.records):
        where = f"$.records[{i}]"
        try:
            # msgspec.Raw is a buffer but not bytes; a memoryview passes _decode's check.
            rec = decode_record(memoryview(raw))
        except MessageError as exc:
            path = where + exc.path[1:] if exc.path else where
            out.append(MessageError(f"records[{i}]: {exc}", path=path))
            continue
        if rec.seq != batch.first_seq + i:
            out.append(
                MessageError(
                    f"records[{i}]: seq {rec.seq} disagrees with the batch envelope",
                    path=f"{where}.seq",
                )
            )
            continue
        if rec.site != batch.site:
            out.append(
                MessageError(
                    f"records[{i}]: site {rec.site!r} disagrees with the batch envelope",
                    path=f"{where}.site",
                )
            )
            continue
        out.append(rec)
    return out


class _OnlineProbe(Struct):
    online: bool


def decode_site_state(payload: bytes | bytearray | memoryview) -> SiteBirth | SiteDeath:
    """Decode ``up/state``: a birth (``online: true``) or a death (``online: false``)."""
    probe = _decode(payload, _OnlineProbe)
    if probe.online:
        return decode(payload, SiteBirth)
    return decode(payload, SiteDeath)


def decode_command(payload: bytes | bytearray | memoryview) -> AnyCommand:
    """Decode a ``down/cmd`` payload of any command (dispatching on ``cmd``)."""
    result: AnyCommand = _decode(payload, AnyCommand)
    return result
