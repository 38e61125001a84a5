"""``onecard-central``: HQ's command line."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import signal
import sys
from importlib.metadata import version as _dist_version
from pathlib import Path

import click

from central.cli_common import DB_OPTION, DbTarget, run_op

BROKER_DIR_OPTION = click.option(
    "--broker-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/etc/onecard/broker"),
    show_default=True,
    envvar="ONECARD_BROKER_DIR",
    help="the directory `broker init` wrote",
)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"{text!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """onecard-central runs at HQ: it ingests every site's records over MQTT exactly once,
    keeps the money ledger and master data (persons, cards, balances, blacklists), and feeds
    every site the changes it needs.

    \b
    Typical set-up:
      onecard-central broker init --out /etc/onecard/broker --host hq.example.com
      onecard-central site add SZ-FUTIAN --url mqtts://hq.example.com:8883
      onecard-central seed people.json
      onecard-central serve --broker-url mqtts://hq.example.com:8883
    """


@main.command()
def version() -> None:
    """Print the installed onecard version."""
    click.echo(_dist_version("onecard"))


@main.command()
@DB_OPTION
@click.option(
    "--broker-url",
    required=True,
    envvar="ONECARD_BROKER_URL",
    help="mqtts://HOST:PORT of the broker",
)
@click.option("--username", default="central", show_default=True)
@click.option(
    "--password-file",
    type=click.Path(exists=True, path_type=Path),
    envvar="ONECARD_BROKER_PASSWORD_FILE",
    help="file holding central's broker password (broker-dir/central.password)",
)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, path_type=Path),
    envvar="ONECARD_BROKER_CA",
    help="the broker's CA certificate",
)
@click.option(
    "--http",
    "http",
    envvar="ONECARD_HTTP",
    metavar="HOST:PORT",
    help="serve the JSON API (/api/v1) there, e.g. 127.0.0.1:8080",
)
@click.option(
    "--secure-cookies/--no-secure-cookies",
    default=False,
    envvar="ONECARD_SECURE_COOKIES",
    help="mark the dashboard's cookies Secure (behind an HTTPS proxy; always with --tls-cert)",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="ONECARD_TLS_CERT",
    help="serve --http over HTTPS with this certificate (`broker web-cert` issues one)",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="ONECARD_TLS_KEY",
    help="the certificate's private key",
)
@click.option(
    "--alert-webhook",
    envvar="ONECARD_ALERT_WEBHOOK",
    metavar="URL",
    help="POST every alert opened or resolved there as JSON (docs/monitoring.md)",
)
@click.option(
    "--site-offline-after",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    envvar="ONECARD_SITE_OFFLINE_AFTER",
    metavar="SECONDS",
    help="a site gone this long raises an emergency alert",
)
@click.option(
    "--alert-interval",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    envvar="ONECARD_ALERT_INTERVAL",
    metavar="SECONDS",
    help="how often the alert rules run",
)
@click.option(
    "--release-store",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="ONECARD_RELEASE_STORE",
    help="serve its releases to edges at /releases/ (with --http and --site-passwords)",
)
@click.option(
    "--site-passwords",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="ONECARD_SITE_PASSWORDS",
    help="the broker's password file (broker-dir/passwd): sites download releases with "
    "their MQTT credentials",
)
@click.option(
    "--worker",
    default="main",
    show_default=True,
    envvar="ONECARD_CENTRAL_WORKER",
    metavar="NAME",
    help="this worker's name, stable across restarts (its broker session); with "
    "--db postgresql://… give each worker its own (docs/scaling.md)",
)
@click.option("--log-level", default="info", show_default=True)
def serve(
    db_path: DbTarget,
    broker_url: str,
    username: str,
    password_file: Path | None,
    ca_file: Path | None,
    http: str | None,
    secure_cookies: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    alert_webhook: str | None,
    site_offline_after: float,
    alert_interval: float,
    release_store: Path | None,
    site_passwords: Path | None,
    worker: str,
    log_level: str,
) -> None:
    """Run central: ingest records, publish acks, feed and blacklist, and the dashboard
    with the JSON API (--http), until SIGTERM."""
    from central.service import CentralService
    from central.store import is_postgres, open_store
    from edge_agent.adapters.mqtt_client import BrokerSettings
    from edge_agent.logs import configure_logging

    configure_logging(log_level, "auto")
    broker = BrokerSettings.from_url(
        broker_url,
        username=username,
        password=password_file.read_text().strip() if password_file else "",
        ca_file=ca_file,
    )

    listen = _host_port(http) if http else None
    if (tls_cert is None) != (tls_key is None):
        raise click.BadParameter("give both --tls-cert and --tls-key", param_hint="--tls-cert")
    tls = (tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
    from central.alerts import AlertSettings
    from central.core.alerts import Thresholds

    if alert_webhook and not alert_webhook.startswith(("http://", "https://")):
        raise click.BadParameter("must be an http:// or https:// URL", param_hint="--alert-webhook")
    alerting = AlertSettings(
        limits=Thresholds(site_offline_s=site_offline_after),
        interval_s=alert_interval,
        webhook_url=alert_webhook or None,
    )

    async def go() -> None:
        from central.users import web_key
        from central.web.app import dashboard_server
        from central.web.page import WebConfig

        async with open_store(db_path) as store:
            service = CentralService(store, broker, alerting=alerting, worker=worker)
            if is_postgres(db_path):
                from central.leader import PostgresLease

                service.leadership = PostgresLease(dsn=str(db_path), worker=worker)
                service.shared_uplink = True
            from central.logtail import TailHub

            hub = service.logtail = TailHub(store, service.send_command)
            from central.rollouts import RolloutDriver

            service.rollouts = RolloutDriver(store, service.publish)
            artifacts = None
            if release_store is not None and site_passwords is not None:
                from central.artifacts import ReleaseStore, SitePasswords, artifact_app

                artifacts = artifact_app(ReleaseStore(release_store), SitePasswords(site_passwords))
            server = None
            if listen is not None:
                from central.metrics import metrics_endpoint

                server = dashboard_server(
                    store,
                    *listen,
                    secret_key=await store.run(web_key),
                    config=WebConfig(secure_cookies=secure_cookies or tls is not None),
                    metrics=metrics_endpoint(store, service),
                    logtail=hub,
                    artifacts=artifacts,
                    service=service,
                    tls=tls,
                )

            def stop() -> None:
                service.stop()
                if server is not None:
                    server.should_exit = True

            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(service.run())
                tasks.create_task(hub.run(service.stopping))
                if server is not None:
                    tasks.create_task(server.serve())

    asyncio.run(go())


@main.command()
@DB_OPTION
@click.argument("seed_file", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--batch",
    help="import batch id (default: the file name); the same batch "
    "never adds an opening balance twice",
)
def seed(db_path: DbTarget, seed_file: Path, batch: str | None) -> None:
    """Load people, cards, opening balances and per-site data (JSON) into central."""
    import msgspec

    from central.master import CentralSeed, apply_seed

    try:
        data = msgspec.json.decode(seed_file.read_bytes(), type=CentralSeed)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise click.ClickException(f"{seed_file}: {exc}") from None
    counts = run_op(db_path, lambda conn: apply_seed(conn, data, batch=batch or seed_file.name))
    click.echo(f"{seed_file}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))


@main.group()
def broker() -> None:
    """Provision the MQTT broker (mosquitto): TLS, passwords, ACL."""


@broker.command("init")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    required=True,
    help="name or address branches use to reach the broker (repeatable)",
)
@click.option("--port", type=int, default=8883, show_default=True)
def broker_init(out: Path, hosts: tuple[str, ...], port: int) -> None:
    """Write a CA, server certificate, mosquitto.conf, ACL and central's credentials."""
    from central.provision import ProvisionError, init_broker

    try:
        made = init_broker(out, hostnames=list(hosts), port=port)
    except ProvisionError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"broker files in {made.root}; run: mosquitto -c {made.conf}")


