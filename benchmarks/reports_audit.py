"""Audit bundle export rate against a plain copy of the same lake files.

Generates a realistic metrics volume (default 1,000 vehicles x 90 days: a vehicle_day
table, a 96-cell cell_day table and a few anomaly flags per day), then measures in the
same run:

- baseline: ``shutil.copytree`` of the metrics and anomalies folders (best of 3);
- export: ``reports.export_audit_bundle`` of the same period (read, pseudonymise, write
  Parquet + CSV, hash, chain, sign, fsync);
- verify: ``reports.verify_audit_bundle`` of the result.

Rates are MB of input Parquet per second; the printed ratio is export rate / copy rate
(goal >= 0.3). Run: ``.venv/bin/python benchmarks/reports_audit.py [--vehicles N]
[--days N]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reports import export_audit_bundle, generate_signing_keys, verify_audit_bundle

FLEET = "bench"
DAY0 = date(2026, 8, 1)
N_CELLS = 96
_VIN_CHARS = np.array(list("ABCDEFGHJKLMNPRSTUVWXYZ0123456789"))


def make_vins(n: int, rng: np.random.Generator) -> list[str]:
    return ["MAT" + "".join(rng.choice(_VIN_CHARS, 14)) for _ in range(n)]


def write_lake(lake: Path, n_vehicles: int, n_days: int) -> int:
    """Write the metrics lake; return its size in bytes."""
    rng = np.random.default_rng(7)
    vins = np.array(make_vins(n_vehicles, rng), dtype=object)
    soh0 = rng.uniform(88, 100, n_vehicles)
    cell_offset_mv = rng.normal(0, 3, (n_vehicles, N_CELLS))
    for i in range(n_days):
        day = DAY0 + timedelta(days=i)
        ts = np.datetime64(day, "ms").astype(np.int64) + rng.integers(0, 86_400_000, n_vehicles)
        vehicle_day = pa.table(
            {
                "vin": pa.array(vins, pa.string()),
                "date": pa.array(np.full(n_vehicles, np.datetime64(day, "D"))),
                "distance_km": rng.gamma(2.0, 40.0, n_vehicles),
                "energy_out_kwh": rng.gamma(2.0, 6.0, n_vehicles),
                "energy_in_kwh": rng.gamma(2.0, 6.0, n_vehicles),
                "dc_charge_s": rng.integers(0, 7200, n_vehicles),
                "temp_c_max": rng.normal(32, 5, n_vehicles).astype(np.float32),
                "temp_c_min": rng.normal(18, 5, n_vehicles).astype(np.float32),
                "soc_pct_min": rng.uniform(5, 60, n_vehicles).astype(np.float32),
                "soh_pct": soh0 - i * 0.006 + rng.normal(0, 0.3, n_vehicles),
                "soh_pct_sigma": rng.uniform(0.3, 1.5, n_vehicles),
                "resistance_mohm": rng.normal(80, 4, n_vehicles),
                "n_readings": rng.integers(2000, 8640, n_vehicles),
                "last_ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
            }
        )
        rest_mv = 3700 + cell_offset_mv - i * 0.01 + rng.normal(0, 0.5, (n_vehicles, N_CELLS))
        cell_day = pa.table(
            {
                "vin": pa.array(np.repeat(vins, N_CELLS), pa.string()),
                "date": pa.array(np.full(n_vehicles * N_CELLS, np.datetime64(day, "D"))),
                "cell": pa.array(np.tile(np.arange(N_CELLS, dtype=np.int16), n_vehicles)),
                "rest_mv": np.round(rest_mv.ravel(), 2),
                "rest_mv_delta": np.round((rest_mv - rest_mv.mean(1, keepdims=True)).ravel(), 2),
                "drift_mv_per_day": np.round(rng.normal(0, 0.2, n_vehicles * N_CELLS), 3),
                "resistance_mohm": np.round(rng.normal(0.82, 0.02, n_vehicles * N_CELLS), 4),
            }
        )
        flagged = rng.choice(n_vehicles, 3, replace=False)
        anomalies = pa.table(
            {
                "vin": pa.array(vins[flagged], pa.string()),
                "date": pa.array(np.full(3, np.datetime64(day, "D"))),
                "cell": pa.array(rng.integers(0, N_CELLS, 3), pa.int16()),
                "score": rng.uniform(0.6, 0.9, 3),
                "evidence": [f'{{"vin": "{v}", "rest_mv_delta": -21.5}}' for v in vins[flagged]],
                "model_version": ["iforest-2026-08-01"] * 3,
            }
        )
        for rel, table in (
            (f"metrics/vehicle_day/date={day}/fleet={FLEET}", vehicle_day),
            (f"metrics/cell_day/date={day}/fleet={FLEET}", cell_day),
            (f"anomalies/date={day}/fleet={FLEET}", anomalies),
        ):
            (lake / rel).mkdir(parents=True, exist_ok=True)
            pq.write_table(table, lake / rel / "part.parquet", compression="zstd")
    return sum(p.stat().st_size for p in lake.rglob("*.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetbms-bench-audit-") as tmp:
        root = Path(tmp)
        lake, state = root / "data" / "lake", root / "data" / "state"
        t0 = time.perf_counter()
        size = write_lake(lake, args.vehicles, args.days)
        print(
            f"lake: {args.vehicles} vehicles x {args.days} days, {size / 1e6:.1f} MB Parquet "
            f"(generated in {time.perf_counter() - t0:.1f} s)"
        )
        pair = generate_signing_keys(state / "keys")

        copy_times = []
        for attempt in range(3):  # the copy is short: best of three
            t0 = time.perf_counter()
            for sub in ("metrics", "anomalies"):
                shutil.copytree(lake / sub, root / f"copy{attempt}" / sub)
            copy_times.append(time.perf_counter() - t0)
        copy_s = min(copy_times)

        t0 = time.perf_counter()
        result = export_audit_bundle(
            lake,
            state,
            root / "bundle",
            date_from=DAY0,
            date_to=DAY0 + timedelta(days=args.days - 1),
        )
        export_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        verification = verify_audit_bundle(result.path, pair.public_key)
        verify_s = time.perf_counter() - t0
        assert verification.ok, verification.problems

        copy_rate = size / 1e6 / copy_s
        export_rate = result.input_bytes / 1e6 / export_s
        verify_rate = result.output_bytes / 1e6 / verify_s
        print(f"copytree (baseline): {copy_s:6.2f} s  {copy_rate:8.1f} MB/s")
        print(
            f"audit export:        {export_s:6.2f} s  {export_rate:8.1f} MB/s of input "
            f"({result.rows:,} rows, {result.files} files, {result.output_bytes / 1e6:.1f} MB out)"
        )
        print(f"audit verify:        {verify_s:6.2f} s  {verify_rate:8.1f} MB/s of bundle")
        print(f"ratio export/copy: {export_rate / copy_rate:.3f} (goal >= 0.3)")


if __name__ == "__main__":
    main()
