"""Audit bundles: export, offline verification, tamper detection, pseudonyms, determinism."""

from __future__ import annotations

import csv
import json
import re
import shutil
import tarfile
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from pipeline import cli
from reports import (
    ReportError,
    _audit,
    export_audit_bundle,
    generate_signing_keys,
    load_or_create_pseudonym_key,
    pseudonym,
    public_key_fingerprint,
    verify_audit_bundle,
)
from reports._bundle import canonical_json, sha256_hex
from tests.reports.audit_data import (
    DAY0,
    DAYS,
    FLEET,
    HIDDEN_VIN,
    VINS,
    make_lake,
    make_signed_lake,
    public_key_path,
)

ALL_VINS = [*VINS, HIDDEN_VIN]
VIN_LIKE = re.compile(rb"(?<![A-Za-z0-9])[A-HJ-NPR-Z0-9]{17}(?![A-Za-z0-9])")
LAST = DAYS[-1]


@pytest.fixture
def lake(data_dir: Path) -> Path:
    return make_signed_lake(data_dir)


@pytest.fixture
def public_key(data_dir: Path) -> Path:
    return public_key_path(data_dir)


def _export(data_dir: Path, out: Path, **kwargs: object):
    return export_audit_bundle(
        data_dir / "lake",
        data_dir / "state",
        out,
        date_from=kwargs.pop("date_from", DAY0),  # type: ignore[arg-type]
        date_to=kwargs.pop("date_to", LAST),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def bundle(lake: Path, data_dir: Path, tmp_path: Path) -> Path:
    return _export(data_dir, tmp_path / "bundle").path


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _problems(bundle: Path, public_key: Path) -> list[str]:
    result = verify_audit_bundle(bundle, public_key)
    assert result.ok == (not result.problems)
    return [str(p) for p in result.problems]


# --- a fresh bundle -------------------------------------------------------------------


def test_fresh_bundle_verifies_and_holds_every_day_table_and_format(
    bundle: Path, public_key: Path
) -> None:
    result = verify_audit_bundle(bundle, public_key)
    assert result.problems == ()
    assert result.summary().startswith(f"OK: {bundle}: fleets {FLEET}, {DAY0}..{LAST}, 4 days")
    files = _files(bundle)
    for day in DAYS:
        for table in ("metrics/vehicle_day", "metrics/cell_day", "anomalies"):
            for ext in ("parquet", "csv"):
                assert f"days/{day}/{table}/fleet={FLEET}.{ext}" in files
    # Parquet and CSV hold the same rows.
    rel = f"days/{DAY0}/metrics/cell_day/fleet={FLEET}"
    table = pq.read_table(bundle / f"{rel}.parquet")
    rows = list(csv.DictReader((bundle / f"{rel}.csv").read_text().splitlines()))
    assert table.num_rows == len(rows) == 42
    assert [r["vin"] for r in rows] == table["vin"].to_pylist()
    assert [float(r["rest_mv"]) for r in rows] == table["rest_mv"].to_pylist()
    # The outside day and the temporary file were not read.
    assert not any(k.startswith(f"days/{DAY0 - timedelta(days=10)}") for k in files)
    manifest = json.loads(files["manifest.json"])
    assert files["manifest.json"] == canonical_json(manifest)
    assert manifest["generated_at"] == f"{LAST}T23:59:59Z"
    assert set(manifest["files"]) == set(files) - {"manifest.json", "manifest.sig"}
    assert len(files["manifest.sig"]) == 64


def test_bundle_can_be_checked_with_hashlib_and_any_ed25519_as_documented(
    bundle: Path, public_key: Path
) -> None:
    """The rules of docs/audit-bundle.md, applied without the fleetbms verifier."""
    manifest_bytes = (bundle / "manifest.json").read_bytes()
    key = load_pem_public_key(public_key.read_bytes())
    key.verify((bundle / "manifest.sig").read_bytes(), manifest_bytes)  # type: ignore[union-attr]
    manifest = json.loads(manifest_bytes)
    for rel, entry in manifest["files"].items():
        assert sha256_hex((bundle / rel).read_bytes()) == entry["sha256"]
    prev = "0" * 64
    for day in sorted(p.name for p in (bundle / "days").iterdir()):
        data = (bundle / "days" / day / "manifest.json").read_bytes()
        doc = json.loads(data)
        assert (doc["date"], doc["prev"]) == (day, prev)
        prev = sha256_hex(data)
    assert manifest["chain"]["head"] == prev


def test_data_dictionary_and_methodology_describe_the_export(bundle: Path) -> None:
    dictionary = json.loads((bundle / "dictionary.json").read_bytes())
    tables = dictionary["tables"]
    assert set(tables) == {"anomalies", "metrics/cell_day", "metrics/vehicle_day"}
    columns = {c["name"]: c for c in tables["metrics/vehicle_day"]["columns"]}
    assert columns["soh_pct"]["meaning"] == "capacity-based state of health"  # field metadata
    assert columns["soh_pct"]["unit"] == "%"
    assert columns["temp_c_max"]["unit"] == "degC"  # from the name
    assert columns["temp_c_max"]["type"] == "float"
    assert columns["vin"]["meaning"].startswith("vehicle pseudonym")
    assert tables["metrics/cell_day"]["rows"] == 42 * len(DAYS)
    method = json.loads((bundle / "methodology.json").read_bytes())
    assert method["fleetbms_version"]
    assert method["libraries"]["pyarrow"]
    models = {m["file"]: m for m in method["anomaly_models"]}
    assert models["iforest.json"]["metadata"]["model_version"] == "iforest-2026-11-01"
    assert len(models["iforest.joblib"]["sha256"]) == 64


# --- tampering --------------------------------------------------------------------------


def test_flipping_one_byte_in_any_file_is_detected_and_named(
    bundle: Path, public_key: Path
) -> None:
    for rel, data in _files(bundle).items():
        path = bundle / rel
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
        try:
            problems = _problems(bundle, public_key)
        finally:
            path.write_bytes(data)
        if rel in ("manifest.json", "manifest.sig"):
            assert any(p.startswith("signature: manifest.sig: ") for p in problems), rel
        else:
            assert f"changed: {rel}: sha256 " in "\n".join(problems), rel
    assert _problems(bundle, public_key) == []


def test_added_and_removed_files_are_named(bundle: Path, public_key: Path) -> None:
    rel = f"days/{DAYS[1]}/metrics/cell_day/fleet={FLEET}.csv"
    (bundle / rel).unlink()
    (bundle / "days" / str(DAYS[1]) / "extra.csv").write_text("vin\nx\n")
    (bundle / "notes.txt").write_text("hello")
    (bundle / "link.csv").symlink_to(bundle / "README.txt")
    assert _problems(bundle, public_key) == [
        f"added: days/{DAYS[1]}/extra.csv: not listed in manifest.json",
        f"removed: {rel}: listed in manifest.json, not in the bundle",
        "added: link.csv: not a regular file (link or device)",
        "added: notes.txt: not listed in manifest.json",
    ]


def test_deleted_day_with_its_manifest_breaks_the_chain(bundle: Path, public_key: Path) -> None:
    shutil.rmtree(bundle / "days" / str(DAYS[2]))
    problems = _problems(bundle, public_key)
    assert f"chain: days/{DAYS[2]}: day {DAYS[2]} is missing (no days/{DAYS[2]}/manifest.json)" in (
        problems
    )
    assert f"removed: days/{DAYS[2]}/manifest.json: listed in manifest.json, not in the bundle" in (
        problems
    )
    assert all(p.startswith(("removed: ", "chain: ")) for p in problems)


def test_back_dated_day_folder_is_detected(bundle: Path, public_key: Path) -> None:
    earlier = DAY0 - timedelta(days=3)
    (bundle / "days" / str(DAYS[1])).rename(bundle / "days" / str(earlier))
    problems = _problems(bundle, public_key)
    assert (
        f"chain: days/{earlier}: day folder outside the period {DAY0}..{LAST}, its manifest is "
        f"dated {DAYS[1]} (added or back-dated day)"
    ) in problems
    assert f"chain: days/{DAYS[1]}: day {DAYS[1]} is missing (no days/{DAYS[1]}/manifest.json)" in (
        problems
    )


def test_back_dated_manifest_inside_the_period_is_detected(bundle: Path, public_key: Path) -> None:
    """Day 3's manifest rewritten to claim day 2, both days swapped: dates and links break."""
    d1, d2 = bundle / "days" / str(DAYS[1]), bundle / "days" / str(DAYS[2])
    d1.rename(bundle / "swap")
    d2.rename(d1)
    (bundle / "swap").rename(d2)
    problems = _problems(bundle, public_key)
    manifest_d1 = f"days/{DAYS[1]}/manifest.json"
    assert f"chain: {manifest_d1}: dated {DAYS[2]} but stored as day {DAYS[1]} " in "\n".join(
        problems
    )
    assert any(p.startswith(f"chain: {manifest_d1}: does not link to day {DAY0}") for p in problems)
    assert f"changed: {manifest_d1}: sha256 " in "\n".join(problems)


def test_forged_day_with_rebuilt_chain_and_manifest_fails_only_on_the_signature(
    lake: Path, data_dir: Path, tmp_path: Path, public_key: Path
) -> None:
    """An attacker who edits data and redoes every hash still cannot sign as the fleet."""
    attacker = generate_signing_keys(tmp_path / "attacker")
    lake_file = lake / f"metrics/vehicle_day/date={DAYS[1]}/fleet={FLEET}/part.parquet"
    table = pq.read_table(lake_file)
    pq.write_table(table.set_column(2, "soh_pct", [[99.9, 99.9, 99.9]]), lake_file)
    forged = _export(data_dir, tmp_path / "forged", signing_key=attacker.private_key).path
    problems = _problems(forged, public_key)
    assert len(problems) == 1
    assert problems[0] == (
        f"signature: manifest.sig: manifest.json is signed with another key "
        f"({attacker.fingerprint}), not with the given public key "
        f"({public_key_fingerprint(load_pem_public_key(public_key.read_bytes()))})"  # type: ignore[arg-type]
    )
    assert verify_audit_bundle(forged, attacker.public_key).ok


def test_removed_signature_and_garbage_manifest_are_reported(
    bundle: Path, public_key: Path
) -> None:
    (bundle / "manifest.sig").unlink()
    assert _problems(bundle, public_key) == [
        "signature: manifest.sig: missing: the bundle is not signed"
    ]
    (bundle / "manifest.json").write_text("{not json")
    problems = _problems(bundle, public_key)
    assert "manifest: manifest.json: not a fleetbms audit manifest" in problems


# --- pseudonyms -------------------------------------------------------------------------


def _scan_for_vins(files: dict[str, bytes]) -> list[str]:
    """Every place a VIN, or anything shaped like one, shows in names or bytes."""
    found = []
    for rel, data in files.items():
        for vin in ALL_VINS:
            if vin in rel or vin.encode() in data:
                found.append(f"{vin} in {rel}")
        if VIN_LIKE.search(rel.encode()) or (not rel.endswith(".tar") and VIN_LIKE.search(data)):
            found.append(f"VIN-like token in {rel}")
    return found


def test_no_vin_appears_anywhere_in_the_bundle(bundle: Path, data_dir: Path) -> None:
    files = _files(bundle)
    assert _scan_for_vins(files) == []
    for rel in files:
        if rel.endswith(".parquet"):
            # Decompressed: values, names, schema and field metadata, statistics.
            pf = pq.ParquetFile(bundle / rel)
            text = json.dumps(pf.read().to_pylist(), default=str)
            text += str(pf.schema_arrow) + str(pf.metadata.metadata)
            for i in range(pf.metadata.num_row_groups):
                group = pf.metadata.row_group(i)
                for j in range(group.num_columns):
                    text += str(group.column(j).statistics)
            assert not any(vin in text for vin in ALL_VINS), rel
    key = load_or_create_pseudonym_key(data_dir / "state" / "keys")
    evidence = files[f"days/{DAY0}/anomalies/fleet={FLEET}.csv"].decode()
    assert pseudonym(HIDDEN_VIN, key) in evidence  # the VIN glued inside a longer token
    assert (
        f"soh_{pseudonym(VINS[0], key)}"
        in files[f"days/{DAY0}/metrics/vehicle_day/fleet={FLEET}.csv"].decode()
    )


def test_known_vins_are_the_same_when_reduced_after_every_file(
    lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pre-pass reduces the VINs it gathered to the distinct ones every
    # _VINS_PENDING values, and once at the end.
    parts = _audit.find_partitions(lake, DAY0, LAST)
    once = _audit._known_vins(lake, parts)
    assert set(ALL_VINS) <= once
    monkeypatch.setattr(_audit, "_VINS_PENDING", 1)
    assert _audit._known_vins(lake, parts) == once


def test_pseudonyms_are_stable_for_one_key_and_differ_across_keys(
    lake: Path, data_dir: Path, tmp_path: Path
) -> None:
    first = _export(data_dir, tmp_path / "a", reveal=tmp_path / "reveal.csv")
    rows = list(csv.DictReader((tmp_path / "reveal.csv").read_text().splitlines()))
    mapping = {r["pseudonym"]: r["vin"] for r in rows}
    assert sorted(mapping.values()) == sorted(ALL_VINS)
    assert first.vehicles == len(ALL_VINS)
    key = load_or_create_pseudonym_key(data_dir / "state" / "keys")
    assert all(pseudonym(v, key) == p for p, v in mapping.items())
    assert (tmp_path / "reveal.csv").stat().st_mode & 0o777 == 0o600

    def vins_of(bundle: Path) -> list[str]:
        path = bundle / f"days/{DAY0}/metrics/vehicle_day/fleet={FLEET}.parquet"
        return pq.read_table(path)["vin"].to_pylist()

    pseudonyms = vins_of(first.path)
    assert pseudonyms == [pseudonym(v, key) for v in VINS]
    second = _export(data_dir, tmp_path / "b", date_from=DAYS[1])  # another period
    path = second.path / f"days/{DAYS[1]}/metrics/vehicle_day/fleet={FLEET}.parquet"
    assert pq.read_table(path)["vin"].to_pylist() == pseudonyms
    (data_dir / "state" / "keys" / "pseudonym.key").unlink()  # a new key: new pseudonyms
    third = _export(data_dir, tmp_path / "c")
    assert set(vins_of(third.path)).isdisjoint(pseudonyms)


# --- determinism and forms ------------------------------------------------------------


def test_same_inputs_and_keys_give_byte_identical_bundles(
    lake: Path, data_dir: Path, tmp_path: Path, public_key: Path
) -> None:
    a = _export(data_dir, tmp_path / "a")
    b = _export(data_dir, tmp_path / "b", workers=1)
    assert _files(a.path) == _files(b.path)
    assert a.manifest_sha256 == b.manifest_sha256
    again = _export(data_dir, tmp_path / "a")  # rerun over an existing bundle replaces it
    assert again.manifest_sha256 == a.manifest_sha256
    t1 = _export(data_dir, tmp_path / "one" / "audit.tar").path
    t2 = _export(data_dir, tmp_path / "two" / "audit.tar").path
    assert t1.read_bytes() == t2.read_bytes()
    assert verify_audit_bundle(t1, public_key).ok
    with tarfile.open(t1) as tar:
        names = tar.getnames()
    assert "audit/manifest.json" in names
    assert names == sorted(names)


def test_tampered_tar_bundle_is_detected(
    lake: Path, data_dir: Path, tmp_path: Path, public_key: Path
) -> None:
    tar_path = _export(data_dir, tmp_path / "audit.tar").path
    extracted = tmp_path / "x"
    with tarfile.open(tar_path) as tar:
        tar.extractall(extracted, filter="data")
    rel = f"days/{DAY0}/anomalies/fleet={FLEET}.csv"
    (extracted / "audit" / rel).write_text("vin\nforged\n")
    forged = tmp_path / "forged.tar"
    with tarfile.open(forged, "w") as tar:
        tar.add(extracted / "audit", arcname="audit")
    problems = _problems(forged, public_key)
    assert len(problems) == 1
    assert problems[0].startswith(f"changed: {rel}: sha256 ")


# --- errors ---------------------------------------------------------------------------


def test_export_errors_name_the_problem(lake: Path, data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="--from 2026-11-04 is after --to 2026-11-01"):
        _export(data_dir, tmp_path / "b", date_from=LAST, date_to=DAY0)
    with pytest.raises(ReportError, match="no metrics or anomalies of fleet other between"):
        _export(data_dir, tmp_path / "b", fleet="other")
    with pytest.raises(ReportError, match=r"no metrics or anomalies between 2027-01-01"):
        _export(data_dir, tmp_path / "b", date_from=date(2027, 1, 1), date_to=date(2027, 1, 2))
    with pytest.raises(ReportError, match="must be outside the bundle"):
        _export(data_dir, tmp_path / "b", reveal=tmp_path / "b" / "reveal.csv")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "precious.txt").write_text("keep me")
    with pytest.raises(ReportError, match="is not empty and is not an audit bundle"):
        _export(data_dir, occupied)
    assert (occupied / "precious.txt").read_text() == "keep me"
    with pytest.raises(ReportError, match=r"no signing key at .*fleetbms keys generate"):
        export_audit_bundle(
            data_dir / "lake", tmp_path / "nostate", tmp_path / "b", date_from=DAY0, date_to=LAST
        )
    assert not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_tar_out_replaces_an_existing_bundle_tar_and_nothing_else(
    lake: Path, data_dir: Path, tmp_path: Path, public_key: Path
) -> None:
    out = tmp_path / "audit.tar"
    first = _export(data_dir, out)
    again = _export(data_dir, out)  # an existing fleetbms bundle tar is replaced
    assert again.manifest_sha256 == first.manifest_sha256
    assert verify_audit_bundle(out, public_key).ok
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")  # nothing to lose, as an empty folder
    assert verify_audit_bundle(_export(data_dir, empty).path, public_key).ok

    # A tar of something else that happens to hold a manifest.json.
    other = tmp_path / "site"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "a web app", "version": 2}')
    (other / "index.html").write_text("<html></html>")
    site_tar = tmp_path / "site.tar"
    with tarfile.open(site_tar, "w") as tar:
        tar.add(other, arcname="site")
    notes = tmp_path / "notes.tar"
    notes.write_text("precious notes, not a tar at all\n")
    for victim in (site_tar, notes):
        before = victim.read_bytes()
        with pytest.raises(ReportError, match="is not an audit bundle"):
            _export(data_dir, victim)
        assert victim.read_bytes() == before
    link = tmp_path / "link.tar"
    link.symlink_to(notes)
    with pytest.raises(ReportError, match="is a symbolic link; not overwriting"):
        _export(data_dir, link)
    assert link.is_symlink()
    folder = tmp_path / "folder.tar"
    folder.mkdir()
    with pytest.raises(ReportError, match="exists and is not a file"):
        _export(data_dir, folder)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    args = ["--data-dir", str(data_dir), "audit", "export", "--from", str(DAY0), "--to"]
    res = CliRunner().invoke(cli, [*args, str(LAST), "--out", str(notes)])
    assert (res.exit_code, res.output) == (
        1,
        f"Error: {notes} is not an audit bundle (not a tar file holding a fleetbms "
        "manifest.json); not overwriting\n",
    )
    assert notes.read_text() == "precious notes, not a tar at all\n"


