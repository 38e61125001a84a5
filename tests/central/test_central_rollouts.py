"""Rollouts stored in central's SQLite, driven by replies and births, run from the CLI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from stores import central_db, open_store
from sync_system import KINDS, SITES, central_seed
from test_central_artifacts import signed_release

from central import master
from central.artifacts import ReleaseStore
from central.cli import main
from central.core.release import public_key_of
from central.rollouts import RolloutDriver, load
from protocol import auth
from protocol.messages import Reply, Upgrade, decode_command, encode

CANARY, OTHER = SITES


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    key = Ed25519PrivateKey.generate()
    store = ReleaseStore(tmp_path / "releases")
    store.publish(signed_release(tmp_path / "r", key), [public_key_of(key)], now=datetime.now(UTC))
    db = central_db(tmp_path)
    seed = central_seed({(s, t): auth.new_key() for s in SITES for t in KINDS})

    async def go() -> None:
        async with open_store(db) as central:
            await central.run(lambda conn: master.apply_seed(conn, seed, batch="test"))

    asyncio.run(go())
    return {
        "ONECARD_CENTRAL_DB": str(db),
        "ONECARD_RELEASE_STORE": str(store.root),
        "ONECARD_RELEASE_URL": "https://hq.example.com:8443",
    }


def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["rollout", *args], env=env)
    return result.exit_code, result.output


async def acli(env: dict[str, str], *args: str) -> tuple[int, str]:
    """:func:`cli` from an async test (the CLI runs its own event loop)."""
    return await asyncio.to_thread(cli, env, *args)


@pytest.fixture
async def driver(env: dict[str, str]) -> AsyncIterator[tuple[RolloutDriver, list]]:
    sent: list[tuple[str, bytes, bool]] = []

    async def publish(topic: str, payload: bytes, retain: bool) -> None:
        sent.append((topic, payload, retain))

    async with open_store(env["ONECARD_CENTRAL_DB"]) as store:
        yield RolloutDriver(store, publish), sent


def reply(site: str, cmd_id: str, status: str, **data: object) -> bytes:
    return encode(
        Reply(site=site, cmd_id=cmd_id, at=datetime.now(UTC), status=status, data=data)  # type: ignore[arg-type]
    )


def test_start_refuses_an_unpublished_version_and_unknown_sites(env):
    code, out = cli(env, "start", "9.9.9")
    assert code == 1
    assert "9.9.9 is not published" in out
    code, out = cli(env, "start", "0.2.0", "--sites", "XX-NOWHERE")
    assert code == 1
    assert "not registered sites: XX-NOWHERE" in out


async def test_the_canary_is_commanded_first_and_the_rest_after_it_succeeds(env, driver):
    drive, sent = driver
    code, out = await acli(env, "start", "0.2.0", "--stages", "1,rest", "--canary", CANARY)
    assert code == 0, out
    await drive.flush()
    commands = [(t, decode_command(p), r) for t, p, r in sent if p]
    assert {t for t, _, _ in commands} == {f"onecard/v1/site/{CANARY}/down/cmd"}
    live = [c for _, c, retain in commands if not retain]
    assert len(live) == 1
    command = live[0]
    assert isinstance(command, Upgrade)
    assert command.manifest_url == "https://hq.example.com:8443/releases/0.2.0/manifest.json"
    assert any(retain for _, _, retain in commands)  # the desired version, for when offline

    sent.clear()
    await drive.on_reply(CANARY, reply(CANARY, command.id, "progress", state="downloading"))
    await drive.on_birth(CANARY, "0.2.0")
    await drive.flush()
    assert [t for t, p, r in sent if p and not r] == [f"onecard/v1/site/{OTHER}/down/cmd"]
    await drive.on_birth(OTHER, "0.2.0")
    r = await drive.store.run(lambda conn: load(conn, "r-0.2.0"))
    assert r.status == "completed"
    code, out = await acli(env, "status")
    assert "r-0.2.0" in out
    assert "completed" in out
    assert "2/2 succeeded" in out


async def test_a_rolled_back_canary_pauses_the_rollout_and_clears_its_desired_version(env, driver):
    drive, sent = driver
    assert (await acli(env, "start", "0.2.0", "--stages", "1,rest", "--canary", CANARY))[0] == 0
    await drive.flush()
    cmd_id = next(decode_command(p).id for _, p, r in sent if p and not r)
    sent.clear()
    bad = reply(CANARY, cmd_id, "failed", state="rolled_back", reason="health_timeout")
    assert await drive.on_reply(CANARY, bad) is None
    await drive.flush()

    r = await drive.store.run(lambda conn: load(conn, "r-0.2.0"))
    assert r.status == "paused"
    assert r.pause_reason == "failure_threshold"
    assert r.sites[CANARY].state == "rolled_back"
    assert r.sites[CANARY].reason == "health_timeout"
    assert (f"onecard/v1/site/{CANARY}/down/cmd", b"", True) in sent  # retained one cleared
    assert not [p for _, p, r in sent if p]  # the next stage was not started
    code, out = await acli(env, "status", "r-0.2.0")
    assert "paused (failure_threshold" in out
    assert "rollout.auto_pause" in out

    assert (await acli(env, "resume", "r-0.2.0"))[0] == 0
    assert (await acli(env, "abort", "r-0.2.0", "--note", "bad build"))[0] == 0
    code, out = await acli(env, "pause", "r-0.2.0")
    assert code == 1
    assert "is aborted, not running" in out


async def test_a_bad_reply_is_reported_for_the_dead_letters_and_changes_nothing(env, driver):
    drive, _ = driver
    assert (await acli(env, "start", "0.2.0", "--stages", "rest"))[0] == 0
    before = await drive.store.run(lambda conn: load(conn, "r-0.2.0"))
    assert await drive.on_reply(CANARY, b"{not json") is not None
    other_site = reply(OTHER, "r-0.2.0:x:1", "done")
    assert "is not the topic's site" in (await drive.on_reply(CANARY, other_site) or "")
    assert await drive.on_reply(CANARY, reply(CANARY, "logs-17", "done")) is None  # not ours
    after = await drive.store.run(lambda conn: load(conn, "r-0.2.0"))
    assert msgspec.json.encode(after) == msgspec.json.encode(before)