@broker.command("renew-cert")
@BROKER_DIR_OPTION
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="the full list of names branches dial (default: those of the current certificate)",
)
def broker_renew_cert(broker_dir: Path, hosts: tuple[str, ...]) -> None:
    """Issue a new 2-year server certificate from the same CA (branches change nothing);
    then reload mosquitto."""
    from central.provision import ProvisionError, renew_server_cert

    try:
        path = renew_server_cert(broker_dir, hostnames=list(hosts) or None)
    except ProvisionError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"new server certificate: {path}; now run: systemctl reload mosquitto")


@broker.command("web-cert")
@BROKER_DIR_OPTION
@click.option(
    "--host",
    "hosts",
    multiple=True,
    required=True,
    help="name or address branches and browsers use to reach central's HTTPS (repeatable)",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="where to write web.crt and web.key (default: the broker directory)",
)
def broker_web_cert(broker_dir: Path, hosts: tuple[str, ...], out: Path | None) -> None:
    """Issue a certificate for `serve --tls-cert/--tls-key` from the broker's CA, which
    every edge already trusts: release downloads and the dashboard over HTTPS."""
    from central.provision import ProvisionError, issue_web_cert

    try:
        cert, key = issue_web_cert(broker_dir, hostnames=list(hosts), out_dir=out)
    except ProvisionError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"certificate {cert}, key {key}; serve with --tls-cert {cert} --tls-key {key}")


