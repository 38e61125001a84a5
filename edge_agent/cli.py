"""``onecard-edge``: the site daemon's command line."""

from __future__ import annotations

from importlib.metadata import version as _dist_version

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """onecard-edge runs at each branch site, next to its door readers, attendance clocks,
    POS tills and recharge kiosks. It decides every tap from a local SQLite copy, so the
    site keeps working when the link to HQ is down, and syncs with onecard-central over MQTT.

    The daemon itself arrives with the edge-core issue; today this lists the version.
    """


@main.command()
def version() -> None:
    """Print the installed onecard version."""
    click.echo(_dist_version("onecard"))
