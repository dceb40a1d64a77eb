"""Audit bundles carry the erasure log and, under the signature, its entry count and head:
a verifier sees that erasures happened and, against an earlier bundle, that the log was
not cut back or rewritten since."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import cli
from reports import ReportError, export_audit_bundle, verify_audit_bundle
from reports._bundle import canonical_json
from reports._keys import load_signing_key
from tests.reports.audit_data import (
    DAY0,
    DAYS,
    VINS,
    make_signed_lake,
    public_key_path,
)

LAST = DAYS[-1]
GENESIS = "0" * 64
#: VINs the lake does not hold: erasing them only logs the request (quick).
ABSENT = ["MAT612345NEX00071", "MAT612345NEX00072", "MAT612345NEX00073"]


@pytest.fixture
def lake(data_dir: Path) -> Path:
    return make_signed_lake(data_dir)


@pytest.fixture
def public_key(data_dir: Path) -> Path:
    return public_key_path(data_dir)


def _log(data_dir: Path) -> Path:
    return data_dir / "state" / "erasure" / "log.jsonl"


def _erase(data_dir: Path, vin: str) -> None:
    res = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "erase", "--vin", vin])
    assert res.exit_code == 0, res.output


def _export(data_dir: Path, out: Path) -> Path:
    return export_audit_bundle(
        data_dir / "lake", data_dir / "state", out, date_from=DAY0, date_to=LAST
    ).path


def _verify(bundle: Path, public_key: Path, earlier: Path | None = None) -> list[str]:
    return [str(p) for p in verify_audit_bundle(bundle, public_key, earlier=earlier).problems]


def test_a_bundle_carries_the_erasure_log_and_its_head_under_the_signature(
    lake: Path, data_dir: Path, tmp_path: Path, public_key: Path
) -> None:
    before = _export(data_dir, tmp_path / "before")
    manifest = json.loads((before / "manifest.json").read_bytes())
    assert manifest["erasure_log"]["entries"] == 0
    assert manifest["erasure_log"]["head"] == GENESIS
    assert not (before / "erasure").exists()  # nothing to carry
    assert verify_audit_bundle(before, public_key).summary().endswith(", erasure log 0 entries")

    _erase(data_dir, VINS[2])  # in the lake: its rows go, the request is logged
    _erase(data_dir, ABSENT[0])
    after = _export(data_dir, tmp_path / "after")
    log = _log(data_dir).read_bytes()
    assert (after / "erasure" / "log.jsonl").read_bytes() == log
    manifest = json.loads((after / "manifest.json").read_bytes())
    last = log.splitlines()[-1]
    assert manifest["erasure_log"]["entries"] == 2
    assert manifest["erasure_log"]["head"] == hashlib.sha256(last).hexdigest()
    assert manifest["files"]["erasure/log.jsonl"]["sha256"] == hashlib.sha256(log).hexdigest()
    result = verify_audit_bundle(after, public_key, earlier=before)
    assert result.problems == ()
    assert result.summary().endswith(", erasure log 2 entries")
    # The log adds no personal data to the bundle: keyed hashes, counts and times only.
    for vin in (*VINS, *ABSENT):
        assert vin.encode() not in log


def test_an_erasure_log_cut_back_or_rewritten_since_an_earlier_bundle_is_named(
    lake: Path, data_dir: Path, tmp_path: Path, public_key: Path
) -> None:
    _erase(data_dir, ABSENT[0])
    _erase(data_dir, ABSENT[1])
    earlier = _export(data_dir, tmp_path / "earlier")
    kept = _log(data_dir).read_bytes()

    # Cut back: the last entry removed (the chain that is left is intact).
    _log(data_dir).write_bytes(kept.splitlines(keepends=True)[0])
    cut = _export(data_dir, tmp_path / "cut")
    assert _verify(cut, public_key) == []  # alone, nothing shows
    assert _verify(cut, public_key, earlier) == [
        "erasure: erasure/log.jsonl: holds 1 entries, fewer than the 2 of the earlier "
        f"bundle {earlier}: the log was cut back"
    ]
    # Rewritten: cut back, then another erasure, so the count looks right again.
    _erase(data_dir, ABSENT[2])
    rewritten = _export(data_dir, tmp_path / "rewritten")
    problems = _verify(rewritten, public_key, earlier)
    assert len(problems) == 1
    assert problems[0].startswith("erasure: erasure/log.jsonl: its first 2 entries hash to ")
    assert problems[0].endswith(
        f"of the earlier bundle {earlier}: entries were removed, edited or replaced since"
    )
    # Honest: the log as it was, plus one more erasure.
    _log(data_dir).write_bytes(kept)
    _erase(data_dir, ABSENT[2])
    grown = _export(data_dir, tmp_path / "grown.tar")
    assert _verify(grown, public_key, earlier) == []

    runner = CliRunner()
    pub = ["--public-key", str(public_key)]
    bad = runner.invoke(cli, ["audit", "verify", str(cut), *pub, "--earlier", str(earlier)])
    assert bad.exit_code == 1
    assert bad.output.splitlines()[0].startswith("erasure: erasure/log.jsonl: holds 1 entries")
    assert bad.output.splitlines()[-1].startswith(f"FAILED (1 problem): {cut}")
    ok = runner.invoke(cli, ["audit", "verify", str(grown), *pub, "--earlier", str(earlier)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith(f"OK: {grown}: ")
    assert ok.output.endswith(", erasure log 3 entries\n")


def test_a_bundle_from_before_the_anchor_verifies_and_cannot_serve_as_earlier(
    lake: Path, data_dir: Path, tmp_path: Path, public_key: Path
) -> None:
    """A bundle without ``erasure_log`` (older fleetbms), signed with the fleet's key."""
    _erase(data_dir, ABSENT[0])
    bundle = _export(data_dir, tmp_path / "old")
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    del manifest["erasure_log"]
    del manifest["files"]["erasure/log.jsonl"]
    shutil.rmtree(bundle / "erasure")
    data = canonical_json(manifest)
    (bundle / "manifest.json").write_bytes(data)
    key = load_signing_key(data_dir / "state" / "keys" / "signing.key")
    (bundle / "manifest.sig").write_bytes(key.sign(data))
    result = verify_audit_bundle(bundle, public_key)
    assert result.problems == ()
    assert result.erasures is None
    assert "erasure log" not in result.summary()

    new = _export(data_dir, tmp_path / "new")
    res = CliRunner().invoke(
        cli,
        ["audit", "verify", str(new), "--public-key", str(public_key), "--earlier", str(bundle)],
    )
    assert (res.exit_code, res.output) == (
        1,
        f"Error: earlier bundle {bundle} carries no erasure log (exported before bundles "
        "did): nothing to compare\n",
    )


