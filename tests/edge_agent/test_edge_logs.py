"""Logging: redaction of every secret at any depth, card UIDs masked to their last 4 digits,
stable keys and journald fields, the optional log file, and ``onecard-edge logs``."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner

from edge_agent import logs
from edge_agent.cli import main
from edge_agent.config import load_config

UID = "04A1B2C3D4E5F6"
SECRETS = {
    "password": "hunter2-pw",
    "key": "00112233445566778899aabbccddeeff",
    "key_hex": "ffeeddccbbaa99887766554433221100",
    "secret": "s3cr3t-value",
    "token": "tok-abcdef",
    "mac": "deadbeefcafebabe",
    "nonce": "n0nce-0001",
    "terminal_key": "tk-1234567890",
    "mqtt_password": "mqtt-pw-xyz",
    "psk": "psk-000",
}


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    yield
    if logs._output is not None:
        logs._output.close()
        logs._output = None
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --- redaction ------------------------------------------------------------------------------


def test_no_secret_survives_at_any_depth_and_uids_show_only_last_4(
    capsys: pytest.CaptureFixture[str],
):
    logs.configure_logging("debug", "json", site="SZ-FUTIAN")
    nested = {
        "terminal": {"id": "POS-02", **SECRETS, "card": UID},
        "list": [dict(SECRETS), {"deeper": [{"uid": UID, "key_hex": SECRETS["key_hex"]}]}],
        "error": f"login failed password={SECRETS['password']} token: {SECRETS['token']}",
        "url": f"mqtts://SZ-FUTIAN:{SECRETS['mqtt_password']}@hq.example.com:8883",
    }
    before = json.dumps(nested)
    structlog.get_logger("t").info("request", card=UID, uids=[UID, UID], **SECRETS, ctx=nested)
    out = capsys.readouterr().err
    for name, secret in SECRETS.items():
        assert secret not in out, name
    assert UID not in out
    (line,) = json_lines(out)
    assert line["card"] == "**********E5F6"
    assert line["uids"] == ["**********E5F6"] * 2
    assert line["password"] == line["key_hex"] == line["terminal_key"] == logs.REDACTED
    ctx = line["ctx"]
    assert isinstance(ctx, dict)
    assert ctx["terminal"]["card"] == "**********E5F6"
    assert ctx["terminal"]["id"] == "POS-02"  # not a secret
    assert ctx["list"][1]["deeper"][0] == {"uid": "**********E5F6", "key_hex": "[redacted]"}
    assert ctx["error"] == "login failed password=[redacted] token: [redacted]"
    assert ctx["url"] == "mqtts://SZ-FUTIAN:[redacted]@hq.example.com:8883"
    assert json.dumps(nested) == before  # the caller's objects are left alone


def test_mask_uid_keeps_the_last_four_hex_digits():
    assert logs.mask_uid("04A1B2C3D4E5F6") == "**********E5F6"
    assert logs.mask_uid("0500DEADBEEF") == "********BEEF"
    assert logs.mask_uid("ABCD") == "****"


def test_uid_fields_that_are_not_uids_pass_and_paths_are_not_secrets():
    event = logs.redact(None, "info", {"card": "C-17", "password_file": "/etc/x", "keys_v": 3})
    assert event == {"card": "C-17", "password_file": "/etc/x", "keys_v": 3}


def test_secret_key_names():
    for name in ("key", "KEY_HEX", "session-token", "terminal_key", "hmac", "authorization"):
        assert logs.is_secret_key(name), name
    for name in ("keyboard", "password_file", "monkey", "record_id", "terminal"):
        assert not logs.is_secret_key(name), name


def test_msgspec_structs_are_redacted_too():
    import msgspec

    class Hello(msgspec.Struct):
        terminal_id: str
        key_hex: str

    event = logs.redact(None, "info", {"hello": Hello("POS-01", "abcdef")})
    assert event["hello"] == {"terminal_id": "POS-01", "key_hex": "[redacted]"}


# --- stable keys, journald, file --------------------------------------------------------------


def test_json_lines_lead_with_stable_keys_from_context(capsys: pytest.CaptureFixture[str]):
    logs.configure_logging("info", "json", site="SZ-FUTIAN")
    structlog.contextvars.bind_contextvars(terminal="POS-02", record_id="SZ-FUTIAN:1:42")
    structlog.get_logger("t").info("request", decision="ok")
    (line,) = json_lines(capsys.readouterr().err)
    assert list(line)[:6] == ["timestamp", "level", "event", "site", "terminal", "record_id"]
    assert (line["site"], line["terminal"], line["record_id"]) == (
        "SZ-FUTIAN",
        "POS-02",
        "SZ-FUTIAN:1:42",
    )


def test_journal_datagram_uses_the_native_protocol():
    data = logs.journal_datagram({"MESSAGE": "a=b", "TRACE": "x\ny"})
    assert data == b"MESSAGE=a=b\nTRACE\n" + struct.pack("<Q", 3) + b"x\ny\n"


def test_under_systemd_entries_go_to_journald_with_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    sock_path = tmp_path / "journal.socket"
    journald = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journald.bind(str(sock_path))
    monkeypatch.setattr(logs, "JOURNAL_SOCKET", sock_path)
    with (tmp_path / "stderr").open("w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.stderr_is_journal(stream)
        output = logs.LogOutput(stream=stream, use_json=True, journal=True, ident="onecard-edge")
        record = {"event": "terminal.auth_failed", "level": "warning", "site": "SZ-FUTIAN"}
        output.msg({**record, "terminal": "POS-02"})
        output.close()
    with journald:
        fields = dict(
            line.split("=", 1) for line in journald.recv(65536).decode().splitlines() if line
        )
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "onecard-edge"
    assert (fields["SITE"], fields["TERMINAL"], fields["EVENT"]) == (
        "SZ-FUTIAN",
        "POS-02",
        "terminal.auth_failed",
    )
    assert json.loads(fields["MESSAGE"])["terminal"] == "POS-02"
    assert (tmp_path / "stderr").read_text() == ""  # not twice


def test_a_terminal_or_a_plain_file_is_not_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    with (tmp_path / "x").open("w") as stream:
        assert not logs.stderr_is_journal(stream)


def test_log_file_gets_json_lines_and_survives_logrotate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    path = tmp_path / "edge.log"
    logs.configure_logging("info", "console", site="SZ-FUTIAN", file=path)
    log = structlog.get_logger("t")
    log.info("first", card=UID)
    path.rename(tmp_path / "edge.log.1")
    log.warning("second")
    assert "first" in capsys.readouterr().err  # the console still gets everything
    assert [e["event"] for e in json_lines((tmp_path / "edge.log.1").read_text())] == ["first"]
    (line,) = json_lines(path.read_text())
    assert line["event"] == "second" and line["site"] == "SZ-FUTIAN"
    assert "**********E5F6" in (tmp_path / "edge.log.1").read_text()


def test_an_unwritable_log_file_does_not_stop_the_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    logs.configure_logging("info", "json", file=tmp_path / "no/such/dir/edge.log")
    structlog.get_logger("t").info("still.logging")
    err = capsys.readouterr().err
    assert "cannot write log file" in err and "still.logging" in err


def test_log_file_key_and_its_env_override(tmp_path: Path):
    toml = tmp_path / "edge.toml"
    toml.write_text('site = "SZ-FUTIAN"\n[log]\nfile = "/var/log/onecard/edge.log"\n')
    assert load_config(toml, env={}).log.file == Path("/var/log/onecard/edge.log")
    env = {"ONECARD_EDGE_LOG_FILE": "/tmp/e.log"}
    assert load_config(toml, env=env).log.file == Path("/tmp/e.log")


# --- onecard-edge logs ----------------------------------------------------------------------

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("10min", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        (" 5 m ", timedelta(minutes=5)),
    ],
)
def test_since_accepts_relative_durations(text: str, ago: timedelta):
    assert logs.parse_since(text, NOW) == NOW - ago


def test_since_accepts_times_local_unless_an_offset_is_given():
    assert logs.parse_since("2026-11-23T07:00:00Z", NOW) == datetime(2026, 11, 23, 7, tzinfo=UTC)
    local = datetime(2026, 11, 23, 14, 30).astimezone()
    assert logs.parse_since("2026-11-23 14:30", NOW) == local.astimezone(UTC)
    today = logs.parse_since("today", NOW).astimezone()
    assert (today.hour, today.minute) == (0, 0)


@pytest.mark.parametrize("text", ["ten minutes", "10x", "-5m", "yesterday-ish", ""])
def test_since_rejects_anything_else_saying_what_works(text: str):
    with pytest.raises(logs.LogQueryError, match="10m, 2h"):
        logs.parse_since(text, NOW)


def test_journalctl_command_line():
    since = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    assert logs.journalctl_argv("onecard-edge", since, follow=True) == [
        "journalctl",
        "--unit",
        "onecard-edge",
        "--output",
        "cat",
        "--no-pager",
        "--since",
        f"@{int(since.timestamp())}",
        "--follow",
    ]
    assert "--since" not in logs.journalctl_argv("onecard-edge", None, follow=False)


def entry(event: str, level: str, at: datetime, **kw: object) -> str:
    return json.dumps({"timestamp": at.isoformat(), "level": level, "event": event, **kw})


def test_select_filters_our_json_by_level_and_time_and_keeps_other_lines():
    old = NOW - timedelta(hours=1)
    assert logs.select(entry("a", "debug", NOW), logs.LEVELS["info"]) is None
    assert logs.select(entry("a", "warning", NOW), logs.LEVELS["info"]) == json.loads(
        entry("a", "warning", NOW)
    )
    assert logs.select(entry("a", "error", old), 0, NOW - timedelta(minutes=10)) is None
    assert logs.select("Traceback (most recent call last):", logs.LEVELS["error"]) == (
        "Traceback (most recent call last):"
    )
    assert logs.select("{not json", 0) == "{not json"
    assert logs.select("   \n", 0) is None


def test_logs_reads_the_log_file_where_there_is_no_journald(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(logs, "journal_available", lambda: False)
    now = datetime.now(UTC)
    log = tmp_path / "edge.log"
    log.write_text(
        "\n".join(
            [
                entry("old.error", "error", now - timedelta(hours=3)),
                entry("chatty", "info", now, terminal="POS-01"),
                entry("terminal.auth_failed", "warning", now, terminal="POS-02"),
                "a line that is not ours",
            ]
        )
        + "\n"
    )
    config = tmp_path / "edge.toml"
    config.write_text(f'site = "SZ-FUTIAN"\n[log]\nfile = "{log}"\n')
    args = ["logs", "--config", str(config), "--level", "warning", "--since", "1h"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "terminal.auth_failed" in result.output and "terminal=POS-02" in result.output
    assert "chatty" not in result.output and "old.error" not in result.output
    assert "a line that is not ours" in result.output

    as_json = CliRunner().invoke(main, [*args, "--json"])
    (line,) = json_lines(as_json.output)
    assert line["event"] == "terminal.auth_failed"


def test_logs_without_journald_or_a_log_file_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(logs, "journal_available", lambda: False)
    config = tmp_path / "edge.toml"
    config.write_text('site = "SZ-FUTIAN"\n')
    result = CliRunner().invoke(main, ["logs", "--config", str(config)])
    assert result.exit_code != 0
    assert "no journald on this machine" in result.output and "[log] file" in result.output


def test_logs_reads_the_journal_when_there_is_one(monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple[str, datetime | None, bool]] = []

    def fake_journal(unit: str, since: datetime | None, *, follow: bool) -> Iterator[str]:
        calls.append((unit, since, follow))
        yield entry("edge.ready", "info", datetime.now(UTC), site="SZ-FUTIAN") + "\n"
        yield "Started onecard-edge.service - onecard edge.\n"

    monkeypatch.setattr(logs, "journal_available", lambda: True)
    monkeypatch.setattr(logs, "read_journal", fake_journal)
    result = CliRunner().invoke(main, ["logs", "-f", "--since", "10m", "--unit", "edge2"])
    assert result.exit_code == 0, result.output
    assert "edge.ready" in result.output and "Started onecard-edge" in result.output
    ((unit, since, follow),) = calls
    assert unit == "edge2" and follow
    assert (
        since is not None
        and abs(datetime.now(UTC) - timedelta(minutes=10) - since).total_seconds() < 5
    )


def test_bad_level_or_since_is_a_usage_error():
    result = CliRunner().invoke(main, ["logs", "--level", "loud"])
    assert result.exit_code == 2 and "use one of debug" in result.output
    result = CliRunner().invoke(main, ["logs", "--since", "a while"])
    assert result.exit_code == 2 and "--since 'a while'" in result.output


def test_follow_picks_up_appended_and_rotated_lines(tmp_path: Path):
    path = tmp_path / "edge.log"
    path.write_text("one\n")
    seen: list[str] = []
    lines = logs.read_file(path, follow=True, poll_s=0.01)

    def reader() -> None:
        for line in lines:
            seen.append(line.strip())
            if line.strip() == "four":
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    with path.open("a") as f:
        f.write("two\n")
    time.sleep(0.1)
    path.rename(tmp_path / "edge.log.1")
    with (tmp_path / "edge.log.1").open("a") as f:
        f.write("three\n")  # written to the old file just before the daemon reopened
    path.write_text("four\n")
    thread.join(timeout=5)
    lines.close()
    assert seen == ["one", "two", "three", "four"]
