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

from edge_agent.config import DEFAULT_PATH, ConfigError, EdgeConfig, load_config

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_PATH,
    show_default=True,
    envvar="ONECARD_EDGE_CONFIG",
    help="edge.toml to use",
)


def _load(config_path: Path) -> EdgeConfig:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


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

    config = _load(config_path)
    configure_logging(config.log.level, config.log.format)
    asyncio.run(serve(config, version=_dist_version("onecard")))


@main.command("check-config")
@CONFIG_OPTION
def check_config(config_path: Path) -> None:
    """Validate the configuration and print the effective values."""
    config = _load(config_path)
    click.echo(f"{config_path}: ok")
    click.echo(f"  site            {config.site}")
    click.echo(f"  database        {config.database}")
    click.echo(f"  terminals.listen {config.terminals.listen or '(TCP disabled)'}")
    for url in config.terminals.serial:
        click.echo(f"  terminals.serial {url}")
    click.echo(f"  heartbeat_s     {config.terminals.heartbeat_s}")
    click.echo(f"  log             {config.log.level} ({config.log.format})")


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

    config = _load(config_path)
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

    config = _load(config_path)
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
    click.echo("terminals:")
    for term in snapshot["terminals"]:
        state = "online " if term["online"] else "OFFLINE"
        seen = term.get("last_seen_age_s")
        when = "never seen" if seen is None else f"last seen {_age(seen)} ago"
        click.echo(f"  {term['id']:<12} {term['kind']:<10} {state} {when}")
    if not snapshot["terminals"]:
        click.echo("  (none registered — load a seed with terminals)")
    sys.exit(0)
