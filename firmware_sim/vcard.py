"""A virtual contactless card, inserted into PC/SC through vsmartcard's vpcd reader driver.

Two layers:

* :class:`CardApplet` is the card: its UID, ATR and ATS, and the ONECARD application
  (:data:`ONECARD_AID`) holding one 256-byte transparent EF (id ``0101``, SFI 1). It is pure
  ISO 7816-4 logic without I/O: :meth:`CardApplet.process_apdu` takes any bytes and always
  answers with a response ending in a status word.
* :class:`VirtualCard` carries an applet to vpcd over TCP. vpcd (loaded by pcscd from a
  reader.conf entry) listens; the card connects. Connecting is inserting the card into the
  reader, closing the connection is removing it. :func:`run_vcard` is the blocking entry
  point behind ``onecard-sim card``.

The card presents itself as a PC/SC part 3 reader presents an ISO 14443-4 type A card
(e.g. a DESFire or a Java Card): ``ATR = 3B 87 80 01 || historical bytes || TCK``, where the
historical bytes are those of the card's ATS (here ``"ONECARD"``). We chose the 14443-4 form
over the MIFARE Classic storage-card form (``3B 8F 80 01 80 4F 0C A0 00 00 03 06 ...``)
because this card speaks ISO 7816-4 APDUs (SELECT by AID, READ/UPDATE BINARY), which a
storage card cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import operator
import random
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

ONECARD_AID = b"\xf0ONECARD\x01"
"""AID of the onecard application: ``F0 4F 4E 45 43 41 52 44 01`` (proprietary, RID F0)."""

DATA_EF_ID = 0x0101
DATA_EF_SFI = 1
DATA_EF_SIZE = 256
MF_ID = 0x3F00
UID_LENGTHS = (4, 7, 10)
"""ISO 14443-3 type A UIDs: single, double and triple size."""

VPCD_DEFAULT_PORT = 35963
"""vpcd's stock CHANNELID (0x8C7B) in /etc/reader.conf.d/vpcd."""

HISTORICAL_BYTES = b"ONECARD"
# First byte 0x4F is outside ISO 7816-4's category indicators (00, 10, 8x), so the rest is
# proprietary and free-form. TA1=80: 106 kbit/s only; TB1=81: FWI 8, SFGI 1; TC1=02: CID.
ATS = bytes([5 + len(HISTORICAL_BYTES), 0x78, 0x80, 0x81, 0x02]) + HISTORICAL_BYTES

SW_OK = bytes.fromhex("9000")
SW_END_OF_DATA = bytes.fromhex("6282")
SW_WRONG_LENGTH = bytes.fromhex("6700")
SW_NO_CURRENT_EF = bytes.fromhex("6986")
SW_FUNCTION_NOT_SUPPORTED = bytes.fromhex("6A81")
SW_FILE_NOT_FOUND = bytes.fromhex("6A82")
SW_NOT_ENOUGH_MEMORY = bytes.fromhex("6A84")
SW_WRONG_P1P2 = bytes.fromhex("6A86")
SW_LC_INCONSISTENT = bytes.fromhex("6A87")
SW_OFFSET_OUTSIDE_EF = bytes.fromhex("6B00")
SW_INS_NOT_SUPPORTED = bytes.fromhex("6D00")
SW_CLA_NOT_SUPPORTED = bytes.fromhex("6E00")
SW_NO_PRECISE_DIAGNOSIS = bytes.fromhex("6F00")


def sw_wrong_le(available: int) -> bytes:
    """``6C xx``: wrong Le, ``xx`` being the number of bytes available (00 meaning 256)."""
    return bytes([0x6C, available & 0xFF])


def contactless_atr(historical: bytes) -> bytes:
    """The ATR a PC/SC part 3 reader builds for an ISO 14443-4 card from its ATS bytes.

    ``3B 8n 80 01 <n historical bytes> TCK``: TD1=80 and TD2=01 announce T=0 then T=1, and
    TCK makes the XOR of T0..TCK zero.
    """
    body = bytes([0x80 | len(historical), 0x80, 0x01]) + historical
    return b"\x3b" + body + bytes([functools.reduce(operator.xor, body, 0)])


ATR = contactless_atr(HISTORICAL_BYTES)


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag, len(value)]) + value