def test_a_bundle_whose_manifest_disagrees_with_its_erasure_log_is_named(
    lake: Path, data_dir: Path, tmp_path: Path, public_key: Path
) -> None:
    """Re-signed by the fleet with a count and head that are not the log's."""
    _erase(data_dir, ABSENT[0])
    _erase(data_dir, ABSENT[1])
    bundle = _export(data_dir, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    manifest["erasure_log"]["entries"] = 1
    data = canonical_json(manifest)
    (bundle / "manifest.json").write_bytes(data)
    key = load_signing_key(data_dir / "state" / "keys" / "signing.key")
    (bundle / "manifest.sig").write_bytes(key.sign(data))
    problems = _verify(bundle, public_key)
    assert len(problems) == 1
    assert problems[0].startswith("erasure: erasure/log.jsonl: holds 2 entries with head ")
    assert ", manifest.json records 1 with head " in problems[0]


def test_export_refuses_a_broken_erasure_log_and_writes_nothing(
    lake: Path, data_dir: Path, tmp_path: Path
) -> None:
    for vin in ABSENT:
        _erase(data_dir, vin)
    lines = _log(data_dir).read_bytes().splitlines(keepends=True)
    _log(data_dir).write_bytes(lines[0] + lines[2])  # the middle erasure removed
    out = tmp_path / "b.tar"
    with pytest.raises(ReportError) as err:
        _export(data_dir, out)
    assert str(err.value).startswith(f"erasure log {_log(data_dir)} is broken at line 2: prev ")
    assert str(err.value).endswith("; no bundle written")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    args = ["--data-dir", str(data_dir), "audit", "export", "--from", str(DAY0)]
    res = CliRunner().invoke(cli, [*args, "--to", str(LAST), "--out", str(out)])
    assert res.exit_code == 1
    assert res.output.startswith(f"Error: erasure log {_log(data_dir)} is broken at line 2: ")
    assert res.output.count("\n") == 1
