"""Daily clearing (日结/清算) per site and business day, and the 通存通兑 settlement: pure.

The caller loads ledger entries as :class:`ClearingEntry` values (any superset of the day:
entries of other sites and days are left out here) and calls :func:`clear_day`; it stores
the :class:`DayReport` and, when it recomputes the day, passes the stored one and the new
one to :func:`revise`. No I/O: the exports (:mod:`central.core.clearing_export`, re-exported
here) return bytes.

**Business day.** A site's day ``D`` runs from ``D cutoff:00`` to ``D+1 cutoff:00`` in the
site's time zone (:class:`SiteDay`): with cut-off 4 in Asia/Shanghai, a purchase at 02:30
local belongs to the previous day. Across a DST change the day is 23 or 25 hours long; a
cut-off in a skipped hour starts the day at the first instant after the gap, one in a
repeated hour at its first occurrence. HQ's own operations (``site`` None) clear under
HQ's configuration.

**Where an entry is cleared.** At ``site`` (where it happened; None = HQ), except a refund
or correction that names ``for_site`` (the site of the purchase it adjusts, e.g. an HQ
supervisor's 消费更正): it reduces what that site served, so it is cleared there, and its
adjustment line shows where it was made and by whom.

**Signs.** A :class:`ClearingEntry` carries the ledger's signs: fen per purse, positive =
credited to the cardholder (a purchase is negative). A report's totals are positive in
their natural direction (purchases, payouts, fees and expiries count up), except
``correction_fen`` (positive = given back; a correction that charged more is negative),
``ledger_net_fen`` (the ledger's own sum) and ``net_position_fen``. The totals
(:class:`ClearingTotals`):

- ``recharge_*_fen``: money in to the cash purse, by method (``unspecified``: no method
  recorded, e.g. a kiosk commit); ``deposit_fen``: 押金 taken;
- ``payout_cash_fen`` / ``payout_deposit_fen``: cash purse and deposit paid out when an
  account is cancelled;
- ``taken_in_fen`` = recharges + deposits − payouts: money the location holds;
- ``purchase_fen`` = ``purchase_cash_fen`` + ``purchase_subsidy_fen``: sales, by purse;
- ``purchase_refund_fen`` (goods returned) and ``correction_fen``: given back;
- ``ticket_sale_fen``: tickets sold from the cash purse (a ticket *use* moves no money:
  it is counted in ``ticket_uses``);
- ``consumption_fen`` = purchases + ticket sales − refunds − corrections: value served;
- ``subsidy_used_fen``: subsidy spent on purchases net of subsidy given back; granted,
  expired, restored and forfeited subsidy as their own totals (no cash moves for them);
- ``fee_fen``: kept by the operator (cancel and reissue fees) out of the purses;
- ``opening_fen``: balances imported from an old system;
- ``ledger_net_fen``: the sum of every purse of every entry — how much the day changed
  what cardholders hold. It always equals recharges + deposits + opening + granted +
  restored + refunds + corrections − purchases − ticket sales − payouts − fees − expired −
  forfeited (the tests hold the module to this);
- ``net_position_fen`` = ``consumption_fen`` − ``taken_in_fen`` (see below).

**Settlement (通存通兑).** Stored value is one pool, held for HQ: a site that takes in a
recharge holds money that belongs to the pool; a site that serves a purchase paid from the
pool (cash or subsidy purse) delivered goods without being paid. So each site's net
position is *value served there − money taken in there*: positive, HQ pays the site;
negative, the site remits to HQ. HQ is the other side of every transfer: its net is minus
the sum of the sites', so the whole list sums to zero. HQ's own desk (recharges and
tickets sold at HQ) is shown for information; it settles with nobody.

Fees, subsidies and opening balances move no cash at a site, so they stay out of the
position: a fee comes out of a purse whose cash was already taken in (as a recharge or a
deposit, which the site holds and remits), so counting it again would count it twice; a
subsidy is funded by HQ, and the part spent at a site is in what the site served.

Worked example (one day). Site A takes ¥300 cash and ¥200 bank recharges and sells ¥120
(¥20 of it subsidy): served 120.00, taken in 500.00, net −380.00 — A remits ¥380.00.
Site B takes nothing and sells ¥300 (¥100 subsidy), then an HQ supervisor gives back ¥34.20
of a wrongly keyed sale (``for_site`` B): served 265.80, net +265.80 — HQ pays B ¥265.80.
HQ: −(−380.00 + 265.80) = +114.20 — it receives ¥114.20 net; −380.00 + 265.80 + 114.20 = 0.

**Revisions.** A report is a function of its entries: the same entries in any order give
byte-identical JSON and the same ``digest``. :func:`revise` keeps revision 1 while a
recomputation has the same digest, and bumps it when it differs (late offline records), with
a :class:`Revision` note: which totals changed, and how many entries are new. The ledger is
append-only, so the entries a recomputation has beyond the previous one's are exactly the
late ones; ``late_since`` is the newest ``received_at`` the previous computation had seen.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Struct

from central.core.amounts import format_yuan
from central.core.clearing_export import (
    HQ_LABEL,
    encode_csv,
    settlement_csv,
    site_label,
    to_csv,
    to_json,
)
from central.core.effects import PostingKind
from protocol.messages import RechargeMethod

# The exports (and format_yuan) live in their own modules; importing them from here keeps
# working.
__all__ = [
    "ENTRY_KINDS",
    "HQ_LABEL",
    "TOTAL_FIELDS",
    "AdjustmentLine",
    "Change",
    "ClearingEntry",
    "ClearingError",
    "ClearingTotals",
    "DayReport",
    "Direction",
    "EntryKind",
    "Revision",
    "Settlement",
    "SettlementLine",
    "SiteDay",
    "business_day",
    "clear_day",
    "clear_days",
    "day_start",
    "day_window",
    "encode_csv",
    "format_yuan",
    "revise",
    "settle",
    "settlement_csv",
    "to_csv",
    "to_json",
    "totals_of",
]

#: Every ledger kind: what operations post (:data:`PostingKind`), what site records post
#: (:mod:`central.core.ledger`) and the seed's imported balances.
EntryKind = PostingKind | Literal["purchase", "ticket_use", "opening"]

_Purse = Literal["cash", "subsidy", "deposit"]
#: The purses each kind may move; anything else is a malformed entry, refused up front so
#: every fen of an entry lands in exactly one total.
_PURSES: dict[str, frozenset[_Purse]] = {
    "purchase": frozenset({"cash", "subsidy"}),
    "ticket_use": frozenset(),
    "recharge": frozenset({"cash"}),
    "refund": frozenset({"cash", "subsidy"}),
    "correction": frozenset({"cash", "subsidy"}),
    "opening": frozenset({"cash", "subsidy", "deposit"}),
    "deposit": frozenset({"deposit"}),
    "refund_cash": frozenset({"cash"}),
    "refund_deposit": frozenset({"deposit"}),
    "fee": frozenset({"cash", "deposit"}),
    "subsidy_grant": frozenset({"subsidy"}),
    "subsidy_expire": frozenset({"subsidy"}),
    "subsidy_restore": frozenset({"subsidy"}),
    "subsidy_forfeit": frozenset({"subsidy"}),
    "ticket_sale": frozenset({"cash"}),
}
ENTRY_KINDS: frozenset[str] = frozenset(_PURSES)
_ADJUSTMENTS = frozenset({"refund", "correction"})


class ClearingError(ValueError):
    """A clearing input or call that cannot be right (the message says which and why)."""


class ClearingEntry(Struct, frozen=True, kw_only=True):
    """One ledger entry as clearing sees it. Amounts carry the ledger's signs (positive =
    credited to the cardholder). ``(entry_id, kind)`` is unique, as in the ledger.

    ``site`` is where it happened (None: an HQ operation); ``for_site``, on a refund or a
    correction only, is the site of the purchase it adjusts, where it is cleared.
    ``received_at`` is when central got it (late offline records arrive days after
    ``at``). ``method`` is a recharge's or deposit's payment method when known.
    """

    entry_id: str
    kind: EntryKind
    site: str | None
    person_id: str
    at: datetime
    received_at: datetime
    cash_fen: int = 0
    subsidy_fen: int = 0
    deposit_fen: int = 0
    ticket_uses: int = 0
    method: RechargeMethod | None = None
    for_site: str | None = None
    ref: str | None = None
    operator: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ENTRY_KINDS:
            raise ClearingError(f"entry {self.entry_id}: unknown kind {self.kind!r}")
        if self.at.utcoffset() is None or self.received_at.utcoffset() is None:
            raise ClearingError(f"entry {self.entry_id}: times must be timezone-aware")
        allowed = _PURSES[self.kind]
        for purse, fen in (
            ("cash", self.cash_fen),
            ("subsidy", self.subsidy_fen),
            ("deposit", self.deposit_fen),
        ):
            if fen and purse not in allowed:
                raise ClearingError(
                    f"entry {self.entry_id}: a {self.kind} moves no {purse} purse ({fen} fen)"
                )
        if self.ticket_uses and self.kind != "ticket_use":
            raise ClearingError(f"entry {self.entry_id}: only a ticket_use counts uses")
        if self.for_site is not None and self.kind not in _ADJUSTMENTS:
            raise ClearingError(
                f"entry {self.entry_id}: only refunds and corrections name for_site"
            )

    @property
    def key(self) -> tuple[str, str]:
        """The ledger's unique key."""
        return (self.entry_id, self.kind)

    @property
    def cleared_at(self) -> str | None:
        """The site whose clearing holds this entry (None: HQ)."""
        return self.for_site if self.for_site is not None else self.site


