"""Prometheus ``/metrics`` of ``onecard-central``, served next to the dashboard.

Nothing is counted on the ingest path that was not counted already: at scrape time
:class:`_CentralCollector` reads the service's counters (batches and records ingested, dead
letters, resends …) and one snapshot of the database — every site's state as its birth,
health and central's watermarks describe it, the feed and blacklist heads, stored dead
letters and the alerts not yet resolved.

Who may scrape: a client on loopback, without a token (a Prometheus or node agent on the
same host); from anywhere else, only with ``Authorization: Bearer <token>`` of any active
API token (``onecard-central token add``). The numbers hold no personal data, but site ids,
terminal ids and volumes are not for the whole LAN.
"""

from __future__ import annotations

import ipaddress
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from central import alerts, master, queries
from central.core import alerts as rules
from edge_agent.adapters.sqlite_store import now_ms

if TYPE_CHECKING:
    from central.service import CentralService
    from central.store import Store

#: service.stats keys exported as their own families (the rest go to onecard_central_events).
RECORD_RESULTS = {"records_new": "new", "records_duplicate": "duplicate", "records_dead": "dead"}


@dataclass(frozen=True, slots=True)
class SiteSample:
    """One site as the scrape sees it."""

    site: str
    online: bool
    last_seen_age_s: float | None
    outbox_depth: int | None
    unsynced_age_s: float | None
    feed_version: int
    blacklist_version: int
    terminals_online: int | None
    terminals: int | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one scrape read from the database."""

    sites: list[SiteSample]
    feed_head: int
    blacklist_head: int
    dead_letters: int
    alerts: dict[str, int]


def snapshot(conn: sqlite3.Connection, *, sent_feed: Mapping[str, int], at_ms: int) -> Snapshot:
    """Read everything a scrape reports (one store operation)."""
    limits = rules.Thresholds()
    facts, _ = alerts.site_facts(conn, now_ms=at_ms, sent_feed=sent_feed, limits=limits)
    by_site = {f.site: f for f in facts}
    health = dict(conn.execute("SELECT site, outbox_depth FROM site_health").fetchall())
    rows = conn.execute(
        "SELECT id, last_seen_ms, outbox_depth, feed_version, blacklist_version FROM sites"
        " WHERE removed = 0 ORDER BY id"
    ).fetchall()
    sites = []
    for sid, seen, depth, feed, black in rows:
        f = by_site[sid]
        terms = f.terminals
        sites.append(
            SiteSample(
                site=sid,
                online=f.online,
                last_seen_age_s=None if seen is None else max(0.0, (at_ms - seen) / 1000),
                outbox_depth=health.get(sid, depth),
                unsynced_age_s=f.unsynced_age_s,
                feed_version=max(int(feed), sent_feed.get(sid, 0)),
                blacklist_version=int(black),
                terminals_online=None if terms is None else sum(t.online for t in terms),
                terminals=None if terms is None else len(terms),
            )
        )
    dead = int(conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0])
    return Snapshot(
        sites=sites,
        feed_head=master.head_version(conn),
        blacklist_head=master.blacklist_version(conn),
        dead_letters=dead,
        alerts=alerts.active_counts(conn),
    )


class CentralMetrics:
    """Central's metrics, in a registry of their own (tests run several centrals)."""

    def __init__(self, store: Store, service: CentralService | None = None) -> None:
        self.store = store
        self.registry = CollectorRegistry()
        self.collector = _CentralCollector(service=service)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)

    async def render(self) -> bytes:
        """The text exposition, the database read just now."""
        service = self.collector.service
        sent = dict(service.sent_feed) if service is not None else {}
        at = now_ms()
        self.collector.snapshot = await self.store.run(
            lambda conn: snapshot(conn, sent_feed=sent, at_ms=at)
        )
        return generate_latest(self.registry)


