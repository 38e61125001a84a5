"""Staged rollouts of a release to sites: a pure state machine.

:func:`start_rollout` plans a :class:`Rollout` of one version to a list of target sites;
:func:`apply` takes the rollout and one event — a site's report, a site's birth message, a
clock tick, an operator's command — and returns a :class:`Transition`: the new rollout and
the effects the caller performs, in order, after storing it (send an ``upgrade`` command,
retain-publish a site's desired version, write an audit line). Nothing here does I/O or
reads a clock; every value encodes with msgspec, so central stores the rollout as JSON.

**Stages.** Targets are ordered deterministically — the ``canary`` sites first, as given,
then the rest by sha256 of ``rollout id + site`` (so two rollouts do not always start at the
same sites) — and cut into stages: a count of sites, a percentage of the whole target list
(rounded up, at least one), or ``rest``. Sites left over after the last stage are an error
unless it is ``rest``; stages left empty are dropped. The first stage starts at once; a stage
*passes* when at least ``success_percent`` of its sites (rounded up) have succeeded, and
then the next starts. When the last stage passes the rollout is ``completed`` — sites still
queued (offline) then converge on their own through their desired version.

**Sites** move ``queued → downloading → installing → restarting`` and end ``succeeded``,
``failed``, ``rolled_back``, ``rejected`` (the edge refused the release, e.g. a bad
signature) or ``timed_out``. Reports only move a site forward; a late report after
``timed_out`` is taken (the site was slow, not dead), ``failed`` may become the more specific
``rolled_back``, and the other end states stay until an operator's :class:`Retry`. A site
that says it runs the version (its birth message) has succeeded, whatever came before.
Reports carry the command's attempt number; a report from an earlier attempt is ignored.

**Timeout.** A site in an in-progress state that has sent no report for ``timeout_s``
becomes ``timed_out`` on the next :class:`Tick`. Every report refreshes the clock, so the
edge's progress reports keep a long download alive; ``timeout_s`` must exceed the time the
edge spends restarting and proving itself healthy without reporting.

**Failure threshold.** A stage pauses the rollout (``paused``, reason
``failure_threshold``) when its failed sites (failed, rolled back, rejected, timed out)
reach ``max_failures``, or ``max_failure_percent`` of the stage (rounded up, at least one).
:class:`Resume` acknowledges the failures seen so far: the stage pauses again only when as
many *new* failures arrive.

**Paused** starts nothing: no command is sent, and sites that have not begun (``queued``,
``timed_out``) have their desired version set back to what they run, so an offline site that
returns during the pause stays put; sites already installing finish. :class:`Resume` sends
their commands again. **Aborted** sends nothing, ever again, and every site's desired
version becomes the version it runs (the new one for sites that got it). Reports are still
recorded after either — they are facts.

**Desired versions.** :func:`desired_versions` is what central retain-publishes per site;
:func:`apply` emits :class:`PublishDesired` exactly for the sites whose desired version (or
command attempt) changed, with the ``upgrade`` command an edge that comes back online acts
on.
"""

from __future__ import annotations

import hashlib
import math
import re
import typing
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Literal

from msgspec import Meta, Struct
from msgspec.structs import replace

from central.core.release import compare_versions, parse_version
from protocol.messages import Reply, Upgrade
from protocol.topics import is_valid_site_id

SiteState = Literal[
    "queued",
    "downloading",
    "installing",
    "restarting",
    "succeeded",
    "failed",
    "rolled_back",
    "rejected",
    "timed_out",
]
SITE_STATES: tuple[SiteState, ...] = typing.get_args(SiteState)
IN_PROGRESS: frozenset[SiteState] = frozenset({"downloading", "installing", "restarting"})
FAILURES: frozenset[SiteState] = frozenset({"failed", "rolled_back", "rejected", "timed_out"})
#: End states a report cannot leave (only a Retry can); ``failed`` → ``rolled_back`` aside.
FINAL: frozenset[SiteState] = frozenset({"succeeded", "failed", "rolled_back", "rejected"})
_RANK: dict[SiteState, int] = {"queued": 0, "downloading": 1, "installing": 2, "restarting": 3}
RolloutStatus = Literal["running", "paused", "aborted", "completed"]
PauseReason = Literal["manual", "failure_threshold"]
MAX_HISTORY = 20
MAX_ATTEMPT = 9999

