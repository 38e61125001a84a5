"""``onecard-sim``: terminal simulators, a virtual PC/SC card, load generator and demo."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import click

from firmware_sim.terminals import (
    KINDS,
    AttendanceClock,
    DoorReader,
    Outcome,
    PosTerminal,
    RechargeKiosk,
    Terminal,
    TerminalSettings,
)
from protocol import auth
from protocol.errors import AuthError


def _read_key(path: Path) -> bytes:
    try:
        return auth.parse_key(path.read_text())
    except AuthError as exc:
        raise click.BadParameter(f"{path}: {exc}") from None


def _read_keys(path: Path) -> dict[str, bytes]:
    try:
        raw = json.loads(path.read_text())
        return {str(tid): auth.parse_key(str(hexkey)) for tid, hexkey in raw.items()}
    except (ValueError, AuthError, AttributeError) as exc:
        raise click.BadParameter(
            f'{path}: expected {{"TERMINAL-ID": "64 hex chars"}}: {exc}'
        ) from None


def _print_display(terminal_id: str, text: str) -> None:
    click.echo(f"[{terminal_id}] " + text.replace("\n", " | "))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Simulate a site's terminals (door, attendance clock, POS, recharge kiosk) speaking
    the onecard terminal protocol, a contactless card for PC/SC desk readers, and load."""


@main.command()
@click.argument("terminal_ids", nargs=-1, required=True)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    required=True,
    help="keys file to write ({id: hex}); one ID.key file per terminal beside it",
)
def keygen(terminal_ids: tuple[str, ...], out: Path) -> None:
    """Create a fresh 32-byte key for each TERMINAL_ID."""
    keys = {tid: auth.new_key().hex() for tid in terminal_ids}
    out.write_text(json.dumps(keys, indent=2) + "\n")
    out.chmod(0o600)
    for tid, hexkey in keys.items():
        key_file = out.parent / f"{tid}.key"
        key_file.write_text(hexkey + "\n")
        key_file.chmod(0o600)
    click.echo(f"wrote {out} and {len(keys)} .key files")


def _parse_tap(spec: str) -> tuple[str, int | None, list[tuple[str, int]] | None]:
    """UID, UID:AMOUNT_FEN or UID:SKU*QTY+SKU*QTY."""
    uid, _, rest = spec.partition(":")
    if not rest:
        return uid.upper(), None, None
    if rest.isdigit():
        return uid.upper(), int(rest), None
    items = []
    for part in rest.split("+"):
        sku, _, qty = part.partition("*")
        items.append((sku, int(qty or "1")))
    return uid.upper(), None, items


async def _act(terminal: Terminal, spec: str) -> Outcome:
    uid, amount, items = _parse_tap(spec)
    if isinstance(terminal, PosTerminal):
        return await terminal.sale(uid, amount=amount, items=items)
    if isinstance(terminal, RechargeKiosk):
        return await terminal.recharge(uid, amount or 10000)
    if isinstance(terminal, AttendanceClock):
        return await terminal.punch(uid)
    if not isinstance(terminal, DoorReader):
        raise TypeError(f"no tap action for {type(terminal).__name__}")
    return await terminal.tap(uid)


