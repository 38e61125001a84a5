"""Options shared by every ``onecard-edge`` command group (cli, cli_desk, cli_osdp)."""

from __future__ import annotations

from pathlib import Path

import click

from edge_agent.config import DEFAULT_PATH

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_PATH,
    show_default=True,
    envvar="ONECARD_EDGE_CONFIG",
    help="edge.toml to use",
)
