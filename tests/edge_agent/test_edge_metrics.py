"""The edge's Prometheus ``/metrics``: parsed with the Prometheus text parser, after real taps
from simulated terminals, against a seeded site database."""

from __future__ import annotations

import asyncio
import sqlite3
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from edge_fixtures import LOST, MEMBER, SITE, EdgeProcess, free_port, make_seed, new_keys
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.config import ConfigError, load_config
from edge_agent.service import EdgeService
from firmware_sim.terminals import DoorReader, PosTerminal, TerminalSettings

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[set[str], Samples]:
    """Family names and every sample keyed by (name, sorted labels)."""
    families, samples = set(), {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, samples


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[tuple[EdgeService, dict[str, bytes]]]:
    keys = new_keys()
    EdgeProcess(tmp_path).seed(make_seed(keys))
    config = load_config(tmp_path / "edge.toml", env={"ONECARD_EDGE_METRICS_LISTEN": "127.0.0.1:0"})
    service = EdgeService(config, version="test")
    task = asyncio.create_task(service.run())
    await asyncio.wait_for(service.ready.wait(), 10)
    try:
        yield service, keys
    finally:
        service.stop()
        await asyncio.wait_for(task, 15)


async def test_metrics_count_taps_by_kind_and_result_and_show_the_outbox(edge):
    service, keys = edge
    url = f"tcp://127.0.0.1:{service.tcp_port}"
    door = DoorReader(TerminalSettings("DOOR-01", keys["DOOR-01"], url))
    till = PosTerminal(TerminalSettings("POS-01", keys["POS-01"], url))
    async with door, till:
        for _ in range(3):
            assert (await door.tap(MEMBER)).ok
        assert not (await door.tap(LOST)).ok
        assert (await till.sale(MEMBER, amount=150)).ok
        assert service.metrics_port is not None
        status, text = await http_get(service.metrics_port, "/metrics")
    assert status == 200
    families, samples = parse(text)
    assert {
        "onecard_edge_requests",
        "onecard_edge_decisions",
        "onecard_edge_request_duration_seconds",
        "onecard_edge_outbox_depth",
        "onecard_edge_outbox_oldest_age_seconds",
        "onecard_edge_feed_version",
        "onecard_edge_blacklist_version",
        "onecard_edge_terminal_up",
        "onecard_edge_terminals_online",
        "onecard_edge_dead_letters",
        "process_resident_memory_bytes",
    } <= families

    def door_taps(result: str) -> float:
        labels = (("kind", "door"), ("request", "Tap"), ("result", result))
        return samples[("onecard_edge_requests_total", labels)]

    assert door_taps("ok") == 3
    assert door_taps("refused") == 1
    pos = (("kind", "pos"), ("request", "Tap"), ("result", "ok"))
    assert samples[("onecard_edge_requests_total", pos)] == 1
    door_latency = (("kind", "door"), ("request", "Tap"))
    assert samples[("onecard_edge_request_duration_seconds_count", door_latency)] == 4
    assert 0 < samples[("onecard_edge_request_duration_seconds_sum", door_latency)] < 4 * 0.2
    assert sum(v for (name, _), v in samples.items() if name == "onecard_edge_decisions_total") == 5

    with sqlite3.connect(service.config.database) as conn:
        depth = conn.execute("SELECT count(*) FROM outbox WHERE acked = 0").fetchone()[0]
    assert depth >= 5
    assert samples[("onecard_edge_outbox_depth", ())] == depth
    assert 0 <= samples[("onecard_edge_outbox_oldest_age_seconds", ())] < 60
    assert samples[("onecard_edge_blacklist_version", ())] == 1
    assert samples[("onecard_edge_terminals", ())] == 5
    assert samples[("onecard_edge_terminals_online", ())] == 2  # the door and the till
    assert samples[("onecard_edge_terminal_up", (("kind", "door"), ("terminal", "DOOR-01")))] == 1
    assert samples[("onecard_edge_terminal_up", (("kind", "pos"), ("terminal", "POS-02")))] == 0
    assert samples[("onecard_edge_dead_letters_total", ())] == 0
    assert samples[("onecard_edge_info", (("site", SITE), ("version", "test")))] == 1
    assert samples[("process_resident_memory_bytes", ())] > 1_000_000


async def test_the_listener_answers_only_get_metrics(edge):
    service, _ = edge
    assert service.metrics_port is not None
    assert (await http_get(service.metrics_port, "/"))[0] == 404
    reader, writer = await asyncio.open_connection("127.0.0.1", service.metrics_port)
    writer.write(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head = (await reader.read()).split(b"\r\n", 1)[0]
    writer.close()
    assert head.startswith(b"HTTP/1.1 405")
    # A request that never finishes its headers is cut off, and the edge goes on serving.
    _, writer = await asyncio.open_connection("127.0.0.1", service.metrics_port)
    writer.write(b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 10_000)
    assert (await http_get(service.metrics_port, "/metrics"))[0] == 200
    writer.close()


def test_metrics_listen_is_loopback_by_default_and_can_be_disabled(tmp_path: Path):
    path = tmp_path / "edge.toml"
    path.write_text(f'site = "{SITE}"\n')
    assert load_config(path, env={}).metrics_address() == ("127.0.0.1", 9310)
    path.write_text(f'site = "{SITE}"\n[metrics]\nlisten = ""\n')
    assert load_config(path, env={}).metrics_address() is None
    path.write_text(f'site = "{SITE}"\n[metrics]\nlisten = "nowhere"\n')
    with pytest.raises(ConfigError, match=r"metrics\.listen must be HOST:PORT"):
        load_config(path, env={})


@pytest.mark.integration
def test_the_daemon_serves_metrics_on_the_configured_port(tmp_path: Path):
    port = free_port()
    edge = EdgeProcess(tmp_path, env={"ONECARD_EDGE_METRICS_LISTEN": f"127.0.0.1:{port}"})
    edge.seed(make_seed(new_keys()))
    edge.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    finally:
        assert edge.terminate() == 0
    _, samples = parse(text)
    assert samples[("onecard_edge_terminals", ())] == 5
    assert samples[("onecard_edge_outbox_depth", ())] == 0
