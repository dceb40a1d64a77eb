"""The SoC-swing cell feature and its rule: a fast-fading cell of a simulated pack is
found by how much wider it swings in state of charge than its neighbours at rest."""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bms
import sim
from bms._anomaly_rules import RuleLimits, evaluate_rules
from bms._features import (
    FEATURES_SCHEMA,
    _telemetry_job,
    cell_swing,
    ocv_lookup_tables,
    swing_day,
    swing_from_sums,
)

FLEET = "swing"
START = date(2026, 3, 2)
DAYS = 32
FADE = sim.FaultSpec("fast_fade", cell=7, sensor=-1, onset_day=15, ramp_days=10, severity=0.25)


def _sums(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> dict[str, float]:
    return {
        "n": float(len(x)),
        "w": float(w.sum()),
        "wx": float((w * x).sum()),
        "wxx": float((w * x * x).sum()),
        "wy": float((w * y).sum()),
        "wxy": float((w * x * y).sum()),
    }


def test_swing_is_the_slope_of_the_cell_soc_offset_against_the_pack_soc() -> None:
    """A cell with 20 % less capacity, level with its pack when full: its SoC offset is
    -0.25 (100 - s) (it moves 1/0.8 = 1.25 times as far), a slope of 25 % per 100 %."""
    s = np.array([30.0, 45.0, 60.0, 80.0, 95.0])
    w = np.array([1.0, 2.0, 1.0, 3.0, 1.0])
    rows = [
        {"vin": "A", "cell": 0, **_sums(s, np.zeros_like(s), w)},
        {"vin": "A", "cell": 1, **_sums(s, -0.25 * (100.0 - s), w)},
        {"vin": "A", "cell": 2, **_sums(s, 1.5 + 0.0 * s, w)},  # offset only: no swing
        # the pack sat at one SoC all window: no slope can be read
        {"vin": "B", "cell": 0, **_sums(np.full(5, 60.0), np.arange(5.0), w)},
    ]
    for r in rows:
        r["days"] = 7
    rows.append({"vin": "C", "cell": 0, **_sums(s, -0.25 * (100.0 - s), w), "days": 6})
    out = swing_from_sums(pa.Table.from_pylist(rows), min_soc_sd_pct=1.0, min_days=7).to_pylist()
    assert out[0]["swing_pct"] == pytest.approx(0.0, abs=1e-9)
    assert out[1]["swing_pct"] == pytest.approx(25.0)
    assert out[2]["swing_pct"] == pytest.approx(0.0, abs=1e-9)
    # the imbalance is the weighted mean offset, whether or not a slope can be read
    assert out[2]["soc_offset_pct"] == pytest.approx(1.5)
    assert out[1]["soc_offset_pct"] == pytest.approx(-0.25 * (100.0 - (w * s).sum() / w.sum()))
    assert out[3]["soc_offset_pct"] == pytest.approx(17 / 8)  # weighted mean of 0..4
    assert out[3]["swing_pct"] is None
    assert out[3]["swing_soc_sd_pct"] == pytest.approx(0.0, abs=1e-9)
    assert out[4]["swing_pct"] is None  # a vehicle's first days: too few to judge


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two NMC cars of 14 cells, 32 days; the first one's cell 7 fades from day 15."""
    spec = sim.FleetSpec(
        vehicles=2,
        days=DAYS,
        start=START,
        fleet=FLEET,
        seed=11,
        chemistry="nmc",
        vehicle_class="car",
        cells=14,
        cadence_s=300,
        idle_cadence_s=1800,
        fault_rate=0.0,
    )
    fleet = sim.FleetSimulator(spec, faults={0: [FADE]})
    root = tmp_path_factory.mktemp("swing") / "lake"
    bms.write_parquet_atomic(fleet.registry_table(), root / "registry" / "vehicles.parquet")
    for _, outputs in fleet.run():
        for out in outputs:
            table = sim.telemetry_of([out], FLEET)
            bms.write_telemetry(table, root, file_prefix=f"t-{out.vin}")
    return root


def _swing(
    lake: Path,
    day: date,
    cache: dict[tuple[str, date], pa.Table] | None,
    store: Path | None = None,
) -> pa.Table:
    reg = pq.read_table(lake / "registry" / "vehicles.parquet")
    vehicles = reg.select(["vin", "chemistry", "capacity_ah"])
    return cell_swing(
        lake,
        day,
        FLEET,
        {day - timedelta(days=k): vehicles for k in range(14)},
        window_days=14,
        min_soc_sd_pct=0.2,
        min_days=7,
        rest_c_rate=0.02,
        default_capacity_ah=100.0,
        cache=cache,
        store=store,
    )


def test_soc_offsets_come_from_their_own_half_of_the_window(lake: Path) -> None:
    """``soc_offset_pct`` is the last 7 days' weighted mean offset, ``soc_offset_early_pct``
    the 7 days before (the deviation_growth rule reads their difference as a drift)."""
    reg = pq.read_table(lake / "registry" / "vehicles.parquet")
    vehicles = reg.select(["vin", "chemistry", "capacity_ah"])
    last = START + timedelta(days=DAYS - 1)

    def offsets(first: date) -> dict[tuple[str, int], float]:
        days = [
            swing_day(
                lake,
                first + timedelta(days=k),
                FLEET,
                vehicles,
                rest_c_rate=0.02,
                default_capacity_ah=100.0,
            )
            for k in range(7)
        ]
        sums = (
            pa.concat_tables(days)
            .group_by(["vin", "cell"], use_threads=False)
            .aggregate([(c, "sum") for c in ("n", "w", "wx", "wxx", "wy", "wxy")])
        )
        sums = sums.rename_columns([c.removesuffix("_sum") for c in sums.column_names])
        fit = swing_from_sums(sums, min_soc_sd_pct=0.2).to_pylist()
        return {(r["vin"], r["cell"]): r["soc_offset_pct"] for r in fit}

    recent, early = offsets(last - timedelta(days=6)), offsets(last - timedelta(days=13))
    rows = _swing(lake, last, None).to_pylist()
    assert len(rows) == len(recent) == 28
    for r in rows:
        assert r["soc_offset_pct"] == pytest.approx(recent[(r["vin"], r["cell"])])
        assert r["soc_offset_early_pct"] == pytest.approx(early[(r["vin"], r["cell"])])
    # the fading cell drifts from its pack between the two weeks; its offset is not flat
    faulty = min(r["vin"] for r in rows)
    fade = next(r for r in rows if (r["vin"], r["cell"]) == (faulty, 7))
    assert fade["soc_offset_pct"] != pytest.approx(fade["soc_offset_early_pct"], abs=0.05)


def test_fast_fading_cell_swings_wider_than_its_neighbours(lake: Path) -> None:
    vins = sorted({str(v) for v in pq.read_table(lake / "registry").column("vin")})
    last = START + timedelta(days=DAYS - 1)
    rows = _swing(lake, last, None).to_pylist()
    swing = {(r["vin"], r["cell"]): r["swing_pct"] for r in rows}
    swing_early = {(r["vin"], r["cell"]): r["swing_early_pct"] for r in rows}
    faulty, healthy = vins[0], vins[1]
    # 25 % less capacity: the cell moves 1/0.75 = 1.33 times as far; balancing while
    # charging and the narrow SoC window at rest leave a good part of that visible
    assert swing[(faulty, 7)] > 10.0
    others = [swing[(faulty, c)] for c in range(14) if c != 7]
    others += [swing[(healthy, c)] for c in range(14)]
    assert np.nanmax(np.abs(others)) < 3.0
    # the older half of the last window (days 18-24) catches the fade growing
    assert swing[(faulty, 7)] > swing_early[(faulty, 7)] > 3.0
    # before the fade (days 1-14) every cell swings with its pack, in both halves
    early = _swing(lake, START + timedelta(days=14), None).to_pylist()
    values = [r[c] for r in early for c in ("swing_pct", "swing_early_pct")]
    assert max(abs(v) for v in values if not np.isnan(v)) < 3.0


def test_swing_cache_gives_the_same_result_as_reading_the_window(lake: Path) -> None:
    cache: dict[tuple[str, date], pa.Table] = {}
    last = START + timedelta(days=DAYS - 1)
    for k in range(3, 0, -1):
        _swing(lake, last - timedelta(days=k), cache)
    assert _swing(lake, last, cache).equals(_swing(lake, last, None))
    assert min(d for _, d in cache) == last - timedelta(days=13)  # older days dropped


def test_capacity_rule_names_the_cell_only_far_out_of_its_pack() -> None:
    def row(vin: str, swing_z: float, rel_pct: float) -> dict[str, object]:
        base: dict[str, object] = {f.name: None for f in FEATURES_SCHEMA}
        base.update(
            vin=vin,
            chemistry="nmc",
            has_cell_data=True,
            window_days=14,
            swing_z=swing_z,
            swing_rel_pct=rel_pct,
            swing_cell=7,
        )
        return base

    limits = RuleLimits()
    features = pa.Table.from_pylist(
        [
            row("A", 30.0, 18.0),  # weak cell: flagged
            row("B", 30.0, 2.0),  # far out of a very even pack, but only 2 %: healthy
            row("C", 6.0, 12.0),  # 12 % in a pack whose fit scatters: not sure enough
            row("D", 40.0, 25.0),  # critical
        ],
        schema=FEATURES_SCHEMA,
    )
    hits = evaluate_rules(features, limits).to_pylist()
    assert [(h["vin"], h["rule"], h["cell"], h["severity"]) for h in hits] == [
        ("A", "cell_capacity", 7, "warning"),
        ("D", "cell_capacity", 7, "critical"),
    ]


def test_day_sums_kept_for_the_next_run_are_reused_until_the_telemetry_changes(
    lake: Path, tmp_path: Path
) -> None:
    """A nightly run fits a window of 14 days but adds one: the other 13 days' sums come
    from the store an earlier run (another process) left, not from their telemetry."""
    work = tmp_path / "lake"
    shutil.copytree(lake, work)
    store = tmp_path / "day_sums"
    last = START + timedelta(days=DAYS - 1)
    first = _swing(work, last - timedelta(days=1), None, store)
    kept = sorted(store.rglob("*.parquet"))
    assert len(kept) == 14
    stamps = {p: p.stat().st_mtime_ns for p in kept}
    # The next night: one new day computed, the 13 others read back, same result.
    assert _swing(work, last, None, store).equals(_swing(lake, last, None))
    kept_now = sorted(store.rglob("*.parquet"))
    assert len(kept_now) == 15
    assert {p: p.stat().st_mtime_ns for p in kept} == stamps
    assert first.equals(_swing(lake, last - timedelta(days=1), None))
    # Late data rewrites a day's telemetry: that day's sums are computed again (and sums
    # kept for days long gone are removed when a day is written).
    gone = store / "anomaly_swing_day" / "date=2025-01-01" / f"fleet={FLEET}.parquet"
    gone.parent.mkdir()
    shutil.copy(kept[0], gone)
    day = last - timedelta(days=5)
    part = bms.telemetry_dir(work, day, FLEET)
    files = sorted(part.glob("*.parquet"))
    table = pa.concat_tables(pq.read_table(f) for f in files)
    for f in files:
        f.unlink()
    bms.write_parquet_atomic(table, part / "rewritten.parquet")
    assert _swing(work, last, None, store).equals(_swing(work, last, None))
    rewritten = [p for p in kept if stamps[p] != p.stat().st_mtime_ns]
    assert [p.parent.name for p in rewritten] == [f"date={day.isoformat()}"]
    assert not gone.parent.exists()


def test_vehicle_groups_run_two_at_a_time_give_each_vehicle_its_own_sums(lake: Path) -> None:
    """The swing job adds floating-point sums, so it runs on one thread per connection;
    its vehicle groups then run two at a time on two connections. Each group's rows come
    back in VIN order, deterministic, with the sums of a run over every vehicle (to the
    last bits: how a group's rows are joined depends on its size)."""
    day = START + timedelta(days=DAYS - 1)
    files = bms.telemetry_files(lake, day)
    reg = pq.read_table(lake / "registry" / "vehicles.parquet")
    lut, bins = ocv_lookup_tables()
    tables = {
        "vehicles": reg.select(["vin", "chemistry", "capacity_ah"]),
        "ocv_lut": lut,
        "ocv_bins": bins,
    }
    variables = {"rest_c_rate": 0.02, "default_capacity_ah": 100.0}
    whole = _telemetry_job(files, "anomaly_swing_day.sql", tables, variables)
    runs = [
        _telemetry_job(files, "anomaly_swing_day.sql", tables, variables, group_readings=1)
        for _ in range(3)
    ]
    assert whole.num_rows == 2 * 14
    assert runs[0].equals(runs[1])
    assert runs[0].equals(runs[2])
    assert runs[0].select(["vin", "cell", "n"]).equals(whole.select(["vin", "cell", "n"]))
    for name in ("w", "wx", "wxx", "wy", "wxy"):
        np.testing.assert_allclose(
            runs[0][name].to_numpy(), whole[name].to_numpy(), rtol=1e-12, atol=1e-6
        )
