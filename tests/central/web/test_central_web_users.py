"""Dashboard accounts: scrypt passwords, names, throttling arithmetic, and the
``onecard-central user`` commands — every change audited."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from stores import central_db, open_store
from web_harness import PASSWORD, password_hash

from central import queries, users
from central.cli_users import user as user_group


def test_a_password_verifies_only_against_its_own_hash():
    stored = password_hash()
    assert stored.startswith("scrypt$32768$8$1$")
    assert users.verify_password(PASSWORD, stored)
    assert not users.verify_password(PASSWORD + "x", stored)
    assert users.hash_password(PASSWORD) != stored  # a fresh salt each time
    assert not users.needs_rehash(stored)
    assert users.needs_rehash(users.hash_password(PASSWORD, n=2**10))


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain",
        "bcrypt$1$2$3$4$5",
        "scrypt$x$8$1$AAAA$AAAA",
        "scrypt$1073741824$8$1$AA==$AA==",
        "scrypt$16384$8$1$!!$AA==",
    ],
)
def test_a_malformed_or_extravagant_hash_matches_nothing(stored):
    assert not users.verify_password(PASSWORD, stored)


def test_usernames_and_passwords_are_checked():
    assert users.normalize_username(" Li.Na ") == "li.na"
    for bad in ("", "-x", "a b", "名字", "x" * 65):
        with pytest.raises(users.UserError):
            users.normalize_username(bad)
    for bad in ("short", "li.na", "x" * 1025):
        with pytest.raises(users.UserError):
            users.check_password(bad, "li.na")
    users.check_password("long enough", "li.na")


def test_a_lock_doubles_from_one_minute_to_at_most_fifteen():
    policy = users.ThrottlePolicy()
    assert [policy.lock_ms(n, 5) // 60_000 for n in range(3, 12)] == [0, 0, 1, 2, 4, 8, 15, 15, 15]


def test_failures_are_counted_per_user_and_address_per_user_and_per_address(tmp_path):
    async def go():
        async with open_store(central_db(tmp_path, "c.db")) as store:
            await store.run(
                lambda c: users.add_user(
                    c, "li.na", "operator", password_hash(), operator="t", source="test"
                )
            )
            policy = users.ThrottlePolicy(per_user_ip=3, per_user=5, per_ip=7)

            async def fail(name, ip, at):
                attempt = await store.run(
                    lambda c: users.begin_login(c, name, ip, at_ms=at, policy=policy)
                )
                if not attempt.locked_until_ms:
                    await store.run(
                        lambda c: users.finish_login(c, attempt, password_ok=False, policy=policy)
                    )
                return attempt.locked_until_ms

            # Three from one address lock that pair only ...
            assert [await fail("li.na", "10.0.0.1", 1000) for _ in range(4)][-1] == 61_000
            assert await fail("li.na", "10.0.0.2", 1000) == 0
            # ... five from anywhere lock the username ...
            assert await fail("li.na", "10.0.0.3", 1000) == 0
            assert await fail("li.na", "10.0.0.4", 1000) == 61_000
            # ... and seven from one address lock that address for every username.
            for n in range(7):
                await fail(f"guess{n}", "10.9.9.9", 1000)
            assert await fail("someone", "10.9.9.9", 1000) == 61_000
            # Failures are forgotten after the window.
            assert await fail("someone", "10.9.9.9", 1000 + 16 * 60_000) == 0

    asyncio.run(go())


def cli(args, db: Path | str, **kwargs):
    return CliRunner().invoke(user_group, [*args, "--db", str(db)], **kwargs)


def test_the_user_commands_add_change_disable_and_list_and_audit_each(tmp_path):
    db = central_db(tmp_path)
    secret = tmp_path / "pw"
    secret.write_text("first password\n")
    added = cli(
        [
            "add",
            "Li.Na",
            "--role",
            "operator",
            "--name",
            "李娜",
            "--password-file",
            str(secret),
            "--operator",
            "boss",
        ],
        db,
    )
    assert added.exit_code == 0, added.output
    assert "user li.na added (operator)" in added.output
    again = cli(["add", "li.na", "--role", "admin", "--password-file", str(secret)], db)
    assert again.exit_code == 1 and "exists" in again.output
    # Asked twice on the terminal.
    changed = cli(
        ["passwd", "li.na", "--operator", "boss"], db, input="second password\nsecond password\n"
    )
    assert changed.exit_code == 0, changed.output
    mismatch = cli(
        ["passwd", "li.na"],
        db,
        input="third password\nthird passwort\nthird password\nthird password\n",
    )
    assert "do not match" in mismatch.output
    weak = cli(["passwd", "li.na"], db, input="short\nshort\n")
    assert weak.exit_code == 1 and "at least 8" in weak.output
    assert cli(["passwd", "nobody"], db).exit_code == 1
    assert cli(["disable", "li.na", "--operator", "boss"], db).exit_code == 0
    listed = json.loads(cli(["list", "--json"], db).output)
    assert [(u["username"], u["display_name"], u["role"], u["active"]) for u in listed] == [
        ("li.na", "李娜", "operator", False)
    ]
    assert cli(["enable", "li.na", "--operator", "boss"], db).exit_code == 0
    assert "li.na" in cli(["list"], db).output

    def read(conn):
        stored = conn.execute("SELECT password_hash FROM users").fetchone()[0]
        return stored, queries.audit_log(conn, target="user:li.na")

    async def go():
        async with open_store(db) as store:
            return await store.run(read)

    stored, audit = asyncio.run(go())
    assert users.verify_password("third password", stored)
    assert [(a["action"], a["operator"], a["source"]) for a in reversed(audit)] == [
        ("user.add", "boss", "hq:cli"),
        ("user.passwd", "boss", "hq:cli"),
        ("user.passwd", os.environ.get("SUDO_USER") or getpass.getuser(), "hq:cli"),
        ("user.disable", "boss", "hq:cli"),
        ("user.enable", "boss", "hq:cli"),
    ]
    assert all("scrypt" not in json.dumps(a) for a in audit)  # never the hash


def test_the_session_key_is_made_once_and_kept(tmp_path):
    async def go():
        async with open_store(central_db(tmp_path, "c.db")) as store:
            first = await store.run(users.web_key)
            assert len(first) == 32
            assert await store.run(users.web_key) == first
            await store.run(users.rotate_web_key)
            assert await store.run(users.web_key) != first

    asyncio.run(go())
