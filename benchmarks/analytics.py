"""Speed of ``fleetbms analyze`` against a plain DuckDB scan of every cell value.

One fleet-day of N vehicles x 8,640 readings (10 s) x 96 cells, generated once with the
analytics test generator and cached under ``benchmarks/data/analytics-<N>``. Prints:

- the floor: ``SELECT sum(list_sum(cell_mv))`` over the day's files (touches every
  cell value once), and the analyze time of the same day; goal ratio <= 3;
- peak memory (max RSS of this process) of the analyze run;
- day 365 over day 1: the same day analysed after a year of compact state (the state of
  365 days of estimates for every vehicle), goal <= 1.3.

Wall and CPU seconds (user + system of this process, all threads) of the floor and of
the analyze run are both printed: on a machine shared with other work the CPU ratio is
the steadier figure.

Measured on a 2-core machine shared with other jobs (load average 4-7), 1,000 vehicles,
before -> after the readings job became one streaming pass (branch h-speed):
analyze 36.6 s -> 21.7 s wall (ratio 7.0 -> 6.7; the floor's own wall time moves with
the load), 38.0 s -> 24.9 s CPU (CPU ratio 9.1 -> 6.0), peak RSS 1,427 -> 938 MB; day 365
/ day 1 32.5 / 36.6 s = 0.89 -> 28.1 / 21.7 s = 1.30 (day 1 got faster, the year-long
trend fits did not). 200 vehicles: CPU ratio 9.2 -> 6.4, peak RSS 1,368 -> 852 MB. Goal
ratio <= 3 not met. Where the CPU goes at 1,000 vehicles (one vehicle group at a time):
the readings table 9.6 s (about half of it writing its 44 columns), the second scan of
the cell lists for the chosen readings 5.1 s (about the floor itself), cell_day 3.8 s,
vehicle_day 2.8 s, rest runs 1.8 s, the other jobs 3 s, Python 3.7 s (mostly the
charge-step and trend fits).

Branch fast (2026-12-06, same machine, heavily loaded: load average 7-12, so only the CPU
figures compare), 1,000 vehicles, main -> fast, two runs each: analyze CPU 27.7-28.3 s ->
22.3-23.4 s (CPU ratio 5.9-6.1 -> 5.0; floor CPU 4.5-4.7 s), peak RSS 884-901 -> 671-698
MB. The cell lists are decoded once for the whole day (they were per vehicle group, and a
file holding vehicles of two groups was decoded by both: cell_rows 5.1 -> 3.7 s CPU), the
readings table's running totals are BIGINT instead of HUGEINT (readings 9.6 -> 8.1 s),
cell_day joins readings to their roles before unnesting. The walls (analyze 25-47 s,
floor 5-16 s; day 365 / day 1 between 0.8 and 1.9 for both) moved with the load. Where
the CPU goes now: readings 8.1 s, cell_rows 3.7 s, vehicle_day 2.4 s, rest_runs 1.7 s,
cell_day 1.7 s, the other jobs 3.7 s, Python about 3 s.

Branch speed (2026-12-06, same machine, load average 4-10 from two other jobs, so the
CPU figures run 1.3-1.6x the quiet ones above: the floor itself took 6.7-8.8 s CPU),
1,000 vehicles, analyze of the benchmark day from the same state (the day before
analysed first, as here), before and after interleaved, outputs equal (SHA-256 of the
six metrics tables and the state): BLAS limited to one thread while the dates are
finished (threadpoolctl). Whole analyze runs vary by +-5 s CPU here, so the step the
limit covers (finishing the day in Python, after the SQL passes) was also timed alone,
in one process, interleaved, on the same SQL outputs. With the committed
bms/_chargestep.py: no change (its matrix products are small enough that OpenBLAS runs
them on one thread anyway): finishing 4.0-4.1 s CPU with two BLAS threads, 3.9-4.2 s
with one; whole analyze 36.0-39.9 s before, 39.5-43.5 s after (three runs each; noise).
With the lead's work-in-progress _chargestep.py (larger products; snapshot of 21:42): a
charge-step fit 20.8-22.2 ms CPU (wall 25.8-34.0 ms) with two BLAS threads, 7.6-8.4 ms
(wall 7.8-10.2 ms) with one, 334 fits a day; finishing 11.8-12.5 s -> 5.2-8.0 s CPU
(wall 11.5-13.3 -> 7.4-9.8 s); whole analyze 41.7-54.6 s -> 42.2-45.4 s CPU (three runs
each). With main at 750db18 (the new charge-step fits and bms._relax) merged: finishing
13.7-14.1 s CPU with two BLAS threads, 5.0-7.4 s with one (three each, in one process);
whole analyze 42.0-57.0 s -> 45.4-45.8 s CPU, CPU ratio 5.8-6.0 -> 5.3 (two runs each),
outputs equal. Where the CPU goes (the branch alone, one run, load 7, CPU s): the VIN
scan (unit_vins) 0.7, the readings jobs of all vehicle groups 23.5, cell_rows 5.8, the
cell jobs 3.4, finishing the day in Python 4.1 (charge-step fits 1.4 of it); within a
group's readings jobs, the readings table is about 55 % (writing its 44 columns about
40 % of that), vehicle_day 16 %, rest_runs 12 %, cell_select, carry, cell_counts and
charge_select 3-5 % each. Tried, same outputs, no gain beyond the noise (kept out): one
grouping pass feeding vehicle_day, carry, cell_counts and rest_runs' day ends; the
readings table without 4-6 of its columns (about 5 %); the registry's values looked up
from per-field lists instead of one struct; integer group keys in vehicle_day; DuckDB on
one thread (the lanes give the parallelism; CPU the same, wall longer); a larger
allocator flush threshold. A selective filter on the scan still decodes about 60 % of
the cell lists (delta-encoded pages are decoded whole), so cell_rows stays near the
floor. Next to try, on a quiet machine (steps of 5 % do not show at this load): the hash
aggregates of vehicle_day and rest_runs, the readings table's streaming windows, and the
wall of the one-thread VIN scan (about 2 s).

Branch speed2 (2026-12-07, same machine, load average 2-6 from the lead's tests and
accuracy runs, so again only CPU figures compare). Measured as CPU (user + system) of
the analyze run of the benchmark day from the state of the day before, base (main at
a5a2e26, own worktree and venv) and branch interleaved A B A B; outputs equal: SHA-256 of
the contents and of the bytes of all 18 (200) / 19 (1,000) metrics and state files
written (both days' metrics, carry, histories, ledgers). 1,000 vehicles, the first three
commits: analyze 32.7-33.9 s -> 25.8-27.1 s CPU (two runs each, load 5-6, about -20 %);
200 vehicles, the first two: 6.25-6.69 -> 5.40-5.64 s (three each, load 2.3); all four:
6.54-6.63 -> 5.37-5.55 s (two each, load 3 with the test suite running). This
script, 1,000 vehicles, one run each, base then branch with all four (load 1-2 plus the
test suite on one core): analyze CPU 33.1 -> 27.9 s, CPU ratio 5.29 -> 4.06 (floor CPU
6.3 / 6.9 s), analyze wall 29.0 -> 25.6 s, peak RSS 672 -> 674 MB, day 365 / day 1 1.85
-> 1.14 (walls, loaded). Goal ratio <= 3 not met. Kept:
- the readings table keys vehicles by an ENUM of the group's VINs (a temporary type per
  vehicle group, in VARCHAR order so sorting is unchanged; the jobs' outputs are cast back
  to strings in Python): a one-byte key instead of a 17-character string in the table and
  in every job that groups, joins or sorts by vin: rest_runs 0.088 -> 0.057 s CPU per
  group of 47 vehicles (406,080 readings), cell_counts 0.032 -> 0.012, carry 0.035 ->
  0.027, the readings pass's lag of vin 0.026 -> 0.014;
- vehicle_day's conditional aggregates as sum(CASE WHEN ...) / count(CASE WHEN ...)
  instead of FILTER (WHERE ...) (the hash aggregate handles FILTER one aggregate at a
  time): 0.103 -> 0.066 s per group, same values;
- the readings pass counts its flags (count(*) FILTER ... OVER) instead of summing them
  as HUGEINT: the pass's compute (without writing the table) 0.21 -> 0.15 s per group;
- cell_day unnests the load readings (most of its rows) outside the materialised roles
  CTE that every other role scans: 0.076-0.080 -> 0.060 s per group.
Where the CPU goes now (one lane, one DuckDB thread, 1,000 vehicles, loaded): the
readings jobs 8.9 s (half of the readings table is writing it: 0.23 of 0.45 s per group;
a string column (mode, prev_mode, chemistry) costs about 0.010 s per group to write, a
numeric one 0.003), cell_rows 5.9 s (the floor's work: the cell lists are decoded whole
for every row, a selective filter on the scan does not lower it: 0.87 vs 0.89 s at 200
vehicles), cell_day 1.7, vehicle_day 1.4-1.7, rest_runs 1.3-1.4, carry, cell_select,
unit_vins about 0.6 each, finishing in Python about 5. Planning a large job costs 10-20 ms
(vehicle_day: 6 ms to parse and bind, 16 ms with optimising), about 0.07 s per vehicle
group for the readings jobs: larger groups pay it less often. chunk_readings 800,000
instead of 400,000 (11 groups instead of 22 at 1,000 vehicles): 29.5 -> 27.4 s CPU on one
lane; 30.2-32.5 -> 25.0-25.7 s with the default two lanes (two runs each, load 5-6), but
peak RSS 644-686 -> 1,008-1,039 MB: left at 400,000 (a memory/CPU choice). The lead
then alternated the two on main 818c0c5 (the analyze of the benchmark day, 1,000
vehicles, with the test suite running beside): 400,000: 28.2 / 26.4 s CPU (RSS 756 / 700
MB), 800,000: 26.1 / 27.2 s (1,061 / 1,046 MB): no gain shown beyond the noise, so the
default stays. Tried, no gain
(kept out): FILTER -> CASE in unit_vins (its cost is the streaming window) and in
rest_runs' two (0.056 vs 0.055 s); carry from the day's first and last readings joined by
rn instead of arg_max (arg_max skips NULL values, so the nullable columns still need it:
0.031 vs 0.033 s); the readings as an Arrow table instead of a temporary table (the pass
0.46 -> 0.32 s, but the jobs over it slower, rest_runs 0.06 -> 0.17: net equal);
CASE-masked arg_max / max instead of FILTER in the readings pass's bases (slower, 0.21 ->
0.26-0.30 s; max for the monotonic bases 0.152 -> 0.145, noise); DOUBLE running sums
(as fast as the counts); DuckDB's parquet metadata cache (2 ms a scan).

2026-12-07, quiet machine at the start (load < 1), 1,000 vehicles, main 67353aa: floor
2.81 s wall / 5.39 s CPU, analyze 13.23 s wall / 21.57 s CPU: ratio 4.71 wall, 4.00 CPU
(goal 3 not met); peak RSS 786 MB; day 365 / day 1 1.25. Where the wall went (phase
marks in one run, wall / CPU s): counting the VINs 0.45 / 0.46, the readings jobs of the
22 groups 6.3 / 11.9, cell_rows 2.1 / 4.1, the cell jobs 1.6 / 2.9, finishing the date
in Python 3.1-3.9 on one core (charge-step fits 1.3-2.3 of it). One thread, one lane
(CPU s): the readings table 7.1 (per group: its scan 0.03, its windows 0.09-0.15,
writing its 44 columns 0.15-0.18: DuckDB appends 2-4 ms per numeric column and 11 ms
per VARCHAR column per 400,000 rows; a temporary, a main or a COMPRESSed in-memory
table, or an Arrow table, all cost the same), vehicle_day 2.3, rest_runs 1.3, carry
0.7, cell_select 0.7, charge_select 0.4, cell_counts 0.3. Changed (outputs identical:
SHA-256 of the contents of every metrics and state file):
- the charge-step fit scores all start SoCs of its coarse grid at once (batched normal
  equations; 1,005 recorded fits give identical results): 2.9 -> 2.0 s CPU for a day's
  fits;
- the per-vehicle steps (carry, capacity pairs, resistance) run per vehicle group as the
  lanes finish each group's cell jobs, in the calling thread, beside the lanes' SQL
  (the resistance table per group also drops a per-vehicle scan of all the fleet's
  steps); only the trends, warranty and writing stay for the end: finishing 3.1-3.9 ->
  0.7 s. Run in the lanes themselves instead, the two lanes' Python contended for the
  GIL: the steps took 2.0-2.2 s thread CPU on one lane and 3.1-3.6 s on two.
The machine's speed drifted by 30-40 % within the hour (the same run 12.3-18.4 s), so
whole-run figures are medians of interleaved runs, each process analysing the day again
and again: one thread, one lane, 4 each: CPU 25.45 -> 24.24 s (min 23.00 -> 20.95);
default lanes, 4 each, loaded 2-3.5: wall 17.27 -> 15.86 s, CPU 28.11 -> 27.10 s, floor
2.75-3.18 s: wall ratio 5.96 -> 5.47. The wall the structure still loses: the VIN count
on one core (0.45 s), the trends and writing (0.7 s), the GIL between the steps in
Python and the lanes (the cell jobs took 1.3-1.9 s thread CPU alone, 1.8-2.3 beside the
steps). CPU is what is left: 21 s over two cores is 10.5 s at best, and ratio 3 is 8.4 s.
This script, alternated, 67353aa / main 1014762 (load 0.2 before the first, ~2 after):
analyze 17.31 / 16.42 s -> 14.09 / 14.98 s wall, ratio 6.63 / 5.56 -> 4.78 / 5.38, CPU
ratio 5.47 / 4.83 -> 4.26 / 4.87; peak RSS 687 / 681 -> 751 / 684 MB; day 365 / day 1
0.88-1.18 for both.

2026-12-07 (fresh machine, quiet: load < 1.5), 1,000 vehicles, main 1f065c5: floor 2.30 s
wall / 4.48 s CPU, analyze 12.05 s / 20.14 s: ratio 5.24 wall, 4.50 CPU; peak RSS 809 MB;
day 365 / day 1 1.23. Where the wall goes (phase marks, second of two runs, 11.84 s): the
VIN count 0.5 s; the vehicle groups' readings jobs on two lanes 5.6 s (both lanes busy
throughout); cell_rows 1.9 s; the cell jobs beside the per-vehicle Python 2.9 s (the
Python, 2.8 s on one thread, is the longer of the two: the lanes' cell jobs take 2.2 s
each); the date's trends, warranty and writing 0.9 s. Ratio 3 is 6.9 s: the readings
jobs alone would have to fall to about 1.5 s, a quarter of what the streaming windows
and the table's 44 columns cost now, so it needs the redesign described above (run-level
aggregates instead of a materialised row table), not a tuning step. At day 365 the trend
fits (2,000 robust fits of 365 points, about 20 IRLS iterations each) add 2.4 s on one
thread at the end.

2026-12-07 (fresh machine, three helpers' test suites beside: load 3-5), main 7f08c1c:
floor 2.48 s wall / 4.80 s CPU, analyze 14.48 s / 24.51 s: ratio 5.84 wall, 5.11 CPU;
peak RSS 760 MB; day 365 / day 1 1.13. Thread CPU per job of the rows pass, one lane,
one DuckDB thread (the 22 groups summed): readings table 6.2 s, vehicle_day 1.9,
rest_runs 1.1, cell_select 0.5, carry 0.5, charge_select 0.3, cell_counts 0.2,
resistance_steps 0.15 (11.5 s in all). The readings table registered as an Arrow table
instead (to skip DuckDB's append) was dearer: 8.2 s to fetch it, and rest_runs over it
1.1 -> 4.8 s. Its plan (EXPLAIN ANALYZE, one group): all windows are streaming
windows, 0.16 s of compute per group; the rest is writing the 44 columns. A bound on
what any redesign can reach: the cell lists the cell jobs need are decoded by a scan
that costs about the floor itself (cell_rows), so ratio 3 leaves two floors (about
9.6 s CPU here) for everything else, while the per-vehicle Python (charge-step fits,
capacity pairs, trends: 3-4 s), the cell jobs (about 3 s), the VIN count and the
finishing (about 1.5 s) already take 8 s of it: the readings jobs would have to fall
from 11.5 s to under 2 s CPU (at 3 s the CPU ratio would be near 3.3). Not attempted
this session.

2026-12-07 (fresh machine, quiet), 1,000 vehicles, analytics-20: floor 3.14 s wall / 6.15 s
CPU, analyze 15.30 s / 25.91 s: ratio 4.88 wall, 4.21 CPU (goal 3 not met); peak RSS
760 MB; day 365 / day 1 1.21. The level-shift test's fit of the estimates before the
recent window ran for every vehicle at first: day 365 / day 1 1.28; it now runs only
where the recent estimates' median residual could count (5b01af0), same results.

2026-12-07 (another fresh machine, quiet, about 1.3x slower on the same code), 1,000
vehicles, analytics-20 (e9344e6) and analytics-21 run in turn: analyze 20.5-23.4 s wall
for both, 32.7-37.0 s CPU (analytics-20) and 34.4-38.6 s (analytics-21 with its first,
separate branch_turns scan); floors 3.4-4.9 s wall and 6.7-9.5 s CPU, so ratios of 4.8-6.8
wall and 4.1-5.5 CPU: here the floor moved more than the change. The hysteresis
bookkeeping alone (run_analytics of the day, two runs each): 40.9-42.5 s CPU with
branch_turns returning nothing, 43.1-44.3 with the separate scan, 41.1-43.6 with the
readings table's flag (274e30a). Peak RSS 640-750 MB; day 365 / day 1 1.17-1.39 (this
machine's own noise: 1.30 and 1.39 for analytics-20).

2026-12-07 (fresh machine, quiet: load < 1), 1,000 vehicles, analytics-21 (8133c3e): floor
2.53 s wall / 4.91 s CPU, analyze 13.37 s / 22.54 s: ratio 5.28 wall, 4.59 CPU (goal 3 not
met); peak RSS 756 MB; day 365 / day 1 1.25. Readings jobs per job, one DuckDB thread,
one lane, both days of the benchmark (44 vehicle groups), CPU s per day: readings 5.6-8.4,
vehicle_day 1.6-2.1, rest_runs 1.3-1.7, cell_day 0.9-1.1, carry 0.5, cell_select 0.4-0.6,
charge_select 0.3, cell_counts 0.2, step_cells 0.2, resistance_steps 0.15. Changed:
rest_runs.sql gives each rest reading its run's end from a hash aggregate joined back,
not a window partitioned by run (a sort of every rest reading, 0.07 s per group; outputs
identical): the readings jobs 23.7-24.1 -> 22.0-22.2 s CPU (one thread, quiet, two runs
each); later, with load 1-2, three interleaved runs each gave 24.6-27.7 s and 24.9-27.8 s,
so the gain is within what this machine drifts by. This script after it (load 1-2): floor
2.30-2.44 s / 4.53-4.63 s CPU, analyze 13.1-16.0 s / 21.6 s CPU: ratio 5.4-6.9 wall,
4.7-4.8 CPU; peak RSS 827-868 MB; day 365 / day 1 1.02-1.56. Tried, kept out:
- the whole readings pass as one query: readings.sql, rest_runs.sql and
  resistance_steps.sql as MATERIALIZED common table expressions and each job's rows as
  one list-of-structs column (outputs identical): the readings jobs 23.7 -> 25.6 s CPU.
  DuckDB's profile of one group: collecting the readings CTE costs 0.18 s per 406,080
  rows x 44 columns (about 10 ns a value), close to writing the temporary table; a
  standalone test that had suggested a fifth of that was misleading, as with a single
  consumer DuckDB streams a CTE instead of materialising it;
- the mode column as an ENUM (a one-byte key like vin): 24.6-25.0 -> 25.9-26.2 s;
- DuckDB's allocator settings (background threads, a 2 GB flush threshold): within
  the noise;
- vehicle_day without the median and MAD of the rest currents: the same 1.85 s (its
  cost is the fifty aggregates of the hash aggregate, about 4 ns each per reading).
Ratio 3 still needs the readings jobs to fall to about a quarter; no change within the
DuckDB jobs found here does that.

Usage: python benchmarks/analytics.py [--vehicles 1000]

2026-12-07 (another fresh machine, a helper's work beside: load 2-3), analytics-22
(43f2fe4, ``pack_temp_c`` added to the readings table): floor 5.07 s wall / 5.98 s CPU,
analyze 21.78 s / 25.20 s: ratio 4.29 wall, 4.22 CPU (goal 3 not met); peak RSS 740 MB;
day 365 / day 1 1.13. The floor's wall doubled with the load, so only the CPU ratio
compares with the quiet 4.59 of analytics-21: the new column's cost is within the
machine's drift (not isolated).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import bms  # noqa: E402
from tests.bms.test_analytics_synth import (  # noqa: E402
    SynthVehicle,
    vehicle_day_table,
    write_registry,
)

DAY = date(2026, 6, 1)


def _vin(i: int) -> str:
    return f"FBMBENCH0TS{i:06d}"


def generate(lake: Path, n: int) -> None:
    """Two consecutive days (the first gives the state) of n vehicles, 96 cells, 10 s."""
    vehicles = [
        SynthVehicle(
            _vin(i),
            chemistry="nmc" if i % 3 else "lfp",
            n_cells=96,
            rated_ah=120.0,
            capacity_ah=120.0 * (0.9 + 0.08 * ((i * 37) % 100) / 100),
            in_service=date(2025, 6, 1),
        )
        for i in range(n)
    ]
    for d in range(2):
        day = DAY - timedelta(days=1 - d)
        tables = []
        for v in vehicles:
            soc0 = 0.9 if v.chemistry == "nmc" else 0.98
            tables.append(
                vehicle_day_table(v, day, soc0, cadence_s=10, fleet="bench", seq0=d * 10**6)[0]
            )
            if len(tables) >= 50:
                bms.write_telemetry(pa.concat_tables(tables), lake, file_prefix="bench")
                tables = []
        if tables:
            bms.write_telemetry(pa.concat_tables(tables), lake, file_prefix="bench")
    write_registry(lake, vehicles, fleet="bench")


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads). [s]"""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def floor_seconds(lake: Path) -> tuple[float, float]:
    """Wall and CPU seconds of the plain scan."""
    files = [str(p) for p in bms.telemetry_files(lake, DAY)]
    con = duckdb.connect()
    t, c = time.perf_counter(), cpu_seconds()
    con.execute("SELECT sum(list_sum(cell_mv)) FROM read_parquet(?)", [files]).fetchall()
    return time.perf_counter() - t, cpu_seconds() - c


