"""Accuracy of ``fleetbms analyze`` against the simulator's ground truth, full size.

The same fleet and scoring as ``tests/bms/test_analytics_accuracy.py`` (50 cars, NMC and
LFP, hot and mild, two years, one in four with a fault), but with the cars' real packs
(96 cells) and a 30 s cadence. Prints the figures of issue 6 (SoH MAE, 90 % interval
coverage, resistance growth error, warranty verdict agreement), the time spent and the
per-vehicle table. The simulated lake is cached under ``benchmarks/data/accuracy-*``.

Usage: python benchmarks/accuracy.py [--vehicles 50] [--days 730] [--cells 96]
       [--cadence 30] [--idle-cadence 600]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bms  # noqa: E402
import sim  # noqa: E402
from tests.bms.test_analytics_truth import (  # noqa: E402
    accuracy_params,
    accuracy_spec,
    score_fleet,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vehicles", type=int, default=50)
    ap.add_argument("--days", type=int, default=730)
    ap.add_argument("--cells", type=int, default=96)
    ap.add_argument("--cadence", type=int, default=30)
    ap.add_argument("--idle-cadence", type=int, default=600)
    args = ap.parse_args()
    spec = accuracy_spec(
        vehicles=args.vehicles,
        days=args.days,
        cells=args.cells,
        cadence_s=args.cadence,
        idle_cadence_s=args.idle_cadence,
    )
    name = f"accuracy-{args.vehicles}x{args.days}-{args.cells}c-{args.cadence}s"
    data = ROOT / "benchmarks" / "data" / name / "data"
    if not (data / "truth" / "vehicle_day.parquet").exists():
        shutil.rmtree(data, ignore_errors=True)
        t = time.perf_counter()
        sim.simulate_to_lake(spec, data)
        took = time.perf_counter() - t
        print(f"simulated {spec.vehicles} vehicles x {spec.days} days in {took:.0f} s")
    shutil.rmtree(data / "lake" / "metrics", ignore_errors=True)
    shutil.rmtree(data / "state", ignore_errors=True)
    t = time.perf_counter()
    done = bms.run_pending(data / "lake", params=accuracy_params())
    seconds = time.perf_counter() - t
    print(f"analysed {len(done)} dates in {seconds:.0f} s ({seconds / len(done):.3f} s per date)")
    score = score_fleet(data, spec.fleet)
    print(score.summary())
    print(score.table())


if __name__ == "__main__":
    main()
