"""A PC/SC desk reader (any CCID contactless reader pcscd knows), through pyscard.

The calls into libpcsclite block, so each runs on a worker thread (``asyncio.to_thread``)
and never for longer than :data:`POLL_S`: waiting for a card is a loop of short waits, so
the caller's ``asyncio.timeout`` or cancellation takes effect within one poll, and a reader
plugged in, pulled out, or a pcscd restarted meanwhile is noticed at the next one. Every
call opens its own PC/SC context: a context does not survive a pcscd restart.

The UID is read with the PC/SC part 3 pseudo-APDU GET DATA (``FF CA 00 00 00``), which a
CCID contactless reader answers itself for any ISO 14443 card (or FeliCa IDm).

PC/SC failures become :class:`ReaderError` subclasses with a ``code``: ``no_service``
(pcscd not running), ``no_reader`` (none, or not the configured one), ``no_card``
(nothing presented in time), ``card_removed``, ``card_swapped``, ``card_unreadable``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Longest single blocking PC/SC call (seconds).
POLL_S = 0.5
GET_UID = [0xFF, 0xCA, 0x00, 0x00, 0x00]
_SW_OK = (0x90, 0x00)


class ReaderError(Exception):
    """A PC/SC failure, mapped at this boundary; ``code`` names it for the caller."""

    code = "reader_error"


class NoServiceError(ReaderError):
    """pcscd is not running (or this process may not talk to it)."""

    code = "no_service"


class NoReaderError(ReaderError):
    """No PC/SC reader, or not the configured one."""

    code = "no_reader"


class NoCardError(ReaderError):
    """No card was presented in time."""

    code = "no_card"


class CardRemovedError(ReaderError):
    """The card left the reader (or the reader went away with it)."""

    code = "card_removed"


class CardSwappedError(ReaderError):
    """Another card is in the reader now."""

    code = "card_swapped"


class CardUnreadableError(ReaderError):
    """The reader could not read the card's UID."""

    code = "card_unreadable"


@dataclass(frozen=True, slots=True)
class PresentedCard:
    """A card on the reader: which reader, its UID (upper-case hex) and ATR."""

    reader: str
    uid: str
    atr: bytes


@dataclass(frozen=True, slots=True)
class ReaderState:
    """A reader as ``readers`` lists it: whether a card is on it."""

    name: str
    card_present: bool


def _scard() -> Any:
    try:
        from smartcard import scard  # noqa: PLC0415 - libpcsclite is loaded only when used
    except ImportError as exc:  # pragma: no cover - pyscard is a dependency
        raise NoServiceError(f"pyscard is not installed: {exc}") from None
    return scard


_NO_SERVICE = ("SCARD_E_NO_SERVICE", "SCARD_E_SERVICE_STOPPED", "SCARD_E_COMM_DATA_LOST")
_NO_READER = (
    "SCARD_E_UNKNOWN_READER",
    "SCARD_E_READER_UNAVAILABLE",
    "SCARD_E_NO_READERS_AVAILABLE",
)
_NO_CARD = (
    "SCARD_E_NO_SMARTCARD",
    "SCARD_W_REMOVED_CARD",
    "SCARD_W_UNPOWERED_CARD",
    "SCARD_W_RESET_CARD",
)


def _is(scard: Any, hresult: int, names: tuple[str, ...]) -> bool:
    return any(hresult == getattr(scard, name, None) for name in names)


def _fail(scard: Any, hresult: int, what: str) -> ReaderError:
    message = f"{what}: {str(scard.SCardGetErrorMessage(hresult)).rstrip('. ')}"
    if _is(scard, hresult, _NO_SERVICE):
        return NoServiceError(f"{message} — is pcscd running? (systemctl status pcscd)")
    if _is(scard, hresult, _NO_READER):
        return NoReaderError(message)
    if _is(scard, hresult, _NO_CARD):
        return CardRemovedError(message)
    return ReaderError(message)


class _Context:
    """One PC/SC context for one blocking call."""

    def __init__(self) -> None:
        self.scard = _scard()
        hresult, self.handle = self.scard.SCardEstablishContext(self.scard.SCARD_SCOPE_USER)
        if hresult != self.scard.SCARD_S_SUCCESS:
            raise _fail(self.scard, hresult, "cannot reach pcscd")

    def __enter__(self) -> _Context:
        return self

    def __exit__(self, *_: object) -> None:
        self.scard.SCardReleaseContext(self.handle)


def list_readers() -> list[str]:
    """The readers pcscd has now (blocking)."""
    with _Context() as ctx:
        hresult, names = ctx.scard.SCardListReaders(ctx.handle, [])
        if _is(ctx.scard, hresult, ("SCARD_E_NO_READERS_AVAILABLE",)):
            return []
        if hresult != ctx.scard.SCARD_S_SUCCESS:
            raise _fail(ctx.scard, hresult, "cannot list readers")
        return [str(name) for name in names]


def reader_states() -> list[ReaderState]:
    """Every reader with whether a card is on it (blocking)."""
    names = list_readers()
    if not names:
        return []
    with _Context() as ctx:
        unaware = [(name, ctx.scard.SCARD_STATE_UNAWARE) for name in names]
        hresult, states = ctx.scard.SCardGetStatusChange(ctx.handle, 0, unaware)
        if hresult != ctx.scard.SCARD_S_SUCCESS:
            raise _fail(ctx.scard, hresult, "cannot read reader states")
        return [
            ReaderState(str(name), bool(event & ctx.scard.SCARD_STATE_PRESENT))
            for name, event, _atr in states
        ]


