"""The desk service (edge_agent.desk) on a real SQLite store, without a card reader: its
socket, its operations, their idempotency, their local effects and their outbox records."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from edge_fixtures import LOST, MEMBER, SITE, make_seed, new_keys
from structlog.testing import capture_logs

from edge_agent.adapters import sqlite_outbox as outbox
from edge_agent.adapters.sqlite_store import EdgeStore
from edge_agent.config import ConfigError, DeskConfig, load_config
from edge_agent.core.model import OfflinePolicy, SitePolicy
from edge_agent.desk import UNCONFIRMED, DeskService
from edge_agent.desk_wire import (
    CardHistory,
    CardInfo,
    DeskRecharge,
    DeskUnavailableError,
    IssueCard,
    ReportLost,
    call,
)
from edge_agent.seed import Seed, apply_seed
from edge_agent.site import Site
from protocol.messages import CardIntent, RechargeCommit, RechargePrepare, decode_record

NEW = "04AA000000BEEF"
#: In the seed: a person with no card.
P3 = {"id": "P3", "name": "王五", "number": "M003", "kind": "member"}


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[DeskService]:
    seed = make_seed(new_keys())
    seed["persons"].append(P3)
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        data = msgspec.json.decode(msgspec.json.encode(seed), type=Seed)
        await store.run(lambda conn: apply_seed(conn, data))
        site = Site(store)
        await site.load()
        service = DeskService(site, DeskConfig(enabled=True, socket=tmp_path / "desk.sock"))
        await service.start()
        try:
            yield service
        finally:
            await service.close()


def records(desk: DeskService) -> list:
    with sqlite3.connect(desk.site.store.path) as conn:
        rows = conn.execute("SELECT lane, payload FROM outbox ORDER BY rowid").fetchall()
    return [(lane, decode_record(payload)) for lane, payload in rows]


def card_row(desk: DeskService, uid: str) -> tuple | None:
    with sqlite3.connect(desk.site.store.path) as conn:
        return conn.execute(
            "SELECT person_id, status, card_type FROM cards WHERE uid = ?", (uid,)
        ).fetchone()


async def test_info_over_the_socket_shows_holder_and_purses(desk: DeskService) -> None:
    reply = await call(desk.config.socket, CardInfo(uid=MEMBER))
    assert reply.ok and reply.card is not None
    assert (reply.card.person_id, reply.card.person_name, reply.card.status) == (
        "P1",
        "张三",
        "active",
    )
    assert (reply.card.cash_fen, reply.card.subsidy_fen, reply.card.balance_fen) == (
        5000,
        1000,
        6000,
    )


async def test_socket_is_group_writable_only(desk: DeskService) -> None:
    assert desk.config.socket.stat().st_mode & 0o777 == 0o660


async def test_unknown_card_info_is_refused_unknown_card(desk: DeskService) -> None:
    reply = await desk.handle(CardInfo(uid=NEW))
    assert (reply.ok, reply.code) == (False, "unknown_card")
    assert reply.card is not None and not reply.card.known


async def test_issue_writes_one_lane0_intent_and_the_card_works_here_at_once(
    desk: DeskService,
) -> None:
    request = IssueCard(uid=NEW, request_id="r-issue-1", person_id="P3", operator="li")
    reply = await desk.handle(request)
    assert reply.ok, reply
    assert card_row(desk, NEW) == ("P3", "active", UNCONFIRMED)
    [(lane, intent)] = records(desk)
    assert lane == 0 and isinstance(intent, CardIntent)
    assert (intent.action, intent.person_id, intent.operator, intent.card_uid) == (
        "issue",
        "P3",
        "li",
        NEW,
    )
    assert intent.terminal == "DESK" and reply.records == [intent.id]
    info = await desk.handle(CardInfo(uid=NEW))
    assert info.ok and info.card is not None and info.card.unconfirmed


async def test_same_request_id_is_answered_once_and_recorded_once(desk: DeskService) -> None:
    request = IssueCard(uid=NEW, request_id="r-issue-2", person_id="P3", operator="li")
    first = await desk.handle(request)
    again = await desk.handle(request)
    assert again.replayed and again.records == first.records and again.ok
    assert len(records(desk)) == 1
    other = IssueCard(uid=NEW, request_id="r-issue-2", person_id="P1", operator="li")
    reused = await desk.handle(other)
    assert (reused.ok, reused.code) == (False, "request_id_reused")
    assert len(records(desk)) == 1


@pytest.mark.parametrize(
    ("uid", "person", "code"),
    [
        (NEW, "NOBODY", "person_unknown"),
        (MEMBER, "P3", "card_already_bound"),
        (NEW, "P1", "person_has_card"),
    ],
)
async def test_issue_refusals_name_centrals_reason_and_record_nothing(
    desk: DeskService, uid: str, person: str, code: str
) -> None:
    reply = await desk.handle(
        IssueCard(uid=uid, request_id=f"r-{code}", person_id=person, operator="li")
    )
    assert (reply.ok, reply.code) == (False, code)
    assert records(desk) == []


async def test_report_lost_refuses_the_card_here_before_central_answers(
    desk: DeskService,
) -> None:
    reply = await desk.handle(ReportLost(uid=MEMBER, request_id="r-lost", operator="li"))
    assert reply.ok and reply.card is not None and reply.card.status == "lost"
    assert card_row(desk, MEMBER)[1] == "lost"  # type: ignore[index]
    [(lane, intent)] = records(desk)
    assert lane == 0 and isinstance(intent, CardIntent)
    assert (intent.action, intent.person_id) == ("report_lost", "P1")
    again = await desk.handle(ReportLost(uid=MEMBER, request_id="r-lost-2", operator="li"))
    assert (again.ok, again.code) == (False, "card_not_active")
    recharge = await desk.handle(
        DeskRecharge(uid=MEMBER, request_id="r-after-lost", amount_fen=100, operator="li")
    )
    assert (recharge.ok, recharge.code) == (False, "lost")


async def test_recharge_credits_exactly_once_per_request_id(desk: DeskService) -> None:
    request = DeskRecharge(uid=MEMBER, request_id="r-cash-1", amount_fen=1250, operator="li")
    first = await desk.handle(request)
    again = await desk.handle(request)
    assert first.ok and again.replayed
    assert first.card is not None and first.card.balance_fen == 6000 + 1250
    info = await desk.handle(CardInfo(uid=MEMBER))
    assert info.card is not None
    assert (info.card.balance_fen, info.card.pending_fen) == (7250, 1250)
    kinds = [(lane, type(r)) for lane, r in records(desk)]
    assert kinds == [(0, RechargePrepare), (0, RechargeCommit)]
    commit = records(desk)[1][1]
    assert (commit.amount, commit.pay_ref) == (1250, "desk-r-cash-1")


async def test_recharge_refusals_are_specific(desk: DeskService) -> None:
    unknown = await desk.handle(
        DeskRecharge(uid=NEW, request_id="r-u", amount_fen=100, operator="li")
    )
    lost = await desk.handle(
        DeskRecharge(uid=LOST, request_id="r-l", amount_fen=100, operator="li")
    )
    big = await desk.handle(
        DeskRecharge(uid=MEMBER, request_id="r-b", amount_fen=2_000_000, operator="li")
    )
    assert [r.code for r in (unknown, lost, big)] == ["unknown_card", "lost", "amount_invalid"]
    assert records(desk) == []


async def test_offline_recharge_follows_the_site_offline_policy(desk: DeskService) -> None:
    desk.site.offline_since = datetime.now(UTC) - timedelta(minutes=5)
    desk.site.policy = SitePolicy(site=SITE, offline=OfflinePolicy(allow_recharge=False))
    refused = await desk.handle(
        DeskRecharge(uid=MEMBER, request_id="r-off", amount_fen=100, operator="li")
    )
    assert (refused.ok, refused.code) == (False, "recharge_not_allowed")
    desk.site.policy = SitePolicy(site=SITE, offline=OfflinePolicy(allow_recharge=True))
    taken = await desk.handle(
        DeskRecharge(uid=MEMBER, request_id="r-off-2", amount_fen=100, operator="li")
    )
    assert taken.ok and taken.card is not None and taken.card.offline
    assert all(r.offline for _, r in records(desk))


async def test_history_lists_the_cards_records_newest_first(desk: DeskService) -> None:
    await desk.handle(DeskRecharge(uid=MEMBER, request_id="r-h1", amount_fen=300, operator="li"))
    await desk.handle(ReportLost(uid=MEMBER, request_id="r-h2", operator="li"))
    reply = await call(desk.config.socket, CardHistory(uid=MEMBER, limit=10))
    assert [e.kind for e in reply.history] == [
        "card.intent",
        "recharge.commit",
        "recharge.prepare",
    ]
    assert reply.history[1].amount_fen == 300
    assert not any(e.synced for e in reply.history)


async def test_bad_request_gets_bad_request_and_a_dead_letter(desk: DeskService) -> None:
    reader, writer = await asyncio.open_unix_connection(str(desk.config.socket))
    body = b'{"op":"recharge","uid":"04A1B2C3D4E5F6","amount_fen":-5}'
    writer.write(len(body).to_bytes(4, "big") + body)
    await writer.drain()
    size = int.from_bytes(await reader.readexactly(4), "big")
    reply = msgspec.json.decode(await reader.readexactly(size))
    writer.close()
    assert (reply["ok"], reply["code"]) == (False, "bad_request")
    with sqlite3.connect(desk.site.store.path) as conn:
        assert conn.execute("SELECT source FROM dead_letters").fetchall() == [("desk",)]
    assert (await desk.handle(CardInfo(uid=MEMBER))).ok  # and the service goes on


async def test_no_daemon_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DeskUnavailableError, match="no desk socket"):
        await call(tmp_path / "missing.sock", CardInfo(uid=MEMBER))


async def test_an_issue_central_never_confirms_is_undone_after_the_grace(
    desk: DeskService,
) -> None:
    await desk.handle(IssueCard(uid=NEW, request_id="r-undo", person_id="P3", operator="li"))
    desk.config = DeskConfig(enabled=True, socket=desk.config.socket, confirm_grace_s=60)
    t0 = datetime.now(UTC)
    desk.clock = lambda: t0
    assert await desk.reconcile() == 0  # not acked yet: stays
    await desk.site.store.run(lambda conn: outbox.mark_acked(conn, desk.site.store.epoch, 0, 1))
    assert await desk.reconcile() == 0  # acked: the grace starts
    desk.clock = lambda: t0 + timedelta(seconds=61)
    assert await desk.reconcile() == 1
    assert card_row(desk, NEW) is None


async def test_an_issue_confirmed_by_centrals_feed_is_kept(desk: DeskService) -> None:
    await desk.handle(IssueCard(uid=NEW, request_id="r-keep", person_id="P3", operator="li"))

    def feed(conn: sqlite3.Connection) -> None:  # central's row, as the feed writes it
        conn.execute("UPDATE cards SET card_type = 'standard' WHERE uid = ?", (NEW,))
        outbox.mark_acked(conn, desk.site.store.epoch, 0, 1)

    await desk.site.store.run(feed)
    desk.clock = lambda: datetime.now(UTC) + timedelta(days=1)
    assert await desk.reconcile() == 0
    assert await desk.reconcile() == 0
    assert card_row(desk, NEW) == ("P3", "active", "standard")
    assert await desk.site.store.run(desk.pending_issues) == []


async def test_a_socket_that_cannot_be_made_leaves_the_daemon_running(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        site = Site(store)
        service = DeskService(site, DeskConfig(enabled=True, socket=blocker / "desk.sock"))
        with capture_logs() as logs:
            assert await service.start() is False
        assert [e["event"] for e in logs] == ["desk.unavailable"]
        await service.close()


def test_desk_section_loads_from_toml_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(f'site = "{SITE}"\n[desk]\nsocket = "/tmp/d.sock"\nreader = "ACS 00 00"\n')
    env = {"ONECARD_EDGE_DESK_ENABLED": "true", "ONECARD_EDGE_DESK_OPERATOR": "li"}
    config = load_config(path, env=env)
    assert config.desk == DeskConfig(
        enabled=True, socket=Path("/tmp/d.sock"), reader="ACS 00 00", operator="li"
    )
    path.write_text(f'site = "{SITE}"\n[desk]\nterminal_id = "desk 1"\n')
    with pytest.raises(ConfigError, match="terminal_id"):
        load_config(path, env={})


async def test_a_stale_feed_update_does_not_let_a_card_reported_lost_back_in(
    desk: DeskService,
) -> None:
    await desk.handle(ReportLost(uid=MEMBER, request_id="r-lost-feed", operator="li"))

    def stale_feed(conn: sqlite3.Connection) -> None:  # written by central before the report
        conn.execute("UPDATE cards SET status = 'active' WHERE uid = ?", (MEMBER,))

    await desk.site.store.run(stale_feed)
    recharge = await desk.handle(
        DeskRecharge(uid=MEMBER, request_id="r-after-feed", amount_fen=100, operator="li")
    )
    assert (recharge.ok, recharge.code) == (False, "blacklisted")


async def test_status_and_check_config_show_the_desk(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edge_agent.cli import main
    from edge_agent.service import EdgeService

    socket_path = tmp_path / "run" / "desk.sock"
    toml = tmp_path / "edge.toml"
    toml.write_text(
        f'site = "{SITE}"\ndata_dir = "{tmp_path}"\n[terminals]\nlisten = "127.0.0.1:0"\n'
        f'[metrics]\nlisten = ""\n[desk]\nenabled = true\nsocket = "{socket_path}"\n'
    )
    runner = CliRunner()
    checked = runner.invoke(main, ["check-config", "--config", str(toml)])
    assert checked.exit_code == 0, checked.output
    assert f"desk            {socket_path} (the first PC/SC reader" in checked.output
    service = EdgeService(load_config(toml, env={}))
    task = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(10):
            await service.ready.wait()
            while not (tmp_path / "status.json").exists():  # noqa: ASYNC110 - a file
                await asyncio.sleep(0.05)
        shown = runner.invoke(main, ["status", "--config", str(toml)])
        assert f"desk: listening on {socket_path}" in shown.output, shown.output
        assert service.desk is not None
        # a fresh site with no cardholders yet: both reads are answered, both refused
        await service.desk.handle(CardInfo(uid=MEMBER))
        await service.desk.handle(CardInfo(uid="04FFFFFFFFFFFF"))
        scraped = (await service.metrics.render()).decode()
        assert "onecard_edge_desk_requests_total 2.0" in scraped
        assert "onecard_edge_desk_refused_total 2.0" in scraped
    finally:
        service.stop()
        await task
