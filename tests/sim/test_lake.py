"""``simulate_to_lake`` and the ``fleetbms simulate`` command: telemetry, truth, registry,
determinism, contiguous seqs, and one-line errors for bad options."""

from __future__ import annotations

import dataclasses
import re
import shutil
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


def _fleet_rows(path: Path, fleet: str) -> list[dict[str, object]]:
    return [r for r in pq.read_table(path).to_pylist() if r["fleet"] == fleet]


def _snapshot(data_dir: Path, fleet: str) -> dict[str, object]:
    """What a simulation wrote for ``fleet``: its telemetry partitions (tier, date) with
    their (vin, seq) pairs, and its rows of the registry and the truth files."""
    parts = sorted(data_dir.glob(f"*/telemetry/date=*/fleet={fleet}"))
    return {
        "telemetry": {
            (p.parents[2].name, p.parent.name): sorted(
                zip(*pq.read_table(p, columns=["vin", "seq"]).to_pydict().values(), strict=True)
            )
            for p in parts
        },
        "registry": _fleet_rows(data_dir / "lake/registry/vehicles.parquet", fleet),
        "vehicle_day": _fleet_rows(data_dir / "truth/vehicle_day.parquet", fleet),
        "faults": _fleet_rows(data_dir / "truth/faults.parquet", fleet),
    }


def _duplicate_vin_seq(data_dir: Path) -> int:
    glob = f"{data_dir}/*/telemetry/**/*.parquet"
    return duckdb.sql(
        f"SELECT count(*) - count(DISTINCT (vin, seq)) FROM read_parquet('{glob}')"
    ).fetchall()[0][0]


def test_rerun_refuses_to_duplicate_unless_overwrite(tmp_path: Path) -> None:
    sim.simulate_to_lake(SPEC, tmp_path)
    before = _snapshot(tmp_path, "t1")
    with pytest.raises(ValueError, match="already has data") as err:
        sim.simulate_to_lake(SPEC, tmp_path)
    # The dates named are the UTC partitions found, not the local days of the run.
    parts = sorted(p.parent.name[5:] for p in (tmp_path / "lake/telemetry").glob("date=*/fleet=t1"))
    assert len(parts) == 5
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        f"fleet 't1' already has data in {tmp_path} (telemetry of 5 UTC date(s), "
        f"{parts[0]}..{parts[-1]}; rows in {tmp_path / 'lake/registry/vehicles.parquet'}, "
    )
    assert message.endswith(
        "use --fleet to simulate another fleet, or --overwrite to replace all of this fleet's data"
    )
    assert _snapshot(tmp_path, "t1") == before  # the refusal wrote nothing
    sim.simulate_to_lake(SPEC, tmp_path, overwrite=True)
    assert _duplicate_vin_seq(tmp_path) == 0
    assert _snapshot(tmp_path, "t1")["vehicle_day"] == before["vehicle_day"]
    assert len(_fleet_rows(tmp_path / "truth/faults.parquet", "t1")) == 3


@pytest.mark.parametrize(
    "later",
    [
        # the next days of the same vehicles (the same seed gives the same VINs)
        dataclasses.replace(SPEC, start=date(2026, 3, 5)),
        # a month later, same vehicles: seq would start at 1 again
        dataclasses.replace(SPEC, start=date(2026, 4, 1)),
        # other dates and another seed: other vehicles of the same fleet
        dataclasses.replace(SPEC, vehicles=1, start=date(2026, 4, 1), seed=12),
    ],
    ids=["next-days", "same-vins-later", "other-vins-later"],
)
def test_a_later_run_into_the_same_fleet_is_refused_and_overwrite_replaces_the_fleet(
    tmp_path: Path, later: sim.FleetSpec
) -> None:
    """A simulation is one fleet's whole history. Merging a second run into it left the
    lake and the truth disagreeing (deleted vehicles still registered, truth days without
    telemetry, faults replaced but vehicle_day merged, duplicate (vin, seq)); so a second
    run is refused at any dates, and --overwrite replaces the fleet entirely."""
    sim.simulate_to_lake(SPEC, tmp_path)
    before = _snapshot(tmp_path, "t1")
    with pytest.raises(ValueError, match="already has data"):
        sim.simulate_to_lake(later, tmp_path)
    assert _snapshot(tmp_path, "t1") == before

    sim.simulate_to_lake(later, tmp_path, overwrite=True)
    alone = tmp_path / "alone"
    sim.simulate_to_lake(later, alone)
    # exactly what the run writes into an empty data directory: nothing of the first run
    after, expected = _snapshot(tmp_path, "t1"), _snapshot(alone, "t1")
    for name in ("telemetry", "registry", "vehicle_day", "faults"):
        assert after[name] == expected[name], name
    lake = _telemetry(tmp_path / "lake").fetchall()
    assert lake == _telemetry(alone / "lake").fetchall()
    assert _duplicate_vin_seq(tmp_path) == 0
    tele_vins = {row[0] for row in lake}
    assert {r["vin"] for r in after["registry"]} == tele_vins  # type: ignore[attr-defined]
    assert {r["vin"] for r in after["vehicle_day"]} == tele_vins  # type: ignore[attr-defined]


