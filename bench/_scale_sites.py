"""The load generator of ``bench/central_scale.py``: many lightweight sites in one process.

Each simulated site is what central sees of an edge, and nothing more: one MQTT connection
with the site's own credentials and client id (``make_client``: MQTT v5, TLS, persistent
session, the edge's Will), the edge's subscriptions, a retained birth, and an outbox backlog
built in memory and cut into batches as ``EdgeSync._send_next`` cuts them (per lane, ≤
``BATCH_RECORDS`` records and ≤ ``BATCH_BYTES``, up to ``WINDOW`` batches in flight per lane,
released only by central's ``down/ack``; a ``resend_from`` sends the lane again from there).
No SQLite, no terminals, no feed applied: the point is central's side at 500 sites.

The parent drives it over stdin/stdout, one line each way (stderr is the log)::

    parent → loader      loader → parent (JSON)
    (start)              {"event": "ready", records, purchases, spent_fen, batches, connect_s}
    DRAIN                {"event": "drained", first_publish, last_ack, latencies, resends}
    WATCH <uid> <s>      {"event": "armed"} then {"event": "seen", uid, times: {site: t}}
    QUIT                 (disconnects, exits 0)

Times are ``time.monotonic()`` values: CLOCK_MONOTONIC is one clock for every process on
the machine, so the parent compares them with its own. Anything that goes wrong is one
``{"event": "error", "message": ...}`` line and exit status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt
import msgspec
from _records import AMOUNTS_FEN, PURCHASE_SHARE, door_pass, sale

from edge_agent.adapters.mqtt_client import BrokerSettings, make_client
from edge_agent.adapters.mqtt_sync import BATCH_BYTES, BATCH_RECORDS, WINDOW
from protocol.errors import MessageError
from protocol.messages import (
    LANES,
    Ack,
    BlacklistDelta,
    DoorAccess,
    Purchase,
    RawRecordBatch,
    ResendFrom,
    SiteBirth,
    SiteDeath,
    decode,
    decode_command,
    encode,
)
from protocol.topics import Channel, global_topic, parse_topic, site_topic

#: TLS handshakes at once while the sites connect (each is a thread of aiomqtt's executor).
CONNECTING = 32
CONNECT_TIMEOUT_S = 120.0


@dataclass
class Batch:
    """One uplink message, as the edge would send it."""

    lane: int
    first_seq: int
    last_seq: int
    payload: bytes
    sent_at: float = 0.0
    acked_at: float = 0.0


def build_backlog(
    site: str, epoch: int, count: int, uids: list[str], rng: random.Random
) -> tuple[dict[int, list[Batch]], int, int]:
    """``count`` valid records for ``site`` (approved sales by ``uids`` in lane 0, door
    access in lane 1), cut into batches; returns them per lane, the purchases and the fen
    they spend."""
    base = datetime.now(UTC) - timedelta(hours=1)
    encoded: dict[int, list[bytes]] = {lane: [] for lane in LANES}
    purchases = spent = 0
    for n in range(count):
        at = base + timedelta(milliseconds=n * 50)
        uid = uids[rng.randrange(len(uids))]
        common: dict[str, Any] = {
            "site": site,
            "term_rec": n + 1,
            "at": at,
            "received_at": at + timedelta(milliseconds=3),
            "offline": False,
            "card_uid": uid,
        }
        if rng.random() < PURCHASE_SHARE:
            seq = len(encoded[0]) + 1
            amount = rng.choice(AMOUNTS_FEN)
            record: Purchase | DoorAccess = sale(f"{site}.{epoch}.0.{seq}", seq, amount, common)
            encoded[0].append(encode(record))
            purchases += 1
            spent += amount
        else:
            seq = len(encoded[1]) + 1
            record = door_pass(f"{site}.{epoch}.1.{seq}", seq, common)
            encoded[1].append(encode(record))
    return {lane: cut(site, epoch, lane, encoded[lane]) for lane in LANES}, purchases, spent


def cut(site: str, epoch: int, lane: int, records: list[bytes]) -> list[Batch]:
    """A lane's records (seq 1..n) in batches as the edge cuts them."""
    out: list[Batch] = []
    take: list[bytes] = []
    size = 0
    first = 1

    def flush() -> None:
        batch = RawRecordBatch(
            site=site,
            epoch=epoch,
            lane=lane,  # type: ignore[arg-type]
            first_seq=first,
            last_seq=first + len(take) - 1,
            records=[msgspec.Raw(p) for p in take],
        )
        out.append(Batch(lane, batch.first_seq, batch.last_seq, encode(batch)))

    for payload in records:
        if take and (len(take) == BATCH_RECORDS or size + len(payload) > BATCH_BYTES):
            flush()
            first += len(take)
            take, size = [], 0
        take.append(payload)
        size += len(payload)
    if take:
        flush()
    return out


