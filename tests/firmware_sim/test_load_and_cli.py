"""Load mode, the onecard-sim command line, and the demo."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware_sim.demo import run_demo
from firmware_sim.endpoint import SimCard, TestEndpoint
from firmware_sim.load import LoadReport, build_terminals, run_load
from protocol import auth

BIN = Path(sys.executable).parent


def test_percentiles_use_nearest_rank():
    report = LoadReport(duration_s=1, target_rate=1, terminals=1)
    report.latencies_ms = [float(x) for x in range(1, 101)]
    assert (report.percentile(50), report.percentile(95), report.percentile(99)) == (50, 95, 99)
    assert LoadReport(duration_s=1, target_rate=1, terminals=1).percentile(99) == 0


async def test_load_mode_hits_its_rate_and_records_every_latency():
    keys = {f"POS-{i:02d}": auth.new_key() for i in range(3)}
    cards = [f"0400{i:010X}" for i in range(50)]
    endpoint = TestEndpoint(keys=keys, cards={uid: SimCard(uid, 1_000_000) for uid in cards})
    port = await endpoint.serve_tcp()
    terminals = build_terminals("pos", f"tcp://127.0.0.1:{port}", keys)
    try:
        await asyncio.gather(*(t.connect() for t in terminals))
        report = await run_load(terminals, cards, rate=60, duration_s=1.0, seed=1)
    finally:
        await asyncio.gather(*(t.close() for t in terminals))
        await endpoint.close()
    assert report.failed == 0 and report.declined == 0
    assert 50 <= report.taps <= 70
    assert len(report.latencies_ms) == report.taps
    assert 0 < report.percentile(50) <= report.percentile(95) <= report.percentile(99)
    purchases = [r for r in endpoint.records if r[2] == "purchase"]
    assert len(purchases) == report.approved


async def test_demo_plays_every_step(capsys):
    assert await run_demo(burst_s=0.5)
    out = capsys.readouterr().out
    assert "FAIL" not in out and "p99_ms" in out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"endpoint exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    raise AssertionError(f"nothing listening on {port} after {timeout}s")


@pytest.fixture
def sim_endpoint(tmp_path: Path):
    subprocess.run(
        [BIN / "onecard-sim", "keygen", "POS-01", "POS-02", "--out", tmp_path / "keys.json"],
        check=True,
        capture_output=True,
    )
    (tmp_path / "cards.json").write_text(json.dumps({"04A1B2C3D4E5F6": 5000}))
    port = _free_port()
    proc = subprocess.Popen(
        [
            BIN / "onecard-sim",
            "endpoint",
            "--listen",
            f"tcp://127.0.0.1:{port}",
            "--keys",
            tmp_path / "keys.json",
            "--cards",
            tmp_path / "cards.json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _wait_port(port, proc)
        yield port, tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def test_cli_terminal_taps_and_shows_the_display(sim_endpoint):
    port, tmp = sim_endpoint
    result = subprocess.run(
        [
            BIN / "onecard-sim",
            "terminal",
            "--kind",
            "pos",
            "--connect",
            f"tcp://127.0.0.1:{port}",
            "--id",
            "POS-01",
            "--key-file",
            tmp / "POS-01.key",
            "--tap",
            "04A1B2C3D4E5F6:1250",
            "--tap",
            "04A1B2C3D4E5F6:9999",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "[POS-01] 消费¥12.50 余额¥37.50" in result.stdout
    assert "[POS-01] 余额不足 ¥37.50" in result.stdout
    assert result.returncode == 1  # one of the taps was declined


def test_cli_terminal_with_wrong_key_exits_non_zero(sim_endpoint):
    port, tmp = sim_endpoint
    (tmp / "wrong.key").write_text(auth.new_key().hex())
    result = subprocess.run(
        [BIN / "onecard-sim", "terminal", "--kind", "door", "--connect",
         f"tcp://127.0.0.1:{port}", "--id", "POS-01", "--key-file", tmp / "wrong.key"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "auth_failed" in result.stderr


def test_cli_load_prints_percentiles(sim_endpoint):
    port, tmp = sim_endpoint
    (tmp / "uids.json").write_text(json.dumps(["04A1B2C3D4E5F6"]))
    result = subprocess.run(
        [BIN / "onecard-sim", "load", "--connect", f"tcp://127.0.0.1:{port}", "--keys",
         tmp / "keys.json", "--cards", tmp / "uids.json", "--rate", "40", "--duration", "0.5",
         "--amount", "1"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    summary = json.loads(result.stdout.splitlines()[-1].removeprefix("LOAD "))
    assert summary["taps"] > 0 and summary["failed"] == 0
    assert summary["p50_ms"] <= summary["p99_ms"]


def test_cli_rejects_a_malformed_key_file(tmp_path: Path):
    (tmp_path / "bad.key").write_text("not hex")
    result = subprocess.run(
        [BIN / "onecard-sim", "terminal", "--kind", "pos", "--connect", "tcp://127.0.0.1:1",
         "--id", "POS-01", "--key-file", tmp_path / "bad.key"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "terminal key is not hex" in result.stderr


def test_demo_site_writes_a_seedable_site(tmp_path: Path):
    site = tmp_path / "site"
    subprocess.run([BIN / "onecard-sim", "demo-site", site], check=True, capture_output=True)
    assert {p.name for p in site.iterdir()} >= {"edge.toml", "site.json", "POS-01.key"}
    result = subprocess.run(
        [BIN / "onecard-edge", "seed", site / "site.json", "--config", site / "edge.toml"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert "6 terminals" in result.stdout
