"""Speed of ``fleetbms simulate --to-lake`` against writing the same data without physics.

Runs the simulator for a fleet (default 40 cars x 21 days, 96 cells, 30 s cadence on the
road and on the charger, 10 min parked) into a temporary lake, then, in the same run,
the baseline: as many rows of random cell values (same cells per row, same number of
files, one per date) built with ``bms.telemetry_table`` and written with
``bms.write_telemetry``. Prints both times, their ratio (the cost of the physics on
top of the unavoidable write), readings/s, and the time extrapolated to the goal of
100 vehicles x 1 year at 30 s.

Usage: python benchmarks/simulate.py [--vehicles 40] [--days 21] [--cells 96]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import bms  # noqa: E402
import sim  # noqa: E402


def baseline(lake: Path, rows_per_file: list[int], n_cells: int, n_temps: int) -> float:
    """Write the same rows as random cell values, one telemetry file per date."""
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    day0 = date(2030, 1, 1)
    for i, n in enumerate(rows_per_file):
        epoch_day = int((day0 + timedelta(days=i)).toordinal() - date(1970, 1, 1).toordinal())
        ts = epoch_day * 86_400_000 + np.sort(rng.integers(0, 86_400_000, n))
        table = bms.telemetry_table(
            fleet="base",
            vin=np.array([f"FBMBASE000TS{k % 100:05d}" for k in range(n)], dtype=object),
            seq=np.arange(1, n + 1),
            ts_ms=ts,
            current_a=rng.normal(0, 30, n),
            voltage_v=rng.normal(355, 5, n),
            soc_pct=rng.uniform(10, 90, n),
            soh_pct=rng.uniform(90, 100, n),
            cycle_count=rng.integers(0, 500, n),
            odometer_km=rng.uniform(0, 5e4, n),
            mode=np.full(n, "drive", dtype=object),
            cell_mv=rng.integers(3300, 4100, n * n_cells, dtype=np.int16),
            cell_offsets=np.arange(n + 1) * n_cells,
            temp_c=rng.normal(30, 3, n * n_temps),
            temp_offsets=np.arange(n + 1) * n_temps,
            received_at_ms=ts + 1500,
            worker="base",
        )
        bms.write_telemetry(table, lake, file_prefix="base")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=40)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--cells", type=int, default=96)
    parser.add_argument("--cadence-s", type=int, default=30)
    args = parser.parse_args()

    spec = sim.FleetSpec(
        vehicles=args.vehicles,
        days=args.days,
        start=date(2026, 4, 1),
        fleet="bench",
        seed=1,
        cells=None if args.cells == 96 else args.cells,
        cadence_s=args.cadence_s,
    )
    work = Path(tempfile.mkdtemp(prefix="fleetbms-bench-sim-"))
    try:
        summary = sim.simulate_to_lake(spec, work / "sim")
        files = bms.telemetry_files(work / "sim" / "lake")
        rows = [int(bms.read_telemetry([f]).num_rows) for f in files]
        n_temps = max(2, -(-args.cells // 12))
        t_base = baseline(work / "base" / "lake", rows, args.cells, n_temps)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    t_sim = summary.seconds
    rate = summary.readings / t_sim
    per_vehicle_day = summary.readings / (args.vehicles * args.days)
    goal_readings = 100 * 365 * per_vehicle_day
    print(
        f"fleet: {args.vehicles} vehicles x {args.days} days x {args.cells} cells, "
        f"{args.cadence_s} s cadence: {summary.readings:,} readings "
        f"({per_vehicle_day:.0f} per vehicle-day), {summary.files} files"
    )
    print(f"simulate --to-lake: {t_sim:.2f} s, {rate:,.0f} readings/s")
    print(f"baseline (random values, same rows and files, bms.write_telemetry): {t_base:.2f} s")
    print(f"ratio simulate / baseline: {t_sim / t_base:.2f}")
    goal_min = goal_readings / rate / 60
    print(
        f"extrapolated 100 vehicles x 1 year x 30 s: {goal_readings / 1e6:.1f} M readings, "
        f"{goal_min:.1f} min (writing alone: {goal_min * t_base / t_sim:.1f} min)"
    )


if __name__ == "__main__":
    main()
