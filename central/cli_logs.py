"""``onecard-central logs SITE``: a site's log, live, through the running central.

It talks to central's HTTP API (``GET /api/v1/sites/{site}/logs``, Server-Sent Events) with
an API token of an admin or technician, so it works from any machine that reaches HQ's
dashboard — no broker credentials, no VPN to the branch. Standard library only (urllib),
so it runs wherever onecard is installed.
"""

from __future__ import annotations

import json
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click

from edge_agent.logs import LogQueryError, format_entry, parse_since

#: Seconds without even a keep-alive comment before the stream counts as dead.
READ_TIMEOUT_S = 60


class _Ended(Exception):  # noqa: N818 - control flow: the server ended the stream
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def stream_url(base: str, site: str, *, level: str, since: str, grep: str, follow: bool) -> str:
    """The API URL of ``site``'s log stream with these filters."""
    query = {"level": level, "follow": "1" if follow else "0"}
    if since:
        query["since"] = since
    if grep:
        query["grep"] = grep
    path = f"/api/v1/sites/{urllib.parse.quote(site, safe='')}/logs"
    return base.rstrip("/") + path + "?" + urllib.parse.urlencode(query)


def read_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a Server-Sent Events stream (comments skipped)."""
    kind, data = "message", list[str]()
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)


def show(kind: str, data: str, out: IO[str], *, colors: bool) -> None:
    """Print one event; raise :class:`_Ended` at the end of the stream."""
    body: dict[str, Any] = json.loads(data)
    if kind == "line":
        entry = {
            "timestamp": body.get("at"),
            "level": body.get("level"),
            "event": body.get("event"),
            **(body.get("fields") or {}),
        }
        out.write(format_entry(entry, colors=colors) + "\n")
        out.flush()
    elif kind == "notice":
        click.echo(f"-- {body.get('text', '')}", err=True)
    elif kind == "caught_up":
        click.echo("-- live from here", err=True)
    elif kind == "end":
        raise _Ended(str(body.get("reason", "ended")))


def _open(url: str, token: str, ca_file: Path | None) -> Any:
    request = urllib.request.Request(  # noqa: S310 - the URL is checked to be http(s) below
        url, headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    )
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    return urllib.request.urlopen(request, timeout=READ_TIMEOUT_S, context=context)  # noqa: S310


@click.command("logs")
@click.argument("site")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines (Ctrl-C stops)")
@click.option(
    "--level",
    type=click.Choice(["debug", "info", "warning", "error", "critical"]),
    default="info",
    show_default=True,
    help="lowest level shown (debug: the site logs more while you watch, not to its journal)",
)
@click.option(
    "--since",
    default=None,
    help="first replay lines from this far back: 30s, 10m, 2h "
    "[default: 10m without --follow, none with it]",
)
@click.option("--grep", default="", help="only lines containing this text (any case)")
@click.option(
    "--url",
    envvar="ONECARD_URL",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="central's dashboard/API address (serve --http)",
)
@click.option(
    "--token",
    envvar="ONECARD_TOKEN",
    required=True,
    help="an API token of an admin or technician (onecard-central token add)",
)
@click.option(
    "--set-level",
    type=click.Choice(["debug", "info", "warning", "error", "critical"]),
    help="first change the site daemon's own log level (journal too), for --for",
)
@click.option(
    "--for",
    "level_for",
    default="30m",
    show_default=True,
    help="how long --set-level lasts before the site reverts it by itself: 10m, 2h …",
)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="ONECARD_CA_FILE",
    help="CA certificate to trust for an https:// URL",
)
def logs(
    site: str,
    follow: bool,
    level: str,
    since: str | None,
    grep: str,
    url: str,
    token: str,
    ca_file: Path | None,
    set_level: str | None,
    level_for: str,
) -> None:
    """Print SITE's daemon log, from the site itself, through central.

    \b
    Examples:
      onecard-central logs SZ-FUTIAN                       # the last 10 minutes
      onecard-central logs SZ-FUTIAN -f --level warning    # live, warnings and worse
      onecard-central logs SZ-FUTIAN -f --since 10m --grep POS-02
      onecard-central logs SZ-FUTIAN --set-level debug --for 30m   # then reverts

    Secrets are removed and card numbers masked at the site. At most 50 lines a second
    are sent; a "N lines suppressed" line says when more were logged. Every tail is in
    the audit log.
    """
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter("must be an http:// or https:// URL", param_hint="--url")
    if set_level is not None:
        _set_level(url, site, token, ca_file, set_level, level_for)
        if not follow:
            return
    chosen_since = since if since is not None else ("" if follow else "10m")
    target = stream_url(url, site, level=level, since=chosen_since, grep=grep, follow=follow)
    try:
        response = _open(target, token, ca_file)
    except urllib.error.HTTPError as exc:
        raise click.ClickException(_http_error(exc)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(f"cannot reach central at {url}: {reason}") from None
    colors = sys.stdout.isatty()
    try:
        with response:
            lines = (raw.decode("utf-8", "replace") for raw in response)
            for kind, data in read_events(lines):
                show(kind, data, sys.stdout, colors=colors)
    except _Ended as ended:
        if ended.reason == "no_answer":
            raise click.ClickException(
                f"{site} did not answer (is it online? see the overview)"
            ) from None
        if ended.reason not in {"caught_up", "closed"}:
            click.echo(f"-- tail ended: {ended.reason}", err=True)
        return
    except KeyboardInterrupt:
        return
    except (OSError, TimeoutError) as exc:
        raise click.ClickException(f"the stream from central broke off: {exc}") from None
    raise click.ClickException("central closed the stream without ending it")


def _set_level(
    url: str, site: str, token: str, ca_file: Path | None, level: str, span: str
) -> None:
    now = datetime.now(UTC)
    try:
        seconds = int((now - parse_since(span, now)).total_seconds())
    except LogQueryError:
        raise click.BadParameter(f"{span!r}: use 10m, 2h …", param_hint="--for") from None
    target = url.rstrip("/") + f"/api/v1/sites/{urllib.parse.quote(site, safe='')}/log-level"
    body = json.dumps({"level": level, "duration_s": seconds}).encode()
    request = urllib.request.Request(  # noqa: S310 - checked to be http(s) by the caller
        target,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context):  # noqa: S310
            pass
    except urllib.error.HTTPError as exc:
        raise click.ClickException(_http_error(exc)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(f"cannot reach central at {url}: {reason}") from None
    click.echo(f"{site}: log level {level} for {seconds} s, then it reverts by itself", err=True)


def _http_error(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
        message = body["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = exc.reason
    return f"central answered {exc.code}: {message}"
