"""Attacks through the broker with a site's own MQTT credentials, against central and two
running edges (SZ-FUTIAN = A, BJ-CHAOYANG = B) on a private, provisioned mosquitto.

aiomqtt ignores PUBACK reason codes, so a denied publish looks like a success to the
attacker. Each refusal is proven where it matters instead: mosquitto's "Denied PUBLISH" line,
central's own data (records, ledger, lane watermarks, dead letters) and the edges' state
(outbox, blacklist and feed versions) — and a genuine message sent after the forged ones
arrives, so the check did not merely come too early.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from sync_system import ALICE, BOB, System, edge_db, until

from firmware_sim.terminals import DoorReader
from protocol import messages as m

pytestmark = pytest.mark.integration

A, B = "SZ-FUTIAN", "BJ-CHAOYANG"
PREFIX = "onecard/v1"


def central_rows(system: System, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(system.store.path) as conn:
        return conn.execute(sql, args).fetchall()


def edge_rows(system: System, site: str, sql: str) -> list[tuple[object, ...]]:
    with edge_db(system.edges[site]) as conn:
        return conn.execute(sql).fetchall()


def edge_meta(system: System, site: str, key: str) -> int:
    rows = edge_rows(system, site, f"SELECT value FROM meta WHERE key = '{key}'")  # noqa: S608
    return int(rows[0][0]) if rows else 0


def remote_opens(system: System, site: str) -> list[str]:
    """The ``detail`` of every remote-open event in ``site``'s outbox."""
    rows = edge_rows(system, site, "SELECT payload FROM outbox WHERE kind = 'terminal.event'")
    events = [msgspec.json.decode(row[0]) for row in rows]
    return [e["detail"] for e in events if e["event"] == "remote_open"]


def denied(system: System, client: str, topic: str) -> bool:
    """Whether mosquitto logged refusing ``client``'s publish on ``topic``."""
    return any(
        f"Denied PUBLISH from {client} " in line and f"'{topic}'" in line
        for line in system.broker.log().splitlines()
    )


async def test_forged_commands_and_lists_from_a_site_account_never_reach_an_edge(
    system: System,
):
    now = datetime.now(UTC)
    versions = {s: edge_meta(system, s, "blacklist_version") for s in (A, B)}
    feeds = {s: edge_meta(system, s, "feed_version") for s in (A, B)}
    epoch_a = edge_meta(system, A, "epoch")
    door_open = m.DoorOpen(
        id="forged-open", issued_at=now, terminal="DOOR-01", operator="forger", open_ms=60_000
    )
    blacklist = m.BlacklistDelta(
        version=versions[A] + 1,
        prev_version=versions[A],
        at=now,
        changes=[m.BlacklistChange(op="add", card_uid=ALICE, reason="fraud", effective_at=now)],
    )
    feed = m.Feed(
        site=A,
        feed_version=feeds[A] + 1,
        prev_version=feeds[A],
        changes=[
            m.FeedChange(
                op="upsert", entity="account", key="P1", data={"person_id": "P1", "cash_fen": 10**8}
            )
        ],
    )
    forged = [
        (f"{PREFIX}/site/{A}/down/cmd", m.encode(door_open)),
        (f"{PREFIX}/site/{B}/down/cmd", m.encode(door_open)),
        (
            f"{PREFIX}/site/{A}/down/cmd",
            m.encode(m.SetLogLevel(id="forged-level", issued_at=now, level="debug")),
        ),
        (f"{PREFIX}/broadcast/blacklist", m.encode(blacklist)),
        (f"{PREFIX}/site/{A}/down/feed", m.encode(feed)),
        (
            f"{PREFIX}/site/{A}/down/ack",
            m.encode(m.Ack(epoch=epoch_a, lane=1, acked_seq=10**6)),
        ),
        (f"{PREFIX}/central/state", m.encode(m.CentralState(online=False, at=now))),
    ]
    async with system.broker.client(A, system.passwords[A], identifier="forger") as forger:
        for topic, payload in forged:
            await forger.publish(topic, payload, qos=1)

    async def all_denied() -> bool:
        return all(denied(system, "forger", topic) for topic, _ in forged)

    await until(all_denied)
    # A genuine remote open from HQ, sent after the forged one, is carried out...
    genuine = m.DoorOpen(
        id="hq-open", issued_at=datetime.now(UTC), terminal="DOOR-01", operator="hq-admin"
    )
    assert await system.central.send_command(A, genuine)

    async def opened() -> bool:
        return any(d.startswith("hq-admin") for d in remote_opens(system, A))

    await until(opened)
    # ... and the forged ones never were, at either site.
    assert [d.split(":")[0] for d in remote_opens(system, A)] == ["hq-admin"]
    assert remote_opens(system, B) == []
    assert {s: edge_meta(system, s, "blacklist_version") for s in (A, B)} == versions
    assert edge_meta(system, A, "feed_version") == feeds[A]
    # Alice's card, "blacklisted" by the forger, still opens A's door; central says online.
    door = system.terminal(DoorReader, A, "DOOR-01")
    async with door as reader:  # type: ignore[attr-defined]
        assert (await reader.tap(ALICE)).ok
    assert system.edges[A].sync is not None and system.edges[A].sync.central_online
    # Whatever A's edge counts as acked, central has committed.
    acked = {str(r[0]) for r in edge_rows(system, A, "SELECT id FROM outbox WHERE acked = 1")}
    held = {str(r[0]) for r in central_rows(system, "SELECT id FROM records WHERE site = ?", A)}
    assert acked <= held


