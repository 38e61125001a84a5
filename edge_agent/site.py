"""The site: terminal requests in, decisions out — each recorded before it is answered.

:class:`Site` implements the terminal sessions' ``SiteHandler``. Every state-changing
request becomes one store operation that, inside the group-commit transaction:

1. looks up (terminal, record number) in ``terminal_txns`` — a retransmission, even after a
   restart of the terminal or the edge, gets the original reply and nothing else happens;
2. gathers the facts (:mod:`edge_agent.adapters.sqlite_facts`) and calls the pure decision
   (:mod:`edge_agent.core`);
3. appends the protocol record to the outbox, applies its local effects (money deltas,
   anti-passback state, last punch, recharge state), and stores the reply in
   ``terminal_txns``.

The reply leaves only after the transaction commits (brief, invariant 1).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from functools import partial
from typing import Any, Literal

import msgspec
import structlog

from edge_agent.adapters import sqlite_facts as facts
from edge_agent.adapters import sqlite_outbox as outbox
from edge_agent.adapters.sqlite_store import EdgeStore, StoreError
from edge_agent.adapters.terminal_server import TerminalRegistry
from edge_agent.core.attendance import PunchFacts, decide_punch
from edge_agent.core.checks import OfflineState
from edge_agent.core.door import DoorFacts, decide_door
from edge_agent.core.ledger import balance_effect, ticket_effect
from edge_agent.core.model import SitePolicy
from edge_agent.core.purchase import (
    PurchaseDecision,
    PurchaseFacts,
    PurchaseRequest,
    decide_purchase,
)
from edge_agent.core.purses import Purses
from edge_agent.core.reasons import REASON_TEXT, Reason
from edge_agent.core.recharge import (
    CommitFacts,
    PrepareFacts,
    RechargeDecision,
    RechargeRequest,
    abort_recharge,
    commit_recharge,
    prepare_recharge,
)
from edge_agent.core.sitetime import (
    current_meal_period,
    local_date,
    local_day_bounds,
    meal_period_bounds,
    site_zone,
)
from edge_agent.diskguard import DiskGuard, is_disk_full
from edge_agent.lists import list_status
from protocol import messages as rec
from protocol import terminal as msg
from protocol.auth import parse_key
from protocol.framing import FrameType

log = structlog.get_logger("edge.site")

#: Fail-safe door openings held in memory while the store cannot record them.
MAX_DEFERRED = 10_000

_policy_decoder = msgspec.json.Decoder(SitePolicy)
_config_decoder = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class RegisteredTerminal:
    """A terminal of this site, as the sessions see it."""

    id: str
    kind: str
    key: bytes
    config: dict[str, object]
    name: str = ""


@dataclass
class Site:
    """Decides and records every terminal request of one site."""

    store: EdgeStore
    heartbeat_s: int = 10
    policy: SitePolicy = field(init=False)
    terminals: dict[str, RegisteredTerminal] = field(default_factory=dict)
    #: When the site lost central (None: online, or running standalone).
    offline_since: datetime | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    taps: int = 0
    #: Called after each committed request (the sync uplink wakes on it).
    on_record: Callable[[], None] | None = None
    #: Called when the blacklist or master data changed (lists are pushed to terminals that
    #: decide locally, edge_agent.lists).
    on_lists: Callable[[], None] | None = None
    #: The store's disk (None: not watched — tests, tools). See :mod:`edge_agent.diskguard`.
    disk: DiskGuard | None = None
    #: Fail-safe door openings the store could not record yet: (terminal, tap, time, reply),
    #: written as soon as the store takes writes again.
    deferred: list[tuple[RegisteredTerminal, msg.Tap, datetime, msg.Decision]] = field(
        default_factory=list
    )
    #: Fail-safe openings dropped because :data:`MAX_DEFERRED` were already waiting.
    deferred_dropped: int = 0

    def __post_init__(self) -> None:
        self.policy = SitePolicy(site=self.store.site)
        self._no_meals = self.policy
        self._day: tuple[tzinfo, datetime, datetime, int, int] | None = None

    @property
    def site(self) -> str:
        """This site's id."""
        return self.store.site

    async def load(self) -> None:
        """(Re)load terminals and policy from the store."""
        rows = await self.store.read("SELECT id, kind, key_hex, name, config FROM terminals")
        terminals = {}
        for tid, kind, key_hex, name, config in rows:
            try:
                key = parse_key(key_hex)
            except ValueError:
                log.exception("terminal.bad_key", terminal=tid)
                continue
            terminals[tid] = RegisteredTerminal(
                tid, kind, key, _config_decoder.decode(config), name
            )
        self.terminals = terminals
        policy_rows = await self.store.read("SELECT data FROM policy WHERE id = 1")
        if policy_rows:
            self.policy = _policy_decoder.decode(policy_rows[0][0])
        self._no_meals = msgspec.structs.replace(self.policy, meal_periods=[])
        site_zone(self.policy.timezone)  # a wrong zone name fails at start, not at a tap

    def terminal(self, terminal_id: str) -> RegisteredTerminal | None:
        """The registered terminal with this id."""
        return self.terminals.get(terminal_id)

    async def dead_letter(self, source: str, reason: str, payload: bytes) -> None:
        """Keep a payload a peer sent that could not be accepted."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO dead_letters (at_ms, source, reason, payload) VALUES (?, ?, ?, ?)",
                (time.time_ns() // 1_000_000, source, reason[:500], payload),
            )

        try:
            await self.store.run(op, quick=True)
        except StoreError as exc:
            log.exception("dead_letter.failed", source=source, error=str(exc))

    # -- requests ----------------------------------------------------------------------------

    async def handle(self, terminal: Any, body: msg.Body) -> msg.Body:
        """Decide, record, commit, then return the reply (see the module docstring)."""
        started = time.perf_counter()
        now = self.clock()
        if isinstance(body, msg.RecordUpload):
            op: Callable[[sqlite3.Connection], msg.Body] = partial(
                self._upload, terminal, body, now
            )
        elif isinstance(
            body,
            msg.Tap | msg.RechargePrepare | msg.RechargeCommit | msg.RechargeAbort | msg.Event,
        ):
            op = partial(self._once, terminal, body, now)
        else:
            return msg.Error(code="unsupported", message=f"{type(body).__name__} not accepted")
        quick = not isinstance(body, msg.RecordUpload)
        disk = self.disk
        if disk is not None and not disk.money_ok and _takes_money(terminal, body):
            # Refused before the store is touched: no payment is taken that might not be
            # recorded (a recharge already prepared may still commit: its money was taken).
            return await self._refuse_for_disk(terminal, body)
        try:
            # A tap, a recharge phase or an event is a handful of indexed statements: quick
            # (run on the event loop, see sqlite_store). An upload of buffered records may be
            # long: it runs on the writer thread.
            reply = await self.store.run(op, quick=quick)
        except Exception as exc:  # noqa: BLE001 - rolled back; the terminal gets a clear answer
            return await self._not_recorded(terminal, body, op, exc)
        if self.deferred:
            self.flush_deferred_soon()
        self.taps += 1
        if self.on_record is not None:
            self.on_record()
        self._log(terminal, body, reply, (time.perf_counter() - started) * 1000)
        return reply

    # -- when the store cannot record ---------------------------------------------------------

    async def _refuse_for_disk(self, terminal: Any, body: Any) -> msg.Body:
        """A money request while the disk is below its reserve: the original answer if the
        request was recorded before (a retransmission), else ``disk_full``; nothing written."""
        rows = await self.store.read(
            "SELECT frame_type, reply FROM terminal_txns WHERE terminal_id = ? AND term_rec = ?",
            (terminal.id, body.rec),
        )
        if rows and rows[0][0] == int(msg.FRAME_TYPES[type(body)]):
            return _replay(rows[0][0], rows[0][1])
        if self.disk is not None:
            self.disk.refused += 1
        log.warning("request.refused_disk", terminal=terminal.id, rec=body.rec)
        return _disk_full(body)

    async def _not_recorded(
        self,
        terminal: Any,
        body: msg.Body,
        op: Callable[[sqlite3.Connection], msg.Body],
        exc: Exception,
    ) -> msg.Body:
        """The store could not commit ``body``'s record (rolled back: nothing half-written).
        A door follows its group's ``fail_mode``; anything else gets a clear refusal."""
        full = is_disk_full(exc)
        if full and self.disk is not None:
            self.disk.mark_full()
        log.error(
            "request.not_recorded",
            terminal=terminal.id,
            request=type(body).__name__,
            disk_full=full,
            error=repr(exc),
        )
        if isinstance(body, msg.Tap) and terminal.kind == "door":
            return await self._door_fail_mode(terminal, body, op, full)
        return _disk_full(body) if full else _failure(body)

    async def _door_fail_mode(
        self,
        terminal: RegisteredTerminal,
        tap: msg.Tap,
        op: Callable[[sqlite3.Connection], msg.Body],
        full: bool,
    ) -> msg.Body:
        """``secure``: the door stays shut. ``safe``: it opens for a card it would have let
        in — decided on a rolled-back transaction, so a blacklisted card stays out — and the
        record is written once the store takes writes again. If even that cannot decide
        (the database unreadable), a ``safe`` door opens: that is what fail-safe means."""
        rows = await self._read_quietly(
            "SELECT g.fail_mode FROM doors d JOIN door_groups g ON g.id = d.group_id"
            " WHERE d.terminal_id = ? AND (? IS NULL OR d.id = ?) LIMIT 1",
            (terminal.id, tap.door, tap.door),
        )
        if not rows or rows[0][0] != "safe":
            return _disk_full(tap) if full else _failure(tap)
        try:
            reply = await self.store.run(op, quick=True, dry=True)
        except Exception as exc:
            log.exception("door.fail_safe_open", terminal=terminal.id, rec=tap.rec, error=repr(exc))
            reply = _decision(
                tap.rec, True, Reason.FAIL_SAFE.value, REASON_TEXT[Reason.FAIL_SAFE].zh
            )
        if isinstance(reply, msg.Decision) and reply.ok:
            if len(self.deferred) < MAX_DEFERRED:
                self.deferred.append((terminal, tap, self.clock(), reply))
            else:
                self.deferred_dropped += 1
                log.error("door.fail_safe_not_kept", terminal=terminal.id, rec=tap.rec)
        return reply

    async def _read_quietly(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return await self.store.read(sql, params)
        except Exception as exc:
            log.exception("store.read_failed", error=repr(exc))
            return []

    def flush_deferred_soon(self) -> None:
        """Write the fail-safe openings held in memory (once; a no-op while one is running)."""
        task = getattr(self, "_flush_task", None)
        if task is None or task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_deferred())

    async def _flush_deferred(self) -> None:
        while self.deferred:
            terminal, tap, at, reply = self.deferred[0]
            try:
                await self.store.run(
                    partial(self._record_fail_safe, terminal, tap, at, reply), quick=True
                )
            except Exception as exc:  # noqa: BLE001 - kept; tried again after the next commit
                log.warning("door.fail_safe_pending", left=len(self.deferred), error=repr(exc))
                return
            self.deferred.pop(0)
            if self.on_record is not None:
                self.on_record()
        log.info("door.fail_safe_recorded")

    def _record_fail_safe(
        self,
        terminal: RegisteredTerminal,
        tap: msg.Tap,
        now: datetime,
        reply: msg.Decision,
        conn: sqlite3.Connection,
    ) -> None:
        seen = conn.execute(
            "SELECT 1 FROM terminal_txns WHERE terminal_id = ? AND term_rec = ?",
            (terminal.id, tap.rec),
        ).fetchone()
        if seen is not None:
            return
        door_row = facts.door_for_terminal(conn, terminal.id, tap.door)
        door_id = door_row[0].id if door_row else (tap.door or "-")
        direction = door_row[0].direction if door_row else None
        record = self._append(
            conn,
            terminal,
            tap.time_ms,
            now,
            partial(
                rec.DoorAccess,
                door=door_id,
                direction=direction,
                granted=True,
                reason="fail_safe",
                blacklist_version=facts.blacklist_version(conn),
            ),
            lane=1,
            term_rec=tap.rec,
            card_uid=tap.uid,
        )
        conn.execute(
            "INSERT INTO terminal_txns (terminal_id, term_rec, frame_type, record_id, reply,"
            " created_ms) VALUES (?, ?, ?, ?, ?, ?)",
            (terminal.id, tap.rec, int(FrameType.TAP), record.id, _encoder.encode(reply), _ms(now)),
        )

    def _log(self, terminal: Any, body: msg.Body, reply: msg.Body, latency_ms: float) -> None:
        # The canonical line: one per request, with the ids bound (card UIDs are masked).
        log.info(
            "request",
            terminal=terminal.id,
            kind=terminal.kind,
            request=type(body).__name__,
            rec=getattr(body, "rec", None),
            card=getattr(body, "uid", None),
            ok=getattr(reply, "ok", None),
            decision=getattr(reply, "code", None),
            latency_ms=round(latency_ms, 3),
        )

    def _once(
        self, terminal: RegisteredTerminal, body: Any, now: datetime, conn: sqlite3.Connection
    ) -> msg.Body:
        frame_type = msg.FRAME_TYPES[type(body)]
        row = conn.execute(
            "SELECT frame_type, reply FROM terminal_txns WHERE terminal_id = ? AND term_rec = ?",
            (terminal.id, body.rec),
        ).fetchone()
        if row is not None:
            if row[0] != frame_type:
                return msg.Error(code="duplicate", message="record number already used")
            return _replay(frame_type, row[1])
        reply, record_id = self._decide(terminal, body, now, conn)
        conn.execute(
            "INSERT INTO terminal_txns (terminal_id, term_rec, frame_type, record_id, reply,"
            " created_ms)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (terminal.id, body.rec, int(frame_type), record_id, _encoder.encode(reply), _ms(now)),
        )
        return reply

    def _decide(
        self, terminal: RegisteredTerminal, body: Any, now: datetime, conn: sqlite3.Connection
    ) -> tuple[msg.Body, str | None]:
        if isinstance(body, msg.Event):
            record = self._append(
                conn,
                terminal,
                body.time_ms,
                now,
                partial(rec.TerminalEvent, event=body.event, door=body.door, detail=body.detail),
                lane=1,
                term_rec=body.rec,
            )
            return msg.Ack(), record.id
        if isinstance(body, msg.Tap):
            if terminal.kind == "door":
                return self._door(terminal, body, now, conn)
            if terminal.kind == "attendance":
                return self._punch(terminal, body, now, conn)
            if terminal.kind == "pos":
                return self._purchase(terminal, body, now, conn)
            return _decision(body.rec, False, Reason.NOT_ALLOWED.value, "此终端不能刷卡"), None
        if terminal.kind != "recharge":
            return _recharge_reply(body, None, Reason.NOT_ALLOWED.value, "此终端不能充值"), None
        return self._recharge(terminal, body, now, conn)

    # -- door, attendance, POS -----------------------------------------------------------------

    def _display(self, terminal: RegisteredTerminal, zh: str, en: str) -> str:
        return en if terminal.config.get("language") == "en" else zh

    def _door(
        self, terminal: RegisteredTerminal, tap: msg.Tap, now: datetime, conn: sqlite3.Connection
    ) -> tuple[msg.Body, str | None]:
        door_row = facts.door_for_terminal(conn, terminal.id, tap.door)
        if door_row is None:
            return _decision(
                tap.rec, False, Reason.NOT_ALLOWED.value, "门未配置 door not set"
            ), None
        door, group = door_row
        card = facts.card_facts(conn, tap.uid)
        person_id = card.card.person_id if card.card else None
        zone = site_zone(self.policy.timezone)
        door_facts = DoorFacts(
            card=card,
            door=door,
            group=group,
            rights=facts.door_rights(conn, person_id, group.id) if person_id else (),
            holidays=facts.holidays_on(conn, local_date(now, zone)),
            last_direction=facts.last_direction(conn, person_id, group.id) if person_id else None,  # type: ignore[arg-type]
        )
        decision = decide_door(door_facts, self.policy, now)
        record = self._append(
            conn,
            terminal,
            tap.time_ms,
            now,
            partial(
                rec.DoorAccess,
                door=door.id,
                direction=door.direction,
                granted=decision.ok,
                reason=str(decision.reason),
                blacklist_version=facts.blacklist_version(conn),
            ),
            lane=1,
            term_rec=tap.rec,
            card_uid=tap.uid,
        )
        if decision.ok and decision.direction is not None and person_id is not None:
            conn.execute(
                "INSERT INTO passages (person_id, group_id, direction, at_ms) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (person_id, group_id) DO UPDATE"
                " SET direction = excluded.direction, at_ms = excluded.at_ms",
                (person_id, group.id, decision.direction, _ms(now)),
            )
        reply = _decision(
            tap.rec,
            decision.ok,
            str(decision.reason),
            self._display(terminal, decision.display_zh, decision.display_en),
            open_ms=decision.open_ms,
        )
        return reply, record.id

    def _punch(
        self, terminal: RegisteredTerminal, tap: msg.Tap, now: datetime, conn: sqlite3.Connection
    ) -> tuple[msg.Body, str | None]:
        card = facts.card_facts(conn, tap.uid)
        person_id = card.card.person_id if card.card else None
        punch_facts = PunchFacts(
            card=card, last_punch_at=facts.last_punch_at(conn, person_id) if person_id else None
        )
        decision = decide_punch(punch_facts, self.policy, now, punch=tap.punch)
        record = self._append(
            conn,
            terminal,
            tap.time_ms,
            now,
            partial(
                rec.AttendancePunch,
                punch=tap.punch or "auto",
                accepted=decision.ok,
                reason=str(decision.reason),
            ),
            lane=1,
            term_rec=tap.rec,
            card_uid=tap.uid,
        )
        if decision.ok and not decision.duplicate and person_id is not None:
            conn.execute(
                "INSERT INTO last_punch (person_id, at_ms) VALUES (?, ?)"
                " ON CONFLICT (person_id) DO UPDATE SET at_ms = excluded.at_ms",
                (person_id, _ms(now)),
            )
        display = self._display(terminal, decision.display_zh, decision.display_en)
        return _decision(tap.rec, decision.ok, str(decision.reason), display), record.id

    def _price(self, terminal: RegisteredTerminal, tap: msg.Tap) -> tuple[int | None, list[Any]]:
        config = terminal.config
        if tap.items:
            menu = config.get("menu")
            if not isinstance(menu, dict):
                return None, []
            lines = []
            for item in tap.items:
                entry = menu.get(item.sku)
                if not isinstance(entry, dict) or not isinstance(entry.get("price_fen"), int):
                    return None, []
                lines.append(rec.LineItem(sku=item.sku, qty=item.qty, unit_fen=entry["price_fen"]))
            return sum(line.qty * line.unit_fen for line in lines), lines
        if tap.amount is not None:
            return tap.amount, []
        price = config.get("price_fen")
        return (price if isinstance(price, int) else None), []

    def _day_bounds_ms(self, now: datetime) -> tuple[int, int]:
        """Unix ms ``[start, end)`` of the site-local day containing ``now``
        (:func:`local_day_bounds`), kept until ``now`` leaves it or the time zone changes."""
        zone = site_zone(self.policy.timezone)
        cached = self._day
        if cached is None or cached[0] is not zone or not (cached[1] <= now < cached[2]):
            start, end = local_day_bounds(now, zone)
            cached = self._day = (zone, start, end, _ms(start), _ms(end))
        return cached[3], cached[4]

    def _offline(
        self, conn: sqlite3.Connection, person_id: str | None, now: datetime
    ) -> OfflineState | None:
        # Read once: this may run on the store's writer thread while the sync flips
        # ``offline_since`` from the event loop (a second read may see None).
        since = self.offline_since
        if since is None:
            return None
        day_start, _ = local_day_bounds(now, site_zone(self.policy.timezone))
        site_total, card_today = facts.offline_spent(conn, since, person_id, day_start)
        return OfflineState(since=since, site_exposure_fen=site_total, card_today_fen=card_today)

    def _purchase(
        self, terminal: RegisteredTerminal, tap: msg.Tap, now: datetime, conn: sqlite3.Connection
    ) -> tuple[msg.Body, str | None]:
        amount, lines = self._price(terminal, tap)
        zone = site_zone(self.policy.timezone)
        day_start_ms, day_end_ms = self._day_bounds_ms(now)
        card, account, pending, spent_today = facts.card_purchase_facts(
            conn, tap.uid, day_start_ms, day_end_ms
        )
        person_id = card.card.person_id if card.card else None
        service = terminal.config.get("service")
        service = service if isinstance(service, str) else None
        covers = account.covers_seq if account else 0
        # Meal periods and their limits apply at canteen tills only (config `canteen: true`);
        # a shop or bar till at the same site sells without them.
        canteen = terminal.config.get("canteen") is True
        policy = self.policy if canteen else self._no_meals
        meal_count = meal_spent = 0
        if person_id is not None:
            period = current_meal_period(now, policy) if policy.meal_periods else None
            if period is not None:
                m_start, m_end = meal_period_bounds(now, period, zone)
                meal_count, meal_spent = facts.spent_between(
                    conn, person_id, m_start, m_end, meals_only=True
                )
        purchase_facts = PurchaseFacts(
            card=card,
            account=account,
            pending=pending,
            tickets=facts.tickets(conn, person_id, service, covers)
            if person_id and service
            else (),
            spent_today_fen=spent_today,
            meal_purchases=meal_count,
            meal_spent_fen=meal_spent,
            offline=self._offline(conn, person_id, now),
        )
        request = PurchaseRequest(amount_fen=amount if amount is not None else 0, service=service)
        decision = decide_purchase(request, purchase_facts, policy, now)
        record = self._append(
            conn, terminal, tap.time_ms, now,
            partial(_purchase_record, decision, lines, facts.blacklist_version(conn)),
            lane=0, term_rec=tap.rec, card_uid=tap.uid, offline=decision.offline,
        )  # fmt: skip
        if decision.ok and person_id is not None:
            effect = balance_effect(decision)
            ticket = ticket_effect(decision)
            if not effect.is_zero or ticket is not None:
                conn.execute(
                    "INSERT INTO local_deltas (seq, person_id, cash_fen, subsidy_fen, ticket_id,"
                    " ticket_uses) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        record.seq,
                        person_id,
                        effect.cash_fen,
                        effect.subsidy_fen,
                        ticket[0] if ticket else None,
                        ticket[1] if ticket else 0,
                    ),
                )
            conn.execute(
                "INSERT INTO purchases (seq, person_id, card_uid, amount, at_ms, offline,"
                " meal_period) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.seq,
                    person_id,
                    tap.uid,
                    decision.subsidy_fen + decision.cash_fen,
                    _ms(now),
                    int(decision.offline),
                    decision.meal_period,
                ),
            )
        reply = _decision(
            tap.rec,
            decision.ok,
            str(decision.reason),
            self._display(terminal, decision.display_zh, decision.display_en),
            amount=decision.subsidy_fen + decision.cash_fen if decision.ok else None,
            balance=decision.balance_after_fen,
        )
        return reply, record.id

    # -- recharge ------------------------------------------------------------------------------

    def _recharge(
        self, terminal: RegisteredTerminal, body: Any, now: datetime, conn: sqlite3.Connection
    ) -> tuple[msg.Body, str | None]:
        existing = facts.recharge(conn, body.pay_ref)
        decision: RechargeDecision
        if isinstance(body, msg.RechargePrepare):
            card = facts.card_facts(conn, body.uid)
            person_id = card.card.person_id if card.card else None
            request = RechargeRequest(
                pay_ref=body.pay_ref, uid=body.uid, amount_fen=body.amount, method=body.method
            )
            prepare = PrepareFacts(
                card=card, existing=existing, offline=self._offline(conn, person_id, now)
            )
            decision = prepare_recharge(request, prepare, self.policy, now)
        elif isinstance(body, msg.RechargeCommit):
            person_id = existing.person_id if existing else None
            account = facts.account(conn, person_id) if person_id else None
            commit = CommitFacts(
                existing=existing,
                account=account,
                pending=facts.pending(conn, person_id, account.covers_seq if account else 0)
                if person_id
                else Purses(),
            )
            decision = commit_recharge(body.pay_ref, commit, now)
        else:
            decision = abort_recharge(body.pay_ref, existing, now, reason=body.reason)
        record_id = None
        if decision.changed and decision.recharge is not None:
            state = decision.recharge
            conn.execute(
                "INSERT INTO recharges (pay_ref, data, state, prepared_ms) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (pay_ref) DO UPDATE SET data = excluded.data, state = excluded.state",
                (state.pay_ref, _json.encode(state), str(state.state), _ms(state.prepared_at)),
            )
            if isinstance(body, msg.RechargePrepare):
                make: Any = partial(
                    rec.RechargePrepare,
                    pay_ref=body.pay_ref,
                    amount=body.amount,
                    method=body.method,
                )
            elif isinstance(body, msg.RechargeCommit):
                make = partial(rec.RechargeCommit, pay_ref=body.pay_ref, amount=state.amount_fen)
            else:
                make = partial(
                    rec.RechargeAbort, pay_ref=body.pay_ref, reason=body.reason or "aborted"
                )
            record = self._append(
                conn,
                terminal,
                body.time_ms,
                now,
                make,
                lane=0,
                term_rec=body.rec,
                card_uid=state.uid,
            )
            seq, record_id = record.seq, record.id
            effect = balance_effect(decision)
            if not effect.is_zero:
                conn.execute(
                    "INSERT INTO local_deltas (seq, person_id, cash_fen, subsidy_fen)"
                    " VALUES (?, ?, ?, ?)",
                    (seq, state.person_id, effect.cash_fen, effect.subsidy_fen),
                )
        display = self._display(terminal, decision.display_zh, decision.display_en)
        reply = msg.RechargeResult(
            rec=body.rec,
            pay_ref=body.pay_ref,
            ok=decision.ok,
            code=str(decision.reason),
            display=display,
            balance=decision.balance_after_fen,
        )
        return reply, record_id

    # -- buffered records -----------------------------------------------------------------------

    def _upload(
        self,
        terminal: RegisteredTerminal,
        body: msg.RecordUpload,
        now: datetime,
        conn: sqlite3.Connection,
    ) -> msg.Body:
        ack = _encoder.encode(msg.Ack())
        for buffered in body.records:
            seen = conn.execute(
                "SELECT 1 FROM terminal_txns WHERE terminal_id = ? AND term_rec = ?",
                (terminal.id, buffered.rec),
            ).fetchone()
            if seen is not None:
                continue  # uploaded before, or the edge had decided that tap itself
            record = self._append(
                conn,
                terminal,
                buffered.time_ms,
                now,
                partial(_buffered_record, terminal.kind, buffered, facts.blacklist_version(conn)),
                lane=1,
                term_rec=buffered.rec,
                card_uid=buffered.uid,
            )
            conn.execute(
                "INSERT INTO terminal_txns (terminal_id, term_rec, frame_type, record_id, reply,"
                " created_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    terminal.id,
                    buffered.rec,
                    int(FrameType.RECORD_UPLOAD),
                    record.id,
                    ack,
                    _ms(now),
                ),
            )
        return msg.Ack(upto=body.records[-1].rec)

    # -- plumbing ------------------------------------------------------------------------------

    def _append(
        self,
        conn: sqlite3.Connection,
        terminal: RegisteredTerminal,
        at_ms: int,
        now: datetime,
        make: Callable[..., rec.Record],
        *,
        lane: rec.Lane,
        term_rec: int | None = None,
        card_uid: str | None = None,
        offline: bool | None = None,
    ) -> rec.Record:
        at = datetime.fromtimestamp(at_ms / 1000, UTC)
        is_offline = self.offline_since is not None if offline is None else offline
        return outbox.append(
            conn,
            self.site,
            self.store.epoch,
            lane,
            lambda seq, rid: make(
                id=rid,
                seq=seq,
                site=self.site,
                terminal=terminal.id,
                term_rec=term_rec,
                at=at,
                received_at=now,
                offline=is_offline,
                card_uid=card_uid,
            ),
        )

    async def record_remote_open(self, terminal_id: str, door: str | None, detail: str) -> None:
        """Put HQ's remote open (or its failure, in ``detail``) in the door's record."""
        terminal = self.terminals[terminal_id]
        now = self.clock()
        at_ms = int(now.timestamp() * 1000)
        make = partial(rec.TerminalEvent, event="remote_open", door=door, detail=detail)
        await self.store.run(
            lambda conn: self._append(conn, terminal, at_ms, now, make, lane=1), quick=True
        )

    async def record_event(
        self,
        terminal_id: str,
        event: Literal["online", "offline", "auth_failed", "tamper", "power_fail", "reader_fault"],
        *,
        door: str | None = None,
        detail: str = "",
    ) -> None:
        """Record a ``terminal.event`` the edge saw itself (an OSDP reader going online or
        offline, its secure channel refused): no terminal record number, nothing to answer."""
        terminal = self.terminals[terminal_id]
        now = self.clock()
        make = partial(rec.TerminalEvent, event=event, door=door, detail=detail[:200])
        await self.store.run(
            lambda conn: self._append(conn, terminal, _ms(now), now, make, lane=1), quick=True
        )
        if self.on_record is not None:
            self.on_record()

    async def status(self, registry: TerminalRegistry, *, version: str) -> dict[str, Any]:
        """A snapshot for ``onecard-edge status`` and the birth message."""

        # On the reader connection (a WAL snapshot): counting a long backlog must never hold
        # up the writer, where every tap waits for its commit.
        depth = (await self.store.read(outbox.DEPTH_SQL))[0][0]
        oldest = (await self.store.read(outbox.OLDEST_SQL))[0][0]
        meta = dict(await self.store.read("SELECT key, value FROM meta"))
        db = {
            "outbox_depth": int(depth),
            "acked": [int(meta.get(f"acked_seq_{lane}", 0)) for lane in rec.LANES],
            "feed_version": int(meta.get("feed_version", 0)),
            "blacklist_version": int(meta.get("blacklist_version", 0)),
        }
        now = time.time()
        smart = await list_status(self.store, int(now * 1000))
        terminals = []
        for tid, term in sorted(self.terminals.items()):
            seen = registry.last_seen_wall.get(tid)
            terminals.append(
                {
                    "id": tid,
                    "kind": term.kind,
                    "online": registry.online(tid, heartbeat_s=self.heartbeat_s),
                    "last_seen_age_s": None if seen is None else round(now - seen, 1),
                    "auth_failures": registry.auth_failures.get(tid, 0),
                    **smart.get(tid, {}),
                }
            )
        return {
            "site": self.site,
            "version": version,
            "epoch": self.store.epoch,
            "outbox_oldest_age_s": None if oldest is None else max(0.0, now - oldest / 1000),
            "terminals": terminals,
            "refused": dict(registry.refused),
            "taps": self.taps,
            "disk": None
            if self.disk is None
            else {
                "state": self.disk.state,
                "free_bytes": self.disk.free,
                "reserve_bytes": self.disk.reserve_bytes,
                "refused": self.disk.refused,
                "fail_safe_unrecorded": len(self.deferred),
            },
            **db,
        }


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _decision(
    rec_no: int,
    ok: bool,
    code: str,
    display: str,
    *,
    amount: int | None = None,
    balance: int | None = None,
    open_ms: int | None = None,
) -> msg.Decision:
    return msg.Decision(
        rec=rec_no,
        ok=ok,
        code=code,
        display=display[:80],
        amount=amount,
        balance=balance,
        open_ms=open_ms,
    )