class SiteDay(Struct, frozen=True, kw_only=True):
    """How a site's business day is cut: its time zone and the local hour a day starts."""

    timezone: str = "Asia/Shanghai"
    cutoff_hour: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.cutoff_hour <= 23:
            raise ClearingError(f"cut-off hour is 0..23, not {self.cutoff_hour}")
        _zone(self.timezone)


class ClearingTotals(Struct, frozen=True, kw_only=True):
    """A day's totals in fen (signs and definitions: see the module docstring)."""

    recharge_fen: int = 0
    recharge_cash_fen: int = 0
    recharge_bank_fen: int = 0
    recharge_online_fen: int = 0
    recharge_unspecified_fen: int = 0
    deposit_fen: int = 0
    payout_cash_fen: int = 0
    payout_deposit_fen: int = 0
    taken_in_fen: int = 0
    purchase_fen: int = 0
    purchase_cash_fen: int = 0
    purchase_subsidy_fen: int = 0
    purchase_refund_fen: int = 0
    correction_fen: int = 0
    ticket_sale_fen: int = 0
    consumption_fen: int = 0
    subsidy_granted_fen: int = 0
    subsidy_used_fen: int = 0
    subsidy_expired_fen: int = 0
    subsidy_restored_fen: int = 0
    subsidy_forfeited_fen: int = 0
    fee_fen: int = 0
    opening_fen: int = 0
    ticket_uses: int = 0
    ledger_net_fen: int = 0
    net_position_fen: int = 0


