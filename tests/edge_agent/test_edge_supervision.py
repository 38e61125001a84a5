"""When a background task of the daemon fails, the edge stops serving terminals and exits
(systemd restarts it) — it never stays half alive, answering taps that nothing syncs.

The chaos soak found both halves: a status file that could not be written (a full disk)
failed the service's TaskGroup, and once the process did not exit — its sync gone, its
terminal server still recording taps. Here a background task is made to fail on purpose
(the status writer raises), and in the second test another task also refuses to die on
cancellation, as a Python 3.11 ``wait_for`` race can make one do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from edge_fixtures import MEMBER, SITE, make_seed, new_keys

import edge_agent.service as service_module
from edge_agent.adapters.sqlite_store import EdgeStore
from edge_agent.config import EdgeConfig, MetricsConfig, TerminalsConfig
from edge_agent.diskguard import DiskGuard
from edge_agent.seed import apply_seed, load_seed
from edge_agent.service import EdgeService
from firmware_sim.terminals import DoorReader, TerminalSettings


@pytest.fixture
async def seeded(tmp_path: Path) -> tuple[EdgeConfig, dict[str, bytes]]:
    keys = new_keys()
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps(make_seed(keys), ensure_ascii=False))
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        await store.run(lambda conn: apply_seed(conn, load_seed(seed_file)))
    config = EdgeConfig(
        site=SITE,
        data_dir=tmp_path,
        terminals=TerminalsConfig(listen="127.0.0.1:0"),
        metrics=MetricsConfig(listen=""),
    )
    return config, keys


def failing_status_writer(monkeypatch: pytest.MonkeyPatch, after: int = 1) -> None:
    calls = {"n": 0}

    def write(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] > after:
            raise RuntimeError("status writer broke")
        path.write_bytes(data)

    monkeypatch.setattr(service_module, "_write_atomic", write)
    monkeypatch.setattr(service_module, "STATUS_INTERVAL_S", 0.2)


async def tap_until(door: DoorReader, done: Callable[[], bool], within: float = 10) -> int:
    """Tap every 20 ms until ``done()``; returns how many taps the edge answered."""
    answered = 0
    async with asyncio.timeout(within):
        while not done():
            outcome = await door.tap(MEMBER)
            answered += not outcome.local
            await asyncio.sleep(0.02)
    return answered


async def test_a_failed_background_task_stops_the_daemon(
    seeded: tuple[EdgeConfig, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, keys = seeded
    failing_status_writer(monkeypatch, after=3)
    service = EdgeService(config)
    task = asyncio.create_task(service.run())
    async with asyncio.timeout(10):
        await service.ready.wait()
    settings = TerminalSettings(
        "DOOR-01", keys["DOOR-01"], f"tcp://127.0.0.1:{service.tcp_port}", retry_s=0.2, retries=1
    )
    async with DoorReader(settings) as door:
        answered = await tap_until(door, task.done)
        assert answered > 0
        with pytest.raises(ExceptionGroup) as failed:
            task.result()
        assert failed.group_contains(RuntimeError, match="status writer broke")
        # the edge is gone: the terminal decides on its own now (and buffers)
        assert (await door.tap(MEMBER)).local


async def test_a_task_that_will_not_die_does_not_leave_the_edge_serving(
    seeded: tuple[EdgeConfig, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, keys = seeded
    failing_status_writer(monkeypatch, after=3)
    release = asyncio.Event()

    async def stubborn(self: DiskGuard, stopping: asyncio.Event) -> None:
        while not release.is_set():  # swallows its cancellation, as the 3.11 race does
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue

    monkeypatch.setattr(DiskGuard, "run", stubborn)
    service = EdgeService(config)
    task = asyncio.create_task(service.run())
    async with asyncio.timeout(10):
        await service.ready.wait()
    settings = TerminalSettings(
        "DOOR-01", keys["DOOR-01"], f"tcp://127.0.0.1:{service.tcp_port}", retry_s=0.2, retries=1
    )
    try:
        async with DoorReader(settings) as door:
            await tap_until(door, service.stopping.is_set)
            await asyncio.sleep(0.5)  # the requests in hand are answered, then links close
            # the daemon cannot finish (a task hangs), but it no longer answers terminals
            assert not task.done()
            assert (await door.tap(MEMBER)).local
            assert not await _connects(service.tcp_port)
    finally:
        release.set()
        with pytest.raises(ExceptionGroup):
            async with asyncio.timeout(15):
                await task


async def _connects(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True