def _recharge_reply(body: Any, balance: int | None, code: str, display: str) -> msg.Body:
    return msg.RechargeResult(
        rec=body.rec, pay_ref=body.pay_ref, ok=False, code=code, display=display, balance=balance
    )


def _takes_money(terminal: Any, body: msg.Body) -> bool:
    """A request that would take a new payment: a sale or ticket use, a recharge prepare."""
    return isinstance(body, msg.RechargePrepare) or (
        isinstance(body, msg.Tap) and terminal.kind == "pos"
    )


def _disk_full(body: msg.Body) -> msg.Body:
    """The answer when the disk is too full to record ``body``: nothing happened."""
    display = REASON_TEXT[Reason.DISK_FULL].zh
    if isinstance(body, msg.Tap):
        return _decision(body.rec, False, Reason.DISK_FULL.value, display)
    if isinstance(body, msg.RechargePrepare | msg.RechargeCommit | msg.RechargeAbort):
        return _recharge_reply(body, None, Reason.DISK_FULL.value, display)
    return msg.Error(code="disk_full", message="edge storage full: not recorded, send again later")


def _failure(body: msg.Body) -> msg.Body:
    """The answer when the edge could not decide at all (store failure, bug)."""
    if isinstance(body, msg.Tap):
        return _decision(body.rec, False, Reason.INTERNAL.value, "系统故障 请稍后 system error")
    if isinstance(body, msg.RechargePrepare | msg.RechargeCommit | msg.RechargeAbort):
        return _recharge_reply(body, None, Reason.INTERNAL.value, "系统故障 请稍后 system error")
    return msg.Error(code="internal", message="edge could not record the request")