def test_reveal_replaces_an_earlier_reveal_file_and_nothing_else(
    lake: Path, data_dir: Path, tmp_path: Path
) -> None:
    """--reveal is checked before anything is written, like --out: an earlier reveal file
    is replaced, any other file (a signing key, a report) or a folder is refused and left
    as it was, and no bundle is written."""
    reveal = tmp_path / "reveal.csv"
    _export(data_dir, tmp_path / "a", reveal=reveal)
    _export(data_dir, tmp_path / "a", reveal=reveal)  # an earlier reveal file is replaced
    assert reveal.read_text().startswith("pseudonym,vin\n")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")  # nothing to lose
    _export(data_dir, tmp_path / "a", reveal=empty)
    assert empty.read_text().startswith("pseudonym,vin\n")

    key = data_dir / "state" / "keys" / "signing.key"
    notes = tmp_path / "notes.csv"
    notes.write_text("precious notes\n")
    for victim in (key, notes):
        before = victim.read_bytes()
        with pytest.raises(ReportError, match="is not a pseudonym->VIN mapping; not overwriting"):
            _export(data_dir, tmp_path / "b", reveal=victim)
        assert victim.read_bytes() == before
    link = tmp_path / "link.csv"
    link.symlink_to(reveal)
    with pytest.raises(ReportError, match="is a symbolic link; not overwriting"):
        _export(data_dir, tmp_path / "b", reveal=link)
    with pytest.raises(ReportError, match="exists and is not a file"):
        _export(data_dir, tmp_path / "b", reveal=tmp_path)
    assert not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    args = ["--data-dir", str(data_dir), "audit", "export", "--from", str(DAY0), "--to"]
    res = CliRunner().invoke(cli, [*args, str(LAST), "--out", str(tmp_path / "c"), "--reveal", ""])
    assert res.exit_code == 2
    assert "Invalid value for '--reveal': must not be empty" in res.output
    assert not (tmp_path / "c").exists()


