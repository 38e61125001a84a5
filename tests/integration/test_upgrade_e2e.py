"""A staged rollout end to end: real mosquitto, central (its rollout driver and release
endpoint), and a real edge process installed in a temporary root under a supervisor of ours
that plays systemd (``Restart=``, and the path unit that starts the updater).

The release wheels are real wheels of this project with patched versions, built once per
session (see ``tests/edge_agent/test_edge_upgrade.py``, whose helpers this reuses).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

sys.path[:0] = [str(Path(__file__).parents[1] / d) for d in ("central", "edge_agent")]

from broker import private_broker  # noqa: E402
from edge_fixtures import free_port  # noqa: E402
from sync_system import ALICE, KINDS, SITES, central_seed  # noqa: E402
from test_edge_upgrade import BIN, SUPERVISOR, build_wheels, make_release  # noqa: E402

from central import master  # noqa: E402
from central.adapters.sqlite_store import CentralStore  # noqa: E402
from central.artifacts import ReleaseStore, SitePasswords, artifact_app  # noqa: E402
from central.core.release import public_key_of  # noqa: E402
from central.rollouts import RolloutDriver, load  # noqa: E402
from central.service import CentralService  # noqa: E402
from edge_agent.adapters.mqtt_client import BrokerSettings  # noqa: E402
from firmware_sim.terminals import DoorReader, TerminalSettings  # noqa: E402
from protocol import auth  # noqa: E402
from protocol.messages import decode_record  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SITE = SITES[0]


async def _cli(*argv: object) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [str(a) for a in argv], capture_output=True, text=True, timeout=110
    )


async def _until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not within {within:.0f} s: {what}"
        await asyncio.sleep(0.2)


def _door_recs(conn: sqlite3.Connection) -> list[int]:
    rows = conn.execute("SELECT payload FROM records WHERE site = ?", (SITE,)).fetchall()
    records = [decode_record(row[0]) for row in rows]
    return [r.term_rec for r in records if r.terminal == "DOOR-01"]


async def test_a_rollout_upgrades_a_tapping_site_and_a_broken_release_rolls_back_and_pauses(  # noqa: PLR0915
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
):
    wheels = build_wheels(tmp_path_factory.getbasetemp())
    keys = {(site, tid): auth.new_key() for site in SITES for tid in KINDS}
    db, store_dir = tmp_path / "central.db", tmp_path / "releases"
    root, data = tmp_path / "root", tmp_path / "edge"
    data.mkdir()
    config = tmp_path / "edge.toml"
    pub = public_key_of(wheels.key).raw_hex  # type: ignore[arg-type]
    edge_port = free_port()

    with private_broker() as broker:
        (data / "mqtt.password").write_text(broker.add_site(SITE))
        config.write_text(
            f'site = "{SITE}"\ndata_dir = "{data}"\n\n'
            f'[terminals]\nlisten = "127.0.0.1:{edge_port}"\n\n'
            f'[mqtt]\nurl = "{broker.url}"\npassword_file = "{data / "mqtt.password"}"\n'
            f'ca_file = "{broker.dir.ca_cert}"\n\n'
            f'[log]\nformat = "json"\nfile = "{data / "edge.log"}"\n\n'
            f'[upgrade]\ntrusted_keys = ["{pub}"]\nroot = "{root}"\nhealthy_for_s = 3\n'
            "health_timeout_s = 12\nmax_restarts = 1\nidle_timeout_s = 2\n"
        )
        async with CentralStore.open(db) as store:
            seed = central_seed(keys)
            await store.run(lambda conn: master.apply_seed(conn, seed, batch="test"))
            central = CentralService(
                store,
                BrokerSettings.from_url(
                    broker.url,
                    username="central",
                    password=broker.central_password(),
                    ca_file=broker.dir.ca_cert,
                ),
            )
            central.rollouts = RolloutDriver(store, central.publish, tick_s=0.2)
            import uvicorn

            http_port = free_port()
            server = uvicorn.Server(
                uvicorn.Config(
                    artifact_app(ReleaseStore(store_dir), SitePasswords(broker.dir.passwd)),
                    host="127.0.0.1",
                    port=http_port,
                    log_level="warning",
                    lifespan="off",
                )
            )
            tasks = [asyncio.create_task(central.run()), asyncio.create_task(server.serve())]
            script = tmp_path / "supervisor.py"
            script.write_text(SUPERVISOR)
            supervisor = subprocess.Popen(  # noqa: ASYNC220 - starts at once, never waited here
                [sys.executable, script, root / "opt/onecard/current/venv/bin/onecard-edge",
                 config, tmp_path / "stdout.log", data / "upgrade/request.json",
                 BIN / "onecard-edge", "updater", "run", "--config", config],
                start_new_session=True,
            )  # fmt: skip
            door = DoorReader(
                TerminalSettings(
                    "DOOR-01", keys[(SITE, "DOOR-01")], f"tcp://127.0.0.1:{edge_port}", retry_s=0.3
                )
            )
            tapping = asyncio.Event()
            taps: list[int] = []
            local: list[float] = []  # when the reader was cut off from the edge

            async def tap_forever() -> None:
                while tapping.is_set():
                    outcome = await door.tap(ALICE)
                    taps.append(outcome.rec)
                    if outcome.local:  # cut off: decided by the reader, uploaded on reconnect
                        local.append(time.monotonic())
                        with contextlib.suppress(OSError, ConnectionError, TimeoutError):
                            await door.connect()
                    await asyncio.sleep(0.05)

            async def site_version() -> str | None:
                row = await store.run(
                    lambda conn: conn.execute(
                        "SELECT version FROM sites WHERE id = ?", (SITE,)
                    ).fetchone()
                )
                return row[0] if row else None

            async def rollout(rollout_id: str) -> Any:
                return await store.run(lambda conn: load(conn, rollout_id))

            try:
                first = await _cli(
                    BIN / "onecard-edge", "updater", "install",
                    make_release(wheels, tmp_path / "r-1.0.0", "1.0.0"),
                    "--config", config, "--restart-command", f"kill -USR1 {supervisor.pid}",
                )  # fmt: skip
                assert first.returncode == 0, first.stdout + first.stderr

                async def on_100() -> bool:
                    return await site_version() == "1.0.0"

                await _until(on_100, 30, "the site's birth says 1.0.0")
                await asyncio.sleep(1)  # the terminal snapshot from central
                await door.connect()
                tapping.set()
                tapper = asyncio.create_task(tap_forever())

                for version in ("1.1.0", "1.2.0"):
                    release = make_release(wheels, tmp_path / f"r-{version}", version)
                    published = await _cli(
                        BIN / "onecard-central", "release", "publish", release,
                        "--pubkey", pub, "--store", store_dir,
                    )  # fmt: skip
                    assert published.returncode == 0, published.stderr
                started = await _cli(
                    BIN / "onecard-central", "rollout", "start", "1.1.0", "--db", db,
                    "--store", store_dir, "--sites", SITE, "--stages", "rest",
                    "--base-url", f"http://127.0.0.1:{http_port}",
                )  # fmt: skip
                assert started.returncode == 0, started.stderr

                async def upgraded() -> bool:
                    r = await rollout("r-1.1.0")
                    return r.status == "completed" and await site_version() == "1.1.0"

                await _until(upgraded, 90, "rollout r-1.1.0 completed")
                assert (await rollout("r-1.1.0")).sites[SITE].state == "succeeded"
                await asyncio.sleep(1)
                tapping.clear()
                await tapper
                with contextlib.suppress(OSError, ConnectionError, TimeoutError):
                    await door.connect()  # uploads what the reader decided while cut off

                async def all_recorded() -> bool:
                    return sorted(await store.run(_door_recs)) == sorted(taps)

                await _until(all_recorded, 30, "every tap recorded at central exactly once")
                assert len(taps) > 20
                # The switch cost the reader at most a brief gap (the restart), no outage.
                assert not local or max(local) - min(local) < 15, local
                recs = await store.run(_door_recs)
                assert len(recs) == len(set(recs))

                broken = await _cli(
                    BIN / "onecard-central", "rollout", "start", "1.2.0", "--db", db,
                    "--id", "r-broken", "--store", store_dir, "--sites", SITE,
                    "--stages", "rest", "--base-url", f"http://127.0.0.1:{http_port}",
                )  # fmt: skip
                assert broken.returncode == 0, broken.stderr

                async def paused() -> bool:
                    return (await rollout("r-broken")).status == "paused"

                await _until(paused, 90, "rollout r-broken paused")
                r = await rollout("r-broken")
                assert r.pause_reason == "failure_threshold"
                assert r.sites[SITE].state == "rolled_back"
                assert r.sites[SITE].reason in ("health_timeout", "crash_loop")

                async def back_on_110() -> bool:
                    return await site_version() == "1.1.0"

                await _until(back_on_110, 30, "the site runs 1.1.0 again")
                with contextlib.suppress(OSError, ConnectionError, TimeoutError):
                    await door.connect()
                after = await door.tap(ALICE)
                assert after.ok
                assert not after.local  # answered by the edge on 1.1.0
            finally:
                tapping.clear()
                await door.close()
                supervisor.send_signal(signal.SIGTERM)
                await asyncio.to_thread(supervisor.wait, 30)
                central.stop()
                server.should_exit = True
                await asyncio.gather(*tasks, return_exceptions=True)
