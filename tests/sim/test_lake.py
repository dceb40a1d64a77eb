"""``simulate_to_lake`` and the ``fleetbms simulate`` command: telemetry, truth, registry,
determinism, contiguous seqs, and one-line errors for bad options."""

from __future__ import annotations

import dataclasses
import re
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import bms
import sim
from pipeline import main
from pipeline._cli import cli

SPEC = sim.FleetSpec(
    vehicles=3,
    days=4,
    start=date(2026, 3, 1),
    fleet="t1",
    seed=11,
    cells=14,
    cadence_s=120,
    idle_cadence_s=900,
    fault_rate=1.0,
)


def _telemetry(lake: Path) -> duckdb.DuckDBPyRelation:
    glob = str(lake / "telemetry" / "**" / "*.parquet")
    return duckdb.sql(
        f"SELECT * EXCLUDE (received_at) FROM read_parquet('{glob}', hive_partitioning=true) "
        "ORDER BY vin, seq"
    )


def test_to_lake_writes_contract_telemetry_truth_and_registry(tmp_path: Path) -> None:
    summary = sim.simulate_to_lake(SPEC, tmp_path)
    lake = tmp_path / "lake"
    files = bms.telemetry_files(lake)
    # One file per (UTC date, fleet): local days in Asia/Kolkata span 5 UTC dates.
    assert len(files) == summary.files == 5
    assert {f.parent.name for f in files} == {"fleet=t1"}
    table = bms.read_telemetry(files)
    assert table.num_rows == summary.readings
    assert table.schema.equals(bms.TELEMETRY_SCHEMA, check_metadata=False)
    rows = duckdb.sql(
        f"SELECT vin, min(seq) AS lo, max(seq) AS hi, count(*) AS n, count(DISTINCT seq) AS d "
        f"FROM read_parquet('{lake}/telemetry/**/*.parquet') GROUP BY vin ORDER BY vin"
    ).fetchall()
    assert len(rows) == 3
    for vin, lo, hi, n, d in rows:
        assert re.fullmatch(bms.VIN_PATTERN, vin)
        assert (lo, hi, d) == (1, n, n)  # seq starts at 1 and has no gap
    modes = set(duckdb.sql(f"SELECT DISTINCT mode FROM read_parquet('{files[2]}')").fetchall())
    assert ("drive",) in modes
    assert ("idle",) in modes

    registry = pq.read_table(lake / "registry" / "vehicles.parquet")
    assert registry.schema.equals(sim.REGISTRY_SCHEMA, check_metadata=False)
    assert sorted(registry["vin"].to_pylist()) == [r[0] for r in rows]
    assert set(registry["n_cells"].to_pylist()) == {14}

    truth = pq.read_table(tmp_path / "truth" / "vehicle_day.parquet")
    assert truth.schema.equals(sim.VEHICLE_DAY_SCHEMA, check_metadata=False)
    assert truth.num_rows == 3 * 4
    soh = np.asarray(truth["soh_pct"])
    assert np.all((soh > 90) & (soh < 102))
    faults = pq.read_table(tmp_path / "truth" / "faults.parquet")
    assert faults.schema.equals(sim.FAULTS_SCHEMA, check_metadata=False)
    assert faults.num_rows == 3  # fault_rate=1: one fault per vehicle