@main.command()
@click.option("--kind", type=click.Choice(sorted(KINDS)), required=True)
@click.option("--connect", required=True, help="tcp://HOST:PORT or serial:///dev/PORT?baud=N")
@click.option("--id", "terminal_id", required=True, help="terminal id, e.g. POS-01")
@click.option(
    "--key-file",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="file holding the terminal's key as 64 hex characters",
)
@click.option(
    "--state-file",
    type=click.Path(path_type=Path),
    help="persist record numbers and buffered records here (like the terminal's flash)",
)
@click.option(
    "--tap",
    "taps",
    multiple=True,
    metavar="UID[:AMOUNT|:SKU*QTY+…]",
    help="present a card (repeatable); POS: fen amount or menu items; kiosk: recharge",
)
@click.option(
    "--stay/--no-stay",
    default=False,
    help="after the taps, stay connected (heartbeats, reconnects) until Ctrl-C",
)
@click.option(
    "--smart/--no-smart",
    default=False,
    help="door/attendance: decide every card locally from the lists the edge pushes, "
    "buffer and upload the records (智能终端)",
)
def terminal(
    kind: str,
    connect: str,
    terminal_id: str,
    key_file: Path,
    state_file: Path | None,
    taps: tuple[str, ...],
    stay: bool,
    smart: bool,
) -> None:
    """Run one simulated terminal: connect, authenticate, present cards, show the display.

    \b
    Example:
      onecard-sim terminal --kind pos --connect tcp://127.0.0.1:7700 \\
          --id POS-01 --key-file POS-01.key --tap 04A1B2C3D4E5F6:1250
    """
    if smart and kind not in ("door", "attendance"):
        raise click.BadParameter("only door readers and attendance clocks decide locally")
    settings = TerminalSettings(
        terminal_id, _read_key(key_file), connect, state_file=state_file, smart=smart
    )
    sim = KINDS[kind](settings, on_display=_print_display)

    async def run() -> int:
        try:
            await sim.connect()
        except Exception as exc:  # noqa: BLE001 - report any connect failure and exit non-zero
            click.echo(f"[{terminal_id}] cannot connect to {connect}: {exc}", err=True)
            return 2
        failures = 0
        for spec in taps:
            outcome = await _act(sim, spec)
            click.echo(
                f"[{terminal_id}] rec={outcome.rec} {outcome.code} ({outcome.latency_ms:.1f} ms)"
            )
            failures += not outcome.ok
        if sim.smart:
            await sim.upload_buffered()  # the records of the taps above reach the edge
        if stay:
            await sim.close()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await sim.run(stop)
        await sim.close()
        return 1 if failures else 0

    sys.exit(asyncio.run(run()))


@main.command()
@click.option(
    "--listen",
    default="tcp://127.0.0.1:7700",
    show_default=True,
    help="tcp://HOST:PORT to accept terminals on",
)
@click.option("--serial", "serials", multiple=True, help="serial:///dev/PORT to serve too")
@click.option(
    "--keys",
    "keys_file",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="JSON {terminal id: hex key} (as written by keygen)",
)
@click.option(
    "--cards",
    "cards_file",
    type=click.Path(exists=True, path_type=Path),
    help="JSON {uid: balance_fen}; default: no cards",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, path_type=Path),
    help="JSON {terminal id: config map} sent in WELCOME",
)
def endpoint(
    listen: str,
    serials: tuple[str, ...],
    keys_file: Path,
    cards_file: Path | None,
    config_file: Path | None,
) -> None:
    """Run the test endpoint: a stand-in edge for trying simulators (not the real edge)."""
    from edge_agent.adapters.transport import parse_endpoint
    from firmware_sim.endpoint import SimCard, TestEndpoint

    where = parse_endpoint(listen)
    cards: dict[str, Any] = json.loads(cards_file.read_text()) if cards_file else {}
    ep = TestEndpoint(
        keys=_read_keys(keys_file),
        cards={uid: SimCard(uid, int(balance)) for uid, balance in cards.items()},
        terminal_config=json.loads(config_file.read_text()) if config_file else {},
    )

    async def run() -> None:
        port = await ep.serve_tcp(where.host, where.port)
        for url in serials:
            await ep.serve_serial(parse_endpoint(url))
        click.echo(f"test endpoint on tcp://{where.host}:{port}; Ctrl-C to stop")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await ep.close()

    asyncio.run(run())


@main.command()
@click.option("--connect", required=True, help="tcp://HOST:PORT of the edge")
@click.option(
    "--kind", type=click.Choice(["pos", "door", "attendance"]), default="pos", show_default=True
)
@click.option(
    "--keys",
    "keys_file",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="JSON {terminal id: hex key}: one simulated terminal per entry",
)
@click.option(
    "--cards",
    "cards_arg",
    required=True,
    help="JSON file with a list of card UIDs, or a number N for 0400000000000..N-1",
)
@click.option("--rate", type=float, default=50.0, show_default=True, help="taps per second")
@click.option("--duration", type=float, default=10.0, show_default=True, help="seconds")
@click.option("--amount", type=int, default=100, show_default=True, help="POS amount in fen")
def load(
    connect: str,
    kind: str,
    keys_file: Path,
    cards_arg: str,
    rate: float,
    duration: float,
    amount: int,
) -> None:
    """Tap a card population at a target rate and report round-trip p50/p95/p99."""
    from firmware_sim.load import build_terminals, run_load

    if cards_arg.isdigit():
        cards = [f"0400{i:010X}" for i in range(int(cards_arg))]
    else:
        cards = [str(uid) for uid in json.loads(Path(cards_arg).read_text())]
    terminals = build_terminals(kind, connect, _read_keys(keys_file))

    async def run() -> None:
        await asyncio.gather(*(t.connect() for t in terminals))
        try:
            report = await run_load(
                terminals, cards, rate=rate, duration_s=duration, amount_fen=amount
            )
        finally:
            await asyncio.gather(*(t.close() for t in terminals))
        click.echo(report.table())
        click.echo("LOAD " + json.dumps(report.summary()))

    asyncio.run(run())