RolloutId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,23}\Z")]
Percent = Annotated[int, Meta(ge=1, le=100)]
_ROLLOUT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,23}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class RolloutError(Exception):
    """An operator's command or a plan that cannot apply; the message says why."""


# --- values ---------------------------------------------------------------------------------


class StageSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How big a stage is (``count`` sites, ``percent`` of all targets, or neither: the
    rest) and its thresholds: pass at ``success_percent`` succeeded; pause at
    ``max_failures`` or ``max_failure_percent`` failed (default: 10 %, at least one site)."""

    count: Annotated[int, Meta(ge=1)] | None = None
    percent: Percent | None = None
    success_percent: Percent = 90
    max_failures: Annotated[int, Meta(ge=1)] | None = None
    max_failure_percent: Percent | None = None

    def __post_init__(self) -> None:
        if self.count is not None and self.percent is not None:
            raise ValueError("a stage is sized by `count` or by `percent`, not both")
        if self.max_failures is not None and self.max_failure_percent is not None:
            raise ValueError("give `max_failures` or `max_failure_percent`, not both")


class Stage(Struct, frozen=True, kw_only=True):
    """A planned stage: its sites, when it started and passed, and the failures a Resume
    acknowledged."""

    spec: StageSpec
    sites: tuple[str, ...]
    started_at: datetime | None = None
    passed_at: datetime | None = None
    failure_baseline: int = 0

    @property
    def success_needed(self) -> int:
        """Succeeded sites for the stage to pass."""
        return math.ceil(self.spec.success_percent * len(self.sites) / 100)

    @property
    def failure_limit(self) -> int:
        """New failures that pause the rollout."""
        if self.spec.max_failures is not None:
            return self.spec.max_failures
        percent = self.spec.max_failure_percent or 10
        return max(1, math.ceil(percent * len(self.sites) / 100))


class StepRecord(Struct, frozen=True, kw_only=True):
    """One entry of a site's history: a state it entered, when, and why."""

    state: SiteState
    at: datetime
    detail: str = ""


class SiteProgress(Struct, frozen=True, kw_only=True):
    """One target site: where it is, what it runs, and its last few steps."""

    site: str
    stage: int
    state: SiteState = "queued"
    detail: str = ""
    reason: str | None = None
    from_version: str | None = None
    running_version: str | None = None
    attempt: int = 1
    commanded_at: datetime | None = None
    last_report_at: datetime | None = None
    updated_at: datetime
    history: tuple[StepRecord, ...] = ()


class Rollout(Struct, frozen=True, kw_only=True):
    """A rollout of ``version`` (whose signed manifest is at ``manifest_url``)."""

    id: RolloutId
    version: str
    manifest_url: str
    manifest_sha256: str
    created_at: datetime
    created_by: str
    status: RolloutStatus = "running"
    pause_reason: PauseReason | None = None
    pause_note: str = ""
    stages: tuple[Stage, ...]
    sites: dict[str, SiteProgress]
    timeout_s: Annotated[int, Meta(ge=1)] = 1800
    command_ttl_s: Annotated[int, Meta(ge=1)] = 3600
    updated_at: datetime


# --- events ---------------------------------------------------------------------------------


class SiteReport(Struct, frozen=True, kw_only=True, tag="site_report", tag_field="event"):
    """A site's progress (from its ``up/reply``; see :func:`report_from_reply`). ``at`` is
    central's receive time, not the edge's clock."""

    site: str
    at: datetime
    state: SiteState
    detail: str = ""
    reason: str | None = None
    version: str | None = None
    attempt: int | None = None


class SiteSeen(Struct, frozen=True, kw_only=True, tag="site_seen", tag_field="event"):
    """A site's birth message: the version it runs now."""

    site: str
    at: datetime
    version: str


class Tick(Struct, frozen=True, kw_only=True, tag="tick", tag_field="event"):
    """Time passed (timeouts)."""

    at: datetime


class Pause(Struct, frozen=True, kw_only=True, tag="pause", tag_field="event"):
    """An operator pauses a running rollout."""

    at: datetime
    operator: str
    note: str = ""


class Resume(Struct, frozen=True, kw_only=True, tag="resume", tag_field="event"):
    """An operator resumes a paused rollout (acknowledging the failures so far)."""

    at: datetime
    operator: str


