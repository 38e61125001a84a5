"""``onecard-central serve``: the MQTT consumer, the feed and blacklist publisher.

Tasks, all owned by one TaskGroup per broker connection:

- **consume**: every ``site/+/up/#`` message. Record batches are ingested exactly once, one
  transaction per batch (several batches share a commit), and the lane's ack watermark is
  published *after* the commit. Births and deaths update the site table; a birth replays
  the site's feed from the version it reports (a snapshot for a new site) and the blacklist
  deltas it missed. Anything malformed is dead-lettered with its reason; ingest goes on.
- **publish**: every ``PUBLISH_INTERVAL_S``, changed balances become feed changes, new
  changes go to each online site, new blacklist deltas are broadcast (retained head).
  Anything that writes master data (CLI, API, another worker) only writes the database;
  this loop publishes it.
- **gaps**: a lane whose watermark is stuck below a received seq for ``GAP_WAIT_S`` gets a
  ``resend_from`` command.

``central/state`` is retained ``online: true`` while connected, and the Will says
``online: false`` if central dies.

**Several workers** (PostgreSQL; docs/scaling.md): every worker ingests — the uplink's
records and health come through MQTT shared subscriptions (``$share/central/…``), so the
broker hands each message to one of them — and publishes the acks of what it ingested,
computed from the database. Births, replies and log lines reach every worker. Exactly one
worker *leads* (:mod:`central.leader`): only the leader publishes the feed and blacklist,
catches up sites that come online, and runs alerts, housekeeping, the gap watch and
rollouts. A worker that becomes leader first catches up every online site from the versions
they last reported. The dashboard and API run on any worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import aiomqtt
import msgspec
import structlog

from central import access, alerts, anomalies, finance, master
from central.adapters.sqlite_store import StoreError
from central.alerts import AlertSettings
from central.ingest import UnknownSiteError, dead_letter, ingest_batch
from central.leader import Leadership, SoleLeader
from central.logtail import TailHub
from central.rollouts import RolloutDriver
from central.store import Store
from edge_agent.adapters.mqtt_client import BrokerSettings, make_client
from edge_agent.adapters.sqlite_store import now_ms
from edge_agent.adapters.waiting import raise_if_cancelling, wait_event
from protocol.errors import MessageError, TopicError
from protocol.messages import (
    MAX_CHANGES,
    Ack,
    BlacklistDelta,
    CentralState,
    Command,
    Feed,
    Health,
    RawRecordBatch,
    Reply,
    ResendFrom,
    SiteBirth,
    decode,
    decode_site_state,
    encode,
)
from protocol.topics import Channel, global_topic, parse_topic, site_filter, site_topic

log = structlog.get_logger("central")

PUBLISH_INTERVAL_S = 0.1
#: Balances are coalesced for this long: under a backlog every sale dirties an account, and
#: publishing each of them every 100 ms would cost HQ and the sites more than the sales.
BALANCE_FLUSH_S = 1.0
GAP_WAIT_S = 2.0
#: How often 单边账, long gaps and late-reopened clearing days are looked for.
HOUSEKEEPING_S = 60.0
RESEND_EVERY_S = 5.0
#: Sites sent their feed changes at once by the publisher.
FANOUT = 32
#: Concurrent batch ingests (they share group commits); more wait their turn.
INGEST_CONCURRENCY = 32
#: Alert changes waiting for the webhook; past this they are dropped (and counted).
WEBHOOK_QUEUE = 1000
#: Births and deaths handled at once (each site's in the order they came).
STATE_CONCURRENCY = 64
#: The MQTT shared-subscription group of central's workers.
SHARE_GROUP = "central"


@dataclass
class CentralService:
    """One central worker connected to the broker."""

    store: Store
    broker: BrokerSettings
    #: Stable across restarts: the broker keeps this worker's persistent session, queueing the
    #: sites' uplink while it is down. A fresh id per start would orphan that session (it
    #: would queue every site's records, unread, until it expires) and lose the backlog.
    worker: str = "main"
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: The last feed version sent to each online site.
    sent_feed: dict[str, int] = field(default_factory=dict)
    online: set[str] = field(default_factory=set)
    stats: dict[str, int] = field(default_factory=dict)
    #: Alert rules, detection times and the webhook (central/alerts.py).
    alerting: AlertSettings = field(default_factory=AlertSettings)
    _client: aiomqtt.Client | None = None
    #: Remote log tails (``up/logs`` goes there); None: log batches are only counted.
    logtail: TailHub | None = None
    #: Staged upgrades (``up/reply`` of ``upgrade`` commands goes there); None: not driven.
    rollouts: RolloutDriver | None = None
    #: Whether this worker leads (see the module docs); the sole worker on SQLite always does.
    leadership: Leadership = field(default_factory=SoleLeader)
    #: Take records and health through shared subscriptions (several workers).
    shared_uplink: bool = False
    _states: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(STATE_CONCURRENCY))
    #: Per site: the births/deaths being handled, so each site's are handled in order.
    _site_turns: dict[str, asyncio.Lock] = field(default_factory=dict)
    _slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(INGEST_CONCURRENCY))
    #: Per (site, epoch, lane) with an ack being published: the newest watermark to send.
    _acks: dict[tuple[str, int, int], int] = field(default_factory=dict)
    #: Replies someone is waiting for (a remote door open), by command id.
    _awaited: dict[str, asyncio.Future[Reply]] = field(default_factory=dict)
    _last_head: int = 0
    _last_flush: float = 0.0

    def count(self, name: str, n: int = 1) -> None:
        """Bump a counter (exported on the dashboard later)."""
        self.stats[name] = self.stats.get(name, 0) + n

    async def run(self) -> None:
        """Stay connected to the broker until :meth:`stop`, reconnecting with backoff; hold
        or try for the leadership meanwhile."""
        lease = asyncio.create_task(self.leadership.run(self.stopping), name="leader-lease")
        try:
            await self._stay_connected()
        finally:
            self.stopping.set()
            await lease

    @property
    def leading(self) -> bool:
        """Whether this worker leads now."""
        return self.leadership.acquired.is_set()

    async def _stay_connected(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            sessions = self.stats.get("connections", 0)
            try:
                await self._connected_session()
            except* aiomqtt.MqttError as lost:  # the session's TaskGroup wraps it in a group
                log.warning("central.broker_lost", error=str(lost.exceptions[0]))
            if self.stopping.is_set():
                break
            if self.stats.get("connections", 0) > sessions:
                delay = 0.5  # it was connected: back off afresh, not from the last outage's delay
            await wait_event(self.stopping, delay)
            delay = min(delay * 2, 15)

    def stop(self) -> None:
        """Ask the service to stop."""
        self.stopping.set()

    async def _connected_session(self) -> None:
        will = aiomqtt.Will(
            global_topic(Channel.CENTRAL_STATE),
            encode(CentralState(online=False)),
            qos=1,
            retain=True,
        )
        # Sharing the uplink, a worker's session ends with its connection: mosquitto keeps
        # handing a disconnected persistent member its share of a shared subscription, so a
        # dead worker would swallow records until the sites resent them.
        client = make_client(
            self.broker,
            identifier=f"central-{self.worker}",
            will=will,
            persistent=not self.shared_uplink,
        )
        async with client:
            self._client = client
            self.online.clear()
            self.sent_feed.clear()
            for channel in (
                Channel.UP_RECORDS,
                Channel.UP_STATE,
                Channel.UP_HEALTH,
                Channel.UP_REPLY,
                Channel.UP_LOGS,
            ):
                shared = self.shared_uplink and channel in (Channel.UP_RECORDS, Channel.UP_HEALTH)
                prefix = f"$share/{SHARE_GROUP}/" if shared else ""
                await client.subscribe(prefix + site_filter(channel), qos=1)
            if self.shared_uplink:
                # another worker's Will may say "offline" while this one leads: see _consume
                await client.subscribe(global_topic(Channel.CENTRAL_STATE), qos=1)
            self.count("connections")
            log.info(
                "central.connected",
                worker=self.worker,
                broker=self.broker.host,
                shared=self.shared_uplink,
            )
            self.ready.set()
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._consume(client, group))
                    group.create_task(self._lead())
                    group.create_task(self._until_stopped())
            except* _Stopped:
                with contextlib.suppress(aiomqtt.MqttError):
                    await self._announce(online=False)
            finally:
                self._client = None
                self.ready.clear()

    async def _until_stopped(self) -> None:
        await self.stopping.wait()
        raise _Stopped

    async def _announce(self, *, online: bool) -> None:
        await self._publish(
            global_topic(Channel.CENTRAL_STATE),
            encode(CentralState(online=online, at=datetime.now(UTC))),
            retain=True,
        )

    # -- leading ------------------------------------------------------------------------------

    async def _lead(self) -> None:
        """While this worker leads (always, for the sole worker): publish and watch. Ends
        its duties when the leadership is lost, and takes them up again if regained."""
        while True:
            await self.leadership.acquired.wait()
            self.count("leader_terms")
            log.info("central.leading", worker=self.worker)
            try:
                async with asyncio.TaskGroup() as duties:
                    duties.create_task(self._take_over())
                    duties.create_task(self._blacklist_publisher())
                    duties.create_task(self._publisher())
                    duties.create_task(self._gap_watch())
                    duties.create_task(self._housekeeping())
                    hooks: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(WEBHOOK_QUEUE)
                    duties.create_task(self._alerts(hooks))
                    duties.create_task(self._webhook(hooks))
                    if self.rollouts is not None:
                        duties.create_task(self.rollouts.run())
                    duties.create_task(self._until_lost())
            except* _LeadershipLost:
                self.count("leader_lost")
                log.warning("central.not_leading", worker=self.worker)
                self.sent_feed.clear()

    async def _until_lost(self) -> None:
        await self.leadership.lost.wait()
        raise _LeadershipLost

    async def _take_over(self) -> None:
        """Announce HQ online and bring every online site up to date from the versions it
        last reported (a new leader has sent none of them anything)."""
        await self._announce(online=True)
        self._last_head = await self.store.run(master.head_version)
        reported = await self.store.run(_reported_versions)
        for site in list(self.online):
            if site in reported and site not in self.sent_feed:
                await self._catch_up(site, *reported[site])

    # -- consuming ----------------------------------------------------------------------------

    async def _consume(self, client: aiomqtt.Client, group: asyncio.TaskGroup) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            topic_name = message.topic.value
            try:
                topic = parse_topic(topic_name)
            except TopicError as exc:
                await self._dead_letter(topic_name, None, str(exc), payload)
                continue
            site = topic.site
            if site is None:
                if topic.channel is Channel.CENTRAL_STATE and self.leading:
                    await self._reassert(payload)
                continue
            if topic.channel is Channel.UP_RECORDS:
                await self._slots.acquire()
                group.create_task(self._records(site, topic_name, payload))
            elif topic.channel is Channel.UP_STATE:
                await self._states.acquire()
                turn = self._site_turns.setdefault(site, asyncio.Lock())
                group.create_task(self._state_in_turn(turn, site, topic_name, payload))
            elif topic.channel is Channel.UP_HEALTH:
                await self._health(site, topic_name, payload)
            elif topic.channel is Channel.UP_REPLY and self._answered(site, payload):
                pass  # handed to the request that sent the command
            elif topic.channel is Channel.UP_REPLY and self.rollouts is not None:
                error = await self.rollouts.on_reply(site, payload)
                if error is not None:
                    await self._dead_letter(topic_name, site, error, payload)
            elif topic.channel is Channel.UP_LOGS and self.logtail is not None:
                try:
                    self.logtail.receive(site, payload)  # queues only: never blocks consume
                except MessageError as exc:
                    await self._dead_letter(topic_name, site, str(exc), payload)
            else:
                await self.store.run(partial(_seen, site=site))

    async def _records(self, site: str, topic: str, payload: bytes) -> None:
        try:
            try:
                batch = decode(payload, RawRecordBatch)
            except MessageError as exc:
                await self._dead_letter(topic, site, str(exc), payload)
                return
            if batch.site != site:
                await self._dead_letter(
                    topic,
                    site,
                    f"payload site {batch.site} is not the topic's site {site}",
                    payload,
                )
                return
            try:
                result = await self.store.run(
                    lambda conn: ingest_batch(
                        conn, site, batch, topic=topic, now_ms=now_ms(), holders=self.store.holders
                    )
                )
            except UnknownSiteError as exc:
                await self._dead_letter(topic, site, str(exc), payload)
                return
            except Exception as exc:
                log.exception("ingest.failed", site=site, topic=topic)
                await self._dead_letter(topic, site, f"ingest failed: {exc!r}", payload)
                return
        finally:
            # The slot bounds batches being decoded and ingested; the ack (a PUBACK round trip,
            # coalesced per lane) must not hold one, or acks would throttle ingest.
            self._slots.release()
        self.count("batches")
        self.count("records_new", result.new)
        self.count("records_duplicate", result.duplicates)
        self.count("records_dead", result.dead)
        await self._ack(site, result.epoch, result.lane, result.acked_seq)

    async def _ack(self, site: str, epoch: int, lane: int, acked_seq: int) -> None:
        """Publish a lane's watermark (committed: the caller's transaction is). While one ack
        of the lane is on its way, newer ones wait and only the newest goes next: batches
        committed together get one ack, not one each."""
        key = (site, epoch, lane)
        if key in self._acks:
            self._acks[key] = max(self._acks[key], acked_seq)
            return  # the task publishing this lane's ack sends it next
        self._acks[key] = acked_seq
        try:
            while True:
                raise_if_cancelling()
                sent = self._acks[key]
                await self._publish(
                    site_topic(site, Channel.DOWN_ACK),
                    encode(Ack(epoch=epoch, lane=lane, acked_seq=sent)),  # type: ignore[arg-type]
                )
                if self._acks[key] == sent:
                    return
        finally:
            del self._acks[key]

    async def _reassert(self, payload: bytes) -> None:
        """Another worker's Will said HQ is offline while this one leads: say it is not."""
        try:
            if not decode(payload, CentralState).online:
                await self._announce(online=True)
        except MessageError:
            pass

    async def _state_in_turn(
        self, turn: asyncio.Lock, site: str, topic: str, payload: bytes
    ) -> None:
        try:
            async with turn:  # FIFO: a site's birth and death are handled in their order
                await self._state(site, topic, payload)
        finally:
            self._states.release()
            if not turn.locked() and self._site_turns.get(site) is turn:
                del self._site_turns[site]

    async def _state(self, site: str, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a retained state being cleared
        try:
            state = decode_site_state(payload)
        except MessageError as exc:
            await self._dead_letter(topic, site, str(exc), payload)
            return
        if isinstance(state, SiteBirth):
            known = await self.store.run(lambda conn: _record_birth(conn, site, state, payload))
            if not known:
                await self._dead_letter(topic, site, f"site {site} is not registered", payload)
                return
            self.online.add(site)
            if not self.leading:
                return  # the leader catches it up
            if self.rollouts is not None:
                await self.rollouts.on_birth(site, state.version)
            log.info(
                "site.online",
                site=site,
                feed=state.feed_version,
                blacklist=state.blacklist_version,
                outbox=state.outbox_depth,
            )
            await self._catch_up(site, state.feed_version, state.blacklist_version)
        else:
            self.online.discard(site)
            self.sent_feed.pop(site, None)
            await self.store.run(
                lambda conn: conn.execute("UPDATE sites SET online = 0 WHERE id = ?", (site,))
            )
            log.info("site.offline", site=site)

    async def _health(self, site: str, topic: str, payload: bytes) -> None:
        try:
            health = decode(payload, Health)
        except MessageError as exc:
            await self._dead_letter(topic, site, str(exc), payload)
            return
        if health.site != site:
            reason = f"payload site {health.site} is not the topic's site {site}"
            await self._dead_letter(topic, site, reason, payload)
            return
        self.count("health_reports")
        received = now_ms()
        await self.store.run(
            lambda conn: alerts.record_health(conn, site, health, received_ms=received)
        )

    async def _alerts(self, hooks: asyncio.Queue[tuple[int, bytes]]) -> None:
        """Every ``alerting.interval_s``: run the alert rules; queue what opened or resolved
        for the webhook (if any). A failed evaluation is logged and counted."""
        settings = self.alerting
        while True:
            raise_if_cancelling()
            await asyncio.sleep(settings.interval_s)
            try:
                changes = await self.store.run(
                    partial(
                        alerts.evaluate,
                        now_ms=now_ms(),
                        limits=settings.limits,
                        sent_feed=dict(self.sent_feed),
                    )
                )
            except Exception as exc:  # noqa: BLE001 - alerts must never end the session
                self.count("alert_evaluation_failures")
                log.warning("alerts.evaluation_failed", error=str(exc))
                continue
            for event, rows in (("opened", changes.opened), ("resolved", changes.resolved)):
                for row in rows:
                    self.count(f"alerts_{event}")
                    log.warning(
                        f"alert.{event}",
                        alert=row["id"],
                        kind=row["kind"],
                        severity=row["severity"],
                        site=row["site"],
                        subject=row["subject"] or None,
                    )
                    if settings.webhook_url:
                        try:
                            hooks.put_nowait((row["id"], alerts.webhook_payload(event, row)))
                        except asyncio.QueueFull:  # the receiver is down or slow: drop, count
                            self.count("webhook_failures")
                            log.warning("alert.webhook_dropped", alert=row["id"])

    async def _webhook(self, hooks: asyncio.Queue[tuple[int, bytes]]) -> None:
        """Post queued alert changes to the webhook, one at a time, each with its timeout."""
        settings = self.alerting
        while True:
            alert_id, body = await hooks.get()
            if not settings.webhook_url:
                continue
            error = await alerts.post_webhook(
                settings.webhook_url, body, timeout_s=settings.webhook_timeout_s
            )
            if error is not None:
                self.count("webhook_failures")
                log.warning("alert.webhook_failed", alert=alert_id, error=error)

    async def _dead_letter(self, topic: str, site: str | None, reason: str, payload: bytes) -> None:
        self.count("dead_letters")
        log.warning("central.dead_letter", topic=topic, site=site, reason=reason[:200])
        await self.store.run(
            lambda conn: dead_letter(
                conn, topic=topic, site=site, reason=reason, payload=payload, at_ms=now_ms()
            )
        )

    # -- publishing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def expect_reply(self, command_id: str) -> Iterator[asyncio.Future[Reply]]:
        """A future for the site's ``up/reply`` to command ``command_id``; register it
        before sending the command."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._awaited[command_id] = future
        try:
            yield future
        finally:
            self._awaited.pop(command_id, None)

    def _answered(self, site: str, payload: bytes) -> bool:
        """True if ``payload`` is a reply someone waits for (and it is now theirs)."""
        if not self._awaited:
            return False
        try:
            reply = decode(payload, Reply)
        except MessageError:
            return False  # the next branch dead-letters it
        future = self._awaited.get(reply.cmd_id)
        if future is None or reply.site != site or future.done():
            return False
        if reply.status in ("accepted", "progress"):
            return True  # not the final answer yet
        future.set_result(reply)
        return True

    async def send_command(self, site: str, command: Command) -> bool:
        """Publish ``command`` on ``site``'s ``down/cmd``; False while not connected."""
        if self._client is None:
            return False
        try:
            await self._client.publish(site_topic(site, Channel.DOWN_CMD), encode(command), qos=1)
        except aiomqtt.MqttError:
            return False
        return True

    async def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        """Publish at QoS 1 (the rollouts' outbox); :class:`aiomqtt.MqttError` when not
        connected, so nothing counts as sent that was not."""
        if self._client is None:
            raise aiomqtt.MqttError("not connected to the broker")
        await self._client.publish(topic, payload, qos=1, retain=retain)

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if self._client is None:
            return
        await self._client.publish(topic, payload, qos=1, retain=retain)

    async def _catch_up(self, site: str, feed_version: int, blacklist_version: int) -> None:
        """Bring a site that just (re)appeared up to date: feed and blacklist."""
        head = await self.store.run(master.head_version)
        if feed_version == 0 or feed_version > head:
            await self._send_snapshot(site, head)
        else:
            self.sent_feed[site] = feed_version
            await self._send_changes(site)
        deltas = await self.store.run(
            lambda conn: master.blacklist_since(conn, blacklist_version, limit=1000)
        )
        for i in range(0, len(deltas), 200):
            version = self.sent_feed.get(site, 0)
            await self._publish(
                site_topic(site, Channel.DOWN_FEED),
                encode(
                    Feed(
                        site=site,
                        feed_version=version,
                        prev_version=version,
                        changes=[],
                        blacklist=deltas[i : i + 200],
                    )
                ),
            )

    async def _send_snapshot(self, site: str, head: int) -> None:
        changes = await self.store.run(lambda conn: master.snapshot(conn, site))
        chunk = MAX_CHANGES // 2
        parts = max(1, -(-len(changes) // chunk))
        for part in range(parts):
            await self._publish(
                site_topic(site, Channel.DOWN_FEED),
                encode(
                    Feed(
                        site=site,
                        feed_version=head,
                        prev_version=0,
                        snapshot=True,
                        part=part + 1,
                        parts=parts,
                        changes=changes[part * chunk : (part + 1) * chunk],
                    )
                ),
            )
        self.sent_feed[site] = head
        self.count("snapshots")
        log.info("feed.snapshot", site=site, version=head, changes=len(changes), parts=parts)

    async def _send_changes(self, site: str) -> None:
        while True:
            raise_if_cancelling()
            after = self.sent_feed.get(site)
            if after is None:
                return
            changes = await self.store.run(
                partial(master.changes_since, site=site, after=after, limit=1000)
            )
            if not changes:
                return
            await self._publish(
                site_topic(site, Channel.DOWN_FEED),
                encode(
                    Feed(
                        site=site,
                        feed_version=changes[-1][0],
                        prev_version=after,
                        changes=[c for _, c in changes],
                    )
                ),
            )
            self.sent_feed[site] = changes[-1][0]

    async def _blacklist_publisher(self) -> None:
        """New blacklist deltas, broadcast (retained head) every ``PUBLISH_INTERVAL_S``. A
        loop of its own: a lost card must be refused everywhere at once, never after a
        fan-out of balances to hundreds of sites."""
        while True:
            raise_if_cancelling()
            deltas: list[BlacklistDelta] = await self.store.run(_unpublished_blacklist)
            for delta in deltas:
                await self._publish(global_topic(Channel.BLACKLIST), encode(delta), retain=True)
                await self.store.run(partial(_mark_published, version=delta.version))
                self.count("blacklist_published")
                log.info("blacklist.published", version=delta.version, worker=self.worker)
            await asyncio.sleep(PUBLISH_INTERVAL_S)

    async def _publisher(self) -> None:
        while True:
            raise_if_cancelling()
            if time.monotonic() - self._last_flush >= BALANCE_FLUSH_S:
                self._last_flush = time.monotonic()
                await self.store.run(master.flush_balances)
            head = await self.store.run(master.head_version)
            if head != self._last_head:
                self._last_head = head
                # Fan out concurrently (each site's stream stays in order): at hundreds of
                # sites one-after-another sends, each waiting for its PUBACK, take seconds.
                sites = list(self.online)
                for i in range(0, len(sites), FANOUT):
                    await asyncio.gather(*(self._send_changes(s) for s in sites[i : i + FANOUT]))
            await asyncio.sleep(PUBLISH_INTERVAL_S)

    async def _housekeeping(self) -> None:
        """Every ``HOUSEKEEPING_S``: 单边账 and long seq gaps become anomalies, and cleared
        days that late offline records changed get their new revision."""
        while True:
            raise_if_cancelling()
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                await self.store.run(finance.flag_uncommitted)
                await self.store.run(lambda conn: anomalies.flag_gaps(conn, now_ms=now_ms()))
                revised = await self.store.run(finance.refresh)
                # people who joined, left or moved department get their departments' grants
                await self.store.run(access.sync_department_grants)
            except (StoreError, sqlite3.Error, ValueError) as exc:  # never end the session
                log.warning("central.housekeeping_failed", error=str(exc))
                continue
            for report in revised:
                log.info(
                    "central.clearing_revised",
                    site=report.site or "HQ",
                    day=report.business_day.isoformat(),
                    revision=report.revision,
                )

    async def _gap_watch(self) -> None:
        while True:
            raise_if_cancelling()
            await asyncio.sleep(GAP_WAIT_S / 2)
            stuck = await self.store.run(_stuck_lanes)
            for site, epoch, lane, acked in stuck:
                command = ResendFrom(
                    id=f"resend-{uuid.uuid4().hex[:12]}",
                    issued_at=datetime.now(UTC),
                    epoch=epoch,
                    lane=0 if lane == 0 else 1,
                    from_seq=acked + 1,
                )
                await self._publish(site_topic(site, Channel.DOWN_CMD), encode(command))
                self.count("resend_from")
                log.warning("ingest.gap", site=site, epoch=epoch, lane=lane, acked=acked)


class _Stopped(Exception):  # noqa: N818 - control flow: ends the session's TaskGroup
    pass


class _LeadershipLost(Exception):  # noqa: N818 - control flow: ends the leader's duties
    pass


def _reported_versions(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
    """Each online site's feed and blacklist versions, as it last reported them."""
    rows = conn.execute(
        "SELECT id, coalesce(feed_version, 0), coalesce(blacklist_version, 0) FROM sites"
        " WHERE online = 1 AND removed = 0"
    ).fetchall()
    return {str(site): (int(feed), int(blacklist)) for site, feed, blacklist in rows}


def _record_birth(conn: sqlite3.Connection, site: str, state: SiteBirth, payload: bytes) -> bool:
    cursor = conn.execute(
        "UPDATE sites SET online = 1, last_seen_ms = ?, state = ?, version = ?, epoch = ?,"
        " feed_version = ?, blacklist_version = ?, outbox_depth = ?, outbox_oldest_age_s = ?"
        " WHERE id = ? AND removed = 0",
        (
            now_ms(),
            payload,
            state.version,
            state.epoch,
            state.feed_version,
            state.blacklist_version,
            state.outbox_depth,
            state.outbox_oldest_age_s,
            site,
        ),
    )
    return cursor.rowcount > 0


def _seen(conn: sqlite3.Connection, site: str) -> None:
    conn.execute("UPDATE sites SET last_seen_ms = ? WHERE id = ?", (now_ms(), site))


def _mark_published(conn: sqlite3.Connection, version: int) -> None:
    conn.execute("UPDATE blacklist_log SET published = 1 WHERE version = ?", (version,))


def _unpublished_blacklist(conn: sqlite3.Connection) -> list[BlacklistDelta]:
    rows = conn.execute(
        "SELECT delta FROM blacklist_log WHERE published = 0 ORDER BY version"
    ).fetchall()
    return [msgspec.json.decode(row[0], type=BlacklistDelta) for row in rows]


def _stuck_lanes(conn: sqlite3.Connection) -> list[tuple[str, int, int, int]]:
    now = now_ms()
    rows = conn.execute(
        "SELECT site, epoch, lane, acked_seq FROM lanes"
        " WHERE gap_since_ms IS NOT NULL AND gap_since_ms < ?"
        " AND (resend_ms IS NULL OR resend_ms < ?)",
        (now - int(GAP_WAIT_S * 1000), now - int(RESEND_EVERY_S * 1000)),
    ).fetchall()
    for site, epoch, lane, _ in rows:
        conn.execute(
            "UPDATE lanes SET resend_ms = ? WHERE site = ? AND epoch = ? AND lane = ?",
            (now, site, epoch, lane),
        )
    return [(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]
