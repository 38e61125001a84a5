"""Options shared by every ``onecard-edge`` command group (cli, cli_desk, cli_osdp)."""

from __future__ import annotations

from pathlib import Path

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


def load_or_fail(config_path: Path) -> EdgeConfig:
    """The configuration, or the CLI's clear error naming the key that is wrong."""
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
