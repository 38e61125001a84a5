"""The books after a soak: what every terminal was told, against central's records and ledger.

:class:`SoakLog` is filled by the simulated terminals while the soak runs — every record
number they sent, every decision they showed, every recharge whose money was taken. Once the
chain has converged, :func:`check` reads central's and every edge's SQLite and counts:

- **lost**: a granted decision a terminal was told (a door opened, a punch taken, a sale
  approved, a recharge committed — decided by the edge, or by a door or clock on its own
  while cut off) that central does not hold;
- **duplicated**: a terminal record held twice at central;
- **extra**: a record at central naming a terminal record number that terminal never sent;
- **wrong**: held, but not as told (refused although the terminal was told yes, another
  amount);
- **paid, not credited**: a recharge whose money was taken, not credited exactly once;
- **balance ≠ ledger**: an account whose balance is not the sum of its ledger entries, and
  money records with no ledger entry;
- **outboxes not drained** and terminal buffers still held;
- **anomalies**: clock skew expected (a terminal whose clock jumped and was heard online)
  against raised, and any other anomaly kind (none is expected).

All must be zero (or equal) for the soak to pass.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from firmware_sim.terminals import Outcome

#: central's policy default (``clock_skew_s``): a record further off is an anomaly.
CLOCK_SKEW_LIMIT_S = 300
#: What each told kind must be recorded as at central.
RECORD_KIND = {
    "door": "door.access",
    "attendance": "attendance.punch",
    "pos": "pos.purchase",
    "recharge": "recharge.commit",
}
GRANTED_FIELD = {
    "door.access": "granted",
    "attendance.punch": "accepted",
    "pos.purchase": "approved",
    "recharge.commit": None,
}

Key = tuple[str, str, int]  # (site, terminal, terminal record number)


@dataclass(frozen=True, slots=True)
class Told:
    """One decision a terminal showed."""

    site: str
    terminal: str
    kind: str
    rec: int
    ok: bool
    code: str
    amount: int | None
    local: bool
    skewed: bool


@dataclass(slots=True)
class SoakLog:
    """Everything the simulated terminals did and were told."""

    sent_recs: set[Key] = field(default_factory=set)
    decisions: list[Told] = field(default_factory=list)
    #: pay_ref → (site, amount) for every recharge whose money the bank took.
    paid_refs: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: pay_ref → the results of its commits (a resumed commit may follow a cut one).
    commits: dict[str, list[Outcome]] = field(default_factory=lambda: defaultdict(list))
    #: "site/terminal" of every terminal whose clock was made to jump.
    jumped: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def sent(self, site: str, terminal: str, rec: int) -> None:
        """A record number went on the wire."""
        self.sent_recs.add((site, terminal, rec))

    def told(self, site: str, terminal: str, kind: str, outcome: Outcome, *, skewed: bool) -> None:
        """The terminal showed ``outcome``."""
        self.decisions.append(
            Told(
                site,
                terminal,
                kind,
                outcome.rec,
                outcome.ok,
                outcome.code,
                outcome.amount,
                outcome.local,
                skewed,
            )
        )

    def paid(self, site: str, pay_ref: str, amount: int) -> None:
        """The bank took ``amount`` under ``pay_ref``: it must be credited once."""
        self.paid_refs[pay_ref] = (site, amount)

    def committed(
        self, site: str, terminal: str, pay_ref: str, outcome: Outcome, *, skewed: bool
    ) -> None:
        """A commit of ``pay_ref`` was answered."""
        self.commits[pay_ref].append(outcome)
        self.decisions.append(
            Told(
                site,
                terminal,
                "recharge",
                outcome.rec,
                outcome.ok,
                outcome.code,
                outcome.amount,
                False,
                skewed,
            )
        )


@dataclass(slots=True)
class Verdict:
    """The figures of one soak and the invariants that failed (none, for a pass)."""

    told: int = 0
    granted: int = 0
    records_at_central: int = 0
    lost: int = 0
    duplicated: int = 0
    extra: int = 0
    wrong: int = 0
    paid: int = 0
    paid_not_credited: int = 0
    balance_mismatches: int = 0
    money_without_ledger: int = 0
    outbox_not_drained: int = 0
    terminal_buffers_held: int = 0
    disk_full_refusals: int = 0
    clock_skew_expected: int = 0
    clock_skew_raised: int = 0
    unexpected_anomalies: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    not_injected: dict[str, str] = field(default_factory=dict)
    max_outbox_age_s: float = 0.0
    converge_s: float | None = None
    duration_s: float = 0.0
    unexpected_exits: dict[str, int] = field(default_factory=dict)
    snapshot_interrupted: int = 0
    #: site → (database MiB, WAL MiB) at the end.
    edge_disk_mib: dict[str, tuple[float, float]] = field(default_factory=dict)
    harness_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every invariant held and the chain converged."""
        return not self.failures and self.converge_s is not None

    def summary(self) -> dict[str, Any]:
        """The figures as one flat-ish dict (the ``SOAK {json}`` line)."""
        return {
            "ok": self.ok,
            "duration_s": self.duration_s,
            "faults": self.faults,
            "not_injected": self.not_injected,
            "decisions_told": self.told,
            "granted_told": self.granted,
            "records_at_central": self.records_at_central,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "extra": self.extra,
            "wrong": self.wrong,
            "recharges_paid": self.paid,
            "paid_not_credited": self.paid_not_credited,
            "balance_mismatches": self.balance_mismatches,
            "money_without_ledger": self.money_without_ledger,
            "outbox_not_drained": self.outbox_not_drained,
            "terminal_buffers_held": self.terminal_buffers_held,
            "disk_full_refusals": self.disk_full_refusals,
            "clock_skew_expected": self.clock_skew_expected,
            "clock_skew_raised": self.clock_skew_raised,
            "unexpected_anomalies": self.unexpected_anomalies,
            "max_outbox_age_s": self.max_outbox_age_s,
            "converge_s": self.converge_s,
            "snapshot_interrupted": self.snapshot_interrupted,
            "edge_disk_mib": self.edge_disk_mib,
            "unexpected_exits": self.unexpected_exits,
            "failures": self.failures,
        }

    def table(self) -> list[str]:
        """The human-readable report."""
        rows: list[tuple[str, object]] = [("faults injected", sum(self.faults.values()))]
        rows += [(f"  {kind}", n) for kind, n in sorted(self.faults.items())]
        rows += [(f"  {kind}", f"not injected: {why}") for kind, why in self.not_injected.items()]
        converge = "did not converge" if self.converge_s is None else f"{self.converge_s} s"
        rows += [
            ("decisions told to terminals", self.told),
            ("  of which granted", self.granted),
            ("records produced (at central)", self.records_at_central),
            ("recharges paid", self.paid),
            ("money refused: disk full (expected)", self.disk_full_refusals),
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("extra (never sent)", self.extra),
            ("recorded otherwise than told", self.wrong),
            ("paid, not credited once", self.paid_not_credited),
            ("balance mismatches (≠ ledger sum)", self.balance_mismatches),
            ("money records without ledger entry", self.money_without_ledger),
            ("outboxes not drained (records)", self.outbox_not_drained),
            ("terminal buffers still held", self.terminal_buffers_held),
            (
                "clock-skew anomalies expected/raised",
                f"{self.clock_skew_expected}/{self.clock_skew_raised}",
            ),
            ("other anomalies", sum(self.unexpected_anomalies.values())),
            ("max outbox age during faults", f"{self.max_outbox_age_s} s"),
            ("time to converge after last fault", converge),
            ("central killed mid-snapshot", self.snapshot_interrupted),
            ("daemon crashes (restarted)", sum(self.unexpected_exits.values())),
        ]
        rows += [(f"  {name}", n) for name, n in sorted(self.unexpected_exits.items())]
        rows += [
            (f"edge {site} database / WAL at end", f"{db} / {wal} MiB")
            for site, (db, wal) in sorted(self.edge_disk_mib.items())
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines.append("RESULT: " + ("PASS" if self.ok else "FAIL"))
        lines += [f"  FAIL {f}" for f in self.failures]
        lines += [f"    e.g. {e}" for e in self.examples[:10]]
        return lines


def _central_records(conn: sqlite3.Connection) -> list[tuple[str, str, str, dict[str, Any], int]]:
    rows = conn.execute("SELECT site, kind, id, payload, applied FROM records").fetchall()
    out = []
    for site, kind, rid, payload, applied in rows:
        try:
            data = json.loads(payload)
        except ValueError:
            data = {}
        out.append((site, kind, rid, data, applied))
    return out


def _skew_s(data: dict[str, Any]) -> float:
    try:
        at = datetime.fromisoformat(str(data["at"]).replace("Z", "+00:00"))
        received = datetime.fromisoformat(str(data["received_at"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return 0.0
    return (received - at).total_seconds()


def check(  # noqa: PLR0915 - one pass over the books, counted in order
    log: SoakLog, *, central_db: Path, edges: dict[str, Path], buffers: dict[str, int]
) -> Verdict:
    """Count every invariant violation (see the module docstring)."""
    verdict = Verdict(harness_errors=list(log.errors))
    with contextlib.closing(sqlite3.connect(f"file:{central_db}?mode=ro", uri=True)) as conn:
        records = _central_records(conn)
        ledger_refs = Counter(
            ref for (ref,) in conn.execute("SELECT pay_ref FROM ledger WHERE pay_ref IS NOT NULL")
        )
        ledger_records = {
            rid
            for (rid,) in conn.execute("SELECT record_id FROM ledger WHERE record_id IS NOT NULL")
        }
        verdict.balance_mismatches = conn.execute(
            "SELECT count(*) FROM accounts a WHERE cash_fen + subsidy_fen !="
            " (SELECT coalesce(sum(cash_fen + subsidy_fen), 0) FROM ledger l"
            "  WHERE l.person_id = a.person_id)"
        ).fetchone()[0]
        anomalies = conn.execute("SELECT kind, detail FROM anomalies").fetchall()
    verdict.records_at_central = len(records)

    by_key: dict[Key, list[tuple[str, str, dict[str, Any]]]] = defaultdict(list)
    for site, kind, rid, data, _ in records:
        terminal, rec = data.get("terminal"), data.get("term_rec")
        if terminal is None or rec is None:
            continue
        key = (site, str(terminal), int(rec))
        by_key[key].append((kind, rid, data))
        if key not in log.sent_recs:
            verdict.extra += 1
            verdict.examples.append(f"extra: {kind} {rid} {key}")
    for key, held in by_key.items():
        kinds = Counter(kind for kind, _, _ in held)
        for kind, n in kinds.items():
            if n > 1:
                verdict.duplicated += n - 1
                verdict.examples.append(f"duplicated: {kind} {key} ×{n}")

    # Lost and wrong: every granted decision a terminal showed.
    expected_skew: set[str] = set()
    skewed_terminals: set[str] = set()
    for told in log.decisions:
        verdict.told += 1
        if told.code == "disk_full":
            verdict.disk_full_refusals += 1
        if told.skewed:
            skewed_terminals.add(f"{told.site}/{told.terminal}")
        if not told.ok:
            continue
        verdict.granted += 1
        key = (told.site, told.terminal, told.rec)
        want = RECORD_KIND[told.kind]
        found = [(rid, data) for kind, rid, data in by_key.get(key, []) if kind == want]
        if not found:
            verdict.lost += 1
            verdict.examples.append(f"lost: {want} {key} told {told.code}")
            continue
        rid, data = found[0]
        granted_field = GRANTED_FIELD[want]
        if granted_field is not None and data.get(granted_field) is not True:
            verdict.wrong += 1
            verdict.examples.append(f"wrong: {want} {key} told ok, recorded refused")
        if want == "pos.purchase" and told.amount is not None and data.get("amount") != told.amount:
            verdict.wrong += 1
            verdict.examples.append(
                f"wrong: {key} told {told.amount} fen, recorded {data.get('amount')}"
            )
        if (
            told.skewed
            and not told.local
            and not data.get("offline")
            and (abs(_skew_s(data)) > CLOCK_SKEW_LIMIT_S)
        ):
            expected_skew.add(f"{told.site}/{told.terminal}")

    # Money: every approved purchase and every commit has its ledger entry; every paid
    # recharge is credited exactly once.
    for _, kind, rid, data, _ in records:
        money = (kind == "pos.purchase" and data.get("approved") and data.get("amount")) or (
            kind == "recharge.commit"
        )
        if money and rid not in ledger_records:
            verdict.money_without_ledger += 1
            verdict.examples.append(f"no ledger entry: {kind} {rid}")
    verdict.paid = len(log.paid_refs)
    for pay_ref in log.paid_refs:
        if ledger_refs.get(pay_ref, 0) != 1:
            verdict.paid_not_credited += 1
            codes = [o.code for o in log.commits.get(pay_ref, [])]
            verdict.examples.append(
                f"paid {pay_ref}: credited {ledger_refs.get(pay_ref, 0)}×, commits {codes}"
            )

    for site, path in edges.items():
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                left = conn.execute("SELECT count(*) FROM outbox WHERE acked = 0").fetchone()[0]
        except sqlite3.Error as exc:
            verdict.failures.append(f"{site}: cannot read the edge's outbox: {exc}")
            continue
        verdict.outbox_not_drained += left
    verdict.terminal_buffers_held = sum(buffers.values())

    raised: set[str] = set()
    for kind, detail in anomalies:
        if kind == "clock_skew":
            with contextlib.suppress(ValueError, TypeError):
                raised.add(str(json.loads(detail).get("terminal")))
        else:
            verdict.unexpected_anomalies[kind] = verdict.unexpected_anomalies.get(kind, 0) + 1
    verdict.clock_skew_expected = len(expected_skew)
    verdict.clock_skew_raised = len(raised)

    failures = verdict.failures
    for name in (
        "lost",
        "duplicated",
        "extra",
        "wrong",
        "paid_not_credited",
        "balance_mismatches",
        "money_without_ledger",
        "outbox_not_drained",
        "terminal_buffers_held",
    ):
        if getattr(verdict, name):
            failures.append(f"{name}: {getattr(verdict, name)}")
    if expected_skew - raised:
        failures.append(f"clock skew not flagged for {sorted(expected_skew - raised)}")
    skewed_terminals |= log.jumped
    if raised - skewed_terminals:
        failures.append(
            "clock skew flagged for terminals whose clock never jumped: "
            f"{sorted(raised - skewed_terminals)}"
        )
    if verdict.unexpected_anomalies:
        failures.append(f"unexpected anomalies: {verdict.unexpected_anomalies}")
    # Hung daemons and terminal errors the harness saw while it ran.
    failures.extend(log.errors[:10])
    if len(log.errors) > 10:
        failures.append(f"… and {len(log.errors) - 10} more errors")
    return verdict