class Abort(Struct, frozen=True, kw_only=True, tag="abort", tag_field="event"):
    """An operator aborts: nothing more is sent; desired versions revert."""

    at: datetime
    operator: str
    note: str = ""


class Retry(Struct, frozen=True, kw_only=True, tag="retry", tag_field="event"):
    """An operator queues failed sites again (a new attempt, a new command id)."""

    at: datetime
    operator: str
    sites: tuple[str, ...]


Event = SiteReport | SiteSeen | Tick | Pause | Resume | Abort | Retry

# --- effects --------------------------------------------------------------------------------


class SendUpgrade(Struct, frozen=True, kw_only=True, tag="send_upgrade", tag_field="effect"):
    """Publish ``command`` on ``site/{site}/down/cmd``."""

    site: str
    command: Upgrade


class PublishDesired(Struct, frozen=True, kw_only=True, tag="publish_desired", tag_field="effect"):
    """Retain for ``site`` that it should run ``version``: with the ``upgrade`` command to
    get there (no expiry) when that is this rollout's version, None when it is the version
    the site runs. ``version`` None: unknown — clear the retained message."""

    site: str
    version: str | None
    command: Upgrade | None = None


class AuditLine(Struct, frozen=True, kw_only=True, tag="audit", tag_field="effect"):
    """Write one line to the audit log."""

    at: datetime
    rollout_id: str
    action: str
    site: str | None = None
    operator: str | None = None
    detail: str = ""


Effect = SendUpgrade | PublishDesired | AuditLine


class Transition(Struct, frozen=True, kw_only=True):
    """The rollout after an event, and what to do about it (in order)."""

    rollout: Rollout
    effects: tuple[Effect, ...] = ()


# --- planning -------------------------------------------------------------------------------


def parse_stages(text: str) -> tuple[StageSpec, ...]:
    """``"1,10%,rest"`` → stage specs. The first (canary) stage needs every site to succeed;
    the others 90 %."""
    return tuple(
        _parse_stage(raw.strip(), 100 if i == 0 else 90) for i, raw in enumerate(text.split(","))
    )


def _parse_stage(raw: str, success: int) -> StageSpec:
    number = raw.removesuffix("%")
    if raw == "rest":
        return StageSpec(success_percent=success)
    if (
        number.isdigit()
        and number.isascii()
        and 1 <= int(number) <= (100 if raw.endswith("%") else 10**6)
    ):
        if raw.endswith("%"):
            return StageSpec(percent=int(number), success_percent=success)
        return StageSpec(count=int(number), success_percent=success)
    raise RolloutError(f"stage {raw!r}: use a count (1), a percentage (10%) or rest")


def command_id(rollout_id: str, site: str, attempt: int) -> str:
    """The ``upgrade`` command's id: ``rollout:site:attempt`` (replies carry it back)."""
    return f"{rollout_id}:{site}:{attempt}"


def parse_command_id(cmd_id: str) -> tuple[str, str, int] | None:
    """``(rollout id, site, attempt)`` from a command id, None if it is not one of ours."""
    rollout_id, _, rest = cmd_id.partition(":")
    site, _, attempt = rest.partition(":")
    if not (rollout_id and site and attempt.isdigit() and attempt.isascii()):
        return None
    return rollout_id, site, int(attempt)


def plan_stages(
    rollout_id: str,
    targets: Sequence[str],
    specs: Sequence[StageSpec],
    canary: Sequence[str] = (),
) -> tuple[Stage, ...]:
    """Cut ``targets`` into stages (see the module doc); deterministic."""
    if not specs:
        raise RolloutError("a rollout needs at least one stage")
    unknown = [s for s in canary if s not in targets]
    if unknown:
        raise RolloutError(f"canary sites {', '.join(unknown)} are not targets")

    def salted(site: str) -> bytes:
        return hashlib.sha256(f"{rollout_id}\x00{site}".encode()).digest()

    first = list(dict.fromkeys(canary))
    order = first + sorted((s for s in targets if s not in first), key=salted)
    stages: list[Stage] = []
    at = 0
    for spec in specs:
        if spec.count is not None:
            size = spec.count
        elif spec.percent is not None:
            size = max(1, math.ceil(spec.percent * len(order) / 100))
        else:
            size = len(order)
        chunk = tuple(order[at : at + size])
        at += len(chunk)
        if chunk:
            stages.append(Stage(spec=spec, sites=chunk))
    if at < len(order):
        raise RolloutError(
            f"the stages cover {at} of {len(order)} targets: end with 'rest' or size them to fit"
        )
    return tuple(stages)


