"""The terminal link's frame codec: exact round trips, and resynchronisation after garbage.

The decoder's contract (module docstring of ``protocol.framing``): it never raises for bad
input, never buffers more than one maximal frame, skips corrupt bytes (counted) and resumes
at the next STX whose frame checks out; ``expire()`` gives up on a stalled partial frame.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol.errors import ChecksumError, FramingError, ProtocolError
from protocol.framing import (
    CRC_SIZE,
    HEADER_SIZE,
    MAX_FRAME,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    STX,
    Frame,
    FrameDecoder,
    FrameType,
    crc16,
    encode_frame,
)

frames = st.builds(
    Frame,
    type=st.integers(0, 0xFF),
    seq=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=MAX_PAYLOAD),
)
#: Small frames, for properties that feed many of them.
small_frames = st.builds(
    Frame,
    type=st.integers(0, 0xFF),
    seq=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=64),
)


def feed_in_chunks(decoder: FrameDecoder, data: bytes, sizes: list[int]) -> list[Frame]:
    """Feed ``data`` cut at ``sizes`` (cycled), checking the buffer bound after every call."""
    out: list[Frame] = []
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        out += decoder.feed(data[pos : pos + size])
        assert decoder.buffered <= MAX_FRAME
        pos += size
        i += 1
    return out


def flush(decoder: FrameDecoder) -> list[Frame]:
    """What a transport does when no more bytes come: expire partial frames until empty."""
    out: list[Frame] = []
    while decoder.buffered:
        before = decoder.buffered
        out += decoder.expire()
        assert decoder.buffered < before
    return out


def crc16_bitwise(data: bytes) -> int:
    """CRC-16/CCITT-FALSE bit by bit, as the C reference in docs/terminal-protocol.md §3.2."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def reference_decode(stream: bytes) -> list[tuple[int, Frame]]:
    """docs/terminal-protocol.md §3.4 applied to a whole stream: ``(offset, frame)`` per frame.

    At each STX, take the frame if its header is sane and its CRC checks out and jump past it;
    otherwise move on by one byte. A partial frame at the end is given up on (as ``expire``).
    """
    out: list[tuple[int, Frame]] = []
    i = 0
    while i < len(stream):
        frame = frame_at(stream, i)
        if frame is None:
            i += 1
            continue
        out.append((i, frame))
        i += HEADER_SIZE + len(frame.payload) + CRC_SIZE
    return out


def frame_at(stream: bytes, i: int) -> Frame | None:
    """The complete, CRC-valid frame starting at ``stream[i]``, if there is one."""
    if stream[i] != STX or len(stream) - i < HEADER_SIZE:
        return None
    version, ftype = stream[i + 1], stream[i + 2]
    seq = int.from_bytes(stream[i + 3 : i + 5], "big")
    length = int.from_bytes(stream[i + 5 : i + 7], "big")
    end = i + HEADER_SIZE + length + CRC_SIZE
    if version != PROTOCOL_VERSION or length > MAX_PAYLOAD or end > len(stream):
        return None
    if crc16_bitwise(stream[i + 1 : end - CRC_SIZE]) != int.from_bytes(
        stream[end - CRC_SIZE : end], "big"
    ):
        return None
    return Frame(ftype, seq, stream[i + HEADER_SIZE : end - CRC_SIZE])


# --- CRC and encoding --------------------------------------------------------------------


def test_crc16_is_ccitt_false_with_its_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1
    assert crc16(b"") == 0xFFFF


@given(st.binary(max_size=300))
def test_crc16_matches_the_bitwise_reference(data: bytes) -> None:
    assert crc16(data) == crc16_bitwise(data)


def test_encoded_frame_has_the_documented_layout() -> None:
    wire = encode_frame(Frame(FrameType.TAP, 0x1234, b"\xaa\xbb\xcc"))

    assert wire[:7] == bytes([STX, PROTOCOL_VERSION, 0x10, 0x12, 0x34, 0x00, 0x03])
    assert wire[7:10] == b"\xaa\xbb\xcc"
    assert wire[10:] == crc16(wire[1:10]).to_bytes(2, "big")
    assert len(wire) == HEADER_SIZE + 3 + CRC_SIZE


