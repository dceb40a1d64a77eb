"""Benchmark: vehicle report PDFs per second for a 1,000-vehicle fleet, and the fleet report.

Builds a lake of metrics in the analytics stage's schemas (``bms.METRICS_SCHEMAS``) for
N vehicles (96 cells) over the vehicle-report window, then renders every vehicle's PDF
with ``reports.render_vehicle_reports`` on all cores, and the fleet PDF/CSV. Baseline,
measured in the same run on the same pool: a minimal one-page reportlab PDF per vehicle
(title and five numbers), so the ratio is the cost of our charts and layout.

Goal: the nightly reports of 1,000 vehicles in under a minute on this machine.

    .venv/bin/python benchmarks/reports.py [--vehicles 1000] [--days 90] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

# This file is named like the package it measures: keep its folder off the import path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import bms  # noqa: E402
import reports  # noqa: E402

DAY = date(2026, 11, 24)
FLEET = "bench"


def _vin(i: int) -> str:
    return f"BEN{i:014d}"


def _table(name: str, cols: dict[str, object], n: int) -> pa.Table:
    schema = bms.METRICS_SCHEMAS[name]
    arrays = []
    for f in schema:
        value = cols.get(f.name)
        if value is None:
            arrays.append(pa.nulls(n, f.type))
        else:
            arrays.append(pa.array(value, f.type) if not isinstance(value, pa.Array) else value)
    return pa.Table.from_arrays(arrays, schema=schema)


def _write(table: pa.Table, lake: Path, name: str, day: date) -> None:
    path = lake / "metrics" / name / f"date={day}" / f"fleet={FLEET}" / "part.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def make_lake(root: Path, n: int, days: int, n_cells: int = 96) -> Path:
    """Registry and ``days`` days of metrics for ``n`` vehicles; returns the lake."""
    lake = root / "lake"
    rng = np.random.default_rng(1)
    vins = [_vin(i) for i in range(n)]
    in_service = [DAY - timedelta(days=int(d)) for d in rng.integers(200, 2500, n)]
    (lake / "registry").mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "vin": vins,
                "fleet": [FLEET] * n,
                "chemistry": ["nmc"] * n,
                "capacity_ah": [100.0] * n,
                "n_cells": pa.array([n_cells] * n, pa.int16()),
                "n_temps": pa.array([8] * n, pa.int16()),
                "vehicle_class": ["car"] * n,
                "in_service_date": pa.array(in_service, pa.date32()),
                "warranty_policy": [""] * n,
            }
        ),
        lake / "registry" / "vehicles.parquet",
    )
    b = rng.uniform(1.0, 5.0, n)
    policy = bms.load_warranty_policy("oem-8y-160k-70")
    statuses = rng.choice(["ok", "at_risk", "claim_eligible"], n, p=[0.9, 0.07, 0.03])
    for k in range(days):
        d = DAY - timedelta(days=days - 1 - k)
        age = np.array([(d - s).days / 365.25 for s in in_service])
        soh = 100 - b * age**0.75
        odo = age * 365.25 * 45
        evidence = json.dumps(
            {"policy": {"id": policy.id, "name": policy.name}, "model_version": "bench"}
        )
        _write(
            _table(
                "vehicle_soh",
                {
                    "vin": vins,
                    "age_years": age,
                    "odometer_km": odo,
                    "n_estimates": np.full(n, 30),
                    "soh_pct": soh,
                    "soh_low_pct": soh - 1.2,
                    "soh_high_pct": soh + 1.2,
                    "fade_exponent": np.full(n, 0.75),
                    "soh_new_pct": np.full(n, 100.0),
                    "fade_pct_per_year_pow": b,
                    "resistance_growth_pct": b * 3,
                    "policy_id": [policy.id] * n,
                    "projected_soh_pct": 100 - b * 8**0.75,
                    "projected_soh_low_pct": 97 - b * 8**0.75,
                    "projected_soh_high_pct": 103 - b * 8**0.75,
                },
                n,
            ),
            lake,
            "vehicle_soh",
            d,
        )
        _write(
            _table(
                "warranty",
                {
                    "vin": vins,
                    "policy_id": [policy.id] * n,
                    "status": statuses if k == days - 1 else ["ok"] * n,
                    "reason": ["bench"] * n,
                    "threshold_min_soh_pct": np.full(n, 70.0),
                    "threshold_years": np.full(n, 8.0),
                    "threshold_km": np.full(n, 160_000.0),
                    "coverage_end_years": np.full(n, 8.0),
                    "coverage_end_km": np.full(n, 131_000.0),
                    "soh_pct": soh,
                    "projected_soh_pct": 100 - b * 8**0.75,
                    "projected_soh_low_pct": 97 - b * 8**0.75,
                    "projected_soh_high_pct": 103 - b * 8**0.75,
                    "usage_flags": pa.array([[]] * n, pa.list_(pa.string())),
                    "evidence": [evidence] * n,
                    "model_version": ["bench"] * n,
                },
                n,
            ),
            lake,
            "warranty",
            d,
        )
        hours = rng.dirichlet(np.ones(6), n) * 24
        _write(
            _table(
                "vehicle_day",
                {
                    "vin": vins,
                    "odometer_km": odo,
                    "covered_hours": np.full(n, 24.0),
                    "ah_charged": rng.uniform(10, 80, n),
                    "ah_charged_dc": rng.uniform(0, 10, n),
                    "equivalent_full_cycles": rng.uniform(0.1, 0.8, n),
                    "hours_soc_above_90": rng.uniform(0, 5, n),
                    "hours_soc_below_10": rng.uniform(0, 1, n),
                    **{
                        c: hours[:, j]
                        for j, c in enumerate(
                            [
                                "hours_temp_below_0c",
                                "hours_temp_0_15c",
                                "hours_temp_15_25c",
                                "hours_temp_25_35c",
                                "hours_temp_35_45c",
                                "hours_temp_above_45c",
                            ]
                        )
                    },
                    "temp_c_max": (tmax := rng.uniform(25, 45, n)),
                    "pack_temp_c_max": tmax,
                    "max_charge_c_rate": rng.uniform(0.2, 1.5, n),
                },
                n,
            ),
            lake,
            "vehicle_day",
            d,
        )
        _write(
            _table(
                "cell_day",
                {
                    "vin": np.repeat(vins, n_cells),
                    "cell": np.tile(np.arange(n_cells), n),
                    "n_cells": np.full(n * n_cells, n_cells),
                    "rest_dev_mv": rng.normal(0, 2, n * n_cells),
                },
                n * n_cells,
            ),
            lake,
            "cell_day",
            d,
        )
        ts = datetime(d.year, d.month, d.day, 6, tzinfo=UTC)
        _write(
            _table(
                "capacity",
                {
                    "vin": vins,
                    "end_ts": pa.array([ts] * n, pa.timestamp("ms", tz="UTC")),
                    "soh_pct": soh + rng.normal(0, 1, n),
                },
                n,
            ),
            lake,
            "capacity",
            d,
        )
    return lake


def _minimal_pdf(vin: str, out: str) -> None:
    from reportlab.lib.pagesizes import A5
    from reportlab.pdfgen.canvas import Canvas

    c = Canvas(out, pagesize=A5, invariant=1)
    c.setFont("Helvetica-Bold", 17)
    c.drawString(34, 540, f"Vehicle {vin}")
    c.setFont("Helvetica", 10.5)
    for i, line in enumerate(("SoH 93.1 %", "warranty ok", "projected 85.7 %", "0 anomalies")):
        c.drawString(34, 500 - 16 * i, line)
    c.showPage()
    c.save()


def _minimal_batch(vins: list[str], out_dir: str) -> int:
    for v in vins:
        _minimal_pdf(v, os.path.join(out_dir, f"{v}.pdf"))
    return len(vins)


def baseline(vins: list[str], out_dir: Path, workers: int) -> float:
    """Seconds for the minimal PDFs of ``vins`` in a pool like ours."""
    out_dir.mkdir(parents=True)
    chunks = [vins[i :: workers * 8] for i in range(workers * 8)]
    t = time.perf_counter()
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        done = sum(pool.map(_minimal_batch, chunks, [str(out_dir)] * len(chunks)))
    assert done == len(vins)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vehicles", type=int, default=1000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fleetbms-bench-reports-"))
    try:
        t = time.perf_counter()
        lake = make_lake(tmp, args.vehicles, args.days)
        print(
            f"lake: {args.vehicles} vehicles x {args.days} days, 96 cells "
            f"({time.perf_counter() - t:.1f} s to build)"
        )
        vins = [_vin(i) for i in range(args.vehicles)]
        base_s = baseline(vins, tmp / "baseline", args.workers)
        # CPU costs in one process (independent of other load on the machine): reading
        # every vehicle's inputs (in the parent, before the pool starts), and building and
        # writing one PDF from loaded inputs (in the workers).
        from reports._inputs import load_vehicles
        from reports._vehicle_report import _render_batch

        reports.render_vehicle_reports(lake, tmp / "warm", DAY, FLEET, vins[:2], workers=1)
        cpu = time.process_time()
        loaded = load_vehicles(lake, DAY, FLEET, vins, window_days=args.days)
        load_cpu_s = time.process_time() - cpu
        sample = loaded[: min(50, len(loaded))]
        del loaded
        cpu = time.process_time()
        _render_batch(sample, tmp / "cpu")
        cpu_per_pdf = (time.process_time() - cpu) / len(sample)
        t = time.perf_counter()
        paths = reports.render_vehicle_reports(
            lake,
            tmp / "reports",
            DAY,
            FLEET,
            vins,
            workers=args.workers,
            window_days=args.days,
        )
        ours_s = time.perf_counter() - t
        assert len(paths) == args.vehicles
        size = sum(p.stat().st_size for p in paths) / len(paths)
        t = time.perf_counter()
        fleet = reports.fleet_report(lake, tmp / "reports", DAY, FLEET)
        fleet_s = time.perf_counter() - t
        pages = len(__import__("pypdf").PdfReader(fleet[0]).pages)
        n = args.vehicles
        print(f"workers: {args.workers}, load average {os.getloadavg()[0]:.1f} at the end")
        print(
            f"baseline (1-page reportlab PDF per vehicle): {n / base_s:8.1f} PDFs/s "
            f"({base_s:.1f} s)"
        )
        print(
            f"vehicle reports (4 charts, 4-5 pages):        {n / ours_s:8.1f} PDFs/s "
            f"({ours_s:.1f} s incl. reading the lake, {size / 1e3:.0f} kB each)"
        )
        print(f"ratio ours / baseline: {base_s / ours_s:.3f} (speed), {ours_s / base_s:.1f}x time")
        print(f"fleet report ({n} vehicles, {pages} pages + CSV): {fleet_s:.1f} s")
        idle = load_cpu_s + cpu_per_pdf * n / args.workers + fleet_s
        print(
            f"CPU: reading {n} vehicles' inputs {load_cpu_s:.1f} s, then per vehicle PDF "
            f"{cpu_per_pdf * 1e3:.0f} ms (mean of {len(sample)}, incl. write + fsync) -> "
            f"{n} vehicles + fleet report on {args.workers} idle cores: ~{idle:.0f} s"
        )
        total = ours_s + fleet_s
        goal = "met" if total < 60 else "NOT met"
        print(f"nightly reports for {n} vehicles: {total:.1f} s (goal < 60 s: {goal})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