def start_rollout(
    *,
    rollout_id: str,
    version: str,
    manifest_url: str,
    manifest_sha256: str,
    targets: Sequence[str],
    current_versions: Mapping[str, str | None],
    stages: Sequence[StageSpec],
    at: datetime,
    operator: str,
    canary: Sequence[str] = (),
    timeout_s: int = 1800,
    command_ttl_s: int = 3600,
) -> Transition:
    """Plan the rollout and start its first stage. Sites that already run ``version`` count
    as succeeded from the start. :class:`RolloutError` for a plan that cannot work."""
    _check_plan(
        rollout_id=rollout_id,
        version=version,
        manifest_url=manifest_url,
        manifest_sha256=manifest_sha256,
        targets=targets,
        timeout_s=timeout_s,
        command_ttl_s=command_ttl_s,
    )
    planned = plan_stages(rollout_id, targets, stages, canary)
    sites: dict[str, SiteProgress] = {}
    for index, stage in enumerate(planned):
        for site in stage.sites:
            running = current_versions.get(site)
            on_it = running is not None and _same_version(running, version)
            state: SiteState = "succeeded" if on_it else "queued"
            detail = f"already runs {version}" if on_it else "planned"
            sites[site] = SiteProgress(
                site=site,
                stage=index,
                state=state,
                detail=detail,
                from_version=running,
                running_version=running,
                updated_at=at,
                history=(StepRecord(state=state, at=at, detail=detail),),
            )
    rollout = Rollout(
        id=rollout_id,
        version=version,
        manifest_url=manifest_url,
        manifest_sha256=manifest_sha256,
        created_at=at,
        created_by=operator,
        stages=planned,
        sites=sites,
        timeout_s=timeout_s,
        command_ttl_s=command_ttl_s,
        updated_at=at,
    )
    before = {s: (p.running_version, 0) for s, p in sites.items()}
    sizes = "/".join(str(len(s.sites)) for s in planned)
    effects: list[Effect] = [
        AuditLine(
            at=at,
            rollout_id=rollout_id,
            action="rollout.start",
            operator=operator,
            detail=f"version {version} to {len(sites)} sites in stages of {sizes}",
        )
    ]
    rollout = _start_stage(rollout, 0, at, effects)
    rollout = _settle(rollout, at, effects)
    return Transition(rollout=rollout, effects=(*effects, *_desired_effects(before, rollout, at)))


def _check_plan(
    *,
    rollout_id: str,
    version: str,
    manifest_url: str,
    manifest_sha256: str,
    targets: Sequence[str],
    timeout_s: int,
    command_ttl_s: int,
) -> None:
    if not _ROLLOUT_ID_RE.fullmatch(rollout_id):
        raise RolloutError(f"rollout id {rollout_id!r}: 1-24 of A-Z a-z 0-9 . _ -")
    try:
        parse_version(version)
    except ValueError as exc:
        raise RolloutError(str(exc)) from None
    if not 1 <= len(manifest_url) <= 1000:
        raise RolloutError("the manifest URL must be 1 to 1000 characters")
    if not _SHA256_RE.fullmatch(manifest_sha256):
        raise RolloutError("manifest sha256 must be 64 lower-case hex digits")
    if not targets:
        raise RolloutError("a rollout needs at least one target site")
    if len(set(targets)) != len(targets):
        raise RolloutError("a target site is listed twice")
    bad = [t for t in targets if not is_valid_site_id(t)]
    if bad:
        raise RolloutError(f"not site ids: {', '.join(bad)}")
    if timeout_s < 1 or command_ttl_s < 1:
        raise RolloutError("timeouts must be at least one second")


# --- transitions ----------------------------------------------------------------------------