TOTAL_FIELDS: tuple[str, ...] = ClearingTotals.__struct_fields__


class AdjustmentLine(Struct, frozen=True, kw_only=True):
    """A refund or correction cleared on the day, with who made it and where (None: HQ).
    ``given_back_fen`` = cash + subsidy credited (negative: a correction that charged)."""

    entry_id: str
    kind: str
    at: datetime
    person_id: str
    made_at: str | None
    ref: str | None
    operator: str | None
    cash_fen: int
    subsidy_fen: int
    given_back_fen: int


class Change(Struct, frozen=True, kw_only=True):
    """One figure a revision changed: ``totals.<name>``, ``counts.<kind>``,
    ``entry_count``, ``timezone`` or ``cutoff_hour``."""

    field: str
    before: int | str
    after: int | str


class Revision(Struct, frozen=True, kw_only=True):
    """Why a day's report got revision ``revision``: ``late_entries`` entries more than the
    previous computation (``previous_digest``) had, which had seen entries received up to
    ``late_since``; ``changed`` lists each figure that moved; ``because`` says it in words."""

    revision: int
    previous_digest: str
    late_entries: int
    late_since: datetime | None
    changed: tuple[Change, ...]
    because: str


class DayReport(Struct, frozen=True, kw_only=True):
    """The clearing of one site (None: HQ) for one business day.

    ``starts_at``/``ends_at`` bound the day in UTC; ``counts`` is entries per kind;
    ``as_of`` the newest ``received_at`` among them. ``digest`` (SHA-256 of the report's
    content, revision fields excluded) identifies a computation; ``revision`` starts at 1
    and ``revisions`` keeps every later revision's note.
    """

    site: str | None
    business_day: date
    timezone: str
    cutoff_hour: int
    starts_at: datetime
    ends_at: datetime
    totals: ClearingTotals
    counts: dict[str, int]
    entry_count: int
    as_of: datetime | None
    adjustments: tuple[AdjustmentLine, ...]
    digest: str = ""
    revision: int = 1
    revisions: tuple[Revision, ...] = ()


