"""The service desk: card operations with a card in hand, through the running daemon.

``onecard-edge desk …`` (:mod:`edge_agent.cli_desk`) reads the card on the desk's PC/SC
reader and asks the daemon, over a local Unix socket, to act on it. The daemon is the
store's one writer, so a desk operation is decided and recorded exactly like a terminal's
request: one store operation that checks, appends its records to the outbox (lane 0) and
applies its local effects, committed before the reply leaves (brief, invariant 1).

The operations, each idempotent by the caller's ``request_id`` (a resent request gets the
first reply back and changes nothing; the same id with other content is refused
``request_id_reused``):

- **info** and **history**: the card, its holder, and the purses as the till sees them
  (central's balance plus this site's pending deltas); the card's recent records here.
- **issue** (发卡): a ``card.intent`` ``issue`` for central (brief, invariant 4). Refused
  locally with central's own codes when this site already knows central would refuse it:
  ``person_unknown``, ``card_already_bound``, ``card_retired``, ``person_has_card``. The
  card works at this site at once: its row is written *unconfirmed* (``card_type`` =
  :data:`UNCONFIRMED`). Central's feed confirms it (the row is replaced by central's); an
  issue still unconfirmed :attr:`DeskConfig.confirm_grace_s` after central acked the
  intent was refused there, and is undone here (the earlier row, if any, restored).
- **lost** (挂失): a ``card.intent`` ``report_lost``; the card is refused at this site at
  once (status ``lost``), before central answers — the safe side needs no undo.
- **recharge** (cash at the desk): the two records a kiosk makes, ``recharge.prepare`` and
  ``recharge.commit``, in one transaction under ``pay_ref = desk-{request_id}``, decided by
  the kiosk's own rules (:mod:`edge_agent.core.recharge`: card checks, cap, offline
  policy). The credit is a local delta until central's balance covers it.

The messages are :mod:`edge_agent.desk_wire`'s. A request that does not decode is answered
``bad_request`` and kept in ``dead_letters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec
import structlog
from msgspec import Struct

from edge_agent.adapters import sqlite_facts as facts
from edge_agent.adapters import sqlite_outbox as outbox
from edge_agent.adapters.sqlite_store import set_meta
from edge_agent.adapters.waiting import wait_event
from edge_agent.config import DeskConfig
from edge_agent.core.checks import OfflineState
from edge_agent.core.ledger import balance_effect
from edge_agent.core.model import CardStatus
from edge_agent.core.purses import available_purses
from edge_agent.core.recharge import (
    CommitFacts,
    PrepareFacts,
    RechargeRequest,
    commit_recharge,
    prepare_recharge,
)
from edge_agent.core.sitetime import local_day_bounds, site_zone
from edge_agent.desk_wire import (
    CardHistory,
    CardInfo,
    CardView,
    Change,
    DeskProtocolError,
    DeskRecharge,
    DeskReply,
    DeskRequest,
    IssueCard,
    ReportLost,
    decode_request,
    encode_message,
    history_entry,
    read_message,
    yuan,
)
from edge_agent.site import Site
from protocol import messages as rec
from protocol.errors import MessageError

log = structlog.get_logger("edge.desk")

#: ``card_type`` of a card issued at this desk that central's feed has not confirmed yet.
UNCONFIRMED = "desk-unconfirmed"
#: ``terminal_txns.frame_type`` of a desk request (no terminal frame uses it).
DESK_FRAME_TYPE = 0xDE
#: How often pending issues are checked against central's ack and feed.
RECONCILE_INTERVAL_S = 5.0
#: A client that sends nothing for this long is disconnected.
IDLE_TIMEOUT_S = 120.0
#: On shutdown, how long a connection may take to finish the request it is on.
CLOSE_WAIT_S = 2.0
#: Most recent outbox rows a history looks through (newest first).
HISTORY_SCAN_ROWS = 50_000
_PENDING_PREFIX = "desk.pending_issue."
_LIVE = (CardStatus.ACTIVE.value, CardStatus.LOST.value, CardStatus.FROZEN.value)


class _Stored(Struct, frozen=True):
    digest: str
    reply: DeskReply


class _Pending(Struct, frozen=True, kw_only=True):
    """A desk issue waiting for central's feed (a ``meta`` row per card UID)."""

    seq: int
    person_id: str
    prior: list[Any] | None = None
    acked_ms: int | None = None