def test_max_frame_is_header_plus_max_payload_plus_crc() -> None:
    assert MAX_FRAME == HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
    assert len(encode_frame(Frame(0, 0, bytes(MAX_PAYLOAD)))) == MAX_FRAME


@given(frames)
@settings(max_examples=60)
def test_frame_round_trips_through_encoder_and_decoder(frame: Frame) -> None:
    decoder = FrameDecoder()

    assert decoder.feed(encode_frame(frame)) == [frame]
    assert decoder.buffered == 0
    assert decoder.stats.frames == 1
    assert decoder.take_errors() == []


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (Frame(-1, 0), "type"),
        (Frame(256, 0), "type"),
        (Frame(0, -1), "seq"),
        (Frame(0, 0x10000), "seq"),
        (Frame(0, 0, bytes(MAX_PAYLOAD + 1)), "payload"),
        (Frame(0, 0, version=2), "version"),
        (Frame(0, 0, version=0), "version"),
    ],
    ids=["type-1", "type256", "seq-1", "seq65536", "oversize", "version2", "version0"],
)
def test_encode_frame_rejects_out_of_range_fields(frame: Frame, match: str) -> None:
    with pytest.raises(FramingError, match=match):
        encode_frame(frame)


# --- chunking ------------------------------------------------------------------------------


def test_decoder_accepts_a_frame_fed_byte_by_byte() -> None:
    frame = Frame(FrameType.HEARTBEAT, 7, b"\x81\xa7time_ms\xcf\x00\x00\x01\x8c\x00\x00\x00\x00")
    wire = encode_frame(frame)
    decoder = FrameDecoder()

    out = [f for i in range(len(wire)) for f in decoder.feed(wire[i : i + 1])]

    assert out == [frame]
    assert decoder.buffered == 0


def test_decoder_returns_nothing_until_the_last_byte_arrives() -> None:
    wire = encode_frame(Frame(1, 2, b"abc"))
    decoder = FrameDecoder()

    assert decoder.feed(wire[:-1]) == []
    assert decoder.buffered == len(wire) - 1
    assert decoder.feed(wire[-1:]) == [Frame(1, 2, b"abc")]


@given(
    st.lists(small_frames, min_size=1, max_size=8),
    st.lists(st.integers(1, 40), min_size=1, max_size=20),
)
def test_any_chunking_of_a_stream_gives_the_same_frames(
    sent: list[Frame], sizes: list[int]
) -> None:
    wire = b"".join(map(encode_frame, sent))

    byte_by_byte = feed_in_chunks(FrameDecoder(), wire, [1])
    chunked = feed_in_chunks(FrameDecoder(), wire, sizes)
    at_once = FrameDecoder().feed(wire)

    assert byte_by_byte == chunked == at_once == sent


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decoder_accepts_any_bytes_like_input(kind: type) -> None:
    wire = encode_frame(Frame(1, 1, b"x"))

    assert FrameDecoder().feed(kind(wire)) == [Frame(1, 1, b"x")]


def test_decoder_copes_with_frames_longer_than_one_internal_slice() -> None:
    sent = [Frame(t, t, bytes([t]) * MAX_PAYLOAD) for t in range(5)]
    wire = b"".join(map(encode_frame, sent))
    decoder = FrameDecoder()

    assert decoder.feed(wire) == sent
    assert decoder.buffered == 0


# --- resynchronisation ---------------------------------------------------------------------


def test_decoder_skips_leading_noise_and_counts_it() -> None:
    noise = b"\xff\x00hello\x01\x03"
    frame = Frame(FrameType.TAP, 1, b"payload")
    decoder = FrameDecoder()

    assert decoder.feed(noise + encode_frame(frame)) == [frame]
    assert decoder.stats.bytes_skipped == len(noise)
    assert decoder.stats.frames == 1
    errors = decoder.take_errors()
    assert len(errors) == 1
    assert "noise" in str(errors[0])


def test_decoder_drops_pure_noise_without_buffering_it() -> None:
    decoder = FrameDecoder()

    assert decoder.feed(b"\x00\x01\x03" * 1000) == []
    assert decoder.buffered == 0
    assert decoder.stats.bytes_skipped == 3000