# --- business days -----------------------------------------------------------------------


def _zone(tz: str | ZoneInfo) -> ZoneInfo:
    if isinstance(tz, ZoneInfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ClearingError(f"unknown time zone {tz!r}") from exc


def day_start(day: date, tz: str | ZoneInfo, cutoff_hour: int) -> datetime:
    """The UTC instant business day ``day`` starts: the first instant whose local time is
    ``day cutoff:00`` or later (fold 0: the earlier of a repeated hour, and a skipped hour's
    wall time maps to the end of the gap)."""
    local = datetime.combine(day, time(cutoff_hour), tzinfo=_zone(tz))
    return local.astimezone(UTC)


def day_window(day: date, tz: str | ZoneInfo, cutoff_hour: int) -> tuple[datetime, datetime]:
    """``[start, end)`` of business day ``day`` in UTC."""
    return day_start(day, tz, cutoff_hour), day_start(day + timedelta(days=1), tz, cutoff_hour)


def business_day(at: datetime, tz: str | ZoneInfo, cutoff_hour: int) -> date:
    """The business day ``at`` belongs to: the ``D`` whose :func:`day_window` holds it."""
    if at.utcoffset() is None:
        raise ClearingError("business_day needs a timezone-aware time")
    zone = _zone(tz)
    local = at.astimezone(zone)
    day = (local.replace(tzinfo=None) - timedelta(hours=cutoff_hour)).date()
    # The wall-clock guess is right except around a DST fold; the window decides.
    if at < day_start(day, zone, cutoff_hour):
        return day - timedelta(days=1)
    if at >= day_start(day + timedelta(days=1), zone, cutoff_hour):
        return day + timedelta(days=1)
    return day


# --- clearing ------------------------------------------------------------------------------


def clear_day(
    site: str | None, day: date, entries: Iterable[ClearingEntry], config: SiteDay
) -> DayReport:
    """The clearing of ``site`` (None: HQ) for business ``day``, from any entries (those of
    other sites or days are left out). Exact duplicates count once; the same key with other
    content is a :class:`ClearingError`. Revision 1 (see :func:`revise`)."""
    zone = _zone(config.timezone)
    start, end = day_window(day, zone, config.cutoff_hour)
    mine = [e for e in _unique(entries) if e.cleared_at == site and start <= e.at < end]
    report = DayReport(
        site=site,
        business_day=day,
        timezone=config.timezone,
        cutoff_hour=config.cutoff_hour,
        starts_at=start,
        ends_at=end,
        totals=totals_of(mine),
        counts=dict(sorted(Counter(e.kind for e in mine).items())),
        entry_count=len(mine),
        as_of=max((e.received_at for e in mine), default=None),
        adjustments=tuple(
            sorted(
                (_adjustment(e) for e in mine if e.kind in _ADJUSTMENTS),
                key=lambda a: (a.at, a.entry_id, a.kind),
            )
        ),
    )
    if report.as_of is not None:
        report = msgspec.structs.replace(report, as_of=report.as_of.astimezone(UTC))
    return msgspec.structs.replace(report, digest=_digest(report))


def clear_days(
    entries: Iterable[ClearingEntry],
    configs: dict[str | None, SiteDay],
    default: SiteDay,
) -> list[DayReport]:
    """Every site-day the entries touch (sorted by site, HQ first, then day): each entry's
    site clears under ``configs[site]``, or ``default``."""
    unique = list(_unique(entries))
    keys: set[tuple[str | None, date]] = set()
    for e in unique:
        config = configs.get(e.cleared_at, default)
        keys.add((e.cleared_at, business_day(e.at, config.timezone, config.cutoff_hour)))
    return [
        clear_day(site, day, unique, configs.get(site, default))
        for site, day in sorted(keys, key=lambda k: (k[0] is not None, k[0] or "", k[1]))
    ]


def _unique(entries: Iterable[ClearingEntry]) -> Iterable[ClearingEntry]:
    seen: dict[tuple[str, str], ClearingEntry] = {}
    for e in entries:
        other = seen.setdefault(e.key, e)
        if other is not e and other != e:
            raise ClearingError(f"entry {e.entry_id} ({e.kind}) appears twice, differently")
    return seen.values()


def totals_of(entries: Iterable[ClearingEntry]) -> ClearingTotals:
    """The totals of ``entries`` (all of them: no filtering by site or day)."""
    t: Counter[str] = Counter()
    for e in entries:
        money = e.cash_fen + e.subsidy_fen + e.deposit_fen
        t["ledger_net_fen"] += money
        match e.kind:
            case "recharge":
                t["recharge_fen"] += e.cash_fen
                t[f"recharge_{e.method or 'unspecified'}_fen"] += e.cash_fen
            case "deposit":
                t["deposit_fen"] += e.deposit_fen
            case "refund_cash":
                t["payout_cash_fen"] -= e.cash_fen
            case "refund_deposit":
                t["payout_deposit_fen"] -= e.deposit_fen
            case "purchase":
                t["purchase_fen"] -= money
                t["purchase_cash_fen"] -= e.cash_fen
                t["purchase_subsidy_fen"] -= e.subsidy_fen
                t["subsidy_used_fen"] -= e.subsidy_fen
            case "refund":
                t["purchase_refund_fen"] += money
                t["subsidy_used_fen"] -= e.subsidy_fen
            case "correction":
                t["correction_fen"] += money
                t["subsidy_used_fen"] -= e.subsidy_fen
            case "ticket_sale":
                t["ticket_sale_fen"] -= e.cash_fen
            case "ticket_use":
                t["ticket_uses"] += e.ticket_uses
            case "subsidy_grant":
                t["subsidy_granted_fen"] += e.subsidy_fen
            case "subsidy_expire":
                t["subsidy_expired_fen"] -= e.subsidy_fen
            case "subsidy_restore":
                t["subsidy_restored_fen"] += e.subsidy_fen
            case "subsidy_forfeit":
                t["subsidy_forfeited_fen"] -= e.subsidy_fen
            case "fee":
                t["fee_fen"] -= money
            case "opening":
                t["opening_fen"] += money
    t["taken_in_fen"] = (
        t["recharge_fen"] + t["deposit_fen"] - t["payout_cash_fen"] - t["payout_deposit_fen"]
    )
    t["consumption_fen"] = (
        t["purchase_fen"] + t["ticket_sale_fen"] - t["purchase_refund_fen"] - t["correction_fen"]
    )
    t["net_position_fen"] = t["consumption_fen"] - t["taken_in_fen"]
    return ClearingTotals(**t)


def _adjustment(e: ClearingEntry) -> AdjustmentLine:
    return AdjustmentLine(
        entry_id=e.entry_id,
        kind=e.kind,
        at=e.at.astimezone(UTC),
        person_id=e.person_id,
        made_at=e.site,
        ref=e.ref,
        operator=e.operator,
        cash_fen=e.cash_fen,
        subsidy_fen=e.subsidy_fen,
        given_back_fen=e.cash_fen + e.subsidy_fen,
    )


def _digest(report: DayReport) -> str:
    body = msgspec.structs.replace(report, digest="", revision=0, revisions=())
    return hashlib.sha256(msgspec.json.encode(body, order="sorted")).hexdigest()


# --- revisions -----------------------------------------------------------------------------


def revise(previous: DayReport | None, new: DayReport) -> DayReport:
    """The report to keep after computing ``new`` for a day whose stored report is
    ``previous``: ``new`` as revision 1 if there was none; ``previous`` itself if nothing
    changed (so a recomputation is a no-op); else ``new`` as the next revision, with a note
    of what changed and why."""
    if previous is None:
        return msgspec.structs.replace(new, revision=1, revisions=())
    if (previous.site, previous.business_day) != (new.site, new.business_day):
        raise ClearingError(
            f"cannot revise {site_label(previous.site)} {previous.business_day} "
            f"with {site_label(new.site)} {new.business_day}"
        )
    if previous.digest == new.digest:
        return previous
    changed = _changes(previous, new)
    late = max(0, new.entry_count - previous.entry_count)
    revision = previous.revision + 1
    since = "" if previous.as_of is None else f" (received after {previous.as_of.isoformat()})"
    names = ", ".join(c.field for c in changed) or "nothing but the digest"
    note = Revision(
        revision=revision,
        previous_digest=previous.digest,
        late_entries=late,
        late_since=previous.as_of,
        changed=changed,
        because=f"{late} late entr{'y' if late == 1 else 'ies'}{since}; changed: {names}",
    )
    return msgspec.structs.replace(new, revision=revision, revisions=(*previous.revisions, note))


def _changes(old: DayReport, new: DayReport) -> tuple[Change, ...]:
    out: list[Change] = []
    for name in ("timezone", "cutoff_hour", "entry_count"):
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            out.append(Change(field=name, before=before, after=after))
    for name in TOTAL_FIELDS:
        before, after = getattr(old.totals, name), getattr(new.totals, name)
        if before != after:
            out.append(Change(field=f"totals.{name}", before=before, after=after))
    for kind in sorted(old.counts.keys() | new.counts.keys()):
        before, after = old.counts.get(kind, 0), new.counts.get(kind, 0)
        if before != after:
            out.append(Change(field=f"counts.{kind}", before=before, after=after))
    return tuple(out)


# --- settlement ----------------------------------------------------------------------------

Direction = Literal["hq_pays", "site_remits", "even"]


class SettlementLine(Struct, frozen=True, kw_only=True):
    """One site's 通存通兑 position over the reports settled: ``net_fen`` =
    ``consumption_fen`` − ``taken_in_fen``; positive, HQ pays the site."""

    site: str
    first_day: date
    last_day: date
    days: int
    consumption_fen: int
    subsidy_used_fen: int
    taken_in_fen: int
    net_fen: int
    direction: Direction


class Settlement(Struct, frozen=True, kw_only=True):
    """HQ's settlement list. ``hq_net_fen`` = −Σ ``lines.net_fen``: what HQ receives net
    (negative: pays out net), so the lines and HQ sum to zero. ``hq_desk_*`` is what HQ's
    own desk served and took in (it settles with nobody)."""

    lines: tuple[SettlementLine, ...]
    sites_net_fen: int
    hq_net_fen: int
    hq_desk_consumption_fen: int
    hq_desk_taken_in_fen: int


def settle(reports: Sequence[DayReport]) -> Settlement:
    """Settle the given site-days (one report per site and day: the latest revision)."""
    seen: set[tuple[str | None, date]] = set()
    by_site: dict[str, list[DayReport]] = {}
    hq: list[DayReport] = []
    for r in reports:
        if (r.site, r.business_day) in seen:
            raise ClearingError(f"two reports for {site_label(r.site)} on {r.business_day}")
        seen.add((r.site, r.business_day))
        if r.site is None:
            hq.append(r)
        else:
            by_site.setdefault(r.site, []).append(r)
    lines = tuple(_line(site, by_site[site]) for site in sorted(by_site))
    sites_net = sum(line.net_fen for line in lines)
    return Settlement(
        lines=lines,
        sites_net_fen=sites_net,
        hq_net_fen=-sites_net,
        hq_desk_consumption_fen=sum(r.totals.consumption_fen for r in hq),
        hq_desk_taken_in_fen=sum(r.totals.taken_in_fen for r in hq),
    )


def _line(site: str, reports: list[DayReport]) -> SettlementLine:
    consumption = sum(r.totals.consumption_fen for r in reports)
    taken = sum(r.totals.taken_in_fen for r in reports)
    net = consumption - taken
    days = [r.business_day for r in reports]
    return SettlementLine(
        site=site,
        first_day=min(days),
        last_day=max(days),
        days=len(days),
        consumption_fen=consumption,
        subsidy_used_fen=sum(r.totals.subsidy_used_fen for r in reports),
        taken_in_fen=taken,
        net_fen=net,
        direction="hq_pays" if net > 0 else "site_remits" if net < 0 else "even",
    )