_stored_decoder = msgspec.json.Decoder(_Stored)
_pending_decoder = msgspec.json.Decoder(_Pending)
_json = msgspec.json.Encoder()


# -- the daemon side ---------------------------------------------------------------------------


def _refused(code: str, message: str, card: CardView | None = None) -> DeskReply:
    return DeskReply(ok=False, code=code, message=message, card=card)


@dataclass
class DeskService:
    """Serves the desk socket of a running edge (see the module docstring)."""

    site: Site
    config: DeskConfig
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    requests: int = 0
    refused: int = 0
    _server: asyncio.Server | None = None
    _clients: set[asyncio.Task[None]] = field(default_factory=set)

    # -- the socket ---------------------------------------------------------------------------

    async def start(self) -> bool:
        """Listen on the configured socket (mode 0660); a stale socket file is replaced.

        False (logged ``desk.unavailable``) if the socket cannot be made: the desk is not
        worth refusing to serve the terminals over."""
        path = self.config.socket
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()  # left by a daemon that died (the store has one owner)
            self._server = await asyncio.start_unix_server(self._on_client, path=str(path))
            path.chmod(0o660)
        except OSError as exc:
            log.warning("desk.unavailable", socket=str(path), error=str(exc))
            return False
        log.info("desk.listening", socket=str(path))
        return True

    async def run(self, stopping: asyncio.Event) -> None:
        """Check pending issues until ``stopping``; then close the socket."""
        try:
            while not await wait_event(stopping, RECONCILE_INTERVAL_S):
                try:
                    await self.reconcile()
                except Exception as exc:  # noqa: BLE001 - retried next round, never fatal
                    log.warning("desk.reconcile_failed", error=repr(exc))
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop listening, end client connections, remove the socket file."""
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.config.socket.unlink()
        if self._clients:  # a request being decided is answered first (its record is kept)
            _, stuck = await asyncio.wait(list(self._clients), timeout=CLOSE_WAIT_S)
            for task in stuck:
                task.cancel()
            if stuck:
                await asyncio.wait(stuck, timeout=CLOSE_WAIT_S)

    def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT_S):
                        data = await read_message(reader)
                except TimeoutError:
                    return  # an idle connection: nothing asked, nothing to answer
                except DeskProtocolError as exc:
                    await self._bad(writer, str(exc), b"")
                    return
                if data is None:
                    return
                try:
                    request = decode_request(data)
                except DeskProtocolError as exc:
                    await self._bad(writer, str(exc), data)
                    continue
                reply = await self.handle(request)
                writer.write(encode_message(reply))
                await writer.drain()
        except ConnectionError:
            pass  # the desk went away mid-reply: its request was committed or not at all
        finally:
            writer.close()

    async def _bad(self, writer: asyncio.StreamWriter, reason: str, payload: bytes) -> None:
        self.refused += 1
        log.warning("desk.bad_request", reason=reason)
        await self.site.dead_letter("desk", reason, payload)
        with contextlib.suppress(ConnectionError):
            writer.write(encode_message(_refused("bad_request", reason)))
            await writer.drain()

    # -- requests -----------------------------------------------------------------------------

    async def handle(self, request: DeskRequest) -> DeskReply:
        """Answer one request; a change is committed before this returns."""
        started = time.perf_counter()
        self.requests += 1
        try:
            if isinstance(request, CardInfo):
                reply = await self.site.store.run(partial(self._info, request.uid), quick=True)
            elif isinstance(request, CardHistory):
                reply = await self._history(request)
            else:
                reply = await self._change(request)
        except Exception as exc:  # rolled back: the desk gets a clear answer
            log.exception("desk.failed", op=type(request).__name__, error=repr(exc))
            reply = _refused("internal", "the edge could not record this; nothing was done")
        if not reply.ok:
            self.refused += 1
        log.info(
            "desk.request",
            op=type(request).__name__,
            request_id=getattr(request, "request_id", None),
            card=request.uid,
            ok=reply.ok,
            code=reply.code,
            replayed=reply.replayed,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return reply

    async def _change(self, request: Change) -> DeskReply:
        disk = getattr(self.site, "disk", None)  # edge_agent.diskguard, when watched
        if isinstance(request, DeskRecharge) and disk is not None and not disk.money_ok:
            stored = await self._stored(request)
            if stored is not None:
                return stored
            return _refused("disk_full", "the edge's disk is nearly full: no money taken")
        now = self.clock()
        reply: DeskReply = await self.site.store.run(partial(self._once, request, now), quick=True)
        if reply.records and self.site.on_record is not None:
            self.site.on_record()  # wake the uplink
        return reply

    async def _stored(self, request: Change) -> DeskReply | None:
        rows = await self.site.store.read(
            "SELECT reply FROM terminal_txns WHERE terminal_id = ? AND term_rec = 0",
            (_txn_key(request),),
        )
        return _replayed(request, rows[0][0]) if rows else None

    def _once(self, request: Change, now: datetime, conn: sqlite3.Connection) -> DeskReply:
        row = conn.execute(
            "SELECT reply FROM terminal_txns WHERE terminal_id = ? AND term_rec = 0",
            (_txn_key(request),),
        ).fetchone()
        if row is not None:
            return _replayed(request, row[0])
        if isinstance(request, IssueCard):
            reply = self._issue(request, now, conn)
        elif isinstance(request, ReportLost):
            reply = self._lost(request, now, conn)
        else:
            reply = self._recharge(request, now, conn)
        conn.execute(
            "INSERT INTO terminal_txns (terminal_id, term_rec, frame_type, record_id, reply,"
            " created_ms) VALUES (?, 0, ?, ?, ?, ?)",
            (
                _txn_key(request),
                DESK_FRAME_TYPE,
                reply.records[0] if reply.records else None,
                _json.encode(_Stored(_digest(request), reply)),
                _ms(now),
            ),
        )
        return reply

    def _info(self, uid: str, conn: sqlite3.Connection) -> DeskReply:
        view = self._view(conn, uid, self.clock())
        if not view.known:
            code = "blacklisted" if view.blacklisted else "unknown_card"
            return DeskReply(
                ok=False, code=code, message=f"card {uid} is not known here", card=view
            )
        return DeskReply(ok=True, code="ok", card=view)

    def _view(self, conn: sqlite3.Connection, uid: str, now: datetime) -> CardView:
        card = facts.card_facts(conn, uid)
        offline = self.site.offline_since is not None
        if card.card is None:
            return CardView(uid=uid, blacklisted=card.blacklisted, offline=offline)
        person_id = card.card.person_id
        account = facts.account(conn, person_id)
        pending = facts.pending(conn, person_id, account.covers_seq if account else 0)
        purses = available_purses(account, pending, now)
        return CardView(
            uid=uid,
            known=True,
            status=str(card.card.status),
            person_id=person_id,
            person_name=card.person.name if card.person else None,
            person_number=card.person.number if card.person else None,
            blacklisted=card.blacklisted,
            unconfirmed=card.card.card_type == UNCONFIRMED,
            cash_fen=purses.cash_fen,
            subsidy_fen=purses.subsidy_fen,
            balance_fen=purses.total_fen,
            pending_fen=pending.total_fen,
            offline=offline,
        )

    # -- issue, lost, recharge (inside one store operation each) ------------------------------

    def _issue(self, request: IssueCard, now: datetime, conn: sqlite3.Connection) -> DeskReply:
        uid, person_id = request.uid, request.person_id
        person = conn.execute("SELECT 1 FROM persons WHERE id = ?", (person_id,)).fetchone()
        if person is None:
            return _refused("person_unknown", f"no person {person_id} at this site")
        prior = conn.execute(
            "SELECT uid, person_id, status, valid_from_ms, valid_to_ms, card_type FROM cards"
            " WHERE uid = ?",
            (uid,),
        ).fetchone()
        listed = conn.execute("SELECT 1 FROM blacklist WHERE uid = ?", (uid,)).fetchone()
        if prior is not None and prior[2] in _LIVE:
            return _refused("card_already_bound", f"card {uid} is already bound to {prior[1]}")
        if listed is not None or (prior is not None and prior[2] != CardStatus.CANCELLED):
            return _refused("card_retired", f"card {uid} is retired and cannot be bound again")
        held = conn.execute(
            "SELECT uid FROM cards WHERE person_id = ? AND status IN (?, ?, ?) LIMIT 1",
            (person_id, *_LIVE),
        ).fetchone()
        if held is not None:
            return _refused(
                "person_has_card",
                f"{person_id} already holds card {held[0]}; replace it with a reissue at HQ",
            )
        record = self._append(
            conn,
            now,
            partial(rec.CardIntent, action="issue", person_id=person_id, operator=request.operator),
            uid,
        )
        conn.execute(
            "INSERT OR REPLACE INTO cards (uid, person_id, status, card_type) VALUES (?, ?, ?, ?)",
            (uid, person_id, CardStatus.ACTIVE.value, UNCONFIRMED),
        )
        pending = _Pending(
            seq=record.seq, person_id=person_id, prior=None if prior is None else list(prior)
        )
        set_meta(conn, _PENDING_PREFIX + uid, _json.encode(pending).decode())
        return DeskReply(
            ok=True,
            code="ok",
            message=f"card {uid} issued to {person_id}; usable here now, central confirms",
            card=self._view(conn, uid, now),
            records=[record.id],
        )

    def _lost(self, request: ReportLost, now: datetime, conn: sqlite3.Connection) -> DeskReply:
        card = facts.card_facts(conn, request.uid)
        if card.card is None:
            return _refused("card_unknown", f"no card {request.uid} at this site")
        if card.card.status != CardStatus.ACTIVE:
            return _refused(
                "card_not_active",
                f"card {request.uid} is {card.card.status}",
                self._view(conn, request.uid, now),
            )
        record = self._append(
            conn,
            now,
            partial(
                rec.CardIntent,
                action="report_lost",
                person_id=card.card.person_id,
                operator=request.operator,
                reason=request.reason,
            ),
            request.uid,
        )
        conn.execute(
            "UPDATE cards SET status = ? WHERE uid = ?", (CardStatus.LOST.value, request.uid)
        )
        # Also on the local blacklist: a feed update to this card written before central
        # took the report would otherwise set it back to active until central's own update
        # arrived. Central's blacklist delta for the loss replaces this row (a refused
        # report leaves the card refused here until a resync: the safe side).
        conn.execute(
            "INSERT OR IGNORE INTO blacklist (uid, reason, effective_at_ms, version)"
            " VALUES (?, 'lost', ?, ?)",
            (request.uid, _ms(now), facts.blacklist_version(conn)),
        )
        return DeskReply(
            ok=True,
            code="ok",
            message=f"card {request.uid} reported lost; refused at this site from now",
            card=self._view(conn, request.uid, now),
            records=[record.id],
        )

    def _recharge(
        self, request: DeskRecharge, now: datetime, conn: sqlite3.Connection
    ) -> DeskReply:
        pay_ref = f"desk-{request.request_id}"
        card = facts.card_facts(conn, request.uid)
        person_id = card.card.person_id if card.card else None
        prepared = prepare_recharge(
            RechargeRequest(
                pay_ref=pay_ref, uid=request.uid, amount_fen=request.amount_fen, method="cash"
            ),
            PrepareFacts(
                card=card,
                existing=facts.recharge(conn, pay_ref),
                offline=self._offline(conn, person_id, now),
            ),
            self.site.policy,
            now,
        )
        if not prepared.ok or prepared.recharge is None or person_id is None:
            # The card checks come first (unknown_card, lost …), then the cap and the
            # offline policy (amount_invalid, recharge_not_allowed, offline_too_long).
            view = self._view(conn, request.uid, now) if card.card else None
            message = prepared.display_en.replace("\n", " ")
            return _refused(str(prepared.reason), message, view)
        self._store_recharge(conn, prepared.recharge)
        first = self._append(
            conn,
            now,
            partial(rec.RechargePrepare, pay_ref=pay_ref, amount=request.amount_fen, method="cash"),
            request.uid,
        )
        account = facts.account(conn, person_id)
        committed = commit_recharge(
            pay_ref,
            CommitFacts(
                existing=prepared.recharge,
                account=account,
                pending=facts.pending(conn, person_id, account.covers_seq if account else 0),
            ),
            now,
        )
        if committed.recharge is None:  # a prepared payment always commits
            raise RuntimeError(f"desk recharge {pay_ref} did not commit: {committed.reason}")
        self._store_recharge(conn, committed.recharge)
        second = self._append(
            conn,
            now,
            partial(rec.RechargeCommit, pay_ref=pay_ref, amount=request.amount_fen),
            request.uid,
        )
        effect = balance_effect(committed)
        conn.execute(
            "INSERT INTO local_deltas (seq, person_id, cash_fen, subsidy_fen) VALUES (?, ?, ?, ?)",
            (second.seq, person_id, effect.cash_fen, effect.subsidy_fen),
        )
        return DeskReply(
            ok=True,
            code="ok",
            message=f"credited ¥{yuan(request.amount_fen)} in cash (pay_ref {pay_ref})",
            card=self._view(conn, request.uid, now),
            records=[first.id, second.id],
        )

    def _store_recharge(self, conn: sqlite3.Connection, state: Any) -> None:
        conn.execute(
            "INSERT INTO recharges (pay_ref, data, state, prepared_ms) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (pay_ref) DO UPDATE SET data = excluded.data, state = excluded.state",
            (state.pay_ref, _json.encode(state), str(state.state), _ms(state.prepared_at)),
        )

    def _offline(
        self, conn: sqlite3.Connection, person_id: str | None, now: datetime
    ) -> OfflineState | None:
        since = self.site.offline_since  # read once: the sync flips it from the event loop
        if since is None:
            return None
        day_start, _ = local_day_bounds(now, site_zone(self.site.policy.timezone))
        site_total, card_today = facts.offline_spent(conn, since, person_id, day_start)
        return OfflineState(since=since, site_exposure_fen=site_total, card_today_fen=card_today)

    def _append(
        self,
        conn: sqlite3.Connection,
        now: datetime,
        make: Callable[..., rec.Record],
        uid: str,
    ) -> rec.Record:
        site = self.site.site
        return outbox.append(
            conn,
            site,
            self.site.store.epoch,
            0,
            lambda seq, rid: make(
                id=rid,
                seq=seq,
                site=site,
                terminal=self.config.terminal_id,
                at=now,
                received_at=now,
                offline=self.site.offline_since is not None,
                card_uid=uid,
            ),
        )

    # -- history ------------------------------------------------------------------------------

    async def _history(self, request: CardHistory) -> DeskReply:
        # Records are compact JSON: a byte search finds the card's without parsing the rest
        # (on the reader connection: a long outbox never holds up the writer).
        needle = b'"card_uid":"' + request.uid.encode() + b'"'
        rows = await self.site.store.read(
            "SELECT lane, seq, payload FROM"
            " (SELECT rowid, lane, seq, payload FROM outbox_rows ORDER BY rowid DESC LIMIT ?)"
            " WHERE instr(payload, ?) > 0 ORDER BY rowid DESC LIMIT ?",
            (HISTORY_SCAN_ROWS, needle, request.limit),
        )
        marks = dict(
            await self.site.store.read(
                "SELECT key, CAST(value AS INTEGER) FROM meta WHERE key LIKE 'acked_seq_%'"
            )
        )
        entries = []
        for lane, seq, payload in rows:
            try:
                record = rec.decode_record(payload)
            except MessageError:
                continue  # written by another version: not this card's business here
            synced = seq <= int(marks.get(f"acked_seq_{lane}", 0))
            entries.append(history_entry(record, synced=synced))
        info = await self.site.store.run(partial(self._info, request.uid), quick=True)
        return msgspec.structs.replace(info, history=entries)

    # -- confirming desk issues ---------------------------------------------------------------

    async def reconcile(self) -> int:
        """Settle desk issues central has acked: confirmed by its feed (central's card row
        replaced ours) → forgotten; still unconfirmed ``confirm_grace_s`` after the ack →
        undone here. Returns how many were undone."""
        now_ms = _ms(self.clock())
        undone: int = await self.site.store.run(partial(self._reconcile, now_ms))
        return undone

    def _reconcile(self, now_ms: int, conn: sqlite3.Connection) -> int:
        acked = outbox.acked_watermark(conn, 0)
        undone = 0
        rows = conn.execute(
            "SELECT key, value FROM meta WHERE key >= ? AND key < ?",
            (_PENDING_PREFIX, _PENDING_PREFIX + "\U0010ffff"),
        ).fetchall()
        for key, value in rows:
            uid = key.removeprefix(_PENDING_PREFIX)
            pending = _pending_decoder.decode(value)
            card = conn.execute(
                "SELECT person_id, card_type FROM cards WHERE uid = ?", (uid,)
            ).fetchone()
            if card is None or card[1] != UNCONFIRMED or card[0] != pending.person_id:
                conn.execute("DELETE FROM meta WHERE key = ?", (key,))  # central's row now
                continue
            if pending.seq > acked:
                continue
            if pending.acked_ms is None:
                set_meta(conn, key, _json.encode(_with_ack(pending, now_ms)).decode())
                continue
            if now_ms - pending.acked_ms < self.config.confirm_grace_s * 1000:
                continue
            self._undo_issue(conn, uid, pending)
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            undone += 1
        return undone

    def _undo_issue(self, conn: sqlite3.Connection, uid: str, pending: _Pending) -> None:
        if pending.prior is None:
            conn.execute("DELETE FROM cards WHERE uid = ?", (uid,))
        else:
            conn.execute(
                "INSERT OR REPLACE INTO cards (uid, person_id, status, valid_from_ms,"
                " valid_to_ms, card_type) VALUES (?, ?, ?, ?, ?, ?)",
                tuple(pending.prior),
            )
        log.warning(
            "desk.issue_undone",
            card=uid,
            person=pending.person_id,
            reason="central acked the intent but never confirmed the card: it refused it",
        )

    def pending_issues(self, conn: sqlite3.Connection) -> list[str]:
        """UIDs issued at this desk that central's feed has not confirmed yet."""
        rows = conn.execute(
            "SELECT key FROM meta WHERE key >= ? AND key < ?",
            (_PENDING_PREFIX, _PENDING_PREFIX + "\U0010ffff"),
        ).fetchall()
        return [row[0].removeprefix(_PENDING_PREFIX) for row in rows]


def _with_ack(pending: _Pending, now_ms: int) -> _Pending:
    return msgspec.structs.replace(pending, acked_ms=now_ms)


def _txn_key(request: Change) -> str:
    return f"desk:{request.request_id}"


def _digest(request: Change) -> str:
    return hashlib.sha256(_json.encode(request)).hexdigest()


def _replayed(request: Change, stored: bytes) -> DeskReply:
    first = _stored_decoder.decode(stored)
    if first.digest != _digest(request):
        return _refused(
            "request_id_reused",
            f"request id {request.request_id} was already used for a different request",
        )
    return msgspec.structs.replace(first.reply, replayed=True)


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)
