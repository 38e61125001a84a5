"""``onecard-central release …``: make signing keys, build, sign and verify releases::

    onecard-central release keygen --out /root/onecard-release-key
    onecard-central release build --out /srv/releases/0.2.0
    onecard-central release sign --key /root/onecard-release-key/release.key /srv/releases/0.2.0
    onecard-central release verify /srv/releases/0.2.0 --pubkey release.pub

Every refusal prints ``REJECTED (reason_code): message`` and exits 1.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from central.core.release import ReleaseError, Verified

_DIR = click.Path(file_okay=False, path_type=Path)


@click.group("release")
def release() -> None:
    """Signed releases for remote upgrades: keygen, build, sign, verify.

    \b
    onecard-central release keygen --out /root/release-key
    onecard-central release build --out /srv/releases/0.2.0
    onecard-central release sign --key /root/release-key/release.key /srv/releases/0.2.0
    onecard-central release verify /srv/releases/0.2.0 --pubkey /root/release-key/release.pub
    """


@release.command("keygen")
@click.option("--out", type=_DIR, required=True, help="directory for NAME.key and NAME.pub")
@click.option("--name", default="release", show_default=True)
def keygen(out: Path, name: str) -> None:
    """Make an Ed25519 signing key: NAME.key (keep it offline, 0600) and NAME.pub (hex: the
    line every edge pins)."""
    from central.releases import generate_keys

    try:
        made = generate_keys(out, name=name)
    except (ReleaseError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"private key {made.private} (0600; never leaves the signing machine)")
    click.echo(f"public key  {made.public}  key id {made.key_id}")


@release.command("build")
@click.option("--out", type=_DIR, required=True, help="a new or empty directory")
@click.option(
    "--project",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="the onecard checkout to build (default: the one this runs from)",
)
@click.option(
    "--no-deps",
    "no_deps",
    is_flag=True,
    help="onecard's wheel only, without its locked dependency wheels",
)
@click.option(
    "--min-from",
    default="0",
    show_default=True,
    help="oldest installed version this release may upgrade from",
)
@click.option("--rollback", is_flag=True, help="a rollback release: may go below installed")
@click.option("--valid-days", type=click.IntRange(min=1), default=30, show_default=True)
def build(
    out: Path,
    project: Path | None,
    no_deps: bool,
    min_from: str,
    rollback: bool,
    valid_days: int,
) -> None:
    """Build onecard's wheel and its locked runtime dependency wheels into OUT, with an
    unsigned manifest.json (sha256 and size of every file)."""
    from central.releases import build_release
    from edge_agent.install import source_tree

    project = project or source_tree()
    if project is None:
        raise click.UsageError("not running from a onecard checkout: pass --project")
    try:
        manifest = build_release(
            out,
            project=project,
            with_deps=not no_deps,
            min_from_version=min_from,
            rollback=rollback,
            valid_days=valid_days,
        )
    except (ReleaseError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    kind = "rollback release" if rollback else "release"
    click.echo(
        f"{kind} {manifest.version} in {out}: {len(manifest.files)} files, "
        f"{manifest.compatibility.python_abi} {manifest.compatibility.os}/"
        f"{manifest.compatibility.machine}, expires {manifest.expires_at.isoformat()}"
    )
    click.echo(f"unsigned: onecard-central release sign --key KEY {out}")


@release.command("sign")
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="the private key from `release keygen`",
)
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
def sign(key_path: Path, directory: Path) -> None:
    """Check DIRECTORY's files against its manifest, then write manifest.sig."""
    from central.releases import load_private_key, sign_release

    try:
        key_id = sign_release(directory, load_private_key(key_path), now=datetime.now(UTC))
    except (ReleaseError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"signed {directory} with key {key_id}")


@release.command("verify")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--pubkey",
    "pubkeys",
    multiple=True,
    required=True,
    help="a trusted public key: hex, or a file with it (repeat for several)",
)
@click.option("--installed-version", help="also check the upgrade path from this version")
@click.option("--this-host", is_flag=True, help="also check it runs on this Python and machine")
def verify(
    directory: Path, pubkeys: tuple[str, ...], installed_version: str | None, this_host: bool
) -> None:
    """Decide about DIRECTORY as an edge would: signature, expiry, every file's hash and
    size (and nothing extra); with options, compatibility and upgrade path."""
    from central.releases import host_compatibility, load_trusted_keys, verify_release

    try:
        host = host_compatibility() if this_host else None
        result = verify_release(
            directory,
            load_trusted_keys(pubkeys),
            now=datetime.now(UTC),
            installed_version=installed_version,
            python_abi=host.python_abi if host else None,
            machine=host.machine if host else None,
        )
    except (ReleaseError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if not isinstance(result, Verified):
        click.echo(f"REJECTED ({result.reason_code}): {result.message}", err=True)
        sys.exit(1)
    manifest = result.manifest
    kind = "rollback release" if manifest.rollback else "release"
    click.echo(
        f"OK {kind} {manifest.version}: signed by key {result.key_id}, "
        f"{len(manifest.files)} files intact, upgrades from {manifest.min_from_version}+, "
        f"{manifest.compatibility.python_abi} {manifest.compatibility.os}/"
        f"{manifest.compatibility.machine}, expires {manifest.expires_at.isoformat()}"
    )


@release.command("publish")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--pubkey",
    "pubkeys",
    multiple=True,
    required=True,
    help="a trusted public key: hex, or a file with it (repeat for several)",
)
@click.option(
    "--store",
    "store_path",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/var/lib/onecard-central/releases"),
    show_default=True,
    envvar="ONECARD_RELEASE_STORE",
    help="central's release store, which serve --release-store hands to edges",
)
def publish(directory: Path, pubkeys: tuple[str, ...], store_path: Path) -> None:
    """Verify the signed release in DIRECTORY and copy it into central's release store,
    from which edges download it (then: onecard-central rollout start VERSION)."""
    from central.artifacts import PublishError, ReleaseStore
    from central.releases import load_trusted_keys

    store = ReleaseStore(store_path)
    try:
        manifest, new = store.publish(directory, load_trusted_keys(pubkeys), now=datetime.now(UTC))
    except (PublishError, ReleaseError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    what = "published" if new else "already published (same manifest)"
    click.echo(f"{manifest.version} {what} in {store_path / manifest.version}")
    click.echo(f"manifest sha256 {store.manifest_sha256(manifest.version)}")


COMMANDS = (release,)
