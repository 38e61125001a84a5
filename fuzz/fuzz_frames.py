"""Fuzz the terminal link's frame layer and frame bodies: bytes off a wire → frames → bodies.

Input: the first byte picks how the stream is cut into reads (0: one read; n: reads of n
bytes), the rest is the stream. Invariants:

- :class:`~protocol.framing.FrameDecoder` never raises, never buffers more than one maximal
  frame, reports only :class:`~protocol.errors.FramingError` problems, and finds the same
  frames however the stream is cut;
- every frame it returns is bytes that were on the wire, with a good CRC;
- each frame's body either parses or raises :class:`~protocol.errors.MessageError` (never
  another exception), and a body that parses re-encodes to bytes that decode and encode
  to the very same bytes again.

Run: ``.venv/bin/python fuzz/fuzz_frames.py fuzz/corpus/frames -max_total_time=60``
"""

from __future__ import annotations

from fuzz_common import require, run

from protocol.errors import FramingError, MessageError
from protocol.framing import MAX_FRAME, Frame, FrameDecoder, encode_frame
from protocol.terminal import decode_body, encode_body, parse_frame


def _decode(stream: bytes, chunk: int) -> tuple[list[Frame], FrameDecoder]:
    decoder = FrameDecoder()
    frames: list[Frame] = []
    step = chunk or max(len(stream), 1)
    for start in range(0, len(stream), step):
        frames += decoder.feed(stream[start : start + step])
        require(decoder.buffered <= MAX_FRAME, f"decoder holds {decoder.buffered} bytes")
    return frames, decoder


def _check_body(frame: Frame) -> None:
    try:
        body = parse_frame(frame)
    except MessageError as exc:
        require(bool(exc.code), "a MessageError without a code")
        return
    wire = encode_body(body)
    # Bytes, not objects, are compared: a NaN in a config map is not equal to itself.
    again = decode_body(frame.type, wire)
    require(encode_body(again) == wire, f"{type(body).__name__} changed on a round trip")


def check(data: bytes) -> None:
    """One input: the invariants in the module docstring."""
    if not data:
        return
    chunk, stream = data[0], data[1:]
    frames, decoder = _decode(stream, chunk)
    errors = decoder.take_errors()
    require(all(isinstance(e, FramingError) for e in errors), f"odd errors: {errors!r}")
    require(len(errors) <= decoder.max_errors, "kept more errors than max_errors")
    whole, _ = _decode(stream, 0)
    require(whole == frames, f"reads of {chunk} bytes found other frames than one read")
    for frame in frames:
        require(encode_frame(frame) in stream, f"frame {frame} is not bytes of the stream")
        _check_body(frame)
    leftover = decoder.expire()  # a partial frame at the end: drop its STX, rescan the rest
    require(decoder.buffered <= MAX_FRAME, "expire left more than one frame buffered")
    for frame in leftover:
        require(encode_frame(frame) in stream, f"frame {frame} after expire is not in the stream")
        _check_body(frame)


if __name__ == "__main__":
    run(check)
