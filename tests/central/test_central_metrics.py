"""Central's Prometheus ``/metrics`` (and the edges' sync metrics) in a running system: central
and two edges over the private broker, after real taps. Parsed with the Prometheus text
parser; scraped through the dashboard's own routing."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sync_system import ALICE, BOB, System, edge_db, until

from central import queries, users
from central.api import create_app
from central.metrics import metrics_endpoint
from central.web.app import Dashboard, create_web_app
from firmware_sim.terminals import DoorReader

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
A, B = "SZ-FUTIAN", "BJ-CHAOYANG"


def parse(text: str) -> tuple[set[str], Samples]:
    families, samples = set(), {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, samples


async def dashboard(system: System, client: tuple[str, int]) -> httpx.AsyncClient:
    store = system.store
    app = Dashboard(
        web=create_web_app(store, secret_key=await store.run(users.web_key)),
        api=create_app(store),
        metrics=metrics_endpoint(store, system.central),
    )
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=client), base_url="http://hq"
    )


async def tap_and_sync(system: System, n: int) -> None:
    door_a = system.terminal(DoorReader, A, "DOOR-01")
    door_b = system.terminal(DoorReader, B, "DOOR-01")
    async with door_a as a, door_b as b:  # type: ignore[attr-defined]
        for _ in range(n):
            assert (await a.tap(ALICE)).ok
            assert (await b.tap(BOB)).ok

    async def all_acked() -> bool:
        for edge in system.edges.values():
            with edge_db(edge) as conn:
                if conn.execute("SELECT count(*) FROM outbox WHERE acked = 0").fetchone()[0]:
                    return False
        return True

    await until(all_acked)


async def test_central_metrics_count_ingest_and_show_every_site(system: System):
    await tap_and_sync(system, 5)
    async with await dashboard(system, ("127.0.0.1", 40000)) as http:

        async def reported_terminals() -> bool:  # each edge's health report (every 2 s)
            _, samples = parse((await http.get("/metrics")).text)
            key = "onecard_central_site_terminals"
            return all(samples.get((key, (("site", s),))) == 3 for s in (A, B))

        await until(reported_terminals, within=10)
        reply = await http.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    families, samples = parse(reply.text)
    assert {
        "onecard_central_broker_connected",
        "onecard_central_batches_ingested",
        "onecard_central_records_ingested",
        "onecard_central_dead_letters",
        "onecard_central_dead_letters_stored",
        "onecard_central_sites_online",
        "onecard_central_site_online",
        "onecard_central_site_outbox_depth",
        "onecard_central_site_unsynced_age_seconds",
        "onecard_central_site_feed_version",
        "onecard_central_site_blacklist_version",
        "onecard_central_site_terminals_online",
        "onecard_central_alerts_active",
        "onecard_central_feed_head",
        "onecard_central_blacklist_head",
        "process_resident_memory_bytes",
    } <= families
    assert samples[("onecard_central_broker_connected", ())] == 1
    assert samples[("onecard_central_records_ingested_total", (("result", "new"),))] == 10
    assert samples[("onecard_central_records_ingested_total", (("result", "duplicate"),))] == 0
    assert 1 <= samples[("onecard_central_batches_ingested_total", ())] <= 10
    assert samples[("onecard_central_dead_letters_total", ())] == 0
    assert samples[("onecard_central_sites_online", ())] == 2
    assert samples[("onecard_central_sites", ())] == 2
    for site in (A, B):
        assert samples[("onecard_central_site_online", (("site", site),))] == 1
        assert samples[("onecard_central_site_terminals", (("site", site),))] == 3
        feed = samples[("onecard_central_site_feed_version", (("site", site),))]
        assert feed == samples[("onecard_central_feed_head", ())] > 0
    for severity in ("emergency", "important", "normal"):
        assert ("onecard_central_alerts_active", (("severity", severity),)) in samples
    assert samples[("process_resident_memory_bytes", ())] > 1_000_000


async def test_central_metrics_need_a_token_from_beyond_loopback(system: System):
    token = await system.store.run(lambda conn: queries.add_token(conn, "prometheus", "auditor"))
    async with await dashboard(system, ("10.20.0.9", 40000)) as http:
        refused = await http.get("/metrics")
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer oc_nope"})
        allowed = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert allowed.status_code == 200
    assert "onecard_central_sites_online" in parse(allowed.text)[0]


async def test_an_edge_in_sync_shows_the_ack_watermark_and_no_ack_waiting(system: System):
    await tap_and_sync(system, 3)
    _, samples = parse((await system.edges[A].metrics.render()).decode())
    assert samples[("onecard_edge_broker_connected", ())] == 1
    assert samples[("onecard_edge_central_online", ())] == 1
    assert samples[("onecard_edge_outbox_depth", ())] == 0
    lane = (("lane", "1"),)  # door taps travel in lane 1
    assert samples[("onecard_edge_acked_seq", lane)] >= 3
    assert samples[("onecard_edge_ack_wait_seconds", lane)] == 0
    assert samples[("onecard_edge_sync_unacked_sent", lane)] == 0
    assert samples[("onecard_edge_sync_events_total", (("event", "records_sent"),))] >= 3
    assert samples[("onecard_edge_offline_seconds", ())] == 0
