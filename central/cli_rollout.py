"""``onecard-central rollout …``: staged upgrades of sites to a published release::

    onecard-central rollout start 0.2.0 --stages 1,10%,rest --canary SZ-FUTIAN
    onecard-central rollout status [ROLLOUT]
    onecard-central rollout pause|resume|abort ROLLOUT
    onecard-central rollout retry ROLLOUT SITE…

These only write central's database; ``onecard-central serve`` sends the commands.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from central.cli_common import DB_OPTION, DbTarget, run_op, who

STORE_OPTION = click.option(
    "--store",
    "store_path",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/var/lib/onecard-central/releases"),
    show_default=True,
    envvar="ONECARD_RELEASE_STORE",
    help="central's release store (release publish)",
)


def _run(db_path: DbTarget, op: Any) -> Any:
    from central.core.rollout import RolloutError

    try:
        return run_op(db_path, op)
    except RolloutError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("rollout")
def rollout() -> None:
    """Staged rollouts of a published release to sites (docs/upgrade.md).

    \b
    onecard-central rollout start 0.2.0 --stages 1,10%,rest --canary SZ-FUTIAN
    onecard-central rollout status r-0.2.0
    onecard-central rollout pause r-0.2.0 --note "canary restarts"
    onecard-central rollout resume r-0.2.0
    onecard-central rollout abort r-0.2.0
    """


@rollout.command("start")
@DB_OPTION
@STORE_OPTION
@click.argument("version")
@click.option("--id", "rollout_id", help="the rollout's name (default r-VERSION)")
@click.option("--sites", help="comma-separated site ids (default: every registered site)")
@click.option("--stages", default="1,10%,rest", show_default=True, help="stage sizes")
@click.option("--canary", multiple=True, help="a site for the first stage (repeatable)")
@click.option(
    "--base-url",
    required=True,
    envvar="ONECARD_RELEASE_URL",
    help="central's HTTP address as edges reach it, e.g. https://hq.example.com:8443",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.IntRange(min=60),
    default=1800,
    show_default=True,
    help="seconds without a report before a site counts as timed out",
)
def start(
    db_path: DbTarget,
    store_path: Path,
    version: str,
    rollout_id: str | None,
    sites: str | None,
    stages: str,
    canary: tuple[str, ...],
    base_url: str,
    timeout_s: int,
) -> None:
    """Start rolling VERSION out: the first stage's sites get the upgrade command at once."""
    from central.artifacts import ReleaseStore
    from central.rollouts import create

    chosen = [s.strip() for s in sites.split(",") if s.strip()] if sites else None
    transition = _run(
        db_path,
        lambda conn: create(
            conn,
            rollout_id=rollout_id or f"r-{version}",
            version=version,
            releases=ReleaseStore(store_path),
            base_url=base_url,
            sites=chosen,
            stages=stages,
            canary=canary,
            operator=who(),
            timeout_s=timeout_s,
            at=datetime.now(UTC),
        ),
    )
    _show(transition.rollout, [])


def _show(r: Any, log: list[dict[str, Any]]) -> None:
    from central.core.rollout import counts

    note = f" ({r.pause_reason}: {r.pause_note})" if r.status == "paused" else ""
    click.echo(f"rollout {r.id}: {r.version}, {r.status}{note}")
    tally = ", ".join(f"{n} {state}" for state, n in counts(r).items() if n)
    click.echo(f"  sites: {tally}")
    for index, stage in enumerate(r.stages):
        state = "passed" if stage.passed_at else "started" if stage.started_at else "waiting"
        click.echo(f"  stage {index + 1} ({state}): {', '.join(stage.sites)}")
    for site in sorted(r.sites.values(), key=lambda s: (s.stage, s.site)):
        reason = f" [{site.reason}]" if site.reason else ""
        running = site.running_version or "?"
        click.echo(f"    {site.site:<16} {site.state:<12} runs {running:<10} {site.detail}{reason}")
    for line in log:
        at = datetime.fromtimestamp(line["at_ms"] / 1000, UTC).astimezone()
        who = f" by {line['operator']}" if line["operator"] else ""
        where = f" {line['site']}" if line["site"] else ""
        click.echo(f"  {at:%m-%d %H:%M:%S} {line['action']}{where}{who} {line['detail']}")


@rollout.command("status")
@DB_OPTION
@click.argument("rollout_id", required=False)
@click.option("--log", "log_lines", type=int, default=20, show_default=True, help="log lines")
def status(db_path: DbTarget, rollout_id: str | None, log_lines: int) -> None:
    """Every rollout in one line each, or one rollout: its stages, sites and log."""
    from central.core.rollout import counts
    from central.rollouts import history, list_rollouts, load

    if rollout_id is None:
        for r in _run(db_path, list_rollouts):
            done = counts(r)["succeeded"]
            click.echo(f"{r.id:<24} {r.version:<10} {r.status:<10} {done}/{len(r.sites)} succeeded")
        return

    def read(conn: Any) -> Any:
        return load(conn, rollout_id), history(conn, rollout_id, log_lines)

    r, log = _run(db_path, read)
    _show(r, log)


def _event(db_path: DbTarget, rollout_id: str, event: Any) -> None:
    from central.rollouts import transact

    transition = _run(db_path, lambda conn: transact(conn, rollout_id, event))
    _show(transition.rollout, [])


@rollout.command("pause")
@DB_OPTION
@click.argument("rollout_id")
@click.option("--note", default="", help="why, for the log")
def pause(db_path: DbTarget, rollout_id: str, note: str) -> None:
    """Send no more upgrade commands; sites already installing finish."""
    from central.core.rollout import Pause

    _event(db_path, rollout_id, Pause(at=datetime.now(UTC), operator=who(), note=note))


@rollout.command("resume")
@DB_OPTION
@click.argument("rollout_id")
def resume(db_path: DbTarget, rollout_id: str) -> None:
    """Go on (the failures so far are acknowledged; the same number again pauses it)."""
    from central.core.rollout import Resume

    _event(db_path, rollout_id, Resume(at=datetime.now(UTC), operator=who()))


@rollout.command("abort")
@DB_OPTION
@click.argument("rollout_id")
@click.option("--note", default="", help="why, for the log")
def abort(db_path: DbTarget, rollout_id: str, note: str) -> None:
    """Stop for good: nothing more is sent; sites keep the version they run."""
    from central.core.rollout import Abort

    _event(db_path, rollout_id, Abort(at=datetime.now(UTC), operator=who(), note=note))


@rollout.command("retry")
@DB_OPTION
@click.argument("rollout_id")
@click.argument("sites", nargs=-1, required=True)
def retry(db_path: DbTarget, rollout_id: str, sites: tuple[str, ...]) -> None:
    """Queue failed SITES again (a version rolled back on a site stays refused there)."""
    from central.core.rollout import Retry

    _event(db_path, rollout_id, Retry(at=datetime.now(UTC), operator=who(), sites=sites))


COMMANDS = (rollout,)
