"""``onecard-central user …``: the HQ dashboard's accounts::

    onecard-central user add li.na --role operator --name "李娜"
    onecard-central user passwd li.na
    onecard-central user disable li.na
    onecard-central user list

Passwords are asked for twice on the terminal (never echoed) or read from the first line of
``--password-file``; they are hashed here (scrypt), never stored or logged. Every change is
audited with the operator (``--operator``, default the login user) and source ``hq:cli``;
``passwd`` and ``disable`` end the user's sessions at once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from central.cli_common import DB_OPTION, DbTarget, run_op, who

_OPERATOR = click.option("--operator", default=who, show_default="login user")
_PASSWORD_FILE = click.option(
    "--password-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="read the password from this file's first line instead of asking",
)


@click.group("user")
def user() -> None:
    """Dashboard accounts: add, passwd, disable, enable, list.

    \b
    Roles: admin (everything), operator (cards and money), finance (clearing,
    reconciliation), technician (sites, logs, upgrades; no money), auditor (read-only).
    """


@user.command("add")
@click.argument("username")
@click.option(
    "--role",
    type=click.Choice(["admin", "operator", "finance", "technician", "auditor"]),
    required=True,
)
@click.option("--name", "display_name", default="", help="the name shown in the dashboard")
@_PASSWORD_FILE
@_OPERATOR
@DB_OPTION
def user_add(
    username: str,
    role: str,
    display_name: str,
    password_file: Path | None,
    operator: str,
    db_path: DbTarget,
) -> None:
    """Create USERNAME with ROLE and a password."""
    from central import users

    name = _username(username)
    password_hash = _new_password_hash(name, password_file)
    _change(
        db_path,
        lambda conn: users.add_user(
            conn,
            name,
            role,
            password_hash,
            display_name=display_name,
            operator=operator,
            source="hq:cli",
        ),
    )
    click.echo(f"user {name} added ({role})")


@user.command("passwd")
@click.argument("username")
@_PASSWORD_FILE
@_OPERATOR
@DB_OPTION
def user_passwd(
    username: str, password_file: Path | None, operator: str, db_path: DbTarget
) -> None:
    """Set USERNAME's password; their open sessions end."""
    from central import users

    name = _username(username)
    # Refuse an unknown user before asking for a password twice.
    if run_op(db_path, lambda conn: users.get_user(conn, name)) is None:
        raise click.ClickException(f"no user {name!r}")
    password_hash = _new_password_hash(name, password_file)
    _change(
        db_path,
        lambda conn: users.set_password(
            conn, name, password_hash, operator=operator, source="hq:cli"
        ),
    )
    click.echo(f"password of {name} changed; their sessions ended")


@user.command("disable")
@click.argument("username")
@_OPERATOR
@DB_OPTION
def user_disable(username: str, operator: str, db_path: DbTarget) -> None:
    """Stop USERNAME signing in; their open sessions end."""
    from central import users

    name = _username(username)
    _change(
        db_path, lambda conn: users.disable_user(conn, name, operator=operator, source="hq:cli")
    )
    click.echo(f"user {name} disabled")


@user.command("enable")
@click.argument("username")
@_OPERATOR
@DB_OPTION
def user_enable(username: str, operator: str, db_path: DbTarget) -> None:
    """Let a disabled USERNAME sign in again."""
    from central import users

    name = _username(username)
    _change(db_path, lambda conn: users.enable_user(conn, name, operator=operator, source="hq:cli"))
    click.echo(f"user {name} enabled")


@user.command("list")
@click.option("--json", "as_json", is_flag=True)
@DB_OPTION
def user_list(as_json: bool, db_path: DbTarget) -> None:
    """Usernames, roles, state and last sign-in (never passwords)."""
    from central import users

    found = run_op(db_path, users.list_users)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "username": u.username,
                        "display_name": u.display_name,
                        "role": u.role,
                        "active": u.active,
                        "created": _iso(u.created_ms),
                        "last_login": _iso(u.last_login_ms),
                        "failed_logins": u.failed_logins,
                    }
                    for u in found
                ],
                ensure_ascii=False,
            )
        )
        return
    for u in found:
        state = "active" if u.active else "disabled"
        last = (_iso(u.last_login_ms) or "never")[:19]
        click.echo(
            f"{u.username:<24} {u.role:<10} {state:<8} last sign-in {last}  {u.display_name}"
        )


def _username(text: str) -> str:
    from central.users import UserError, normalize_username

    try:
        return normalize_username(text)
    except UserError as exc:
        raise click.BadParameter(str(exc), param_hint="USERNAME") from None


def _new_password_hash(username: str, password_file: Path | None) -> str:
    from central.users import UserError, check_password, hash_password

    if password_file is not None:
        lines = password_file.read_text(encoding="utf-8").splitlines()
        password = lines[0] if lines else ""
    else:
        password = click.prompt(
            f"password for {username}", hide_input=True, confirmation_prompt=True
        )
    try:
        check_password(password, username)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    return hash_password(password)


def _change(db_path: DbTarget, op: Any) -> None:
    from central.users import UserError

    try:
        run_op(db_path, op)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()
