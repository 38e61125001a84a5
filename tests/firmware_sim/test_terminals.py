"""The terminal simulators against the test endpoint, over TCP and over a serial pty pair."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_agent.adapters.transport import parse_endpoint
from firmware_sim.endpoint import SimCard, TestEndpoint
from firmware_sim.link import FrameLink, PeerError
from firmware_sim.ptypair import pty_pair
from firmware_sim.terminals import (
    AttendanceClock,
    DoorReader,
    PosTerminal,
    RechargeKiosk,
    SimulatedCrashError,
    TerminalSettings,
)
from protocol import auth
from protocol.errors import AuthError
from protocol.framing import Frame, FrameType, encode_frame
from protocol.terminal import (
    Body,
    Challenge,
    Decision,
    Hello,
    ListUpdate,
    RechargeCommit,
    Tap,
    Welcome,
    message_frame,
)

MEMBER = "04A1B2C3D4E5F6"
LOST = "04C0FFEE000001"
IDS = ("DOOR-01", "CLOCK-01", "POS-01", "POS-02", "KIOSK-01")
MENU = {"A1": {"price_fen": 1800}, "B2": {"price_fen": 150}}


@pytest.fixture
def keys() -> dict[str, bytes]:
    return {tid: auth.new_key() for tid in IDS}


@pytest.fixture
async def endpoint(keys: dict[str, bytes]) -> AsyncIterator[TestEndpoint]:
    ep = TestEndpoint(
        keys=keys,
        cards={
            MEMBER: SimCard(MEMBER, 10_000, "张三"),
            LOST: SimCard(LOST, 5_000, blacklisted=True),
        },
        terminal_config={
            "POS-01": {"pos_mode": "keyed"},
            "POS-02": {"pos_mode": "menu", "menu": MENU},
        },
    )
    yield ep
    await ep.close()


@pytest.fixture
async def url(endpoint: TestEndpoint) -> str:
    port = await endpoint.serve_tcp()
    return f"tcp://127.0.0.1:{port}"


def settings(keys: dict[str, bytes], tid: str, url: str, **kw: object) -> TerminalSettings:
    return TerminalSettings(tid, keys[tid], url, retry_s=0.2, retries=2, **kw)  # type: ignore[arg-type]


async def test_door_reader_authenticates_and_opens_for_a_valid_card(keys, url, endpoint):
    async with DoorReader(settings(keys, "DOOR-01", url)) as door:
        assert door.online and door.site == "SIM-SITE"
        outcome = await door.tap(MEMBER)
    assert outcome.ok and outcome.open_ms == 3000
    assert door.history[-1] == "请通行"
    assert endpoint.records[-1][:3] == ("DOOR-01", outcome.rec, "door")


async def test_door_reader_refuses_a_lost_card(keys, url):
    async with DoorReader(settings(keys, "DOOR-01", url)) as door:
        outcome = await door.tap(LOST)
    assert not outcome.ok and outcome.code == "blacklisted"
    assert door.display == "卡已挂失"


async def test_attendance_clock_punches(keys, url, endpoint):
    async with AttendanceClock(settings(keys, "CLOCK-01", url)) as clock:
        outcome = await clock.punch(MEMBER, punch="in")
    assert outcome.ok and outcome.display.startswith("打卡成功 张三")
    assert endpoint.records[-1][2] == "punch"


async def test_pos_keyed_sale_debits_and_shows_balance(keys, url, endpoint):
    async with PosTerminal(settings(keys, "POS-01", url)) as pos:
        assert pos.mode == "keyed" and pos.display == "请输入金额"
        sale = await pos.sale(MEMBER, amount=1250)
        too_much = await pos.sale(MEMBER, amount=100_000)
    assert sale.ok and sale.amount == 1250 and sale.balance == 8750
    assert sale.display == "消费¥12.50 余额¥87.50"
    assert too_much.code == "insufficient_funds"
    assert endpoint.cards[MEMBER].balance == 8750


async def test_pos_menu_mode_sends_items_the_edge_prices(keys, url):
    async with PosTerminal(settings(keys, "POS-02", url)) as pos:
        assert pos.display == "请选择菜品"
        sale = await pos.sale(MEMBER, items=[("A1", 1), ("B2", 2)])
    assert sale.ok and sale.amount == 1800 + 2 * 150


async def test_pos_fixed_mode_charges_the_configured_price(keys, url, endpoint):
    endpoint.terminal_config["POS-01"] = {"pos_mode": "fixed", "price_fen": 1500}
    async with PosTerminal(settings(keys, "POS-01", url)) as pos:
        assert pos.display == "请刷卡 ¥15.00"
        sale = await pos.sale(MEMBER)
    assert sale.ok and sale.amount == 1500


async def test_recharge_kiosk_runs_prepare_then_commit(keys, url, endpoint):
    async with RechargeKiosk(settings(keys, "KIOSK-01", url)) as kiosk:
        outcome = await kiosk.recharge(MEMBER, 20_000, pay_ref="BANK-0001")
    assert outcome.ok and outcome.balance == 30_000
    kinds = [r[2] for r in endpoint.records if r[0] == "KIOSK-01"]
    assert kinds == ["recharge.prepare", "recharge.committed"]
    assert not kiosk.store.state.pending_recharges


async def test_declined_payment_aborts_the_recharge(keys, url, endpoint):
    async with RechargeKiosk(settings(keys, "KIOSK-01", url)) as kiosk:
        outcome = await kiosk.recharge(MEMBER, 5_000, payment_ok=False)
    assert not outcome.ok and outcome.code == "payment_declined"
    assert endpoint.cards[MEMBER].balance == 10_000


async def test_kiosk_crash_after_payment_is_committed_once_on_restart(
    keys, url, endpoint, tmp_path
):
    state = tmp_path / "kiosk.json"
    kiosk = RechargeKiosk(settings(keys, "KIOSK-01", url, state_file=state))
    await kiosk.connect()
    with pytest.raises(SimulatedCrashError):
        await kiosk.recharge(MEMBER, 20_000, pay_ref="BANK-CRASH", crash_after_payment=True)
    await kiosk.close()
    assert endpoint.cards[MEMBER].balance == 10_000  # prepared, not credited: 单边账

    restarted = RechargeKiosk(settings(keys, "KIOSK-01", url, state_file=state))
    assert [p.pay_ref for p in restarted.store.state.pending_recharges] == ["BANK-CRASH"]
    async with restarted:  # on connecting, the kiosk finishes what it left open
        assert restarted.store.state.pending_recharges == []
        assert await restarted.resume_pending() == []
    assert endpoint.cards[MEMBER].balance == 30_000
    # and a duplicate commit of the same payment reference credits nothing more
    async with RechargeKiosk(settings(keys, "KIOSK-01", url)) as kiosk:
        repeat = await kiosk._phase(
            RechargeCommit(rec=999, pay_ref="BANK-CRASH", time_ms=kiosk.now_ms())
        )
    assert repeat.ok
    assert endpoint.cards[MEMBER].balance == 30_000


async def test_commit_after_abort_is_refused(keys, url, endpoint):
    async with RechargeKiosk(settings(keys, "KIOSK-01", url)) as kiosk:
        await kiosk.recharge(MEMBER, 5_000, pay_ref="BANK-ABORTED", payment_ok=False)
        late = await kiosk._phase(
            RechargeCommit(rec=998, pay_ref="BANK-ABORTED", time_ms=kiosk.now_ms())
        )
    assert (late.ok, late.code) == (False, "not_allowed")
    assert endpoint.cards[MEMBER].balance == 10_000


async def test_pos_resends_an_unanswered_tap_on_reconnect_and_learns_the_outcome(
    keys, url, endpoint, tmp_path
):
    state = tmp_path / "pos.json"
    async with PosTerminal(settings(keys, "POS-01", url, state_file=state)) as pos:
        await endpoint.sessions["POS-01"].link.close()
        await asyncio.sleep(0.05)
        lost = await pos.sale(MEMBER, amount=700)
        assert lost.code == "link_down"
        assert pos.store.state.pending_tap is not None
    async with PosTerminal(settings(keys, "POS-01", url, state_file=state)) as pos:
        assert pos.store.state.pending_tap is None
        assert pos.history[-1].startswith("上笔交易: 消费¥7.00")
    assert endpoint.cards[MEMBER].balance == 9_300  # charged exactly once


async def test_record_numbers_survive_a_terminal_restart(keys, url, tmp_path):
    state = tmp_path / "door.json"
    async with DoorReader(settings(keys, "DOOR-01", url, state_file=state)) as door:
        first = await door.tap(MEMBER)
    async with DoorReader(settings(keys, "DOOR-01", url, state_file=state)) as door:
        second = await door.tap(MEMBER)
    assert second.rec == first.rec + 1


async def test_retransmitted_tap_gets_the_original_decision_and_is_charged_once(
    keys, url, endpoint
):
    async with PosTerminal(settings(keys, "POS-01", url)) as pos:
        assert pos._link is not None
        tap = Tap(rec=77, uid=MEMBER, time_ms=pos.now_ms(), amount=1000)
        first = await pos._link.request(tap)
        second = await pos._link.request(tap)  # as after a lost DECISION or a restart
    assert isinstance(first, Decision) and first == second
    assert endpoint.cards[MEMBER].balance == 9_000


async def test_terminal_with_wrong_key_is_refused(keys, url, endpoint):
    wrong = TerminalSettings("POS-01", auth.new_key(), url, retry_s=0.2, retries=1)
    with pytest.raises(PeerError, match="auth_failed"):
        await PosTerminal(wrong).connect()
    assert endpoint.auth_failures == 1


async def test_unknown_terminal_is_refused(url):
    stranger = TerminalSettings("POS-99", auth.new_key(), url, retry_s=0.2, retries=1)
    with pytest.raises(PeerError, match="unknown_terminal"):
        await PosTerminal(stranger).connect()


async def test_terminal_refuses_an_edge_that_cannot_prove_it_knows_the_key(keys):
    """An impostor edge that accepts any AUTH must not get the terminal to trust it."""

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def answer(frame: Frame, body: Body) -> Body | None:
            if isinstance(body, Hello):
                return Challenge(nonce=auth.new_nonce())
            return Welcome(mac=bytes(32), time_ms=1_795_440_000_000, site="EVIL")

        link = FrameLink(reader, writer, answer)
        try:
            await link.run()
        finally:
            await link.close()

    server = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        door = DoorReader(settings(keys, "DOOR-01", f"tcp://127.0.0.1:{port}"))
        with pytest.raises(AuthError, match="edge proof"):
            await door.connect()
        assert not door.online and door.config == {}
    finally:
        server.close()
        await server.wait_closed()


async def test_door_decides_from_its_list_while_cut_off_and_uploads_later(keys, url, endpoint):
    async with DoorReader(settings(keys, "DOOR-01", url)) as door:
        update = ListUpdate(kind="blacklist", version=1, prev_version=0, full=True, add=[LOST])
        await endpoint.push("DOOR-01", update)
        assert door.store.state.blacklist == [LOST]
        await endpoint.sessions["DOOR-01"].link.close()
        await asyncio.sleep(0.05)
        member = await door.tap(MEMBER)
        lost = await door.tap(LOST)
        assert (member.ok, member.local) == (True, True)
        assert (lost.ok, lost.local) == (False, True)
        assert len(door.store.state.buffered) == 2
        await door.connect()  # the cable is back
        assert door.store.state.buffered == []
    uploaded = [r for r in endpoint.records if r[2] == "buffered.tap"]
    assert [(r[1], r[3]["granted"]) for r in uploaded] == [(member.rec, True), (lost.rec, False)]


async def test_list_update_with_a_version_gap_is_refused(keys, url, endpoint):
    async with DoorReader(settings(keys, "DOOR-01", url)) as door:
        gap = ListUpdate(kind="blacklist", version=5, prev_version=4, add=[LOST])
        reply = await endpoint.push("DOOR-01", gap)
    assert (reply.ok, reply.code) == (False, "version_gap")  # type: ignore[attr-defined]
    assert door.store.state.blacklist == []


async def test_pos_refuses_rather_than_guesses_when_cut_off(keys, url, endpoint):
    async with PosTerminal(settings(keys, "POS-01", url)) as pos:
        await endpoint.sessions["POS-01"].link.close()
        await asyncio.sleep(0.05)
        outcome = await pos.sale(MEMBER, amount=500)
    assert (outcome.ok, outcome.code, outcome.local) == (False, "link_down", False)
    assert endpoint.cards[MEMBER].balance == 10_000


async def test_door_event_is_acknowledged(keys, url, endpoint):
    async with DoorReader(settings(keys, "DOOR-01", url)) as door:
        assert await door.report_event("door_forced", door="main")
    assert endpoint.records[-1][2:] == ("event", {"event": "door_forced"})


async def test_heartbeats_flow_at_the_configured_interval(keys, url, endpoint):
    endpoint.heartbeat_s = 1
    async with DoorReader(settings(keys, "DOOR-01", url)) as door:
        await asyncio.sleep(1.3)
        assert door._link is not None and door._link.stats.frames_in >= 3  # CHALLENGE, WELCOME, ACK
        assert door.online


async def test_request_before_authentication_is_refused(keys, url):
    reader, writer = await asyncio.open_connection(*url.removeprefix("tcp://").split(":"))
    tap = Tap(rec=1, uid=MEMBER, time_ms=1_795_440_000_000)
    writer.write(encode_frame(message_frame(tap, 1)))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(4096), 2)
    writer.close()
    assert data[2] == FrameType.ERROR and b"unauthenticated" in data


async def test_endpoint_survives_garbage_and_answers_the_next_valid_frame(keys, url, endpoint):
    reader, writer = await asyncio.open_connection(*url.removeprefix("tcp://").split(":"))
    writer.write(b"\x02\x01\xff\x00\x01\x00\x03abcXX" + bytes(range(256)))  # bad CRC, noise
    writer.write(encode_frame(Frame(FrameType.HEARTBEAT, 9, b"\x80")))  # valid frame, bad body
    await writer.drain()
    data = await asyncio.wait_for(reader.read(4096), 2)
    writer.close()
    assert data[2] == FrameType.ERROR  # answered, not crashed


async def test_attendance_clock_works_over_a_serial_pty_pair(keys, endpoint):
    async with pty_pair() as (edge_side, terminal_side):
        await endpoint.serve_serial(parse_endpoint(f"serial://{edge_side}"))
        clock = AttendanceClock(settings(keys, "CLOCK-01", f"serial://{terminal_side}?baud=9600"))
        async with clock:
            outcome = await clock.punch(MEMBER)
            again = await clock.punch(MEMBER)
    assert outcome.ok and again.ok and again.rec == outcome.rec + 1


@pytest.mark.parametrize("kind", ["door", "pos", "recharge"])
async def test_door_pos_and_kiosk_work_over_serial(kind, keys, endpoint):
    tid = {"door": "DOOR-01", "pos": "POS-01", "recharge": "KIOSK-01"}[kind]
    async with pty_pair() as (edge_side, terminal_side):
        await endpoint.serve_serial(parse_endpoint(f"serial://{edge_side}"))
        cls = {"door": DoorReader, "pos": PosTerminal, "recharge": RechargeKiosk}[kind]
        async with cls(settings(keys, tid, f"serial://{terminal_side}")) as term:
            if isinstance(term, DoorReader):
                outcome = await term.tap(MEMBER)
            elif isinstance(term, PosTerminal):
                outcome = await term.sale(MEMBER, amount=300)
            else:
                assert isinstance(term, RechargeKiosk)
                outcome = await term.recharge(MEMBER, 1000)
    assert outcome.ok


def test_state_file_is_written_atomically(tmp_path: Path):
    from firmware_sim.state import StateFile

    store = StateFile(tmp_path / "t.json")
    assert [store.take_rec() for _ in range(3)] == [1, 2, 3]
    assert not list(tmp_path.glob("*.tmp"))
    assert StateFile(tmp_path / "t.json").state.next_rec == 4
