"""``onecard-edge``: the site daemon's command line."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import Any

import click

from edge_agent.cli_desk import desk as _desk
from edge_agent.cli_options import CONFIG_OPTION, load_or_fail
from edge_agent.cli_osdp import osdp as _osdp


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """onecard-edge runs at each branch site, next to its door readers, attendance clocks,
    POS tills and recharge kiosks. It decides every tap from a local SQLite copy, so the
    site keeps working when the link to HQ is down, and syncs with onecard-central.

    \b
    Typical use:
      onecard-edge check-config            # is /etc/onecard/edge.toml right?
      onecard-edge seed members.csv        # load cardholders before HQ is connected
      onecard-edge run                     # the daemon (systemd runs this)
      onecard-edge status                  # terminals, outbox, versions
      onecard-edge install --bundle SITE-bundle.tar   # set up the systemd service
      onecard-edge logs -f --level warning # the daemon's log
    """


@main.command()
def version() -> None:
    """Print the installed onecard version."""
    click.echo(_dist_version("onecard"))


@main.command()
@CONFIG_OPTION
def run(config_path: Path) -> None:
    """Run the site daemon until SIGTERM (what the systemd unit starts)."""
    from edge_agent.logs import configure_logging
    from edge_agent.service import serve

    config = load_or_fail(config_path)
    configure_logging(config.log.level, config.log.format, site=config.site, file=config.log.file)
    asyncio.run(serve(config, version=_dist_version("onecard")))


@main.command("check-config")
@CONFIG_OPTION
def check_config(config_path: Path) -> None:
    """Validate the configuration and print the effective values."""
    config = load_or_fail(config_path)
    click.echo(f"{config_path}: ok")
    click.echo(f"  site            {config.site}")
    click.echo(f"  database        {config.database}")
    click.echo(f"  terminals.listen {config.terminals.listen or '(TCP disabled)'}")
    for url in config.terminals.serial:
        click.echo(f"  terminals.serial {url}")
    click.echo(f"  heartbeat_s     {config.terminals.heartbeat_s}")
    click.echo(f"  log             {config.log.level} ({config.log.format})")
    for reader in config.osdp.readers:
        key = "INSTALL MODE (no key)" if reader.install_mode else f"key {reader.scbk_file}"
        click.echo(
            f"  osdp reader     {reader.terminal} @ {reader.port} address {reader.address}, "
            f"{reader.baud} baud, {key}"
        )
    desk = config.desk
    if desk.enabled:
        pcsc = desk.reader or "the first PC/SC reader"
        click.echo(f"  desk            {desk.socket} ({pcsc}, records as {desk.terminal_id})")


@main.command()
@CONFIG_OPTION
@click.argument("seed_file", type=click.Path(exists=True, path_type=Path))
@click.option("--dry-run", is_flag=True, help="validate only; write nothing")
def seed(config_path: Path, seed_file: Path, dry_run: bool) -> None:
    """Load master data from SEED_FILE (JSON, or a cardholder CSV) into the site's store.

    Everything is checked first; on any problem nothing is written and every problem is
    listed with its line or field. Loading the same file twice changes nothing.
    """
    from edge_agent.adapters.sqlite_store import EdgeStore
    from edge_agent.seed import SeedError, apply_seed, load_seed

    config = load_or_fail(config_path)
    try:
        data = load_seed(seed_file)
    except SeedError as exc:
        raise click.ClickException(str(exc)) from None
    if data.site and data.site != config.site:
        raise click.ClickException(f"{seed_file} is for site {data.site}, this is {config.site}")
    if dry_run:
        click.echo(f"{seed_file}: ok ({len(data.persons)} persons, {len(data.cards)} cards)")
        return

    async def apply() -> dict[str, int]:
        async with EdgeStore.open(config.database, config.site) as store:
            result: dict[str, int] = await store.run(lambda conn: apply_seed(conn, data))
            return result

    counts: dict[str, int] = asyncio.run(apply())
    click.echo(f"{seed_file}: loaded " + ", ".join(f"{v} {k}" for k, v in counts.items()))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@main.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(config_path: Path, as_json: bool) -> None:
    """Show terminals, outbox depth and oldest unsynced age, and versions."""
    import msgspec

    from edge_agent.service import read_status

    config = load_or_fail(config_path)
    snapshot: dict[str, Any] | None = read_status(config)
    if snapshot is None:
        raise click.ClickException(
            f"no status in {config.data_dir} — is onecard-edge running? "
            "(systemctl status onecard-edge)"
        )
    stale = time.time() - float(snapshot.get("written_at", 0)) > 10
    if as_json:
        snapshot["stale"] = stale
        click.echo(msgspec.json.encode(snapshot).decode())
        return
    written = datetime.fromtimestamp(float(snapshot["written_at"]), UTC).astimezone()
    click.echo(f"site {snapshot['site']}  version {snapshot['version']}  pid {snapshot['pid']}")
    if stale:
        click.echo(f"  WARNING: status written {written:%Y-%m-%d %H:%M:%S} — daemon stopped?")
    oldest = _age(snapshot["outbox_oldest_age_s"])
    click.echo(
        f"outbox: {snapshot['outbox_depth']} unsynced, oldest {oldest}"
        f"  (epoch {snapshot['epoch']}, acked {snapshot['acked']})"
    )
    click.echo(
        f"versions: feed {snapshot['feed_version']}  blacklist {snapshot['blacklist_version']}"
    )
    desk = snapshot.get("desk")
    if desk:
        state = (
            "listening" if desk["listening"] else "NOT LISTENING (see the log: desk.unavailable)"
        )
        click.echo(f"desk: {state} on {desk['socket']}")
    disk = snapshot.get("disk")
    if disk:
        free = disk["free_bytes"]
        left = "?" if free is None else f"{free / 2**20:.0f} MiB free"
        line = f"disk: {disk['state']}  {left} (reserve {disk['reserve_bytes'] / 2**20:.0f} MiB)"
        if disk["state"] != "ok":
            line += f"  — PAYMENTS REFUSED ({disk['refused']} so far)"
        if disk.get("fail_safe_unrecorded"):
            line += f"  {disk['fail_safe_unrecorded']} fail-safe openings not yet written"
        click.echo(line)
    click.echo("terminals:")
    for term in snapshot["terminals"]:
        state = "online " if term["online"] else "OFFLINE"
        seen = term.get("last_seen_age_s")
        when = "never seen" if seen is None else f"last seen {_age(seen)} ago"
        extra = ""
        if term.get("lists_behind"):
            extra += f"  LISTS BEHIND ({term['lists_behind']}, {_age(term['lists_behind_s'])})"
        if term.get("records_missing"):
            extra += f"  {term['records_missing']} records missing"
        click.echo(f"  {term['id']:<12} {term['kind']:<10} {state} {when}{extra}")
    if not snapshot["terminals"]:
        click.echo("  (none registered — load a seed with terminals)")
    sys.exit(0)


ROOT_OPTION = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="work below DIR instead of / (tests, image building): no users, systemctl or udevadm",
)


def _tree(root: Path | None) -> Any:
    import os

    from edge_agent.install import HostSystem, RootSystem, Tree

    if root is None:
        if os.geteuid() != 0:
            raise click.ClickException(
                "run as root (sudo onecard-edge …), or build a tree elsewhere with --root DIR"
            )
        return Tree(Path("/"), HostSystem(click.echo))
    root = root.absolute()
    if root == Path("/"):
        raise click.ClickException("--root /: leave out --root to work on this machine")
    root.mkdir(parents=True, exist_ok=True)
    return Tree(root, RootSystem(root, click.echo))


@main.command()
@click.option(
    "--bundle",
    "bundle_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="SITE-bundle.tar from HQ (onecard-central site add)",
)
@ROOT_OPTION
@click.option("--no-start", is_flag=True, help="enable the service but do not (re)start it")
@click.option("--enable", is_flag=True, help="with --root: enable the unit inside the tree")
@click.option("--python", default="python3", show_default=True, help="Python for the venv")
@click.option(
    "--wheel",
    type=click.Path(dir_okay=False, path_type=Path),
    help="the onecard wheel to put in the venv (default: built from this checkout)",
)
@click.option(
    "--wheelhouse",
    type=click.Path(file_okay=False, path_type=Path),
    help="install from this directory of wheels, without the network",
)
@click.option("--skip-venv", is_flag=True, help="leave /opt/onecard/venv alone")
def install(
    bundle_path: Path,
    root: Path | None,
    no_start: bool,
    enable: bool,
    python: str,
    wheel: Path | None,
    wheelhouse: Path | None,
    skip_venv: bool,
) -> None:
    """Install this site's edge as a systemd service from HQ's bundle.

    Checks the bundle, creates the onecard user, /etc/onecard (configuration and password),
    /var/lib/onecard (the database), a virtualenv in /opt/onecard/venv, the unit and the
    udev rule for USB serial adapters, then enables and (re)starts onecard-edge. Running it
    again with a new bundle replaces the configuration and restarts. See docs/install.md.
    """
    from edge_agent import install as setup

    tree = _tree(root)
    try:
        bundle = setup.read_bundle(bundle_path)
        for warning in bundle.warnings:
            click.echo(f"WARNING: {warning}", err=True)
        click.echo(f"bundle {bundle_path}: site {bundle.site}, broker {bundle.config.mqtt.url}")
        options = setup.InstallOptions(
            start=not no_start,
            enable=enable,
            python=python,
            wheel=wheel,
            wheelhouse=wheelhouse,
            skip_venv=skip_venv,
        )
        setup.install(bundle, tree, options)
    except (setup.InstallError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("")
    for line in setup.next_steps(bundle, tree, options):
        click.echo(line)


@main.command()
@ROOT_OPTION
@click.option("--purge", is_flag=True, help="also delete /etc/onecard, /var/lib/onecard (data)")
@click.option("--force", is_flag=True, help="purge even records HQ has not received yet")
@click.option("--yes", "-y", is_flag=True, help="do not ask before purging")
def uninstall(root: Path | None, purge: bool, force: bool, yes: bool) -> None:
    """Stop and remove the service, udev rule and venv.

    The configuration (/etc/onecard) and the site database (/var/lib/onecard) stay unless
    --purge; --purge refuses while records have not reached HQ, unless --force.
    """
    from edge_agent import install as setup

    tree = _tree(root)
    if purge and not yes:
        click.confirm(
            f"Delete {tree.path(setup.ETC)} and {tree.path(setup.STATE)} (the site database)?",
            abort=True,
        )
    try:
        setup.uninstall(tree, purge=purge, force=force)
    except (setup.InstallError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("onecard-edge uninstalled.")


@main.command()
@CONFIG_OPTION
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines")
@click.option("--level", default="info", show_default=True, help="lowest level shown")
@click.option("--since", help="how far back: 30s, 10m, 2h, 1d, today, 2026-11-23 15:00")
@click.option("--unit", default="onecard-edge", show_default=True, help="systemd unit")
@click.option("--file", "log_file", type=click.Path(path_type=Path), help="read this log file")
@click.option("--json", "as_json", is_flag=True, help="print the JSON lines unchanged")
def logs(
    config_path: Path,
    follow: bool,
    level: str,
    since: str | None,
    unit: str,
    log_file: Path | None,
    as_json: bool,
) -> None:
    """Show the daemon's log: the journal (journalctl -u UNIT), or, on a machine without
    journald, the [log] file of edge.toml. Lines below --level are left out."""
    import json

    from edge_agent import logs as edge_logs

    try:
        min_level = edge_logs.parse_level(level)
        cutoff = edge_logs.parse_since(since) if since else None
    except edge_logs.LogQueryError as exc:
        raise click.BadParameter(str(exc)) from None
    if log_file is None and edge_logs.journal_available():
        lines = edge_logs.read_journal(unit, cutoff, follow=follow)
    else:
        log_file = log_file or load_or_fail(config_path).log.file
        if log_file is None:
            raise click.ClickException(
                f"no journald on this machine and no [log] file in {config_path}: set "
                '[log] file = "/var/log/onecard/edge.log" and restart the daemon'
            )
        if not log_file.is_file():
            raise click.ClickException(f"{log_file}: no such log file (is the daemon running?)")
        lines = edge_logs.read_file(log_file, follow=follow)
    colors = sys.stdout.isatty()
    try:
        for line in lines:
            entry = edge_logs.select(line, min_level, cutoff)
            if entry is None:
                continue
            if isinstance(entry, str):
                click.echo(entry)
            elif as_json:
                click.echo(json.dumps(entry, ensure_ascii=False))
            else:
                click.echo(edge_logs.format_entry(entry, colors=colors))
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `onecard-edge logs | head`
        sys.stderr.close()


@main.command()
@CONFIG_OPTION
def selftest(config_path: Path) -> None:
    """Check this installation can run: every module imports, the store opens read-only, the
    configuration is valid. The updater runs it in a new release before switching to it."""
    from edge_agent.updater import selftest as check

    problems = check(load_or_fail(config_path))
    for problem in problems:
        click.echo(f"FAIL {problem}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"ok: onecard {_dist_version('onecard')} from {sys.prefix}")


@main.group()
def updater() -> None:
    """Install releases: what onecard-edge-updater.service runs (docs/upgrade.md)."""


RESTART_OPTION = click.option(
    "--restart-command",
    help="how to restart the daemon after switching (default: [upgrade] restart_command)",
)


def _updater(config_path: Path, restart_command: str | None) -> Any:
    import shlex

    from edge_agent.updater import Updater

    config = load_or_fail(config_path)
    restart = shlex.split(restart_command) if restart_command else config.upgrade.restart_command
    return Updater(config, config_path, restart, echo=click.echo)


def _report(result: Any) -> None:
    if result.state == "succeeded":
        click.echo(f"OK {result.detail}")
        return
    click.echo(
        f"{result.state.upper()} ({result.reason}): {result.detail}; "
        f"running {result.running_version}",
        err=True,
    )
    for line in result.log:
        click.echo(f"  | {line}", err=True)
    sys.exit(1)


@updater.command("run")
@CONFIG_OPTION
@RESTART_OPTION
def updater_run(config_path: Path, restart_command: str | None) -> None:
    """Carry out the daemon's pending upgrade request, if any (the path unit starts this)."""
    result = _updater(config_path, restart_command).run_request()
    if result is None:
        click.echo("no upgrade request")
        return
    _report(result)


