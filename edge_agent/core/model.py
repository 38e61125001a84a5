"""The edge's domain values: master data as the site sees it, and the site's policy.

Everything here is an immutable value. Central is the only writer of master data (brief,
invariant 4); the edge holds a replica (seeded, later fed) and decides from it. Money is
integer fen. Instants are timezone-aware UTC ``datetime``; "local" wall-clock notions (time
zones of access levels, meal periods, business days) are evaluated in the site's time zone
(``SitePolicy.timezone``) by the decision functions.
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any, Literal

from msgspec import Struct, field


class CardStatus(enum.StrEnum):
    """Lifecycle state of a card. Only ``active`` cards are let in or may spend."""

    ACTIVE = "active"
    LOST = "lost"  # 挂失
    FROZEN = "frozen"  # 冻结
    CANCELLED = "cancelled"  # 退卡
    REPLACED = "replaced"  # 补卡后的旧卡


class Person(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A cardholder: staff (员工) or member (会员)."""

    id: str
    name: str
    number: str = ""  # staff or member number
    kind: Literal["staff", "member"] = "member"
    department: str | None = None


class Card(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A physical card (or phone) bound to a person."""

    uid: str
    person_id: str
    status: CardStatus = CardStatus.ACTIVE
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    card_type: str = "standard"


class Account(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A person's purses as central last published them (``covers_seq`` = the highest seq of
    this site's outbox central had applied when it computed them). The edge adds its own
    pending deltas above ``covers_seq`` to get the available balance."""

    person_id: str
    cash_fen: int = 0
    subsidy_fen: int = 0
    subsidy_expires_at: datetime | None = None
    covers_seq: int = 0
    #: Per-purchase and per-day (site local day) spending limits; None = no limit.
    txn_limit_fen: int | None = None
    daily_limit_fen: int | None = None


class Ticket(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A count ticket (计次票: ``remaining`` uses) or a period ticket (期限票: valid from/to)
    for a ``service`` (a POS or door configured with that service consumes it)."""

    id: str
    person_id: str
    kind: Literal["count", "period"]
    service: str
    remaining: int | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None


class Interval(Struct, frozen=True, array_like=True):
    """Minutes since local midnight, ``start`` inclusive, ``end`` exclusive (0..1440)."""

    start: int
    end: int


class TimeZone(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A weekly schedule (门禁时段). ``weekly[d]`` lists the open intervals of weekday ``d``
    (0 = Monday … 6 = Sunday); on a holiday ``holiday`` applies instead."""

    id: str
    weekly: dict[int, list[Interval]] = field(default_factory=dict)
    holiday: list[Interval] = field(default_factory=list)


class DoorGroup(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Doors that share access rules and anti-passback (反潜回) state.

    ``hard`` anti-passback refuses a second entry without an exit in between; ``soft``
    lets it through but records the violation. ``fail_mode`` is what the door does when the
    edge cannot decide at all (store unavailable): ``secure`` stays shut, ``safe`` opens.
    """

    id: str
    name: str = ""
    anti_passback: Literal["none", "soft", "hard"] = "none"
    fail_mode: Literal["secure", "safe"] = "secure"


class Door(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One door, opened by a terminal. ``direction`` is which way its reader faces."""

    id: str
    group_id: str
    terminal_id: str
    name: str = ""
    direction: Literal["in", "out"] | None = None
    open_ms: int = 3000


class AccessLevel(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Door group × time zone, optionally limited to a validity period."""

    id: str
    door_group_id: str
    time_zone_id: str
    valid_from: datetime | None = None
    valid_to: datetime | None = None


class AccessGrant(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An access level assigned to a person, optionally for a validity period."""

    person_id: str
    access_level_id: str
    valid_from: datetime | None = None
    valid_to: datetime | None = None


class MealPeriod(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A canteen meal period (local time) with its per-card limits."""

    name: str
    window: Interval
    max_purchases: int | None = None
    max_amount_fen: int | None = None


class OfflinePolicy(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Caps that apply while the site is offline (brief: Offline policy)."""

    max_purchase_fen: int = 5000
    max_card_day_fen: int = 10000
    max_site_exposure_fen: int = 500000
    max_offline_s: int = 86400
    allow_recharge: bool = False


class SitePolicy(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-site policy, set centrally."""

    site: str
    timezone: str = "Asia/Shanghai"
    punch_dedupe_s: int = 60
    meal_periods: list[MealPeriod] = field(default_factory=list)
    offline: OfflinePolicy = field(default_factory=OfflinePolicy)
    #: A recharge prepared and neither committed nor aborted after this is reported.
    recharge_prepare_timeout_s: int = 600
    #: Sanity caps on one sale and one recharge (a mistyped ¥38000 instead of ¥38.00 is
    #: refused ``amount_invalid`` rather than charged). Default ¥10,000.00 each.
    purchase_cap_fen: int = 1_000_000
    recharge_cap_fen: int = 1_000_000


class TerminalConf(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A terminal registered at this site. ``config`` is sent in WELCOME (pos_mode,
    price_fen, menu, service, …)."""

    id: str
    kind: Literal["door", "attendance", "pos", "recharge"]
    key_hex: str
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)


class Holiday(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A local date on which time zones use their ``holiday`` intervals."""

    day: date
    name: str = ""