@dataclass
class Watch:
    """One blacklisted card being waited for: when each site got it."""

    uid: str
    sites: int
    times: dict[str, float] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def seen(self, site: str, at: float) -> None:
        """``site`` received the card on ``broadcast/blacklist`` at ``at``."""
        self.times.setdefault(site, at)
        if len(self.times) == self.sites:
            self.done.set()


@dataclass
class SimSite:
    """One site's connection and backlog."""

    site: str
    settings: BrokerSettings
    epoch: int
    feed_version: int
    lanes: dict[int, list[Batch]]
    watches: dict[str, Watch]
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    resends: int = 0
    _client: aiomqtt.Client | None = None
    _acked: dict[int, int] = field(default_factory=lambda: dict.fromkeys(LANES, 0))
    #: Index of the next batch to send, per lane (moved back by ``resend_from``).
    _next: dict[int, int] = field(default_factory=lambda: dict.fromkeys(LANES, 0))
    _progress: dict[int, asyncio.Event] = field(
        default_factory=lambda: {lane: asyncio.Event() for lane in LANES}
    )

    @property
    def records(self) -> int:
        """Records in the backlog."""
        return sum(b.last_seq - b.first_seq + 1 for batches in self.lanes.values() for b in batches)

    async def run(self, connecting: asyncio.Semaphore, stopping: asyncio.Event) -> None:
        """Connect, subscribe as the edge does, publish the birth, then take messages until
        ``stopping``."""
        will = aiomqtt.Will(site_topic(self.site, Channel.UP_STATE), encode(SiteDeath()), 1, True)
        client = make_client(self.settings, identifier=f"edge-{self.site}", will=will)
        client.pending_calls_threshold = 4 * WINDOW  # no warning per batch in flight
        async with connecting:
            await client.__aenter__()
        try:
            self._client = client
            for channel in (Channel.DOWN_ACK, Channel.DOWN_FEED, Channel.DOWN_CMD):
                await client.subscribe(site_topic(self.site, channel), qos=1)
            await client.subscribe(global_topic(Channel.BLACKLIST), qos=1)
            await client.subscribe(global_topic(Channel.CENTRAL_STATE), qos=1)
            birth = SiteBirth(
                at=datetime.now(UTC),
                version="bench",
                epoch=self.epoch,
                acked=[0, 0],
                outbox_depth=self.records,
                outbox_oldest_age_s=3600.0,
                # Up to date with the seed: central replays nothing (no snapshot storm).
                feed_version=self.feed_version,
                blacklist_version=0,
            )
            await client.publish(
                site_topic(self.site, Channel.UP_STATE), encode(birth), qos=1, retain=True
            )
            self.connected.set()
            # Until the parent says QUIT; a lost connection or a bad message ends the run.
            async with asyncio.TaskGroup() as group:
                receiving = group.create_task(self._receive(client))
                await stopping.wait()
                receiving.cancel()
        finally:
            self._client = None
            await client.__aexit__(None, None, None)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            now = time.monotonic()
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if not payload:
                continue
            channel = parse_topic(message.topic.value).channel
            if channel is Channel.DOWN_ACK:
                self._on_ack(decode(payload, Ack), now)
            elif channel is Channel.BLACKLIST and self.watches:
                for change in decode(payload, BlacklistDelta).changes:
                    watch = self.watches.get(change.card_uid)
                    if watch is not None and change.op == "add":
                        watch.seen(self.site, now)
            elif channel is Channel.DOWN_CMD:
                try:
                    command = decode_command(payload)
                except MessageError:
                    continue
                if isinstance(command, ResendFrom) and command.epoch == self.epoch:
                    self._resend(command.lane, command.from_seq)

    def _on_ack(self, ack: Ack, now: float) -> None:
        if ack.epoch != self.epoch or ack.acked_seq <= self._acked[ack.lane]:
            return
        self._acked[ack.lane] = ack.acked_seq
        for batch in self.lanes[ack.lane]:
            if batch.sent_at and not batch.acked_at and batch.last_seq <= ack.acked_seq:
                batch.acked_at = now
        self._progress[ack.lane].set()

    def _resend(self, lane: int, from_seq: int) -> None:
        for i, batch in enumerate(self.lanes[lane]):
            if batch.first_seq <= from_seq <= batch.last_seq:
                self._next[lane] = min(self._next[lane], i)
                self.resends += 1
                self._progress[lane].set()
                return

    async def drain(self) -> None:
        """Send every lane's backlog, ``WINDOW`` batches in flight per lane, until central's
        acks cover it all."""
        async with asyncio.TaskGroup() as group:
            for lane in LANES:
                if self.lanes[lane]:
                    group.create_task(self._drain_lane(lane))

    async def _drain_lane(self, lane: int) -> None:
        batches = self.lanes[lane]
        last = batches[-1].last_seq
        client = self._client
        if client is None:
            raise RuntimeError(f"{self.site} is not connected")
        topic = site_topic(self.site, Channel.UP_RECORDS)
        while self._acked[lane] < last:
            self._progress[lane].clear()
            acked = self._acked[lane]
            while self._next[lane] < len(batches):
                inflight = sum(
                    1 for b in batches[: self._next[lane]] if b.last_seq > acked and b.sent_at
                )
                if inflight >= WINDOW:
                    break
                batch = batches[self._next[lane]]
                self._next[lane] += 1
                if batch.last_seq <= acked:
                    continue
                if not batch.sent_at:
                    batch.sent_at = time.monotonic()
                await client.publish(topic, batch.payload, qos=1)
            if self._acked[lane] < last:
                await self._progress[lane].wait()