def test_decoder_recovers_next_frame_after_a_payload_byte_is_corrupted() -> None:
    bad = bytearray(encode_frame(Frame(FrameType.TAP, 1, b"hello")))
    bad[HEADER_SIZE + 1] ^= 0x40
    good = Frame(FrameType.TAP, 2, b"world")
    decoder = FrameDecoder()

    assert decoder.feed(bytes(bad) + encode_frame(good)) == [good]
    assert decoder.stats.crc_errors == 1
    assert any(isinstance(e, ChecksumError) for e in decoder.take_errors())


def test_decoder_recovers_next_frame_after_a_crc_byte_is_corrupted() -> None:
    bad = bytearray(encode_frame(Frame(FrameType.TAP, 1, b"hello")))
    bad[-1] ^= 0x01
    good = Frame(FrameType.TAP, 2, b"world")
    decoder = FrameDecoder()

    assert decoder.feed(bytes(bad) + encode_frame(good)) == [good]
    assert decoder.stats.crc_errors == 1


@pytest.mark.parametrize("cut", range(1, 18))
def test_decoder_recovers_the_frames_that_follow_a_truncated_frame(cut: int) -> None:
    # A terminal reset mid-frame: its next frames arrive right behind the stump, and the
    # stump's header claims bytes that are really theirs. Nothing but the stump may be lost.
    stump = encode_frame(Frame(FrameType.RECORD_UPLOAD, 1, b"records that never came"))[:cut]
    after = [Frame(FrameType.HELLO, 2, b"x" * 5), Frame(FrameType.AUTH, 3, b"y" * 40)]
    decoder = FrameDecoder()

    out = decoder.feed(stump + b"".join(map(encode_frame, after)))
    out += flush(decoder)

    assert out == after


CORRUPTED = Frame(FrameType.DECISION, 0x0102, b"\x84\xa3rec\x01\xa2ok\xc3\x02\x02")
FOLLOWING = Frame(FrameType.HEARTBEAT_ACK, 0x0203, b"\x81\xa7time_ms\x02")


@pytest.mark.parametrize("position", range(len(encode_frame(CORRUPTED))))
def test_decoder_drops_a_frame_with_any_corrupted_byte_and_recovers_the_next(
    position: int,
) -> None:
    """Exhaustive over every byte of a frame (header, payload, CRC) and every wrong value.

    The frames are chosen to contain STX bytes in their seq and payload, so corruption can
    create false starts; the following frame must still come out once the link is flushed.
    """
    wire = encode_frame(CORRUPTED)
    following = encode_frame(FOLLOWING)
    for value in range(256):
        if value == wire[position]:
            continue
        bad = bytearray(wire)
        bad[position] = value
        decoder = FrameDecoder()

        out = decoder.feed(bytes(bad) + following)
        out += flush(decoder)

        assert out == [FOLLOWING], (position, value)
        s = decoder.stats
        assert s.crc_errors + s.bad_version + s.oversize + s.bytes_skipped > 0


def test_decoder_rejects_an_oversize_length_at_once_without_buffering() -> None:
    header = bytes([STX, PROTOCOL_VERSION, FrameType.TAP, 0, 1]) + (MAX_PAYLOAD + 1).to_bytes(
        2, "big"
    )
    good = Frame(FrameType.TAP, 2, b"ok")
    decoder = FrameDecoder()

    assert decoder.feed(header) == []
    assert decoder.buffered == 0
    assert decoder.stats.oversize == 1
    assert decoder.feed(encode_frame(good)) == [good]


def test_decoder_rejects_the_largest_declared_length_and_recovers_the_following_frame() -> None:
    header = bytes([STX, PROTOCOL_VERSION, FrameType.TAP, 0, 1, 0xFF, 0xFF])
    good = Frame(FrameType.TAP, 2, b"ok")
    decoder = FrameDecoder()

    assert decoder.feed(header + b"\x00" * 100 + encode_frame(good)) == [good]
    assert decoder.stats.oversize == 1
    assert decoder.buffered == 0
    assert "exceeds" in str(decoder.take_errors()[0])


