"""Bodies of the terminal protocol's frames: MessagePack maps, validated per frame type.

Each :class:`~protocol.framing.FrameType` has one body Struct here (``BODY_TYPES``).
:func:`encode_body` / :func:`decode_body` convert between a body and a frame payload;
:func:`message_frame` and :func:`parse_frame` go all the way to and from a
:class:`~protocol.framing.Frame`. Bad bodies raise :class:`~protocol.errors.MessageError`
naming the field. Times are integer milliseconds since the Unix epoch, UTC; money is fen.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from protocol.errors import MessageError
from protocol.framing import Frame, FrameType

U16 = Annotated[int, Meta(ge=0, le=0xFFFF)]
U32 = Annotated[int, Meta(ge=0, le=0xFFFFFFFF)]
#: Milliseconds since 1970-01-01T00:00:00Z. Bounded to years 2000..2200 to catch garbage.
TimeMs = Annotated[int, Meta(ge=946_684_800_000, le=7_258_118_400_000)]
Fen = Annotated[int, Meta(ge=0, le=1_000_000_000)]
TerminalId = Annotated[str, Meta(pattern=r"^[A-Z0-9][A-Z0-9_-]{0,31}\Z")]
CardUid = Annotated[str, Meta(pattern=r"^(?:[0-9A-F]{2}){4,10}\Z")]
PayRef = Annotated[str, Meta(pattern=r"^[\x21-\x7e]{1,64}\Z")]
Code = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,31}\Z")]
Short = Annotated[str, Meta(max_length=64)]
#: What a terminal shows its user: up to two lines of a small display.
Display = Annotated[str, Meta(max_length=80)]
Nonce = Annotated[bytes, Meta(min_length=16, max_length=16)]
Mac = Annotated[bytes, Meta(min_length=32, max_length=32)]
TerminalKind = Literal["door", "attendance", "pos", "recharge"]
#: The local lists a terminal that decides on its own can keep (see LIST_UPDATE).
ListKind = Literal["blacklist", "whitelist"]
#: Limits chosen so the largest valid LIST_UPDATE and RECORD_UPLOAD fit in one frame.
MAX_LIST_UIDS = 350
MAX_UPLOAD_RECORDS = 24


class Body(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Base of every frame body."""


class Hello(Body, kw_only=True, frozen=True):
    """T→E, first frame on a link. ``last_rec`` is the terminal's newest record number.

    ``lists`` (omitted when absent, so older terminals' HELLO is unchanged) names the local
    lists a terminal that decides on its own keeps: the edge then pushes them with
    LIST_UPDATE and tracks its record numbers for gaps (RECORD_REQUEST)."""

    terminal_id: TerminalId
    kind: TerminalKind
    firmware: Short
    proto: Annotated[int, Meta(ge=1, le=255)] = 1
    nonce: Nonce
    last_rec: U32 = 0
    lists: Annotated[list[ListKind], Meta(max_length=2)] | UnsetType = UNSET


class Challenge(Body, kw_only=True, frozen=True):
    """E→T, reply to HELLO: the edge's nonce."""

    nonce: Nonce


class Auth(Body, kw_only=True, frozen=True):
    """T→E: ``HMAC-SHA256(key, terminal proof input)``; see :mod:`protocol.auth`."""

    mac: Mac


class Welcome(Body, kw_only=True, frozen=True):
    """E→T, reply to AUTH: the edge's own proof, the time, and the terminal's config."""

    mac: Mac
    time_ms: TimeMs
    site: Short
    heartbeat_s: Annotated[int, Meta(ge=1, le=600)] = 10
    config: dict[str, Any] = {}


class Heartbeat(Body, kw_only=True, frozen=True):
    """T→E: still here. ``buffered`` records wait for upload; ``flags`` are active faults."""

    time_ms: TimeMs
    buffered: U32 = 0
    flags: Annotated[list[Code], Meta(max_length=16)] = []


class HeartbeatAck(Body, kw_only=True, frozen=True):
    """E→T: the edge's clock, so terminals notice drift between TIME frames."""

    time_ms: TimeMs


class LineItem(Body, kw_only=True, frozen=True):
    """A menu-mode POS line."""

    sku: Short
    qty: Annotated[int, Meta(ge=1, le=999)]


class Tap(Body, kw_only=True, frozen=True):
    """T→E: a card was presented. ``rec`` identifies it across retransmissions and restarts.

    POS terminals send ``amount`` (keyed or fixed mode) or ``items`` (menu mode); attendance
    clocks may send ``punch``; door controllers with several readers send ``door``.
    """

    rec: U32
    uid: CardUid
    time_ms: TimeMs
    amount: Fen | None = None
    items: Annotated[list[LineItem], Meta(max_length=50)] | None = None
    punch: Literal["in", "out"] | None = None
    door: Short | None = None

    def __post_init__(self) -> None:
        if self.amount is not None and self.items is not None:
            raise ValueError("send either `amount` or `items`, not both")


