"""Fuzz every message decoder: terminal frame bodies (MessagePack) and MQTT payloads (JSON).

Input: the first byte picks the decoder (:func:`select`): below 0x80 it is a frame type and
the rest is that frame's MessagePack body; from 0x80 on it picks an MQTT payload decoder
of :data:`MQTT` — record batches (whole and record by record), single records, site
state, health, logs, replies, acks, feed, commands, the blacklist broadcast, central's
state — or the topic parser. Invariants:

- the decoder returns a valid object or raises :class:`~protocol.errors.MessageError`
  (``TopicError`` for a topic) — never another exception, whatever the bytes;
- what it returns re-encodes to bytes that decode and encode to the very same bytes again
  (so an accepted payload can be stored, forwarded and re-read without drifting).

Run: ``.venv/bin/python fuzz/fuzz_messages.py fuzz/corpus/messages -max_total_time=60``
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fuzz_common import InvariantError, require, run

from protocol import messages as m
from protocol.errors import MessageError, TopicError
from protocol.framing import FrameType
from protocol.terminal import decode_body, encode_body
from protocol.topics import parse_topic


@dataclass(frozen=True, slots=True)
class Decoder:
    """One decoder under test: its name (the corpus file prefix), how to decode a payload,
    and how to encode what it returned (None: no re-encoding check)."""

    name: str
    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes] | None


def _terminal(ftype: int) -> Decoder:
    name = FrameType(ftype).name if ftype in FRAME_CODES else f"0x{ftype:02X}"
    return Decoder(f"terminal.{name}", lambda p: decode_body(ftype, p), encode_body)


def _mqtt(name: str, type_: type[m.Message]) -> Decoder:
    return Decoder(name, lambda p: m.decode(p, type_), m.encode)


def _raw_batch(payload: bytes) -> list[Any]:
    return m.decode_batch_records(m.decode(payload, m.RawRecordBatch))


def _topic(payload: bytes) -> object:
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return None  # MQTT topics are UTF-8: the client library refuses anything else
    try:
        return parse_topic(text)
    except TopicError:
        return None


FRAME_CODES = frozenset(int(t) for t in FrameType)
#: A first byte below this is a frame type: the rest is that frame's body (an unknown type
#: exercises the "unknown frame type" refusal). Frame types stay below 0x80.
MQTT_SELECTORS = 0x80
#: First byte ``0x80 + i`` selects ``MQTT[i]`` (wrapping). Append only: seeds name their
#: decoder by that byte.
MQTT: tuple[Decoder, ...] = (
    Decoder("mqtt.up.records", m.decode_batch, m.encode),
    Decoder("mqtt.up.records.raw", _raw_batch, None),
    Decoder("mqtt.record", m.decode_record, m.encode),
    Decoder("mqtt.up.state", m.decode_site_state, m.encode),
    _mqtt("mqtt.up.health", m.Health),
    _mqtt("mqtt.up.logs", m.LogBatch),
    _mqtt("mqtt.up.reply", m.Reply),
    _mqtt("mqtt.down.ack", m.Ack),
    _mqtt("mqtt.down.feed", m.Feed),
    Decoder("mqtt.down.cmd", m.decode_command, m.encode),
    _mqtt("mqtt.broadcast.blacklist", m.BlacklistDelta),
    _mqtt("mqtt.central.state", m.CentralState),
    Decoder("mqtt.topic", _topic, None),
)
#: The body decoder of every selector below 0x80 (most of them unknown frame types).
TERMINAL: tuple[Decoder, ...] = tuple(_terminal(code) for code in range(MQTT_SELECTORS))
SELECTORS: dict[str, int] = {
    **{f"terminal.{t.name}": int(t) for t in FrameType},
    **{d.name: MQTT_SELECTORS + i for i, d in enumerate(MQTT)},
}


def select(data: bytes) -> tuple[Decoder, bytes]:
    """The decoder ``data``'s first byte names, and the payload after it."""
    if not data:
        return TERMINAL[0], b""
    first = data[0]
    if first < MQTT_SELECTORS:
        return TERMINAL[first], data[1:]
    return MQTT[(first - MQTT_SELECTORS) % len(MQTT)], data[1:]


def check(data: bytes) -> None:
    """One input: the invariants in the module docstring."""
    decoder, payload = select(data)
    try:
        result = decoder.decode(payload)
    except MessageError as exc:
        require(bool(exc.code), f"{decoder.name}: a MessageError without a code")
        return
    if decoder.name == "mqtt.up.records.raw":
        for item in result:
            require(isinstance(item, MessageError | m.Record), f"raw batch gave {type(item)!r}")
            if isinstance(item, m.Record):
                _round_trip(decoder.name, item, m.encode, m.decode_record)
        return
    if decoder.encode is not None:
        _round_trip(decoder.name, result, decoder.encode, decoder.decode)


def _round_trip(
    name: str, value: Any, encode: Callable[[Any], bytes], decode: Callable[[bytes], Any]
) -> None:
    wire = encode(value)
    try:
        again = decode(wire)
    except MessageError as exc:
        raise InvariantError(f"{name}: its own encoding is refused: {exc}") from exc
    require(encode(again) == wire, f"{name}: {type(value).__name__} drifts on a round trip")


if __name__ == "__main__":
    run(check)
