"""``onecard-central release keygen | build | sign | verify`` on a real wheel of this project.

The wheel is built once per module (``--no-deps``: no network; a few seconds), then each
test works on its own copy of the release directory.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from central.cli_release import release
from central.core.release import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    decode_manifest,
    parse_public_key,
)
from central.releases import (
    build_release,
    host_compatibility,
    run_command,
    runtime_requirements,
)
from edge_agent.install import source_tree

PROJECT = source_tree()
assert PROJECT is not None, "these tests run from a onecard checkout"


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(release, [str(a) for a in args])


def flip_byte(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keys")
    for name in ("release", "next"):
        made = cli("keygen", "--out", out, "--name", name)
        assert made.exit_code == 0, made.output
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build") / "release"
    result = cli("build", "--out", out, "--no-deps", "--min-from", "0.0.5")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def unsigned(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "release"))


@pytest.fixture
def signed(unsigned: Path, keys: Path) -> Path:
    result = cli("sign", "--key", keys / "release.key", unsigned)
    assert result.exit_code == 0, result.output
    return unsigned


def verify(directory: Path, *args: str | Path, pubkeys: Sequence[Path] = ()) -> Result:
    keys = [a for key in pubkeys for a in ("--pubkey", key)]
    return cli("verify", directory, *keys, *args)


def test_keygen_writes_a_private_key_only_root_can_read_and_a_hex_public_key(keys):
    mode = stat.S_IMODE((keys / "release.key").stat().st_mode)
    assert mode == 0o600
    assert (keys / "release.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    pub = (keys / "release.pub").read_text().strip()
    assert len(pub) == 64 and int(pub, 16) >= 0


def test_keygen_never_overwrites_a_key(keys):
    before = (keys / "release.key").read_bytes()
    again = cli("keygen", "--out", keys)
    assert again.exit_code == 1
    assert "never overwritten" in again.output
    assert (keys / "release.key").read_bytes() == before


def test_build_writes_the_wheel_and_an_unsigned_manifest_of_it(built):
    manifest = decode_manifest((built / MANIFEST_NAME).read_bytes())
    (wheel,) = manifest.files
    assert wheel.name == f"onecard-{manifest.version}-py3-none-any.whl"
    assert (built / wheel.name).stat().st_size == wheel.size
    assert manifest.min_from_version == "0.0.5" and not manifest.rollback
    assert manifest.compatibility == host_compatibility()
    assert (manifest.expires_at - manifest.created_at).days == 30
    assert not (built / SIGNATURE_NAME).exists()
    with zipfile.ZipFile(built / wheel.name) as zf:
        names = zf.namelist()
    assert "central/core/release.py" in names and "edge_agent/service.py" in names
    assert not any(n.startswith("tests/") for n in names)


def test_an_unsigned_release_is_refused(unsigned, keys):
    result = verify(unsigned, pubkeys=[keys / "release.pub"])
    assert result.exit_code == 1
    assert "REJECTED (unsigned)" in result.output


def test_a_signed_release_verifies_and_one_flipped_byte_fails_it(signed, keys):
    ok = verify(signed, "--this-host", pubkeys=[keys / "release.pub"])
    assert ok.exit_code == 0, ok.output
    key_id = parse_public_key((keys / "release.pub").read_bytes()).key_id
    assert ok.output.startswith("OK release ")
    assert f"signed by key {key_id}, 1 files intact" in ok.output
    (wheel,) = signed.glob("onecard-*.whl")
    flip_byte(wheel)
    bad = verify(signed, pubkeys=[keys / "release.pub"])
    assert bad.exit_code == 1
    assert f"REJECTED (tampered_artifact): {wheel.name} has sha256" in bad.output


def test_a_flipped_byte_in_the_manifest_breaks_the_signature(signed, keys):
    flip_byte(signed / MANIFEST_NAME, at=2)
    bad = verify(signed, pubkeys=[keys / "release.pub"])
    assert bad.exit_code == 1
    assert "REJECTED (bad_signature)" in bad.output


def test_another_key_is_refused_and_both_keys_work_during_a_rotation(signed, keys):
    wrong = verify(signed, pubkeys=[keys / "next.pub"])
    assert wrong.exit_code == 1
    assert "REJECTED (bad_signature)" in wrong.output and "not trusted here" in wrong.output
    rotating = verify(signed, pubkeys=[keys / "next.pub", keys / "release.pub"])
    assert rotating.exit_code == 0, rotating.output
    # Hex on the command line works as well as a file.
    inline = cli("verify", signed, "--pubkey", (keys / "release.pub").read_text().strip())
    assert inline.exit_code == 0, inline.output


def test_a_stray_file_in_the_release_is_refused(signed, keys):
    (signed / "evil-9.9-py3-none-any.whl").write_bytes(b"PK")
    bad = verify(signed, pubkeys=[keys / "release.pub"])
    assert "REJECTED (tampered_artifact): not part of the release: evil-9.9" in bad.output


def test_a_missing_artifact_is_refused(signed, keys):
    next(signed.glob("onecard-*.whl")).unlink()
    bad = verify(signed, pubkeys=[keys / "release.pub"])
    assert "REJECTED (tampered_artifact)" in bad.output and "missing" in bad.output


def test_the_upgrade_path_is_checked_when_asked(signed, keys):
    version = decode_manifest((signed / MANIFEST_NAME).read_bytes()).version
    pub = [keys / "release.pub"]
    assert verify(signed, "--installed-version", "0.0.5", pubkeys=pub).exit_code == 0
    same = verify(signed, "--installed-version", version, pubkeys=pub)
    assert "REJECTED (already_installed)" in same.output
    newer = verify(signed, "--installed-version", "99.0", pubkeys=pub)
    assert "REJECTED (downgrade)" in newer.output
    old = verify(signed, "--installed-version", "0.0.4", pubkeys=pub)
    assert "REJECTED (too_old_to_upgrade_from)" in old.output
    bad = verify(signed, "--installed-version", "banana", pubkeys=pub)
    assert bad.exit_code == 1 and "--installed-version" in bad.output


def test_sign_refuses_a_directory_that_does_not_match_its_manifest(unsigned, keys):
    flip_byte(next(unsigned.glob("onecard-*.whl")))
    result = cli("sign", "--key", keys / "release.key", unsigned)
    assert result.exit_code == 1
    assert "not signed (tampered_artifact)" in result.output
    assert not (unsigned / SIGNATURE_NAME).exists()


def test_sign_refuses_a_public_key_file_as_the_key(unsigned, keys):
    result = cli("sign", "--key", keys / "release.pub", unsigned)
    assert result.exit_code == 1
    assert "not an unencrypted PEM private key" in result.output


def test_build_refuses_a_directory_that_is_not_empty(built):
    result = cli("build", "--out", built, "--no-deps")
    assert result.exit_code == 1
    assert "is not empty" in result.output


def test_build_refuses_a_version_outside_the_release_scheme(tmp_path):
    project = tmp_path / "src"
    shutil.copytree(
        PROJECT, project, ignore=shutil.ignore_patterns(".*", "tests", "bench", "__pycache__")
    )
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "', 'version = "9.0rc1+', 1))
    result = cli("build", "--out", tmp_path / "out", "--no-deps", "--project", project)
    assert result.exit_code == 1
    assert "release versions are N.N.N" in result.output


def test_runtime_requirements_pin_what_onecard_runs_on_and_no_dev_tools(built):
    wheel = next(built.glob("onecard-*.whl"))
    assert PROJECT is not None
    text = runtime_requirements(PROJECT, wheel)
    pinned = {line.split("==")[0] for line in text.splitlines() if "==" in line}
    assert {"msgspec", "cryptography", "pyscard", "aiomqtt", "structlog"} <= pinned
    assert not {"pytest", "mypy", "ruff", "hypothesis", "exceptiongroup"} & pinned
    assert "--hash=sha256:" in text


def test_build_with_dependencies_fetches_the_hashed_runtime_pins(tmp_path):
    """The dependency step, without a network: pip's second call is faked, the first (the
    real wheel) runs."""
    calls: list[list[str]] = []

    def run(cmd: Sequence[str]) -> None:
        calls.append(list(cmd))
        if "--require-hashes" in cmd:
            out = Path(cmd[cmd.index("--wheel-dir") + 1])
            (out / "msgspec-0.22.0-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"PK")
        else:
            run_command(cmd)

    assert PROJECT is not None
    manifest = build_release(tmp_path / "out", project=PROJECT, run=run)
    deps = calls[-1]
    assert deps[deps.index("-r") + 1] == str(tmp_path / "out" / "requirements.txt")
    assert {"wheel", "--require-hashes", "--no-deps"} <= set(deps)
    assert {f.name for f in manifest.files} >= {
        "requirements.txt",
        "msgspec-0.22.0-cp311-cp311-manylinux_2_17_x86_64.whl",
    }