@updater.command("install")
@CONFIG_OPTION
@RESTART_OPTION
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
def updater_install(config_path: Path, restart_command: str | None, directory: Path) -> None:
    """Install the signed release in DIRECTORY (e.g. from a USB stick) as a remote upgrade
    would: verify, install, self-test, switch, restart, health gate, or roll back."""
    _report(_updater(config_path, restart_command).install_dir(directory))


@updater.command("adopt")
@CONFIG_OPTION
def updater_adopt(config_path: Path) -> None:
    """Make an install from before releases (/opt/onecard/venv) the first release, so that
    /opt/onecard/current exists and upgrades can roll back to it (docs/upgrade.md)."""
    from edge_agent.updater import adopt_legacy_venv, current_version, legacy_version
    from edge_agent.upgrade import Layout

    layout = Layout.of(load_or_fail(config_path))
    version = legacy_version(layout)
    if current_version(layout) is None and version is None:
        raise click.ClickException(f"no onecard in {layout.opt / 'venv'} to adopt")
    if version is not None and adopt_legacy_venv(layout, version):
        click.echo(f"{layout.current} -> releases/{version} (venv -> ../../venv)")
    else:
        click.echo(f"{layout.current} -> releases/{current_version(layout)} (already there)")


main.add_command(_desk)
main.add_command(_osdp)
