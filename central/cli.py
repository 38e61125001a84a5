"""``onecard-central``: HQ's command line."""

from __future__ import annotations

from importlib.metadata import version as _dist_version

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """onecard-central runs at HQ: it ingests every site's records over MQTT, keeps the money
    ledger and master data (persons, cards, balances, blacklists), and serves the dashboard.

    Sites, broker provisioning and the dashboard arrive with later issues; today this lists
    the version.
    """


@main.command()
def version() -> None:
    """Print the installed onecard version."""
    click.echo(_dist_version("onecard"))
