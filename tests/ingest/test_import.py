"""``fleetbms import``: JSON-lines files (gzip too) through validation, dedup and the writer."""

from __future__ import annotations

import gzip
import os
from datetime import timedelta
from pathlib import Path

import msgspec
import pyarrow as pa
import pytest
from click.testing import CliRunner, Result

import bms
from pipeline import cli
from tests.ingest import write_fault
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


def _import(data_dir: Path, dump: Path, *options: str, lines: list[bytes] | None = None) -> Result:
    """``fleetbms import dump`` (``options`` after it), ``lines`` written there first as
    JSON lines if given."""
    if lines is not None:
        dump.write_bytes(b"\n".join(lines) + b"\n")
    return CliRunner().invoke(cli, ["--data-dir", str(data_dir), "import", str(dump), *options])


def test_import_gzip_json_lines_lands_readings_once_and_quarantines_bad_lines(
    data_dir: Path, tmp_path: Path
) -> None:
    dump = tmp_path / "gateway.jsonl.gz"
    _write_dump(dump)
    result = _import(data_dir, dump, "--fleet", "blr")
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
    again = _import(data_dir, dump, "--fleet", "blr")
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
    result = _import(data_dir, dump, "--fleet", "blr", lines=[*lines, b"not json at all"])
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


def test_import_quarantines_a_message_the_parquet_writer_refuses_and_writes_the_rest(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reading the contract accepts but the writer refuses (here a fault injected into
    pyarrow) would stop every flush holding it, again at each retry: its message is
    quarantined whole (write_failed) and counts as handled; the others are written."""
    write_fault.install(monkeypatch.setattr)
    marked = {**reading(VINS[0], 5, NOW), "pack": {**reading(VINS[0], 5, NOW)["pack"]}}
    marked["pack"]["odometer_km"] = write_fault.MARKED_KM
    batch = [reading(VINS[1], s, NOW - timedelta(seconds=50 - s)) for s in range(4)]
    batch[2]["pack"]["odometer_km"] = write_fault.MARKED_KM
    lines = [encode(reading(VINS[0], s, NOW - timedelta(seconds=100 - s))) for s in range(5)]
    lines += [encode(marked), encode({"v": 1, "readings": batch})]
    lines += [encode(reading(VINS[0], s, NOW - timedelta(seconds=100 - s))) for s in (6, 7, 8)]
    dump = tmp_path / "dump.jsonl"
    result = _import(data_dir, dump, "--fleet", "blr", lines=lines)
    assert result.exit_code == 0, result.output
    assert result.output == (
        "imported 10 lines from 1 file(s): 8 readings written, 0 duplicates, "
        "2 quarantined (write_failed=2)\n"
    )
    assert lake_counts(data_dir) == (8, 8)
    q = query(
        data_dir,
        "quarantine",
        "SELECT reason, detail, source, payload, topic FROM t ORDER BY source",
    )
    detail = (
        "writing its readings to Parquet raised ArrowInvalid: "
        f"injected fault: odometer_km in [{write_fault.MARKED_KM}]"
    )
    assert [(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in q] == [
        ("write_failed", detail, f"file:{dump}:6", lines[5], f"fleet/blr/{VINS[0]}/bms"),
        ("write_failed", detail, f"file:{dump}:7", lines[6], f"fleet/blr/{VINS[1]}/bms/batch"),
    ]
    # The quarantined readings count as handled, like any quarantined whole message:
    # the watermark passes seq 5, and importing the file again writes nothing.
    state = msgspec.json.decode((data_dir / "state" / "ingest" / "import.json").read_bytes())
    assert state["vins"][VINS[0]]["ranges"] == [[0, 8]]
    assert state["vins"][VINS[1]]["ranges"] == [[0, 3]]
    again = _import(data_dir, dump, "--fleet", "blr")
    assert again.exit_code == 0, again.output
    assert "0 readings written, 13 duplicates, 0 quarantined" in again.output
    assert lake_counts(data_dir) == (8, 8)


def test_import_stops_when_no_single_message_makes_the_write_fail(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure that needs two messages together names no culprit: nothing is quarantined
    in its place and the command stops with the error, as before."""
    write_fault.install(monkeypatch.setattr, (1001.0, 1003.0), together=True)
    dump = tmp_path / "dump.jsonl"
    lines = [encode(reading(VINS[0], s, NOW - timedelta(seconds=100 - s))) for s in range(6)]
    result = _import(data_dir, dump, lines=lines)
    assert result.exit_code == 1
    assert result.output == "Error: injected fault: odometer_km in [1001.0, 1003.0]\n"
    assert lake_counts(data_dir) == (0, 0)
    assert not (data_dir / "lake" / "quarantine").exists()


def test_import_searches_a_write_failure_in_its_state_folder_and_removes_the_trials(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trial writes that find the message the writer refuses go to the worker's own
    state folder (state/ingest/import.trial), not the system temp dir, and nothing of
    them is left: neither after the search nor when the search ends in an error; what a
    killed worker left there is removed too."""
    trial = data_dir / "state" / "ingest" / "import.trial"
    trial.mkdir(parents=True)
    (trial / "left-by-a-killed-worker.parquet").write_bytes(b"x")
    written: list[Path] = []
    write_fault.install(monkeypatch.setattr, written=written)
    marked = reading(VINS[0], 3, NOW)
    marked["pack"]["odometer_km"] = write_fault.MARKED_KM
    lines = [encode(reading(VINS[0], s, NOW - timedelta(seconds=9 - s))) for s in range(3)]
    dump = tmp_path / "dump.jsonl"
    result = _import(data_dir, dump, lines=[*lines, encode(marked)])
    assert result.exit_code == 0, result.output
    assert "3 readings written, 0 duplicates, 1 quarantined (write_failed=1)" in result.output
    tried = [p for p in written if not p.is_relative_to(data_dir / "lake")]
    assert len(tried) >= 3  # the whole batch, then halves down to the marked message
    assert all(p.is_relative_to(trial) for p in tried), tried
    assert not trial.exists()

    written.clear()
    write_fault.install(monkeypatch.setattr, (1004.0, 1005.0), together=True, written=written)
    more = [encode(reading(VINS[0], s, NOW - timedelta(seconds=9 - s))) for s in (4, 5)]
    result = _import(data_dir, dump, lines=more)
    assert result.exit_code == 1
    assert result.output == "Error: injected fault: odometer_km in [1004.0, 1005.0]\n"
    tried = [p for p in written if not p.is_relative_to(data_dir / "lake")]
    assert tried
    assert all(p.is_relative_to(trial) for p in tried), tried
    assert not trial.exists()


def test_import_quarantines_a_message_whose_readings_cannot_be_converted_to_arrow(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building the flush's Arrow table failing for one message's readings (a fault
    injected into pyarrow.array) used to stop every flush holding it: its message is
    quarantined whole (write_failed, the conversion named), counts as handled, and the
    other readings are written."""
    write_fault.install_conversion(monkeypatch.setattr)
    marked = reading(VINS[0], 3, NOW)
    marked["pack"]["odometer_km"] = write_fault.CONVERSION_KM
    batch = [reading(VINS[1], s, NOW - timedelta(seconds=50 - s)) for s in range(4)]
    batch[2]["pack"]["odometer_km"] = write_fault.CONVERSION_KM
    lines = [encode(reading(VINS[0], s, NOW - timedelta(seconds=100 - s))) for s in range(3)]
    lines += [encode(marked), encode({"v": 1, "readings": batch})]
    lines += [encode(reading(VINS[0], s, NOW - timedelta(seconds=100 - s))) for s in (4, 5)]
    dump = tmp_path / "dump.jsonl"
    result = _import(data_dir, dump, "--fleet", "blr", lines=lines)
    assert result.exit_code == 0, result.output
    assert result.output == (
        "imported 7 lines from 1 file(s): 5 readings written, 0 duplicates, "
        "2 quarantined (write_failed=2)\n"
    )
    assert lake_counts(data_dir) == (5, 5)
    stored = query(data_dir, "telemetry", "SELECT vin, seq, odometer_km FROM t ORDER BY seq")
    assert stored == [(VINS[0], s, 1000.0 + s) for s in (0, 1, 2, 4, 5)]
    q = query(
        data_dir, "quarantine", "SELECT reason, detail, source, payload FROM t ORDER BY source"
    )
    detail = (
        "converting its readings to Arrow raised ArrowInvalid: "
        f"injected fault: converting [{write_fault.CONVERSION_KM}]"
    )
    assert [(r[0], r[1], r[2], bytes(r[3])) for r in q] == [
        ("write_failed", detail, f"file:{dump}:4", lines[3]),
        ("write_failed", detail, f"file:{dump}:5", lines[4]),
    ]
    state = msgspec.json.decode((data_dir / "state" / "ingest" / "import.json").read_bytes())
    assert state["vins"][VINS[0]]["ranges"] == [[0, 5]]
    assert state["vins"][VINS[1]]["ranges"] == [[0, 3]]
    again = _import(data_dir, dump, "--fleet", "blr")
    assert again.exit_code == 0, again.output
    assert "0 readings written, 10 duplicates, 0 quarantined" in again.output


def test_import_records_a_message_whose_alert_evaluation_fails_and_keeps_its_readings(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluating the live alerts failing for one message's readings (a fault injected
    into numpy.argmax, after the engine marked the reading's over-temperature alert
    active) used to stop the import after the readings were written, and every rerun
    the same. The readings stay stored; the message is recorded in quarantine
    (alert_failed) for the operator; the alerts of the other readings are evaluated from
    the engine's state before the failed pass: the next reading over the limit raises
    its alert."""
    write_fault.install_alert(monkeypatch.setattr)
    vin = VINS[0]
    temps = [25.0, 25.0, 25.0, write_fault.ALERT_TEMP_C, 65.0]
    lines = [
        encode(reading(vin, s, NOW - timedelta(seconds=100 - s), temp_c=t))
        for s, t in enumerate(temps)
    ]
    dump = tmp_path / "dump.jsonl"
    result = _import(data_dir, dump, "--fleet", "blr", lines=lines)
    assert result.exit_code == 0, result.output
    assert result.output == (
        "imported 5 lines from 1 file(s): 5 readings written, 0 duplicates, "
        "1 quarantined (alert_failed=1)\n"
    )
    assert lake_counts(data_dir) == (5, 5)
    q = query(data_dir, "quarantine", "SELECT reason, detail, source, payload FROM t")
    detail = (
        "readings stored, but evaluating the live alerts on them raised ValueError: "
        f"injected fault: argmax of a sensor list with {write_fault.ALERT_TEMP_C} degC"
    )
    assert [(r[0], r[1], r[2], bytes(r[3])) for r in q] == [
        ("alert_failed", detail, f"file:{dump}:4", lines[3])
    ]
    alerts = query(data_dir, "alerts", "SELECT vin, seq, rule, event, value FROM t")
    assert alerts == [(vin, 4, "over_temperature", "raised", 65.0)]
    state = msgspec.json.decode((data_dir / "state" / "ingest" / "import.json").read_bytes())
    assert state["vins"][vin]["ranges"] == [[0, 4]]
    assert state["alerts_active"] == [[vin, "over_temperature"]]


def test_import_stores_a_quarantine_row_the_writer_refuses_with_its_text_escaped(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quarantine row the Parquet writer refuses (a fault injected into pyarrow for a
    reason detail outside ASCII, here quoting a VIN 'ÄBC...') used to stop the import
    after the telemetry was written, and every rerun the same. The row is stored with its
    text as ASCII escapes and the exception named; reason and raw bytes as they were; the
    other rows and readings as usual, and a rerun does the same."""
    write_fault.install_text(monkeypatch.setattr)
    bad = encode({**reading(VINS[1], 1, NOW), "vin": "ÄBC"})
    lines = [encode(reading(VINS[0], s, NOW - timedelta(seconds=9 - s))) for s in range(2)]
    lines += [bad, b"not json at all"]
    dump = tmp_path / "dump.jsonl"
    result = _import(data_dir, dump, "--fleet", "blr", lines=lines)
    assert result.exit_code == 0, result.output
    assert result.output == (
        "imported 4 lines from 1 file(s): 2 readings written, 0 duplicates, "
        "2 quarantined (bad_vin=1, not_json=1)\n"
    )
    assert lake_counts(data_dir) == (2, 2)
    q = query(
        data_dir, "quarantine", "SELECT reason, detail, source, payload FROM t ORDER BY source"
    )
    assert [(r[0], r[1], r[2], bytes(r[3])) for r in q] == [
        (
            "bad_vin",
            "[stored with its text escaped: writing it raised ArrowInvalid: injected fault: "
            "a detail outside ASCII] vin '\\xc4BC' is not a VIN",
            f"file:{dump}:3",
            bad,
        ),
        ("not_json", q[1][1], f"file:{dump}:4", b"not json at all"),
    ]
    again = _import(data_dir, dump, "--fleet", "blr")
    assert again.exit_code == 0, again.output
    assert "0 readings written, 2 duplicates, 2 quarantined (bad_vin=1, not_json=1)" in again.output


def test_every_reason_ingest_gives_a_message_itself_is_a_listed_reject_reason(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reasons ingest gives a message that fails a step after the contract's checks
    (decode_failed, write_failed, alert_failed; faults injected into msgspec, pyarrow
    and numpy) are quarantine reasons like the contract's: listed in
    bms.REJECT_REASONS, which documents what the column holds."""
    write_fault.install_decoder(monkeypatch.setattr)
    write_fault.install(monkeypatch.setattr)
    write_fault.install_alert(monkeypatch.setattr)
    undecodable = reading(VINS[0], 0, NOW)
    undecodable["pack"]["mode"] = "FAULT"
    unwritable = reading(VINS[0], 1, NOW)
    unwritable["pack"]["odometer_km"] = write_fault.MARKED_KM
    lines = [
        encode(undecodable),
        encode(unwritable),
        encode(reading(VINS[0], 2, NOW, temp_c=write_fault.ALERT_TEMP_C)),
        encode({**reading(VINS[0], 3, NOW), "v": 2}),
    ]
    dump = tmp_path / "dump.jsonl"
    result = _import(data_dir, dump, lines=lines)
    assert result.exit_code == 0, result.output
    reasons = [r[0] for r in query(data_dir, "quarantine", "SELECT reason FROM t ORDER BY 1")]
    assert reasons == ["alert_failed", "decode_failed", "unknown_version", "write_failed"]
    assert set(reasons) <= set(bms.REJECT_REASONS)


def test_import_stops_on_a_memory_error_of_the_write_and_quarantines_nothing(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running out of memory is the machine's failure, not the message's, even when it
    happens on one message's readings (pyarrow.ArrowMemoryError injected into the Parquet
    writer): nothing is quarantined in its place, the import stops with the error, as
    for a full disk."""
    write_fault.install(monkeypatch.setattr, error=pa.ArrowMemoryError)
    marked = reading(VINS[0], 3, NOW)
    marked["pack"]["odometer_km"] = write_fault.MARKED_KM
    lines = [encode(reading(VINS[0], s, NOW - timedelta(seconds=9 - s))) for s in range(3)]
    dump = tmp_path / "dump.jsonl"
    result = _import(data_dir, dump, lines=[*lines, encode(marked)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, MemoryError)
    assert lake_counts(data_dir) == (0, 0)
    assert not (data_dir / "lake" / "quarantine").exists()


def test_import_stops_when_every_message_fails_alone_and_a_sound_reading_too(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails for any readings (a fault injected into pyarrow's Parquet writer
    for every table: a broken library, not a poison message) fails for each message
    alone too; a sound reading written as a control fails as well, so nothing is
    quarantined in their place and the import stops with the error. A lone poison
    message is still quarantined: its control passes."""
    write_fault.install(monkeypatch.setattr, (), together=True)  # every table
    lines = [encode(reading(VINS[0], s, NOW - timedelta(seconds=9 - s))) for s in range(3)]
    dump = tmp_path / "dump.jsonl"
    result = _import(data_dir, dump, lines=lines)
    assert result.exit_code == 1
    assert result.output == "Error: injected fault: odometer_km in []\n"
    assert lake_counts(data_dir) == (0, 0)
    assert not (data_dir / "lake" / "quarantine").exists()

    monkeypatch.undo()
    write_fault.install(monkeypatch.setattr)
    marked = reading(VINS[0], 0, NOW)
    marked["pack"]["odometer_km"] = write_fault.MARKED_KM
    result = _import(data_dir, dump, lines=[encode(marked)])
    assert result.exit_code == 0, result.output
    assert "0 readings written, 0 duplicates, 1 quarantined (write_failed=1)" in result.output
