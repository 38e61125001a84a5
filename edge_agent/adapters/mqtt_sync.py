"""The edge's link to central over MQTT: records up, acks/feed/blacklist/commands down.

- **Uplink**, per lane: unacked outbox records in contiguous batches (≤ ``BATCH_RECORDS``
  records and ``BATCH_BYTES``), up to ``WINDOW`` batches in flight. A record is marked synced
  only when central's ``down/ack`` watermark covers it — never on PUBACK. Batches not acked
  within ``ACK_TIMEOUT_S`` are sent again from the watermark; so is everything after a
  reconnect or a ``resend_from``. Lane 0 (money, card intents) is served first.
- **Downlink**: feed changes and blacklist deltas are applied in one transaction each, in
  version order. A gap (a change or delta whose ``prev_version`` is not ours) makes the
  edge re-announce itself (birth) with its versions, and central replays from there.
- **State**: a retained birth on ``up/state`` when connected, the Will (death) otherwise.
  The site counts as offline — for the offline policy — while the broker is unreachable,
  central says it is offline, or unacked records wait longer than ``offline_after_s``.

The terminals never wait for any of this: decisions come from the local store.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aiomqtt
import msgspec
import structlog

from edge_agent.adapters import sqlite_outbox as outbox
from edge_agent.adapters.mqtt_client import BrokerSettings, make_client
from edge_agent.adapters.sqlite_master import clear_master, delete_from_feed, upsert_from_feed
from edge_agent.adapters.sqlite_store import EdgeStore, StoreError, get_meta, set_meta
from edge_agent.adapters.terminal_server import TerminalRegistry
from edge_agent.adapters.waiting import raise_if_cancelling, wait_event
from edge_agent.logtail import LogTail
from edge_agent.site import Site
from edge_agent.upgrade import UpgradeManager
from protocol.errors import MessageError, ProtocolError, TopicError
from protocol.messages import (
    LANES,
    Ack,
    BlacklistDelta,
    CentralState,
    DoorOpen,
    Feed,
    FeedChange,
    Lane,
    LogsStop,
    LogsTail,
    RawRecordBatch,
    Reply,
    ResendFrom,
    Resync,
    SetLogLevel,
    SiteBirth,
    SiteDeath,
    TerminalStatus,
    Upgrade,
    decode,
    decode_command,
    encode,
)
from protocol.terminal import Ack as TerminalAck
from protocol.terminal import DoorOpen as TerminalDoorOpen
from protocol.topics import Channel, global_topic, parse_topic, site_topic

log = structlog.get_logger("edge.sync")

BATCH_RECORDS = 500
BATCH_BYTES = 256 * 1024
WINDOW = 8
#: Remote door opens that may wait for their terminal at once; more are refused.
DOOR_OPENS_WAITING = 16
ACK_TIMEOUT_S = 10.0


@dataclass
class _LaneState:
    sent_upto: int = 0
    acked: int = 0
    inflight: list[tuple[int, float]] = field(default_factory=list)  # (last_seq, sent_at)


@dataclass
class EdgeSync:
    """Keeps one site in sync with central (see the module docstring)."""

    store: EdgeStore
    site: Site
    broker: BrokerSettings
    registry: TerminalRegistry
    version: str = "0"
    offline_after_s: float = 60.0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    connected: bool = False
    central_online: bool = False
    stats: dict[str, int] = field(default_factory=dict)
    _client: aiomqtt.Client | None = None
    #: Remote log tail (``logs.tail``, ``logs.stop``, ``log_level``); None: refused.
    logtail: LogTail | None = None
    #: Runs ``upgrade`` commands (:mod:`edge_agent.upgrade`); None: refused.
    upgrades: UpgradeManager | None = None
    _lanes: dict[int, _LaneState] = field(default_factory=dict)
    _progress: asyncio.Event = field(default_factory=asyncio.Event)
    _snapshot_parts: dict[int, dict[int, list[FeedChange]]] = field(default_factory=dict)
    #: The newest ack received per lane, not yet marked in the outbox (see ``_mark_acked``).
    _acks: dict[int, int] = field(default_factory=dict)
    _acks_waiting: asyncio.Event = field(default_factory=asyncio.Event)
    #: Remote door opens waiting for their terminal: a terminal's answer can take seconds,
    #: and the downlink (acks, blacklist deltas) must not wait behind it.
    _door_opens: asyncio.Queue[DoorOpen] = field(
        default_factory=lambda: asyncio.Queue(maxsize=DOOR_OPENS_WAITING)
    )

    def count(self, name: str, n: int = 1) -> None:
        """Bump a counter."""
        self.stats[name] = self.stats.get(name, 0) + n

    async def run(self) -> None:
        """Stay connected until stopped: reconnect with jittered, capped backoff."""
        delay = 0.5
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch_offline())
            while not self.stopping.is_set():
                try:
                    await self._session()
                except* aiomqtt.MqttError as lost:  # the session's TaskGroup wraps it in a group
                    log.warning("sync.broker_unreachable", error=str(lost.exceptions[0]))
                except* StoreError as failed:  # e.g. a full disk: reconnect once it can write
                    self.count("store_unavailable")
                    log.exception("sync.store_unavailable", error=str(failed.exceptions[0]))
                finally:
                    if self.connected:
                        delay = 0.5  # it was connected: back off afresh after this drop
                    self.connected = False
                    self._client = None
                    self._update_offline()
                if self.stopping.is_set():
                    break
                await wait_event(self.stopping, delay * random.uniform(0.5, 1.5))
                # Capped at 15 s: a branch back from an outage should not wait long to sync.
                delay = min(delay * 2, 15)

    def stop(self) -> None:
        """Ask the sync to stop (the daemon is stopping)."""
        self.stopping.set()
        self._progress.set()

    def poke(self) -> None:
        """New records are in the outbox."""
        self._progress.set()

    # -- the connection ---------------------------------------------------------------------

    async def _session(self) -> None:
        site = self.site.site
        will = aiomqtt.Will(site_topic(site, Channel.UP_STATE), encode(SiteDeath()), 1, True)
        async with make_client(self.broker, identifier=f"edge-{site}", will=will) as client:
            self._client = client
            self.connected = True
            for channel in (Channel.DOWN_ACK, Channel.DOWN_FEED, Channel.DOWN_CMD):
                await client.subscribe(site_topic(site, channel), qos=1)
            await client.subscribe(global_topic(Channel.BLACKLIST), qos=1)
            await client.subscribe(global_topic(Channel.CENTRAL_STATE), qos=1)
            for lane in LANES:
                acked = await self.store.run(partial(outbox.acked_watermark, lane=lane))
                self._lanes[lane] = _LaneState(sent_upto=acked, acked=acked)
            self._acks.clear()
            await self.announce()
            log.info("sync.connected", broker=self.broker.host, site=site)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._receive(client))
                    group.create_task(self._uplink(client))
                    group.create_task(self._mark_acked())
                    group.create_task(self._open_doors())
                    group.create_task(self._until_stopped())
            except* _Stopped:
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.publish(
                        site_topic(site, Channel.UP_STATE), encode(SiteDeath()), 1, retain=True
                    )

    async def _until_stopped(self) -> None:
        await self.stopping.wait()
        raise _Stopped

    async def announce(self) -> None:
        """Publish the retained birth: versions, watermarks, outbox and terminals."""
        if self._client is None:
            return
        status = await self.site.status(self.registry, version=self.version)
        birth = SiteBirth(
            at=datetime.now(UTC),
            version=self.version,
            epoch=self.store.epoch,
            acked=status["acked"],
            outbox_depth=status["outbox_depth"],
            outbox_oldest_age_s=status["outbox_oldest_age_s"],
            feed_version=status["feed_version"],
            blacklist_version=status["blacklist_version"],
            terminals=[
                TerminalStatus(id=t["id"], kind=t["kind"], online=t["online"])
                for t in status["terminals"]
            ],
        )
        await self._client.publish(
            site_topic(self.site.site, Channel.UP_STATE), encode(birth), qos=1, retain=True
        )

    # -- uplink ----------------------------------------------------------------------------

    async def _uplink(self, client: aiomqtt.Client) -> None:
        while True:
            raise_if_cancelling()
            sent = False
            for lane in LANES:
                sent |= await self._send_next(client, lane)
            if not sent:
                self._progress.clear()
                await wait_event(self._progress, 1.0)

    async def _send_next(self, client: aiomqtt.Client, lane: Lane) -> bool:
        state = self._lanes[lane]
        state.inflight = [(last, at) for last, at in state.inflight if last > state.acked]
        now = time.monotonic()
        if state.inflight and now - state.inflight[0][1] > ACK_TIMEOUT_S:
            log.info("sync.ack_timeout", lane=lane, acked=state.acked, sent=state.sent_upto)
            self.count("ack_timeouts")
            state.sent_upto, state.inflight = state.acked, []
        if len(state.inflight) >= WINDOW:
            return False
        after = state.sent_upto
        rows = await self.store.run(lambda c: _unsent(c, lane, after))
        if not rows:
            return False
        first_seq, epoch, payload = rows[0]
        size, last, records = len(payload), first_seq, [msgspec.Raw(payload)]
        for seq, row_epoch, payload in rows[1:]:
            if seq != last + 1 or row_epoch != epoch or size + len(payload) > BATCH_BYTES:
                break
            records.append(msgspec.Raw(payload))
            size += len(payload)
            last = seq
        batch = RawRecordBatch(
            site=self.site.site,
            epoch=epoch,
            lane=lane,
            first_seq=first_seq,
            last_seq=last,
            records=records,
        )
        await client.publish(site_topic(self.site.site, Channel.UP_RECORDS), encode(batch), qos=1)
        state.sent_upto = last
        state.inflight.append((last, now))
        self.count("batches_sent")
        self.count("records_sent", len(records))
        return True

    # -- downlink ---------------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                topic = parse_topic(message.topic.value)
                await self._dispatch(topic.channel, payload)
            except (MessageError, TopicError) as exc:
                self.count("bad_downlink")
                log.warning("sync.bad_message", topic=message.topic.value, error=str(exc))
                await self.site.dead_letter(f"mqtt:{message.topic.value}", str(exc), payload)
            except StoreError as exc:
                # Not applied (a full disk): its version did not move, so the next change is
                # a gap and the edge asks for a resync then; the session goes on meanwhile.
                self.count("store_unavailable")
                log.warning("sync.not_applied", topic=message.topic.value, error=str(exc))

    async def _dispatch(self, channel: Channel, payload: bytes) -> None:
        if channel is Channel.DOWN_ACK:
            await self._on_ack(decode(payload, Ack))
        elif channel is Channel.DOWN_FEED:
            await self._on_feed(decode(payload, Feed))
        elif channel is Channel.BLACKLIST:
            if payload:
                await self._on_blacklist([decode(payload, BlacklistDelta)])
        elif channel is Channel.CENTRAL_STATE:
            if payload:
                self.central_online = decode(payload, CentralState).online
                self._update_offline()
        elif channel is Channel.DOWN_CMD and payload:
            # (empty: central cleared a retained desired version, see upgrades)
            await self._on_command(payload)

    async def _on_ack(self, ack: Ack) -> None:
        if ack.epoch != self.store.epoch:
            return  # an ack for a previous database of this site
        state = self._lanes.get(ack.lane)
        if state is None or ack.acked_seq <= max(state.acked, self._acks.get(ack.lane, 0)):
            return
        # Marked by _mark_acked, so the acks that arrive while one is being written are
        # written together, and this loop goes on reading meanwhile.
        self._acks[ack.lane] = ack.acked_seq
        self._acks_waiting.set()

    async def _mark_acked(self) -> None:
        """Mark the outbox acked up to the newest ack of each lane, one transaction for every
        ack received since the last one (only ever on central's ack, never on PUBACK)."""
        epoch = self.store.epoch
        while True:
            raise_if_cancelling()
            await self._acks_waiting.wait()
            self._acks_waiting.clear()
            marks = [
                (lane, seq)
                for lane, seq in self._acks.items()
                if lane in self._lanes and seq > self._lanes[lane].acked
            ]
            if not marks:
                continue
            try:
                await self.store.run(partial(_mark_lanes, epoch=epoch, marks=marks))
            except StoreError as exc:  # a full disk: the acks stay pending, marked later
                self.count("store_unavailable")
                log.warning("sync.ack_not_marked", error=str(exc))
                await asyncio.sleep(1.0)
                self._acks_waiting.set()
                continue
            for lane, seq in marks:
                state = self._lanes[lane]
                state.acked = max(state.acked, seq)
                state.sent_upto = max(state.sent_upto, state.acked)
            self._last_ack = time.monotonic()
            self._update_offline()
            self._progress.set()

    async def _on_feed(self, feed: Feed) -> None:
        self._last_feed = time.monotonic()
        reload = False
        if feed.snapshot:
            parts = self._snapshot_parts.setdefault(feed.feed_version, {})
            parts[feed.part] = list(feed.changes)
            if len(parts) == feed.parts:
                changes = [c for i in sorted(parts) for c in parts[i]]
                del self._snapshot_parts[feed.feed_version]
                await self.store.run(lambda c: self._apply_snapshot(c, feed.feed_version, changes))
                log.info("feed.snapshot_applied", version=feed.feed_version, changes=len(changes))
                reload = True
        elif feed.changes:
            applied = await self.store.run(lambda c: self._apply_changes(c, feed))
            if applied is None:
                await self.announce()  # a gap: tell central where we are
            else:
                reload = applied
        if feed.blacklist:
            await self._on_blacklist(feed.blacklist)
        if reload:
            await self.site.load()
        if self.site.on_lists is not None:
            self.site.on_lists()  # whitelists follow master data

    def _apply_snapshot(
        self, conn: sqlite3.Connection, version: int, changes: list[FeedChange]
    ) -> None:
        clear_master(conn)
        for change in changes:
            if change.data is not None:
                upsert_from_feed(
                    conn, change.entity, change.data, site=self.site.site, epoch=self.store.epoch
                )
        set_meta(conn, "feed_version", version)

    def _apply_changes(self, conn: sqlite3.Connection, feed: Feed) -> bool | None:
        current = int(get_meta(conn, "feed_version") or 0)
        if feed.feed_version <= current:
            return False  # already have it (a replay)
        if feed.prev_version > current:
            return None  # a gap
        reload = False
        for change in feed.changes:
            if change.op == "upsert" and change.data is not None:
                upsert_from_feed(
                    conn, change.entity, change.data, site=self.site.site, epoch=self.store.epoch
                )
            else:
                delete_from_feed(conn, change.entity, change.key)
            reload |= change.entity in ("terminal", "policy")
        set_meta(conn, "feed_version", feed.feed_version)
        return reload

    async def _on_blacklist(self, deltas: list[BlacklistDelta]) -> None:
        gap = await self.store.run(lambda c: _apply_blacklist(c, deltas))
        if self.site.on_lists is not None:
            self.site.on_lists()  # push the change to terminals that decide locally
        if gap:
            self.count("blacklist_gaps")
            await self.announce()

    async def _on_command(self, payload: bytes) -> None:
        try:
            command = decode_command(payload)
        except MessageError as exc:
            await self.site.dead_letter("mqtt:down/cmd", str(exc), payload)
            return
        status, detail = "done", ""
        if command.expires_at is not None and datetime.now(UTC) > command.expires_at:
            # e.g. a remote door open queued while the site was cut off: never run it late
            status, detail = "rejected", f"expired at {command.expires_at.isoformat()}"
        elif isinstance(command, ResendFrom):
            state = self._lanes.get(command.lane)
            if command.epoch == self.store.epoch and state is not None:
                state.sent_upto = min(state.sent_upto, command.from_seq - 1)
                state.inflight = []
                self._progress.set()
                self.count("resends")
            else:
                status, detail = "rejected", "not this database's epoch"
        elif isinstance(command, Resync):
            await self.store.run(lambda c: _forget_versions(c, command.what))
            await self.announce()
        elif isinstance(command, LogsTail | LogsStop | SetLogLevel) and self.logtail is not None:
            status, detail = self.logtail.command(command)
        elif isinstance(command, DoorOpen):
            try:
                self._door_opens.put_nowait(command)  # answered by _open_doors
            except asyncio.QueueFull:
                status, detail = "rejected", "too many door opens waiting; try again"
            else:
                return
        elif isinstance(command, Upgrade) and self.upgrades is not None:
            status, detail, data = self.upgrades.submit(command)
            await self._reply(command.id, status, detail, **data)
            return
        else:
            status, detail = "rejected", f"{type(command).__name__} is not supported yet"
        await self._reply(command.id, status, detail)

    async def _open_doors(self) -> None:
        """Carry out queued remote door opens one at a time, each answered on ``up/reply``."""
        while True:
            raise_if_cancelling()
            command = await self._door_opens.get()
            status, detail = await self._open_door(command)
            await self._reply(command.id, status, detail)

    async def _open_door(self, command: DoorOpen) -> tuple[str, str]:
        """HQ's remote open: DOOR_OPEN to the door's terminal, and a ``remote_open`` event
        in the site's records saying who asked and what happened."""
        if command.expires_at is not None and datetime.now(UTC) > command.expires_at:
            return "rejected", f"expired at {command.expires_at.isoformat()}"  # while queued
        terminal = self.site.terminals.get(command.terminal)
        if terminal is None or terminal.kind != "door":
            return "rejected", f"{command.terminal} is not a door terminal at {self.site.site}"
        session = self.registry.sessions.get(command.terminal)
        if session is None:
            status, detail = "failed", f"{command.terminal} is not connected"
        else:
            try:
                answer = await session.request(
                    TerminalDoorOpen(door=command.door, open_ms=command.open_ms)
                )
            except (TimeoutError, ProtocolError, MessageError, ConnectionError, OSError):
                status, detail = "failed", f"{command.terminal} did not answer"
            else:
                if isinstance(answer, TerminalAck) and answer.ok:
                    status, detail = "done", ""
                else:
                    code = getattr(answer, "code", None) or "refused"
                    status, detail = "failed", f"{command.terminal} refused: {code}"
        log.info(
            "door.remote_open",
            terminal=command.terminal,
            door=command.door,
            operator=command.operator,
            status=status,
            detail=detail,
        )
        await self.site.record_remote_open(
            command.terminal, command.door, f"{command.operator}: {status} {detail}".strip()
        )
        return status, detail

    async def reply(self, cmd_id: str, status: str, detail: str, data: dict[str, Any]) -> bool:
        """Publish a command's later result on ``up/reply`` (upgrades); False while not
        connected."""
        client = self._client
        if client is None:
            return False
        reply = Reply(
            site=self.site.site,
            cmd_id=cmd_id,
            at=datetime.now(UTC),
            status=status,  # type: ignore[arg-type]
            detail=detail,
            data=data,
        )
        try:
            await client.publish(site_topic(self.site.site, Channel.UP_REPLY), encode(reply), 1)
        except aiomqtt.MqttError:
            return False
        return True

    async def publish_logs(self, payload: bytes, qos: int) -> bool:
        """Publish a log batch on ``up/logs``; False while not connected."""
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(site_topic(self.site.site, Channel.UP_LOGS), payload, qos)
        except aiomqtt.MqttError:
            return False
        return True

    async def _reply(self, cmd_id: str, status: str, detail: str, **data: Any) -> None:
        if self._client is None:
            return
        reply = Reply(
            site=self.site.site,
            cmd_id=cmd_id,
            at=datetime.now(UTC),
            status=status,  # type: ignore[arg-type]
            detail=detail,
            data=data,
        )
        await self._client.publish(site_topic(self.site.site, Channel.UP_REPLY), encode(reply), 1)

    # -- offline policy -----------------------------------------------------------------------

    def _update_offline(self) -> None:
        online = self.connected and self.central_online and not self._acks_overdue()
        if online:
            if self.site.offline_since is not None:
                log.info("sync.online_again", since=self.site.offline_since.isoformat())
            self.site.offline_since = None
        elif self.site.offline_since is None:
            self.site.offline_since = datetime.now(UTC)
            log.warning("sync.offline", connected=self.connected, central=self.central_online)

    def _acks_overdue(self) -> bool:
        for state in self._lanes.values():
            if state.inflight and time.monotonic() - state.inflight[0][1] > self.offline_after_s:
                return True
        return False

    async def _watch_offline(self) -> None:
        while not self.stopping.is_set():
            self._update_offline()
            await wait_event(self.stopping, 1.0)


class _Stopped(Exception):  # noqa: N818 - control flow: ends the session's TaskGroup
    pass


def _apply_blacklist(conn: sqlite3.Connection, deltas: list[BlacklistDelta]) -> bool:
    """Apply deltas in order; True if one did not follow on from our version (a gap)."""
    gap = False
    for delta in sorted(deltas, key=lambda d: d.version):
        current = int(get_meta(conn, "blacklist_version") or 0)
        if delta.version <= current:
            continue
        if delta.prev_version != current:
            gap = True
            break
        for change in delta.changes:
            if change.op == "add":
                conn.execute(
                    "INSERT OR REPLACE INTO blacklist (uid, reason, effective_at_ms, version)"
                    " VALUES (?, ?, ?, ?)",
                    (
                        change.card_uid,
                        change.reason,
                        int(change.effective_at.timestamp() * 1000),
                        delta.version,
                    ),
                )
            else:
                conn.execute("DELETE FROM blacklist WHERE uid = ?", (change.card_uid,))
        set_meta(conn, "blacklist_version", delta.version)
    return gap


def _unsent(conn: sqlite3.Connection, lane: Lane, after: int) -> list[tuple[int, int, bytes]]:
    """(seq, epoch, payload) of the unacked records of ``lane`` after seq ``after``, in seq
    order, at most a batch of them (``outbox.unacked`` without building a row object each)."""
    rows: list[tuple[int, int, bytes]] = conn.execute(
        "SELECT seq, epoch, payload FROM outbox_rows WHERE lane = ? AND seq > ?"
        " ORDER BY seq LIMIT ?",
        (lane, max(after, outbox.acked_watermark(conn, lane)), BATCH_RECORDS),
    ).fetchall()
    return rows


def _mark_lanes(conn: sqlite3.Connection, epoch: int, marks: list[tuple[int, int]]) -> None:
    for lane, seq in marks:
        outbox.mark_acked(conn, epoch, lane, seq)  # type: ignore[arg-type]


def _forget_versions(conn: sqlite3.Connection, what: str) -> None:
    if what in ("feed", "all"):
        set_meta(conn, "feed_version", 0)
    if what in ("blacklist", "all"):
        set_meta(conn, "blacklist_version", 0)
