"""Audit bundle export rate against a plain durable copy of the same lake files.

Generates a realistic metrics volume (default 1,000 vehicles x 90 days: a vehicle_day
table, a 96-cell cell_day table and a few anomaly flags per day), then measures in the
same run:

- baseline: a plain copy of the metrics and anomalies files, each file and folder
  fsync'ed like the bundle's (best of 3). The export must be durable before it reports
  success, so the copy it is compared with must be too: a copy that stops at the page
  cache measures memory bandwidth, not the disk both have to reach;
- export: ``reports.export_audit_bundle`` of the same period (read, pseudonymise, write
  Parquet + CSV, hash, chain, sign, fsync); and again without the per-cell CSV
  (``--no-cell-csv``: cell_day in Parquet only);
- verify: ``reports.verify_audit_bundle`` of the result.

Both rates are over the same bytes: the input Parquet files the export reads (MB of
input per second). The headline ratio is export rate / durable copy rate (goal >= 0.3).
The bundle carries every table twice (zstd Parquet and plain RFC 4180 CSV), so it is
~10x larger than its input; for that reason the run also prints the export's rate over
the bytes it writes against a durable copy of those same bytes (the bundle itself):
how close the export comes to the disk's durable write speed. For reference it prints
the old page-cache ``shutil.copytree`` rate too, and the ceiling of the input-bytes
ratio: the ratio an export would reach if it were as fast as a durable copy of its own
bundle (copy of the input / copy of the bundle). Run:
``.venv/bin/python benchmarks/reports_audit.py [--vehicles N] [--days N]``.

Measured 2026-12-06 (2 cores shared with other workers, load average 7-9; 59.5 MB in,
697.4 MB out, 8.7 M rows, 635 files; each figure is a ratio within one run; before =
the exporter of b815ee1, after = 599c6b9):

==============================  ===============  ==============  =======
ratio                           before (7 runs)  after (3 runs)  goal
==============================  ===============  ==============  =======
full bundle, input bytes        0.12-0.17        0.16-0.23       >= 0.3
``--no-cell-csv``, input bytes  0.34-0.48        0.55-0.77
full bundle, bundle bytes       0.12-0.45        0.50-0.64
==============================  ===============  ==============  =======

(before: 13.3-22.9 s, CPU 7.6-8.9 s; after: 11.4-13.1 s, CPU 6.9-8.0 s; one earlier
run with load 6 gave 0.30 / 0.59 / 0.55 before.) The copy of the input is bound by
fsync latency (270 files and 545 folders one after the other: 1.4-3.2 s), the export
by CPU: with one worker, Arrow's CSV writer takes ~4.5 s of thread time (shortest
round-trip text of 35 M doubles of ``cell_day``), Parquet writing 1.5 s, SHA-256 and
the writes 0.85 s, reading 0.3 s; on a loaded machine the export gets about half a
core. The bundle is 11.7 times its input: an export as fast as a durable copy of its
own bundle would reach only the ceiling (0.41 in the last run) over input bytes. The
full bundle does not meet 0.3 over input bytes on this machine today; without the
per-cell CSV, and over bundle bytes, it does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

# benchmarks/reports.py is named like the package measured here: keep this folder off
# the import path, or ``import reports`` finds that script.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from reports import (  # noqa: E402
    AuditExport,
    export_audit_bundle,
    generate_signing_keys,
    verify_audit_bundle,
)

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


def durable_copy(src: Path, dst: Path) -> int:
    """Copy the files under ``src`` to ``dst``, fsync each file and folder; bytes copied."""
    copied = 0
    folders = {dst}
    for path in sorted(src.rglob("*")):
        if not path.is_file():
            continue
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        folders.update(target.parents[: len(path.relative_to(src).parts) - 1])
        with open(path, "rb") as fin, open(target, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        copied += target.stat().st_size
    for folder in sorted(folders, key=lambda f: -len(f.parts)):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return copied


def best_of_3(copy: Callable[[Path], int], root: Path, name: str) -> tuple[float, int]:
    """Fastest of three runs of ``copy(dst)``: (seconds, bytes)."""
    times, size = [], 0
    for attempt in range(3):
        dst = root / f"{name}{attempt}"
        t0 = time.perf_counter()
        size = copy(dst)
        times.append(time.perf_counter() - t0)
        shutil.rmtree(dst)
    return min(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
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

        def copy_lake(dst: Path) -> int:
            return sum(durable_copy(lake / sub, dst / sub) for sub in ("metrics", "anomalies"))

        def copytree_lake(dst: Path) -> int:
            for sub in ("metrics", "anomalies"):
                shutil.copytree(lake / sub, dst / sub)
            return size

        copy_s, copied = best_of_3(copy_lake, root, "copy")
        assert copied == size
        cache_s, _ = best_of_3(copytree_lake, root, "copytree")

        def timed_export(out: Path, cell_csv: bool) -> tuple[AuditExport, float, float]:
            t0 = time.perf_counter()
            cpu0 = time.process_time()
            result = export_audit_bundle(
                lake,
                state,
                out,
                date_from=DAY0,
                date_to=DAY0 + timedelta(days=args.days - 1),
                workers=args.workers,
                cell_csv=cell_csv,
            )
            assert result.input_bytes == size
            return result, time.perf_counter() - t0, time.process_time() - cpu0

        result, export_s, export_cpu_s = timed_export(root / "bundle", True)
        lean, lean_s, lean_cpu_s = timed_export(root / "lean", False)
        t0 = time.perf_counter()
        verification = verify_audit_bundle(result.path, pair.public_key)
        verify_s = time.perf_counter() - t0
        assert verification.ok, verification.problems

        out_copy_s, out_copied = best_of_3(
            lambda dst: durable_copy(result.path, dst), root, "bundlecopy"
        )

        mb_in, mb_out = result.input_bytes / 1e6, result.output_bytes / 1e6
        copy_rate, export_rate = mb_in / copy_s, mb_in / export_s
        print(f"workers: {args.workers}, load average {os.getloadavg()[0]:.1f} at the end")
        print(
            f"durable copy of the input (baseline): {copy_s:6.2f} s {copy_rate:8.1f} MB/s of input"
        )
        print(
            f"audit export:                         {export_s:6.2f} s {export_rate:8.1f} MB/s "
            f"of input (CPU {export_cpu_s:.1f} s; {result.rows:,} rows, {result.files} files, "
            f"{mb_out:.1f} MB out)"
        )
        verify_rate = mb_out / verify_s
        print(f"audit verify: {verify_s:6.2f} s {verify_rate:8.1f} MB/s of bundle")
        ratio = export_rate / copy_rate
        print(f"ratio export/durable copy, same input bytes: {ratio:.3f} (goal >= 0.3)")
        print(
            f"without per-cell CSV (--no-cell-csv): {lean_s:6.2f} s "
            f"{mb_in / lean_s:8.1f} MB/s of input (CPU {lean_cpu_s:.1f} s; "
            f"{lean.output_bytes / 1e6:.1f} MB out): ratio {copy_s / lean_s:.3f}"
        )
        print(
            f"bytes written: export {mb_out / export_s:.1f} MB/s, durable copy of the bundle "
            f"({out_copied / 1e6:.1f} MB) {out_copied / 1e6 / out_copy_s:.1f} MB/s: ratio "
            f"{out_copy_s / export_s * mb_out * 1e6 / out_copied:.3f}"
        )
        print(
            f"ceiling of the input-bytes ratio (an export as fast as a durable copy of its "
            f"own bundle): {copy_s / out_copy_s:.3f}"
        )
        print(
            f"(page-cache copytree of the input, no fsync: {cache_s:.2f} s, "
            f"{mb_in / cache_s:.1f} MB/s; export/copytree {cache_s / export_s:.3f})"
        )


if __name__ == "__main__":
    main()
