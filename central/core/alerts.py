"""Alert rules: from what central knows about each site, the conditions that need a person,
and how the set of open alerts follows them. Pure: no I/O, no clock (``now_ms`` is given).

Two steps, both functions over values:

1. :func:`conditions` — every condition that holds *now* (a site offline, a terminal
   offline, records unsynced for too long …), each with a stable ``key`` (one alert per key
   at a time), a severity and a ``hold_s``: how long it must hold before it becomes an alert
   (the detection time; a site flapping for a second pages nobody).
2. :func:`plan` — given the conditions, the keys of alerts already open (or acknowledged),
   and when each not-yet-open condition was first seen, what to open, what to resolve (its
   condition cleared), and which first-seen times to keep.

Severities match support response times (``RESPONSE``): *emergency* — a site offline, or
all its terminals down; *important* — a terminal offline, records unsynced past an hour,
feed or blacklist lag, clock skew, an edge's disk nearly full; *normal* — dead letters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["emergency", "important", "normal"]
SEVERITIES: tuple[Severity, ...] = ("emergency", "important", "normal")
#: Who answers, and how fast (docs/monitoring.md).
RESPONSE: dict[Severity, str] = {
    "emergency": "15 min, 24/7",
    "important": "4 h, business hours",
    "normal": "next business day",
}
#: Every kind of alert, with its severity.
KINDS: dict[str, Severity] = {
    "site_offline": "emergency",
    "terminals_down": "emergency",
    "terminal_offline": "important",
    "terminal_list_lag": "important",
    "terminal_records_missing": "normal",
    "unsynced_records": "important",
    "feed_lag": "important",
    "blacklist_lag": "important",
    "clock_skew": "important",
    "disk_low": "important",
    "disk_full": "emergency",
    "door_forced": "important",
    "door_held": "important",
    "dead_letters": "normal",
}


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """When a condition becomes an alert. The defaults suit production; tests shorten the
    detection times."""

    #: A site that said goodbye (or whose Will the broker published) this long ago. The
    #: broker publishes the Will 1.5 keepalives (45 s by default) after the edge went silent.
    site_offline_s: float = 60.0
    #: A terminal (or all of a site's terminals) reported offline for this long.
    terminal_offline_s: float = 120.0
    #: The oldest record not yet at HQ is older than this.
    unsynced_s: float = 3600.0
    #: An online site central has not brought up to its feed or blacklist head for this long.
    lag_s: float = 300.0
    #: A terminal that decides locally holds lists behind its site's for this long (as the
    #: edge measures it), or record numbers the edge cannot get back from it.
    terminal_list_lag_s: float = 600.0
    #: The edge's clock differs from central's by more than this.
    clock_skew_s: float = 60.0
    #: An edge's data disk has less free space than this.
    disk_free_min_bytes: int = 1 << 30
    #: Dead letters within this window raise the alert; none for this long resolves it.
    dead_letter_window_s: float = 3600.0
    #: A door forced or held open within this window raises the alert; it resolves once the
    #: door has been quiet this long (or someone acknowledges it).
    door_event_window_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class TerminalFact:
    """A terminal as the edge last reported it."""

    id: str
    kind: str
    online: bool
    #: A terminal that decides locally: lists behind the site's, for how long (edge's
    #: measure), and record numbers missing at the edge.
    lists_behind: int = 0
    lists_behind_s: float | None = None
    records_missing: int = 0


@dataclass(frozen=True, slots=True)
class DoorEventFact:
    """A door's forced / held-open events within the window."""

    door: str
    event: str
    count: int
    last_ms: int