class Decision(Body, kw_only=True, frozen=True):
    """E→T, reply to TAP. ``display`` is what the terminal shows; ``code`` why."""

    rec: U32
    ok: bool
    code: Code
    display: Display
    amount: Fen | None = None
    balance: Annotated[int, Meta(ge=-1_000_000_000, le=1_000_000_000)] | None = None
    open_ms: Annotated[int, Meta(ge=0, le=60000)] | None = None


class RechargePrepare(Body, kw_only=True, frozen=True):
    """T→E: phase 1 — the kiosk is about to take ``amount`` under ``pay_ref``."""

    rec: U32
    uid: CardUid
    amount: Annotated[int, Meta(ge=1, le=1_000_000_000)]
    method: Literal["cash", "bank", "online"]
    pay_ref: PayRef
    time_ms: TimeMs


class RechargeCommit(Body, kw_only=True, frozen=True):
    """T→E: phase 2 — the money was taken; credit the card."""

    rec: U32
    pay_ref: PayRef
    time_ms: TimeMs


class RechargeAbort(Body, kw_only=True, frozen=True):
    """T→E: phase 2 — no money was taken."""

    rec: U32
    pay_ref: PayRef
    reason: Short
    time_ms: TimeMs


class RechargeResult(Body, kw_only=True, frozen=True):
    """E→T, reply to every RECHARGE_* frame."""

    rec: U32
    pay_ref: PayRef
    ok: bool
    code: Code
    display: Display
    balance: Annotated[int, Meta(ge=-1_000_000_000, le=1_000_000_000)] | None = None


EventName = Literal["door_forced", "door_held", "tamper", "low_paper", "power_fail", "reader_fault"]


class Event(Body, kw_only=True, frozen=True):
    """T→E: a non-card event (door forced or held, tamper, low paper, …)."""

    rec: U32
    time_ms: TimeMs
    event: EventName
    door: Short | None = None
    detail: Short = ""


class Time(Body, kw_only=True, frozen=True):
    """E→T: set your clock."""

    time_ms: TimeMs


class Config(Body, kw_only=True, frozen=True):
    """E→T: replace your configuration (same shape as WELCOME's ``config``)."""

    config: dict[str, Any]


class DoorOpen(Body, kw_only=True, frozen=True):
    """E→T: open the door now (HQ's remote open, audited there), for ``open_ms``."""

    door: Short | None = None
    open_ms: Annotated[int, Meta(ge=500, le=60000)] = 5000


class ListUpdate(Body, kw_only=True, frozen=True):
    """E→T: change a local decision list. A ``full`` update replaces the list; otherwise the
    terminal applies it only if its version equals ``prev_version`` (else it NAKs).

    ``door`` (omitted when absent) names the door of a per-door ``whitelist`` at a
    controller with several doors; each door's list has its own version chain."""

    kind: ListKind
    version: Annotated[int, Meta(ge=0)]
    prev_version: Annotated[int, Meta(ge=0)]
    full: bool = False
    add: Annotated[list[CardUid], Meta(max_length=MAX_LIST_UIDS)] = []
    remove: Annotated[list[CardUid], Meta(max_length=MAX_LIST_UIDS)] = []
    door: Short | UnsetType = UNSET

    def __post_init__(self) -> None:
        if len(self.add) + len(self.remove) > MAX_LIST_UIDS:
            raise ValueError(f"at most {MAX_LIST_UIDS} UIDs in `add` and `remove` together")


class BufferedRecord(Body, kw_only=True, frozen=True):
    """A record a terminal decided on its own while cut off from the edge."""

    rec: U32
    time_ms: TimeMs
    what: Literal["tap", "event"]
    uid: CardUid | None = None
    granted: bool | None = None
    door: Annotated[str, Meta(max_length=32)] | None = None
    event: EventName | None = None
    punch: Literal["in", "out"] | None = None

    def __post_init__(self) -> None:
        if self.what == "tap" and (self.uid is None or self.granted is None):
            raise ValueError("a tap record needs `uid` and `granted`")
        if self.what == "event" and self.event is None:
            raise ValueError("an event record needs `event`")


class RecordUpload(Body, kw_only=True, frozen=True):
    """T→E: buffered records, oldest first; the ACK's ``upto`` says which are safe to drop."""

    records: Annotated[list[BufferedRecord], Meta(min_length=1, max_length=MAX_UPLOAD_RECORDS)]