FCI = _tlv(0x6F, _tlv(0x84, ONECARD_AID) + _tlv(0xA5, _tlv(0x50, HISTORICAL_BYTES)))
FCP_DATA_EF = _tlv(
    0x62,
    _tlv(0x80, DATA_EF_SIZE.to_bytes(2, "big"))  # file size
    + _tlv(0x82, b"\x01")  # descriptor: working EF, transparent
    + _tlv(0x83, DATA_EF_ID.to_bytes(2, "big"))
    + _tlv(0x88, bytes([DATA_EF_SFI << 3])),
)


def parse_uid(uid_hex: str) -> bytes:
    """``"04A1B2C3D4E5F6"`` (spaces and colons allowed) to bytes; ValueError otherwise.

    The length (4, 7 or 10 bytes) is checked by :class:`CardApplet`.
    """
    try:
        return bytes.fromhex(uid_hex.replace(":", ""))
    except ValueError:
        raise ValueError(f"UID {uid_hex!r} is not hexadecimal") from None


@dataclass(frozen=True, slots=True)
class CommandApdu:
    """An ISO 7816-4 command APDU, short or extended length.

    ``ne`` is the maximum response length (Ne), ``None`` when Le is absent. ``le_wildcard``
    is true when Le was all zeros, which asks for "everything available, up to Ne".
    """

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    ne: int | None = None
    le_wildcard: bool = False


def _with_le(header: bytes, data: bytes, le: bytes) -> CommandApdu:
    value = int.from_bytes(le, "big")
    maximum = 256 if len(le) == 1 else 65536
    cla, ins, p1, p2 = header
    return CommandApdu(cla, ins, p1, p2, data, value or maximum, value == 0)


def parse_command_apdu(raw: bytes) -> CommandApdu | None:
    """Parse ``raw`` as one of ISO 7816-3's cases 1, 2, 3, 4 (short or extended).

    Returns None when the length bytes do not add up: the card answers that with 67 00.
    """
    if len(raw) < 4:
        return None
    header, body = raw[:4], raw[4:]
    cla, ins, p1, p2 = header
    if not body:  # case 1
        return CommandApdu(cla, ins, p1, p2)
    if len(body) == 1:  # case 2S
        return _with_le(header, b"", body)
    if body[0] != 0:  # short Lc: cases 3S and 4S
        lc, width = body[0], 1
    elif len(body) == 3:  # case 2E
        return _with_le(header, b"", body[1:])
    elif len(body) > 3:  # extended Lc: cases 3E and 4E
        lc, width = int.from_bytes(body[1:3], "big"), 3
        if lc == 0:
            return None
    else:
        return None
    data, le = body[width : width + lc], body[width + lc :]
    if len(data) != lc:
        return None
    if not le:
        return CommandApdu(cla, ins, p1, p2, data)
    if len(le) == (1 if width == 1 else 2):
        return _with_le(header, data, le)
    return None


class _Rejected(Exception):  # noqa: N818 -- an answer, not an error condition
    """Ends processing of a command with a status word."""

    def __init__(self, sw: bytes) -> None:
        super().__init__(sw.hex())
        self.sw = sw


def _answer(value: bytes, cmd: CommandApdu) -> bytes:
    """Return a whole data object under Le (PC/SC part 3 GET DATA rules)."""
    if cmd.ne is None:
        raise _Rejected(SW_WRONG_LENGTH)
    if cmd.le_wildcard:
        return value[: cmd.ne] + SW_OK
    if cmd.ne < len(value):
        return sw_wrong_le(len(value))
    return value + (SW_END_OF_DATA if cmd.ne > len(value) else SW_OK)


