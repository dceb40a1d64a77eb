"""Signing key pair and pseudonym key: files, modes, refusal to overwrite, CLI."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pipeline import cli
from reports import (
    ReportError,
    generate_signing_keys,
    load_or_create_pseudonym_key,
    public_key_fingerprint,
)
from reports._keys import load_public_key, load_signing_key


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_signing_keys_writes_private_0600_and_public_beside_it(tmp_path: Path) -> None:
    pair = generate_signing_keys(tmp_path / "keys")
    assert pair.private_key == tmp_path / "keys" / "signing.key"
    assert pair.public_key == tmp_path / "keys" / "signing.pub"
    assert _mode(pair.private_key) == 0o600
    assert _mode(pair.public_key) == 0o644
    assert _mode(tmp_path / "keys") == 0o700
    private = load_signing_key(pair.private_key)
    public = load_public_key(pair.public_key)
    assert public_key_fingerprint(public) == pair.fingerprint
    public.verify(private.sign(b"manifest"), b"manifest")  # raises if not a pair
    assert [p.name for p in (tmp_path / "keys").iterdir() if p.name.startswith(".")] == []


def test_generate_signing_keys_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = generate_signing_keys(tmp_path)
    before = first.private_key.read_bytes()
    with pytest.raises(ReportError, match=r"signing.key already exists; pass --force"):
        generate_signing_keys(tmp_path)
    assert first.private_key.read_bytes() == before
    second = generate_signing_keys(tmp_path, force=True)
    assert second.fingerprint != first.fingerprint
    assert _mode(second.private_key) == 0o600


def test_generate_signing_keys_refuses_when_only_the_public_key_exists(tmp_path: Path) -> None:
    (tmp_path / "signing.pub").write_text("someone else's key")
    with pytest.raises(ReportError, match=r"signing\.pub already exists"):
        generate_signing_keys(tmp_path)
    assert not (tmp_path / "signing.key").exists()


def test_load_signing_key_refuses_a_key_readable_by_others(tmp_path: Path) -> None:
    pair = generate_signing_keys(tmp_path)
    pair.private_key.chmod(0o644)
    with pytest.raises(ReportError, match=r"readable by other users \(mode 0644\); run: chmod 600"):
        load_signing_key(pair.private_key)


def test_load_public_key_accepts_raw_32_bytes_and_rejects_garbage(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    raw = tmp_path / "raw.pub"
    raw.write_bytes(key.public_key().public_bytes_raw())
    assert public_key_fingerprint(load_public_key(raw)) == public_key_fingerprint(key.public_key())
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(ReportError, match="is not a PEM public key"):
        load_public_key(bad)
    with pytest.raises(ReportError, match="does not exist"):
        load_public_key(tmp_path / "missing.pub")


def test_pseudonym_key_is_created_0600_on_first_use_then_reused(tmp_path: Path) -> None:
    keys = tmp_path / "state" / "keys"
    first = load_or_create_pseudonym_key(keys)
    path = keys / "pseudonym.key"
    assert len(first) == 32
    assert _mode(path) == 0o600
    assert path.read_text().strip() == first.hex()
    assert load_or_create_pseudonym_key(keys) == first
    assert load_or_create_pseudonym_key(tmp_path / "other") != first


def test_pseudonym_key_with_bad_content_is_an_error_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(ReportError, match="is not 64 hex digits; restore it from a backup"):
        load_or_create_pseudonym_key(tmp_path)
    assert path.read_text() == "short\n"


def test_cli_keys_generate_then_refuses_with_one_error_line(data_dir: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["--data-dir", str(data_dir), "keys", "generate"])
    assert out.exit_code == 0, out.output
    keys = data_dir / "state" / "keys"
    assert f"private key: {keys / 'signing.key'} (mode 0600" in out.output
    assert "fingerprint: sha256:" in out.output
    again = runner.invoke(cli, ["--data-dir", str(data_dir), "keys", "generate"])
    assert again.exit_code == 1
    assert again.output == (
        f"Error: {keys / 'signing.key'} already exists; pass --force to replace the key pair "
        "(bundles signed with the old key then need the old public key)\n"
    )
    forced = runner.invoke(cli, ["--data-dir", str(data_dir), "keys", "generate", "--force"])
    assert forced.exit_code == 0


def test_cli_keys_generate_out_on_a_file_is_one_error_line(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    out = CliRunner().invoke(cli, ["keys", "generate", "--out", str(blocker)])
    assert out.exit_code == 1
    assert out.output == f"Error: key folder {blocker} is not a directory\n"
