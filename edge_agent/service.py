"""The composition root of ``onecard-edge run``: owns every task of the daemon.

Start-up order: logging → store (opened, migrated) → site (terminals and policy loaded) →
terminal listeners (TCP and serial) → ``READY=1``. So systemd's "started" means terminals can
connect and every tap will be recorded. On SIGTERM: stop accepting connections, let each
session finish the request it is serving (its record committed and its reply sent), close
the links, drain the store's queue, and exit 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import structlog

from edge_agent.adapters.mqtt_client import BrokerSettings
from edge_agent.adapters.mqtt_sync import EdgeSync
from edge_agent.adapters.osdp_panel import OsdpPanel, panels_for
from edge_agent.adapters.sqlite_store import EdgeStore
from edge_agent.adapters.systemd_notify import notify, watchdog_interval_s
from edge_agent.adapters.terminal_server import (
    TerminalRegistry,
    TerminalSession,
    start_tcp_server,
)
from edge_agent.adapters.transport import open_stream, parse_endpoint
from edge_agent.adapters.waiting import wait_event
from edge_agent.config import EdgeConfig
from edge_agent.desk import DeskService
from edge_agent.diskguard import DiskGuard
from edge_agent.lists import ListKeeper
from edge_agent.logtail import LogTail
from edge_agent.metrics import EdgeMetrics, MeteredSite, report_health, start_metrics_server
from edge_agent.site import Site
from edge_agent.upgrade import UpgradeManager

log = structlog.get_logger("edge")

#: How long a stopping daemon waits for in-flight requests before closing links anyway.
DRAIN_TIMEOUT_S = 5.0
STATUS_INTERVAL_S = 2.0


@dataclass
class EdgeService:
    """A running edge: the store, the site logic, and the terminal links."""

    config: EdgeConfig
    version: str = "0"
    registry: TerminalRegistry = field(default_factory=TerminalRegistry)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tcp_port: int | None = None
    site: Site | None = None
    sync: EdgeSync | None = None
    logtail: LogTail | None = None
    upgrades: UpgradeManager | None = None
    metrics: EdgeMetrics = field(default_factory=EdgeMetrics)
    #: The /metrics listener's port (None: disabled or could not bind).
    metrics_port: int | None = None
    #: The service desk's socket server (None: ``[desk]`` not enabled).
    desk: DeskService | None = None
    #: One OSDP control panel per RS-485 port of ``[[osdp.readers]]``.
    osdp: list[OsdpPanel] = field(default_factory=list)
    #: Lists and records of terminals that decide locally (edge_agent.lists).
    lists: ListKeeper | None = None
    _handler: MeteredSite | None = None
    _sessions: set[asyncio.Task[None]] = field(default_factory=set)
    _session_objs: dict[asyncio.Task[None], TerminalSession] = field(default_factory=dict)
    _server: asyncio.Server | None = None
    #: The desk socket could be made (``[desk] enabled``).
    desk_listening: bool = False
    _draining: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Run until :meth:`stop` (or SIGTERM/SIGINT when installed by the CLI)."""
        config = self.config
        async with EdgeStore.open(config.database, config.site) as store:
            site = Site(store, heartbeat_s=config.terminals.heartbeat_s)
            await site.load()
            disk = watch_disk(config, site)
            self.site = site
            sync = self._make_sync(store, site)
            # Also without a broker: the updater asks it whether terminals are idle.
            self.upgrades = UpgradeManager(
                config,
                self.version,
                sync.reply if sync is not None else _not_linked,
                terminals_busy=self._terminals_busy,
            )
            if sync is not None:
                sync.upgrades = self.upgrades
            self._handler = MeteredSite(site, self.metrics)
            self.metrics.bind(site, self.registry, sync, version=self.version)
            metrics_server = await self._start_metrics()
            self.lists = ListKeeper(
                store, terminal_kinds=lambda: {t.id: t.kind for t in site.terminals.values()}
            )
            site.on_lists = self.lists.poke
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self.lists.run(self.stopping), name="lists")
                    self._background(group, site, sync, disk)
                    address = config.listen_address()
                    if address is not None:
                        self._server = await start_tcp_server(self._on_tcp, *address)
                        self.tcp_port = int(self._server.sockets[0].getsockname()[1])
                    for url in config.terminals.serial:
                        group.create_task(self._serve_serial(url), name=f"serial:{url}")
                    await self._start_hardware(group, site, store)
                    log.info(
                        "edge.ready",
                        site=config.site,
                        epoch=store.epoch,
                        tcp=self.tcp_port,
                        serial=config.terminals.serial,
                        terminals=len(site.terminals),
                    )
                    notify(f"READY=1\nSTATUS=serving {len(site.terminals)} terminals")
                    self.ready.set()
                    await self.stopping.wait()
                    notify("STOPPING=1")
                    log.info("edge.stopping")
                    if metrics_server is not None:
                        metrics_server.close()
                    await self._stop_serving()
                    if self.logtail is not None:
                        await self.logtail.close()  # says "shutdown" to viewers while linked
                    if self.upgrades is not None:
                        self.upgrades.stop()
                    if sync is not None:
                        sync.stop()
            except BaseException:
                # A background task failed (its TaskGroup cancelled the others) or the daemon
                # was cancelled: stop serving terminals before the store closes, or open
                # sessions would go on recording taps that nothing syncs — half alive.
                log.exception("edge.failed")
                self.stopping.set()
                await self._stop_serving()
                raise
        log.info("edge.stopped")

    def stop(self) -> None:
        """Ask the daemon to stop (idempotent, callable from a signal handler)."""
        self.stopping.set()

    def _spawn(self, group: asyncio.TaskGroup, coro: Any, name: str) -> None:
        task = group.create_task(coro, name=name)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """A background task ended. If it failed, the daemon is broken: stop taking terminal
        requests at once (its TaskGroup is cancelling the rest; should one of them hang,
        the edge must not stay half alive, answering taps that nothing syncs)."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("edge.task_failed", task=task.get_name(), error=repr(task.exception()))
        self.stopping.set()
        if self._server is not None:
            self._server.close()
        # answer what is in hand, then close every link (a task of its own: this is a callback)
        self._draining = asyncio.get_running_loop().create_task(self._drain(), name="drain")

    async def _stop_serving(self) -> None:
        """No new terminal connections; answer the requests in hand, then close every link
        and let OSDP panels finish the decision in hand."""
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._drain()
        for panel in self.osdp:
            panel.stop()

    async def _start_hardware(self, group: asyncio.TaskGroup, site: Site, store: EdgeStore) -> None:
        """OSDP readers (one control panel per RS-485 port) and the service desk's socket:
        listening before READY=1, like the terminal sessions."""
        config = self.config
        self.osdp = panels_for(config.osdp.readers, site, store)
        for panel in self.osdp:
            group.create_task(panel.run(), name=f"osdp:{panel.port}")
            for reader in panel.readers:
                # status and HQ's health see the reader as the panel sees it
                self.registry.drivers[reader.terminal] = partial(panel.online, reader.terminal)
        if config.desk.enabled:
            self.desk = DeskService(site, config.desk)
            self.desk_listening = await self.desk.start()
            self.metrics.collector.desk = self.desk
            group.create_task(self.desk.run(self.stopping), name="desk")

    def _background(
        self, group: asyncio.TaskGroup, site: Site, sync: EdgeSync | None, disk: DiskGuard
    ) -> None:
        """Start the daemon's background tasks (they end when ``stopping`` is set)."""
        if sync is not None:
            site.on_record = sync.poke
            self._spawn(group, sync.run(), name="sync")
            self._spawn(
                group,
                report_health(sync, self.registry, self.config.data_dir, self.stopping),
                name="health",
            )
        if self.logtail is not None:
            self._spawn(group, self.logtail.run(), name="logtail")
        if self.upgrades is not None:
            self._spawn(group, self.upgrades.run(), name="upgrades")
        self._spawn(group, self._status_loop(site), name="status")
        self._spawn(group, disk.run(self.stopping), name="disk")
        interval = watchdog_interval_s()
        if interval is not None:
            self._spawn(group, self._watchdog(interval), name="watchdog")

    async def _start_metrics(self) -> asyncio.Server | None:
        address = self.config.metrics_address()
        if address is None:
            return None
        try:
            server = await start_metrics_server(self.metrics, *address)
        except OSError as exc:  # metrics are not worth refusing to serve terminals
            log.warning("metrics.unavailable", listen=self.config.metrics.listen, error=str(exc))
            return None
        self.metrics_port = int(server.sockets[0].getsockname()[1])
        return server

    def _make_sync(self, store: EdgeStore, site: Site) -> EdgeSync | None:
        mqtt = self.config.mqtt
        if not mqtt.url:
            log.info("edge.standalone", reason="no [mqtt] url configured")
            return None
        password = mqtt.password_file.read_text().strip() if mqtt.password_file else ""
        broker = BrokerSettings.from_url(
            mqtt.url,
            username=mqtt.username or self.config.site,
            password=password,
            ca_file=mqtt.ca_file,
            keepalive_s=mqtt.keepalive_s,
        )
        self.sync = EdgeSync(
            store,
            site,
            broker,
            self.registry,
            version=self.version,
            offline_after_s=mqtt.offline_after_s,
        )
        self.logtail = self.sync.logtail = LogTail(self.config.site, self.sync.publish_logs)
        return self.sync

    def _terminals_busy(self) -> bool:
        return any(session.busy for session in self._session_objs.values())

    def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        self._start_session(reader, writer, f"tcp:{peer[0]}:{peer[1]}" if peer else "tcp")

    def _start_session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> asyncio.Task[None] | None:
        if self.site is None or self.stopping.is_set():
            writer.close()
            return None
        handler = self._handler or self.site
        session = TerminalSession(reader, writer, handler, peer, self.registry, lists=self.lists)
        task = asyncio.get_running_loop().create_task(session.run(), name=f"session:{peer}")
        self._sessions.add(task)
        self._session_objs[task] = session
        task.add_done_callback(self._forget_session)
        return task

    def _forget_session(self, task: asyncio.Task[None]) -> None:
        self._sessions.discard(task)
        self._session_objs.pop(task, None)

    async def _serve_serial(self, url: str) -> None:
        endpoint = parse_endpoint(url if "://" in url else f"serial://{url}")
        while not self.stopping.is_set():
            try:
                reader, writer = await open_stream(endpoint)
            except OSError as exc:
                log.warning("serial.unavailable", port=endpoint.path, error=str(exc))
            else:
                task = self._start_session(reader, writer, f"serial:{endpoint.path}")
                if task is not None:
                    await asyncio.wait([task])
            await self._pause(2)

    async def _drain(self) -> None:
        sessions = list(self._session_objs.values())
        for session in sessions:
            session.draining = True
        busy = [t for t, s in self._session_objs.items() if s.busy]
        if busy:
            await asyncio.wait(busy, timeout=DRAIN_TIMEOUT_S)
        for session in sessions:
            await session.close()
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=DRAIN_TIMEOUT_S)

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds``; False as soon as the daemon is stopping."""
        return not await wait_event(self.stopping, seconds)

    async def _watchdog(self, interval: float) -> None:
        # Pinged from the event loop itself: a blocked loop stops the pings and systemd
        # restarts us, which is the point.
        while True:
            notify("WATCHDOG=1")
            if not await self._pause(interval):
                return

    async def _status_loop(self, site: Site) -> None:
        path = self.config.data_dir / "status.json"
        unwritten = False
        while True:
            try:
                status = await site.status(self.registry, version=self.version)
            except Exception as exc:  # noqa: BLE001 - status is best effort, never fatal
                log.warning("status.failed", error=str(exc))
            else:
                status["pid"] = os.getpid()
                # The upgrade health gate (edge_agent.updater): READY, and the broker linked.
                status["ready"] = self.ready.is_set()
                status["broker"] = None if self.sync is None else self.sync.connected
                status["tcp_port"] = self.tcp_port
                if self.desk is not None:
                    status["desk"] = {
                        "socket": str(self.config.desk.socket),
                        "listening": self.desk_listening,
                    }
                status["written_at"] = time.time()
                try:
                    await asyncio.to_thread(_write_atomic, path, msgspec.json.encode(status))
                except OSError as exc:  # a full disk: terminals matter more than status.json
                    if not unwritten:
                        log.warning("status.not_written", path=str(path), error=str(exc))
                    unwritten = True
                else:
                    unwritten = False
            if not await self._pause(STATUS_INTERVAL_S):
                return


async def _not_linked(cmd_id: str, status: str, detail: str, data: dict[str, Any]) -> bool:  # noqa: ARG001
    return False  # no broker: an upgrade's result stays in result.json


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


async def serve(config: EdgeConfig, *, version: str = "0") -> None:
    """Run the daemon with SIGTERM/SIGINT handling (the CLI's ``run``)."""
    service = EdgeService(config, version=version)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    await service.run()


def read_status(config: EdgeConfig) -> dict[str, Any] | None:
    """The running daemon's last status snapshot, or None if it has never written one."""
    path = config.data_dir / "status.json"
    try:
        result: dict[str, Any] = msgspec.json.decode(path.read_bytes())
    except (FileNotFoundError, msgspec.DecodeError):
        return None
    return result


def watch_disk(config: EdgeConfig, site: Site) -> DiskGuard:
    """The guard of the store's disk, attached to ``site``: money refused below the reserve,
    fail-safe openings written when space returns (edge_agent/diskguard.py)."""
    disk = DiskGuard(config.data_dir, config.store.reserve_mb << 20)

    def changed(state: str) -> None:
        if state == "ok":
            site.flush_deferred_soon()

    disk.on_change.append(changed)
    disk.sample()
    site.disk = disk
    return disk