class CardApplet:
    """The card: UID, ATR/ATS, and the ONECARD application with its one data EF.

    Commands (anything else gets a specific ISO 7816-4 status word, never an exception):

    * ``FF CA 00 00 Le`` / ``FF CA 01 00 Le`` — PC/SC GET DATA: UID / ATS. Le=00 returns
      it whole; a shorter Le gets ``6C xx``, a longer one the data and ``62 82``.
    * ``00 A4 04 00|0C Lc AID [Le]`` — SELECT the application (``6A 82`` for another AID).
      Its data EF becomes the current EF. P2=00 with Le returns the FCI.
    * ``00 A4 00|02 00|04|0C 02 0101 [Le]`` — SELECT the data EF (P2 00/04 with Le return
      its FCP); ``00 A4 00 0C 02 3F00`` selects the MF, deselecting the application.
    * ``00 B0 P1 P2 Le`` — READ BINARY at offset P1P2 (or SFI 1 in P1, offset in P2). An
      explicit Le past the end returns what there is and ``62 82``; Le=00 reads up to
      256 bytes with ``90 00``. Offset outside the EF: ``6B 00``; no application: ``69 86``.
    * ``00 D6 P1 P2 Lc data`` — UPDATE BINARY, same addressing; all or nothing: a write
      past the end is refused with ``6A 84``.

    The selection lives in RAM and is lost on power-off or reset; the EF is EEPROM.
    """

    def __init__(self, uid: bytes, *, data: bytes = b"") -> None:
        if len(uid) not in UID_LENGTHS:
            raise ValueError(f"a UID is 4, 7 or 10 bytes, not {len(uid)}")
        if len(data) > DATA_EF_SIZE:
            raise ValueError(f"the data EF holds {DATA_EF_SIZE} bytes, not {len(data)}")
        self.uid = bytes(uid)
        self.atr = ATR
        self.ats = ATS
        self._ef = bytearray(data.ljust(DATA_EF_SIZE, b"\x00"))
        self._app_selected = False

    @property
    def data(self) -> bytes:
        """The data EF's current contents."""
        return bytes(self._ef)

    @property
    def app_selected(self) -> bool:
        """True while the ONECARD application (and so its data EF) is selected."""
        return self._app_selected

    def power_on(self) -> None:
        """The reader's field came up: the card starts with nothing selected."""
        self._app_selected = False

    def power_off(self) -> None:
        """The field went away: RAM state (the selection) is lost."""
        self._app_selected = False

    def reset(self) -> bytes:
        """Warm reset: deselect and return the ATR."""
        self._app_selected = False
        return self.atr

    def process_apdu(self, apdu: bytes) -> bytes:
        """Answer one command APDU with response data (maybe none) and a status word."""
        cmd = parse_command_apdu(apdu)
        if cmd is None:
            return SW_WRONG_LENGTH
        try:
            if cmd.cla == 0xFF:
                if cmd.ins != 0xCA:
                    return SW_INS_NOT_SUPPORTED
                return self._get_data(cmd)
            if cmd.cla != 0x00:
                return SW_CLA_NOT_SUPPORTED
            if cmd.ins == 0xA4:
                return self._select(cmd)
            if cmd.ins == 0xB0:
                return self._read_binary(cmd)
            if cmd.ins == 0xD6:
                return self._update_binary(cmd)
        except _Rejected as rejected:
            return rejected.sw
        return SW_INS_NOT_SUPPORTED

    def _get_data(self, cmd: CommandApdu) -> bytes:
        if cmd.data or cmd.ne is None:
            return SW_WRONG_LENGTH
        if cmd.p2 != 0x00:
            return SW_WRONG_P1P2
        if cmd.p1 == 0x00:
            return _answer(self.uid, cmd)
        if cmd.p1 == 0x01:
            return _answer(self.ats, cmd)
        return SW_FUNCTION_NOT_SUPPORTED

    def _select(self, cmd: CommandApdu) -> bytes:
        if cmd.p1 == 0x04:
            if cmd.p2 not in (0x00, 0x0C):
                return SW_WRONG_P1P2
            # A failed SELECT leaves the current selection as it was (ISO 7816-4 §7.1.1).
            if cmd.data != ONECARD_AID:
                return SW_FILE_NOT_FOUND
            self._app_selected = True
            return SW_OK if cmd.p2 == 0x0C or cmd.ne is None else _answer(FCI, cmd)
        if cmd.p1 not in (0x00, 0x02):
            return SW_WRONG_P1P2
        if cmd.p2 not in (0x00, 0x04, 0x0C):
            return SW_WRONG_P1P2
        if not cmd.data and cmd.p1 == 0x00:
            file_id = MF_ID
        elif len(cmd.data) == 2:
            file_id = int.from_bytes(cmd.data, "big")
        else:
            return SW_LC_INCONSISTENT
        if file_id == MF_ID and cmd.p1 == 0x00:
            self._app_selected = False
            return SW_OK
        if file_id != DATA_EF_ID or not self._app_selected:
            return SW_FILE_NOT_FOUND
        return SW_OK if cmd.p2 == 0x0C or cmd.ne is None else _answer(FCP_DATA_EF, cmd)

    def _ef_offset(self, cmd: CommandApdu) -> int:
        """Offset into the data EF addressed by P1-P2 (ISO 7816-4 §11.2.2)."""
        if cmd.p1 & 0x80:  # b8=1: P1 holds an SFI, P2 the offset
            if cmd.p1 & 0x60:
                raise _Rejected(SW_WRONG_P1P2)
            if cmd.p1 & 0x1F != DATA_EF_SFI or not self._app_selected:
                raise _Rejected(SW_FILE_NOT_FOUND)
            offset = cmd.p2
        elif not self._app_selected:
            raise _Rejected(SW_NO_CURRENT_EF)
        else:
            offset = (cmd.p1 << 8) | cmd.p2
        if offset >= DATA_EF_SIZE:
            raise _Rejected(SW_OFFSET_OUTSIDE_EF)
        return offset

    def _read_binary(self, cmd: CommandApdu) -> bytes:
        if cmd.data or cmd.ne is None:
            return SW_WRONG_LENGTH
        offset = self._ef_offset(cmd)
        chunk = bytes(self._ef[offset : offset + cmd.ne])
        if len(chunk) < cmd.ne and not cmd.le_wildcard:
            return chunk + SW_END_OF_DATA
        return chunk + SW_OK

    def _update_binary(self, cmd: CommandApdu) -> bytes:
        if not cmd.data or cmd.ne is not None:
            return SW_WRONG_LENGTH
        offset = self._ef_offset(cmd)
        if offset + len(cmd.data) > DATA_EF_SIZE:
            return SW_NOT_ENOUGH_MEMORY
        self._ef[offset : offset + len(cmd.data)] = cmd.data
        return SW_OK