def wait_present(reader: str, present: bool, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the reader to have a card (or none); True once it does
    (blocking). :class:`NoReaderError` if the reader is gone."""
    with _Context() as ctx:
        scard = ctx.scard
        known = scard.SCARD_STATE_UNAWARE
        deadline = time.monotonic() + timeout_s
        while True:
            left = max(0, int((deadline - time.monotonic()) * 1000))
            hresult, states = scard.SCardGetStatusChange(ctx.handle, left, [(reader, known)])
            if hresult == scard.SCARD_E_TIMEOUT:
                return False
            if hresult != scard.SCARD_S_SUCCESS:
                raise _fail(scard, hresult, f"reader {reader!r}")
            event = states[0][1]
            if event & (scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_UNAVAILABLE):
                raise NoReaderError(f"reader {reader!r} is gone")
            if bool(event & scard.SCARD_STATE_PRESENT) == present:
                return True
            if left == 0:
                return False
            known = event & ~scard.SCARD_STATE_CHANGED


def read_uid(reader: str) -> PresentedCard:
    """Connect to the card on ``reader`` and read its UID (blocking).

    :class:`CardRemovedError` when no card is there, :class:`CardUnreadableError` when the
    reader refuses GET UID."""
    with _Context() as ctx:
        scard = ctx.scard
        protocols = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
        hresult, card, protocol = scard.SCardConnect(
            ctx.handle, reader, scard.SCARD_SHARE_SHARED, protocols
        )
        if hresult != scard.SCARD_S_SUCCESS:
            raise _fail(scard, hresult, f"no card on {reader!r}")
        try:
            hresult, _name, _state, _proto, atr = scard.SCardStatus(card)
            if hresult != scard.SCARD_S_SUCCESS:
                raise _fail(scard, hresult, "card status")
            hresult, response = scard.SCardTransmit(card, protocol, GET_UID)
            if hresult != scard.SCARD_S_SUCCESS:
                raise _fail(scard, hresult, "GET UID")
        finally:
            scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD)
    if len(response) < 2 or tuple(response[-2:]) != _SW_OK:
        status = bytes(response[-2:]).hex().upper()
        raise CardUnreadableError(f"the reader refused GET UID (status {status})")
    uid = bytes(response[:-2])
    if not 4 <= len(uid) <= 10:
        raise CardUnreadableError(f"the reader returned a UID of {len(uid)} bytes")
    return PresentedCard(reader=reader, uid=uid.hex().upper(), atr=bytes(atr))


@dataclass
class PcscReader:
    """The desk's reader, by name (``""``: the first reader pcscd lists), with an asyncio
    API. ``on_status`` is told what the wait is waiting for, each time that changes
    ("no reader", "pcscd not running", "present a card")."""

    name: str = ""
    on_status: Callable[[str], None] | None = None
    _last_status: str = ""

    async def readers(self) -> list[ReaderState]:
        """Every reader and whether a card is on it."""
        return await asyncio.to_thread(reader_states)

    async def find(self) -> str:
        """The reader to use now; :class:`NoReaderError` (naming those there) if absent."""
        names = await asyncio.to_thread(list_readers)
        if self.name:
            if self.name in names:
                return self.name
            there = ", ".join(repr(n) for n in names) or "none"
            raise NoReaderError(f"reader {self.name!r} is not connected (readers: {there})")
        if not names:
            raise NoReaderError("no PC/SC reader is connected")
        return names[0]

    async def wait_for_card(self, within: float) -> PresentedCard:
        """Wait up to ``within`` seconds for a card and read its UID.

        A missing reader or a stopped pcscd is waited out (reported through ``on_status``):
        a reader plugged in during the wait is used. After ``within``: :class:`NoCardError`,
        or the :class:`NoServiceError` / :class:`NoReaderError` that was still in the way."""
        deadline = time.monotonic() + within
        missing: ReaderError = NoCardError("no card was presented")
        while (left := deadline - time.monotonic()) > 0:
            try:
                reader = await self.find()
                self._status(f"present a card on {reader}")
                if await asyncio.to_thread(wait_present, reader, True, min(POLL_S, left)):
                    return await asyncio.to_thread(read_uid, reader)
                missing = NoCardError("no card was presented")
            except (NoServiceError, NoReaderError) as exc:
                missing = exc
                self._status(f"waiting: {exc}")
                await asyncio.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
            except CardRemovedError:
                missing = NoCardError("the card was taken away before it could be read")
        raise type(missing)(f"{missing} within {within:g} s")

    async def check_still(self, card: PresentedCard) -> None:
        """The same card is still on the same reader, or :class:`CardRemovedError` /
        :class:`CardSwappedError` (:class:`NoReaderError` / :class:`NoServiceError` when the
        reader or pcscd went away)."""
        try:
            now = await asyncio.to_thread(read_uid, card.reader)
        except NoReaderError as exc:
            raise CardRemovedError(f"the reader went away: {exc}") from None
        if now.uid != card.uid:
            raise CardSwappedError(f"another card ({now.uid}) is on the reader now")

    async def wait_removed(self, reader: str, within: float) -> bool:
        """Wait up to ``within`` seconds for the reader to be empty; True if it is."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                if await asyncio.to_thread(wait_present, reader, False, min(POLL_S, left)):
                    return True
            except (NoReaderError, NoServiceError):
                return True  # the reader went with it
        return False

    def _status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            if self.on_status is not None:
                self.on_status(text)