@dataclass(eq=False)  # registered in a registry: hashed by identity
class _CentralCollector(Collector):
    service: CentralService | None = None
    snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        service = self.service
        if service is not None:
            stats = dict(service.stats)
            yield _gauge(
                "onecard_central_broker_connected",
                "1 while this worker is connected to the broker.",
                int(service.ready.is_set()),
            )
            yield _gauge(
                "onecard_central_leader",
                "1 while this worker leads: publishes the feed and blacklist, runs alerts, "
                "housekeeping and rollouts (exactly one worker should, docs/scaling.md).",
                int(service.leading),
            )
            yield _counter(
                "onecard_central_store_retries",
                "Transactions run again after losing a race with another worker "
                "(PostgreSQL serialization failures; always 0 on SQLite).",
                service.store.retries,
            )
            yield _counter(
                "onecard_central_batches_ingested",
                "Record batches committed (this process).",
                stats.get("batches", 0),
            )
            records = CounterMetricFamily(
                "onecard_central_records_ingested",
                "Records ingested by result: new, duplicate (dropped), dead (refused).",
                labels=["result"],
            )
            for key, result in RECORD_RESULTS.items():
                records.add_metric([result], stats.get(key, 0))
            yield records
            yield _counter(
                "onecard_central_dead_letters",
                "Payloads refused and kept as dead letters (this process).",
                stats.get("dead_letters", 0),
            )
            events = CounterMetricFamily(
                "onecard_central_events",
                "Other service events: connections, snapshots, resend_from, alerts_opened, "
                "webhook_failures, health_reports …",
                labels=["event"],
            )
            for name, n in sorted(stats.items()):
                if name not in RECORD_RESULTS and name not in {"batches", "dead_letters"}:
                    events.add_metric([name], n)
            yield events
        snap = self.snapshot
        if snap is None:
            return
        yield from self._database(snap)

    def _database(self, snap: Snapshot) -> Iterator[Metric]:
        yield _gauge(
            "onecard_central_feed_head", "Newest master-data change version.", snap.feed_head
        )
        yield _gauge(
            "onecard_central_blacklist_head", "Newest blacklist version.", snap.blacklist_head
        )
        yield _gauge(
            "onecard_central_dead_letters_stored",
            "Rows in the dead_letters table.",
            snap.dead_letters,
        )
        active = GaugeMetricFamily(
            "onecard_central_alerts_active",
            "Alerts open or acknowledged, by severity.",
            labels=["severity"],
        )
        for severity, n in snap.alerts.items():
            active.add_metric([severity], n)
        yield active
        yield _gauge(
            "onecard_central_sites_online", "Sites connected.", sum(s.online for s in snap.sites)
        )
        yield _gauge("onecard_central_sites", "Sites registered.", len(snap.sites))
        families: dict[str, GaugeMetricFamily] = {
            name: GaugeMetricFamily(name, doc, labels=["site"]) for name, doc in _SITE_FAMILIES
        }
        for s in snap.sites:
            values: dict[str, float | None] = {
                "onecard_central_site_online": int(s.online),
                "onecard_central_site_last_seen_age_seconds": s.last_seen_age_s,
                "onecard_central_site_outbox_depth": s.outbox_depth,
                "onecard_central_site_unsynced_age_seconds": s.unsynced_age_s or 0.0,
                "onecard_central_site_feed_version": s.feed_version,
                "onecard_central_site_feed_behind": max(0, snap.feed_head - s.feed_version),
                "onecard_central_site_blacklist_version": s.blacklist_version,
                "onecard_central_site_terminals_online": s.terminals_online,
                "onecard_central_site_terminals": s.terminals,
            }
            for name, value in values.items():
                if value is not None:
                    families[name].add_metric([s.site], value)
        yield from families.values()


_SITE_FAMILIES = [
    ("onecard_central_site_online", "1 while the site's birth is current (0 after its Will)."),
    ("onecard_central_site_last_seen_age_seconds", "Since the site's last birth or health."),
    ("onecard_central_site_outbox_depth", "The site's unsynced records, as it last reported."),
    (
        "onecard_central_site_unsynced_age_seconds",
        "Age of the oldest record the site reported waiting, not yet at central (0: none).",
    ),
    ("onecard_central_site_feed_version", "Feed version the site reported or was sent."),
    (
        "onecard_central_site_feed_behind",
        "Feed head minus the site's feed version (an upper bound on its lag).",
    ),
    ("onecard_central_site_blacklist_version", "Blacklist version the site last reported."),
    ("onecard_central_site_terminals_online", "Terminals online, from the site's latest report."),
    ("onecard_central_site_terminals", "Terminals registered, from the site's latest report."),
]


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


@dataclass
class MetricsEndpoint:
    """The ASGI app of ``GET /metrics`` (see the module docstring for who may scrape)."""

    metrics: CentralMetrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request."""
        request = Request(scope, receive)
        response = await self._answer(request)
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> Response:
        if request.method != "GET":
            return PlainTextResponse("only GET\n", status_code=405)
        if not _loopback(request.client.host if request.client else None):
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return _unauthorized("send Authorization: Bearer <token>")
            found = await self.metrics.store.run(
                lambda conn: queries.token_identity(conn, token.strip())
            )
            if found is None:
                return _unauthorized("unknown or revoked token")
        body = await self.metrics.render()
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def _unauthorized(message: str) -> Response:
    return PlainTextResponse(
        message + "\n", status_code=401, headers={"WWW-Authenticate": "Bearer"}
    )


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def metrics_endpoint(store: Store, service: CentralService | None = None) -> MetricsEndpoint:
    """``/metrics`` for central's dashboard server."""
    return MetricsEndpoint(CentralMetrics(store, service))