# --- vpcd transport --------------------------------------------------------------------

VPCD_POWER_OFF = 0x00
VPCD_POWER_ON = 0x01
VPCD_RESET = 0x02
VPCD_GET_ATR = 0x04

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
_RECONNECT_PAUSE = 0.2
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def _arm_quickack(sock: socket.socket) -> None:
    # vpcd writes a message's 2-byte length and its body separately. With Nagle on vpcd's
    # side and delayed ACK on ours, the body waits ~40 ms for our ACK of the length. Linux
    # drops quick-ACK mode on its own, so it is re-armed before every receive.
    if _TCP_QUICKACK is not None:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


async def _receive_exactly(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int
) -> bytes | None:
    """``size`` bytes, or None if vpcd closed the connection first."""
    buffer = bytearray()
    while len(buffer) < size:
        _arm_quickack(sock)
        chunk = await loop.sock_recv(sock, size - len(buffer))
        if not chunk:
            return None
        buffer += chunk
    return bytes(buffer)


async def _receive_message(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes | None:
    header = await _receive_exactly(loop, sock, 2)
    if header is None:
        return None
    return await _receive_exactly(loop, sock, int.from_bytes(header, "big"))


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


async def _connect(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    error: OSError = OSError(f"no address for {host!r}")
    for family, kind, proto, _, address in await loop.getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    ):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        # Each answer goes out in one write; nothing should hold it back.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise error


async def _connect_with_backoff(host: str, port: int) -> socket.socket:
    delay = _BACKOFF_FIRST
    while True:
        try:
            return await _connect(host, port)
        except OSError as exc:
            if delay == _BACKOFF_FIRST:
                log.info("vpcd_unreachable", vpcd=f"{host}:{port}", error=str(exc))
        # Jitter keeps several simulated cards from knocking in lockstep.
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, _BACKOFF_MAX)


def _raise_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        raise exc


