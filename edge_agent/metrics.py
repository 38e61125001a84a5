"""What ``onecard-edge`` tells the outside about itself: Prometheus ``/metrics`` and the
periodic ``up/health`` report to HQ.

- **The tap path pays O(1)**: :class:`MeteredSite` wraps the site handler the terminal
  sessions call and, after each request, bumps one counter and observes one histogram (a
  dict lookup and an add each). Nothing else is touched per request.
- **Everything else is read at scrape time** by :class:`_EdgeCollector`: the outbox depth and
  oldest age (the two index lookups ``onecard-edge status`` uses, on the reader connection),
  versions, terminals, sync state and counters, dead letters. A scrape costs the edge about as
  much as a status snapshot; nobody scraping costs nothing.
- **The listener** is a small asyncio HTTP/1.1 server (``GET /metrics`` only), on loopback
  by default (``[metrics] listen``). It never blocks the event loop: each request has a read
  deadline and a size limit, and rendering is a few microseconds per series.
- **Health to HQ** (``site/{site}/up/health``): terminals online, outbox depth and free disk,
  sent when a terminal goes on- or offline and at least every ``HEALTH_EVERY_S``, so
  central's alerts see a terminal drop within seconds rather than at the next birth.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from edge_agent.adapters.waiting import wait_event
from protocol import terminal as msg
from protocol.messages import Health, TerminalHealth, encode
from protocol.topics import Channel, site_topic

if TYPE_CHECKING:
    from edge_agent.adapters.mqtt_sync import EdgeSync
    from edge_agent.adapters.terminal_server import TerminalIdentity, TerminalRegistry
    from edge_agent.site import Site

log = structlog.get_logger("edge.metrics")

#: Seconds. The decision target is far below 200 ms; p99 is expected around 5 ms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
#: A health report goes out at least this often (and at once when a terminal changes state).
HEALTH_EVERY_S = 30.0
HEALTH_CHECK_S = 2.0
#: The listener reads at most this much of a request, within this long.
MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0


class EdgeMetrics:
    """One edge's metrics, in a registry of its own (several edges may share a process in
    tests; the global registry would mix them)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "onecard_edge_requests",
            "Terminal requests answered, by terminal kind, request and result "
            "(ok, refused, error).",
            ["kind", "request", "result"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "onecard_edge_decisions",
            "Decisions (taps and recharge phases) by terminal kind and reason code.",
            ["kind", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "onecard_edge_request_duration_seconds",
            "From a request's arrival at the site logic to its reply, record committed.",
            ["kind", "request"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Label children by labels: .labels() builds and locks on every call (~3 µs each).
        self._children: dict[tuple[object, ...], Any] = {}
        self.collector = _EdgeCollector()
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)

    def bind(
        self, site: Site, registry: TerminalRegistry, sync: EdgeSync | None, *, version: str
    ) -> None:
        """What the scrape-time collector reads (the running daemon's parts)."""
        self.collector.site, self.collector.registry = site, registry
        self.collector.sync, self.collector.version = sync, version

    def observe(self, kind: str, body: msg.Body, reply: msg.Body, seconds: float) -> None:
        """Count one answered request (O(1): on the tap path)."""
        request = type(body).__name__
        if isinstance(reply, msg.Error):
            result = "error"
        else:
            result = "refused" if getattr(reply, "ok", True) is False else "ok"
        self._child(self.requests, kind, request, result).inc()
        self._child(self.latency, kind, request).observe(seconds)
        if isinstance(reply, msg.Decision | msg.RechargeResult):
            self._child(self.decisions, kind, reply.code).inc()

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    async def render(self) -> bytes:
        """The text exposition, with the outbox and dead letters read just now."""
        await self.collector.refresh()
        return generate_latest(self.registry)


@dataclass(eq=False)  # registered in a registry: hashed by identity
class _EdgeCollector(Collector):
    """Reads the daemon's state when scraped (see the module docstring)."""

    site: Site | None = None
    registry: TerminalRegistry | None = None
    sync: EdgeSync | None = None
    version: str = "0"
    #: The service desk (``[desk] enabled``): its request counters.
    desk: Any = None
    #: Read from the database by :meth:`refresh` just before each scrape.
    status: dict[str, Any] = field(default_factory=dict)
    dead_letters: int = 0

    async def refresh(self) -> None:
        if self.site is None or self.registry is None:
            return
        self.status = await self.site.status(self.registry, version=self.version)
        rows = await self.site.store.read("SELECT count(*) FROM dead_letters")
        self.dead_letters = int(rows[0][0])

    def collect(self) -> Iterator[Metric]:
        status, site, sync = self.status, self.site, self.sync
        info = GaugeMetricFamily(
            "onecard_edge_info",
            "This edge: site, software version, epoch.",
            labels=["site", "version"],
        )
        if site is not None:
            info.add_metric([site.site, self.version], 1)
        yield info
        if not status:
            return
        yield _gauge(
            "onecard_edge_outbox_depth", "Records not yet acked by HQ.", status["outbox_depth"]
        )
        yield _gauge(
            "onecard_edge_outbox_oldest_age_seconds",
            "Age of the oldest record not yet acked by HQ (0 when the outbox is empty).",
            status["outbox_oldest_age_s"] or 0.0,
        )
        acked = GaugeMetricFamily(
            "onecard_edge_acked_seq",
            "HQ's ack watermark the edge holds, per lane.",
            labels=["lane"],
        )
        for lane, seq in enumerate(status["acked"]):
            acked.add_metric([str(lane)], seq)
        yield acked
        yield _gauge(
            "onecard_edge_feed_version", "Master-data feed version applied.", status["feed_version"]
        )
        yield _gauge(
            "onecard_edge_blacklist_version",
            "Blacklist version applied.",
            status["blacklist_version"],
        )
        up = GaugeMetricFamily(
            "onecard_edge_terminal_up",
            "1 if the terminal is connected and heard from.",
            labels=["terminal", "kind"],
        )
        terminals = status["terminals"]
        for t in terminals:
            up.add_metric([t["id"], t["kind"]], 1 if t["online"] else 0)
        yield up
        yield _gauge(
            "onecard_edge_terminals_online",
            "Terminals connected.",
            sum(1 for t in terminals if t["online"]),
        )
        yield _gauge("onecard_edge_terminals", "Terminals registered at this site.", len(terminals))
        refusals = CounterMetricFamily(
            "onecard_edge_terminal_refusals",
            "Terminal connections refused at authentication, by code (unknown_terminal, "
            "auth_failed, unauthenticated): a forged or misconfigured terminal.",
            labels=["code"],
        )
        for code, n in sorted(status.get("refused", {}).items()):
            refusals.add_metric([code], n)
        yield refusals
        yield _counter(
            "onecard_edge_dead_letters",
            "Payloads from terminals or HQ that were refused and kept.",
            self.dead_letters,
        )
        if self.desk is not None:
            yield _counter(
                "onecard_edge_desk_requests",
                "Requests from `onecard-edge desk` (reads and changes) answered.",
                self.desk.requests,
            )
            yield _counter(
                "onecard_edge_desk_refused",
                "Desk requests refused (unknown card, card lost, over a cap, disk full, …).",
                self.desk.refused,
            )
        disk = status.get("disk")
        if disk:
            yield _gauge(
                "onecard_edge_disk_full",
                "1 while the store's disk is below its reserve (payments refused) or full.",
                int(disk["state"] != "ok"),
            )
            yield _counter(
                "onecard_edge_disk_refusals",
                "Sales and recharges refused because the disk was below its reserve.",
                disk["refused"],
            )
        if site is not None:
            offline = site.offline_since
            yield _gauge(
                "onecard_edge_offline_seconds",
                "How long the site has been offline for the offline policy (0: online).",
                0.0 if offline is None else (datetime.now(UTC) - offline).total_seconds(),
            )
        if sync is None:
            return
        yield _gauge(
            "onecard_edge_broker_connected",
            "1 while connected to HQ's broker.",
            int(sync.connected),
        )
        yield _gauge(
            "onecard_edge_central_online", "1 while HQ says it is online.", int(sync.central_online)
        )
        yield from self._sync_lanes(sync)
        events = CounterMetricFamily(
            "onecard_edge_sync_events",
            "Sync events (batches_sent, records_sent, ack_timeouts, bad_downlink, …).",
            labels=["event"],
        )
        for name, n in sorted(sync.stats.items()):
            events.add_metric([name], n)
        yield events

    def _sync_lanes(self, sync: EdgeSync) -> Iterator[Metric]:
        # Read-only peeks at the uplink's lane state, a few items per lane.
        lanes = dict(sync._lanes)  # a read-only snapshot for the scrape
        now = time.monotonic()
        wait = GaugeMetricFamily(
            "onecard_edge_ack_wait_seconds",
            "How long the oldest batch in flight has waited for HQ's ack, per lane (0: none in "
            "flight). In steady state this is the ack round-trip.",
            labels=["lane"],
        )
        unacked = GaugeMetricFamily(
            "onecard_edge_sync_unacked_sent",
            "Records sent to HQ and not yet acked, per lane.",
            labels=["lane"],
        )
        for lane, state in sorted(lanes.items()):
            inflight = [at for last, at in state.inflight if last > state.acked]
            wait.add_metric([str(lane)], now - min(inflight) if inflight else 0.0)
            unacked.add_metric([str(lane)], max(0, state.sent_upto - state.acked))
        yield wait
        yield unacked


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


@dataclass
class MeteredSite:
    """The site handler the sessions call, with each answered request counted and timed."""

    inner: Site
    metrics: EdgeMetrics

    @property
    def site(self) -> str:
        """This site's id."""
        return self.inner.site

    @property
    def heartbeat_s(self) -> int:
        """The heartbeat interval given to terminals."""
        return self.inner.heartbeat_s

    def terminal(self, terminal_id: str) -> TerminalIdentity | None:
        """The registered terminal with this id."""
        return self.inner.terminal(terminal_id)

    async def handle(self, terminal: TerminalIdentity, body: msg.Body) -> msg.Body:
        """The site's reply, timed and counted."""
        started = time.perf_counter()
        reply = await self.inner.handle(terminal, body)
        self.metrics.observe(terminal.kind, body, reply, time.perf_counter() - started)
        return reply

    async def dead_letter(self, source: str, reason: str, payload: bytes) -> None:
        """Keep a payload a peer sent that could not be accepted."""
        await self.inner.dead_letter(source, reason, payload)


# -- the listener ------------------------------------------------------------------------------


async def start_metrics_server(metrics: EdgeMetrics, host: str, port: int) -> asyncio.Server:
    """Serve ``GET /metrics`` on ``host:port`` (port 0: any free port)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body, ctype = _route(head)
            if status == "200 OK":
                try:
                    body = await metrics.render()
                except Exception as exc:  # noqa: BLE001 - a failed scrape must say so, not hang up
                    log.warning("metrics.render_failed", error=repr(exc))
                    status, body = "500 Internal Server Error", f"{exc!r}\n".encode()
                    ctype = "text/plain; charset=utf-8"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a slow, truncated or oversized request: drop it
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_BYTES)


def _route(head: bytes) -> tuple[str, bytes, str]:
    method, _, rest = head.partition(b" ")
    path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
    if method != b"GET":
        return "405 Method Not Allowed", b"only GET\n", "text/plain; charset=utf-8"
    if path != b"/metrics":
        return "404 Not Found", b"see /metrics\n", "text/plain; charset=utf-8"
    return "200 OK", b"", CONTENT_TYPE_LATEST


# -- health to HQ ------------------------------------------------------------------------------


def disk_free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding ``path`` (None if it cannot be read)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def health_message(site: str, status: dict[str, Any], disk_free: int | None) -> Health:
    """The ``up/health`` payload from a status snapshot."""
    return Health(
        site=site,
        at=datetime.now(UTC),
        terminals=[
            TerminalHealth(
                id=t["id"],
                kind=t["kind"],
                online=t["online"],
                auth_failures=t.get("auth_failures", 0),
                lists=t.get("lists", {}),
                lists_behind=t.get("lists_behind", 0),
                lists_behind_s=t.get("lists_behind_s"),
                records_missing=t.get("records_missing", 0),
                records_void=t.get("records_void", 0),
            )
            for t in status["terminals"]
        ],
        outbox_depth=status["outbox_depth"],
        disk_free_bytes=disk_free,
        disk_state=(status.get("disk") or {}).get("state"),
        feed_version=status["feed_version"],
        blacklist_version=status["blacklist_version"],
    )


async def report_health(
    sync: EdgeSync, registry: TerminalRegistry, data_dir: Path, stopping: asyncio.Event
) -> None:
    """Publish ``up/health`` when a terminal changes state or the edge applied a feed or
    blacklist change (so HQ's lag figures drop at once), else every ``HEALTH_EVERY_S``."""
    site = sync.site
    last: tuple[object, ...] | None = None
    last_at = 0.0
    while not stopping.is_set():
        client = sync._client  # the sync's live connection, if any (None between sessions)
        if client is not None:
            try:
                status = await site.status(registry, version=sync.version)
                online = (
                    *(
                        (
                            t["id"],
                            bool(t["online"]),
                            t.get("lists_behind"),
                            t.get("records_missing"),
                        )
                        for t in status["terminals"]
                    ),
                    status["feed_version"],
                    status["blacklist_version"],
                    (status.get("disk") or {}).get("state"),
                )
                if online != last or time.monotonic() - last_at >= HEALTH_EVERY_S:
                    free = await asyncio.to_thread(disk_free_bytes, data_dir)
                    health = health_message(site.site, status, free)
                    await client.publish(
                        site_topic(site.site, Channel.UP_HEALTH), encode(health), qos=0
                    )
                    last, last_at = online, time.monotonic()
            except Exception as exc:  # noqa: BLE001 - a report is best effort, never fatal
                log.debug("health.not_sent", error=str(exc))
                last = None
        await wait_event(stopping, HEALTH_CHECK_S)
