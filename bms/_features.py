"""Anomaly features: one row per vehicle and day, built on the analytics outputs.

Cell-level inputs (``metrics/cell_day``: deviation from the pack median at rest,
self-discharge over rests, sag under load relative to the pack, resistance relative to
the median cell) are condensed over a trailing window by ``sql/anomaly_cell_window.sql``
and then made comparable across packs of any size and chemistry: each cell's value
becomes a robust z-score within its own pack (median and MAD of the pack's cells, the MAD
floored at a physical noise level), and the pack's worst cell in the harmful direction is
kept, minus the value expected for the worst of ``n`` healthy cells (Blom's
approximation of the expected maximum of ``n`` standard normals; Blom 1958, *Statistical
Estimates and Transformed Beta-Variables*, Wiley). The worst cell's index and its
physical value travel with the row as evidence.

Vehicle-level inputs are compared with the vehicle's own past and with the fleet on the
same day (a double difference that removes season, climate and usage): the hottest
sensor and the day's temperature rise (``metrics/vehicle_day``; against the vehicle's
thermal peers: same class, similar climate and use), the fade of state of health and
the growth of resistance over 30 days (``metrics/vehicle_soh``). Temperature
sensor health (values missing, stuck, jittering; rise at rest relative to the pack)
comes straight from telemetry (``sql/anomaly_sensor_day.sql``): the analytics tables do
not carry it.

The pure functions here take and return arrays; ``build_features`` does the I/O.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from importlib import resources
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bms._duck import duckdb_connect, set_double_variables, vin_groups
from bms._lake import holds_unique_readings, write_parquet_atomic
from bms._ocv import CHEMISTRIES, OCV_TABLES_V, ocv_slope_mv_per_pct, soc_pct_from_ocv_v

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: 1.4826 x MAD estimates sigma for normal data (Rousseeuw & Croux 1993, JASA 88, 1273).
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class CellFeature:
    """A per-cell input condensed into a worst-cell feature.

    ``direction``: ``neg`` (low values are bad), ``pos`` (high values are bad) or ``abs``.
    ``floor``: smallest pack scale (sigma) used, in the input's unit, so a pack of
    identical cells does not turn a 1 mV wobble into a huge z-score.
    """

    name: str  # feature name (a robust z, dimensionless)
    source: str  # column of the cell window table
    evidence: str  # column of the worst cell's value minus the pack median
    unit: str
    direction: str
    floor: float


#: Cell features, with their noise floors (assumed: about the resolution of the
#: underlying measurement: 1 mV cell voltage LSB, 1 % resistance).
CELL_FEATURES: tuple[CellFeature, ...] = (
    CellFeature(
        "self_discharge_z",
        "self_discharge_mv_per_day",
        "self_discharge_rel_mv_per_day",
        "mV/day",
        "neg",
        0.3,
    ),
    CellFeature("rest_dev_z", "rest_dev_mv", "rest_dev_rel_mv", "mV", "abs", 1.0),
    CellFeature(
        "rest_dev_trend_z",
        "rest_dev_trend_mv_per_day",
        "rest_dev_trend_rel_mv_per_day",
        "mV/day",
        "abs",
        0.15,
    ),
    CellFeature("sag_z", "sag_mv", "sag_rel_mv", "mV", "neg", 1.0),
    CellFeature("resistance_z", "resistance_dev_pct", "resistance_rel_pct", "%", "pos", 1.5),
    # a cell losing capacity is the pack's lowest more and more often (low SoC first)
    CellFeature("min_share_z", "min_cell_share", "min_share_rel", "-", "pos", 0.05),
    # ... and swings wider in SoC than its pack: the slope of its SoC offset against the
    # pack's SoC, in % per 100 % (about its capacity deficit), from telemetry at rest
    # (the smaller of the fits over the two halves of the window);
    # manufacturing capacity spread is 0.2-0.3 % sigma (science.md 3), the floor covers
    # the fit's own scatter (0.5-1 % on the simulated fleet)
    CellFeature("swing_z", "swing_pct", "swing_rel_pct", "%", "pos", 0.5),
    # ... and its SoC offset from the pack at rest moving, from the older to the recent
    # half of the swing window: the drift of ``rest_dev_trend_z`` read off the OCV curve
    # (``soc_offset_pct``), so that a fixed imbalance read at rest SoCs where the curve
    # is flatter or steeper (the LFP plateau: ~0.5 mV per % SoC against ~37 near full,
    # science.md 1) does not fake one. NaN where fewer than half the pack's cells have
    # an offset in both halves. Floor: healthy simulated packs' cells scatter by 0.02-0.06 %
    # (median-p90 of the pack sigma, 0.16 % at p99; seed 5, five dates), a soft short
    # drains 0.6-1.5 %/day (science.md 3).
    CellFeature("soc_drift_z", "soc_offset_change_pct", "soc_drift_rel_pct", "%", "abs", 0.1),
)

#: Vehicle-level features and their units.
VEHICLE_FEATURES: dict[str, str] = {
    "spread_growth_z": "-",
    "soc_spread_growth_z": "-",
    # the model's view of a cell drifting away from its pack: in SoC where the OCV curve
    # gives the pack's offsets (``soc_drift_z``, ``soc_spread_growth_z``), else in mV
    # (``rest_dev_trend_z``, ``spread_growth_z``)
    "drift_z": "z",
    "drift_growth_z": "-",
    "temp_max_excess_c": "degC",
    "temp_rise_excess_c": "degC",
    "soh_drop_excess_pct": "%",
    "resistance_growth_excess_pct": "%",
    "sensor_invalid_share": "-",
    "sensor_stuck": "-",
    "sensor_jitter_excess_c": "degC",
    "rest_rise_c_per_h": "degC/h",
    "dc_fast_share": "-",
    "hours_soc_above_90": "h",
    "hours_temp_above_45c": "h",
}

#: Every feature column (model candidates) with its unit.
FEATURE_UNITS: dict[str, str] = {
    **{f.name: "z" for f in CELL_FEATURES},
    **VEHICLE_FEATURES,
}

#: Physical evidence columns of the worst cell: feature -> (column, unit).
CELL_EVIDENCE: dict[str, tuple[str, str]] = {f.name: (f.evidence, f.unit) for f in CELL_FEATURES}

CELL_INDEX = {f.name: f.name.removesuffix("_z") + "_cell" for f in CELL_FEATURES}

FEATURES_SCHEMA = pa.schema(
    [
        pa.field("vin", pa.string(), nullable=False),
        pa.field("chemistry", pa.string()),
        pa.field("n_cells", pa.int16()),
        pa.field("has_cell_data", pa.bool_(), nullable=False),
        pa.field("window_days", pa.int16(), nullable=False),
        *[pa.field(name, pa.float64()) for name in FEATURE_UNITS],
        *[pa.field(CELL_INDEX[f.name], pa.int16()) for f in CELL_FEATURES],
        *[pa.field(CELL_EVIDENCE[f.name][0], pa.float64()) for f in CELL_FEATURES],
        pa.field("rest_dev_soc_pct", pa.float64()),
        pa.field("rest_dev_soc_change_pct", pa.float64()),
        pa.field("resistance_steps", pa.float64()),
        pa.field("cooling_lag_h", pa.float64()),
        pa.field("cooling_lag_z", pa.float64()),
        pa.field("temp_c_max", pa.float64()),
        pa.field("invalid_sensor", pa.int16()),
        pa.field("stuck_sensor", pa.int16()),
        pa.field("stuck_value_c", pa.float64()),
        pa.field("temp_reading_max_c", pa.float64()),
        pa.field("temp_reading_sensor", pa.int16()),
        pa.field("temp_held_max_c", pa.float64()),
        pa.field("temp_held_other_c", pa.float64()),
        pa.field("jitter_sensor", pa.int16()),
        pa.field("rest_rise_sensor", pa.int16()),
    ],
    metadata={
        b"fleetbms.table": b"anomaly_features",
        b"fleetbms.version": b"10",
    },
)


# --------------------------------------------------------------------------- science


def expected_max_z(n: npt.ArrayLike, two_sided: bool = False) -> FloatArray:
    r"""Expected largest of ``n`` standard normal values (Blom's approximation). [-]

    :math:`E[\max] \approx \Phi^{-1}((n - 0.375) / (n + 0.25))`; for the largest
    absolute value, the largest of ``2n`` is used as an approximation.
    """
    nn = np.asarray(n, dtype=np.float64) * (2.0 if two_sided else 1.0)
    nd = NormalDist()
    out = np.zeros_like(nn)
    ok = nn >= 2
    out[ok] = [nd.inv_cdf((k - 0.375) / (k + 0.25)) for k in nn[ok]]
    return out


def pack_robust_z(values: FloatArray, floor: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    r"""Robust z-score of each cell within its pack.

    Parameters
    ----------
    values : ndarray, shape (packs, cells)
        One row per pack, NaN where a cell has no value (or the pack is shorter).
    floor : float
        Smallest scale used, in the unit of ``values``.

    Returns
    -------
    z, median, scale : ndarray
        ``z = (x - median) / max(1.4826 MAD, floor)`` (NaN where x is NaN), and the
        per-pack median and scale.
    """
    with np.errstate(all="ignore"):
        # An infinite value (a ratio over a zero) says nothing about the cell: no value.
        values = np.where(np.isfinite(values), values, np.nan)
        has = np.any(~np.isnan(values), axis=1)
        med = np.full(len(values), np.nan)
        mad = np.full(len(values), np.nan)
        if np.any(has):
            med[has] = np.nanmedian(values[has], axis=1)
            mad[has] = np.nanmedian(np.abs(values[has] - med[has, None]), axis=1)
        scale = np.maximum(MAD_TO_SIGMA * mad, floor)
        z = (values - med[:, None]) / scale[:, None]
    return z, med, scale


def worst_cell(z: FloatArray, n_cells: FloatArray, direction: str) -> tuple[FloatArray, IntArray]:
    """Worst cell of each pack: its adjusted badness and its index (-1 if none).

    Badness is ``-z`` (``neg``), ``z`` (``pos``) or ``|z|`` (``abs``), minus the expected
    worst of ``n_cells`` healthy cells, so packs of 14 and of 200 cells compare.
    """
    if direction == "neg":
        bad = -z
    elif direction == "pos":
        bad = z.copy()
    elif direction == "abs":
        bad = np.abs(z)
    else:
        raise ValueError(f"unknown direction {direction!r}; valid: neg, pos, abs")
    filled = np.where(np.isnan(bad), -np.inf, bad)
    idx = np.argmax(filled, axis=1) if filled.shape[1] else np.zeros(len(z), dtype=np.int64)
    rows = np.arange(len(z))
    best = filled[rows, idx] if filled.shape[1] else np.full(len(z), -np.inf)
    ok = np.isfinite(best)
    adj = best - expected_max_z(n_cells, two_sided=direction == "abs")
    return np.where(ok, adj, np.nan), np.where(ok, idx, -1).astype(np.int64)


def _nan_range(values: FloatArray) -> FloatArray:
    """Max minus min of each row ignoring NaN; NaN for an all-NaN or empty row."""
    if values.shape[1] == 0:
        return np.full(len(values), np.nan)
    return np.asarray(np.fmax.reduce(values, axis=1) - np.fmin.reduce(values, axis=1))


def excess_over_own_and_fleet(
    today: FloatArray, baseline: FloatArray, group: npt.NDArray[np.int64] | None = None
) -> FloatArray:
    """Double difference: (today - own baseline) - median of the same over the vehicle's
    peer group (``group``: one label per vehicle; default one group). [unit of x]"""
    own = today - baseline
    groups = np.zeros(len(own), dtype=np.int64) if group is None else group
    out = np.full(len(own), np.nan)
    for g in np.unique(groups):
        sel = groups == g
        vals = own[sel]
        ok = ~np.isnan(vals)
        peer = float(np.median(vals[ok])) if np.any(ok) else 0.0
        out[sel] = vals - peer
    return out


def nearest(values: FloatArray, n: int) -> list[IntArray]:
    """For each element, the indices of the ``n`` elements (itself included) whose value
    is nearest its own (all of them if there are no more); NaNs are each other's.

    In sorted order the ``n`` nearest are a window around the element: of the windows
    that hold it, the one with the smallest sum of distances to it.
    """
    out: list[IntArray] = [np.zeros(0, dtype=np.int64)] * len(values)
    nan = np.flatnonzero(np.isnan(values))
    for i in nan:
        out[i] = nan
    order = np.flatnonzero(~np.isnan(values))
    order = order[np.argsort(values[order], kind="stable")]
    u = values[order]
    m = len(order)
    k = min(n, m)
    if m == 0:
        return out
    pos = np.arange(m)
    lo = np.clip(pos[:, None] - np.arange(k)[None, :], 0, m - k)  # candidate window starts
    c = np.r_[0.0, np.cumsum(u - u[0])]  # prefix sums, shifted for precision
    x = (u - u[0])[:, None]
    p = pos[:, None]
    below = (p - lo) * x - (c[p] - c[lo])  # distances to the window's values below ...
    above = (c[lo + k] - c[p + 1]) - (lo + k - 1 - p) * x  # ... and above the element
    best = lo[pos, np.argmin(below + above, axis=1)]
    for i, window in zip(order, order[best[:, None] + np.arange(k)[None, :]], strict=True):
        out[i] = window
    return out


def excess_over_own_and_peers(
    today: FloatArray,
    baseline: FloatArray,
    vehicle_class: Sequence[str],
    baseline_c: FloatArray,
    use_efc_per_day: FloatArray,
    *,
    n_climate: int = 36,
    n_peers: int = 9,
) -> FloatArray:
    """Double difference for temperatures: (today - own baseline) minus the median of the
    same over the vehicle's thermal peers. [unit of x]

    A pack's daily maximum follows the ambient temperature only as far as the ambient
    sets it: parked, or driven lightly, it warms and cools with the weather; driven or
    fast-charged hard under an active cooling loop, it sits near the loop's setpoint
    plus its own Joule heat over the loop's conductance, whatever the weather. When the
    season cools, the first kind's maximum falls with it and the second's does not (on
    a simulated fleet in September, commuter cars' fell by 4 degC while taxis' stayed at
    39-40 degC on fast-charging days), so each vehicle is compared with its own kind,
    among the vehicles with a value today: of the same ``vehicle_class`` (the cooling
    hardware), the ``n_climate`` nearest in climate (baseline night temperature
    ``baseline_c`` [degC]: vehicles in one climate warm and cool with the seasons alike)
    and of those the ``n_peers`` nearest in use
    (``use_efc_per_day``: equivalent full cycles a day, the heat generated per unit of
    heat capacity [1/d]). Nearest neighbours rather than quantile bins, whose edges
    would split a climate or a kind of use (bins split the simulated fleet's mild-climate
    two-wheelers and set half of them 5 degC off in September).
    """
    own = today - baseline
    classes = np.asarray(vehicle_class, dtype=object)
    out = np.full(len(own), np.nan)
    has = ~np.isnan(own)
    for cls in sorted(set(classes[has].tolist())):
        members = np.flatnonzero(has & (classes == cls))
        use = use_efc_per_day[members]
        pools = nearest(baseline_c[members], n_climate)
        # vehicles whose pools are of one size (all but those without a baseline) at once
        sizes = np.array([len(p) for p in pools])
        for size in np.unique(sizes):
            rows = np.flatnonzero(sizes == size)
            pool = np.stack([pools[r] for r in rows])  # (rows, size) indices into members
            gap = np.abs(use[pool] - use[rows, None])
            no_use = np.isnan(use[rows])
            gap[no_use] = np.where(np.isnan(use[pool[no_use]]), 0.0, np.inf)
            near = np.argsort(np.nan_to_num(gap, nan=np.inf), axis=1, kind="stable")
            peers = np.take_along_axis(pool, near[:, :n_peers], axis=1)
            out[members[rows]] = own[members[rows]] - np.median(own[members[peers]], axis=1)
    return out


# --------------------------------------------------------------------------- I/O


def _sql(name: str) -> str:
    return resources.files("bms").joinpath("sql", name).read_text(encoding="utf-8")


def partition_files(lake_root: Path, table: str, days: Sequence[date], fleet: str) -> list[Path]:
    """Existing ``<table>/date=D/fleet=F/*.parquet`` files of the given dates.

    ``table`` is a path under the lake root, e.g. ``metrics/cell_day``.
    """
    out: list[Path] = []
    for d in sorted(days):
        out += sorted(
            (lake_root / table / f"date={d.isoformat()}" / f"fleet={fleet}").glob("*.parquet")
        )
    return out


def read_partitions(
    lake_root: Path,
    table: str,
    days: Sequence[date],
    fleet: str,
    columns: Sequence[str],
    cache: FeatureCache | None = None,
) -> pa.Table:
    """Columns of a lake table over some dates, with a ``date`` column (date32).

    ``cache``: reuse the rows of a file read for an earlier date of a catch-up (while the
    file keeps its size and modification time).
    """
    parts = []
    for path in partition_files(lake_root, table, days, fleet):
        d = date.fromisoformat(path.parent.parent.name.removeprefix("date="))
        key = (path, tuple(columns))
        st = path.stat()
        hit = cache.tables.get(key) if cache is not None else None
        if hit is not None and hit[:2] == (st.st_size, st.st_mtime_ns):
            parts.append(hit[3])
            continue
        t = pq.read_table(path)
        missing = [c for c in columns if c not in t.column_names]
        for c in missing:
            t = t.append_column(c, pa.nulls(t.num_rows, pa.float64()))
        t = t.select(list(columns))
        t = t.append_column("date", pa.array([d] * t.num_rows, pa.date32()))
        if cache is not None:
            cache.tables[key] = (st.st_size, st.st_mtime_ns, d, t)
        parts.append(t)
    if not parts:
        return pa.table(
            {**{c: pa.array([], pa.float64()) for c in columns}, "date": pa.array([], pa.date32())}
        )
    return pa.concat_tables(parts, promote_options="permissive")


def _sql_paths(paths: Sequence[Path]) -> str:
    """A DuckDB list literal of file paths (views cannot take prepared parameters)."""
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


#: The telemetry jobs of the anomaly stage unnest every temperature or cell value of the
#: rows they read; they run vehicle group by vehicle group of about this many readings so
#: their memory does not grow with the fleet (1.5 GB for 100 vehicles in one piece).
_GROUP_READINGS = 400_000


def _telemetry_job(
    files: Sequence[Path],
    sql_file: str,
    tables: Mapping[str, pa.Table],
    variables: Mapping[str, float],
    con: Any = None,
    *,
    threads: int = 1,
    group_readings: int = _GROUP_READINGS,
) -> pa.Table:
    """Run ``sql_file`` (a job that works per vehicle and orders its rows by ``vin``
    first) over view ``tele`` of ``files`` with ``tables`` registered and ``variables``
    set (DOUBLE), one VIN range at a time; the concatenation holds what one run over every
    vehicle would (to the last bits of a floating-point sum: the plan of a group's joins
    depends on its size, so the groups are a function of the partition's readings only).
    ``con``: a connection of ``_connect`` to use (default: a new one); ``threads``: DuckDB
    threads for this job (more than 1 only for a job whose result does not depend on the
    order rows are added in); ``group_readings``: readings per VIN group (about).

    A job on one thread (its floating-point sums depend on the order rows are added in)
    runs its VIN groups two at a time instead, each on a single-threaded connection of
    its own (``con`` and a second one): every group is computed as it would be alone,
    so the result is the same bytes, and both cores work.
    """
    own = con is None
    if own:
        con = _connect()
    unique = holds_unique_readings(files)
    sql = _sql(sql_file)
    source = f"read_parquet({_sql_paths(files)})"

    def prepare(c: Any) -> None:
        for name, table in tables.items():
            c.register(name, table)
        set_double_variables(c, variables)
        # the jobs skip their deduplicating sort of every reading where they may, and
        # on one thread read a compacted partition's rows in its (vin, ts, seq) order
        one_thread = c.sql("SELECT current_setting('threads')").fetchall()[0][0] == 1
        c.execute(f"SET VARIABLE dedup = {not unique}")
        c.execute(f"SET VARIABLE in_order = {unique and one_thread}")

    def run(c: Any, group: tuple[str, str]) -> pa.Table:
        lo, hi = (v.replace("'", "''") for v in group)
        c.execute(
            f"CREATE OR REPLACE VIEW tele AS SELECT * FROM {source} "
            f"WHERE vin BETWEEN '{lo}' AND '{hi}'"
        )
        return c.sql(sql).to_arrow_table()

    def release(c: Any) -> None:
        c.execute("DROP VIEW IF EXISTS tele")
        for name in tables:
            c.unregister(name)

    try:
        if threads != 1:
            con.execute(f"SET threads = {int(threads)}")
        prepare(con)
        counts = con.sql(f"SELECT vin, count(*) FROM {source} GROUP BY vin ORDER BY vin").fetchall()
        groups = vin_groups([(str(v), int(n)) for v, n in counts], group_readings) or [
            ("", "\uffff")
        ]
        if threads != 1 or len(groups) == 1:
            parts = [run(con, g) for g in groups]
        else:
            parts = _two_at_a_time(groups, con, prepare, run)
    finally:
        if own:
            con.close()
        else:
            release(con)
            if threads != 1:
                con.execute("SET threads = 1")
    return pa.concat_tables(parts)


def _two_at_a_time(
    groups: Sequence[tuple[str, str]],
    con: Any,
    prepare: Callable[[Any], None],
    run: Callable[[Any, tuple[str, str]], pa.Table],
) -> list[pa.Table]:
    """``run(connection, group)`` for every group, in two threads: one on ``con``, one on
    a second single-threaded connection; the results in the order of ``groups``."""
    results: list[pa.Table | None] = [None] * len(groups)
    lock = threading.Lock()
    pending = iter(range(len(groups)))

    def work(c: Any) -> None:
        while True:
            with lock:
                i = next(pending, None)
            if i is None:
                return
            results[i] = run(c, groups[i])

    second = _connect()
    try:
        prepare(second)
        with ThreadPoolExecutor(max_workers=1) as pool:
            other = pool.submit(work, second)
            work(con)
            other.result()
    finally:
        second.close()
    return [r for r in results if r is not None]


def _connect() -> Any:
    """DuckDB on one thread: parallel aggregation would add floating-point sums in a
    varying order, and a rerun must give byte-identical features."""
    return duckdb_connect(threads=1, preserve_insertion_order=True)


@dataclass
class FeatureCache:
    """What a catch-up over consecutive dates reuses from one date to the next.

    ``swing``: each day's per-cell swing sums (``cell_swing`` drops the days older than
    its window); ``tables``: the rows read from each metrics file, keyed by file and
    columns, with the file's size and modification time they were read at, and its date;
    ``con``: one DuckDB connection for every job of the run (opening one costs ~30 ms,
    and its first query as much again); ``day_store``: a folder keeping the per-day sums
    of the telemetry for later runs (``swing_day``, ``diurnal_day``; none: not kept).
    ``close`` when done.
    """

    swing: dict[tuple[str, date], pa.Table] = field(default_factory=dict)
    diurnal: dict[tuple[str, date], pa.Table] = field(default_factory=dict)
    tables: dict[tuple[Path, tuple[str, ...]], tuple[int, int, date, pa.Table]] = field(
        default_factory=dict
    )
    con: Any = None
    day_store: Path | None = None

    def connection(self) -> Any:
        if self.con is None:
            self.con = _connect()
        return self.con

    def trim(self, keep_after: date) -> None:
        """Forget the tables of dates before ``keep_after``."""
        for key in [k for k, v in self.tables.items() if v[2] < keep_after]:
            del self.tables[key]

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None


def cell_window(
    lake_root: Path,
    day: date,
    fleet: str,
    *,
    smooth_days: int,
    trend_days: int,
    con: Any = None,
) -> pa.Table:
    """Per (vin, cell): the cell_day inputs condensed over the trailing window.

    ``con``: a connection of ``_connect`` to use (default: a new one)."""
    days = [day - timedelta(days=k) for k in range(trend_days)]
    files = partition_files(lake_root, "metrics/cell_day", days, fleet)
    own = con is None
    if own:
        con = _connect()
    try:
        if files:
            con.execute(
                f"CREATE VIEW cell_day AS SELECT * FROM read_parquet({_sql_paths(files)},"
                " hive_partitioning = true, union_by_name = true,"
                " hive_types = {'date': DATE, 'fleet': VARCHAR})"
            )
        else:
            con.execute(
                "CREATE VIEW cell_day AS SELECT NULL::VARCHAR AS vin, NULL::SMALLINT AS cell,"
                " NULL::SMALLINT AS n_cells, NULL::DOUBLE AS rest_dev_mv, NULL::BIGINT AS n_rest,"
                " NULL::DOUBLE AS self_discharge_mv_per_day, NULL::DOUBLE AS self_discharge_hours,"
                " NULL::DOUBLE AS sag_mv, NULL::BIGINT AS n_load,"
                " NULL::DOUBLE AS resistance_dev_pct, NULL::BIGINT AS n_steps,"
                " NULL::DOUBLE AS temp_dev_c, NULL::DOUBLE AS min_cell_share,"
                " NULL::DATE AS date WHERE false"
            )
        for name, value in (
            ("day_num", (day - date(1970, 1, 1)).days),
            ("smooth_days", smooth_days),
            ("trend_days", trend_days),
        ):
            con.execute(f"SET VARIABLE {name} = {int(value)}")
        table: pa.Table = con.sql(_sql("anomaly_cell_window.sql")).to_arrow_table()
    finally:
        if own:
            con.close()
        else:
            con.execute("DROP VIEW IF EXISTS cell_day")
    return table


def sensor_day(
    lake_root: Path,
    day: date,
    fleet: str,
    registry: pa.Table,
    *,
    rest_c_rate: float,
    default_capacity_ah: float,
    rest_min_s: float,
    settle_s: float,
    con: Any = None,
) -> pa.Table:
    """Per (vin, temperature sensor) health figures of one day, from telemetry.

    ``con``: a connection of ``_connect`` to use (default: a new one)."""
    files = partition_files(lake_root, "telemetry", [day], fleet)
    if not files:
        return pa.table(
            {
                "vin": pa.array([], pa.string()),
                "sensor": pa.array([], pa.int16()),
                "n_readings": pa.array([], pa.int64()),
                "n_valid": pa.array([], pa.int64()),
                "range_c": pa.array([], pa.float64()),
                "max_c": pa.array([], pa.float64()),
                "held_max_c": pa.array([], pa.float64()),
                "pack_range_c": pa.array([], pa.float64()),
                "dev_mean_c": pa.array([], pa.float64()),
                "jitter_c": pa.array([], pa.float64()),
                "rest_rise_c_per_h": pa.array([], pa.float64()),
                "pack_rest_rise_c_per_h": pa.array([], pa.float64()),
            }
        )
    reg = (
        registry.select(["vin", "capacity_ah"])
        if registry.num_rows
        else pa.table({"vin": pa.array([], pa.string()), "capacity_ah": pa.array([], pa.float64())})
    )
    return _telemetry_job(
        files,
        "anomaly_sensor_day.sql",
        {"registry": reg},
        {
            "rest_c_rate": rest_c_rate,
            "default_capacity_ah": default_capacity_ah,
            "rest_min_s": rest_min_s,
            "settle_s": settle_s,
        },
        con,
    )


#: Columns of ``sql/anomaly_swing_day.sql`` that add up over days.
SWING_SUMS = ("n", "w", "wx", "wxx", "wy", "wxy")


def ocv_lookup_tables() -> tuple[pa.Table, pa.Table]:
    """The OCV curves (``bms._ocv``) as the lookup tables of ``anomaly_swing_day.sql``.

    ``ocv_lut``: SoC and local slope at every whole mV from 0 to 5,000 (slope 0 outside
    the curve, where the SoC is clipped and says nothing); ``ocv_bins``: the slope of
    each 5 % SoC segment.
    """
    mv = np.arange(0, 5001, dtype=np.int32)
    luts, bins = [], []
    for chem in CHEMISTRIES:
        table = OCV_TABLES_V[chem]
        volts = mv / 1000.0
        soc = soc_pct_from_ocv_v(volts, chem)
        inside = (volts >= table[0]) & (volts <= table[-1])
        luts.append(
            pa.table(
                {
                    "chemistry": pa.array([chem] * len(mv), pa.string()),
                    "mv": pa.array(mv, pa.int32()),
                    "soc_pct": pa.array(soc, pa.float64()),
                    "slope_mv_per_pct": pa.array(
                        np.where(inside, ocv_slope_mv_per_pct(soc, chem), 0.0), pa.float64()
                    ),
                }
            )
        )
        seg = np.diff(table) * 1000.0 / 5.0
        bins.append(
            pa.table(
                {
                    "chemistry": pa.array([chem] * len(seg), pa.string()),
                    "bin": pa.array(np.arange(len(seg)), pa.int64()),
                    "slope_mv_per_pct": pa.array(seg, pa.float64()),
                }
            )
        )
    return pa.concat_tables(luts), pa.concat_tables(bins)


#: Days of per-day sums ``_stored_day`` keeps before the one it writes.
_DAY_SUMS_KEEP_DAYS = 60


def _stored_day(
    store: Path | None,
    sql_file: str,
    day: date,
    fleet: str,
    files: Sequence[Path],
    tables: Mapping[str, pa.Table],
    variables: Mapping[str, float],
    run: Callable[[], pa.Table],
) -> pa.Table:
    """``run()``, the per-day job ``sql_file`` of (``day``, ``fleet``), or its result kept
    under ``store`` by an earlier run for the same inputs.

    The features of a date fit windows of the last two weeks, so each night would
    otherwise read fourteen days of telemetry to add one. A kept result is valid for the
    digest it was written with: the job's SQL, its variables and tables, and the name,
    size and modification time of each telemetry file (late data, compaction and erasure
    change them); one file per (job, date, fleet), replaced when the inputs change, and
    removed once ``_DAY_SUMS_KEEP_DAYS`` older than the newest written.
    """
    if store is None:
        return run()
    h = hashlib.sha256(_sql(sql_file).encode())
    h.update(repr(sorted(variables.items())).encode())
    for name in sorted(tables):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, tables[name].schema) as w:
            w.write_table(tables[name])
        h.update(name.encode() + hashlib.sha256(sink.getvalue()).digest())
    for f in sorted(files):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    key = h.hexdigest().encode()
    path = store / Path(sql_file).stem / f"date={day.isoformat()}" / f"fleet={fleet}.parquet"
    if path.is_file():
        kept = pq.read_table(path)
        if (kept.schema.metadata or {}).get(b"fleetbms.inputs") == key:
            return kept.replace_schema_metadata(None)
    table = run()
    write_parquet_atomic(table.replace_schema_metadata({b"fleetbms.inputs": key}), path)
    # Keep a few windows' worth: older days are recomputed if a rescoring asks for them.
    cutoff = day - timedelta(days=_DAY_SUMS_KEEP_DAYS)
    for old in path.parent.parent.glob(f"date=*/fleet={fleet}.parquet"):
        try:
            old_day = date.fromisoformat(old.parent.name.removeprefix("date="))
        except ValueError:
            continue
        if old_day < cutoff:
            old.unlink()
            if not any(old.parent.iterdir()):
                old.parent.rmdir()
    return table


def swing_day(
    lake_root: Path,
    day: date,
    fleet: str,
    vehicles: pa.Table,
    *,
    rest_c_rate: float,
    default_capacity_ah: float,
    con: Any = None,
    store: Path | None = None,
) -> pa.Table:
    """Per (vin, cell) of one day: the weighted sums of the SoC-swing fit (``SWING_SUMS``).

    ``vehicles``: vin, chemistry, capacity_ah of the vehicles to fit (others are left out);
    ``con``: a connection of ``_connect`` to use (default: a new one); ``store``: a folder
    keeping the result for later runs (``_stored_day``).
    """
    files = partition_files(lake_root, "telemetry", [day], fleet)
    if not files or vehicles.num_rows == 0:
        return pa.table(
            {
                "vin": pa.array([], pa.string()),
                "cell": pa.array([], pa.int16()),
                **{c: pa.array([], pa.int64() if c == "n" else pa.float64()) for c in SWING_SUMS},
            }
        )
    lut, bins = ocv_lookup_tables()
    tables = {"vehicles": vehicles, "ocv_lut": lut, "ocv_bins": bins}
    variables = {"rest_c_rate": rest_c_rate, "default_capacity_ah": default_capacity_ah}
    return _stored_day(
        store,
        "anomaly_swing_day.sql",
        day,
        fleet,
        files,
        tables,
        variables,
        lambda: _telemetry_job(files, "anomaly_swing_day.sql", tables, variables, con),
    )


def swing_from_sums(sums: pa.Table, min_soc_sd_pct: float, min_days: int = 1) -> pa.Table:
    """Per (vin, cell): the swing of the cell, from ``SWING_SUMS`` added over the window
    (and ``days``, the number of days with readings at rest, if present).

    ``swing_pct`` is the weighted least-squares slope of the cell's SoC minus the pack's
    against the pack's SoC, times 100 [% per 100 % SoC]: about ``C_pack / C_cell - 1``
    for a cell of capacity ``C_cell`` (its SoC moves that much more for the same charge).
    NaN when the pack's SoC varied by less than ``min_soc_sd_pct`` (weighted standard
    deviation) over the window, or with fewer than ``min_days`` days of data: a slope
    over a narrow range or over the first day or two of a vehicle is noise.
    ``soc_offset_pct`` is the weighted mean of the cell's SoC minus the pack's [%]: its
    imbalance read where the OCV curve is readable (NaN without readings at rest).
    """
    w, wx, wxx, wy, wxy = (_col(sums, c) for c in SWING_SUMS[1:])
    days = _col(sums, "days") if "days" in sums.column_names else np.full(sums.num_rows, np.inf)
    with np.errstate(all="ignore"):
        spread = w * wxx - wx * wx  # W^2 x weighted variance of x
        slope = 100.0 * (w * wxy - wx * wy) / spread
        sd = np.sqrt(np.maximum(spread, 0.0)) / w
        offset = wy / w
    ok = (w > 0) & (sd >= min_soc_sd_pct) & (days >= min_days)
    return pa.table(
        {
            "vin": sums["vin"],
            "cell": sums["cell"],
            "swing_pct": pa.array(np.where(ok, slope, np.nan), pa.float64(), from_pandas=True),
            "swing_soc_sd_pct": pa.array(np.where(w > 0, sd, np.nan), pa.float64()),
            "soc_offset_pct": pa.array(np.where(w > 0, offset, np.nan), pa.float64()),
        }
    )


def _window_parts(
    days: Sequence[date],
    fleet: str,
    cache: dict[tuple[str, date], pa.Table] | None,
    make: Callable[[date], pa.Table],
) -> list[pa.Table]:
    """The per-day tables of a trailing window, oldest first: from ``cache`` where it has
    them, else ``make(day)`` (kept in it for the next dates of a catch-up); the cache then
    forgets the fleet's dates older than the window."""
    parts = []
    for d in sorted(days):
        part = cache.get((fleet, d)) if cache is not None else None
        if part is None:
            part = make(d)
            if cache is not None:
                cache[(fleet, d)] = part
        parts.append(part)
    if cache is not None:
        for key in [k for k in cache if k[0] == fleet and k[1] < min(days)]:
            del cache[key]
    return parts


def cell_swing(
    lake_root: Path,
    day: date,
    fleet: str,
    vehicles_of: dict[date, pa.Table],
    *,
    window_days: int,
    min_soc_sd_pct: float,
    min_days: int = 1,
    rest_c_rate: float,
    default_capacity_ah: float,
    cache: dict[tuple[str, date], pa.Table] | None = None,
    con: Any = None,
    store: Path | None = None,
) -> pa.Table:
    """Per (vin, cell): the SoC swing (``swing_from_sums``) over the recent half of the
    trailing ``window_days`` (``swing_pct``) and over the older half (``swing_early_pct``),
    and the cell's SoC offset from its pack over each half (``soc_offset_pct``,
    ``soc_offset_early_pct``).

    ``vehicles_of[d]``: the vehicles (vin, chemistry, capacity_ah) to fit on date ``d``;
    a cell needs ``min_days`` days with readings at rest in a half.
    ``cache`` keeps each day's sums for the next dates of a catch-up (days older than
    the window are dropped from it); ``vehicles_of`` needs only the days not in it.
    ``con``: a connection of ``_connect`` to use (default: a new one per day); ``store``:
    a folder keeping each day's sums for later runs (``swing_day``).
    """
    days = [day - timedelta(days=k) for k in range(window_days)]
    parts = _window_parts(
        days,
        fleet,
        cache,
        lambda d: swing_day(
            lake_root,
            d,
            fleet,
            vehicles_of[d],
            rest_c_rate=rest_c_rate,
            default_capacity_ah=default_capacity_ah,
            con=con,
            store=store,
        ),
    )
    # The window is fitted as two halves (older days first): a real loss of capacity
    # shows in both, one odd day (a deep discharge into an LFP knee) in one only.
    split = window_days - window_days // 2
    halves = (sorted(days)[:split], sorted(days)[split:])
    fits = []
    offsets = []
    for half_days in halves:
        half = [p for d, p in zip(sorted(days), parts, strict=True) if d in half_days]
        table = pa.concat_tables(half)
        table = table.append_column("days", pa.array(np.ones(table.num_rows, np.int64)))
        sums = table.group_by(["vin", "cell"], use_threads=False).aggregate(
            [(c, "sum") for c in (*SWING_SUMS, "days")]
        )
        sums = sums.rename_columns([c.removesuffix("_sum") for c in sums.column_names])
        fit = swing_from_sums(sums, min_soc_sd_pct, min_days)
        cells_half = _col(fit, "cell").astype(np.int64).tolist()
        keys_half = list(zip(_strs(fit, "vin"), cells_half, strict=True))
        fits.append(dict(zip(keys_half, _col(fit, "swing_pct").tolist(), strict=True)))
        offsets.append(dict(zip(keys_half, _col(fit, "soc_offset_pct").tolist(), strict=True)))
    early, recent = fits
    keys = sorted(set(early) | set(recent))
    return pa.table(
        {
            "vin": pa.array([k[0] for k in keys], pa.string()),
            "cell": pa.array([k[1] for k in keys], pa.int16()),
            "swing_pct": pa.array([recent.get(k, math.nan) for k in keys], pa.float64()),
            "swing_early_pct": pa.array([early.get(k, math.nan) for k in keys], pa.float64()),
            "soc_offset_pct": pa.array([offsets[1].get(k, math.nan) for k in keys], pa.float64()),
            "soc_offset_early_pct": pa.array(
                [offsets[0].get(k, math.nan) for k in keys], pa.float64()
            ),
        }
    )


#: Columns of ``sql/anomaly_diurnal_day.sql``: sums that add up over readings.
DIURNAL_SUMS = ("n", "sc", "ss", "scc", "sss", "scs", "st", "stc", "sts")


def diurnal_day(
    lake_root: Path,
    day: date,
    fleet: str,
    registry: pa.Table,
    *,
    rest_c_rate: float,
    default_capacity_ah: float,
    con: Any = None,
    store: Path | None = None,
) -> pa.Table:
    """Per vin of one day: the sums of the fit of the pack temperature at rest against the
    time of day (``DIURNAL_SUMS``, ``sql/anomaly_diurnal_day.sql``); ``store`` as in
    ``swing_day``."""
    files = partition_files(lake_root, "telemetry", [day], fleet)
    if not files:
        return pa.table(
            {
                "vin": pa.array([], pa.string()),
                **{c: pa.array([], pa.float64()) for c in DIURNAL_SUMS},
            }
        )
    tables = {"registry": registry.select(["vin", "capacity_ah"])}
    variables = {"rest_c_rate": rest_c_rate, "default_capacity_ah": default_capacity_ah}
    return _stored_day(
        store,
        "anomaly_diurnal_day.sql",
        day,
        fleet,
        files,
        tables,
        variables,
        lambda: _telemetry_job(
            files,
            "anomaly_diurnal_day.sql",
            tables,
            variables,
            con,
            threads=os.cpu_count() or 1,  # sums of whole numbers: any order, same bytes
        ),
    )


def diurnal_peak_hour(
    sums: Mapping[str, npt.ArrayLike], min_readings: int = 16, min_coverage: float = 0.05
) -> tuple[FloatArray, FloatArray]:
    """Time of day of the fitted daily maximum [h, UTC] and its amplitude [degC].

    ``sums``: ``DIURNAL_SUMS`` arrays (cosine and sine in 1/10,000, temperature in
    0.05 degC). The least-squares fit T = a + b cos(w t) + c sin(w t) peaks at
    atan2(c, b) / w. NaN with fewer than ``min_readings`` readings, or when the readings
    cover too little of the day to tell the phase (the determinant of the covariance of
    (cos, sin) below ``min_coverage``; 0.25 for readings spread over the whole day).
    """
    n, sc, ss, scc, sss, scs, st, stc, sts = (
        np.asarray(sums[c], dtype=np.float64) for c in DIURNAL_SUMS
    )
    with np.errstate(all="ignore"):
        k = 1e4
        mc, ms, mt = sc / n / k, ss / n / k, st / n
        vcc, vss, vcs = scc / n / k**2 - mc * mc, sss / n / k**2 - ms * ms, scs / n / k**2 - mc * ms
        ctc, cts = stc / n / k - mt * mc, sts / n / k - mt * ms  # covariances of T with cos, sin
        det = vcc * vss - vcs * vcs
        b = (ctc * vss - cts * vcs) / det
        c = (cts * vcc - ctc * vcs) / det
        ok = (n >= min_readings) & (det >= min_coverage)
        peak_h = np.mod(np.arctan2(c, b) * 24.0 / (2 * np.pi), 24.0)
        amp_c = np.hypot(b, c) / 20.0  # T in 0.05 degC
    return np.where(ok, peak_h, np.nan), np.where(ok, amp_c, np.nan)


def diurnal_lag(
    days: Sequence[pa.Table],
    vehicle_class: Mapping[str, str],
    min_peers: int = 5,
    min_days: int = 7,
) -> tuple[dict[str, float], dict[str, float]]:
    """Per vin: the median, over ``days`` (``diurnal_day`` tables), of how many hours its
    pack's daily temperature peak comes after that of its peers (vehicles of the same
    class, by circular mean of their peaks), for vehicles measured on at least
    ``min_days`` of them; and that lag in robust sigmas of its class's lags (MAD, with
    at least ``min_peers`` vehicles): cars, whose parked temperature also follows
    charging and a liquid loop, scatter by hours, two-wheelers by minutes.

    A parked pack follows the ambient cycle as a first-order low-pass, lagging it by
    atan(w tau) / w with tau = C / h its thermal time constant (heat capacity over
    conductance to ambient; w = 2 pi / 24 h): a pack whose cooling degrades lags more.
    The peers' peak stands in for the ambient one, which telemetry does not carry.
    """
    lags: dict[str, list[float]] = {}
    for t in days:
        if t.num_rows == 0:
            continue
        peak, _amp = diurnal_peak_hour({c: _col(t, c) for c in DIURNAL_SUMS})
        vins = _strs(t, "vin")
        classes = np.array([vehicle_class.get(v, "") for v in vins], dtype=object)
        ang = peak * 2 * np.pi / 24.0
        for cls in sorted(set(classes.tolist())):
            sel = (classes == cls) & np.isfinite(peak)
            if sel.sum() < min_peers:
                continue
            ref = math.atan2(float(np.sin(ang[sel]).mean()), float(np.cos(ang[sel]).mean()))
            diff = np.mod(peak[sel] - ref * 24.0 / (2 * np.pi) + 12.0, 24.0) - 12.0
            for v, d in zip((vins[i] for i in np.flatnonzero(sel)), diff, strict=True):
                lags.setdefault(v, []).append(float(d))
    lag_h = {v: float(np.median(x)) for v, x in lags.items() if len(x) >= min_days}
    z: dict[str, float] = {}
    for cls in sorted({vehicle_class.get(v, "") for v in lag_h}):
        mine = [v for v in lag_h if vehicle_class.get(v, "") == cls]
        if len(mine) < min_peers:
            continue
        x = np.array([lag_h[v] for v in mine])
        sigma = max(MAD_TO_SIGMA * float(np.median(np.abs(x - np.median(x)))), 0.05)
        z.update({v: lag_h[v] / sigma for v in mine})
    return lag_h, z


def read_registry(lake_root: Path, fleet: str) -> pa.Table:
    """The fleet's rows of ``registry/vehicles.parquet`` (empty table if none)."""
    path = lake_root / "registry" / "vehicles.parquet"
    cols = ["vin", "chemistry", "capacity_ah", "n_cells", "vehicle_class"]
    if not path.is_file():
        return pa.table(
            {
                "vin": pa.array([], pa.string()),
                "chemistry": pa.array([], pa.string()),
                "capacity_ah": pa.array([], pa.float64()),
                "n_cells": pa.array([], pa.int16()),
                "vehicle_class": pa.array([], pa.string()),
            }
        )
    t = pq.read_table(path)
    if "fleet" in t.column_names:
        t = t.filter(pc.equal(t["fleet"], fleet))
    if "vehicle_class" not in t.column_names:
        t = t.append_column("vehicle_class", pa.nulls(t.num_rows, pa.string()))
    return t.select(cols)


# --------------------------------------------------------------------------- assembly


@dataclass(frozen=True)
class FeatureParams:
    """Windows and telemetry thresholds of the feature builder."""

    smooth_days: int = 7  # cell inputs averaged over this many days [d]
    trend_days: int = 14  # deviation trend and spread growth over this many days [d]
    baseline_days: int = 28  # own baseline of temperatures over this many days [d]
    baseline_lag_days: int = 14  # ... ending this many days before the scored day [d]
    temp_smooth_days: int = 5  # temperatures compared as the mean of this many days [d]
    soh_lag_days: int = 30  # SoH fade and resistance growth over this many days [d]
    swing_days: int = 14  # SoC swing of each cell fitted over two halves of this [d]
    swing_min_soc_sd_pct: float = 0.2  # ... when the pack's SoC varied this much [%]
    swing_min_days: int = 4  # ... on this many days with readings at rest in a half [d]
    diurnal_min_days: int = 7  # lag behind peers' daily cycle from this many days [d]
    min_self_discharge_hours: float = 24.0  # rest needed in smooth_days for a drift [h]
    rest_c_rate: float = 0.02  # |current| below this x capacity = at rest [1/h]
    default_capacity_ah: float = 100.0  # capacity of a VIN missing from the registry [Ah]
    rest_min_s: float = 3600.0  # rest long enough to measure a temperature rise [s]
    settle_s: float = 1800.0  # rise measured from this long into the rest [s]


def _col(t: pa.Table, name: str) -> FloatArray:
    if name not in t.column_names:
        return np.full(t.num_rows, np.nan)
    return np.asarray(
        pc.cast(t[name], pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
    )


def _strs(t: pa.Table, name: str) -> list[str]:
    return [str(v) for v in t[name].to_pylist()]


def assemble_features(
    vins: list[str],
    chemistry: dict[str, str],
    cells: pa.Table,
    vehicle_window: pa.Table,
    soh_window: pa.Table,
    sensors: pa.Table,
    day: date,
    params: FeatureParams,
    swing: pa.Table | None = None,
    diurnal: tuple[Mapping[str, float], Mapping[str, float]] | None = None,
    vehicle_class: Mapping[str, str] | None = None,
) -> pa.Table:
    """Build the feature rows of one (date, fleet) from already-read inputs.

    Parameters
    ----------
    vins : list of str
        Vehicles to produce a row for (those with data on ``day``), sorted.
    cells : pyarrow.Table
        Output of ``cell_window``.
    vehicle_window, soh_window : pyarrow.Table
        ``metrics/vehicle_day`` and ``metrics/vehicle_soh`` rows of the trailing window,
        with a ``date`` column.
    sensors : pyarrow.Table
        Output of ``sensor_day`` for ``day``.
    swing : pyarrow.Table, optional
        Output of ``cell_swing`` (none: the swing features are missing).
    diurnal : (dict, dict), optional
        Output of ``diurnal_lag``: each vehicle's lag behind its peers' daily temperature
        cycle [h] and in robust sigmas of its class (none: both are missing).
    vehicle_class : dict, optional
        Vehicle class of each vin (registry), a key of the temperature peer groups
        (``excess_over_own_and_peers``; none or a missing vin: one class).
    """
    n = len(vins)
    if n == 0:
        # a date on which no vehicle has a vehicle_day row (all offline, or today's first
        # minutes): no feature rows, though the trailing windows hold other dates' rows
        return FEATURES_SCHEMA.empty_table()
    pos = {v: i for i, v in enumerate(vins)}
    out: dict[str, Any] = {
        "vin": pa.array(vins, pa.string()),
        "chemistry": pa.array([chemistry.get(v) for v in vins], pa.string()),
    }

    # Cells: pad to (vehicles, max cells), NaN where missing.
    cvin = _strs(cells, "vin") if cells.num_rows else []
    crow = np.array([pos.get(v, -1) for v in cvin], dtype=np.int64)
    keep = crow >= 0
    ccell = _col(cells, "cell")[keep].astype(np.int64) if cells.num_rows else np.zeros(0, np.int64)
    crow = crow[keep]
    width = int(ccell.max()) + 1 if len(ccell) else 0
    n_cells = np.zeros(n)
    if len(ccell):
        np.maximum.at(n_cells, crow, ccell + 1.0)
    has_today = np.zeros(n, dtype=bool)
    if len(ccell):
        today_flags = np.asarray(cells["has_today"].to_numpy(zero_copy_only=False))[keep]
        np.logical_or.at(has_today, crow, today_flags.astype(bool))
    window_days = np.zeros(n)
    if len(ccell):
        np.maximum.at(window_days, crow, np.nan_to_num(_col(cells, "rest_days")[keep]))
    out["window_days"] = pa.array(window_days.astype(np.int16), pa.int16())
    out["n_cells"] = pa.array(np.where(n_cells > 0, n_cells, 0).astype(np.int16), pa.int16())
    out["has_cell_data"] = pa.array(has_today, pa.bool_())

    def grid(column: str) -> FloatArray:
        g = np.full((n, width), np.nan)
        if len(ccell):
            g[crow, ccell] = _col(cells, column)[keep]
        return g

    # The swing comes from telemetry, not cell_day: same grid, cells beyond it ignored.
    def swing_grid(column: str) -> FloatArray:
        g = np.full((n, width), np.nan)
        if swing is not None and swing.num_rows and width:
            srow = np.array([pos.get(v, -1) for v in _strs(swing, "vin")], dtype=np.int64)
            scell = _col(swing, "cell").astype(np.int64)
            sok = (srow >= 0) & (scell >= 0) & (scell < width)
            g[srow[sok], scell[sok]] = _col(swing, column)[sok]
        return g

    def at_cell(g: FloatArray, idx: IntArray) -> FloatArray:
        """Each vehicle's value of ``g`` at its cell ``idx`` (NaN where -1)."""
        val = np.full(n, np.nan)
        ok = idx >= 0
        val[ok] = g[np.arange(n)[ok], idx[ok]]
        return val

    worst: dict[str, IntArray] = {}  # feature -> each vehicle's worst cell (-1: none)
    # each cell's SoC offset in the older and the recent half of the swing window, for
    # packs with both for at least half their cells (else none: too few to compare)
    soc_recent, soc_early = swing_grid("soc_offset_pct"), swing_grid("soc_offset_early_pct")
    both = np.isfinite(soc_recent) & np.isfinite(soc_early)
    soc_known = np.count_nonzero(both, axis=1) >= np.maximum(n_cells / 2.0, 2.0)
    both &= soc_known[:, None]
    soc_recent, soc_early = np.where(both, soc_recent, np.nan), np.where(both, soc_early, np.nan)
    soc_change = soc_recent - soc_early
    sd_hours = grid("self_discharge_hours")
    for f in CELL_FEATURES:
        if f.source == "swing_pct":
            # both halves of the window must show the swing: the smaller z and value
            z, med, _scale = pack_robust_z(swing_grid("swing_pct"), f.floor)
            z_early, med_early, _scale = pack_robust_z(swing_grid("swing_early_pct"), f.floor)
            z = np.minimum(z, z_early)
            rel = np.minimum(
                swing_grid("swing_pct") - med[:, None],
                swing_grid("swing_early_pct") - med_early[:, None],
            )
        elif f.source == "soc_offset_change_pct":
            g = soc_change
            z, med, _scale = pack_robust_z(g, f.floor)
            rel = g - med[:, None]
        else:
            g = grid(f.source)
            if f.source == "self_discharge_mv_per_day":
                g = np.where(sd_hours >= params.min_self_discharge_hours, g, np.nan)
            g = np.where(np.isfinite(g), g, np.nan)
            z, med, _scale = pack_robust_z(g, f.floor)
            rel = g - med[:, None]
        bad, idx = worst_cell(z, n_cells, f.direction)
        bad = np.where(has_today, bad, np.nan)
        idx = np.where(has_today, idx, -1)
        out[f.name] = bad
        out[CELL_INDEX[f.name]] = pa.array(idx.astype(np.int16), pa.int16())
        out[CELL_EVIDENCE[f.name][0]] = at_cell(rel, idx)
        worst[f.name] = idx

    # Context for the rules: the rest-deviation cell's imbalance in SoC (a mV deviation
    # means little where the OCV curve is steep) and the trend cell's change of it from
    # the older to the recent half of the window, and the current steps behind the
    # resistance cell's value.
    offset = swing_grid("soc_offset_pct")
    out["rest_dev_soc_pct"] = at_cell(offset, worst["rest_dev_z"])
    out["rest_dev_soc_change_pct"] = at_cell(
        offset - swing_grid("soc_offset_early_pct"), worst["rest_dev_trend_z"]
    )
    out["resistance_steps"] = at_cell(grid("resistance_steps"), worst["resistance_z"])
    lag_h, lag_z = diurnal if diurnal is not None else ({}, {})
    out["cooling_lag_h"] = np.array([lag_h.get(v, np.nan) for v in vins])
    out["cooling_lag_z"] = np.array([lag_z.get(v, np.nan) for v in vins])

    # Spread growth: (max - min) of the recent rest deviation minus that of the early part.
    recent, early = grid("rest_dev_mv"), grid("rest_dev_early_mv")
    _z, _m, scale = pack_robust_z(recent, 1.0)
    spread_now = _nan_range(recent)
    spread_then = _nan_range(early)
    growth = np.fmax((spread_now - spread_then) / scale, 0.0)  # shrinking spread is fine
    out["spread_growth_z"] = np.where(has_today, growth, np.nan)
    # ... and of the SoC offsets, where known (scale floored like ``soc_drift_z``)
    _z, _m, soc_scale = pack_robust_z(soc_recent, 0.1)
    with np.errstate(invalid="ignore"):
        soc_growth = np.fmax((_nan_range(soc_recent) - _nan_range(soc_early)) / soc_scale, 0.0)
    out["soc_spread_growth_z"] = np.where(has_today & soc_known, soc_growth, np.nan)
    soc_drift = np.asarray(out["soc_drift_z"], dtype=np.float64)
    out["drift_z"] = np.where(np.isfinite(soc_drift), soc_drift, out["rest_dev_trend_z"])
    out["drift_growth_z"] = np.where(
        np.isfinite(out["soc_spread_growth_z"]), out["soc_spread_growth_z"], growth
    )
    out["drift_growth_z"] = np.where(has_today, out["drift_growth_z"], np.nan)

    # Temperatures against own baseline and the fleet.
    vw_vin = _strs(vehicle_window, "vin") if vehicle_window.num_rows else []
    vw_row = np.array([pos.get(v, -1) for v in vw_vin], dtype=np.int64)
    vw_day = (
        np.asarray(
            pc.cast(vehicle_window["date"], pa.int32()).to_numpy(zero_copy_only=False),
            dtype=np.int64,
        )
        if vehicle_window.num_rows
        else np.zeros(0, np.int64)
    )
    day_num = (day - date(1970, 1, 1)).days
    tmax = _col(vehicle_window, "temp_c_max")
    tmin = _col(vehicle_window, "temp_c_min")
    # the pack's hottest temperature (vehicle_day: without a sensor reading far above
    # all the others, which the sensor features judge); days analysed before it had
    # it, the hottest sensor
    tpack = _col(vehicle_window, "pack_temp_c_max")
    tpack = np.where(np.isnan(tpack), tmax, tpack)
    base_lo = day_num - params.baseline_lag_days - params.baseline_days + 1
    base_hi = day_num - params.baseline_lag_days
    recent_lo = day_num - params.smooth_days + 1

    # Days with DC fast charging run hotter: compare like with like (a taxi alternating
    # DC and non-DC days would otherwise swing by 8 degC from day to day).
    dc_day = np.nan_to_num(_col(vehicle_window, "dc_fast_share")) > 0.1
    kind_now = np.zeros(n, dtype=bool)
    kind_now[vw_row[(vw_row >= 0) & (vw_day == day_num)]] = dc_day[
        (vw_row >= 0) & (vw_day == day_num)
    ]
    same_kind = (vw_row >= 0) & (dc_day == kind_now[np.maximum(vw_row, 0)])

    def today_and_baseline(x: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Mean over the last temp_smooth_days and baseline median, days like today's."""
        today = np.full(n, np.nan)
        base = np.full(n, np.nan)
        sel = same_kind & (vw_day > day_num - params.temp_smooth_days) & ~np.isnan(x)
        tot = np.zeros(n)
        cnt = np.zeros(n)
        np.add.at(tot, vw_row[sel], x[sel])
        np.add.at(cnt, vw_row[sel], 1.0)
        has_now = np.zeros(n, dtype=bool)
        has_now[vw_row[(vw_row >= 0) & (vw_day == day_num)]] = True
        ok_now = has_now & (cnt > 0)
        today[ok_now] = tot[ok_now] / cnt[ok_now]
        sel_b = same_kind & (vw_day >= base_lo) & (vw_day <= base_hi) & ~np.isnan(x)
        if np.any(sel_b):
            order = np.lexsort((x[sel_b], vw_row[sel_b]))
            rows_b, vals_b = vw_row[sel_b][order], x[sel_b][order]
            starts = np.flatnonzero(np.r_[True, rows_b[1:] != rows_b[:-1]])
            ends = np.r_[starts[1:], len(rows_b)]
            for s, e in zip(starts, ends, strict=True):
                if e - s >= 5:
                    base[rows_b[s]] = float(np.median(vals_b[s:e]))
        return today, base

    # One-sided: a pack cooler than usual (parked, winter) is not a fault.
    t_today, t_base = today_and_baseline(tpack)
    _tmin_now, tmin_base = today_and_baseline(tmin)
    # the vehicle's use over the baseline days (every kind of day)
    efc = _col(vehicle_window, "equivalent_full_cycles")
    sel_u = (vw_row >= 0) & (vw_day >= base_lo) & (vw_day <= base_hi) & ~np.isnan(efc)
    use_base = np.full(n, np.nan)
    if np.any(sel_u):
        order = np.lexsort((efc[sel_u], vw_row[sel_u]))
        rows_u, vals_u = vw_row[sel_u][order], efc[sel_u][order]
        starts = np.flatnonzero(np.r_[True, rows_u[1:] != rows_u[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], len(rows_u)], strict=True):
            use_base[rows_u[s]] = float(np.median(vals_u[s:e]))
    classes = vehicle_class or {}
    peer_keys = ([classes.get(v, "") for v in vins], tmin_base, use_base)
    out["temp_max_excess_c"] = np.fmax(excess_over_own_and_peers(t_today, t_base, *peer_keys), 0.0)
    t_day = np.full(n, np.nan)
    sel_d = (vw_row >= 0) & (vw_day == day_num)
    t_day[vw_row[sel_d]] = tmax[sel_d]
    out["temp_c_max"] = t_day
    r_today, r_base = today_and_baseline(tpack - tmin)
    out["temp_rise_excess_c"] = np.fmax(excess_over_own_and_peers(r_today, r_base, *peer_keys), 0.0)

    # Exposure over the recent days (context: charging and heat).
    for name, how in (
        ("dc_fast_share", "mean"),
        ("hours_soc_above_90", "sum"),
        ("hours_temp_above_45c", "sum"),
    ):
        x = _col(vehicle_window, name)
        sel = (vw_row >= 0) & (vw_day >= recent_lo) & (vw_day <= day_num) & ~np.isnan(x)
        tot = np.zeros(n)
        cnt = np.zeros(n)
        np.add.at(tot, vw_row[sel], x[sel])
        np.add.at(cnt, vw_row[sel], 1.0)
        with np.errstate(all="ignore"):
            out[name] = np.where(cnt > 0, tot / cnt if how == "mean" else tot, np.nan)

    # SoH fade and resistance growth over soh_lag_days, against the fleet.
    sw_vin = _strs(soh_window, "vin") if soh_window.num_rows else []
    sw_row = np.array([pos.get(v, -1) for v in sw_vin], dtype=np.int64)
    sw_day = (
        np.asarray(
            pc.cast(soh_window["date"], pa.int32()).to_numpy(zero_copy_only=False), dtype=np.int64
        )
        if soh_window.num_rows
        else np.zeros(0, np.int64)
    )
    # Early trend fits swing wildly: clipped to a physically plausible 30-day change.
    for name, column, sign, clip in (
        ("soh_drop_excess_pct", "soh_pct", -1.0, 10.0),
        ("resistance_growth_excess_pct", "resistance_growth_pct", 1.0, 50.0),
    ):
        x = _col(soh_window, column)
        now = np.full(n, np.nan)
        then = np.full(n, np.nan)
        sel = (sw_row >= 0) & (sw_day == day_num) & ~np.isnan(x)
        now[sw_row[sel]] = x[sel]
        sel_t = (sw_row >= 0) & (sw_day <= day_num - params.soh_lag_days) & ~np.isnan(x)
        # latest value at least soh_lag_days old (rows are in date order per file)
        order = np.lexsort((sw_day[sel_t], sw_row[sel_t]))
        then[sw_row[sel_t][order]] = x[sel_t][order]
        change = np.clip(sign * (now - then), -clip, clip)
        out[name] = excess_over_own_and_fleet(change, np.zeros(n))

    # Temperature sensors.
    s_vin = _strs(sensors, "vin") if sensors.num_rows else []
    s_row = np.array([pos.get(v, -1) for v in s_vin], dtype=np.int64)
    s_idx = _col(sensors, "sensor")
    ok = s_row >= 0
    n_read = _col(sensors, "n_readings")
    invalid = np.where(n_read > 0, 1.0 - _col(sensors, "n_valid") / np.maximum(n_read, 1), np.nan)
    stuck = (
        (_col(sensors, "range_c") == 0.0)
        & (_col(sensors, "n_valid") >= 10)
        & (_col(sensors, "pack_range_c") >= 2.0)
    ).astype(np.float64)
    jitter = _col(sensors, "jitter_c")
    rise = _col(sensors, "rest_rise_c_per_h")

    def per_vehicle_max(
        x: FloatArray, default: float, also: FloatArray | None = None
    ) -> tuple[FloatArray, IntArray, FloatArray]:
        """Each vehicle's largest ``x``, the sensor it is from and that sensor's ``also``."""
        best = np.full(n, -np.inf)
        which = np.full(n, -1, dtype=np.int64)
        other = np.full(n, np.nan)
        extra = also if also is not None else np.full(len(x), np.nan)
        for r, v, s, e in zip(s_row[ok], x[ok], s_idx[ok], extra[ok], strict=True):
            if not math.isnan(v) and v > best[r]:
                best[r], which[r], other[r] = v, int(s), e
        return np.where(np.isfinite(best), best, default), which, other

    out["sensor_invalid_share"], w_inv, _ = per_vehicle_max(invalid, 0.0)
    out["sensor_stuck"], w_stuck, stuck_at = per_vehicle_max(stuck, 0.0, _col(sensors, "max_c"))
    jit_med = np.full(n, np.nan)
    for r in np.unique(s_row[ok]):
        vals = jitter[ok][s_row[ok] == r]
        vals = vals[~np.isnan(vals)]
        if len(vals):
            jit_med[r] = float(np.median(vals)) if len(vals) > 2 else float(np.min(vals))
    jmax, w_jit, _ = per_vehicle_max(jitter, np.nan)
    out["sensor_jitter_excess_c"] = jmax - jit_med
    out["rest_rise_c_per_h"], w_rise, _ = per_vehicle_max(rise, np.nan)
    out["invalid_sensor"] = pa.array(
        np.where(out["sensor_invalid_share"] > 0, w_inv, -1).astype(np.int16)
    )
    out["stuck_sensor"] = pa.array(np.where(out["sensor_stuck"] > 0, w_stuck, -1).astype(np.int16))
    # the value a stuck sensor sits at (its range is 0: its maximum is its value)
    out["stuck_value_c"] = np.where(out["sensor_stuck"] > 0, stuck_at, np.nan)
    out["jitter_sensor"] = pa.array(w_jit.astype(np.int16))
    # The hottest temperature: of one reading (and its sensor), and held on two
    # consecutive readings of one sensor, by any sensor and by the others than the one
    # jumping most between readings (``bms._anomaly_rules``: temp_high)
    out["temp_reading_max_c"], w_hot, _ = per_vehicle_max(_col(sensors, "max_c"), np.nan)
    out["temp_reading_sensor"] = pa.array(w_hot.astype(np.int16))
    held = _col(sensors, "held_max_c")
    out["temp_held_max_c"], _, _ = per_vehicle_max(held, np.nan)
    jumpy = np.zeros(len(held), dtype=bool)
    jumpy[ok] = s_idx[ok] == w_jit[s_row[ok]]
    out["temp_held_other_c"], _, _ = per_vehicle_max(np.where(jumpy, np.nan, held), np.nan)
    out["rest_rise_sensor"] = pa.array(w_rise.astype(np.int16))

    arrays = []
    for f in FEATURES_SCHEMA:
        v = out[f.name]
        arrays.append(
            v if isinstance(v, pa.Array) else pa.array(np.asarray(v), f.type, from_pandas=True)
        )
    return pa.Table.from_arrays(arrays, schema=FEATURES_SCHEMA)


def features_path(lake_root: Path, day: date, fleet: str) -> Path:
    """Where the feature rows of one (date, fleet) live."""
    return (
        lake_root
        / "anomaly_features"
        / f"date={day.isoformat()}"
        / f"fleet={fleet}"
        / "part.parquet"
    )


def build_features(
    lake_root: Path,
    day: date,
    fleet: str,
    params: FeatureParams,
    cache: FeatureCache | None = None,
) -> pa.Table:
    """Read the analytics outputs (and telemetry) of one (date, fleet) into feature rows.

    Vehicles get a row when ``metrics/vehicle_day`` has them on ``day``. ``cache``
    carries what a catch-up can reuse over to the next date (``FeatureCache``); the rows
    are the same with or without it.
    """
    registry = read_registry(lake_root, fleet)
    window = max(params.baseline_lag_days + params.baseline_days, params.trend_days)
    vdays = [day - timedelta(days=k) for k in range(window)]
    vehicle_window = read_partitions(
        lake_root,
        "metrics/vehicle_day",
        vdays,
        fleet,
        [
            "vin",
            "chemistry",
            "temp_c_max",
            "pack_temp_c_max",
            "temp_c_min",
            "dc_fast_share",
            "hours_soc_above_90",
            "hours_temp_above_45c",
            "equivalent_full_cycles",
        ],
        cache,
    )
    sdays = [day - timedelta(days=k) for k in range(params.soh_lag_days + 7)]
    soh_window = read_partitions(
        lake_root,
        "metrics/vehicle_soh",
        sdays,
        fleet,
        ["vin", "soh_pct", "resistance_growth_pct"],
        cache,
    )
    today = vehicle_window.filter(pc.equal(vehicle_window["date"], pa.scalar(day, pa.date32())))
    vins = sorted(set(_strs(today, "vin")))
    chem = dict(zip(_strs(registry, "vin"), _strs(registry, "chemistry"), strict=True))
    for v, c in zip(_strs(today, "vin"), today["chemistry"].to_pylist(), strict=True):
        if c is not None:
            chem.setdefault(v, str(c))
    own = cache is None
    cache = cache if cache is not None else FeatureCache()
    try:
        con = cache.connection()
        cells = cell_window(
            lake_root,
            day,
            fleet,
            smooth_days=params.smooth_days,
            trend_days=params.trend_days,
            con=con,
        )
        sensors = sensor_day(
            lake_root,
            day,
            fleet,
            registry,
            rest_c_rate=params.rest_c_rate,
            default_capacity_ah=params.default_capacity_ah,
            rest_min_s=params.rest_min_s,
            settle_s=params.settle_s,
            con=con,
        )
        swing_days = [
            d
            for d in (day - timedelta(days=k) for k in range(params.swing_days))
            if (fleet, d) not in cache.swing
        ]
        swing = cell_swing(
            lake_root,
            day,
            fleet,
            _vehicles_by_day(registry, vehicle_window, swing_days),
            window_days=params.swing_days,
            min_soc_sd_pct=params.swing_min_soc_sd_pct,
            min_days=params.swing_min_days,
            rest_c_rate=params.rest_c_rate,
            default_capacity_ah=params.default_capacity_ah,
            cache=cache.swing,
            con=con,
            store=cache.day_store,
        )
        lag_parts = _window_parts(
            [day - timedelta(days=k) for k in range(params.swing_days)],
            fleet,
            cache.diurnal,
            lambda d: diurnal_day(
                lake_root,
                d,
                fleet,
                registry,
                rest_c_rate=params.rest_c_rate,
                default_capacity_ah=params.default_capacity_ah,
                con=con,
                store=cache.day_store,
            ),
        )
        classes = {
            v: str(c or "")
            for v, c in zip(
                _strs(registry, "vin"), registry["vehicle_class"].to_pylist(), strict=True
            )
        }
        diurnal = diurnal_lag(
            lag_parts,
            classes,
            min_days=params.diurnal_min_days,
        )
    finally:
        if own:
            cache.close()
    return assemble_features(
        vins,
        chem,
        cells,
        vehicle_window,
        soh_window,
        sensors,
        day,
        params,
        swing,
        diurnal,
        vehicle_class=classes,
    )


def _vehicles_by_day(
    registry: pa.Table, vehicle_window: pa.Table, days: Sequence[date]
) -> dict[date, pa.Table]:
    """Vehicles (vin, chemistry, capacity_ah) of each of ``days``: the registry's, and
    those with a chemistry in ``metrics/vehicle_day`` of that date (each date's list
    depends on that date's inputs only, so a catch-up can reuse it)."""
    if not days:
        return {}
    wanted = pa.array(sorted(days), pa.date32())
    vehicle_window = vehicle_window.filter(pc.is_in(vehicle_window["date"], value_set=wanted))
    reg_chem = {
        v: c for v, c in zip(_strs(registry, "vin"), registry["chemistry"].to_pylist(), strict=True)
    }
    reg_cap = dict(zip(_strs(registry, "vin"), _col(registry, "capacity_ah").tolist(), strict=True))
    seen: dict[date, dict[str, str]] = {}
    if vehicle_window.num_rows:
        for v, c, wd in zip(
            _strs(vehicle_window, "vin"),
            vehicle_window["chemistry"].to_pylist(),
            vehicle_window["date"].to_pylist(),
            strict=True,
        ):
            if c is not None:
                seen.setdefault(wd, {}).setdefault(v, str(c))
    out: dict[date, pa.Table] = {}
    for d in days:
        chem = {v: str(c) for v, c in reg_chem.items() if c is not None}
        for v, c in seen.get(d, {}).items():
            chem.setdefault(v, c)
        vins = sorted(chem)
        cap = [reg_cap.get(v, math.nan) for v in vins]
        out[d] = pa.table(
            {
                "vin": pa.array(vins, pa.string()),
                "chemistry": pa.array([chem[v] for v in vins], pa.string()),
                "capacity_ah": pa.array(cap, pa.float64(), from_pandas=True),
            }
        )
    return out