def purchase_for_b(seq: int) -> m.Purchase:
    at = datetime.now(UTC) - timedelta(seconds=5)
    return m.Purchase(
        id=f"{B}.1.0.forged-{seq}",
        seq=seq,
        site=B,
        terminal="POS-01",
        at=at,
        received_at=at,
        offline=False,
        card_uid=BOB,
        approved=True,
        reason="ok",
        amount=4_000,
        cash_fen=4_000,
    )


async def test_site_a_credentials_cannot_put_records_into_site_b(system: System):
    bob_before = central_rows(system, "SELECT * FROM accounts WHERE person_id = 'P2'")
    ledger_before = central_rows(system, "SELECT * FROM ledger WHERE person_id = 'P2'")
    lanes_before = central_rows(system, "SELECT * FROM lanes WHERE site = ? ORDER BY 1, 2, 3", B)
    batch = m.RecordBatch(site=B, epoch=1, first_seq=1, last_seq=1, records=[purchase_for_b(1)])
    on_b = f"{PREFIX}/site/{B}/up/records"
    on_a = f"{PREFIX}/site/{A}/up/records"
    async with system.broker.client(A, system.passwords[A], identifier="forger") as forger:
        await forger.publish(on_b, m.encode(batch), qos=1)  # B's topic: the ACL drops it
        await forger.publish(on_a, m.encode(batch), qos=1)  # A's topic, B's site: central

    async def letter_on_a() -> bool:
        return bool(central_rows(system, "SELECT 1 FROM dead_letters WHERE topic = ?", on_a))

    await until(letter_on_a)
    assert denied(system, "forger", on_b)
    letters = central_rows(system, "SELECT topic, site, reason FROM dead_letters")
    assert letters == [(on_a, A, f"payload site {B} is not the topic's site {A}")]
    assert central_rows(system, "SELECT id FROM records WHERE id LIKE '%forged%'") == []
    assert central_rows(system, "SELECT * FROM accounts WHERE person_id = 'P2'") == bob_before
    assert central_rows(system, "SELECT * FROM lanes WHERE site = ? ORDER BY 1, 2, 3", B) == (
        lanes_before
    )
    assert central_rows(system, "SELECT * FROM ledger WHERE person_id = 'P2'") == ledger_before
    assert system.central.stats["dead_letters"] == 1


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


async def test_deeply_nested_and_oversized_payloads_are_dead_lettered_and_counted(
    system: System,
):
    at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    # Typed fields refuse the first wrong bracket; only values decoded as "anything" (or
    # skipped) go deep - each must end as a dead letter, never as a RecursionError.
    health_nested = json.dumps({"v": 1, "site": A, "at": at}).encode()
    health_nested = health_nested[:-1] + b', "terminals": ' + deep(50_000) + b"}"
    batch_nested = (
        b'{"v":1,"site":"'
        + A.encode()
        + b'","epoch":1,"first_seq":1,"last_seq":1,"records":['
        + b'{"kind":"door.access","v":1,"door":'
        + deep(100_000)
        + b"}]}"
    )
    hostile = [
        (f"{PREFIX}/site/{A}/up/records", deep(200_000), "Expected `object`, got `array`"),
        (f"{PREFIX}/site/{A}/up/records", batch_nested, "nested too deeply"),
        (f"{PREFIX}/site/{A}/up/state", b'{"online": true, "x": ' + deep(100_000) + b"}", "nested"),
        (f"{PREFIX}/site/{A}/up/health", health_nested, "Expected `object`, got `array`"),
        # 1.5 MiB: over central's 1 MiB cap, under the broker's 2 MiB message limit.
        (f"{PREFIX}/site/{A}/up/health", b"{" + b" " * (3 << 19) + b"}", "exceeds"),
        (f"{PREFIX}/site/{A}/up/state", b'"' + b"x" * (1 << 20) + b'"', "exceeds"),
    ]
    async with system.broker.client(A, system.passwords[A], identifier="hostile") as site:
        for topic, payload, _ in hostile:
            await site.publish(topic, payload, qos=1)

    def letters() -> list[tuple[object, ...]]:
        return central_rows(system, "SELECT topic, reason, length(payload) FROM dead_letters")

    async def all_lettered() -> bool:
        return len(letters()) >= len(hostile)

    await until(all_lettered, within=30)
    found = letters()
    assert len(found) == len(hostile)
    for (topic, payload, needle), (got_topic, reason, size) in zip(hostile, found, strict=True):
        assert got_topic == topic
        assert needle in str(reason), reason
        assert size == len(payload)  # kept whole, for an operator to look at
    assert system.central.stats["dead_letters"] == len(hostile)
    # Central goes on: a real tap at A is ingested and acked.
    door = system.terminal(DoorReader, A, "DOOR-01")
    async with door as reader:  # type: ignore[attr-defined]
        assert (await reader.tap(ALICE)).ok

    async def acked() -> bool:
        rows = edge_rows(system, A, "SELECT count(*) FROM outbox WHERE acked = 0")
        return rows[0][0] == 0

    await until(acked)
