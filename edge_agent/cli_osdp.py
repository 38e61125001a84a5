"""``onecard-edge osdp …``: the provisioning step of OSDP door readers (docs/hardware.md)."""

from __future__ import annotations

from pathlib import Path

import click

from edge_agent.cli_options import CONFIG_OPTION, load_or_fail


@click.group()
def osdp() -> None:
    """OSDP door readers on RS-485 (the [[osdp.readers]] of edge.toml)."""


@osdp.command()
@CONFIG_OPTION
@click.option("--reader", "terminal", required=True, help="the reader's terminal id")
@click.option("--timeout", "timeout_s", default=30.0, show_default=True, help="seconds")
def provision(config_path: Path, terminal: str, timeout_s: float) -> None:
    """Give a new reader its secure channel key (SCBK), once, at installation.

    \b
    1. In edge.toml, set the reader's scbk_file (not existing yet) and install_mode = true.
    2. Put the reader in its install mode (see its manual) and stop the daemon:
       systemctl stop onecard-edge   (it holds the serial port)
    3. onecard-edge osdp provision --reader DOOR-01
       A fresh random key is written to scbk_file (mode 0600) once the reader took it.
    4. Set install_mode = false and start the daemon again.

    A reader is never re-keyed by the daemon; this command refuses to replace a key file.
    """
    from edge_agent.adapters.osdp_link import OsdpError
    from edge_agent.adapters.osdp_link import provision as provision_reader

    config = load_or_fail(config_path)
    reader = next((r for r in config.osdp.readers if r.terminal == terminal), None)
    if reader is None:
        raise click.ClickException(f"{config_path}: no [[osdp.readers]] with terminal {terminal}")
    click.echo(f"{terminal}: address {reader.address} on {reader.port} at {reader.baud} baud …")
    try:
        path = provision_reader(reader, timeout_s=timeout_s)
    except OsdpError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"OK: {terminal} keyed; its SCBK is in {path}")
    click.echo("Now set install_mode = false for this reader and start onecard-edge.")