@dataclass(frozen=True, kw_only=True)
class SiteFacts:
    """What central knows about one site now (``None``: not known)."""

    site: str
    online: bool
    #: The site has connected at least once (a site never installed is not "offline").
    ever_seen: bool
    terminals: tuple[TerminalFact, ...] | None = None
    #: Age of the oldest record the site holds that HQ has not acked.
    unsynced_age_s: float | None = None
    #: Feed / blacklist versions central has not (as far as it knows) brought the site to.
    feed_behind: int = 0
    blacklist_behind: int = 0
    #: The edge's clock minus central's, from its latest health report.
    clock_skew_s: float | None = None
    disk_free_bytes: int | None = None
    #: The edge's store: ``low`` (below its reserve: money refused) or ``full``.
    disk_state: str | None = None
    #: Dead letters from this site within the window.
    dead_letters: int = 0
    #: Doors forced or held open within the window (records the site sent).
    door_events: tuple[DoorEventFact, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Condition:
    """Something that holds now and needs a person once it has held for ``hold_s``."""

    key: str
    kind: str
    site: str | None
    subject: str = ""
    detail: dict[str, str | int | float | None] = field(default_factory=dict)
    hold_s: float = 0.0

    @property
    def severity(self) -> Severity:
        """From the kind (``KINDS``)."""
        return KINDS[self.kind]


def conditions(
    sites: Iterable[SiteFacts], *, hq_dead_letters: int = 0, limits: Thresholds
) -> list[Condition]:
    """Every condition holding now, over every site (and HQ's own dead letters)."""
    out: list[Condition] = []
    for facts in sites:
        out.extend(site_conditions(facts, limits))
    if hq_dead_letters:
        out.append(_dead_letters(None, hq_dead_letters))
    return out


def site_conditions(facts: SiteFacts, limits: Thresholds) -> list[Condition]:
    """The conditions of one site."""
    site = facts.site
    out: list[Condition] = []
    if facts.dead_letters:
        out.append(_dead_letters(site, facts.dead_letters))
    out.extend(  # reported records: known whether the site is up now or not
        Condition(
            key=f"{event.event}:{site}/{event.door}",
            kind=event.event,
            site=site,
            subject=event.door,
            detail={"count": event.count, "last_ms": event.last_ms},
        )
        for event in facts.door_events
    )
    if not facts.online:
        if facts.ever_seen:
            out.append(
                Condition(
                    key=f"site_offline:{site}",
                    kind="site_offline",
                    site=site,
                    hold_s=limits.site_offline_s,
                )
            )
        return out  # nothing else is known about a site that is not connected
    out.extend(_terminal_conditions(facts, limits))
    out.extend(_smart_terminal_conditions(facts, limits))
    if facts.unsynced_age_s is not None and facts.unsynced_age_s > limits.unsynced_s:
        out.append(
            Condition(
                key=f"unsynced_records:{site}",
                kind="unsynced_records",
                site=site,
                detail={"oldest_age_s": round(facts.unsynced_age_s)},
            )
        )
    for kind, behind in (
        ("feed_lag", facts.feed_behind),
        ("blacklist_lag", facts.blacklist_behind),
    ):
        if behind > 0:
            out.append(
                Condition(
                    key=f"{kind}:{site}",
                    kind=kind,
                    site=site,
                    detail={"versions_behind": behind},
                    hold_s=limits.lag_s,
                )
            )
    if facts.clock_skew_s is not None and abs(facts.clock_skew_s) > limits.clock_skew_s:
        out.append(
            Condition(
                key=f"clock_skew:{site}",
                kind="clock_skew",
                site=site,
                detail={"skew_s": round(facts.clock_skew_s, 1)},
            )
        )
    free = facts.disk_free_bytes
    if facts.disk_state in ("low", "full"):
        # the edge is refusing money (and, when full, recording nothing): say so at once
        out.append(
            Condition(
                key=f"disk_full:{site}",
                kind="disk_full",
                site=site,
                detail={"state": facts.disk_state, "free_mib": (free or 0) >> 20},
            )
        )
    elif free is not None and free < limits.disk_free_min_bytes:
        out.append(
            Condition(
                key=f"disk_low:{site}",
                kind="disk_low",
                site=site,
                detail={"free_mib": free >> 20},
            )
        )
    return out


def _terminal_conditions(facts: SiteFacts, limits: Thresholds) -> list[Condition]:
    terminals = facts.terminals
    if not terminals:
        return []
    down = [t for t in terminals if not t.online]
    if len(down) == len(terminals):
        return [
            Condition(
                key=f"terminals_down:{facts.site}",
                kind="terminals_down",
                site=facts.site,
                detail={"terminals": len(terminals)},
                hold_s=limits.terminal_offline_s,
            )
        ]
    return [
        Condition(
            key=f"terminal_offline:{facts.site}:{t.id}",
            kind="terminal_offline",
            site=facts.site,
            subject=t.id,
            detail={"terminal_kind": t.kind},
            hold_s=limits.terminal_offline_s,
        )
        for t in down
    ]


def _smart_terminal_conditions(facts: SiteFacts, limits: Thresholds) -> list[Condition]:
    """Terminals that decide locally: lists behind the site's (so a card barred at HQ may
    still be let in there) and records the edge cannot collect. The lag's hold counts from
    when the edge says it began, so an edge that reports a lag already old alerts at once."""
    out = []
    for t in facts.terminals or ():
        if t.lists_behind > 0:
            out.append(
                Condition(
                    key=f"terminal_list_lag:{facts.site}:{t.id}",
                    kind="terminal_list_lag",
                    site=facts.site,
                    subject=t.id,
                    detail={"lists_behind": t.lists_behind, "behind_s": t.lists_behind_s},
                    hold_s=max(0.0, limits.terminal_list_lag_s - (t.lists_behind_s or 0.0)),
                )
            )
        if t.records_missing > 0:
            out.append(
                Condition(
                    key=f"terminal_records_missing:{facts.site}:{t.id}",
                    kind="terminal_records_missing",
                    site=facts.site,
                    subject=t.id,
                    detail={"records_missing": t.records_missing},
                    hold_s=limits.terminal_list_lag_s,
                )
            )
    return out


def _dead_letters(site: str | None, n: int) -> Condition:
    return Condition(
        key=f"dead_letters:{site or 'HQ'}", kind="dead_letters", site=site, detail={"count": n}
    )


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What :func:`plan` decided."""

    #: Conditions that have now held for their ``hold_s``: open an alert for each.
    open: list[tuple[Condition, int]]  # (condition, first seen ms)
    #: Keys of open or acknowledged alerts whose condition cleared: resolve them.
    resolve: list[str]
    #: First-seen times of conditions still within their hold time (replaces the old map).
    pending: dict[str, int]


def plan(
    current: Iterable[Condition],
    *,
    active: Iterable[str],
    pending: Mapping[str, int],
    now_ms: int,
) -> Plan:
    """Follow the conditions: ``active`` are the keys of open or acknowledged alerts,
    ``pending`` when each condition not yet alerted was first seen."""
    active_keys = set(active)
    seen: set[str] = set()
    to_open: list[tuple[Condition, int]] = []
    still: dict[str, int] = {}
    for cond in current:
        if cond.key in seen:
            continue
        seen.add(cond.key)
        if cond.key in active_keys:
            continue
        since = pending.get(cond.key, now_ms)
        if now_ms - since >= cond.hold_s * 1000:
            to_open.append((cond, since))
        else:
            still[cond.key] = since
    resolve = sorted(active_keys - seen)
    return Plan(open=to_open, resolve=resolve, pending=still)