def apply(rollout: Rollout, event: Event) -> Transition:
    """The rollout after ``event``, and the effects to perform. Site reports and births are
    peer input: odd ones are ignored (with an audit line), never raised. Operator commands
    that do not apply raise :class:`RolloutError` and change nothing."""
    before = _desired(rollout)
    effects: list[Effect] = []
    if isinstance(event, SiteReport):
        new = _on_report(rollout, event, effects)
    elif isinstance(event, SiteSeen):
        new = _on_seen(rollout, event, effects)
    elif isinstance(event, Tick):
        new = _on_tick(rollout, event.at, effects)
    elif isinstance(event, Pause):
        new = _on_pause(rollout, event, effects)
    elif isinstance(event, Resume):
        new = _on_resume(rollout, event, effects)
    elif isinstance(event, Abort):
        new = _on_abort(rollout, event, effects)
    else:
        new = _on_retry(rollout, event, effects)
    new = _settle(new, event.at, effects)
    if new is not rollout:
        new = replace(new, updated_at=event.at)
    return Transition(rollout=new, effects=(*effects, *_desired_effects(before, new, event.at)))


def _on_report(r: Rollout, ev: SiteReport, effects: list[Effect]) -> Rollout:
    site = r.sites.get(ev.site)
    why = None
    if site is None:
        why = "not a target of this rollout"
    elif ev.attempt is not None and ev.attempt != site.attempt:
        why = f"stale report of attempt {ev.attempt} (now {site.attempt})"
    elif r.stages[site.stage].started_at is None:
        why = "its stage has not started"
    elif not _may_move(site.state, ev.state):
        why = f"{ev.state} after {site.state}"
    if site is None or why is not None:
        effects.append(_audit(r, ev.at, "report.ignored", ev.site, f"{ev.state}: {why}"))
        return r
    running = ev.version or (r.version if ev.state == "succeeded" else site.running_version)
    moved = _move(site, ev.state, ev.at, ev.detail, reason=ev.reason)
    moved = replace(moved, running_version=running, last_report_at=ev.at)
    if moved.state != site.state:
        effects.append(_audit(r, ev.at, f"site.{ev.state}", ev.site, ev.detail))
    return _with_site(r, moved)


def _may_move(old: SiteState, new: SiteState) -> bool:
    if new == old:
        return True
    if old == "timed_out":
        return new != "queued"
    if old in FINAL:
        return old == "failed" and new == "rolled_back"
    return new in FINAL or new == "timed_out" or _RANK[new] > _RANK[old]


def _on_seen(r: Rollout, ev: SiteSeen, effects: list[Effect]) -> Rollout:
    site = r.sites.get(ev.site)
    if site is None:
        return r
    site = replace(site, running_version=ev.version)
    if _same_version(ev.version, r.version) and site.state != "succeeded":
        site = _move(site, "succeeded", ev.at, f"reports it runs {ev.version}")
        effects.append(_audit(r, ev.at, "site.succeeded", ev.site, site.detail))
    return _with_site(r, site)


def _on_tick(r: Rollout, now: datetime, effects: list[Effect]) -> Rollout:
    limit = timedelta(seconds=r.timeout_s)
    for site in r.sites.values():
        since = site.last_report_at or site.commanded_at or site.updated_at
        if site.state in IN_PROGRESS and now - since >= limit:
            detail = f"no report for {r.timeout_s} s while {site.state}"
            r = _with_site(r, _move(site, "timed_out", now, detail, reason="timeout"))
            effects.append(_audit(r, now, "site.timed_out", site.site, detail))
    return r


def _on_pause(r: Rollout, ev: Pause, effects: list[Effect]) -> Rollout:
    if r.status != "running":
        raise RolloutError(f"rollout {r.id} is {r.status}, not running")
    effects.append(_audit(r, ev.at, "rollout.pause", None, ev.note, operator=ev.operator))
    return replace(r, status="paused", pause_reason="manual", pause_note=ev.note)


def _on_resume(r: Rollout, ev: Resume, effects: list[Effect]) -> Rollout:
    if r.status != "paused":
        raise RolloutError(f"rollout {r.id} is {r.status}, not paused")
    stages = tuple(
        replace(stage, failure_baseline=_count(r, stage, FAILURES)) for stage in r.stages
    )
    r = replace(r, status="running", pause_reason=None, pause_note="", stages=stages)
    effects.append(_audit(r, ev.at, "rollout.resume", None, "", operator=ev.operator))
    for site in r.sites.values():
        if site.state == "queued" and r.stages[site.stage].started_at is not None:
            r = _send(r, site, ev.at, effects)
    return r