@main.command()
@click.option("--uid", default="04A1B2C3D4E5F6", show_default=True, help="card UID in hex")
@click.option(
    "--vpcd",
    default="127.0.0.1:35963",
    show_default=True,
    help="HOST:PORT where pcscd's vpcd driver listens",
)
def card(uid: str, vpcd: str) -> None:
    """Present a virtual contactless card to a PC/SC reader (vpcd) until Ctrl-C."""
    from firmware_sim.vcard import run_vcard

    host, _, port = vpcd.rpartition(":")
    run_vcard(host or "127.0.0.1", int(port), uid)


@main.command()
@click.option(
    "--burst",
    type=float,
    default=3.0,
    show_default=True,
    help="seconds of lunch-rush load at the end",
)
def demo(burst: float) -> None:
    """Play a short day at a site: every terminal kind, a cut cable, a wrong key, a rush."""
    from firmware_sim.demo import run_demo

    ok = asyncio.run(run_demo(burst_s=burst))
    sys.exit(0 if ok else 1)


@main.command("demo-site")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--port", type=int, default=7700, show_default=True, help="edge TCP port")
def demo_site(directory: Path, port: int) -> None:
    """Write a ready-to-run demo site into DIRECTORY: edge.toml, site.json (a seed with
    terminals, cardholders, a door and a canteen) and one KEY file per terminal."""
    from firmware_sim.demo import TERMINALS, demo_seed

    directory.mkdir(parents=True, exist_ok=True)
    keys = {tid: auth.new_key() for tid in TERMINALS}
    seed = demo_seed(keys, lunch_start_min=11 * 60)
    (directory / "site.json").write_text(json.dumps(seed, ensure_ascii=False, indent=1))
    (directory / "edge.toml").write_text(
        f'site = "{seed["site"]}"\ndata_dir = "{directory.resolve()}"\n\n'
        f'[terminals]\nlisten = "127.0.0.1:{port}"\n'
    )
    for tid, key in keys.items():
        path = directory / f"{tid}.key"
        path.write_text(key.hex() + "\n")
        path.chmod(0o600)
    click.echo(f"wrote {directory}/edge.toml, site.json and {len(keys)} terminal keys")
    click.echo(f"next: onecard-edge seed {directory}/site.json --config {directory}/edge.toml")


@main.command()
@click.option(
    "--duration",
    type=float,
    default=15.0,
    show_default=True,
    envvar="DURATION",
    help="seconds of traffic across the chain (env DURATION)",
)
def chain(duration: float) -> None:
    """Run the whole chain: broker, HQ, two branches with terminals; check the books."""
    from firmware_sim.chain_demo import run_chain_demo

    ok = asyncio.run(run_chain_demo(duration_s=duration))
    sys.exit(0 if ok else 1)


@main.command()
@click.option(
    "--duration",
    type=float,
    default=600.0,
    show_default=True,
    envvar="DURATION",
    help="seconds of traffic under faults (env DURATION)",
)
@click.option("--sites", type=click.IntRange(1, 8), default=2, show_default=True)
@click.option("--seed", type=int, default=2026, show_default=True, help="fault schedule seed")
def soak(duration: float, sites: int, seed: int) -> None:
    """Chaos soak: broker, central and edges as real processes under load while faults
    land (kill -9, network, disk full, link cuts, clock jumps); ends with the books' table
    and a `SOAK {json}` line; exit 1 if any invariant failed (docs/RELIABILITY.md)."""
    from firmware_sim.chaos import SoakSettings, run_soak

    verdict = asyncio.run(run_soak(SoakSettings(duration_s=duration, sites=sites, seed=seed)))
    sys.exit(0 if verdict.ok else 1)
