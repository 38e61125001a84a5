"""The terminal link's frame layer, sans I/O (see ``docs/terminal-protocol.md``).

A frame on the wire::

    STX(0x02) | version(u8) | type(u8) | seq(u16 BE) | length(u16 BE) | payload | CRC(u16 BE)

The CRC is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR) over
every byte after STX up to the end of the payload. The payload is a MessagePack map (see
:mod:`protocol.terminal`); this layer treats it as opaque bytes.

:class:`FrameDecoder` is fed whatever bytes a transport read and returns the complete frames
found so far. It never raises for bad input: corrupt bytes are skipped (counted in
:attr:`FrameDecoder.stats`, described in :meth:`FrameDecoder.take_errors`) and decoding
resumes at the next STX whose frame checks out. It never buffers more than one maximal frame.
"""

from __future__ import annotations

import binascii
import enum
import struct
from dataclasses import dataclass, field

from protocol.errors import ChecksumError, FramingError

STX = 0x02
PROTOCOL_VERSION = 1
HEADER = struct.Struct(">BBBHH")  # STX, version, type, seq, length
HEADER_SIZE = HEADER.size  # 7
CRC_SIZE = 2
#: Largest payload a frame may carry. Lists and record uploads are chunked to fit.
MAX_PAYLOAD = 8192
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
#: Bytes of a partial frame may wait this long for the rest before the transport should call
#: :meth:`FrameDecoder.expire` (a lone STX in line noise must not stall the link).
PARTIAL_FRAME_TIMEOUT_S = 0.5