def _on_abort(r: Rollout, ev: Abort, effects: list[Effect]) -> Rollout:
    if r.status == "aborted":
        raise RolloutError(f"rollout {r.id} is already aborted")
    effects.append(_audit(r, ev.at, "rollout.abort", None, ev.note, operator=ev.operator))
    return replace(r, status="aborted", pause_reason=None, pause_note=ev.note)


def _on_retry(r: Rollout, ev: Retry, effects: list[Effect]) -> Rollout:
    if r.status == "aborted":
        raise RolloutError(f"rollout {r.id} is aborted")
    for name in ev.sites:
        site = r.sites.get(name)
        if site is None or site.state not in FAILURES:
            state = "not a target" if site is None else site.state
            raise RolloutError(f"{name}: only a failed site can be retried ({state})")
        if site.attempt >= MAX_ATTEMPT:
            raise RolloutError(f"{name}: {MAX_ATTEMPT} attempts are enough")
    for name in dict.fromkeys(ev.sites):
        site = r.sites[name]
        again = _move(site, "queued", ev.at, f"retry by {ev.operator}")
        r = _with_site(r, replace(again, attempt=site.attempt + 1, reason=None))
        effects.append(_audit(r, ev.at, "site.retry", name, "", operator=ev.operator))
        # A completed rollout still commands a retried site; a paused one waits for Resume.
        if r.status != "paused" and r.stages[site.stage].started_at is not None:
            r = _send(r, r.sites[name], ev.at, effects)
    stages = tuple(
        replace(s, failure_baseline=min(s.failure_baseline, _count(r, s, FAILURES)))
        for s in r.stages
    )
    return replace(r, stages=stages)


def _settle(r: Rollout, at: datetime, effects: list[Effect]) -> Rollout:
    """Pause at a failure threshold, else pass stages and start the next, while running."""
    if r.status != "running":
        return r
    for index, stage in enumerate(r.stages):
        if stage.started_at is None:
            continue
        failed = _count(r, stage, FAILURES)
        if failed - stage.failure_baseline >= stage.failure_limit:
            note = (
                f"stage {index + 1}: {failed} of {len(stage.sites)} sites failed "
                f"(pauses at {stage.failure_limit} new failures)"
            )
            effects.append(_audit(r, at, "rollout.auto_pause", None, note))
            return replace(r, status="paused", pause_reason="failure_threshold", pause_note=note)
    while True:
        index = max(i for i, s in enumerate(r.stages) if s.started_at is not None)
        stage = r.stages[index]
        if stage.passed_at is None:
            if _count(r, stage, frozenset({"succeeded"})) < stage.success_needed:
                return r
            r = _with_stage(r, index, replace(stage, passed_at=at))
            effects.append(_audit(r, at, "stage.passed", None, f"stage {index + 1}"))
        if index + 1 == len(r.stages):
            effects.append(_audit(r, at, "rollout.completed", None, ""))
            return replace(r, status="completed")
        r = _start_stage(r, index + 1, at, effects)


def _start_stage(r: Rollout, index: int, at: datetime, effects: list[Effect]) -> Rollout:
    stage = r.stages[index]
    r = _with_stage(r, index, replace(stage, started_at=at))
    effects.append(
        _audit(r, at, "stage.start", None, f"stage {index + 1} of {len(r.stages)}: "
               f"{len(stage.sites)} sites")
    )  # fmt: skip
    for name in stage.sites:
        if r.sites[name].state == "queued":
            r = _send(r, r.sites[name], at, effects)
    return r


def _send(r: Rollout, site: SiteProgress, at: datetime, effects: list[Effect]) -> Rollout:
    expires = at + timedelta(seconds=r.command_ttl_s)
    effects.append(SendUpgrade(site=site.site, command=_upgrade(r, site, at, expires)))
    return _with_site(r, replace(site, commanded_at=at))


def _upgrade(r: Rollout, site: SiteProgress, at: datetime, expires: datetime | None) -> Upgrade:
    return Upgrade(
        id=command_id(r.id, site.site, site.attempt),
        issued_at=at,
        expires_at=expires,
        rollout_id=r.id,
        version=r.version,
        manifest_url=r.manifest_url,
        manifest_sha256=r.manifest_sha256,
    )


# --- helpers --------------------------------------------------------------------------------