@main.group()
def site() -> None:
    """Add, remove, rotate and list sites."""


@site.command("add")
@click.argument("site_id")
@DB_OPTION
@BROKER_DIR_OPTION
@click.option("--url", required=True, help="mqtts://HOST:PORT the branch dials")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="bundle dir")
def site_add(site_id: str, db_path: DbTarget, broker_dir: Path, url: str, out: Path | None) -> None:
    """Create SITE_ID at central and its broker credentials; write the branch's bundle."""
    from central.master import register_site
    from central.provision import ProvisionError, add_site

    try:
        bundle = add_site(broker_dir, site_id, broker_url=url, out=out)
    except ProvisionError as exc:
        raise click.ClickException(str(exc)) from None
    run_op(db_path, lambda conn: register_site(conn, site_id))
    click.echo(f"site {site_id} created; bundle {bundle} (reload mosquitto: kill -HUP)")


@site.command("remove")
@click.argument("site_id")
@DB_OPTION
@BROKER_DIR_OPTION
def site_remove(site_id: str, db_path: DbTarget, broker_dir: Path) -> None:
    """Revoke SITE_ID's credentials; central keeps its records and refuses new ones."""
    from central.master import remove_site
    from central.provision import ProvisionError
    from central.provision import remove_site as revoke

    try:
        revoke(broker_dir, site_id)
    except ProvisionError as exc:
        raise click.ClickException(str(exc)) from None
    run_op(db_path, lambda conn: remove_site(conn, site_id))
    click.echo(f"site {site_id} removed (reload mosquitto: kill -HUP)")


@site.command("rotate")
@click.argument("site_id")
@BROKER_DIR_OPTION
@click.option("--url", required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path))
def site_rotate(site_id: str, broker_dir: Path, url: str, out: Path | None) -> None:
    """Give SITE_ID a new password and bundle (the old one stops working on reload)."""
    from central.provision import ProvisionError, rotate_site

    try:
        bundle = rotate_site(broker_dir, site_id, broker_url=url, out=out)
    except ProvisionError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"new bundle {bundle} (reload mosquitto: kill -HUP)")


@site.command("list")
@DB_OPTION
def site_list(db_path: DbTarget) -> None:
    """Sites with online state, versions and outbox."""
    rows = run_op(
        db_path,
        lambda conn: conn.execute(
            "SELECT id, removed, online, version, feed_version, blacklist_version, outbox_depth"
            " FROM sites ORDER BY id"
        ).fetchall(),
    )
    for sid, removed, online, ver, feed, black, depth in rows:
        state = "removed" if removed else ("online" if online else "offline")
        click.echo(
            f"{sid:<16} {state:<8} v{ver or '-'} feed {feed} blacklist {black} "
            f"outbox {depth if depth is not None else '-'}"
        )