def test_overwrite_keeps_other_fleets_and_replaces_archived_telemetry(tmp_path: Path) -> None:
    """The registry and the truth files are shared between fleets: a run, or an
    --overwrite, of one fleet keeps the other fleets' rows and telemetry. --overwrite
    also deletes the fleet's archived partitions (retention moved them out of the lake)."""
    from pipeline._retention import apply_retention

    other = dataclasses.replace(SPEC, fleet="t2", seed=5, vehicles=2)
    sim.simulate_to_lake(SPEC, tmp_path)
    sim.simulate_to_lake(other, tmp_path)

    def archive_older_days() -> None:
        apply_retention(
            tmp_path,
            date(2026, 3, 5),
            archive_after_days=2,
            purge_after_days=400,
            zstd_level=3,
            today=date(2026, 3, 5),
        )

    archive_older_days()
    archived = sorted((tmp_path / "archive/telemetry").glob("date=*/fleet=t1"))
    assert archived  # the setup: some of t1 is in the archive
    kept = _snapshot(tmp_path, "t2")
    assert all(kept[name] for name in ("telemetry", "registry", "vehicle_day", "faults"))
    t1 = _snapshot(tmp_path, "t1")

    # only archived telemetry left: still refused
    for part in (tmp_path / "lake/telemetry").glob("date=*/fleet=t1"):
        shutil.rmtree(part)
    with pytest.raises(ValueError, match=r"telemetry of \d+ UTC date"):
        sim.simulate_to_lake(SPEC, tmp_path)
    # registry rows only (telemetry purged): still refused
    for part in archived:
        shutil.rmtree(part)
    with pytest.raises(ValueError, match=r"rows in .*vehicles\.parquet"):
        sim.simulate_to_lake(SPEC, tmp_path)

    sim.simulate_to_lake(SPEC, tmp_path, overwrite=True)
    assert _snapshot(tmp_path, "t2") == kept
    again = _snapshot(tmp_path, "t1")
    assert again["telemetry"] == {
        ("lake", day): pairs
        for (_tier, day), pairs in t1["telemetry"].items()  # type: ignore[attr-defined]
    }
    for name in ("registry", "vehicle_day", "faults"):
        assert again[name] == t1[name], name

    # and with telemetry in both tiers, --overwrite deletes the archived partitions too
    archive_older_days()
    later = dataclasses.replace(SPEC, start=date(2026, 6, 1))
    sim.simulate_to_lake(later, tmp_path, overwrite=True)
    assert not list((tmp_path / "archive/telemetry").glob("date=*/fleet=t1"))
    assert _snapshot(tmp_path, "t2") == kept
    assert _duplicate_vin_seq(tmp_path) == 0


def test_cli_simulate_into_a_fleet_with_data_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def args(start: str) -> list[str]:
        return [
            *("--data-dir", str(tmp_path), "simulate", "--to-lake", "--vehicles", "1"),
            *("--days", "1", "--start", start, "--fleet", "cli", "--cadence-s", "300"),
        ]

    with pytest.raises(SystemExit) as exc:
        main(args("2026-02-01"))
    assert exc.value.code == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args("2026-05-01"))
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: fleet 'cli' already has data in ")
    assert err.endswith(
        "use --fleet to simulate another fleet, or --overwrite to replace all "
        "of this fleet's data\n"
    )
    assert err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        main([*args("2026-05-01"), "--overwrite"])
    assert exc.value.code == 0
    dates = {p.parent.name for p in (tmp_path / "lake/telemetry").glob("date=*/fleet=cli")}
    assert sorted(dates) == ["date=2026-04-30", "date=2026-05-01"]  # the new run's only


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
    assert {r["warranty_policy"] for r in reg} == {""}  # cars: the fleet's default


def test_two_wheelers_are_registered_under_the_two_wheeler_warranty(tmp_path: Path) -> None:
    """A scooter's cover is 80,000 km, not a car's 160,000: its verdict's horizon."""
    spec = sim.FleetSpec(**{**SPEC.__dict__, "vehicles": 8, "days": 1, "vehicle_class": "mixed"})  # type: ignore[arg-type]
    sim.simulate_to_lake(spec, tmp_path)
    reg = pq.read_table(tmp_path / "lake" / "registry" / "vehicles.parquet").to_pylist()
    policy = {r["vehicle_class"]: r["warranty_policy"] for r in reg}
    assert policy == {"car": "", "two_wheeler": "oem-2w-8y-80k-70"}
    bms.run_pending(tmp_path / "lake")
    war = bms.read_metrics(tmp_path / "lake", "warranty").to_pylist()
    km = {r["vin"]: r["threshold_km"] for r in war}
    assert {km[r["vin"]] for r in reg if r["vehicle_class"] == "two_wheeler"} == {80_000.0}
    assert {km[r["vin"]] for r in reg if r["vehicle_class"] == "car"} == {160_000.0}


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
