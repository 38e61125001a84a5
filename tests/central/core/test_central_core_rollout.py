"""Staged rollouts: central.core.rollout, a pure state machine, without I/O."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central.core.rollout import (
    FAILURES,
    IN_PROGRESS,
    SITE_STATES,
    Abort,
    AuditLine,
    Event,
    Pause,
    PublishDesired,
    Resume,
    Retry,
    Rollout,
    RolloutError,
    SendUpgrade,
    SiteReport,
    SiteSeen,
    StageSpec,
    Tick,
    Transition,
    apply,
    command_id,
    counts,
    desired_versions,
    parse_command_id,
    parse_stages,
    plan_stages,
    report_from_reply,
    start_rollout,
)
from protocol.messages import Reply

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
V, OLD = "0.2.0", "0.1.0"
SITES = [f"S{i:02d}" for i in range(1, 21)]
URL = "https://hq.example.com/releases/0.2.0/manifest.json"
SHA = "ab" * 32


def start(
    targets: Iterable[str] = SITES,
    stages: str | tuple[StageSpec, ...] = "1,10%,rest",
    canary: tuple[str, ...] = ("S07",),
    current: dict[str, str | None] | None = None,
    **kw: Any,
) -> Transition:
    targets = list(targets)
    return start_rollout(
        rollout_id="r1",
        version=V,
        manifest_url=URL,
        manifest_sha256=SHA,
        targets=targets,
        current_versions=current if current is not None else dict.fromkeys(targets, OLD),
        stages=parse_stages(stages) if isinstance(stages, str) else stages,
        at=T0,
        operator="op-li",
        canary=canary,
        **kw,
    )


def sent(tr: Transition) -> list[str]:
    return [e.site for e in tr.effects if isinstance(e, SendUpgrade)]


def published(tr: Transition) -> dict[str, str | None]:
    return {e.site: e.version for e in tr.effects if isinstance(e, PublishDesired)}


def actions(tr: Transition) -> list[str]:
    return [e.action for e in tr.effects if isinstance(e, AuditLine)]


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def report(r: Rollout, site: str, state: str, minutes: float = 1, **kw: Any) -> Transition:
    return apply(r, SiteReport(site=site, at=at(minutes), state=state, **kw))  # type: ignore[arg-type]


def through(r: Rollout, sites: Iterable[str], state: str, minutes: float = 1) -> Rollout:
    for site in sites:
        r = report(r, site, state, minutes).rollout
    return r


def stage_sites(r: Rollout, index: int) -> tuple[str, ...]:
    return r.stages[index].sites


# --- planning --------------------------------------------------------------------------------


def test_the_canary_goes_first_then_ten_percent_then_the_rest():
    r = start().rollout
    assert [len(s.sites) for s in r.stages] == [1, 2, 17]
    assert stage_sites(r, 0) == ("S07",)
    assert sorted(sum((s.sites for s in r.stages), ())) == SITES
    assert [s.spec.success_percent for s in r.stages] == [100, 90, 90]


def test_assignment_is_deterministic_and_differs_between_rollouts():
    specs = parse_stages("5,rest")
    one = plan_stages("r1", SITES, specs)
    assert one == plan_stages("r1", list(reversed(SITES)), specs)
    assert one[0].sites != plan_stages("r2", SITES, specs)[0].sites


def test_stages_must_cover_every_target():
    with pytest.raises(RolloutError, match="cover 3 of 20"):
        start(stages="1,2")
    # Sized to fit is fine, and stages left empty are dropped.
    assert len(start(targets=SITES[:3], stages="1,2,rest", canary=()).rollout.stages) == 2


@pytest.mark.parametrize("text", ["0", "-1", "101%", "0%", "x", "", "1,,rest", "१"])
def test_bad_stage_sizes_are_refused(text):
    with pytest.raises(RolloutError, match="use a count"):
        parse_stages(text)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"targets": []}, "at least one target"),
        ({"targets": ["S01", "S01"]}, "twice"),
        ({"targets": ["s01"]}, "not site ids"),
        ({"canary": ("NOPE",)}, "not targets"),
        ({"stages": ()}, "at least one stage"),
    ],
)
def test_impossible_plans_are_refused(change, words):
    args: dict[str, Any] = {"canary": ()} | change
    with pytest.raises(RolloutError, match=words):
        start(**args)


def test_a_bad_version_or_rollout_id_is_refused():
    with pytest.raises(RolloutError, match="not N"):
        start_rollout(
            rollout_id="r1", version="latest", manifest_url=URL, manifest_sha256=SHA,
            targets=SITES, current_versions={}, stages=parse_stages("rest"), at=T0,
            operator="op",
        )  # fmt: skip
    with pytest.raises(RolloutError, match="rollout id"):
        start_rollout(
            rollout_id="a:b", version=V, manifest_url=URL, manifest_sha256=SHA,
            targets=SITES, current_versions={}, stages=parse_stages("rest"), at=T0,
            operator="op",
        )  # fmt: skip


# --- stages ----------------------------------------------------------------------------------


def test_start_commands_only_the_canary_and_publishes_its_desired_version():
    tr = start()
    assert sent(tr) == ["S07"]
    assert published(tr) == {"S07": V}
    command = next(e for e in tr.effects if isinstance(e, SendUpgrade)).command
    assert command.id == "r1:S07:1" and command.version == V
    assert command.manifest_url == URL and command.manifest_sha256 == SHA
    assert command.expires_at == T0 + timedelta(seconds=3600)
    retained = next(e for e in tr.effects if isinstance(e, PublishDesired)).command
    assert retained is not None and retained.id == "r1:S07:1" and retained.expires_at is None
    assert desired_versions(tr.rollout) == {s: (V if s == "S07" else OLD) for s in SITES}
    assert actions(tr)[:2] == ["rollout.start", "stage.start"]


def test_progress_moves_a_site_forward_with_timestamps():
    r = start().rollout
    for minutes, state in enumerate(["downloading", "installing", "restarting"], start=1):
        r = report(r, "S07", state, minutes, detail=f"{state}…").rollout
    site = r.sites["S07"]
    assert site.state == "restarting" and site.detail == "restarting…"
    assert [(h.state, h.at) for h in site.history] == [
        ("queued", T0),
        ("downloading", at(1)),
        ("installing", at(2)),
        ("restarting", at(3)),
    ]


def test_a_canary_success_starts_the_next_stage():
    r = start().rollout
    tr = report(r, "S07", "succeeded", 5)
    assert sorted(sent(tr)) == sorted(stage_sites(r, 1))
    assert tr.rollout.stages[0].passed_at == at(5)
    assert tr.rollout.stages[1].started_at == at(5)
    assert "stage.passed" in actions(tr)


def test_a_stage_advances_only_at_its_success_threshold():
    specs = (StageSpec(count=10, success_percent=90), StageSpec())
    r = start(stages=specs, canary=()).rollout
    first = stage_sites(r, 0)
    r = through(r, first[:8], "succeeded")
    assert r.stages[1].started_at is None
    tr = report(r, first[8], "succeeded")
    assert tr.rollout.stages[1].started_at is not None
    assert sorted(sent(tr)) == sorted(stage_sites(r, 1))


def test_the_rollout_completes_when_the_last_stage_passes():
    r = start(targets=SITES[:4], stages="1,rest", canary=()).rollout
    r = through(r, stage_sites(r, 0), "succeeded")
    tr = report(r, stage_sites(r, 1)[0], "succeeded")
    tr = report(tr.rollout, stage_sites(r, 1)[1], "succeeded")
    assert tr.rollout.status == "running"  # 2 of 3 < 90 %
    tr = report(tr.rollout, stage_sites(r, 1)[2], "succeeded")
    assert tr.rollout.status == "completed"
    assert "rollout.completed" in actions(tr)


def test_sites_already_on_the_version_count_as_succeeded_and_get_no_command():
    current: dict[str, str | None] = dict.fromkeys(SITES[:3], OLD) | {"S07": "0.2"}
    tr = start(targets=[*SITES[:3], "S07"], stages="1,rest", current=current)
    assert tr.rollout.sites["S07"].state == "succeeded"
    # The canary already runs it, so stage 2 starts at once.
    assert sorted(sent(tr)) == SITES[:3]


# --- failures --------------------------------------------------------------------------------


def test_the_failure_threshold_pauses_the_rollout():
    specs = (StageSpec(count=10, max_failures=2), StageSpec())
    r = start(stages=specs, canary=()).rollout
    first = stage_sites(r, 0)
    r = report(r, first[0], "failed", detail="self-test failed").rollout
    assert r.status == "running"
    tr = report(r, first[1], "rolled_back", reason="health_timeout")
    assert tr.rollout.status == "paused"
    assert tr.rollout.pause_reason == "failure_threshold"
    assert "2 of 10 sites failed" in tr.rollout.pause_note
    assert "rollout.auto_pause" in actions(tr)
    # Successes no longer start anything while paused.
    tr = report(tr.rollout, first[2], "succeeded")
    r = through(tr.rollout, first[3:], "succeeded")
    assert r.stages[1].started_at is None
    assert r.status == "paused"


def test_the_default_failure_threshold_is_ten_percent_of_the_stage():
    r = start(canary=()).rollout
    assert r.stages[0].failure_limit == 1  # the canary: any failure
    assert r.stages[2].failure_limit == 2  # 10 % of 17, rounded up
    assert (
        start(stages=(StageSpec(max_failure_percent=50),), canary=())
        .rollout.stages[0]
        .failure_limit
        == 10
    )


def test_resume_acknowledges_the_failures_and_commands_queued_sites_again():
    specs = (StageSpec(count=10, max_failures=1), StageSpec())
    r = start(stages=specs, canary=()).rollout
    first = stage_sites(r, 0)
    r = report(r, first[0], "rejected", reason="bad_signature").rollout
    assert r.status == "paused"
    tr = apply(r, Resume(at=at(10), operator="op-wang"))
    assert tr.rollout.status == "running" and tr.rollout.pause_reason is None
    assert sorted(sent(tr)) == sorted(first[1:])  # queued ones, again, same command id
    assert {e.command.id for e in tr.effects if isinstance(e, SendUpgrade)} == {
        command_id("r1", s, 1) for s in first[1:]
    }
    # One more failure is new: pauses again.
    tr = report(tr.rollout, first[1], "failed", 11)
    assert tr.rollout.status == "paused"


def test_a_manual_pause_withdraws_desired_versions_from_sites_not_started():
    r = start(stages="3,rest", canary=()).rollout
    a, b, c = stage_sites(r, 0)
    r = report(r, a, "downloading").rollout
    tr = apply(r, Pause(at=at(2), operator="op-li", note="hold for the audit"))
    assert tr.rollout.status == "paused" and tr.rollout.pause_reason == "manual"
    assert sent(tr) == []
    assert published(tr) == {b: OLD, c: OLD}  # `a` is mid-download: it may finish
    tr = apply(tr.rollout, Resume(at=at(3), operator="op-li"))
    assert sorted(sent(tr)) == sorted([b, c])
    assert published(tr) == {b: V, c: V}


def test_abort_reverts_desired_versions_to_what_each_site_runs():
    r = start(stages="3,rest", canary=()).rollout
    a, b, c = stage_sites(r, 0)
    r = report(r, a, "succeeded").rollout
    r = report(r, b, "installing").rollout
    tr = apply(r, Abort(at=at(5), operator="op-li", note="bad build"))
    assert tr.rollout.status == "aborted"
    assert sent(tr) == []
    assert published(tr) == {b: OLD, c: OLD}
    assert desired_versions(tr.rollout) == {s: (V if s == a else OLD) for s in SITES}
    # b finishes anyway: it runs the new version now, so that is what it should run.
    tr = report(tr.rollout, b, "succeeded", 6)
    assert sent(tr) == [] and published(tr) == {b: V}
    assert tr.rollout.status == "aborted"


def test_operator_commands_that_do_not_apply_are_refused():
    r = start().rollout
    with pytest.raises(RolloutError, match="not paused"):
        apply(r, Resume(at=at(1), operator="op"))
    aborted = apply(r, Abort(at=at(1), operator="op")).rollout
    for event in (
        Pause(at=at(2), operator="op"),
        Abort(at=at(2), operator="op"),
        Retry(at=at(2), operator="op", sites=("S07",)),
    ):
        with pytest.raises(RolloutError):
            apply(aborted, event)
    with pytest.raises(RolloutError, match="only a failed site"):
        apply(r, Retry(at=at(2), operator="op", sites=("S07",)))


def test_retry_queues_a_failed_site_with_a_new_command_id():
    r = start(stages="3,rest", canary=()).rollout
    a = stage_sites(r, 0)[0]
    r = report(r, a, "failed", attempt=1).rollout
    r = apply(r, Resume(at=at(2), operator="op")).rollout
    tr = apply(r, Retry(at=at(3), operator="op", sites=(a,)))
    assert tr.rollout.sites[a].state == "queued" and tr.rollout.sites[a].attempt == 2
    assert [e.command.id for e in tr.effects if isinstance(e, SendUpgrade)] == [f"r1:{a}:2"]
    # A late report from the first attempt changes nothing.
    late = report(tr.rollout, a, "failed", 4, attempt=1)
    assert late.rollout.sites[a].state == "queued"
    assert "report.ignored" in actions(late)


def test_a_site_that_failed_in_a_completed_rollout_can_still_be_retried():
    specs = (StageSpec(success_percent=50, max_failures=2),)
    r = start(targets=SITES[:2], stages=specs, canary=()).rollout
    a, b = stage_sites(r, 0)
    r = report(r, a, "succeeded").rollout
    r = report(r, b, "failed", 2).rollout
    assert r.status == "completed"
    tr = apply(r, Retry(at=at(3), operator="op", sites=(b,)))
    assert sent(tr) == [b] and published(tr) == {b: V}


# --- time ------------------------------------------------------------------------------------


def test_a_site_silent_past_the_timeout_times_out():
    r = start(timeout_s=600).rollout
    r = report(r, "S07", "downloading", 0).rollout
    assert apply(r, Tick(at=at(9))).rollout.sites["S07"].state == "downloading"
    r = report(r, "S07", "downloading", 9, detail="60 %").rollout  # progress keeps it alive
    assert apply(r, Tick(at=at(18))).rollout.sites["S07"].state == "downloading"
    tr = apply(r, Tick(at=at(19)))
    site = tr.rollout.sites["S07"]
    assert site.state == "timed_out" and site.reason == "timeout"
    assert "no report for 600 s while downloading" in site.detail
    # The canary timing out is a failure of the canary: the rollout pauses.
    assert tr.rollout.status == "paused"


def test_queued_sites_never_time_out():
    r = start(timeout_s=60).rollout
    assert apply(r, Tick(at=at(60 * 24))).rollout.sites["S07"].state == "queued"


def test_a_late_report_after_a_timeout_is_taken():
    r = start(timeout_s=60).rollout
    r = report(r, "S07", "restarting", 0).rollout
    r = apply(r, Tick(at=at(5))).rollout
    r = apply(r, Resume(at=at(6), operator="op")).rollout
    tr = report(r, "S07", "succeeded", 7)
    assert tr.rollout.sites["S07"].state == "succeeded"
    assert tr.rollout.stages[1].started_at == at(7)


# --- convergence -----------------------------------------------------------------------------


def test_an_offline_site_converges_through_its_desired_version():
    r = start(stages="1,rest", canary=("S01",)).rollout
    r = report(r, "S01", "succeeded").rollout
    rest = stage_sites(r, 1)
    offline = rest[-1]
    r = through(r, rest[:-1], "succeeded", 2)
    assert r.status == "completed"
    assert r.sites[offline].state == "queued"
    assert desired_versions(r)[offline] == V  # retained: it upgrades when it returns
    later = apply(r, Tick(at=at(60 * 24 * 3))).rollout
    assert later.sites[offline].state == "queued"
    # It comes back, acts on the retained command, and says so in its birth message.
    back = apply(later, SiteSeen(site=offline, at=at(60 * 24 * 3 + 5), version=V))
    assert back.rollout.sites[offline].state == "succeeded"
    assert counts(back.rollout)["succeeded"] == len(SITES)
    assert sent(back) == []


def test_a_birth_with_the_old_version_only_records_it():
    r = start().rollout
    r = apply(r, SiteSeen(site="S07", at=at(1), version=OLD)).rollout
    assert r.sites["S07"].state == "queued" and r.sites["S07"].running_version == OLD


def test_reports_from_strangers_and_unstarted_stages_are_ignored():
    r = start().rollout
    last = stage_sites(r, 2)[0]
    for site in ("ZZ99", last):
        tr = report(r, site, "succeeded")
        assert tr.rollout == r
        assert actions(tr) == ["report.ignored"]


def test_a_report_never_moves_a_site_back():
    r = start().rollout
    r = report(r, "S07", "installing").rollout
    tr = report(r, "S07", "downloading", 2)
    assert tr.rollout.sites["S07"].state == "installing"
    r = report(r, "S07", "failed", 3).rollout
    assert report(r, "S07", "succeeded", 4).rollout.sites["S07"].state == "failed"
    assert report(r, "S07", "rolled_back", 4).rollout.sites["S07"].state == "rolled_back"


# --- replies ---------------------------------------------------------------------------------


def reply(status: str, **data: Any) -> Reply:
    return Reply(site="S07", cmd_id="r1:S07:2", at=T0, status=status, detail="d", data=data)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "data", "state"),
    [
        ("accepted", {}, "queued"),
        ("progress", {"state": "installing"}, "installing"),
        ("done", {"version": V}, "succeeded"),
        ("failed", {}, "failed"),
        ("failed", {"state": "rolled_back", "reason": "crash_loop"}, "rolled_back"),
        ("rejected", {"reason": "expired"}, "rejected"),
    ],
)
def test_replies_become_reports(status, data, state):
    parsed = report_from_reply(reply(status, **data), received_at=at(1))
    assert parsed is not None
    rollout_id, rep = parsed
    assert rollout_id == "r1"
    assert (rep.site, rep.state, rep.attempt, rep.at) == ("S07", state, 2, at(1))
    assert rep.reason == data.get("reason") and rep.version == data.get("version")


def test_replies_off_the_convention_are_not_reports():
    assert report_from_reply(reply("progress"), received_at=T0) is None
    assert report_from_reply(reply("progress", state="succeeded"), received_at=T0) is None
    other = Reply(site="S08", cmd_id="r1:S07:1", at=T0, status="done")
    assert report_from_reply(other, received_at=T0) is None  # a site speaks for itself only
    assert parse_command_id("resend-1") is None
    assert parse_command_id(command_id("r1", "S07", 3)) == ("r1", "S07", 3)


# --- storage ---------------------------------------------------------------------------------


def test_a_rollout_round_trips_through_json():
    r = start().rollout
    r = report(r, "S07", "succeeded").rollout
    r = apply(r, Pause(at=at(2), operator="op")).rollout
    assert msgspec.json.decode(msgspec.json.encode(r), type=Rollout) == r
    effects = start().effects
    assert msgspec.json.decode(msgspec.json.encode(effects), type=tuple[Any, ...])


# --- properties ------------------------------------------------------------------------------

PROPERTY_SITES = [f"P{i:02d}" for i in range(1, 7)]
#: Report states, weighted towards success so that stages pass and rollouts complete.
report_states = st.sampled_from([*SITE_STATES, *["succeeded"] * 4, "downloading"])


def pick(r: Rollout, index: int, states: Iterable[str] | None = None) -> str:
    """A site of a started stage (in one of ``states``), or any target if there is none."""
    pool = [
        name
        for name, site in sorted(r.sites.items())
        if r.stages[site.stage].started_at is not None and (states is None or site.state in states)
    ]
    return (pool or PROPERTY_SITES)[index % len(pool or PROPERTY_SITES)]


def site_report(index: int, state: str, attempt: int | None, anyone: bool) -> Any:
    def make(r: Rollout, when: datetime) -> Event:
        live = ("queued", *IN_PROGRESS, "timed_out")
        site = PROPERTY_SITES[index % len(PROPERTY_SITES)] if anyone else pick(r, index, live)
        return SiteReport(site=site, at=when, state=state, attempt=attempt)  # type: ignore[arg-type]

    return make


def site_seen(index: int, version: str) -> Any:
    return lambda r, when: SiteSeen(site=pick(r, index), at=when, version=version)


def retry(index: int) -> Any:
    return lambda r, when: Retry(at=when, operator="op", sites=(pick(r, index, FAILURES),))


def operator(cls: type) -> Any:
    return lambda _r, when: cls(at=when, operator="op")


indexes = st.integers(0, 50)
reports = st.builds(
    site_report,
    indexes,
    report_states,
    st.sampled_from([None, None, 1, 2]),
    st.sampled_from([False, False, False, True]),
)
ticks = st.just(lambda _r, when: Tick(at=when))
#: Each event is drawn as a function of the rollout and its time, so that reports mostly
#: come from sites that were told to upgrade; times only move forward.
event_makers = st.one_of(
    *[reports] * 5,
    st.builds(site_seen, indexes, st.sampled_from([V, OLD, "0.1.5"])),
    ticks,
    ticks,
    st.just(operator(Resume)),
    st.builds(retry, indexes),
    st.sampled_from([operator(Pause), operator(Resume), operator(Resume)]),
    st.sampled_from([operator(Abort), *[operator(Resume)] * 7]),
)
events = st.tuples(st.integers(0, 15), event_makers)
plans = st.sampled_from(["1,10%,rest", "2,rest", "rest", "1,1,1,rest", "50%,50%"])


def run_events(plan: str, todo: list[Any]) -> list[tuple[Rollout, Event, Transition]]:
    tr = start(targets=PROPERTY_SITES, stages=plan, canary=(), timeout_s=1200)
    steps = []
    r = tr.rollout
    when = T0
    for delay, make in todo:
        when += timedelta(minutes=delay)
        event = make(r, when)
        try:
            after = apply(r, event)
        except RolloutError:
            continue  # an operator command that does not apply changes nothing
        steps.append((r, event, after))
        r = after.rollout
    return steps


@settings(max_examples=300, deadline=None)
@given(plans, st.lists(events, min_size=10, max_size=60))
def test_rollout_invariants_hold_for_any_sequence_of_events(plan, todo):
    for before, event, tr in run_events(plan, todo):
        r = tr.rollout
        # No site is ever sent a version outside the rollout, nor before its stage starts.
        for effect in tr.effects:
            if isinstance(effect, SendUpgrade):
                assert effect.site in PROPERTY_SITES
                assert effect.command.version == V and effect.command.rollout_id == "r1"
                assert r.stages[r.sites[effect.site].stage].started_at is not None
            if isinstance(effect, PublishDesired):
                assert effect.version in {V, OLD, "0.1.5"}
                assert (effect.command is not None) == (effect.version == V)
        # A paused or aborted rollout sends nothing (until a resume).
        if before.status in ("paused", "aborted") and not isinstance(event, Resume):
            assert sent(tr) == []
        # An abort is for good, and then every site should run what it runs.
        if before.status == "aborted":
            assert r.status == "aborted"
        if r.status == "aborted":
            assert desired_versions(r) == {s: p.running_version for s, p in r.sites.items()}
            assert all(v != V or r.sites[s].running_version == V for s, v in published(tr).items())
        # Counts per state always sum to the targets.
        assert sum(counts(r).values()) == len(PROPERTY_SITES)
        assert set(r.sites) == set(PROPERTY_SITES)
        # Failed or not-started sites are never told to get the version.
        for name, version in desired_versions(r).items():
            site = r.sites[name]
            if site.state in FAILURES - {"timed_out"}:
                assert version == site.running_version
            if r.stages[site.stage].started_at is None:
                assert version == site.running_version
            if r.status == "paused" and site.state not in IN_PROGRESS | {"succeeded"}:
                assert version == site.running_version
        # Stored and loaded, it is the same rollout.
        assert msgspec.json.decode(msgspec.json.encode(r), type=Rollout) == r


@settings(max_examples=100, deadline=None)
@given(plans, st.lists(events, min_size=10, max_size=30))
def test_the_same_events_give_the_same_rollout_and_effects(plan, todo):
    assert run_events(plan, todo) == run_events(plan, todo)


@settings(max_examples=200, deadline=None)
@given(plans, st.lists(events, min_size=10, max_size=60))
def test_published_desired_versions_track_desired_versions(plan, todo):
    """Replaying the PublishDesired effects yields exactly desired_versions(): what central
    retains is never out of step with the rollout."""
    tr = start(targets=PROPERTY_SITES, stages=plan, canary=(), timeout_s=1200)
    retained: dict[str, str | None] = dict.fromkeys(PROPERTY_SITES, OLD) | published(tr)
    for _, _, tr in run_events(plan, todo):
        retained |= published(tr)
        assert retained == desired_versions(tr.rollout)


@settings(max_examples=100, deadline=None)
@given(plans, st.permutations(PROPERTY_SITES), st.integers(0, 5))
def test_a_rollout_whose_sites_all_succeed_completes_commanding_each_once(plan, order, seen):
    """Whatever the plan and the order of the reports, every site is commanded exactly once,
    and when all have succeeded (some only saying so in a birth message) it is complete."""
    tr = start(targets=PROPERTY_SITES, stages=plan, canary=())
    commanded = sent(tr)
    r = tr.rollout
    when = T0
    while counts(r)["succeeded"] < len(PROPERTY_SITES):
        started = [s for s in order if r.sites[s].state == "queued"]
        site = next(s for s in started if r.stages[r.sites[s].stage].started_at is not None)
        when += timedelta(minutes=1)
        if order.index(site) < seen:
            tr = apply(r, SiteSeen(site=site, at=when, version=V))
        else:
            tr = apply(r, SiteReport(site=site, at=when, state="succeeded", attempt=1))
        commanded += sent(tr)
        r = tr.rollout
    assert r.status == "completed"
    assert sorted(commanded) == PROPERTY_SITES
    assert set(desired_versions(r).values()) == {V}