def test_same_seed_gives_the_same_data_and_another_seed_does_not(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    sim.simulate_to_lake(SPEC, a)
    sim.simulate_to_lake(SPEC, b)
    sim.simulate_to_lake(
        sim.FleetSpec(**{**SPEC.__dict__, "seed": 12}),  # type: ignore[arg-type]
        c,
    )
    assert _telemetry(a / "lake").fetchall() == _telemetry(b / "lake").fetchall()
    for name in ("vehicle_day", "faults"):
        ta = pq.read_table(a / "truth" / f"{name}.parquet")
        assert ta.equals(pq.read_table(b / "truth" / f"{name}.parquet"))
    assert _telemetry(a / "lake").fetchall() != _telemetry(c / "lake").fetchall()


def test_iter_readings_yields_the_lake_readings_in_time_order(tmp_path: Path) -> None:
    spec = sim.FleetSpec(**{**SPEC.__dict__, "days": 1})  # type: ignore[arg-type]
    sim.simulate_to_lake(spec, tmp_path)
    readings = list(sim.iter_readings(spec))
    ts = [r.ts for r in readings]
    assert ts == sorted(ts)
    stored = bms.read_telemetry(bms.telemetry_files(tmp_path / "lake"))
    assert len(readings) == stored.num_rows
    first = next(r for r in readings if r.seq == 5)
    row = duckdb.sql(
        "SELECT cell_mv, voltage_v FROM stored WHERE vin = $vin AND seq = 5",
        params={"vin": first.vin},
    ).fetchall()[0]
    assert row[0] == first.cells.voltages_mv
    assert row[1] == pytest.approx(first.pack.voltage_v, abs=1e-3)


def test_rerun_refuses_to_duplicate_unless_overwrite(tmp_path: Path) -> None:
    sim.simulate_to_lake(SPEC, tmp_path)
    with pytest.raises(ValueError, match="already exists") as err:
        sim.simulate_to_lake(SPEC, tmp_path)
    # The dates named are the UTC partitions found, not the local days of the run (the
    # message read "5 date(s) of 2026-03-01..2026-03-04": five dates in a four-day range).
    parts = sorted(p.parent.name[5:] for p in (tmp_path / "lake/telemetry").glob("date=*/fleet=t1"))
    assert len(parts) == 5
    assert str(err.value).startswith(
        f"telemetry of fleet 't1' already exists for 5 UTC date(s), {parts[0]}..{parts[-1]}, "
        "of this run (local days 2026-03-01..2026-03-04) under "
    )
    sim.simulate_to_lake(SPEC, tmp_path, overwrite=True)
    n = duckdb.sql(
        f"SELECT count(*) - count(DISTINCT (vin, seq)) FROM "
        f"read_parquet('{tmp_path}/lake/telemetry/**/*.parquet')"
    ).fetchall()
    assert n == [(0,)]


def test_a_later_run_into_the_same_fleet_keeps_its_other_vehicles_registered(
    tmp_path: Path,
) -> None:
    """A second simulate --to-lake into the fleet (other dates, so no --overwrite needed)
    must not unregister the vehicles of the first: their telemetry stays in the lake, and
    an unregistered vehicle has no chemistry, capacity or warranty for the analytics."""
    sim.simulate_to_lake(SPEC, tmp_path)
    later = dataclasses.replace(SPEC, vehicles=1, start=date(2026, 4, 1), seed=12)
    sim.simulate_to_lake(later, tmp_path)
    first = set(
        pq.read_table(tmp_path / "lake/telemetry/date=2026-03-02").column("vin").to_pylist()
    )
    second = set(
        pq.read_table(tmp_path / "lake/telemetry/date=2026-04-02").column("vin").to_pylist()
    )
    assert (len(first), len(second)) == (3, 1)
    assert not first & second
    registry = pq.read_table(tmp_path / "lake/registry/vehicles.parquet")
    assert sorted(registry.column("vin").to_pylist()) == sorted(first | second)
    truth = pq.read_table(tmp_path / "truth/vehicle_day.parquet")
    assert set(truth.column("vin").to_pylist()) == first | second
    assert truth.num_rows == 3 * SPEC.days + 1 * later.days
    faults = pq.read_table(tmp_path / "truth/faults.parquet")
    assert first <= set(faults.column("vin").to_pylist())  # fault_rate 1: each has one
    # the same run again (with --overwrite) replaces its own rows instead of adding them
    sim.simulate_to_lake(later, tmp_path, overwrite=True)
    assert pq.read_table(tmp_path / "lake/registry/vehicles.parquet").equals(registry)
    assert pq.read_table(tmp_path / "truth/vehicle_day.parquet").num_rows == truth.num_rows
    assert pq.read_table(tmp_path / "truth/faults.parquet").num_rows == faults.num_rows


def test_cli_simulate_writes_telemetry_truth_and_registry(tmp_path: Path) -> None:
    args = [
        "--data-dir",
        str(tmp_path),
        "simulate",
        "--to-lake",
        "--vehicles",
        "2",
        "--days",
        "2",
        "--start",
        "2026-02-01",
        "--cells",
        "20",
        "--chemistry",
        "lfp",
        "--climate",
        "hot",
        "--fleet",
        "cli",
        "--seed",
        "3",
        "--cadence-s",
        "120",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "simulated 2 vehicles x 2 days" in result.output
    assert bms.telemetry_files(tmp_path / "lake")
    assert (tmp_path / "truth" / "vehicle_day.parquet").exists()
    assert (tmp_path / "truth" / "faults.parquet").exists()
    reg = pq.read_table(tmp_path / "lake" / "registry" / "vehicles.parquet").to_pylist()
    assert {(r["fleet"], r["chemistry"], r["n_cells"]) for r in reg} == {("cli", "lfp", 20)}


@pytest.mark.parametrize(
    ("flags", "message", "code"),
    [
        (
            ["--start", "2026-02-30"],
            "Error: Invalid value for '--start': invalid date 2026-02-30 (expected YYYY-MM-DD)",
            2,
        ),
        (["--vehicles", "-2"], "Error: vehicles must be at least 1, got -2", 1),
        (["--chemistry", "nca"], "Error: unknown chemistry 'nca'; valid: nmc, lfp, mixed", 1),
        (["--cells", "300"], "Error: cells must be within 14..200, got 300", 1),
    ],
)
def test_cli_simulate_rejects_bad_options_with_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str, code: int
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--data-dir", str(tmp_path), "simulate", "--to-lake", *flags])
    assert exc.value.code == code
    captured = capsys.readouterr()
    assert captured.err == message + "\n"
    assert not (tmp_path / "lake").exists()
