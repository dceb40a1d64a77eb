"""The analytics runner on hand-built telemetry with known capacity and resistance."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import bms
from pipeline._cli import cli
from tests.bms.test_analytics_synth import SynthVehicle, vehicle_day_table, write_fleet

START = date(2026, 1, 1)
DAYS = 4
NMC = SynthVehicle("FBMAAAAA0TS000001", capacity_ah=95.0, offset_a=0.08)
LFP = SynthVehicle("FBMAAAAA0TS000002", chemistry="lfp", capacity_ah=90.0, weak_cell=3)
# A fine cadence so that resistance steps exist (at most step_max_delay_s apart).
FINE = SynthVehicle("FBMAAAAA0TS000003", capacity_ah=97.0, cell_r_mohm=1.5, weak_cell=5)


def _metric_bytes(lake: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(lake)): p.read_bytes()
        for p in sorted((lake / "metrics").rglob("*.parquet"))
    }


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four days of three vehicles, analysed once for the module."""
    root = tmp_path_factory.mktemp("analytics") / "data" / "lake"
    write_fleet(root, [NMC, LFP], START, DAYS, cadence_s=300)
    fine_root = root.parent / "fine"
    write_fleet(fine_root, [FINE], START, DAYS, cadence_s=30)
    for p in (fine_root / "telemetry").rglob("*.parquet"):
        dest = root / p.relative_to(fine_root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
    from tests.bms.test_analytics_synth import write_registry

    write_registry(root, [NMC, LFP, FINE])
    bms.run_pending(root)
    return root


def test_capacity_matches_the_true_capacity_for_nmc_and_lfp(lake: Path) -> None:
    cap = bms.read_metrics(lake, "capacity")
    for v in (NMC, LFP, FINE):
        rows = cap.filter(pc.equal(cap["vin"], v.vin))
        rested = rows.filter(
            pc.and_(pc.equal(rows["start_anchor"], "rest"), pc.equal(rows["end_anchor"], "rest"))
        )
        assert rested.num_rows >= 3, v.vin
        est = np.asarray(rested["capacity_ah"].to_pylist())
        np.testing.assert_allclose(est, v.capacity_ah, rtol=0.01)
        # The BMS's own figure is kept beside, never used.
        assert set(rested["bms_soh_pct"].to_pylist()) == {97.0}
    # LFP: the charge across the 70-82 % OCV step anchors a SoC without a rest. Each such
    # estimate lies within two of its own sigmas: at this 300 s cadence the charge
    # counted from the rest is short by the part of the first interval after the current
    # step (sample and hold), about 1.4 Ah, which that sigma carries.
    rows = cap.filter(pc.equal(cap["vin"], LFP.vin))
    step = rows.filter(pc.equal(rows["end_anchor"], "charge_step"))
    assert step.num_rows >= 3
    rel = np.asarray(step["capacity_ah"].to_pylist()) / LFP.capacity_ah - 1.0
    assert np.all(np.abs(rel) <= 2.0 * np.asarray(step["rel_sigma"].to_pylist())), rel
    nmc = cap.filter(pc.equal(cap["vin"], NMC.vin))
    assert set(nmc["start_anchor"].to_pylist()) == {"rest"}  # NMC rests read anywhere


def test_capacity_pairs_rest_points_across_midnight(lake: Path) -> None:
    cap = bms.read_metrics(lake, "capacity")
    starts = [t.date() for t in cap["start_ts"].to_pylist()]
    ends = [t.date() for t in cap["end_ts"].to_pylist()]
    assert any(s < e for s, e in zip(starts, ends, strict=True))


def test_vehicle_day_counts_charge_distance_and_exposure(lake: Path) -> None:
    vd = bms.read_metrics(lake, "vehicle_day", [START + timedelta(days=1)])
    row = vd.filter(pc.equal(vd["vin"], NMC.vin)).to_pylist()[0]
    # Driving 0.5 C for 1 h and 0.3 C for 1 h of a 95 Ah pack (less the sensor offset),
    # charging back 0.8 x 95 Ah; the +0.08 A offset counts as charge the other 22 h:
    # vehicle_day reports what the sensor measured.
    assert row["ah_discharged"] == pytest.approx(0.8 * 95 - 2 * 0.08, rel=0.001)
    assert row["ah_charged"] == pytest.approx(0.8 * 95 + 22 * 0.08, rel=0.001)
    assert row["equivalent_full_cycles"] == pytest.approx((75.84 + 77.76) / 200, rel=1e-3)
    assert row["dc_fast_share"] == 0.0
    assert row["distance_km"] == pytest.approx(60.0, abs=0.1)
    assert row["hours_temp_15_25c"] == 0.0
    assert row["hours_temp_25_35c"] == pytest.approx(24.0, abs=0.01)
    assert row["max_discharge_c_rate"] == pytest.approx(0.475, rel=0.01)
    assert row["rest_periods"] >= 2
    assert row["duplicates_dropped"] == 0


def test_resistance_and_cell_features_find_the_weak_cell(lake: Path) -> None:
    res = bms.read_metrics(lake, "resistance")
    row = res.filter(pc.equal(res["vin"], FINE.vin)).to_pylist()[-1]
    # 14 cells x 1.5 mOhm, one of them 3x, no interconnect in the synthetic pack.
    true_pack = 13 * 1.5 + 4.5
    assert row["resistance_mohm_25c"] == pytest.approx(true_pack, rel=0.05)
    cells = np.asarray(row["cell_resistance_mohm_25c"])
    assert int(np.argmax(cells)) == FINE.weak_cell
    cd = bms.read_metrics(lake, "cell_day", [START + timedelta(days=2)])
    fine = cd.filter(pc.equal(cd["vin"], FINE.vin))
    worst_sd = int(np.argmin(fine["self_discharge_mv_per_day"].to_numpy()))
    worst_sag = int(np.argmin(fine["sag_mv"].to_numpy()))
    assert worst_sd == FINE.weak_cell
    assert worst_sag == FINE.weak_cell
    assert fine["resistance_dev_pct"].to_pylist()[FINE.weak_cell] == pytest.approx(200, rel=0.1)


def test_vehicle_soh_and_warranty_rows_for_every_vehicle(lake: Path) -> None:
    last = START + timedelta(days=DAYS - 1)
    soh = bms.read_metrics(lake, "vehicle_soh", [last])
    assert sorted(soh["vin"].to_pylist()) == sorted(v.vin for v in (NMC, LFP, FINE))
    for row in soh.to_pylist():
        true = {NMC.vin: 95.0, LFP.vin: 90.0, FINE.vin: 97.0}[row["vin"]]
        assert row["soh_low_pct"] <= true <= row["soh_high_pct"]
        assert abs(row["soh_pct"] - true) < 1.0
    war = bms.read_metrics(lake, "warranty", [last])
    assert set(war["status"].to_pylist()) == {"ok"}
    assert set(war["policy_id"].to_pylist()) == {"oem-8y-160k-70"}
    # The use since the newest estimate, for a verdict on stale evidence: every day has
    # estimates, and the day of an estimate counts after it, so one day of use.
    for row in war.to_pylist():
        since = json.loads(row["evidence"])["use_since_estimate"]
        assert since["days_observed"] == 1.0, row["vin"]
        assert since["calendar_stress"] > 0.0
        # The same use every day: the ratio is a day's upper-bound stress over its lower
        # bound (storage at 90 against 10 % SoC, band edges 25 against 15 degC: 10-50 x).
        assert 1.0 < since["stress_ratio"] < 100.0


def test_rerun_gives_byte_identical_files(lake: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(lake.parent, copy)
    before = _metric_bytes(copy / "lake")
    day = START + timedelta(days=2)
    bms.run_analytics(copy / "lake", day)
    assert _metric_bytes(copy / "lake") == before
    assert bms.pending_dates(copy / "lake") == []


def test_duplicates_and_small_files_do_not_change_results(lake: Path, tmp_path: Path) -> None:
    """The same readings split over many files with duplicate rows give the same tables
    as one compacted file per day (named so: the jobs then skip deduplication)."""
    root = tmp_path / "dup" / "lake"
    shutil.copytree(lake.parent / "lake" / "registry", root / "registry")
    soc = 0.9
    for i in range(2):
        day = START + timedelta(days=i)
        table, soc = vehicle_day_table(NMC, day, soc, cadence_s=300, fleet="demo", seq0=i * 10**6)
        for k in range(0, table.num_rows, 50):  # many small files
            bms.write_telemetry(table.slice(k, 50), root, file_prefix=f"w{k}")
        bms.write_telemetry(table.slice(100, 40), root, file_prefix="replay")  # duplicates
    clean = tmp_path / "clean" / "lake"
    shutil.copytree(lake.parent / "lake" / "registry", clean / "registry")
    soc = 0.9
    for i in range(2):
        day = START + timedelta(days=i)
        table, soc = vehicle_day_table(NMC, day, soc, cadence_s=300, fleet="demo", seq0=i * 10**6)
        (written,) = bms.write_telemetry(table, clean, file_prefix="compacted")
        assert written.path.name.startswith(bms.COMPACTED_PREFIX)
    bms.run_pending(root)
    bms.run_pending(clean)
    for name in ("capacity", "cell_day", "resistance", "vehicle_soh", "warranty"):
        assert bms.read_metrics(root, name).equals(bms.read_metrics(clean, name)), name
    vd = bms.read_metrics(root, "vehicle_day")
    assert vd["duplicates_dropped"].to_pylist() == [40, 40]
    assert vd.drop_columns(["duplicates_dropped"]).equals(
        bms.read_metrics(clean, "vehicle_day").drop_columns(["duplicates_dropped"])
    )


def test_day_n_needs_only_its_partition_and_the_state(lake: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(lake.parent, copy)
    last = START + timedelta(days=DAYS - 1)
    before = _metric_bytes(copy / "lake")
    for d in range(DAYS - 1):  # older raw telemetry gone (archived elsewhere)
        shutil.rmtree(
            copy / "lake" / "telemetry" / f"date={(START + timedelta(days=d)).isoformat()}"
        )
    bms.run_analytics(copy / "lake", last)
    after = _metric_bytes(copy / "lake")
    assert {k: v for k, v in after.items() if last.isoformat() in k} == {
        k: v for k, v in before.items() if last.isoformat() in k
    }


def test_late_data_makes_that_date_and_later_ones_stale(lake: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(lake.parent, copy)
    lake2 = copy / "lake"
    day1 = START + timedelta(days=1)
    late = vehicle_day_table(NMC, day1, 0.9, cadence_s=300, fleet="demo", seq0=10**6)[0]
    bms.write_telemetry(late.slice(0, 3), lake2, file_prefix="late")
    assert bms.stale_dates(lake2) == [START + timedelta(days=d) for d in range(1, DAYS)]
    assert bms.pending_dates(lake2) == bms.stale_dates(lake2)
    done = bms.run_pending(lake2)
    assert [s.day for s in done] == [START + timedelta(days=d) for d in range(1, DAYS)]
    assert bms.pending_dates(lake2) == []


def test_unknown_date_and_bad_registry_raise() -> None:
    with pytest.raises(bms.BmsError, match="no telemetry for 2020-01-01"):
        bms.run_analytics(Path("/nonexistent/lake"), date(2020, 1, 1))


def test_registry_with_unknown_chemistry_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "registry" / "vehicles.parquet"
    path.parent.mkdir(parents=True)
    reg = pa.table(
        {
            "vin": ["X"],
            "fleet": ["demo"],
            "chemistry": ["nca"],
            "capacity_ah": [1.0],
            "n_cells": pa.array([14], pa.int16()),
            "in_service_date": pa.array([START], pa.date32()),
            "warranty_policy": [""],
        }
    )
    pq.write_table(reg, path)
    with pytest.raises(bms.BmsError, match="unknown chemistry \\['nca'\\]; valid: nmc, lfp"):
        bms.read_registry(tmp_path)


def test_a_registry_naming_an_unknown_policy_stops_the_run_before_any_work(
    lake: Path, tmp_path: Path
) -> None:
    """A vehicle's policy is checked when the run starts: the error names the vehicle
    and nothing is written (it was found at the first date's warranty step, without the
    vehicle)."""
    copy = tmp_path / "data"
    shutil.copytree(lake.parent, copy)
    shutil.rmtree(copy / "state")
    shutil.rmtree(copy / "lake" / "metrics")
    path = copy / "lake" / "registry" / "vehicles.parquet"
    reg = pq.read_table(path).to_pylist()
    reg[1]["warranty_policy"] = "no-such-policy"
    pq.write_table(pa.Table.from_pylist(reg, schema=pq.read_schema(path)), path)
    with pytest.raises(
        bms.WarrantyPolicyError,
        match=f"^registry, vehicle {reg[1]['vin']}: unknown warranty policy 'no-such-policy'",
    ):
        bms.run_pending(copy / "lake")
    assert not (copy / "lake" / "metrics").exists()
    res = CliRunner().invoke(cli, ["--data-dir", str(copy), "analyze"])
    assert res.exit_code == 1
    assert res.output.startswith(f"Error: registry, vehicle {reg[1]['vin']}: unknown warranty")
    assert len(res.output.strip().splitlines()) == 1


def test_cli_analyze_one_date_status_and_catch_up(lake: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(lake.parent, copy)
    shutil.rmtree(copy / "state")
    runner = CliRunner()
    res = runner.invoke(cli, ["--data-dir", str(copy), "analyze", "--status"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[-1] == f"{DAYS} of {DAYS} date(s) need computing"
    res = runner.invoke(cli, ["--data-dir", str(copy), "analyze", "--date", "2026-01-01"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("2026-01-01 fleets demo: 3 vehicles")
    assert " s; now stale: " in res.output  # the date's own time
    assert "computed together" not in res.output
    res = runner.invoke(cli, ["--data-dir", str(copy), "analyze"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert len(lines) == DAYS - 1
    # computed in one pass: each line says its time is that of the pass's dates
    assert all(line.endswith(f" s for the {DAYS - 1} dates computed together") for line in lines)
    res = runner.invoke(cli, ["--data-dir", str(copy), "analyze"])
    assert res.output == "all dates are up to date\n"


def test_cli_analyze_errors_are_one_line(lake: Path) -> None:
    runner = CliRunner()
    data = str(lake.parent)
    res = runner.invoke(cli, ["--data-dir", data, "analyze", "--date", "2020-02-02"])
    assert res.exit_code == 1
    assert res.output.startswith("Error: no telemetry for 2020-02-02")
    res = runner.invoke(cli, ["--data-dir", data, "analyze", "--policy", "oem-9y"])
    assert res.exit_code == 1
    assert res.output == (
        "Error: unknown warranty policy 'oem-9y' (no such preset or file); valid presets: "
        + ", ".join(bms.warranty_presets())
        + "\n"
    )


def test_catch_up_in_one_pass_equals_computing_each_date_alone(lake: Path, tmp_path: Path) -> None:
    """``run_pending`` computes the four dates in one pass of the SQL jobs; computing
    them one by one from the carried state gives byte-identical tables."""
    copy = tmp_path / "data"
    shutil.copytree(lake.parent, copy)
    shutil.rmtree(copy / "state")
    shutil.rmtree(copy / "lake" / "metrics")
    days = bms.pending_dates(copy / "lake")
    assert len(days) == DAYS
    for day in days:
        bms.run_analytics(copy / "lake", day)
    assert _metric_bytes(copy / "lake") == _metric_bytes(lake)


@pytest.mark.parametrize("workers", [1, 3])
def test_vehicle_by_vehicle_pass_equals_one_pass_over_the_fleet(
    lake: Path, tmp_path: Path, workers: int
) -> None:
    """With a tiny ``chunk_readings`` every vehicle gets its own SQL pass (bounded memory
    for big fleets), run one after the other or side by side on several connections;
    the tables are byte-identical to one pass over all vehicles."""
    copy = tmp_path / "data"
    shutil.copytree(lake.parent, copy)
    shutil.rmtree(copy / "state")
    shutil.rmtree(copy / "lake" / "metrics")
    params = bms.AnalyticsParams(chunk_readings=1, chunk_workers=workers)
    for day in bms.pending_dates(copy / "lake"):
        bms.run_analytics(copy / "lake", day, params=params)
    assert _metric_bytes(copy / "lake") == _metric_bytes(lake)


def test_rows_in_any_order_give_the_tables_of_rows_in_vin_ts_order(
    lake: Path, tmp_path: Path
) -> None:
    """A day's readings in one file, shuffled (sorted once before the pass), in (vin,
    ts, seq) order (read as they come, as from a compacted file) or with each vehicle's
    rows together but the vehicles in reverse order: byte-identical tables."""
    outputs = []
    for layout in ("shuffled", "sorted", "vins_reversed"):
        root = tmp_path / layout / "data" / "lake"
        shutil.copytree(lake / "registry", root / "registry")
        for part in sorted((lake / "telemetry").glob("date=*/fleet=*")):
            t = pa.concat_tables(pq.read_table(p) for p in sorted(part.glob("*.parquet")))
            vins = np.unique(t["vin"].to_numpy(zero_copy_only=False), return_inverse=True)[1]
            key = -vins if layout == "vins_reversed" else vins
            order = np.lexsort((t["seq"].to_numpy(), t["ts"].to_numpy(), key))
            if layout == "shuffled":
                order = np.random.default_rng(3).permutation(t.num_rows)
            dest = root / part.relative_to(lake) / "day.parquet"
            dest.parent.mkdir(parents=True)
            pq.write_table(t.take(pa.array(order)), dest)
        for day in bms.pending_dates(root):
            bms.run_analytics(root, day)
        outputs.append(_metric_bytes(root))
    assert outputs[0] == outputs[1] == outputs[2]
    vd = bms.read_metrics(tmp_path / "sorted" / "data" / "lake", "vehicle_day")
    assert vd.equals(bms.read_metrics(lake, "vehicle_day"))


def test_over_temperature_events_need_the_pack_not_one_sensor(tmp_path: Path) -> None:
    """A pack heated throughout counts one event per excursion (two drives a day); one
    of eight sensors reading far above the others (a failing or misplaced sensor) counts
    none, so it cannot void a warranty for the driver's use."""
    lake = tmp_path / "lake"
    hot = SynthVehicle("FBMAAAAA0TS000011", drive_temps_c=(64, 62, 61, 60, 59, 58, 57, 56))
    faulty = SynthVehicle("FBMAAAAA0TS000012", drive_temps_c=(75, 30, 30, 30, 30, 30, 30, 30))
    write_fleet(lake, [hot, faulty], START, 1, cadence_s=300)
    bms.run_pending(lake)
    vd = bms.read_metrics(lake, "vehicle_day", [START])
    events = dict(zip(vd["vin"].to_pylist(), vd["over_temp_events"].to_pylist(), strict=True))
    assert events == {hot.vin: 2, faulty.vin: 0}
    assert max(vd["temp_c_max"].to_pylist()) == 75.0  # the reading itself is kept
    # ... but the pack's temperature, for its hours per band, is the other sensors'
    row = {r["vin"]: r for r in vd.to_pylist()}
    assert row[hot.vin]["pack_temp_c_max"] == 64.0
    assert row[hot.vin]["hours_temp_above_45c"] == pytest.approx(2.0)
    assert row[faulty.vin]["pack_temp_c_max"] == 30.0
    assert row[faulty.vin]["hours_temp_above_45c"] == 0.0
    assert row[faulty.vin]["hours_temp_25_35c"] == pytest.approx(
        row[hot.vin]["hours_temp_25_35c"] + 2.0
    )


@pytest.mark.parametrize("n_temps", [None, 4, 16])
def test_the_packs_temperature_counts_the_sensors_the_reading_sent(
    tmp_path: Path, n_temps: int | None
) -> None:
    """The others' mean comes from the reading's own sensors (eight here), not from the
    registry's n_temps: absent (optional), or wrong (four: the hottest sensor counted as
    the pack's; sixteen: a mean of 33 degC that no sensor read)."""
    lake = tmp_path / "lake"
    faulty = SynthVehicle("FBMAAAAA0TS000012", drive_temps_c=(75, 30, 30, 30, 30, 30, 30, 30))
    write_fleet(lake, [faulty], START, 1, cadence_s=300)
    path = lake / "registry" / "vehicles.parquet"
    registry = pq.read_table(path).drop_columns(["n_temps"])
    if n_temps is not None:
        registry = registry.append_column("n_temps", pa.array([n_temps], pa.int16()))
    pq.write_table(registry, path)
    bms.run_pending(lake)
    (row,) = bms.read_metrics(lake, "vehicle_day", [START]).to_pylist()
    assert row["temp_c_max"] == 75.0
    assert row["pack_temp_c_max"] == 30.0
    assert row["hours_temp_above_45c"] == 0.0


def test_a_two_sensor_pack_is_its_hottest_sensor_whatever_the_registry_says(
    tmp_path: Path,
) -> None:
    """Two sensors, 70 and 40 degC while driving: no third to tell which one is wrong, so
    the hottest counts (a registry claiming three made it 47.5 degC, a value no sensor
    read)."""
    lake = tmp_path / "lake"
    pack = SynthVehicle("FBMAAAAA0TS000013", drive_temps_c=(70, 40))
    write_fleet(lake, [pack], START, 1, cadence_s=300)
    path = lake / "registry" / "vehicles.parquet"
    registry = pq.read_table(path)
    i = registry.column_names.index("n_temps")
    pq.write_table(registry.set_column(i, "n_temps", pa.array([3], pa.int16())), path)
    bms.run_pending(lake)
    (row,) = bms.read_metrics(lake, "vehicle_day", [START]).to_pylist()
    assert row["pack_temp_c_max"] == 70.0


@pytest.mark.parametrize(
    "drive_temps_c",
    [
        (75, *([30] * 5)),
        (75, *([30] * 6)),
        (75, *([30] * 7)),
        (75, 6553.5, *([30] * 6)),
    ],
    ids=["5 others", "6 others", "7 others", "a sentinel beside"],
)
def test_one_sensor_far_above_others_all_alike_is_not_the_pack(
    tmp_path: Path, drive_temps_c: tuple[float, ...]
) -> None:
    """One sensor at 75 degC, the others all at 30: the others' mean from the stored
    float32 mean falls a rounding error below 30 for six or seven sensors; it is still
    the pack's temperature (it was 75 then: two hours above 45 degC). Beside a sensor
    sending the 6553.5 degC 'no value' sentinel (stored as null, quality bit 16), the
    pack is the valid others' mean, not the outlier (the reading's flag used to make
    the hottest sensor count)."""
    lake = tmp_path / "lake"
    faulty = SynthVehicle("FBMAAAAA0TS000012", drive_temps_c=drive_temps_c)
    write_fleet(lake, [faulty], START, 1, cadence_s=300)
    bms.run_pending(lake)
    (row,) = bms.read_metrics(lake, "vehicle_day", [START]).to_pylist()
    assert row["temp_c_max"] == 75.0
    assert row["pack_temp_c_max"] == 30.0
    assert row["hours_temp_above_45c"] == 0.0


def test_one_failed_temperature_sensor_does_not_move_the_normalised_resistance(
    tmp_path: Path,
) -> None:
    """The same pack at 25 degC with one of four sensors stuck at -5 degC: the
    resistance at the reference temperature is normalised with the median of the
    sensors, so it equals the healthy pack's (with their mean, 17.5 degC, it read 16 %
    low, and a vehicle's growth trend stepped down the day its sensor failed)."""
    lake = tmp_path / "lake"
    healthy = SynthVehicle("FBMAAAAA0TS000011", drive_temps_c=(25, 25, 25, 25))
    stuck = SynthVehicle("FBMAAAAA0TS000012", drive_temps_c=(25, 25, 25, -5))
    write_fleet(lake, [healthy, stuck], START, 1, cadence_s=300)
    bms.run_pending(lake)
    res = bms.read_metrics(lake, "resistance", [START])
    r25 = dict(zip(res["vin"].to_pylist(), res["resistance_mohm_25c"].to_pylist(), strict=True))
    temp = dict(zip(res["vin"].to_pylist(), res["temp_c"].to_pylist(), strict=True))
    assert r25[stuck.vin] == pytest.approx(r25[healthy.vin], rel=1e-9)
    assert temp == {healthy.vin: 25.0, stuck.vin: 25.0}


def test_a_new_packs_smaller_cell_is_learnt_within_a_few_pairs(tmp_path: Path) -> None:
    """A series pack holds what its smallest cell holds. A new NMC pack with one cell 4 %
    smaller than the others: each pair measures every cell's share, and the pack's
    estimates must come down to the small cell's capacity within a few pairs, not carry
    most of the 'all cells equal' start for tens of them (an EWMA of weight 0.1 from
    ratio 1 left its first ten estimates 2.3 % above on average; the running mean with
    three pairs' worth of that start, 1.6 %)."""
    from tests.bms.test_analytics_synth import write_registry

    v = SynthVehicle("FBMAAAAA0TS000021", capacity_ah=95.0, small_cell=(4, 0.96))
    root = tmp_path / "lake"
    write_fleet(root, [v], START, 6, cadence_s=300)
    write_registry(root, [v])
    bms.run_pending(root)
    cap = bms.read_metrics(root, "capacity")
    rel = np.asarray(cap.sort_by("end_ts")["capacity_ah"].to_pylist()) / (0.96 * 95.0) - 1.0
    assert rel.size >= 10
    # never below the truth (no noise here), falling pair by pair
    assert np.all(rel > 0), rel
    assert np.all(np.diff(rel) < 0), rel
    assert rel[:10].mean() < 0.45 * 0.04, rel


def test_a_short_drive_after_a_charge_leaves_the_lfp_branch_uncertain(tmp_path: Path) -> None:
    """The LFP hysteresis flips over a few % of capacity moved, not at once. A car
    charged to 88 %, driven 1 % and parked rests near its charge branch: read as the
    discharge branch (+10 mV), 87 % on the plateau read 95.3 % with a sigma of 0.3 %,
    and its pairs gave 80 Ah for a 90 Ah pack, 4 sigma off (a simulated taxi's
    estimates of SoH 15-18 % came from such rests). Its branch now counts as uncertain,
    so the rest gives no point; the rests after the long drive and the long charge
    still do."""
    from tests.bms.test_analytics_synth import write_registry

    v = SynthVehicle(
        "FBMAAAAA0TS000041",
        chemistry="lfp",
        capacity_ah=90.0,
        # 100 -> 20 %, rest, 20 -> 88 %, 1 % drive, rest, 87 -> 100 %
        plan=((7.0, 8.6, -0.5), (12.0, 15.4, 0.2), (15.5, 15.55, -0.2), (20.0, 20.65, 0.2)),
        hysteresis_efold=1.0 / 30.0,  # the simulator's rate
    )
    root = tmp_path / "lake"
    write_fleet(root, [v], START, 4, cadence_s=60)
    write_registry(root, [v])
    bms.run_pending(root)
    cap = bms.read_metrics(root, "capacity")
    rested = cap.filter(
        pc.and_(pc.equal(cap["start_anchor"], "rest"), pc.equal(cap["end_anchor"], "rest"))
    )
    assert rested.num_rows >= 3
    est = np.asarray(cap["capacity_ah"].to_pylist())
    sigma = np.asarray(cap["rel_sigma"].to_pylist()) * est
    assert np.all(np.abs(est - v.capacity_ah) <= 3.0 * sigma), est
    np.testing.assert_allclose(rested["capacity_ah"].to_pylist(), v.capacity_ah, rtol=0.02)


def test_a_data_gap_over_a_charge_leaves_the_lfp_branch_uncertain(tmp_path: Path) -> None:
    """Telemetry lost from the morning drive until just after a charge and a 1 % drive
    had begun: the readings on both sides of the gap are driving, so no turn of the
    current is seen. The charge moved since the last turn then seemed to be the whole
    morning drive and the rest after the 1 % drive counted as on the discharge branch
    (87 % read 95.3 %, its pairs 80 Ah for a 90 Ah pack); a gap that breaks the charge
    count restarts it, so that rest's branch is uncertain and it gives no point."""
    from tests.bms.test_analytics_synth import write_registry

    v = SynthVehicle(
        "FBMAAAAA0TS000042",
        chemistry="lfp",
        capacity_ah=90.0,
        # 100 -> 20 %, charge to 88 %, 1 % drive, rest, drive to 15 %, charge to 100 %
        plan=(
            (7.0, 8.6, -0.5),
            (9.0, 12.4, 0.2),
            (12.5, 12.55, -0.2),
            (16.0, 17.44, -0.5),
            (20.0, 23.4, 0.25),
        ),
        hysteresis_efold=1.0 / 30.0,
    )
    root = tmp_path / "lake"
    soc = 1.0
    for i in range(2):
        day = START + timedelta(days=i)
        table, soc = vehicle_day_table(v, day, soc, cadence_s=60, fleet="demo", seq0=i * 10**6)
        if i == 0:  # no data from 08:30 to 12:31
            minute = np.arange(table.num_rows)
            table = table.filter(pa.array((minute < 8.5 * 60) | (minute > 12 * 60 + 31)))
        bms.write_telemetry(table, root, file_prefix="synth")
    write_registry(root, [v])
    bms.run_pending(root)
    cap = bms.read_metrics(root, "capacity")
    assert cap.num_rows >= 2
    est = np.asarray(cap["capacity_ah"].to_pylist())
    sigma = np.asarray(cap["rel_sigma"].to_pylist()) * est
    assert np.all(np.abs(est - v.capacity_ah) <= 3.0 * sigma), est


def test_the_branch_before_a_rest_is_unknown_until_a_turn_or_a_restart_is_seen() -> None:
    """The charge moved before each rest (bms._analytics._branch_moves): unknown (None,
    the branch anywhere within half a gap) before the first turn of the current, after a
    gap that broke the charge count into a mode of neither direction, and for a carry
    without the count; counted from the turn or from a gap into a drive otherwise. An
    unknown count read as 0 put the branch on the opposite side."""
    from bms._analytics import _branch_moves

    def rest(run_id: int, start_ms: int, q_uah: int) -> dict[str, object]:
        return {
            "run_id": run_id,
            "start_ms": start_ms,
            "mode_before_rest": "drive",
            "start_q_cum_uah": q_uah,
        }

    base = 10**9
    runs = [rest(1, 100, -5_000_000), rest(3, 300, -9_000_000), rest(5, 500, -12_000_000)]
    turns = [
        (150, -1, False, -6_000_000),  # a drive begins
        (400, 0, True, -10_000_000),  # a gap, then idle: unknown
    ]
    (direction, since), moved = _branch_moves(None, runs, turns, base)
    assert moved == {1: None, 3: 3_000_000, 5: None}
    assert (direction, since) == (0, None)
    # a gap into a drive restarts the count there; a rest continuing from the day before
    # takes the carried value, none in a carry from before it was kept
    turns = [(150, -1, True, -6_000_000)]
    _, moved = _branch_moves({"rest_branch_moved_uah": None}, [rest(0, 0, 0), *runs[1:]], turns, 0)
    assert moved == {0: None, 3: 3_000_000, 5: 6_000_000}


def test_registry_row_without_capacity_takes_the_default_capacity(tmp_path: Path) -> None:
    """capacity_ah is nullable in the registry: the run goes on with
    analytics.default_capacity_ah (as readings.sql does), ageing stress included."""
    root = tmp_path / "lake"
    write_fleet(root, [NMC], START, 2, cadence_s=300)
    from tests.bms.test_analytics_synth import write_registry

    write_registry(root, [NMC])
    path = root / "registry" / "vehicles.parquet"
    reg = pq.read_table(path)
    i = reg.schema.get_field_index("capacity_ah")
    pq.write_table(reg.set_column(i, "capacity_ah", pa.nulls(1, pa.float64())), path)
    bms.run_pending(root)
    war = bms.read_metrics(root, "warranty")
    assert war.num_rows == 2
    for row in war.to_pylist():
        since = json.loads(row["evidence"])["use_since_estimate"]
        assert since is None or since["calendar_stress"] > 0.0


def test_resistance_steps_with_a_drained_cell_are_left_out(tmp_path: Path) -> None:
    """The reference SoC band holds for every cell: a leaking cell that has drained
    below the OCV of 20 % SoC (its resistance rises as it empties) keeps the pack's
    steps out of the resistance table, while the same pack a year younger has them."""
    young = SynthVehicle("FBMAAAAA0TS000011", weak_cell=2, in_service=START - timedelta(days=2))
    # 2 mV a day for 400 days: the leaking cell rests ~0.8 V low, below OCV(20 %).
    old = SynthVehicle("FBMAAAAA0TS000012", weak_cell=2, in_service=START - timedelta(days=400))
    root = tmp_path / "data" / "lake"
    write_fleet(root, [young, old], START, 2, cadence_s=30)
    bms.run_pending(root)
    low_mv = 1000.0 * float(bms.ocv_v_from_soc_pct(20.0, "nmc"))
    table, _ = vehicle_day_table(old, START, 0.9, cadence_s=30, fleet="demo", seq0=0)
    cells = np.asarray(table["cell_mv"].to_pylist())
    assert cells[:, old.weak_cell].max() < low_mv < cells[:, 0].max()  # the premise
    res = bms.read_metrics(root, "resistance")
    assert young.vin in res["vin"].to_pylist()
    assert old.vin not in res["vin"].to_pylist()


def test_an_erratic_sensor_of_two_does_not_move_the_normalised_resistance(
    tmp_path: Path,
) -> None:
    """Of two sensors, one erratic (noise of 20 degC a reading, the simulator's failed
    sensor): the median of two is their mean, which read the step temperature up to
    tens of degrees off; the sensor that jumped since the reading before the step is
    left out, so the normalised resistance is the healthy pack's."""
    lake = tmp_path / "lake"
    healthy = SynthVehicle("FBMAAAAA0TS000011", cell_r_mohm=1.5)
    erratic = SynthVehicle("FBMAAAAA0TS000012", cell_r_mohm=1.5, erratic_sensor_c=20.0)
    write_fleet(lake, [healthy, erratic], START, 1, cadence_s=30)
    bms.run_pending(lake)
    res = bms.read_metrics(lake, "resistance", [START])
    r25 = dict(zip(res["vin"].to_pylist(), res["resistance_mohm_25c"].to_pylist(), strict=True))
    temp = dict(zip(res["vin"].to_pylist(), res["temp_c"].to_pylist(), strict=True))
    assert temp == {healthy.vin: 25.0, erratic.vin: 25.0}
    assert r25[erratic.vin] == pytest.approx(r25[healthy.vin], rel=1e-6)


@pytest.mark.parametrize("chemistry", ["nmc", "lfp"])
def test_calendar_stress_integrates_temperature_reading_by_reading(
    tmp_path: Path, chemistry: str
) -> None:
    """Two packs used alike, one at 25 and one at 34 degC (the same 25-35 degC band of
    vehicle_day): the calendar stress of their days differs by the laws' Arrhenius
    factor, which the band edges alone (both charged at 35 degC) would not show."""
    from bms._warranty import CALENDAR_REF_TEMP_C, calendar_arrhenius_k

    mild = SynthVehicle("FBMAAAAA0TS000021", chemistry=chemistry, temp_c=25.0)
    warm = SynthVehicle("FBMAAAAA0TS000022", chemistry=chemistry, temp_c=34.0)
    root = tmp_path / "lake"
    write_fleet(root, [mild, warm], START, 3, cadence_s=300)
    bms.run_pending(root)
    war = bms.read_metrics(root, "warranty", [START + timedelta(days=2)])
    stress = {
        row["vin"]: json.loads(row["evidence"])["use_since_estimate"]["calendar_stress"]
        for row in war.to_pylist()
    }
    b_k = calendar_arrhenius_k(chemistry)
    arrhenius = np.exp(b_k * (1 / (CALENDAR_REF_TEMP_C + 273.15) - 1 / (34.0 + 273.15)))
    assert arrhenius > 1.4  # the premise: 9 K matter
    assert stress[warm.vin] / stress[mild.vin] == pytest.approx(arrhenius, rel=0.01)


def test_a_vehicle_without_an_estimate_is_told_what_its_use_lacked(tmp_path: Path) -> None:
    """An LFP car that lives on the flat top of its OCV curve (BMS SoC 90-100 %, as one
    plugged in whenever parked) never gives a capacity estimate: its verdict says so,
    with the SoC range it was seen in and the charge that would give one; a car used
    over the whole range gets estimates and no such clause."""
    top = SynthVehicle(
        "FBMAAAAA0TS000031", chemistry="lfp", plan=((7.0, 8.0, -0.1), (17.0, 18.0, 0.1))
    )
    full = SynthVehicle("FBMAAAAA0TS000032", chemistry="lfp")
    root = tmp_path / "lake"
    write_fleet(root, [top, full], START, 2, cadence_s=300)
    bms.run_pending(root)
    war = bms.read_metrics(root, "warranty", [START + timedelta(days=1)])
    rows = {r["vin"]: r for r in war.to_pylist()}
    lacked = rows[top.vin]
    assert lacked["status"] == "insufficient_data"
    assert lacked["reason"].startswith("no capacity estimate yet; since 2026-01-01: ")
    assert (
        "BMS SoC 90-100 %: a rest reads an LFP pack's SoC only at 0-26 % and 96-100 %"
        in (lacked["reason"])
    )
    assert (
        "a charge from 76 % or below to 96 % or more, then a rest, would give one"
        in (lacked["reason"])
    )
    since = json.loads(lacked["evidence"])["soc_since_estimate"]
    assert since["since"] == "2026-01-01"
    assert since["bms_soc_min_pct"] == pytest.approx(90.0, abs=0.5)
    assert since["bms_soc_max_pct"] == pytest.approx(100.0, abs=0.5)
    used = rows[full.vin]
    assert used["status"] == "ok"
    assert "BMS SoC" not in used["reason"]
    # the day of an estimate counts after it: that day's range
    since = json.loads(used["evidence"])["soc_since_estimate"]
    assert since["since"] == "2026-01-02"
    assert since["bms_soc_min_pct"] < 26.0
    assert since["bms_soc_max_pct"] > 96.0


def test_a_cell_read_outside_the_plausible_range_gives_no_capacity_estimate(
    tmp_path: Path,
) -> None:
    """A cell voltage outside 1,500..4,500 mV (kept and flagged at ingest: a broken sense
    wire, a cell a short has drained, an int16 wrapped) is no state of charge: the rests
    and charges it is read in give no SoC point, so no capacity estimate (the mean of the
    cells' clamped SoCs made one: a simulated soft-shorted cell read -32 V, then +32 V,
    and the pack's SoH came out at 0.3 %, then -4 % with a claim). The same vehicles
    with sound cells are estimated."""
    sound = [NMC, LFP]
    broken = [
        dataclasses.replace(NMC, vin="FBMAAAAA0TS000011", bad_cell_mv=(2, 5_200)),
        dataclasses.replace(LFP, vin="FBMAAAAA0TS000012", bad_cell_mv=(6, 0)),
    ]
    root = tmp_path / "lake"
    write_fleet(root, sound + broken, START, DAYS, cadence_s=300)
    bms.run_pending(root)
    cap = bms.read_metrics(root, "capacity")
    counts = Counter(cap["vin"].to_pylist())
    assert all(counts[v.vin] >= 3 for v in sound), counts
    assert all(counts[v.vin] == 0 for v in broken), counts
    soh = bms.read_metrics(root, "vehicle_soh", [START + timedelta(days=DAYS - 1)])
    n_of = dict(zip(soh["vin"].to_pylist(), soh["n_estimates"].to_pylist(), strict=True))
    assert all(n_of[v.vin] == 0 for v in broken), n_of
    # and the verdict says why, naming the cell
    war = bms.read_metrics(root, "warranty", [START + timedelta(days=DAYS - 1)])
    why = dict(zip(war["vin"].to_pylist(), war["reason"].to_pylist(), strict=True))
    for v in broken:
        assert v.bad_cell_mv is not None
        assert f"cell {v.bad_cell_mv[0]} (0-based) read outside 1,500-4,500 mV" in why[v.vin]
    assert all("outside 1,500" not in why[v.vin] for v in sound)