def _move(
    site: SiteProgress, state: SiteState, at: datetime, detail: str, *, reason: str | None = None
) -> SiteProgress:
    if state == site.state:
        return replace(site, detail=detail or site.detail, reason=reason or site.reason)
    history = (*site.history, StepRecord(state=state, at=at, detail=detail))[-MAX_HISTORY:]
    return replace(site, state=state, detail=detail, reason=reason, updated_at=at, history=history)


def _with_site(r: Rollout, site: SiteProgress) -> Rollout:
    return replace(r, sites={**r.sites, site.site: site})


def _with_stage(r: Rollout, index: int, stage: Stage) -> Rollout:
    return replace(r, stages=(*r.stages[:index], stage, *r.stages[index + 1 :]))


def _count(r: Rollout, stage: Stage, states: frozenset[SiteState]) -> int:
    return sum(r.sites[s].state in states for s in stage.sites)


def _same_version(a: str, b: str) -> bool:
    try:
        return compare_versions(a, b) == 0
    except ValueError:
        return a == b


def _audit(
    r: Rollout,
    at: datetime,
    action: str,
    site: str | None,
    detail: str,
    *,
    operator: str | None = None,
) -> AuditLine:
    return AuditLine(
        at=at, rollout_id=r.id, action=action, site=site, operator=operator, detail=detail
    )


# --- outputs --------------------------------------------------------------------------------


def counts(rollout: Rollout) -> dict[SiteState, int]:
    """Sites per state (every state present; the values sum to the number of targets)."""
    out = dict.fromkeys(SITE_STATES, 0)
    for site in rollout.sites.values():
        out[site.state] += 1
    return out


def desired_versions(rollout: Rollout) -> dict[str, str | None]:
    """The version central should retain-publish for each target site."""
    return {site: version for site, (version, _) in _desired(rollout).items()}


def _desired(r: Rollout) -> dict[str, tuple[str | None, int]]:
    out: dict[str, tuple[str | None, int]] = {}
    for name, site in r.sites.items():
        started = r.stages[site.stage].started_at is not None
        if r.status == "aborted" or not started:
            wanted = site.running_version
        elif site.state == "succeeded":
            wanted = r.version
        elif site.state in FINAL or (r.status == "paused" and site.state not in IN_PROGRESS):
            # failed, rolled back, rejected stay where they are; a pause starts nothing new
            wanted = site.running_version
        else:
            wanted = r.version
        out[name] = (wanted, site.attempt if wanted == r.version else 0)
    return out


def _desired_effects(
    before: Mapping[str, tuple[str | None, int]], r: Rollout, at: datetime
) -> list[Effect]:
    effects: list[Effect] = []
    for name, (version, attempt) in _desired(r).items():
        if before.get(name) != (version, attempt):
            command = _upgrade(r, r.sites[name], at, None) if attempt else None
            effects.append(PublishDesired(site=name, version=version, command=command))
    return effects


def report_from_reply(reply: Reply, *, received_at: datetime) -> tuple[str, SiteReport] | None:
    """``(rollout id, report)`` from an edge's ``up/reply`` to an ``upgrade`` command, or None
    when the reply is not one (or breaks the convention below; count it as bad input).

    Convention for the edge: ``status`` ``accepted`` (queued), ``progress`` with
    ``data.state`` one of downloading/installing/restarting, ``done`` (succeeded),
    ``failed`` (``data.state`` ``rolled_back`` when the updater switched back, else failed),
    ``rejected`` (``data.reason``: the release's refusal code); ``data.version`` is the
    version the site runs now, when it says.
    """
    parsed = parse_command_id(reply.cmd_id)
    if parsed is None or parsed[1] != reply.site:
        return None
    rollout_id, site, attempt = parsed
    data = reply.data
    said = data.get("state")
    state: SiteState
    if reply.status == "accepted":
        state = "queued"
    elif reply.status == "progress" and said in IN_PROGRESS:
        state = said
    elif reply.status == "done":
        state = "succeeded"
    elif reply.status == "failed":
        state = "rolled_back" if said == "rolled_back" else "failed"
    elif reply.status == "rejected":
        state = "rejected"
    else:
        return None
    version = data.get("version")
    reason = data.get("reason")
    report = SiteReport(
        site=site,
        at=received_at,
        state=state,
        detail=reply.detail,
        reason=reason if isinstance(reason, str) and len(reason) <= 64 else None,
        version=version if isinstance(version, str) and len(version) <= 64 else None,
        attempt=attempt,
    )
    return rollout_id, report
