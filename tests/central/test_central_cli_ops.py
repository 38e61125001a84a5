"""``onecard-central`` operation commands on a real database: yuan in, fen stored,
idempotent by --request-id, refusals exit 1 with their reason, everything audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from stores import central_db

from central.cli import main

ALICE = "04A1B2C3D4E5F6"


@pytest.fixture
def db(tmp_path: Path) -> Path | str:
    path = central_db(tmp_path)
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            {
                "persons": [{"id": "P1", "name": "Alice"}, {"id": "P2", "name": "Bob"}],
                "cards": [{"uid": ALICE, "person_id": "P1"}],
                "accounts": [{"person_id": "P1", "cash_fen": 1000}],
            }
        )
    )
    assert cli(path, "seed", str(seed)).exit_code == 0
    return path


def cli(db: Path | str, *args: str, stdin: str | None = None):
    env = {"ONECARD_CENTRAL_DB": str(db), "SUDO_USER": "op-li"}  # the operator by default
    return CliRunner().invoke(main, [*args], env=env, input=stdin)


def person(db: Path | str, pid: str) -> dict:
    shown = cli(db, "person", "show", pid)
    assert shown.exit_code == 0, shown.output
    return json.loads(shown.output)


def test_recharge_in_yuan_is_stored_in_fen_once_per_request_id(db):
    first = cli(db, "money", "recharge", ALICE.lower(), "12.50", "--request-id", "desk-7")
    again = cli(db, "money", "recharge", ALICE.lower(), "12.50", "--request-id", "desk-7")
    assert first.exit_code == again.exit_code == 0, first.output
    assert "accepted" in first.output and "¥22.50 (2250 fen)" in first.output
    assert "already done" in again.output
    assert person(db, "P1")["balance"]["cash_fen"] == 2250


def test_a_bad_amount_is_a_usage_error_and_changes_nothing(db):
    bad = cli(db, "money", "recharge", ALICE, "12.505")
    assert bad.exit_code == 2
    assert "at most 2 decimals" in bad.output
    assert person(db, "P1")["balance"]["cash_fen"] == 1000


def test_a_refusal_prints_its_reason_and_exits_1(db):
    refused = cli(db, "money", "recharge", ALICE, "5", "--method", "bank", "--request-id", "x1")
    assert refused.exit_code == 1
    assert "refused (pay_ref_required)" in refused.output
    again = cli(db, "money", "recharge", ALICE, "5", "--method", "bank", "--request-id", "x1")
    assert again.exit_code == 1 and "the stored answer to this request id" in again.output


def test_card_lifecycle_from_the_command_line(db):
    assert cli(db, "settings", "set", "--card-type", "standard=20").exit_code == 0
    issued = cli(db, "card", "issue", "04b0b0b0", "P2")
    assert issued.exit_code == 0, issued.output
    assert person(db, "P2")["balance"]["deposit_fen"] == 2000
    lost = cli(db, "card", "lost", "04B0B0B0")
    assert lost.exit_code == 0 and "blacklist version: 1" in lost.output
    shown = json.loads(cli(db, "card", "show", "04B0B0B0").output)
    assert shown["status"] == "lost" and shown["blacklist"]["reason"] == "lost"
    assert cli(db, "card", "reissue", "04B0B0B0", "04B0B0B1").exit_code == 0
    cancel = cli(db, "card", "cancel", "04B0B0B1", "--recycle", "--json")
    assert json.loads(cancel.output)["outcome"] == "accepted"
    assert person(db, "P2")["balance"] == {"cash_fen": 0, "subsidy_fen": 0, "deposit_fen": 0}
    audit = cli(db, "audit", "--json")
    actions = [a["action"] for a in json.loads(audit.output)]
    assert actions == [
        "card.cancel",
        "card.reissue",
        "card.report_lost",
        "card.issue",
        "settings.change",
    ]
    assert {a["operator"] for a in json.loads(audit.output)} == {"op-li"}
    assert cli(db, "balances").exit_code == 0  # every balance equals its ledger sums


def test_any_operation_from_json_on_stdin(db):
    body = {"op": "subsidy.grant", "person_ids": ["P1", "P2"], "amount_fen": 300}
    done = cli(db, "op", "-", "--request-id", "batch-2026-11", stdin=json.dumps(body))
    assert done.exit_code == 0, done.output
    assert person(db, "P2")["balance"]["subsidy_fen"] == 300
    unknown = cli(db, "op", "-", stdin='{"op": "money.print"}')
    assert unknown.exit_code == 1 and "unknown op 'money.print'" in unknown.output


def test_tokens_are_shown_once_and_listed_without_secrets(db):
    made = cli(db, "token", "add", "erp", "--role", "finance")
    audit = json.loads(cli(db, "audit", "--json").output)
    assert [(a["action"], a["target"], a["operator"]) for a in audit] == [
        ("token.add", "token:erp", "op-li")
    ]
    secret = made.output.strip()
    assert made.exit_code == 0 and secret.startswith("oc_")
    listed = cli(db, "token", "list").output
    assert "erp" in listed and "finance" in listed and secret not in listed
    assert cli(db, "token", "revoke", "erp").exit_code == 0
    assert "revoked" in cli(db, "token", "list").output