@pytest.mark.parametrize("version", [0, 2, 0xFF])
def test_decoder_skips_a_frame_of_another_protocol_version(version: int) -> None:
    other = bytearray(encode_frame(Frame(FrameType.TAP, 1, b"v?")))
    other[1] = version
    good = Frame(FrameType.TAP, 2, b"v1")
    decoder = FrameDecoder()

    out = decoder.feed(bytes(other) + encode_frame(good))
    out += flush(decoder)

    assert out == [good]
    assert decoder.stats.bad_version >= 1
    assert any("version" in str(e) for e in decoder.take_errors())


def test_expire_drops_a_stalled_false_stx_and_recovers_the_frames_behind_it() -> None:
    # A lone STX in line noise whose "header" declares a long payload swallows the real
    # frames after it until expire() gives up on it.
    false_start = bytes([STX, PROTOCOL_VERSION, 0x10, 0x00, 0x00, 0x10, 0x00])
    behind = [Frame(FrameType.TAP, 1, b"a"), Frame(FrameType.EVENT, 2, b"b")]
    decoder = FrameDecoder()

    assert decoder.feed(false_start + b"".join(map(encode_frame, behind))) == []
    assert decoder.buffered > 0

    assert decoder.expire() == behind
    assert decoder.buffered == 0
    assert decoder.stats.expired == 1
    assert decoder.stats.bytes_skipped == len(false_start)
    assert any("timed out" in str(e) for e in decoder.take_errors())


def test_expire_keeps_a_genuine_partial_frame_behind_a_false_start() -> None:
    wire = encode_frame(Frame(FrameType.TAP, 9, b"partial"))
    decoder = FrameDecoder()
    decoder.feed(bytes([STX, PROTOCOL_VERSION, 0, 0, 0, 0x01, 0x00]) + wire[:5])

    assert decoder.expire() == []
    assert decoder.buffered == 5
    assert decoder.feed(wire[5:]) == [Frame(FrameType.TAP, 9, b"partial")]


def test_expire_on_an_empty_decoder_does_nothing() -> None:
    decoder = FrameDecoder()

    assert decoder.expire() == []
    assert decoder.stats.expired == 0
    assert decoder.take_errors() == []


def test_take_errors_returns_oldest_first_then_clears() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"noise")
    decoder.feed(bytes([STX, 9, 0, 0, 0, 0, 0]))

    errors = decoder.take_errors()

    assert "noise" in str(errors[0])
    assert "version 9" in str(errors[1])
    assert all(type(e) is FramingError for e in errors)
    assert decoder.take_errors() == []


def test_kept_errors_are_capped_but_counters_are_not() -> None:
    decoder = FrameDecoder(max_errors=3)
    for _ in range(10):
        decoder.feed(bytes([STX, 9, 0, 0, 0, 0, 0]))

    assert len(decoder.take_errors()) == 3
    assert decoder.stats.bad_version == 10


def test_framing_errors_are_protocol_errors_with_codes() -> None:
    assert issubclass(ChecksumError, FramingError)
    assert issubclass(FramingError, ProtocolError)
    assert FramingError.code == "bad_frame"
    assert ChecksumError.code == "bad_crc"


# --- garbage and truncation fuzz ---------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """One piece of a hostile stream: a valid frame, a truncated frame, or garbage."""

    wire: bytes
    frame: Frame | None = None


valid_pieces = small_frames.map(lambda f: Piece(encode_frame(f), f))
truncated_pieces = st.builds(
    lambda wire, cut: Piece(wire[: max(1, int(len(wire) * cut))]),
    small_frames.map(encode_frame),
    st.floats(0, 0.99),
)
garbage_pieces = st.binary(min_size=1, max_size=80).map(Piece)
stx_free_garbage_pieces = (
    st.binary(min_size=1, max_size=80).map(lambda b: b.replace(bytes([STX]), b"\x03")).map(Piece)
)
#: Garbage that looks like the start of a frame (STX, the right version) is the hard case.
false_start_pieces = st.builds(
    lambda head, tail: Piece(bytes([STX, PROTOCOL_VERSION]) + head + tail),
    st.binary(max_size=5),
    st.binary(max_size=20),
)
hostile_streams = st.lists(
    valid_pieces | truncated_pieces | garbage_pieces | false_start_pieces, max_size=12
)
chunk_sizes = st.lists(st.integers(1, 300), min_size=1, max_size=10)