class FrameType(enum.IntEnum):
    """Message types. Requests expect a reply frame carrying the request's ``seq``."""

    HELLO = 0x01  # T→E  request; reply CHALLENGE or ERROR
    CHALLENGE = 0x02  # E→T
    AUTH = 0x03  # T→E  request; reply WELCOME or ERROR
    WELCOME = 0x04  # E→T
    HEARTBEAT = 0x05  # T→E  request; reply HEARTBEAT_ACK
    HEARTBEAT_ACK = 0x06  # E→T
    TAP = 0x10  # T→E  request; reply DECISION
    DECISION = 0x11  # E→T
    RECHARGE_PREPARE = 0x20  # T→E  request; reply RECHARGE_RESULT
    RECHARGE_COMMIT = 0x21  # T→E  request; reply RECHARGE_RESULT
    RECHARGE_ABORT = 0x22  # T→E  request; reply RECHARGE_RESULT
    RECHARGE_RESULT = 0x23  # E→T
    EVENT = 0x30  # T→E  request; reply ACK
    TIME = 0x40  # E→T  request; reply ACK
    CONFIG = 0x41  # E→T  request; reply ACK
    LIST_UPDATE = 0x42  # E→T  request; reply ACK
    RECORD_UPLOAD = 0x43  # T→E  request; reply ACK
    DOOR_OPEN = 0x44  # E→T  request; reply ACK
    RECORD_REQUEST = 0x45  # E→T  request; reply RECORD_REPLY
    RECORD_REPLY = 0x46  # T→E
    ACK = 0x7E  # either way, reply
    ERROR = 0x7F  # either way, reply


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: its type, the sender's sequence number, and the raw payload."""

    type: int
    seq: int
    payload: bytes = b""
    version: int = PROTOCOL_VERSION


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (check value of b"123456789" is 0x29B1)."""
    return binascii.crc_hqx(data, 0xFFFF)


def encode_frame(frame: Frame) -> bytes:
    """The wire bytes of ``frame``; :class:`FramingError` if a field is out of range."""
    if not 0 <= frame.type <= 0xFF:
        raise FramingError(f"frame type {frame.type} out of range 0..255")
    if not 0 <= frame.seq <= 0xFFFF:
        raise FramingError(f"frame seq {frame.seq} out of range 0..65535")
    if frame.version != PROTOCOL_VERSION:
        raise FramingError(f"cannot encode protocol version {frame.version}")
    if len(frame.payload) > MAX_PAYLOAD:
        raise FramingError(f"payload of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}")
    head = HEADER.pack(STX, frame.version, frame.type, frame.seq, len(frame.payload))
    body = head[1:] + frame.payload
    return head[:1] + body + crc16(body).to_bytes(2, "big")


@dataclass(slots=True)
class DecoderStats:
    """Counters a transport exports as metrics."""

    frames: int = 0
    bytes_skipped: int = 0
    crc_errors: int = 0
    oversize: int = 0
    bad_version: int = 0
    expired: int = 0


@dataclass(slots=True)
class FrameDecoder:
    """Incremental frame decoder: ``feed(bytes) -> list[Frame]``, resynchronising on garbage.

    Buffered data never exceeds :data:`MAX_FRAME` bytes between calls. Problems found while
    decoding are kept (up to ``max_errors``) for :meth:`take_errors`; counters in ``stats``.
    """

    max_errors: int = 32
    stats: DecoderStats = field(default_factory=DecoderStats)
    _buf: bytearray = field(default_factory=bytearray)
    _errors: list[FramingError] = field(default_factory=list)

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add ``data`` and return every complete, valid frame it finished."""
        frames: list[Frame] = []
        view = memoryview(data)
        # Work in slices of at most one frame so the buffer stays bounded even if a caller
        # hands us megabytes of garbage at once.
        for start in range(0, len(view), MAX_FRAME):
            self._buf += view[start : start + MAX_FRAME]
            self._drain(frames)
        return frames

    def expire(self) -> list[Frame]:
        """Give up on a partial frame that waited too long (see PARTIAL_FRAME_TIMEOUT_S).

        Drops its STX and rescans what follows, returning any frames that were hiding behind
        a false start.
        """
        if not self._buf:
            return []
        self.stats.expired += 1
        self._note(FramingError(f"partial frame of {len(self._buf)} bytes timed out"))
        self._skip(1)
        frames: list[Frame] = []
        self._drain(frames)
        return frames

    def take_errors(self) -> list[FramingError]:
        """Return and clear the problems seen since the last call (oldest first)."""
        errors, self._errors = self._errors, []
        return errors

    def _note(self, error: FramingError) -> None:
        if len(self._errors) < self.max_errors:
            self._errors.append(error)

    def _skip(self, count: int) -> None:
        self.stats.bytes_skipped += count
        del self._buf[:count]

    def _drain(self, frames: list[Frame]) -> None:
        buf = self._buf
        while buf:
            if buf[0] != STX:
                nxt = buf.find(STX)
                skipped = len(buf) if nxt < 0 else nxt
                self._note(FramingError(f"skipped {skipped} bytes of noise before STX"))
                self._skip(skipped)
                continue
            if len(buf) < HEADER_SIZE:
                return
            _, version, ftype, seq, length = HEADER.unpack_from(buf)
            if version != PROTOCOL_VERSION:
                self.stats.bad_version += 1
                self._note(FramingError(f"unsupported protocol version {version}"))
                self._skip(1)
                continue
            if length > MAX_PAYLOAD:
                self.stats.oversize += 1
                self._note(FramingError(f"declared length {length} exceeds {MAX_PAYLOAD}"))
                self._skip(1)
                continue
            end = HEADER_SIZE + length + CRC_SIZE
            if len(buf) < end:
                return
            body = memoryview(buf)[1 : HEADER_SIZE + length]
            got = int.from_bytes(buf[end - CRC_SIZE : end], "big")
            want = crc16(body)
            body.release()
            if got != want:
                self.stats.crc_errors += 1
                self._note(ChecksumError(f"CRC {got:04X} != {want:04X} (type 0x{ftype:02X})"))
                self._skip(1)
                continue
            frames.append(Frame(ftype, seq, bytes(buf[HEADER_SIZE : HEADER_SIZE + length])))
            self.stats.frames += 1
            del buf[:end]
