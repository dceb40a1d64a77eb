"""``fleetbms import``: JSON-lines files (gzip too) through validation, dedup and the writer."""

from __future__ import annotations

import gzip
import os
from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner

from pipeline import cli
from tests.ingest.helpers import NOW, VINS, days_ago, encode, lake_counts, query, reading


def _write_dump(path: Path) -> None:
    lines = [encode(reading(VINS[0], s, NOW - timedelta(seconds=600 - 10 * s))) for s in range(20)]
    batch = [reading(VINS[1], s, days_ago(2) + timedelta(seconds=10 * s)) for s in range(10)]
    lines.append(encode({"v": 1, "readings": batch}))
    lines.append(encode(reading(VINS[0], 5, NOW)))  # duplicate of seq 5
    lines.append(b"not json at all")
    lines.append(encode({**reading(VINS[2], 1, NOW), "vin": "SHORT"}))
    with gzip.open(path, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n\n")


def test_import_gzip_json_lines_lands_readings_once_and_quarantines_bad_lines(
    data_dir: Path, tmp_path: Path
) -> None:
    dump = tmp_path / "gateway.jsonl.gz"
    _write_dump(dump)
    args = ["--data-dir", str(data_dir), "import", str(dump), "--fleet", "blr"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output == (
        "imported 24 lines from 1 file(s): 30 readings written, 1 duplicates, "
        "2 quarantined (bad_vin=1, not_json=1)\n"
    )
    assert lake_counts(data_dir) == (30, 30)
    rows = query(data_dir, "telemetry", "SELECT DISTINCT fleet FROM t")
    assert rows == [("blr",)]
    q = query(data_dir, "quarantine", "SELECT reason, source, payload FROM t ORDER BY source")
    assert [(r[0], r[1]) for r in q] == [
        ("not_json", f"file:{dump}:23"),
        ("bad_vin", f"file:{dump}:24"),
    ]
    assert bytes(q[0][2]) == b"not json at all"
    assert (data_dir / "state" / "dirty" / days_ago(2).date().isoformat()).exists()
    # Importing the same file again writes nothing new (dedup state of the importer).
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0
    assert "0 readings written, 31 duplicates" in again.output
    assert lake_counts(data_dir) == (30, 30)


def test_import_of_a_missing_file_gives_one_error_line(data_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    result = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "import", str(missing)])
    assert result.exit_code == 1
    assert result.output == f"Error: {missing}: no such file\n"
    assert not (data_dir / "lake").exists()


def test_import_rejects_a_bad_fleet_id(data_dir: Path, tmp_path: Path) -> None:
    dump = tmp_path / "d.jsonl"
    dump.write_bytes(encode(reading(VINS[0], 1, NOW)) + b"\n")
    result = CliRunner().invoke(
        cli, ["--data-dir", str(data_dir), "import", str(dump), "--fleet", "a/b"]
    )
    assert result.exit_code == 1
    assert result.output == "Error: fleet id 'a/b' is not 1-64 characters of [A-Za-z0-9_-]\n"


def test_ingest_cli_rejects_a_bad_broker_address(data_dir: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--data-dir", str(data_dir), "ingest", "--broker", "localhost"]
    )
    assert result.exit_code == 1
    assert result.output == "Error: broker 'localhost' is not HOST:PORT\n"


def test_ingest_cli_rejects_a_missing_tls_file(data_dir: Path, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    result = CliRunner().invoke(
        cli,
        ["--data-dir", str(data_dir), "ingest", "--broker", "h:8883", "--tls-ca", str(ca)],
    )
    assert result.exit_code == 1
    assert result.output == f"Error: tls_ca file {ca} does not exist\n"


def _undecodable_name(directory: Path, name: bytes) -> Path:
    """A path whose file name is not valid UTF-8 (as str: surrogate-escaped, as argv has it)."""
    return Path(os.fsdecode(os.fsencode(directory) + b"/" + name))


def test_import_of_a_file_named_in_invalid_utf8_quarantines_with_a_readable_source(
    data_dir: Path, tmp_path: Path
) -> None:
    dump = _undecodable_name(tmp_path, b"gw-\xff\xfe.jsonl")
    lines = [encode(reading(VINS[0], s, NOW - timedelta(seconds=100 - s))) for s in range(3)]
    dump.write_bytes(b"\n".join([*lines, b"not json at all"]) + b"\n")
    args = ["--data-dir", str(data_dir), "import", str(dump), "--fleet", "blr"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output == (
        "imported 4 lines from 1 file(s): 3 readings written, 0 duplicates, "
        "1 quarantined (not_json=1)\n"
    )
    assert lake_counts(data_dir) == (3, 3)
    q = query(data_dir, "quarantine", "SELECT reason, source FROM t")
    assert q == [("not_json", f"file:{tmp_path}/gw-\\xff\\xfe.jsonl:4")]


def test_import_errors_name_a_file_named_in_invalid_utf8_readably(
    data_dir: Path, tmp_path: Path
) -> None:
    missing = _undecodable_name(tmp_path, b"nope-\xff.jsonl")
    result = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "import", str(missing)])
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path}/nope-\\xff.jsonl: no such file\n"
    broken = _undecodable_name(tmp_path, b"cut-\xff.jsonl.gz")
    broken.write_bytes(gzip.compress(encode(reading(VINS[0], 1, NOW)) + b"\n")[:-12])
    result = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "import", str(broken)])
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: {tmp_path}/cut-\\xff.jsonl.gz: broken gzip file after line "
    ), result.output