# -- the process --------------------------------------------------------------------------------


def emit(event: str, **fields: Any) -> None:
    """One line to the parent."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def _lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def serve(spec: dict[str, Any]) -> None:
    """Build the backlogs, connect every site, then obey the parent's commands."""
    uids: list[str] = spec["uids"]
    watches: dict[str, Watch] = {}
    sites: list[SimSite] = []
    purchases = spent = 0
    for site, password in spec["sites"].items():
        lanes, bought, fen = build_backlog(
            site, spec["epoch"], spec["records_per_site"], uids, random.Random(site)
        )
        purchases += bought
        spent += fen
        settings = BrokerSettings.from_url(
            spec["url"], username=site, password=password, ca_file=Path(spec["ca"])
        )
        sites.append(SimSite(site, settings, spec["epoch"], spec["feed_version"], lanes, watches))
    stopping = asyncio.Event()
    connecting = asyncio.Semaphore(CONNECTING)
    commands = await _lines()
    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(s.run(connecting, stopping)) for s in sites]
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await asyncio.gather(*(s.connected.wait() for s in sites))
        except TimeoutError:
            waiting = [s.site for s in sites if not s.connected.is_set()]
            raise SystemExit(
                f"{len(waiting)} sites not connected after {CONNECT_TIMEOUT_S:.0f} s"
                f" (first: {waiting[:5]})"
            ) from None
        emit(
            "ready",
            records=sum(s.records for s in sites),
            purchases=purchases,
            spent_fen=spent,
            batches=sum(len(b) for s in sites for b in s.lanes.values()),
            connect_s=time.monotonic() - started,
        )
        while line := (await commands.readline()).decode().strip():
            verb, _, arg = line.partition(" ")
            if verb == "DRAIN":
                await _drain(sites, float(arg), tasks)
            elif verb == "WATCH":
                uid, _, within = arg.partition(" ")
                watch = watches[uid] = Watch(uid, len(sites))
                emit("armed")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(float(within)):
                        await watch.done.wait()
                del watches[uid]
                emit("seen", uid=uid, times=watch.times)
            elif verb == "QUIT":
                break
        stopping.set()


async def _drain(sites: list[SimSite], timeout_s: float, tasks: list[asyncio.Task[None]]) -> None:
    try:
        async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as group:
            for site in sites:
                group.create_task(site.drain())
    except TimeoutError:
        short = [
            f"{s.site} lane {lane} acked {s._acked[lane]}/{b[-1].last_seq}"
            for s in sites
            for lane, b in s.lanes.items()
            if b and s._acked[lane] < b[-1].last_seq
        ]
        dead = sum(1 for t in tasks if t.done())
        raise SystemExit(
            f"drain: no ack covering every batch after {timeout_s:.0f} s:"
            f" {len(short)} lanes short (e.g. {short[:3]}); {dead} site connections ended"
        ) from None
    batches = [b for s in sites for lanes in s.lanes.values() for b in lanes]
    emit(
        "drained",
        first_publish=min(b.sent_at for b in batches),
        last_ack=max(b.acked_at for b in batches),
        latencies=[b.acked_at - b.sent_at for b in batches],
        resends=sum(s.resends for s in sites),
    )


def main(spec_file: Path) -> None:
    """Run as a loader process (``python bench/_scale_sites.py SPEC.json``)."""
    spec = json.loads(spec_file.read_text())
    try:
        asyncio.run(serve(spec))
    except SystemExit as exc:
        emit("error", message=str(exc))
        sys.exit(1)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit 1
        group = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
        emit("error", message="; ".join(repr(e) for e in group)[:2000])
        sys.exit(1)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