class VirtualCard:
    """Inserts a :class:`CardApplet` into a vpcd reader slot over TCP.

    vpcd's wire protocol (vsmartcard ``vpcd.c`` and ``VirtualICC``): every message, in both
    directions, is a 2-byte big-endian length followed by that many bytes. A 1-byte message
    from vpcd is a control code: 00 power off, 01 power on, 02 reset (none answered), 04 get
    ATR (answered with the ATR). A longer one is a command APDU, answered with the response
    APDU. pcscd notices an insertion or a removal at its next presence poll (~0.4 s).

    The card owns the task serving its connection: :meth:`remove` (or leaving
    :meth:`inserted`) cancels and awaits it.
    """

    def __init__(self, applet: CardApplet) -> None:
        self.applet = applet
        self._task: asyncio.Task[None] | None = None

    @property
    def is_inserted(self) -> bool:
        """True while connected to vpcd."""
        return self._task is not None and not self._task.done()

    async def insert(self, host: str = "127.0.0.1", port: int = VPCD_DEFAULT_PORT) -> None:
        """Connect to vpcd, retrying with backoff while it is not up, and start answering.

        Returns once connected; bound the wait with ``asyncio.timeout()``. Raises
        RuntimeError if the card is already inserted.
        """
        if self._task is not None:
            if not self._task.done():
                raise RuntimeError("the card is already inserted")
            task, self._task = self._task, None
            _raise_failure(task)
        sock = await _connect_with_backoff(host, port)
        self._task = asyncio.create_task(self._serve(sock), name=f"vcard-{self.applet.uid.hex()}")
        log.info("card_inserted", uid=self.applet.uid.hex(), vpcd=f"{host}:{port}")

    async def remove(self) -> None:
        """Take the card out of the field: close the connection. Idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # wait() rather than awaiting the task: its CancelledError is not ours to raise.
        await asyncio.wait({task})
        _raise_failure(task)
        log.info("card_removed", uid=self.applet.uid.hex())

    async def wait_removed(self) -> None:
        """Return when the card has left the reader: vpcd closed, or :meth:`remove` ran."""
        task = self._task
        if task is None:
            return
        await asyncio.wait({task})
        if self._task is task:
            self._task = None
        _raise_failure(task)

    @contextlib.asynccontextmanager
    async def inserted(
        self, host: str = "127.0.0.1", port: int = VPCD_DEFAULT_PORT
    ) -> AsyncIterator[VirtualCard]:
        """``async with card.inserted(host, port):`` — inserted inside, removed after."""
        await self.insert(host, port)
        try:
            yield self
        finally:
            await self.remove()

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (message := await _receive_message(loop, sock)) is not None:
                reply = self._reply(message)
                if reply is not None:
                    await loop.sock_sendall(sock, _frame(reply))
            log.info("vpcd_closed", uid=self.applet.uid.hex())
        except OSError as exc:
            log.info("vpcd_connection_lost", uid=self.applet.uid.hex(), error=str(exc))
        finally:
            sock.close()
            self.applet.power_off()  # out of the field

    def _reply(self, message: bytes) -> bytes | None:
        if len(message) == 1:
            code = message[0]
            if code == VPCD_GET_ATR:
                return self.applet.atr
            if code == VPCD_POWER_ON:
                self.applet.power_on()
            elif code == VPCD_POWER_OFF:
                self.applet.power_off()
            elif code == VPCD_RESET:
                self.applet.reset()
            else:
                log.warning("vpcd_unknown_control", code=code)
            return None
        if not message:
            return None
        try:
            return self.applet.process_apdu(message)
        except Exception:  # a card bug must answer 6F 00, not eject the card
            log.exception("apdu_failed", apdu=message.hex())
            return SW_NO_PRECISE_DIAGNOSIS


async def keep_inserted(card: VirtualCard, host: str, port: int) -> None:
    """Keep ``card`` in the vpcd reader until cancelled.

    Waits for vpcd to come up, and reconnects whenever vpcd drops the connection (pcscd
    restarted). Removes the card when cancelled.
    """
    try:
        while True:
            await card.insert(host, port)
            await card.wait_removed()
            await asyncio.sleep(_RECONNECT_PAUSE)  # no busy loop if vpcd keeps dropping us
    finally:
        await card.remove()


def _read_data_file(path: Path | None) -> bytes:
    if path is None:
        return b""
    data = path.read_bytes()
    if len(data) > DATA_EF_SIZE:
        raise ValueError(f"{path}: {len(data)} bytes; the data EF holds {DATA_EF_SIZE}")
    return data


def run_vcard(host: str, port: int, uid_hex: str, *, data_file: Path | None = None) -> None:
    """Serve one virtual card to vpcd at ``host:port`` until SIGINT or SIGTERM.

    ``data_file`` (at most 256 bytes) initialises the data EF, zero-padded; updates stay in
    memory. Raises ValueError for a bad UID or data file, before connecting.
    """
    applet = CardApplet(parse_uid(uid_hex), data=_read_data_file(data_file))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal way to stop
        asyncio.run(_run_until_signalled(VirtualCard(applet), host, port))


async def _run_until_signalled(card: VirtualCard, host: str, port: int) -> None:
    main = asyncio.current_task()
    assert main is not None  # noqa: S101 -- always true inside asyncio.run
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    with contextlib.suppress(asyncio.CancelledError):  # SIGTERM
        await keep_inserted(card, host, port)