class RecordRequest(Body, kw_only=True, frozen=True):
    """E→T: send again the records numbered ``from_rec`` … ``to_rec`` (inclusive, at most
    ``MAX_UPLOAD_RECORDS``): the edge found them missing between records it holds."""

    from_rec: U32
    to_rec: U32

    def __post_init__(self) -> None:
        if not 0 <= self.to_rec - self.from_rec < MAX_UPLOAD_RECORDS:
            raise ValueError(
                f"need from_rec <= to_rec and at most {MAX_UPLOAD_RECORDS} records in the range"
            )


class RecordReply(Body, kw_only=True, frozen=True):
    """T→E, reply to RECORD_REQUEST: the records of the range the terminal still holds,
    oldest first. A number of the range not among them is one the terminal does not hold
    (never used, or deleted long ago): the edge stops asking for it."""

    records: Annotated[list[BufferedRecord], Meta(max_length=MAX_UPLOAD_RECORDS)] = []


class Ack(Body, kw_only=True, frozen=True):
    """Reply to EVENT, TIME, CONFIG, LIST_UPDATE, RECORD_UPLOAD and DOOR_OPEN."""

    ok: bool = True
    upto: U32 | None = None
    code: Code | None = None


class Error(Body, kw_only=True, frozen=True):
    """Reply to a request that cannot be served. The link stays up unless ``code`` is
    ``unknown_terminal``, ``auth_failed`` or ``unauthenticated``, after which the edge closes
    it."""

    code: Code
    message: Display


BODY_TYPES: dict[FrameType, type[Body]] = {
    FrameType.HELLO: Hello,
    FrameType.CHALLENGE: Challenge,
    FrameType.AUTH: Auth,
    FrameType.WELCOME: Welcome,
    FrameType.HEARTBEAT: Heartbeat,
    FrameType.HEARTBEAT_ACK: HeartbeatAck,
    FrameType.TAP: Tap,
    FrameType.DECISION: Decision,
    FrameType.RECHARGE_PREPARE: RechargePrepare,
    FrameType.RECHARGE_COMMIT: RechargeCommit,
    FrameType.RECHARGE_ABORT: RechargeAbort,
    FrameType.RECHARGE_RESULT: RechargeResult,
    FrameType.EVENT: Event,
    FrameType.TIME: Time,
    FrameType.CONFIG: Config,
    FrameType.LIST_UPDATE: ListUpdate,
    FrameType.RECORD_UPLOAD: RecordUpload,
    FrameType.DOOR_OPEN: DoorOpen,
    FrameType.RECORD_REQUEST: RecordRequest,
    FrameType.RECORD_REPLY: RecordReply,
    FrameType.ACK: Ack,
    FrameType.ERROR: Error,
}
FRAME_TYPES: dict[type[Body], FrameType] = {body: ftype for ftype, body in BODY_TYPES.items()}

_encoder = msgspec.msgpack.Encoder()
_decoders = {ftype: msgspec.msgpack.Decoder(body) for ftype, body in BODY_TYPES.items()}
#: msgspec ends a ValidationError with " - at `$.path`" (or " - at `key` in `$.path`").
_PATH_RE = re.compile(r" - at (?:`key` in )?`([^`]*)`$")


def encode_body(body: Body) -> bytes:
    """The MessagePack payload of ``body``."""
    return _encoder.encode(body)


def decode_body(ftype: int, payload: bytes) -> Body:
    """Validate ``payload`` as the body of frame type ``ftype``."""
    try:
        decoder = _decoders[FrameType(ftype)]
    except ValueError:
        raise MessageError(f"unknown frame type 0x{ftype:02X}") from None
    try:
        result: Body = decoder.decode(payload)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH_RE.search(text)
        raise MessageError(
            f"{FrameType(ftype).name}: {text}", path=match.group(1) if match else None
        ) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MessageError(f"{FrameType(ftype).name}: malformed MessagePack: {exc}") from None
    except RecursionError:
        # msgspec recurses per nesting level; 8 KiB of 0x91 bytes is deep enough to hit it.
        raise MessageError(f"{FrameType(ftype).name}: MessagePack nested too deeply") from None
    return result


def message_frame(body: Body, seq: int) -> Frame:
    """A frame carrying ``body`` (its type taken from the body's class)."""
    return Frame(FRAME_TYPES[type(body)], seq, encode_body(body))


def parse_frame(frame: Frame) -> Body:
    """The validated body of ``frame``."""
    return decode_body(frame.type, frame.payload)
