"""Throughput of the terminal frame codec on a realistic TAP/DECISION pair.

Run from the repository root::

    .venv/bin/python bench/frame_codec.py [--seconds N]

Stages, each timed for ``--seconds`` after a short warm-up:

- ``encode``: body encode + frame encode of a POS TAP (keyed amount) and its DECISION
  (approved, Chinese display text);
- ``decode``: ``FrameDecoder.feed`` of both frames + ``parse_frame`` of both bodies;
- ``round_trip``: both of the above, as the simulator and the edge do per sale.

Prints a table and ends with one line ``BENCH {json}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol.framing import FrameDecoder, encode_frame
from protocol.terminal import Decision, Tap, message_frame, parse_frame

TAP = Tap(rec=42, uid="04A1B2C3D4E5F6", time_ms=1_795_440_012_345, amount=1250)
DECISION = Decision(
    rec=42,
    ok=True,
    code="ok",
    display="消费 12.50元\n余额 87.50元",
    amount=1250,
    balance=8750,
)
WARM_UP_S = 0.2
#: Calls per clock read, so perf_counter's own cost stays out of the figures.
BATCH = 200


def encode_pair(seq: int) -> tuple[bytes, bytes]:
    """Wire bytes of the TAP and its DECISION."""
    return (
        encode_frame(message_frame(TAP, seq)),
        encode_frame(message_frame(DECISION, seq)),
    )


class Decoding:
    """Feeds both frames to one long-lived decoder each, as a link's two ends do."""

    def __init__(self, tap_bytes: bytes, decision_bytes: bytes) -> None:
        self.tap_bytes = tap_bytes
        self.decision_bytes = decision_bytes
        self.edge = FrameDecoder()
        self.terminal = FrameDecoder()
        self.peak_buffered = 0

    def decode(self, tap_bytes: bytes, decision_bytes: bytes) -> None:
        (tap_frame,) = self.edge.feed(tap_bytes)
        (decision_frame,) = self.terminal.feed(decision_bytes)
        parse_frame(tap_frame)
        parse_frame(decision_frame)

    def decode_fixed(self) -> None:
        self.decode(self.tap_bytes, self.decision_bytes)

    def decode_split(self) -> None:
        """Feed each frame in two reads, as TCP may, to see the decoder's buffer peak."""
        for decoder, data in ((self.edge, self.tap_bytes), (self.terminal, self.decision_bytes)):
            half = len(data) // 2
            assert decoder.feed(data[:half]) == []
            self.peak_buffered = max(self.peak_buffered, decoder.buffered)
            (frame,) = decoder.feed(data[half:])
            parse_frame(frame)


def measure(step: Callable[[], object], seconds: float) -> tuple[int, float]:
    """Run ``step`` for about ``seconds`` (after a warm-up); return (calls, elapsed)."""
    deadline = time.perf_counter() + WARM_UP_S
    while time.perf_counter() < deadline:
        step()
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        for _ in range(BATCH):
            step()
        calls += BATCH
        now = time.perf_counter()
    return calls, now - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each stage")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")

    tap_bytes, decision_bytes = encode_pair(4)
    decoding = Decoding(tap_bytes, decision_bytes)

    def round_trip() -> None:
        decoding.decode(*encode_pair(4))

    stages: list[tuple[str, Callable[[], object]]] = [
        ("encode", lambda: encode_pair(4)),
        ("decode", decoding.decode_fixed),
        ("round_trip", round_trip),
    ]
    results: dict[str, dict[str, float]] = {}
    for name, step in stages:
        pairs, elapsed = measure(step, args.seconds)
        results[name] = {
            "pairs": pairs,
            "seconds": round(elapsed, 3),
            "pairs_per_s": round(pairs / elapsed, 1),
            "frames_per_s": round(2 * pairs / elapsed, 1),
            "us_per_pair": round(elapsed / pairs * 1e6, 3),
        }
    for _ in range(1000):
        decoding.decode_split()
    peak = max(decoding.peak_buffered, decoding.edge.buffered, decoding.terminal.buffered)
    errors = decoding.edge.take_errors() + decoding.terminal.take_errors()
    assert not errors, errors

    print(
        f"frame_codec: TAP {len(tap_bytes)} B + DECISION {len(decision_bytes)} B per pair, "
        f"{args.seconds:g} s per stage, Python {platform.python_version()}"
    )
    print()
    print(f"{'stage':<12} {'pairs':>10} {'pairs/s':>12} {'frames/s':>12} {'µs/pair':>10}")
    print(f"{'-' * 12} {'-' * 10} {'-' * 12} {'-' * 12} {'-' * 10}")
    for name, row in results.items():
        print(
            f"{name:<12} {row['pairs']:>10,.0f} {row['pairs_per_s']:>12,.0f} "
            f"{row['frames_per_s']:>12,.0f} {row['us_per_pair']:>10.2f}"
        )
    print()
    print(f"peak decoder buffer: {peak} bytes (frames fed in two halves)")
    summary = {
        "name": "frame_codec",
        "python": platform.python_version(),
        "seconds_per_stage": args.seconds,
        "tap_bytes": len(tap_bytes),
        "decision_bytes": len(decision_bytes),
        "peak_decoder_buffer_bytes": peak,
        **{f"{name}_{key}": value for name, row in results.items() for key, value in row.items()},
    }
    print("BENCH " + json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