def valid_starts(pieces: list[Piece]) -> set[int]:
    starts, pos = set(), 0
    for piece in pieces:
        if piece.frame is not None:
            starts.add(pos)
        pos += len(piece.wire)
    return starts


@given(hostile_streams, chunk_sizes)
@settings(max_examples=150, deadline=2000)
def test_decoder_finds_exactly_what_the_resync_rule_finds_in_any_stream(
    pieces: list[Piece], sizes: list[int]
) -> None:
    """Whatever the mix of frames, truncations and garbage, in whatever chunks: no exception,
    a bounded buffer after every feed, and exactly the frames the resync rule finds."""
    stream = b"".join(p.wire for p in pieces)
    decoder = FrameDecoder()

    out = feed_in_chunks(decoder, stream, sizes)
    out += flush(decoder)

    assert out == [frame for _, frame in reference_decode(stream)]
    assert decoder.stats.frames == len(out)
    assert all(isinstance(e, FramingError) for e in decoder.take_errors())


@given(hostile_streams, chunk_sizes)
@settings(max_examples=150, deadline=2000)
def test_decoder_recovers_every_valid_frame_among_garbage_and_truncations(
    pieces: list[Piece], sizes: list[int]
) -> None:
    """Every valid frame comes out, in order, and nothing else does.

    Excluded is the one case no CRC-16 framing can rule out: garbage that happens to form a
    complete frame with a matching CRC (about 1 in 65536 per false start). The test above
    pins the decoder's behaviour in that case too.
    """
    stream = b"".join(p.wire for p in pieces)
    starts = valid_starts(pieces)
    assume(not any(frame_at(stream, i) for i in range(len(stream)) if i not in starts))
    decoder = FrameDecoder()

    out = feed_in_chunks(decoder, stream, sizes)
    out += flush(decoder)

    assert out == [p.frame for p in pieces if p.frame is not None]


@given(st.lists(valid_pieces | stx_free_garbage_pieces, max_size=12), chunk_sizes)
@settings(max_examples=100, deadline=2000)
def test_garbage_without_stx_costs_no_frame_and_leaves_nothing_buffered(
    pieces: list[Piece], sizes: list[int]
) -> None:
    stream = b"".join(p.wire for p in pieces)
    decoder = FrameDecoder()

    out = feed_in_chunks(decoder, stream, sizes)

    assert out == [p.frame for p in pieces if p.frame is not None]
    assert decoder.buffered == 0
    assert decoder.stats.bytes_skipped == sum(len(p.wire) for p in pieces if p.frame is None)


@given(st.binary(max_size=3 * MAX_FRAME), small_frames)
@settings(max_examples=100, deadline=2000)
def test_a_frame_fed_after_flushing_any_garbage_is_recovered(garbage: bytes, frame: Frame) -> None:
    decoder = FrameDecoder()
    decoder.feed(garbage)
    assert decoder.buffered <= MAX_FRAME
    flush(decoder)

    assert decoder.buffered == 0
    assert decoder.feed(encode_frame(frame)) == [frame]


@given(st.binary(max_size=4 * MAX_FRAME), st.lists(st.integers(1, 5000), min_size=1, max_size=20))
@settings(max_examples=100, deadline=2000)
def test_random_bytes_in_random_chunks_never_raise_and_stay_bounded(
    data: bytes, sizes: list[int]
) -> None:
    decoder = FrameDecoder()

    feed_in_chunks(decoder, data, sizes)  # asserts the bound after every feed
    flush(decoder)

    assert decoder.buffered == 0


def test_ten_megabytes_of_random_garbage_in_one_call_is_quick_and_bounded() -> None:
    garbage = random.Random(20261123).randbytes(10 * 1024 * 1024)
    frame = Frame(FrameType.TAP, 1, b"after the storm")
    decoder = FrameDecoder()

    started = time.perf_counter()
    decoder.feed(garbage)
    elapsed = time.perf_counter() - started

    assert elapsed < 5.0
    assert decoder.buffered <= MAX_FRAME
    flush(decoder)
    assert decoder.stats.frames == 0
    assert decoder.stats.bytes_skipped == len(garbage)
    assert decoder.feed(encode_frame(frame)) == [frame]