def test_cli_export_then_verify_ok_and_failed(lake: Path, data_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--data-dir", str(data_dir)]
    out = tmp_path / "bundle"
    res = runner.invoke(
        cli, [*base, "audit", "export", "--from", str(DAY0), "--to", str(LAST), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"Wrote {out}: fleets {FLEET}, {DAY0}..{LAST} (4 days with data)")
    pub = str(data_dir / "state" / "keys" / "signing.pub")
    ok = runner.invoke(cli, ["audit", "verify", str(out), "--public-key", pub])
    assert ok.exit_code == 0
    assert ok.output.startswith(f"OK: {out}: fleets {FLEET}")
    rel = f"days/{DAY0}/metrics/vehicle_day/fleet={FLEET}.csv"
    with open(out / rel, "a") as fh:
        fh.write("x")
    bad = runner.invoke(cli, ["audit", "verify", str(out), "--public-key", pub])
    assert bad.exit_code == 1
    lines = bad.output.splitlines()
    assert lines[0].startswith(f"changed: {rel}: sha256 ")
    assert lines[-1].startswith(f"FAILED (1 problem): {out}")


def test_cli_export_without_cell_csv_keeps_cell_tables_in_parquet_only(
    lake: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    args = ["--data-dir", str(data_dir), "audit", "export", "--from", str(DAY0)]
    res = CliRunner().invoke(cli, [*args, "--to", str(LAST), "--out", str(out), "--no-cell-csv"])
    assert res.exit_code == 0, res.output
    files = _files(out)
    for day in DAYS:
        assert f"days/{day}/metrics/cell_day/fleet={FLEET}.parquet" in files
        assert f"days/{day}/metrics/cell_day/fleet={FLEET}.csv" not in files
        for table in ("metrics/vehicle_day", "anomalies"):
            assert f"days/{day}/{table}/fleet={FLEET}.csv" in files
    tables = json.loads(files["dictionary.json"])["tables"]
    assert "without CSV" in tables["metrics/cell_day"]["files"]
    assert tables["metrics/vehicle_day"]["files"].endswith(".csv (same rows)")
    assert verify_audit_bundle(out, data_dir / "state" / "keys" / "signing.pub").problems == ()


def test_cli_errors_are_one_line(lake: Path, data_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    pub = str(data_dir / "state" / "keys" / "signing.pub")
    res = runner.invoke(cli, ["audit", "verify", str(tmp_path / "nope"), "--public-key", pub])
    assert (res.exit_code, res.output) == (1, f"Error: bundle {tmp_path / 'nope'} does not exist\n")
    res = runner.invoke(cli, ["audit", "verify", str(tmp_path), "--public-key", "missing.pub"])
    assert (res.exit_code, res.output) == (1, "Error: public key missing.pub does not exist\n")
    res = runner.invoke(cli, ["audit", "verify", str(tmp_path), "--public-key", pub])
    assert (res.exit_code, res.output) == (
        1,
        f"Error: {tmp_path} is not an audit bundle: it has no manifest.json\n",
    )
    not_a_bundle = tmp_path / "notes.txt"
    not_a_bundle.write_text("hello\n")
    res = runner.invoke(cli, ["audit", "verify", str(not_a_bundle), "--public-key", pub])
    assert (res.exit_code, res.output) == (
        1,
        f"Error: bundle {not_a_bundle} is neither a bundle folder nor a readable tar file\n",
    )
    export = ["--data-dir", str(data_dir), "audit", "export", "--from", "2026-11-01", "--to",
              "2026-11-02"]  # fmt: skip
    res = runner.invoke(cli, [*export, "--out", str(not_a_bundle / "b")])
    assert res.exit_code == 1
    assert res.output.startswith(f"Error: cannot write bundle {not_a_bundle / 'b'}: ")
    assert res.output.count("\n") == 1
    res = runner.invoke(
        cli, [*export, "--out", str(tmp_path / "b"), "--key", str(tmp_path / "none.key")]
    )
    assert (res.exit_code, res.output) == (
        1,
        f"Error: signing key {tmp_path / 'none.key'} does not exist\n",
    )


def test_readme_examples_of_keys_and_audit_commands_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    examples = [
        line.split()[1:]
        for line in readme.splitlines()
        if line.startswith(("fleetbms keys ", "fleetbms audit "))
    ]
    assert [e[:2] for e in examples] == [
        ["keys", "generate"],
        ["audit", "export"],
        ["audit", "verify"],
    ]
    monkeypatch.chdir(tmp_path)
    make_lake(Path("data"))
    runner = CliRunner()
    for args in examples:
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
    assert result.output.startswith("OK: ")
    assert (tmp_path / "private" / "reveal-2026-11.csv").stat().st_mode & 0o777 == 0o600


def test_readme_and_help_give_the_same_no_cell_csv_size_figure() -> None:
    """The README and ``audit export --help`` name one measured figure, not two."""
    readme = " ".join((Path(__file__).parents[2] / "README.md").read_text().split())
    shown = re.search(r"`--no-cell-csv` leaves .*? a bundle about (\d+)x smaller", readme)
    assert shown is not None
    help_text = " ".join(CliRunner().invoke(cli, ["audit", "export", "--help"]).output.split())
    helped = re.search(r"Parquet only \(~(\d+)x smaller bundle\)", help_text)
    assert helped is not None
    assert shown.group(1) == helped.group(1)
