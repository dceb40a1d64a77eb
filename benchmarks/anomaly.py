"""Anomaly scoring speed against reading the same feature rows, and training time.

1. Builds a metrics lake of ``--vehicles`` x ``--train-days`` (synthetic analytics
   outputs, 14 cells), builds the anomaly feature rows of every date (timed) and trains
   the isolation forest on them (timed: the issue's "90 days x 1,000 vehicles").
2. Writes ``--rows`` feature rows (those rows repeated with jitter) as one Parquet file
   per (date, fleet) in the lake layout, then, in the same process, times
   a. reading them back (the baseline),
   b. scoring them: model score + threshold + physical rules (``bms.score_feature_rows``).
   Goal (issue 7): scoring <= 3x reading.

3. ``--quality``: the issue's detection figures on a simulated fleet (default 200
   vehicles x 365 days, 14 cells, 5 min / 1 h cadence, ~5 % faulty with every fault kind
   of the simulator): simulation, analytics and anomaly catch-up, then vehicle-level
   recall and precision (a flag counts as a detection only on or after the fault's
   onset; flags on a faulty vehicle before its onset count as false alarms), the cell
   named for cell faults, the lead time before ``limit_date`` and the flags per 1,000
   healthy vehicle-days (``tests/bms/anomaly_quality.py``, shared with the acceptance test
   ``tests/bms/test_anomaly_quality.py``, which runs it at a 10 min cadence). Goals:
   recall >= 0.9, precision >= 0.8, right cell >= 90 %, median lead >= 14 days, < 1 flag
   per 1,000 healthy vehicle-days.

Usage: python benchmarks/anomaly.py [--rows 1000000] [--vehicles 1000] [--train-days 90]
       python benchmarks/anomaly.py --quality [--fleet-vehicles 200] [--fleet-days 365]
                                   [--cadence-s 300] [--idle-cadence-s 3600] [--workers 1]
                                   [--keep DIR [--rescore]]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bms
from tests.bms.anomaly_data import FLEET, START, Short, make_metrics_lake


def read_rows(files: list[Path]) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in files])


def quality(
    work: Path,
    vehicles: int,
    days: int,
    seed: int,
    *,
    rescore: bool = False,
    cadence_s: int = 300,
    idle_cadence_s: int = 3600,
    workers: int = 1,
) -> None:
    """Simulate, analyse, score, and print the detection figures against the truth.

    ``rescore``: keep the simulated fleet and analytics outputs already in ``work`` (a
    previous ``--keep`` run with the same fleet arguments) and redo the anomaly stage only.
    """
    from collections import Counter

    import sim
    from tests.bms.anomaly_quality import detection_figures, quality_spec

    spec = quality_spec(
        vehicles=vehicles,
        days=days,
        seed=seed,
        cadence_s=cadence_s,
        idle_cadence_s=idle_cadence_s,
    )
    kinds = Counter(f.kind for v in sim.FleetSimulator(spec).vehicles for f in v.faults)
    print(f"injected faults: {dict(kinds)}")
    data = work / "fleet"
    lake, state = data / "lake", data / "state"
    t_sim = t_analytics = 0.0
    if rescore:
        if not (lake / "metrics" / "vehicle_day").is_dir():
            sys.exit(f"--rescore: no analytics outputs under {lake}; run once with --keep")
        for folder in (
            lake / "anomalies",
            lake / "anomaly_features",
            state / "models",
            state / "anomaly",
        ):
            shutil.rmtree(folder, ignore_errors=True)
    else:
        shutil.rmtree(data, ignore_errors=True)
        t0 = time.perf_counter()
        sim.simulate_to_lake(spec, data, workers=workers)
        t_sim = time.perf_counter() - t0
        t0 = time.perf_counter()
        bms.run_pending(lake, state_root=state / "analytics")
        t_analytics = time.perf_counter() - t0
    t0 = time.perf_counter()
    bms.score_pending_anomalies(lake, state)
    t_score = time.perf_counter() - t0
    print(
        f"{vehicles} vehicles x {days} days, cadence {cadence_s} s / {idle_cadence_s} s: "
        f"simulation {t_sim:.0f} s ({workers} process(es)), analytics {t_analytics:.0f} s, "
        f"anomaly catch-up {t_score:.0f} s"
    )
    print(detection_figures(data, vehicles, days).report())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--vehicles", type=int, default=1000)
    parser.add_argument("--train-days", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="Work here and keep the files.")
    parser.add_argument("--quality", action="store_true", help="Detection figures instead.")
    parser.add_argument("--fleet-vehicles", type=int, default=200)
    parser.add_argument("--fleet-days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=0, help="--quality: 0 injects every kind.")
    parser.add_argument("--cadence-s", type=int, default=300, help="--quality: driving cadence.")
    parser.add_argument("--idle-cadence-s", type=int, default=3600, help="--quality: parked.")
    parser.add_argument("--workers", type=int, default=1, help="--quality: simulation processes.")
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="--quality with --keep: reuse the kept fleet and analytics, redo anomalies only.",
    )
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-anomaly-"))
    try:
        if args.quality:
            if args.rescore and args.keep is None:
                sys.exit("--rescore needs --keep (the folder of an earlier --quality run)")
            quality(
                work,
                args.fleet_vehicles,
                args.fleet_days,
                args.seed,
                rescore=args.rescore,
                cadence_s=args.cadence_s,
                idle_cadence_s=args.idle_cadence_s,
                workers=args.workers,
            )
            return
        data = work / "data"
        shutil.rmtree(data, ignore_errors=True)
        days = args.train_days + 1
        shorts = tuple(Short(v, 3, days // 2, days) for v in range(0, args.vehicles, 97))
        t0 = time.perf_counter()
        lake = make_metrics_lake(data, vehicles=args.vehicles, days=days, shorts=shorts)
        t_lake = time.perf_counter() - t0
        params = bms.AnomalyParams(training_days=args.train_days)
        train_day = START + timedelta(days=args.train_days)

        t0 = time.perf_counter()
        bms.train_anomaly_model(lake, data / "state", day=train_day, params=params)
        t_first = time.perf_counter() - t0
        shutil.rmtree(data / "state" / "models")
        t0 = time.perf_counter()
        (info,) = bms.train_anomaly_model(lake, data / "state", day=train_day, params=params)
        t_train = time.perf_counter() - t0
        model = bms.load_anomaly_model(data / "state", FLEET, info.version)

        # Feature rows for the scoring benchmark: the training rows repeated with jitter.
        base = read_rows(sorted((lake / "anomaly_features").glob("date=*/fleet=*/part.parquet")))
        rng = np.random.default_rng(0)
        per_file = args.vehicles
        n_files = max(1, args.rows // per_file)
        rows_dir = work / "rows"
        shutil.rmtree(rows_dir, ignore_errors=True)
        files = []
        for k in range(n_files):
            idx = rng.integers(0, base.num_rows, per_file)
            part = base.take(pa.array(idx))
            cols = []
            for f in part.schema:
                col = part[f.name]
                if pa.types.is_floating(f.type):
                    arr = col.to_numpy(zero_copy_only=False)
                    col = pa.array(arr + rng.normal(0, 0.01, len(arr)), f.type, from_pandas=True)
                cols.append(col)
            part = pa.Table.from_arrays(cols, schema=part.schema)
            day = START + timedelta(days=k)
            path = rows_dir / f"date={day}" / f"fleet={FLEET}" / "part.parquet"
            bms.write_parquet_atomic(part, path)
            files.append(path)
        n_rows = n_files * per_file

        best_read = best_score = float("inf")
        flagged = 0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            table = read_rows(files)
            best_read = min(best_read, time.perf_counter() - t0)
            t0 = time.perf_counter()
            scored = bms.score_feature_rows(model, table, params)
            best_score = min(best_score, time.perf_counter() - t0)
            flagged = int(np.count_nonzero(scored.above))
            del table
        print(f"metrics lake {args.vehicles} vehicles x {days} days built in {t_lake:.1f} s")
        print(
            f"training ({args.train_days} days x {args.vehicles} vehicles, "
            f"{info.training_rows} rows, {params.n_estimators} trees): "
            f"{t_train:.2f} s from stored features; {t_first:.1f} s including building "
            f"the features of {args.train_days} days from the metrics tables"
        )
        print(
            f"read   {n_rows:,} feature rows: {best_read:.3f} s ({n_rows / best_read:,.0f} rows/s)"
        )
        print(
            f"score  {n_rows:,} feature rows: {best_score:.3f} s "
            f"({n_rows / best_score:,.0f} rows/s), "
            f"{flagged:,} above threshold, {scored.rule_hits.num_rows:,} rule hits"
        )
        ratio = best_score / best_read
        print(f"scoring / reading = {ratio:.2f}x (goal <= 3x): {'ok' if ratio <= 3 else 'MISSED'}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