@main.command()
@DB_OPTION
@click.option("--json", "as_json", is_flag=True)
def balances(db_path: DbTarget, as_json: bool) -> None:
    """Every account's purses and the ledger sums they must equal."""
    rows = run_op(
        db_path,
        lambda conn: conn.execute(
            "SELECT a.person_id, a.cash_fen, a.subsidy_fen,"
            " (SELECT coalesce(sum(cash_fen), 0) FROM ledger l WHERE l.person_id = a.person_id),"
            " (SELECT coalesce(sum(subsidy_fen), 0) FROM ledger l WHERE l.person_id = a.person_id)"
            " FROM accounts a ORDER BY a.person_id"
        ).fetchall(),
    )
    if as_json:
        click.echo(json.dumps([list(r) for r in rows]))
        return
    bad = 0
    for pid, cash, subsidy, lcash, lsub in rows:
        mark = "" if (cash, subsidy) == (lcash, lsub) else "  <- differs from the ledger!"
        bad += bool(mark)
        click.echo(f"{pid:<16} cash {cash:>10} subsidy {subsidy:>8}{mark}")
    sys.exit(1 if bad else 0)


@main.command("migrate-store")
@click.option(
    "--from",
    "source",
    required=True,
    metavar="sqlite:///PATH",
    help="central's SQLite database (sqlite:///abs/path or a plain path); may be live",
)
@click.option(
    "--to",
    "target",
    required=True,
    metavar="postgresql://USER@HOST:PORT/DB",
    help="a fresh PostgreSQL database (the schema is created)",
)
def migrate_store_cmd(source: str, target: str) -> None:
    """Copy central's SQLite data into PostgreSQL, verified (docs/migrate-store.md)."""
    from central.migrate_store import MigrateStoreError, migrate_store, parse_sqlite_source

    if not target.startswith(("postgresql://", "postgres://")):
        raise click.BadParameter("use postgresql://USER@HOST:PORT/DB", param_hint="--to")

    def show(table: str, done: int, total: int) -> None:
        click.echo(f"  {table}: {done:,}/{total:,}", err=True)

    try:
        report = asyncio.run(migrate_store(parse_sqlite_source(source), target, progress=show))
    except MigrateStoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(report))


@main.group()
def alert() -> None:
    """Alerts raised by ``serve`` (docs/monitoring.md)."""


@alert.command("list")
@click.option("--all", "show_all", is_flag=True, help="resolved alerts too")
@click.option("--json", "as_json", is_flag=True, help="print JSON lines")
@DB_OPTION
def alert_list(show_all: bool, as_json: bool, db_path: DbTarget) -> None:
    """Alerts not yet resolved (with --all: every alert), most severe first."""
    from central.alerts import alert_list as rows_of

    rows = run_op(db_path, lambda conn: rows_of(conn, active=not show_all))
    for row in rows:
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
            continue
        who = f" by {row['acked_by']}" if row["acked_by"] else ""
        where = " ".join(p for p in (row["site"] or "HQ", row["subject"]) if p)
        state = f"{row['state']}{who}"
        click.echo(f"#{row['id']:<5} {row['severity']:<9} {state:<24} {row['kind']} {where}")
    if not rows and not as_json:
        click.echo("no alerts")


@alert.command("ack")
@click.argument("alert_id", type=int)
@click.option("--note", default="", help="what is being done about it")
@click.option("--operator", default=lambda: os.environ.get("SUDO_USER") or getpass.getuser())
@DB_OPTION
def alert_ack(alert_id: int, note: str, operator: str, db_path: DbTarget) -> None:
    """Acknowledge an open alert (someone is on it); recorded in the audit log."""
    from central import alerts
    from central.queries import ConflictError, NotFoundError
    from edge_agent.adapters.sqlite_store import now_ms

    try:
        row = run_op(
            db_path,
            lambda conn: alerts.acknowledge(
                conn, alert_id, operator=operator, source="hq:cli", at_ms=now_ms(), note=note
            ),
        )
    except (NotFoundError, ConflictError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"alert #{row['id']} acknowledged by {row['acked_by']}")


def _add_operation_commands() -> None:
    from central.cli_access import COMMANDS as ACCESS
    from central.cli_attendance import COMMANDS as ATTENDANCE
    from central.cli_logs import logs
    from central.cli_ops import COMMANDS
    from central.cli_release import release
    from central.cli_rollout import rollout
    from central.cli_users import user

    for command in (*COMMANDS, *ATTENDANCE, *ACCESS, release, rollout, user, logs):
        main.add_command(command)


_add_operation_commands()