def year_of_history(state: Path, fleet: str, vins: list[str]) -> None:
    """Pretend 365 days have passed: one capacity and one resistance estimate per
    vehicle and day in the history the trend fit reads."""
    rng = np.random.default_rng(0)
    for kind in ("capacity", "resistance"):
        path = state / "history" / f"fleet={fleet}" / f"{kind}.parquet"
        old = pq.read_table(path)
        days = [DAY - timedelta(days=k) for k in range(366, 1, -1)]
        n = len(vins) * len(days)
        if kind == "capacity":
            values = {"soh_pct": 95.0 + rng.standard_normal(n), "sigma_pct": np.full(n, 1.0)}
        else:
            # The pack and its two shares: cells (precise) and interconnects (coarse).
            cells = 70.0 + 0.7 * rng.standard_normal(n)
            inter = 10.0 + 3.0 * rng.standard_normal(n)
            values = {
                "r_mohm": cells + inter,
                "sigma_mohm": np.full(n, 3.0),
                "r_cells_mohm": cells,
                "sigma_cells_mohm": np.full(n, 0.7),
                "r_inter_mohm": inter,
                "sigma_inter_mohm": np.full(n, 3.0),
            }
        columns = {
            "vin": pa.array(np.repeat(vins, len(days)), pa.string()),
            "date": pa.array(days * len(vins), pa.date32()),
            "t_ms": pa.array(
                [int((d - date(1970, 1, 1)).days * 86_400_000 + 43_200_000) for d in days]
                * len(vins),
                pa.int64(),
            ),
            **{k: pa.array(v) for k, v in values.items()},
        }
        extra = pa.table({f.name: columns[f.name] for f in old.schema}).cast(old.schema)
        table = pa.concat_tables([extra, old]).sort_by(
            [("vin", "ascending"), ("date", "ascending")]
        )
        pq.write_table(table, path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vehicles", type=int, default=1000)
    args = ap.parse_args()
    base = ROOT / "benchmarks" / "data" / f"analytics-{args.vehicles}"
    lake = base / "data" / "lake"
    if not (lake / "registry" / "vehicles.parquet").exists():
        shutil.rmtree(base, ignore_errors=True)
        t = time.perf_counter()
        generate(lake, args.vehicles)
        print(f"generated {args.vehicles} vehicles x 2 days in {time.perf_counter() - t:.0f} s")
    state = base / "data" / "state" / "analytics"
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(lake / "metrics", ignore_errors=True)
    bms.run_analytics(lake, DAY - timedelta(days=1), state_root=state)  # state for DAY

    floor, floor_cpu = min(floor_seconds(lake) for _ in range(2))
    t, c = time.perf_counter(), cpu_seconds()
    s = bms.run_analytics(lake, DAY, state_root=state)
    day1, day1_cpu = time.perf_counter() - t, cpu_seconds() - c
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    year_of_history(state, "bench", [_vin(i) for i in range(args.vehicles)])
    t = time.perf_counter()
    bms.run_analytics(lake, DAY, state_root=state)
    day365 = time.perf_counter() - t
    cells = s.readings * 96
    print(f"fleet-day: {args.vehicles} vehicles, {s.readings:,} readings, {cells:,} cell values")
    print(f"floor (DuckDB scan of every cell value): {floor:.2f} s, CPU {floor_cpu:.2f} s")
    print(f"analyze: {day1:.2f} s  ratio {day1 / floor:.2f} (goal <= 3)")
    print(f"analyze CPU: {day1_cpu:.2f} s  ratio {day1_cpu / floor_cpu:.2f} (CPU over CPU)")
    print(f"peak memory (max RSS): {peak_mb:.0f} MB")
    print(f"day 365 / day 1: {day365:.2f} / {day1:.2f} s = {day365 / day1:.2f} (goal <= 1.3)")


if __name__ == "__main__":
    main()