_REPLY_TYPES = {
    FrameType.TAP: msg.Decision,
    FrameType.RECHARGE_PREPARE: msg.RechargeResult,
    FrameType.RECHARGE_COMMIT: msg.RechargeResult,
    FrameType.RECHARGE_ABORT: msg.RechargeResult,
    FrameType.EVENT: msg.Ack,
    FrameType.RECORD_UPLOAD: msg.Ack,
}


def _replay(frame_type: int, reply: bytes) -> msg.Body:
    body: msg.Body = msgspec.msgpack.decode(reply, type=_REPLY_TYPES[FrameType(frame_type)])
    return body


def _purchase_record(
    decision: PurchaseDecision, lines: list[Any], blacklist_version: int, **common: Any
) -> rec.Record:
    if decision.ticket_id is not None:
        return rec.TicketUse(
            ticket_id=decision.ticket_id,
            approved=decision.ok,
            reason=str(decision.reason),
            blacklist_version=blacklist_version,
            **common,
        )
    return rec.Purchase(
        approved=decision.ok,
        blacklist_version=blacklist_version,
        reason=str(decision.reason),
        amount=decision.amount_fen,
        subsidy_fen=decision.subsidy_fen if decision.ok else 0,
        cash_fen=decision.cash_fen if decision.ok else 0,
        items=lines if decision.ok and lines else None,
        meal_period=decision.meal_period,
        **common,
    )


def _buffered_record(
    kind: str, buffered: msg.BufferedRecord, blacklist_version: int, **common: Any
) -> rec.Record:
    if buffered.what == "event":
        return rec.TerminalEvent(
            event=buffered.event or "reader_fault", door=buffered.door, **common
        )
    if kind == "attendance":
        return rec.AttendancePunch(
            punch=buffered.punch or "auto",
            accepted=bool(buffered.granted),
            reason="terminal_local",
            **common,
        )
    return rec.DoorAccess(
        door=buffered.door or "-",
        granted=bool(buffered.granted),
        reason="terminal_local",
        blacklist_version=blacklist_version,
        **common,
    )
