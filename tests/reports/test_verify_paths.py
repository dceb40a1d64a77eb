"""Verification of bundles whose names could mislead a reader: duplicate tar members,
names that climb out of the bundle, manifests that list such names."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reports import ReportError, export_audit_bundle, generate_signing_keys, verify_audit_bundle
from reports._bundle import canonical_json
from tests.reports.audit_data import DAY0, DAYS, FLEET, make_lake, make_models

REL = f"days/{DAY0}/anomalies/fleet={FLEET}.csv"


@pytest.fixture
def tar_bundle(data_dir: Path, tmp_path: Path) -> Path:
    make_models(data_dir)
    generate_signing_keys(data_dir / "state" / "keys")
    make_lake(data_dir)
    out = tmp_path / "audit.tar"
    export_audit_bundle(
        data_dir / "lake", data_dir / "state", out, date_from=DAY0, date_to=DAYS[-1]
    )
    return out


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [
            (m.name, tar.extractfile(m).read())  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        ]


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _problems(bundle: Path, key: Path) -> list[str]:
    result = verify_audit_bundle(bundle, key)
    return [str(p) for p in result.problems]


@pytest.mark.parametrize("forged_first", [True, False])
def test_a_second_member_of_the_same_name_in_a_tar_fails(
    tar_bundle: Path, data_dir: Path, tmp_path: Path, forged_first: bool
) -> None:
    # `tar -xO` prints both copies and stream readers take the first: whichever copy
    # the verifier hashes, another reader may see the other one.
    members = _members(tar_bundle)
    forged = ("audit/" + REL, b"vin\nforged\n")
    members = [forged, *members] if forged_first else [*members, forged]
    bad = _write_tar(tmp_path / "dup.tar", members)
    problems = _problems(bad, data_dir / "state" / "keys" / "signing.pub")
    assert problems == [f"added: {REL}: the tar holds 2 members of this name"]


def test_tar_members_that_climb_out_of_the_bundle_are_named(
    tar_bundle: Path, data_dir: Path, tmp_path: Path
) -> None:
    members = [*_members(tar_bundle), ("audit/../../evil", b"x"), ("/etc/evil", b"x")]
    bad = _write_tar(tmp_path / "climb.tar", members)
    problems = _problems(bad, data_dir / "state" / "keys" / "signing.pub")
    # Named and refused, and the rest of the bundle still checked under its own names.
    assert sorted(problems) == [
        "added: /etc/evil: unsafe name in the tar (absolute, '..' or '.')",
        "added: audit/../../evil: unsafe name in the tar (absolute, '..' or '.')",
    ]


def test_a_signed_manifest_listing_paths_outside_the_bundle_fails(
    tar_bundle: Path, tmp_path: Path
) -> None:
    # Even under the signer's own key: the exporter never writes such a path, and an
    # extractor following the manifest would write outside the bundle folder.
    folder = tmp_path / "unpacked"
    with tarfile.open(tar_bundle) as tar:
        tar.extractall(folder, filter="data")
    root = folder / "audit"
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret\n")
    digest = hashlib.sha256(b"secret\n").hexdigest()
    manifest = json.loads((root / "manifest.json").read_bytes())
    for bad in ("../outside.txt", str(outside), "days/../README.txt", "./README.txt"):
        manifest["files"][bad] = {"sha256": digest, "bytes": 7}
    key = Ed25519PrivateKey.generate()
    data = canonical_json(manifest)
    (root / "manifest.json").write_bytes(data)
    (root / "manifest.sig").write_bytes(key.sign(data))
    pub = tmp_path / "other.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    problems = _problems(root, pub)
    detail = "listed with an unsafe path (absolute, '..', '.' or empty part)"
    assert sorted(problems) == sorted(
        f"manifest: {p}: {detail}"
        for p in ("../outside.txt", str(outside), "days/../README.txt", "./README.txt")
    )
    assert outside.read_bytes() == b"secret\n"


def test_export_does_not_replace_a_folder_that_only_happens_to_hold_a_manifest_json(
    data_dir: Path, tmp_path: Path
) -> None:
    # A web project, a Chrome extension...: a manifest.json alone is not a bundle, and
    # "replacing" it would delete the whole folder.
    make_models(data_dir)
    generate_signing_keys(data_dir / "state" / "keys")
    make_lake(data_dir)
    project = tmp_path / "project"
    project.mkdir()
    (project / "manifest.json").write_text('{"name": "my-app"}')
    (project / "index.html").write_text("<p>work</p>")
    with pytest.raises(ReportError, match="is not an audit bundle; not overwriting"):
        export_audit_bundle(
            data_dir / "lake", data_dir / "state", project, date_from=DAY0, date_to=DAYS[-1]
        )
    assert (project / "index.html").read_text() == "<p>work</p>"
    # A real bundle there is still replaced, as documented.
    out = tmp_path / "bundle"
    for _ in range(2):
        export_audit_bundle(
            data_dir / "lake", data_dir / "state", out, date_from=DAY0, date_to=DAYS[-1]
        )
    assert verify_audit_bundle(out, data_dir / "state" / "keys" / "signing.pub").ok
