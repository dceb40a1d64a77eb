"""The analytics runner: one date (and fleet) of telemetry -> the metrics tables.

Reads one ``telemetry/date=D/fleet=F`` partition plus compact per-vehicle state, runs
the SQL jobs of ``bms/sql`` in DuckDB, applies the science functions (capacity from
rest points, resistance steps, robust SoH trend, warranty verdict) and writes
``metrics/<table>/date=D/fleet=F/part.parquet`` atomically. Cost is O(one day): the
state holds, per vehicle, its last reading, its recent rest points, running totals and
the history of its capacity and resistance estimates (a few rows per day).

State under ``state/analytics`` (``state_root`` below):

- ``carry/fleet=F/date=D.parquet``: each vehicle's state after day D (the next
  computed date starts from the latest one before it);
- ``history/fleet=F/capacity.parquet``, ``resistance.parquet``: the estimates the trend
  fits use (rows of date D are replaced when D is recomputed; a fit for D reads only
  rows dated up to D, so a rerun gives byte-identical outputs);
- ``runs/fleet=F/D.json``: the ledger: input files, the previous date's run id and the
  parameters; a date is current when its ledger matches, and every later date is stale
  once an earlier one is (late data, changed parameters).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from bms._capacity import (
    REST_VOLTAGE_SIGMA_MV,
    capacity_ah_from_soc_window,
    capacity_rel_sigma,
    hysteresis_offset_mv,
    missing_capacity_evidence,
    rest_soc_pct_from_cell_mv,
    soc_sigma_pct_from_ocv,
)
from bms._chargestep import fit_charge_step
from bms._duck import duckdb_connect, set_double_variables, vin_groups
from bms._errors import BmsError
from bms._lake import (
    damaged_output_message,
    fsync_path,
    holds_unique_readings,
    telemetry_files,
)
from bms._leak import leak_correction, update_leak_sums
from bms._ocv import CHEMISTRIES, ocv_v_from_soc_pct
from bms._relax import RelaxedOcv, ocv_mv_from_relaxation
from bms._resistance import resistance_mohm_from_step, resistance_temp_factor
from bms._soh import (
    FADE_EXPONENT,
    RESISTANCE_EXPONENT,
    STEP_MIN_BIC_DROP,
    Z_90,
    PowerFit,
    fit_power_trend,
    fit_step_trend,
    recent_level_shift,
)
from bms._telemetry import CELL_MV_MAX, CELL_MV_MIN
from bms._warranty import (
    CALENDAR_REF_TEMP_C,
    CALENDAR_SOC_BINS_PCT,
    DAYS_PER_YEAR,
    UsageTotals,
    UseSinceEstimate,
    WarrantyPolicy,
    WarrantyPolicyError,
    calendar_arrhenius_k,
    calendar_stress_from_exposure,
    coverage_end,
    daily_ageing_stress,
    load_warranty_policy,
    usage_stress_ratio,
    warranty_verdict,
)

#: Version of the analytics model; part of every run id and of the warranty evidence.
ANALYTICS_MODEL_VERSION = "analytics-23"
#: Metrics tables written per (date, fleet).
METRICS_TABLES = (
    "vehicle_day",
    "capacity",
    "resistance",
    "cell_day",
    "vehicle_soh",
    "warranty",
)
_MS_PER_DAY = 86_400_000
_Fit = TypeVar("_Fit")  # a cached trend fit (FleetSession.fit)
_T = TypeVar("_T")
_U = TypeVar("_U")
_EPOCH_DAY = date(1970, 1, 1)


@dataclass(frozen=True)
class AnalyticsParams:
    """Tunables of the analytics jobs (``[analytics]`` in the configuration).

    Defaults cite ``shared/science.md``; every value changes the run id, so changing one
    makes all computed dates stale.
    """

    rest_min_s: int = 3 * 3600  # rest before an OCV point is trusted (science.md 6.2) [s]
    # A shorter rest, from this long, gives an OCV point by extrapolating its relaxation
    # (bms._relax), with the extrapolation's uncertainty: an occasional driver kept at
    # full rests 3 h only there, and 1-2.5 h between the legs of a trip. [s]
    rest_relax_min_s: int = 3600
    # Capacity needs this SoC swing [%]. science.md 6.1 asks for 40-50 % with a 2 % SoC
    # error; a NMC rest near full reads to ~0.2-0.7 %, so narrower windows with their
    # honest sigma (capacity_rel_sigma) and weight are kept: drivers who charge every
    # night rarely rest 40 % apart. An occasional NMC driver who tops up to full rests
    # at ~99 % and, after a trip, at 91-95 %: a 7.5 % window read to 0.19 and 0.68 %
    # is a 9 % estimate, well inside max_capacity_rel_sigma, so the floor is 7 % (10 %
    # left such cars without estimates for over a year; 3 % let so many narrow,
    # slightly low-biased windows in that the accuracy fleet's interval coverage fell
    # from 88 to 82 %).
    min_soc_window_pct: float = 7.0
    max_soc_sigma_pct: float = 3.0  # rest points with a vaguer OCV SoC are not used [%]
    max_capacity_rel_sigma: float = 0.15  # capacity estimates vaguer than this dropped [-]
    max_pair_hours: float = 96.0  # rest points further apart are not paired [h]
    reference_temp_c: float = 25.0  # resistance normalised to this (science.md 6.5) [degC]
    history_days: int = 730  # SoH / resistance fit window [days]
    rest_c_rate: float = 0.02  # |current| below this x capacity = at rest [1/h]
    max_gap_s: float = 900.0  # a longer silence is a data gap [s]
    default_capacity_ah: float = 100.0  # C-rates of a VIN missing from the registry [Ah]
    over_temp_c: float = 60.0  # over-temperature event threshold (contract v1 alert) [degC]
    # An event also needs the sensors' mean within this of over_temp_c [K]: twice the
    # 5 degC cell-to-cell spread that pack thermal design aims at (Pesaran, NREL 2002,
    # "Battery thermal models for hybrid vehicle simulations"), so one failing or
    # misplaced sensor reading far above the rest does not count as the driver's use.
    over_temp_spread_c: float = 10.0
    deep_discharge_soc_pct: float = 5.0  # deep-discharge event threshold [%]
    step_min_c_rate: float = 0.2  # current step for resistance [1/h]
    step_max_delay_s: float = 900.0  # a step's loaded reading at most this long after [s]
    # Reference SoC band of resistance steps [%]: the DC resistance rises steeply at low
    # SoC and is nearly flat above (science.md 3 asks for a fixed window). The band reaches
    # 100 % because a car charged to full and driven once a day steps out of rest only
    # there; capping it at 90 % left such cars without any resistance estimate.
    step_soc_min_pct: float = 20.0
    step_soc_max_pct: float = 100.0
    load_c_rate: float = 0.3  # cell sag measured at discharge above this [1/h]
    cell_rest_min_s: int = 1800  # rest before a cell's rest deviation is read [s]
    settle_s: int = 1800  # self-discharge starts this long into a rest [s]
    self_discharge_min_s: int = 7200  # self-discharge needs this much rest [s]
    offset_smoothing: float = 0.3  # weight of a day's current-offset estimate (EWMA) [-]
    cell_ratio_smoothing: float = 0.1  # weight of a pair's cell capacity ratios (EWMA) [-]
    # Until 1 / (pairs + this) falls to cell_ratio_smoothing, the ratios are the mean of
    # the pairs so far with this many pairs' worth of "all cells equal" (bms._analytics
    # _weakest_cell) [-]
    cell_ratio_prior_pairs: float = 3.0
    # LFP SoC anchors from constant-current charges across the 70-82 % OCV step
    # (bms._chargestep): readings charging at >= this C-rate [1/h] whose BMS SoC is in
    # the band [%] are fitted; sigma added to the fit's own for where the step really
    # lies in an aged cell (the OCV table is a fresh cell's) [% SoC].
    charge_step_c_rate: float = 0.05
    charge_step_soc_min_pct: float = 45.0
    charge_step_soc_max_pct: float = 97.0
    charge_step_sigma_pct: float = 1.0
    charge_step_every_s: float = 30.0  # at most one reading per this period is fitted [s]
    systematic_soh_sigma_pct: float = 0.4  # model error in every SoH interval [%]
    # Capacity estimates within this many days count as one group in the SoH fit's
    # scale and degrees of freedom (they share season and rest points) [days]
    soh_cluster_days: float = 7.0
    # ... and share this much of their error, a random effect per group (the SoC error
    # of a shared rest point, 0.3-3 % SoC over windows of 20-60 %; the current-offset
    # estimate; the season's temperature, 0.3 %/K): a burst of estimates weighs like a
    # few, not like as many independent ones [%]
    soh_cluster_sigma_pct: float = 1.0
    # The estimates within this many days of the newest one move the trend where they
    # stand clearly off it (bms.recent_level_shift: a fault's fade is not a power law)
    # [days]
    soh_recent_days: float = 30.0
    # A verdict other than claim_eligible needs a capacity estimate this recent [days]:
    # older, the SoH "now" is the prior's projection (seasons: half a year).
    max_evidence_age_days: float = 180.0
    warranty_policy: str = "oem-8y-160k-70"  # for vehicles whose registry names none
    policy_override: str = ""  # preset id or TOML path used for every vehicle if set
    threads: int = 0  # DuckDB threads; 0 = all cores
    unit_readings: int = 2_000_000  # a catch-up computes dates together up to this many
    chunk_readings: int = 400_000  # the SQL pass takes vehicles in groups of about this many
    chunk_workers: int = 0  # vehicle groups computed side by side; 0 = one per core

    def run_hash(self) -> str:
        """Digest of the parameters that change results (and of the override policy
        file, if any); ``threads``, ``unit_readings``, ``chunk_readings`` and
        ``chunk_workers`` only change speed and memory."""
        values = dataclasses.asdict(self)
        for name in _NOT_HASHED:
            values.pop(name)
        payload = json.dumps(values, sort_keys=True)
        if self.policy_override and Path(self.policy_override).is_file():
            payload += Path(self.policy_override).read_text(encoding="utf-8")
        return hashlib.sha256(f"{ANALYTICS_MODEL_VERSION}|{payload}".encode()).hexdigest()[:16]


#: Parameters that do not change results (left out of the run id).
_NOT_HASHED = ("threads", "unit_readings", "chunk_readings", "chunk_workers")

#: One vehicle group's date: its vehicles' new carry rows, capacity estimates and
#: resistance table.
_VehicleUpdate = tuple[dict[str, dict[str, Any]], list[dict[str, Any]], pa.Table]

#: Row order of each table the SQL pass returns (every job orders by day, then vehicle),
#: restored after the pass ran vehicle group by vehicle group.
_PASS_ORDER: dict[str, list[str]] = {
    "vehicle_day": ["day_n", "vin"],
    "steps": ["day_n", "vin", "ts_ms", "seq"],
    "cell_day": ["day_n", "vin", "cell"],
    "step_cells": ["day_n", "vin", "seq"],
    "rest_cells": ["day_n", "vin", "run_id"],
    "rest_relax": ["day_n", "vin", "run_id"],
    "charge_cells": ["day_n", "vin", "ts_ms", "seq"],
    "rest_runs": ["day_n", "vin", "run_id"],
    "branch_turns": ["day_n", "vin", "ts_ms"],
    "day_carry": ["day_n", "vin"],
}


@dataclass(frozen=True)
class DateStatus:
    """Whether one (date, fleet) has current results: ``current``, ``missing``, ``stale``."""

    day: date
    fleet: str
    state: str
    reason: str


@dataclass(frozen=True)
class AnalyticsSummary:
    """What ``run_analytics`` did for one date."""

    day: date
    fleets: tuple[str, ...]
    vehicles: int
    readings: int
    duplicates_dropped: int
    capacity_estimates: int
    resistance_steps: int
    unknown_vins: tuple[str, ...]
    verdicts: Mapping[str, int]
    files: tuple[Path, ...]
    seconds: float  # of the computation that gave this date (see unit_days)
    stale_after: tuple[date, ...] = field(default=())
    # a catch-up computes consecutive dates together: this date's computation covered
    # this many dates, and ``seconds`` is the time of all of them
    unit_days: int = 1


# --------------------------------------------------------------------------- paths


def _state_root(lake_root: Path, state_root: Path | None) -> Path:
    return state_root if state_root is not None else lake_root.parent / "state" / "analytics"


def metrics_path(lake_root: Path, table: str, day: date, fleet: str) -> Path:
    """Path of one metrics partition file."""
    return (
        lake_root
        / "metrics"
        / table
        / f"date={day.isoformat()}"
        / f"fleet={fleet}"
        / "part.parquet"
    )


def _carry_path(state: Path, fleet: str, day: date) -> Path:
    return state / "carry" / f"fleet={fleet}" / f"date={day.isoformat()}.parquet"


def _ledger_path(state: Path, fleet: str, day: date) -> Path:
    return state / "runs" / f"fleet={fleet}" / f"{day.isoformat()}.json"


def _history_path(state: Path, fleet: str, kind: str) -> Path:
    return state / "history" / f"fleet={fleet}" / f"{kind}.parquet"


def _sql(name: str) -> str:
    return resources.files("bms").joinpath("sql", f"{name}.sql").read_text("utf-8")


# --------------------------------------------------------------------------- status


def _partition_dates(lake_root: Path) -> dict[str, list[date]]:
    """Fleets -> sorted dates that have visible telemetry files."""
    out: dict[str, set[date]] = {}
    for path in telemetry_files(lake_root):
        fleet = path.parent.name.removeprefix("fleet=")
        day = date.fromisoformat(path.parent.parent.name.removeprefix("date="))
        out.setdefault(fleet, set()).add(day)
    return {f: sorted(d) for f, d in sorted(out.items())}


def _fingerprint(lake_root: Path, day: date, fleet: str) -> list[list[Any]]:
    base = lake_root / "telemetry" / f"date={day.isoformat()}" / f"fleet={fleet}"
    return [[p.name, p.stat().st_size] for p in sorted(base.glob("*.parquet"))]


def _read_ledger(state: Path, fleet: str, day: date) -> dict[str, Any] | None:
    try:
        out: dict[str, Any] = json.loads(_ledger_path(state, fleet, day).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return out


def analytics_status(
    lake_root: Path,
    *,
    fleet: str | None = None,
    params: AnalyticsParams | None = None,
    state_root: Path | None = None,
) -> list[DateStatus]:
    """Status of every (date, fleet) that has telemetry, oldest first.

    A date is ``current`` when its ledger names the same input files, parameters and
    previous run as now; ``missing`` when it was never computed; ``stale`` when it was
    but its inputs changed (late data, compaction, new parameters) or an earlier date
    was (re)computed after it: its outputs, and those of every later date, must be
    recomputed in order.
    """
    params = params or AnalyticsParams()
    state = _state_root(lake_root, state_root)
    run_hash = params.run_hash()
    out: list[DateStatus] = []
    for fl, days in _partition_dates(lake_root).items():
        if fleet is not None and fl != fleet:
            continue
        prev_run: str | None = None
        broken = ""
        for day in days:
            ledger = _read_ledger(state, fl, day)
            if ledger is None:
                out.append(DateStatus(day, fl, "missing", "never computed"))
                broken = broken or f"{day} not computed"
                prev_run = None
                continue
            reason = ""
            if broken:
                reason = f"earlier date changed: {broken}"
            elif ledger.get("params") != run_hash:
                reason = "parameters or model changed"
            elif ledger.get("inputs") != _fingerprint(lake_root, day, fl):
                reason = "telemetry files changed (late data or compaction)"
            elif ledger.get("prev_run") != prev_run:
                reason = "computed from a different previous state"
            if reason:
                out.append(DateStatus(day, fl, "stale", reason))
                broken = broken or f"{day} {reason}"
                prev_run = None
            else:
                out.append(DateStatus(day, fl, "current", ""))
                prev_run = str(ledger.get("run_id"))
    out.sort(key=lambda s: (s.day, s.fleet))
    return out


def pending_dates(
    lake_root: Path,
    *,
    fleet: str | None = None,
    params: AnalyticsParams | None = None,
    state_root: Path | None = None,
) -> list[date]:
    """Dates with telemetry whose results are missing or stale, oldest first."""
    status = analytics_status(lake_root, fleet=fleet, params=params, state_root=state_root)
    return sorted({s.day for s in status if s.state != "current"})


def stale_dates(
    lake_root: Path,
    *,
    fleet: str | None = None,
    params: AnalyticsParams | None = None,
    state_root: Path | None = None,
) -> list[date]:
    """Dates computed before whose results are out of date, oldest first."""
    status = analytics_status(lake_root, fleet=fleet, params=params, state_root=state_root)
    return sorted({s.day for s in status if s.state == "stale"})


# --------------------------------------------------------------------------- registry


_REGISTRY_COLUMNS = {
    "vin": pa.string(),
    "fleet": pa.string(),
    "chemistry": pa.string(),
    "capacity_ah": pa.float64(),
    "n_cells": pa.int16(),
    "in_service_date": pa.date32(),
    "warranty_policy": pa.string(),
}


def read_registry(lake_root: Path, fleet: str | None = None) -> pa.Table:
    """The vehicle registry (``registry/vehicles.parquet``), optionally of one fleet.

    Raises
    ------
    BmsError
        The file exists but lacks a documented column or names an unknown chemistry.
    """
    path = lake_root / "registry" / "vehicles.parquet"
    if not path.exists():
        return pa.schema(list(_REGISTRY_COLUMNS.items())).empty_table()
    table = pq.read_table(path)
    missing = [c for c in _REGISTRY_COLUMNS if c not in table.column_names]
    if missing:
        raise BmsError(f"registry {path} lacks column(s) {', '.join(missing)}")
    table = table.select(list(_REGISTRY_COLUMNS)).cast(pa.schema(list(_REGISTRY_COLUMNS.items())))
    bad = set(table["chemistry"].to_pylist()) - set(CHEMISTRIES)
    if bad:
        raise BmsError(
            f"registry {path}: unknown chemistry {sorted(map(str, bad))}; "
            f"valid: {', '.join(CHEMISTRIES)}"
        )
    if fleet is not None:
        table = table.filter(pc.equal(table["fleet"], fleet))
    return table


# --------------------------------------------------------------------------- carry

_RP_FIELDS = (
    "t_ms",
    "q_uah",
    "covered_ms",
    "bad_gaps",
    "soc_pct",
    "soc_sigma_pct",
    "temp_c",
    "ocv_v",
    "rest_h",
    "anchor",  # 0 = end of a rest, 1 = charge-step fit (_ANCHORS)
    "ocv_sigma_mv",  # a rest's OCV uncertainty (with its extrapolation); NaN at anchors
)

#: What fixed a point's SoC: the OCV at the end of a rest, or a charge-step fit.
_ANCHORS = ("rest", "charge_step")

CARRY_SCHEMA = pa.schema(
    [
        ("vin", pa.string()),
        ("last_date", pa.date32()),
        ("last_ts_ms", pa.int64()),
        ("last_current_a", pa.float64()),
        ("last_voltage_v", pa.float64()),
        ("last_soc_pct", pa.float64()),
        ("last_temp_c_max", pa.float64()),
        ("last_mode", pa.string()),
        ("last_odometer_km", pa.float64()),
        ("rest_start_ms", pa.int64()),
        ("rest_mode_before", pa.string()),
        # charge moved in the direction before the open rest, when it began; the
        # direction of the current since the latest turn (by mode: +1 charging, -1
        # discharging) and the total charge count there (the LFP hysteresis branch)
        ("rest_branch_moved_uah", pa.int64()),
        ("branch_direction", pa.int8()),
        ("branch_since_uah", pa.int64()),
        ("q_total_uah", pa.int64()),
        ("covered_total_ms", pa.int64()),
        ("bad_gaps_total", pa.int64()),
        *[(f"rp_{f}", pa.list_(pa.float64())) for f in _RP_FIELDS],
        ("rp_cell_soc_pct", pa.list_(pa.list_(pa.float32()))),
        ("cell_capacity_ratio", pa.list_(pa.float64())),
        ("cell_ratio_pairs", pa.int64()),
        # per cell, the five sums of bms._leak's normal equations (leak against capacity)
        ("cell_leak_sums", pa.list_(pa.list_(pa.float64()))),
        ("offset_a", pa.float64()),
        ("offset_sigma_a", pa.float64()),
        ("first_ts_ms", pa.int64()),
        ("first_odometer_km", pa.float64()),
        ("days_seen", pa.int64()),
        ("charged_total_uah", pa.int64()),
        ("charged_dc_total_uah", pa.int64()),
        ("over_temp_events_total", pa.int64()),
        ("deep_discharges_total", pa.int64()),
        ("bms_soh_pct", pa.float64()),
        # summed daily_ageing_stress (calendar, cycle; upper and lower bound) and days,
        # since the data began and up to the newest capacity estimate (the day of an
        # estimate counts after it)
        ("stress_cal_total", pa.float64()),
        ("stress_cyc_total", pa.float64()),
        ("stress_cal_low_total", pa.float64()),
        ("stress_cyc_low_total", pa.float64()),
        ("stress_days_total", pa.int64()),
        ("stress_cal_at_estimate", pa.float64()),
        ("stress_cyc_at_estimate", pa.float64()),
        ("stress_cal_low_at_estimate", pa.float64()),
        ("stress_cyc_low_at_estimate", pa.float64()),
        ("stress_days_at_estimate", pa.int64()),
        # the BMS's lowest and highest SoC since the newest capacity estimate (its day
        # included), or since the data began: what a missing estimate lacked
        ("soc_min_since_estimate_pct", pa.float64()),
        ("soc_max_since_estimate_pct", pa.float64()),
        # rests since then (or since the data began) that gave no SoC point because a
        # cell read outside the plausible range: how many, the first one's time, and
        # those cells (0-based)
        ("unreadable_rests_since_estimate", pa.int64()),
        ("unreadable_since_ms", pa.int64()),
        ("unreadable_cells", pa.list_(pa.int16())),
    ]
)


# --------------------------------------------------------------------------- schemas

_F = pa.float64()
_F32 = pa.float32()
_I = pa.int64()
_TS = pa.timestamp("ms", tz="UTC")

METRICS_SCHEMAS: dict[str, pa.Schema] = {
    "vehicle_day": pa.schema(
        [
            ("vin", pa.string()),
            ("chemistry", pa.string()),
            ("n_readings", _I),
            ("duplicates_dropped", _I),
            ("flagged_readings", _I),
            ("first_ts", _TS),
            ("last_ts", _TS),
            ("covered_hours", _F),
            ("gaps", _I),
            ("distance_km", _F),
            ("odometer_km", _F),
            ("ah_charged", _F),
            ("ah_discharged", _F),
            ("kwh_charged", _F),
            ("kwh_discharged", _F),
            ("equivalent_full_cycles", _F),
            ("ah_charged_dc", _F),
            ("dc_fast_share", _F),
            ("hours_soc_above_90", _F),
            ("hours_soc_below_10", _F),
            ("soc_min_pct", _F),
            ("soc_max_pct", _F),
            ("hours_temp_below_0c", _F),
            ("hours_temp_0_15c", _F),
            ("hours_temp_15_25c", _F),
            ("hours_temp_25_35c", _F),
            ("hours_temp_35_45c", _F),
            ("hours_temp_above_45c", _F),
            ("temp_c_max", _F),
            ("pack_temp_c_max", _F),
            ("temp_c_min", _F),
            ("max_c_rate", _F),
            ("max_charge_c_rate", _F),
            ("max_discharge_c_rate", _F),
            ("rest_periods", _I),
            ("rest_hours", _F),
            ("over_temp_events", _I),
            ("deep_discharges", _I),
            ("rest_current_median_a", _F),
            ("rest_current_mad_a", _F),
            ("rest_readings", _I),
            ("bms_soh_pct", _F),
            ("bms_cycle_count", _I),
        ]
    ),
    "capacity": pa.schema(
        [
            ("vin", pa.string()),
            ("chemistry", pa.string()),
            ("start_ts", _TS),
            ("end_ts", _TS),
            ("soc_start_pct", _F),
            ("soc_end_pct", _F),
            ("ocv_start_v", _F),
            ("ocv_end_v", _F),
            ("rest_start_h", _F),
            ("rest_end_h", _F),
            ("start_anchor", pa.string()),
            ("end_anchor", pa.string()),
            ("charge_ah", _F),
            ("current_offset_a", _F),
            ("duration_h", _F),
            ("temp_c", _F),
            ("capacity_ah", _F),
            ("rated_capacity_ah", _F),
            ("soh_pct", _F),
            ("rel_sigma", _F),
            ("weight", _F),
            ("bms_soh_pct", _F),
        ]
    ),
    "resistance": pa.schema(
        [
            ("vin", pa.string()),
            ("chemistry", pa.string()),
            ("n_steps", _I),
            ("delay_s", _F),
            ("temp_c", _F),
            ("soc_pct", _F),
            ("resistance_mohm", _F),
            ("resistance_mohm_25c", _F),
            ("resistance_sigma_mohm", _F),
            ("cells_mohm_25c", _F),
            ("cells_sigma_mohm", _F),
            ("interconnect_mohm", _F),
            ("interconnect_sigma_mohm", _F),
            ("reference_temp_c", _F),
            ("cell_resistance_mohm_25c", pa.list_(_F32)),
        ]
    ),
    "cell_day": pa.schema(
        [
            ("vin", pa.string()),
            ("cell", pa.int16()),
            ("n_cells", pa.int16()),
            ("rest_dev_mv", _F),
            ("n_rest", _I),
            ("self_discharge_mv_per_day", _F),
            ("self_discharge_hours", _F),
            ("sag_mv", _F),
            ("n_load", _I),
            ("resistance_mohm", _F),
            ("resistance_mohm_25c", _F),
            ("resistance_dev_pct", _F),
            ("n_steps", _I),
            ("temp_dev_c", _F),
            ("min_cell_share", _F),
            ("max_cell_share", _F),
        ]
    ),
    "vehicle_soh": pa.schema(
        [
            ("vin", pa.string()),
            ("chemistry", pa.string()),
            ("has_data_today", pa.bool_()),
            ("age_years", _F),
            ("odometer_km", _F),
            ("km_per_day", _F),
            ("n_estimates", _I),
            ("soh_pct", _F),
            ("soh_low_pct", _F),
            ("soh_high_pct", _F),
            ("fade_exponent", _F),
            ("soh_new_pct", _F),
            ("fade_pct_per_year_pow", _F),
            ("fit_scale", _F),
            ("soh_shift_pct", _F),
            ("n_resistance_days", _I),
            ("resistance_mohm_25c", _F),
            ("resistance_growth_pct", _F),
            ("resistance_growth_low_pct", _F),
            ("resistance_growth_high_pct", _F),
            ("bms_soh_pct", _F),
            ("policy_id", pa.string()),
            ("horizon_years", _F),
            ("horizon_km", _F),
            ("projected_soh_pct", _F),
            ("projected_soh_low_pct", _F),
            ("projected_soh_high_pct", _F),
        ]
    ),
    "warranty": pa.schema(
        [
            ("vin", pa.string()),
            ("policy_id", pa.string()),
            ("status", pa.string()),
            ("reason", pa.string()),
            ("threshold_min_soh_pct", _F),
            ("threshold_years", _F),
            ("threshold_km", _F),
            ("coverage_end_years", _F),
            ("coverage_end_km", _F),
            ("age_years", _F),
            ("odometer_km", _F),
            ("km_per_day", _F),
            ("soh_pct", _F),
            ("soh_low_pct", _F),
            ("soh_high_pct", _F),
            ("projected_soh_pct", _F),
            ("projected_soh_low_pct", _F),
            ("projected_soh_high_pct", _F),
            ("over_temp_events", _I),
            ("dc_fast_share", _F),
            ("deep_discharges", _I),
            ("usage_flags", pa.list_(pa.string())),
            ("evidence", pa.string()),
            ("model_version", pa.string()),
        ]
    ),
}

_HISTORY_SCHEMAS = {
    "capacity": pa.schema(
        [
            ("vin", pa.string()),
            ("date", pa.date32()),
            ("t_ms", _I),
            ("soh_pct", _F),
            ("sigma_pct", _F),
        ]
    ),
    "resistance": pa.schema(
        [
            ("vin", pa.string()),
            ("date", pa.date32()),
            ("t_ms", _I),
            ("r_mohm", _F),
            ("sigma_mohm", _F),
            # The pack's two shares, trended apart (fit_vehicle_resistance_split).
            ("r_cells_mohm", _F),
            ("sigma_cells_mohm", _F),
            ("r_inter_mohm", _F),
            ("sigma_inter_mohm", _F),
        ]
    ),
}


def _to_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast a query result to a documented schema (column order, types)."""
    cols = []
    for f in schema:
        col = table[f.name]
        if pa.types.is_timestamp(f.type) and pa.types.is_timestamp(col.type):
            col = pc.cast(pc.cast(col, pa.timestamp("ms")), pa.timestamp("ms")).cast(f.type)
        cols.append(pc.cast(col, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


# --------------------------------------------------------------------------- runner


def run_analytics(
    lake_root: Path,
    day: date,
    *,
    fleet: str | None = None,
    params: AnalyticsParams | None = None,
    state_root: Path | None = None,
) -> AnalyticsSummary:
    """Compute every metrics table for one date (all fleets with data, or one).

    Parameters
    ----------
    lake_root : Path
        Root of the lake (``data/lake``).
    day : date
        UTC event date.
    fleet : str, optional
        Only this fleet.
    params : AnalyticsParams, optional
    state_root : Path, optional
        Analytics state folder; default ``lake_root/../state/analytics``.

    Returns
    -------
    AnalyticsSummary
        Counts, verdict tally, files written and the later dates that became stale.

    Raises
    ------
    BmsError
        No telemetry for that date (and fleet), bad registry, unknown policy.
    """
    params = params or AnalyticsParams()
    state = _state_root(lake_root, state_root)
    started = time.perf_counter()
    partitions = _partition_dates(lake_root)
    fleets = [f for f, days in partitions.items() if day in days and (fleet is None or f == fleet)]
    if not fleets:
        where = f" and fleet {fleet}" if fleet else ""
        raise BmsError(f"no telemetry for {day.isoformat()}{where} in {lake_root / 'telemetry'}")
    totals: dict[str, int] = {"vehicles": 0, "readings": 0, "dups": 0, "cap": 0, "steps": 0}
    verdicts: dict[str, int] = {}
    files: list[Path] = []
    unknown: set[str] = set()
    for fl in fleets:
        session = _FleetSession(lake_root, state, fl, params, partitions[fl])
        try:
            res = session.run_day(day)
            session.flush()
        finally:
            session.close()
        for k, v in res["totals"].items():
            totals[k] += v
        for k, v in res["verdicts"].items():
            verdicts[k] = verdicts.get(k, 0) + v
        files.extend(res["files"])
        unknown.update(res["unknown"])
    later = sorted({d for f in fleets for d in partitions[f] if d > day})
    stale_after: tuple[date, ...] = ()
    if later:
        pending = set(pending_dates(lake_root, params=params, state_root=state_root))
        stale_after = tuple(d for d in later if d in pending)
    return AnalyticsSummary(
        day=day,
        fleets=tuple(fleets),
        vehicles=totals["vehicles"],
        readings=totals["readings"],
        duplicates_dropped=totals["dups"],
        capacity_estimates=totals["cap"],
        resistance_steps=totals["steps"],
        unknown_vins=tuple(sorted(unknown)),
        verdicts=dict(sorted(verdicts.items())),
        files=tuple(files),
        seconds=time.perf_counter() - started,
        stale_after=stale_after,
    )


def run_pending(
    lake_root: Path,
    *,
    fleet: str | None = None,
    params: AnalyticsParams | None = None,
    state_root: Path | None = None,
    since: date | None = None,
    until: date | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[AnalyticsSummary]:
    """Catch up: compute every date whose results are missing or stale, in order.

    ``since`` / ``until`` limit the dates (inclusive; e.g. the nightly batch stops at its
    run date); ``progress(done, total)`` is called after each unit of dates.

    Each fleet's dates run in one session (one DuckDB connection, the registry, the
    carried state and the estimate histories kept in memory between dates); outputs are
    identical to computing the dates one by one with ``run_analytics``. The ledgers of
    computed dates are written every ``_FLUSH_DATES`` dates, after the outputs and the
    state they depend on are durable, so a run killed half-way recomputes only the
    dates it had not recorded.
    """
    params = params or AnalyticsParams()
    state = _state_root(lake_root, state_root)
    partitions = _partition_dates(lake_root)
    status = analytics_status(lake_root, fleet=fleet, params=params, state_root=state_root)
    out = []
    todo = {
        fl: sorted(
            {
                s.day
                for s in status
                if s.fleet == fl
                and s.state != "current"
                and (since is None or s.day >= since)
                and (until is None or s.day <= until)
            }
        )
        for fl in sorted(partitions)
        if fleet is None or fl == fleet
    }
    total = sum(len(d) for d in todo.values())
    for fl, days in todo.items():
        if not days:
            continue
        session = _FleetSession(lake_root, state, fl, params, partitions[fl])
        try:
            for unit in _units(lake_root, fl, days, params.unit_readings):
                started = time.perf_counter()
                results = session.run_days(unit)
                session.flush()
                for day, res in zip(unit, results, strict=True):
                    out.append(_summary(day, (fl,), [res], started, unit_days=len(unit)))
                if progress is not None:
                    progress(len(out), total)
        finally:
            session.close()
    return out


def _units(lake_root: Path, fleet: str, days: list[date], max_readings: int) -> list[list[date]]:
    """Consecutive dates in groups of at most ``_FLUSH_DATES`` dates and about
    ``max_readings`` stored rows (from the Parquet footers; a date is never split)."""
    units: list[list[date]] = []
    rows = 0
    for day in days:
        part = lake_root / "telemetry" / f"date={day.isoformat()}" / f"fleet={fleet}"
        n = sum(pq.read_metadata(p).num_rows for p in part.glob("*.parquet"))
        if units and len(units[-1]) < _FLUSH_DATES and rows + n <= max_readings:
            units[-1].append(day)
            rows += n
        else:
            units.append([day])
            rows = n
    return units


#: A catch-up computes at most this many dates together and records their ledgers (and
#: writes the estimate histories) after each such unit.
_FLUSH_DATES = 64


def _summary(
    day: date,
    fleets: tuple[str, ...],
    results: list[dict[str, Any]],
    started: float,
    *,
    unit_days: int = 1,
) -> AnalyticsSummary:
    totals: dict[str, int] = {"vehicles": 0, "readings": 0, "dups": 0, "cap": 0, "steps": 0}
    verdicts: dict[str, int] = {}
    files: list[Path] = []
    unknown: set[str] = set()
    for res in results:
        for k, v in res["totals"].items():
            totals[k] += v
        for k, v in res["verdicts"].items():
            verdicts[k] = verdicts.get(k, 0) + v
        files.extend(res["files"])
        unknown.update(res["unknown"])
    return AnalyticsSummary(
        day=day,
        fleets=fleets,
        vehicles=totals["vehicles"],
        readings=totals["readings"],
        duplicates_dropped=totals["dups"],
        capacity_estimates=totals["cap"],
        resistance_steps=totals["steps"],
        unknown_vins=tuple(sorted(unknown)),
        verdicts=dict(sorted(verdicts.items())),
        files=tuple(files),
        seconds=time.perf_counter() - started,
        unit_days=unit_days,
    )


def _connect(params: AnalyticsParams) -> Any:
    con = duckdb_connect(threads=params.threads)
    _set_variables(con, params)
    return con


def _set_variables(con: Any, params: AnalyticsParams) -> None:
    """The SQL jobs' parameters, as variables of connection ``con`` (they are per
    connection, as are temporary tables and registered Arrow tables)."""
    variables = {
        "rest_c_rate": params.rest_c_rate,
        "max_gap_s": params.max_gap_s,
        "default_capacity_ah": params.default_capacity_ah,
        "over_temp_c": params.over_temp_c,
        "over_temp_spread_c": params.over_temp_spread_c,
        "deep_discharge_soc_pct": params.deep_discharge_soc_pct,
        "rest_min_s": float(params.rest_min_s),
        "rest_relax_min_s": float(params.rest_relax_min_s),
        "step_min_c_rate": params.step_min_c_rate,
        "step_max_delay_s": params.step_max_delay_s,
        "step_soc_min_pct": params.step_soc_min_pct,
        "step_soc_max_pct": params.step_soc_max_pct,
        "load_c_rate": params.load_c_rate,
        "cell_rest_min_s": float(params.cell_rest_min_s),
        "settle_s": float(params.settle_s),
        "self_discharge_min_s": float(params.self_discharge_min_s),
        "charge_step_c_rate": params.charge_step_c_rate,
        "charge_step_soc_min_pct": params.charge_step_soc_min_pct,
        "charge_step_soc_max_pct": params.charge_step_soc_max_pct,
        "charge_step_every_s": params.charge_step_every_s,
        "cal_b_nmc_k": calendar_arrhenius_k("nmc"),
        "cal_b_lfp_k": calendar_arrhenius_k("lfp"),
        "cal_ref_temp_c": CALENDAR_REF_TEMP_C,
        "cell_mv_min": float(CELL_MV_MIN),
        "cell_mv_max": float(CELL_MV_MAX),
    }
    set_double_variables(con, variables)


class _FleetSession:
    """Consecutive dates of one fleet: one DuckDB connection, the registry and policies
    read once, each vehicle's carried state and the estimate histories kept in memory
    between dates, trend fits reused while a vehicle's estimates do not change.

    ``run_day`` writes a date's metrics and carry (durable when it returns); ``flush``
    writes the histories and then the ledgers of the dates run since the last flush, so
    a ledger never names state that is not on disk.
    """

    def __init__(
        self,
        lake_root: Path,
        state: Path,
        fleet: str,
        params: AnalyticsParams,
        partition_days: list[date],
    ) -> None:
        self.lake_root = lake_root
        self.state = state
        self.fleet = fleet
        self.params = params
        self.partition_days = partition_days
        self.registry = read_registry(lake_root, fleet)
        # capacity_ah is nullable: the default, as readings.sql takes for the C-rates
        default_ah = params.default_capacity_ah
        self.reg = {
            r["vin"]: {
                **r,
                "capacity_ah": default_ah if r["capacity_ah"] is None else r["capacity_ah"],
            }
            for r in self.registry.to_pylist()
        }
        self.policies = _PolicyCache(params)
        # Every vehicle's policy is loaded before any date is computed: a registry naming
        # an unknown preset or a bad file stops the run here, naming the vehicle.
        for vin, r in self.reg.items():
            try:
                self.policies.get(r.get("warranty_policy"))
            except WarrantyPolicyError as exc:
                raise WarrantyPolicyError(f"registry, vehicle {vin}: {exc}") from None
        self.run_hash = params.run_hash()
        self.con = _connect(params)
        self.cons: list[Any] = [self.con]  # one connection per vehicle group in flight
        base = state / "carry" / f"fleet={fleet}"
        self.carry_days = (
            {date.fromisoformat(p.stem.removeprefix("date=")) for p in base.glob("date=*.parquet")}
            if base.is_dir()
            else set()
        )
        self.carry_mem: tuple[date, pa.Table] | None = None
        self.history: dict[str, pa.Table] = {}
        self.history_dirty = False
        self.run_ids: dict[date, str] = {}
        self.ledgers: list[tuple[bytes, Path]] = []
        self.fits: dict[tuple[str, str], tuple[bytes, Any]] = {}

    def close(self) -> None:
        for con in reversed(self.cons):
            con.close()

    # ----------------------------------------------------------------- state

    def _carry_before(self, day: date) -> pa.Table:
        earlier = [d for d in self.carry_days if d < day]
        if not earlier:
            return CARRY_SCHEMA.empty_table()
        latest = max(earlier)
        if self.carry_mem is not None and self.carry_mem[0] == latest:
            return self.carry_mem[1]
        table = pq.read_table(_carry_path(self.state, self.fleet, latest), schema=CARRY_SCHEMA)
        self.carry_mem = (latest, table)  # the SQL pass and the day's finish both read it
        return table

    def _prev_run_id(self, day: date) -> str | None:
        days = [d for d in self.partition_days if d < day]
        if not days:
            return None
        prev = days[-1]
        if prev in self.run_ids:
            return self.run_ids[prev]
        ledger = _read_ledger(self.state, self.fleet, prev)
        return None if ledger is None else str(ledger.get("run_id"))

    def _history(self, kind: str) -> pa.Table:
        if kind not in self.history:
            path = _history_path(self.state, self.fleet, kind)
            schema = _HISTORY_SCHEMAS[kind]
            if path.exists():
                # A history written before a column was added gets it as nulls.
                table = pq.read_table(path)
                self.history[kind] = pa.table(
                    [
                        table[f.name].cast(f.type)
                        if f.name in table.column_names
                        else pa.nulls(table.num_rows, f.type)
                        for f in schema
                    ],
                    schema=schema,
                )
            else:
                self.history[kind] = schema.empty_table()
        return self.history[kind]

    def _update_history(
        self, day: date, capacity_rows: list[dict[str, Any]], resistance: pa.Table
    ) -> tuple[pa.Table, pa.Table]:
        """Replace day D's rows in the estimate histories; return both (all dates)."""
        cap_new = _rows_table(
            [
                {
                    "vin": e["vin"],
                    "date": day,
                    "t_ms": int(e["t_mid_ms"]),
                    "soh_pct": e["soh_pct"],
                    "sigma_pct": e["rel_sigma"] * e["soh_pct"],
                }
                for e in capacity_rows
            ],
            _HISTORY_SCHEMAS["capacity"],
        )
        noon_ms = int(datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp() * 1000)
        res_new = _rows_table(
            [
                {
                    "vin": r["vin"],
                    "date": day,
                    "t_ms": noon_ms,
                    "r_mohm": r["resistance_mohm_25c"],
                    "sigma_mohm": r["resistance_sigma_mohm"],
                    "r_cells_mohm": r["cells_mohm_25c"],
                    "sigma_cells_mohm": r["cells_sigma_mohm"],
                    "r_inter_mohm": r["interconnect_mohm"],
                    "sigma_inter_mohm": r["interconnect_sigma_mohm"],
                }
                for r in resistance.to_pylist()
            ],
            _HISTORY_SCHEMAS["resistance"],
        )
        out = []
        for kind, new in (("capacity", cap_new), ("resistance", res_new)):
            old = self._history(kind)
            old = old.filter(pc.not_equal(old["date"], pa.scalar(day, pa.date32())))
            table = pa.concat_tables([old, new]).sort_by(
                [("vin", "ascending"), ("date", "ascending"), ("t_ms", "ascending")]
            )
            self.history[kind] = table
            out.append(table)
        self.history_dirty = True
        return out[0], out[1]

    def fit(
        self, kind: str, vin: str, rows: Mapping[str, np.ndarray], make: Callable[[], _Fit]
    ) -> _Fit:
        """``make()`` unless the same estimates were fitted before in this session."""
        key = b"".join(np.ascontiguousarray(v).tobytes() for _, v in sorted(rows.items()))
        hit = self.fits.get((kind, vin))
        if hit is not None and hit[0] == key:
            out: _Fit = hit[1]
            return out
        fit = make()
        self.fits[(kind, vin)] = (key, fit)
        return fit

    def flush(self) -> None:
        """Write the histories, then the ledgers of the dates run since the last flush."""
        if self.history_dirty:
            _write_durably(
                [(t, _history_path(self.state, self.fleet, k)) for k, t in self.history.items()]
            )
            self.history_dirty = False
        if self.ledgers:
            _write_durably(self.ledgers)
            self.ledgers = []

    # ----------------------------------------------------------------- one date

    def run_day(self, day: date) -> dict[str, Any]:
        """Compute one date (a unit of one)."""
        return self.run_days([day])[0]

    def _rows_pass(
        self, con: Any, carry: pa.Table, in_order: bool, vins: list[str]
    ) -> dict[str, pa.Table]:
        """The jobs that read every reading, over the ``tele`` view of connection ``con``
        (``in_order``: its rows are in (vin, ts, seq) order, one per (vin, seq); ``vins``:
        its VINs in the order of their rows, else sorted): the group's tables of
        ``_PASS_ORDER`` that do not need cell lists, and what the cell jobs
        (``_cells_pass``) take from the readings: the chosen readings (``cell_select``,
        ``charge_select``, ``relax_select``) and the min / max cell counts
        (``cell_counts``)."""
        params = self.params
        con.register("registry", self.registry)
        con.register("carry", carry)
        con.register(
            "vin_order",
            pa.table({"vin": pa.array(vins, pa.string()), "k": pa.array(range(1, len(vins) + 1))}),
        )
        if in_order:
            # with the count of valid temperature values, as reading_rows.sql adds it
            con.execute(
                "CREATE OR REPLACE TEMP VIEW reading_rows AS "
                "SELECT *, list_aggregate(temp_dc, 'count') AS temps_valid FROM tele"
            )
        else:
            con.register("reading_rows", con.sql(_sql("reading_rows")).to_arrow_table())
        # the readings table's vin key (readings.sql), in VARCHAR order
        con.execute(
            "CREATE OR REPLACE TEMP TYPE vin_key AS ENUM "
            "(SELECT vin FROM vin_order WHERE vin IS NOT NULL ORDER BY vin)"
        )
        try:
            con.execute(_sql("readings"))
            con.execute(_sql("rest_runs"))
            con.execute(_sql("resistance_steps"))
            vehicle_day = con.sql(_sql("vehicle_day")).to_arrow_table()
            steps = con.sql(
                "SELECT * FROM resistance_steps ORDER BY day_n, vin, ts_ms, seq"
            ).to_arrow_table()
            steps = _steps_with_factor(steps, params)
            con.register("steps", steps)
            cell_select = con.sql(_sql("cell_select")).to_arrow_table()
            charge_select = con.sql(_sql("charge_select")).to_arrow_table()
            relax_select = con.sql(_sql("relax_select")).to_arrow_table()
            cell_counts = con.sql(_sql("cell_counts")).to_arrow_table()
            # the rests the carry and capacity step uses: long enough for an OCV point
            # (extrapolated from rest_relax_min_s), or still open at the day's end (a
            # flickering current makes many others)
            rest_runs = con.sql(
                "SELECT * FROM rest_runs WHERE open_at_day_end "
                "OR duration_s >= getvariable('rest_relax_min_s') ORDER BY day_n, vin, run_id"
            ).to_arrow_table()
            branch_turns = con.sql(_sql("branch_turns")).to_arrow_table()
            day_carry = con.sql(_sql("carry")).to_arrow_table()
        finally:
            for name in ("steps", "carry", "registry", "vin_order"):
                con.unregister(name)
            if in_order:
                con.execute("DROP VIEW reading_rows")
            else:
                con.unregister("reading_rows")
            # the group's tables are not needed any more (the cell jobs take theirs above)
            for name in ("readings", "rest_runs", "resistance_steps"):
                con.execute(f"DROP TABLE IF EXISTS {name}")
            con.execute("DROP TYPE IF EXISTS vin_key")
        tables = {
            "vehicle_day": vehicle_day,
            "steps": steps,
            "rest_runs": rest_runs,
            "branch_turns": branch_turns,
            "day_carry": day_carry,
            "cell_select": cell_select,
            "charge_select": charge_select,
            "relax_select": relax_select,
            "cell_counts": cell_counts,
        }
        return {name: _vin_as_string(t) for name, t in tables.items()}

    @staticmethod
    def _cells_pass(con: Any, rows: Mapping[str, pa.Table]) -> dict[str, pa.Table]:
        """The cell jobs of one vehicle group on connection ``con``: its tables from
        ``_rows_pass`` and its rows of ``cell_rows`` (``rows``) -> the tables of
        ``_PASS_ORDER`` that need cell lists."""
        names = (
            "steps",
            "cell_select",
            "charge_select",
            "relax_select",
            "cell_counts",
            "rest_runs",
            "cell_rows",
        )
        for name in names:
            con.register(name, rows[name])
        try:
            cell_day = con.sql(_sql("cell_day")).to_arrow_table()
            step_cells = con.sql(_sql("step_cells")).to_arrow_table()
            rest_cells = con.sql(_sql("rest_cells")).to_arrow_table()
            rest_relax = con.sql(_sql("rest_relax")).to_arrow_table()
            charge_cells = con.sql(_sql("charge_cells")).to_arrow_table()
        finally:
            for name in names:
                con.unregister(name)
        return {
            "cell_day": cell_day,
            "step_cells": step_cells,
            "rest_cells": rest_cells,
            "rest_relax": rest_relax,
            "charge_cells": charge_cells,
        }

    def run_days(self, days: list[date]) -> list[dict[str, Any]]:
        """Compute consecutive partition dates in one pass of the SQL jobs (a unit).

        The SQL works per (vehicle, day) and starts from the carry before the first
        date, so each date's outputs are those of computing it alone; the per-vehicle
        steps in Python then run date by date.
        """
        lake_root, fleet, params = self.lake_root, self.fleet, self.params
        files: dict[date, list[Path]] = {}
        for day in days:
            part = lake_root / "telemetry" / f"date={day.isoformat()}" / f"fleet={fleet}"
            files[day] = sorted(part.glob("*.parquet"))
            if not files[day]:
                raise BmsError(f"no telemetry for {day.isoformat()} and fleet {fleet} in {part}")
        carry = self._carry_before(days[0])
        con = self.con
        file_list = ", ".join(
            "'" + str(p).replace("'", "''") + "'" for day in days for p in files[day]
        )
        source = f"read_parquet([{file_list}], hive_partitioning = false)"
        compacted = all(holds_unique_readings(fs) for fs in files.values())
        if compacted and len(days) == 1:
            # Compaction wrote one row per (vin, seq) in (vin, ts, seq) order
            # (pipeline/_compact.py): only the rows per VIN are counted (in parallel).
            vins = [
                (v, n, i, 1, 0, 0)
                for i, (v, n) in enumerate(
                    con.sql(
                        f"SELECT vin, count(*) FROM {source} GROUP BY vin ORDER BY vin"
                    ).fetchall()
                )
            ]
        else:
            con.execute(f"CREATE OR REPLACE TEMP VIEW unit_rows AS SELECT * FROM {source}")
            vins = con.sql(_sql("unit_vins")).fetchall()
            con.execute("DROP VIEW unit_rows")
        # A vehicle's rows hold each seq once if its partition is compacted (its one
        # file) or if they come in one run with rising seqs; otherwise the distinct seqs
        # are counted (a hash of every key: dearer than the count).
        unique = compacted or all(runs == 1 and up == 0 for _, _, _, runs, _, up in vins)
        distinct = (
            {}
            if unique
            else dict(
                con.sql(f"SELECT vin, count(DISTINCT seq) FROM {source} GROUP BY vin").fetchall()
            )
        )
        groups = vin_groups(
            [(str(v), int(n)) for v, n, *_ in vins], max(1, params.chunk_readings)
        ) or [("", "\uffff")]
        # The jobs keep the first received of duplicate (vin, seq) rows; without any
        # they skip that (a sort of every row) altogether.
        dedup = any(distinct[v] != n for v, n, *_ in vins) if distinct else False
        # readings.sql reads the rows in (vin, ts, seq) order, each VIN's rows together
        # and no (vin, seq) twice: compaction writes them so; other files are sorted
        # first (reading_rows.sql, without the cell lists). It looks each vehicle's
        # registry and carried values up by its position in that order.
        in_order = not dedup and all(runs == 1 and back == 0 for _, _, _, runs, back, _ in vins)
        first_row = {str(v): int(r) for v, _, r, *_ in vins}
        # Every SQL job works per vehicle, so the pass runs vehicle group by vehicle group
        # (memory bounded by the groups in flight, not the fleet) and the outputs are
        # concatenated and put back in the jobs' order: identical to one pass over
        # everything. DuckDB runs the jobs' window sorts on about one core, so groups run
        # side by side, one connection each (temporary tables are per connection). The
        # pass has three steps: each group's readings jobs (_rows_pass), one scan of the
        # cell lists the groups chose (cell_rows.sql), each group's cell jobs
        # (_cells_pass).
        workers = min(len(groups), params.chunk_workers or os.cpu_count() or 1)
        while len(self.cons) < workers:
            extra = self.con.cursor()
            _set_variables(extra, params)
            self.cons.append(extra)

        def in_lanes(
            job: Callable[[int, Any], _T], then: Callable[[int, _T], _U] | None = None
        ) -> list[Any]:
            """``job(i, connection)`` for every group; group i always runs on connection
            i % workers, after group i - workers. With ``then``, ``then(i, result)`` in
            the calling thread, group by group in order as the lanes finish them: Python
            work there overlaps the lanes' SQL (run in the lanes themselves, two threads
            of Python contend for the GIL and both take half as much CPU again)."""
            finish = then if then is not None else (lambda i, r: r)
            if workers == 1:
                return [finish(i, job(i, self.con)) for i in range(len(groups))]
            done: list[Future[_T]] = [Future() for _ in groups]

            def lane(w: int) -> None:
                mine = range(w, len(groups), workers)
                for k, i in enumerate(mine):
                    try:
                        done[i].set_result(job(i, self.cons[w]))
                    except BaseException as e:
                        for j in mine[k:]:
                            done[j].set_exception(e)
                        return

            with ThreadPoolExecutor(max_workers=workers) as pool:
                lanes = [pool.submit(lane, w) for w in range(workers)]
                out = [finish(i, f.result()) for i, f in enumerate(done)]
                for f in lanes:
                    f.result()
            return out

        def rows_group(i: int, c: Any) -> dict[str, pa.Table]:
            first, last = groups[i]
            lo, hi = first.replace("'", "''"), last.replace("'", "''")
            c.execute(f"SET VARIABLE dedup = {dedup}")
            c.execute(
                f"CREATE OR REPLACE TEMP VIEW tele AS SELECT * FROM {source} "
                f"WHERE vin BETWEEN '{lo}' AND '{hi}'"
            )
            vins = [v for v in first_row if first <= v <= last]
            if in_order:
                vins.sort(key=first_row.__getitem__)
            return self._rows_pass(c, carry, in_order, vins)

        row_results = in_lanes(rows_group)
        # The cell lists of every group's chosen readings in one scan of the unit's files
        # (cell_rows.sql; DuckDB spreads it over the cores).
        con.execute(f"SET VARIABLE dedup = {dedup}")
        con.execute(f"CREATE OR REPLACE TEMP VIEW tele AS SELECT * FROM {source}")
        for name in ("cell_select", "charge_select", "relax_select"):
            con.register(name, pa.concat_tables([r[name] for r in row_results]))
        try:
            cell_rows = con.sql(_sql("cell_rows")).to_arrow_table()
        finally:
            for name in ("cell_select", "charge_select", "relax_select"):
                con.unregister(name)
        cell_vin = cell_rows["vin"]

        carried = {r["vin"]: r for r in carry.to_pylist()}

        def cells_group(i: int, c: Any) -> dict[str, pa.Table]:
            first, last = groups[i]
            mine = pc.and_(pc.greater_equal(cell_vin, first), pc.less_equal(cell_vin, last))
            return self._cells_pass(c, {**row_results[i], "cell_rows": cell_rows.filter(mine)})

        def vehicles_group(
            i: int, cells: dict[str, pa.Table]
        ) -> tuple[dict[str, pa.Table], list[_VehicleUpdate]]:
            # The group's per-vehicle steps in Python, while the lanes' SQL runs on.
            first, last = groups[i]
            prev = {v: r for v, r in carried.items() if first <= v <= last}
            return cells, self._update_vehicles(days, prev, {**row_results[i], **cells})

        # The per-vehicle fits in Python (charge steps, capacity pairs, trends) multiply
        # small matrices, hundreds of times a day: BLAS's own thread pool splits each
        # product and its threads spin between them, which costs more CPU than it saves
        # time (charge-step fits at 96 cells x ~300 readings: about 21 -> 8 ms CPU per
        # fit on one thread). Limited while they run (here and in the dates' finish),
        # not process-wide.
        with threadpool_limits(limits=1, user_api="blas"):
            cell_results = in_lanes(cells_group, vehicles_group)
        # carried vehicles without readings in the unit (outside every group's VIN range)
        # keep their rows on every date
        outside = {v: r for v, r in carried.items() if not any(a <= v <= b for a, b in groups)}
        no_steps = METRICS_SCHEMAS["resistance"].empty_table()
        updates = [u for _, u in cell_results] + [[(outside, [], no_steps)] * len(days)]
        results = [{**r, **cr} for r, (cr, _) in zip(row_results, cell_results, strict=True)]
        # what the dates' finish reads of the fleet (the groups did the rest)
        fleet_tables = ("vehicle_day", "steps", "cell_day")
        parts: dict[str, list[pa.Table]] = {name: [] for name in fleet_tables}
        for result in results:
            for name in fleet_tables:
                parts[name].append(result[name])
        tables: dict[str, pa.Table] = {}
        for name in fleet_tables:
            order = _PASS_ORDER[name]
            if len(parts[name]) == 1:
                tables[name] = parts[name][0]
            elif len(days) == 1:
                # one day: the groups' ascending VIN ranges, each in (day_n, vin, ...)
                # order with unique keys, are in that order once concatenated
                tables[name] = pa.concat_tables(parts[name])
            else:
                combined = pa.concat_tables(parts[name])
                tables[name] = combined.sort_by([(k, "ascending") for k in order])
        by_day = {name: _split_by_day(t) for name, t in tables.items()}
        out = []
        with threadpool_limits(limits=1, user_api="blas"):
            for k, day in enumerate(days):
                n = (day - _EPOCH_DAY).days
                parts = {
                    name: split.get(n, tables[name].slice(0, 0)) for name, split in by_day.items()
                }
                out.append(self._finish_day(day, files[day], parts, [u[k] for u in updates]))
        return out

    def _update_vehicles(
        self, days: list[date], prev: dict[str, dict[str, Any]], tables: Mapping[str, pa.Table]
    ) -> list[_VehicleUpdate]:
        """The per-vehicle steps of one vehicle group, date by date: its tables of
        ``_PASS_ORDER`` (``tables``) and the carry before the first date of the vehicles
        in its VIN range (``prev``) -> per date, their new carry rows and capacity
        estimates (``_update_carry_and_capacity``) and resistance (``_resistance_table``)."""
        by_day = {name: _split_by_day(tables[name]) for name in _PASS_ORDER}
        out: list[_VehicleUpdate] = []
        for k, day in enumerate(days):
            n = (day - _EPOCH_DAY).days
            part = {name: by_day[name].get(n, tables[name].slice(0, 0)) for name in by_day}
            vd_rows = {r["vin"]: r for r in part["vehicle_day"].to_pylist()}
            new, estimates = _update_carry_and_capacity(
                day,
                prev,
                part["day_carry"],
                part["rest_runs"],
                part["branch_turns"],
                part["rest_cells"],
                part["rest_relax"],
                part["charge_cells"],
                vd_rows,
                self.reg,
                self.params,
            )
            resistance = _resistance_table(
                part["steps"], part["step_cells"], part["cell_day"], self.reg, self.params
            )
            out.append((new, estimates, resistance))
            if k + 1 < len(days):
                # the next date starts from the carry as stored (a NaN is read back null)
                prev = {
                    r["vin"]: r for r in _rows_table(list(new.values()), CARRY_SCHEMA).to_pylist()
                }
        return out

    def _finish_day(
        self,
        day: date,
        files: list[Path],
        parts: Mapping[str, pa.Table],
        updates: list[_VehicleUpdate],
    ) -> dict[str, Any]:
        """The date's metrics, carry and ledger from the fleet's vehicle_day, steps and
        cell_day of the date (``parts``) and its vehicle groups' per-vehicle steps
        (``updates``: every vehicle carried is in one of them)."""
        lake_root, state, fleet, params = self.lake_root, self.state, self.fleet, self.params
        fingerprint = [[p.name, p.stat().st_size] for p in files]
        vehicle_day, steps, cell_day = parts["vehicle_day"], parts["steps"], parts["cell_day"]

        reg = self.reg
        vd_rows = {r["vin"]: r for r in vehicle_day.to_pylist()}
        unknown = sorted(v for v in vd_rows if v not in reg)

        # every vehicle carried: the groups' (each its VIN range's) and the others'
        merged: dict[str, dict[str, Any]] = {}
        capacity_rows: list[dict[str, Any]] = []
        for group_carry, group_estimates, _ in updates:
            merged.update(group_carry)
            capacity_rows += group_estimates
        new_carry = dict(sorted(merged.items()))
        capacity_rows.sort(key=lambda e: (e["vin"], e["end_ts"]))
        # the groups' VIN ranges ascend, each table in VIN order
        resistance = pa.concat_tables([r for _, _, r in updates])
        cap_hist, res_hist = self._update_history(day, capacity_rows, resistance)
        soh_rows, warranty_rows = _trend_and_warranty(
            day, new_carry, cap_hist, res_hist, reg, vd_rows, params, self.policies, self
        )

        outputs = {
            "vehicle_day": _to_schema(vehicle_day, METRICS_SCHEMAS["vehicle_day"]),
            "capacity": _rows_table(capacity_rows, METRICS_SCHEMAS["capacity"]),
            "resistance": _to_schema(resistance, METRICS_SCHEMAS["resistance"]),
            "cell_day": _to_schema(cell_day, METRICS_SCHEMAS["cell_day"]),
            "vehicle_soh": _rows_table(soh_rows, METRICS_SCHEMAS["vehicle_soh"]),
            "warranty": _rows_table(warranty_rows, METRICS_SCHEMAS["warranty"]),
        }
        items: list[tuple[pa.Table | bytes, Path]] = []
        for name, table in outputs.items():
            meta = {
                b"fleetbms.table": name.encode(),
                b"fleetbms.model_version": ANALYTICS_MODEL_VERSION.encode(),
            }
            items.append(
                (table.replace_schema_metadata(meta), metrics_path(lake_root, name, day, fleet))
            )
        carry_table = _rows_table(list(new_carry.values()), CARRY_SCHEMA)
        items.append((carry_table, _carry_path(state, fleet, day)))
        _write_durably(items)
        written = [path for _, path in items[: len(outputs)]]
        self.carry_days.add(day)
        self.carry_mem = (day, carry_table)

        prev_run = self._prev_run_id(day)
        run_id = hashlib.sha256(
            json.dumps([fingerprint, prev_run, self.run_hash], sort_keys=True).encode()
        ).hexdigest()[:16]
        ledger = {
            "date": day.isoformat(),
            "fleet": fleet,
            "inputs": fingerprint,
            "params": self.run_hash,
            "prev_run": prev_run,
            "run_id": run_id,
            "model_version": ANALYTICS_MODEL_VERSION,
        }
        self.run_ids[day] = run_id
        self.ledgers.append(
            (json.dumps(ledger, sort_keys=True, indent=1).encode(), _ledger_path(state, fleet, day))
        )
        statuses: dict[str, int] = {}
        for row in warranty_rows:
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
        return {
            "totals": {
                "vehicles": vehicle_day.num_rows,
                "readings": int(pc.sum(vehicle_day["n_readings"]).as_py() or 0),
                "dups": int(pc.sum(vehicle_day["duplicates_dropped"]).as_py() or 0),
                "cap": len(capacity_rows),
                "steps": steps.num_rows,
            },
            "verdicts": statuses,
            "files": written,
            "unknown": unknown,
        }


def _vin_as_string(table: pa.Table) -> pa.Table:
    """``table`` with its ``vin`` column as strings: the jobs over the readings table give
    it as the ENUM ``vin_key`` (readings.sql), a dictionary array in Arrow."""
    i = table.schema.get_field_index("vin")
    if i < 0 or not pa.types.is_dictionary(table.schema.field(i).type):
        return table
    field = table.schema.field(i).with_type(pa.string())
    return table.set_column(i, field, table.column(i).cast(pa.string()))


def _split_by_day(table: pa.Table) -> dict[int, pa.Table]:
    """Slices of a table sorted by ``day_n``, keyed by day number."""
    if table.num_rows == 0:
        return {}
    day_n = table["day_n"].to_numpy()
    cuts = np.flatnonzero(np.diff(day_n)) + 1
    bounds = [0, *cuts.tolist(), len(day_n)]
    return {int(day_n[lo]): table.slice(lo, hi - lo) for lo, hi in itertools.pairwise(bounds)}


def _write_durably(items: list[tuple[pa.Table | bytes, Path]]) -> None:
    """Write several files atomically: each into a hidden temporary file beside its
    target, all fsync'ed at once (parallel fsyncs share the file system's journal
    commits), renamed over their targets, then their folders fsync'ed. A reader never
    sees a half-written file; when this returns every file is durable."""
    tmps: list[tuple[Path, Path]] = []
    try:
        for data, path in items:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
            tmps.append((tmp, path))
            if isinstance(data, bytes):
                tmp.write_bytes(data)
            else:
                pq.write_table(
                    data, tmp, compression="zstd", compression_level=3, write_statistics=True
                )
        with ThreadPoolExecutor(max_workers=min(16, len(tmps) or 1)) as pool:
            list(pool.map(fsync_path, [t for t, _ in tmps]))
            for tmp, path in tmps:
                os.replace(tmp, path)
            list(pool.map(fsync_path, sorted({p.parent for _, p in tmps})))
    finally:
        for tmp, _ in tmps:
            tmp.unlink(missing_ok=True)


def _rows_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows to a table; a NaN (no value) is stored as null."""
    if not rows:
        return schema.empty_table()
    clean = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
        for r in rows
    ]
    return pa.Table.from_pylist(clean, schema=schema)


class _PolicyCache:
    def __init__(self, params: AnalyticsParams) -> None:
        self.params = params
        self._cache: dict[str, WarrantyPolicy] = {}
        # Fail early on a bad default or override.
        self.get("")

    def get(self, registry_policy: str | None) -> WarrantyPolicy:
        name = self.params.policy_override or registry_policy or self.params.warranty_policy
        if name not in self._cache:
            self._cache[name] = load_warranty_policy(name)
        return self._cache[name]


# --------------------------------------------------------------------------- steps


def _steps_with_factor(steps: pa.Table, params: AnalyticsParams) -> pa.Table:
    temp = steps["temp_c"].to_numpy(zero_copy_only=False).astype(np.float64)
    dv = steps["delta_v"].to_numpy(zero_copy_only=False).astype(np.float64)
    di = steps["delta_a"].to_numpy(zero_copy_only=False).astype(np.float64)
    factor = resistance_temp_factor(temp, params.reference_temp_c)
    r = resistance_mohm_from_step(dv, di)
    steps = steps.append_column("temp_factor", pa.array(factor, pa.float64()))
    steps = steps.append_column("r_mohm", pa.array(r, pa.float64()))
    return steps.append_column("r_mohm_25c", pa.array(r / factor, pa.float64()))


#: Relative scatter of one resistance step, as a floor of a day's sigma: the pack
#: voltage's 0.1 V resolution over a 0.2-0.5 C step is 5-20 % of a 10-15 mOhm pack.
_STEP_REL_SIGMA = 0.15
#: The same for the cells' share alone: 1 mV cell voltages over a 0.2-0.5 C step of a
#: ~1 mOhm cell (10-50 mV) and the polarisation reached at the reading's delay.
_CELL_STEP_REL_SIGMA = 0.03


def _step_resistance_25c(
    r_pack_mohm: np.ndarray, r_cells_mohm: np.ndarray, temp_factor: np.ndarray
) -> np.ndarray:
    """Pack resistance of a step at the reference temperature: the cells' share
    (sum of cell steps) scaled by the Arrhenius factor, the rest (busbars, contactors,
    fuse: metallic, weakly temperature dependent) kept as measured; without cell steps
    the whole pack is scaled."""
    cells = np.where(np.isfinite(r_cells_mohm), r_cells_mohm, r_pack_mohm)
    out: np.ndarray = cells / temp_factor + (r_pack_mohm - cells)
    return out


def _resistance_table(
    steps: pa.Table,
    step_cells: pa.Table,
    cell_day: pa.Table,
    reg: Mapping[str, Mapping[str, Any]],
    params: AnalyticsParams,
) -> pa.Table:
    """Per vehicle: median pack resistance of the day's steps and per-cell medians."""
    cols = {
        n: steps[n].to_numpy(zero_copy_only=False)
        for n in ("vin", "seq", "r_mohm", "delay_s", "temp_c", "soc_pct", "delta_a")
    }
    # The reference SoC band holds for every cell (science.md 6.5: fix the SoC window):
    # a step with a cell rested below the OCV of the band's lower edge is left out.
    low_mv = {
        chem: 1000.0 * float(ocv_v_from_soc_pct(params.step_soc_min_pct, chem))
        for chem in CHEMISTRIES
    }
    cells_dv = {}
    sensors_c = {}
    drained = set()
    for v, q, d, lo, t in zip(
        step_cells["vin"].to_pylist(),
        step_cells["seq"].to_pylist(),
        step_cells["cells_delta_mv"].to_pylist(),
        step_cells["pre_min_mv"].to_pylist(),
        step_cells["temp_c"].to_pylist(),
        strict=True,
    ):
        cells_dv[(v, q)] = math.nan if d is None else d
        sensors_c[(v, q)] = t
        chem = (reg.get(v) or {}).get("chemistry")
        if lo is not None and chem in low_mv and lo < low_mv[chem]:
            drained.add((v, q))
    r_cells = np.array(
        [
            cells_dv.get((v, int(q)), math.nan) / float(di) if di else math.nan
            for v, q, di in zip(cols["vin"], cols["seq"], cols["delta_a"], strict=True)
        ],
        dtype=np.float64,
    )
    # The cells' temperature: the median of the step reading's sensors where its lists
    # were read (robust to one failed sensor), else the readings' mean.
    temp_c = np.array(
        [
            t if (t := sensors_c.get((v, int(q)))) is not None else float(mean_c)
            for v, q, mean_c in zip(cols["vin"], cols["seq"], cols["temp_c"], strict=True)
        ],
        dtype=np.float64,
    )
    temp_factor = np.asarray(
        resistance_temp_factor(temp_c, params.reference_temp_c), dtype=np.float64
    )
    r25_all = _step_resistance_25c(cols["r_mohm"].astype(np.float64), r_cells, temp_factor)
    r25_all[[(v, int(q)) in drained for v, q in zip(cols["vin"], cols["seq"], strict=True)]] = (
        math.nan
    )
    cells: dict[str, list[float]] = {}
    for vin, r25 in zip(
        cell_day["vin"].to_pylist(), cell_day["resistance_mohm_25c"].to_pylist(), strict=True
    ):
        cells.setdefault(vin, []).append(math.nan if r25 is None else float(r25))
    rows = []
    vins = cols["vin"]
    for vin in sorted(set(vins.tolist())):
        m = vins == vin
        r = cols["r_mohm"][m].astype(np.float64)
        r25 = r25_all[m]
        ok = np.isfinite(r25) & (r25 > 0)
        if not ok.any():
            continue
        r25o = r25[ok]
        cells25 = (r_cells / temp_factor)[m][ok]
        inter = (r - r_cells[m])[ok]
        split = np.isfinite(cells25)
        if split.sum() >= 1:
            # Cells: median of the steps (robust). Interconnects: the pack voltage is
            # coarse (0.1 V steps are common), so its share is the mean over the steps,
            # which averages the rounding out where a median would stick to a step.
            c = cells25[split]
            ic = inter[split]
            cells_med = float(np.median(c))
            inter_mean = float(np.mean(ic))
            med = cells_med + inter_mean
            mad = float(np.median(np.abs(c - cells_med))) * 1.4826
            sd_ic = float(np.std(ic)) if ic.size > 2 else 0.0
            # A day's value must not claim more precision than a single step has (the
            # pack voltage's resolution, ~15 % of R per step): with one or two steps
            # their own scatter says nothing, and weighting by it would favour the
            # steps that rounded low.
            # The floors scale with the cells' share, which is precise: scaled by the
            # day's own (noisy) total, a day that rounded low would get more weight.
            sigma = max(
                math.hypot(1.2533 * mad, sd_ic) / math.sqrt(c.size),
                _STEP_REL_SIGMA * cells_med / math.sqrt(c.size),
            )
            # The cells' share rests on 1 mV cell voltages: a few % per step.
            cells_sigma = max(1.2533 * mad, _CELL_STEP_REL_SIGMA * cells_med) / math.sqrt(c.size)
            inter_sigma = _STEP_REL_SIGMA * cells_med / math.sqrt(ic.size)
        else:
            med = float(np.median(r25o))
            mad = float(np.median(np.abs(r25o - med))) * 1.4826
            sigma = max(1.2533 * mad / math.sqrt(r25o.size), 0.005 * med)
            cells_med = cells_sigma = inter_mean = inter_sigma = math.nan
        rows.append(
            {
                "vin": vin,
                "chemistry": (reg.get(vin) or {}).get("chemistry"),
                "n_steps": int(r25o.size),
                "delay_s": float(np.median(cols["delay_s"][m][ok])),
                "temp_c": float(np.median(temp_c[m][ok])),
                "soc_pct": float(np.median(cols["soc_pct"][m][ok])),
                "resistance_mohm": float(np.median(r[ok])),
                "resistance_mohm_25c": med,
                "resistance_sigma_mohm": sigma,
                "cells_mohm_25c": cells_med,
                "cells_sigma_mohm": cells_sigma,
                "interconnect_mohm": inter_mean,
                "interconnect_sigma_mohm": inter_sigma,
                "reference_temp_c": params.reference_temp_c,
                "cell_resistance_mohm_25c": cells.get(vin),
            }
        )
    return _rows_table(rows, METRICS_SCHEMAS["resistance"])


# --------------------------------------------------------------------------- capacity


def _ts(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _update_carry_and_capacity(
    day: date,
    prev: Mapping[str, dict[str, Any]],
    day_carry: pa.Table,
    rest_runs: pa.Table,
    branch_turns: pa.Table,
    rest_cells: pa.Table,
    rest_relax: pa.Table,
    charge_cells: pa.Table,
    vd_rows: Mapping[str, Mapping[str, Any]],
    reg: Mapping[str, Mapping[str, Any]],
    params: AnalyticsParams,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Pair today's SoC points (rest ends, charge-step fits) with the carried ones;
    return the new carry and the capacity estimates."""
    cells_at = {
        (v, r): c
        for v, r, c in zip(
            rest_cells["vin"].to_pylist(),
            rest_cells["run_id"].to_pylist(),
            rest_cells["cell_mv"].to_pylist(),
            strict=True,
        )
    }
    relax_at = {
        (v, r): (t, mv)
        for v, r, t, mv in zip(
            rest_relax["vin"].to_pylist(),
            rest_relax["run_id"].to_pylist(),
            rest_relax["t_s"].to_pylist(),
            rest_relax["mean_cell_mv"].to_pylist(),
            strict=True,
        )
    }
    runs_by_vin: dict[str, list[dict[str, Any]]] = {}
    for row in rest_runs.to_pylist():
        runs_by_vin.setdefault(row["vin"], []).append(row)
    turns_by_vin: dict[str, list[tuple[float, int, bool, int]]] = {}
    for v, t, d, reset, q in zip(
        branch_turns["vin"].to_pylist(),
        branch_turns["ts_ms"].to_pylist(),
        branch_turns["direction"].to_pylist(),
        branch_turns["reset"].to_pylist(),
        branch_turns["q_cum_uah"].to_pylist(),
        strict=True,
    ):
        turns_by_vin.setdefault(v, []).append((t, d, bool(reset), q))
    steps_by_vin = _charge_step_points(charge_cells, reg, params)
    new: dict[str, dict[str, Any]] = {vin: dict(row) for vin, row in prev.items()}
    estimates: list[dict[str, Any]] = []
    for dc in day_carry.to_pylist():
        vin = dc["vin"]
        old = prev.get(vin)
        n_before = len(estimates)
        info = reg.get(vin)
        vd = vd_rows[vin]
        q_base = old["q_total_uah"] if old else 0
        cov_base = old["covered_total_ms"] if old else 0
        gaps_base = old["bad_gaps_total"] if old else 0
        # Current-sensor offset: EWMA of the days' median current at rest.
        offset = old["offset_a"] if old else None
        offset_sigma = old["offset_sigma_a"] if old else None
        n_rest = vd["rest_readings"] or 0
        if n_rest >= 20 and vd["rest_current_median_a"] is not None:
            day_off = float(vd["rest_current_median_a"])
            day_sig = max(
                1.2533 * 1.4826 * float(vd["rest_current_mad_a"] or 0) / math.sqrt(n_rest), 0.005
            )
            if offset is None:
                offset, offset_sigma = day_off, day_sig
            else:
                k = params.offset_smoothing
                offset = (1 - k) * offset + k * day_off
                offset_sigma = math.hypot((1 - k) * (offset_sigma or 0.0), k * day_sig)
        points = (
            [
                dict(zip(_RP_FIELDS, vals, strict=True))
                for vals in zip(*(old[f"rp_{f}"] for f in _RP_FIELDS), strict=True)
            ]
            if old and old["rp_t_ms"]
            else []
        )
        for p, cs in zip(points, (old or {}).get("rp_cell_soc_pct") or [], strict=False):
            p["cell_soc"] = None if cs is None else np.asarray(cs, dtype=np.float64)
        ratio = (
            np.asarray(old["cell_capacity_ratio"], dtype=np.float64)
            if old and old["cell_capacity_ratio"]
            else None
        )
        # None: ratios carried from before the count was kept, long smoothed
        ratio_pairs = (old or {}).get("cell_ratio_pairs") if ratio is not None else 0
        leak = (
            np.asarray(old["cell_leak_sums"], dtype=np.float64)
            if old and old.get("cell_leak_sums")
            else None
        )
        branch, moved_at = _branch_moves(
            old, runs_by_vin.get(vin, []), turns_by_vin.get(vin, []), q_base
        )
        rest_start = None
        rest_mode = None
        rest_moved = None
        unreadable: list[tuple[float, list[int]]] = []  # (rest end [ms], its cells)
        events: list[tuple[float, dict[str, Any] | None, dict[str, Any] | None]] = [
            (float(run["end_ms"]), run, None) for run in runs_by_vin.get(vin, [])
        ]
        events += [(s["t_ms"], None, s) for s in steps_by_vin.get(vin, [])]
        for _, run, step in sorted(events, key=lambda e: e[0]):
            if step is None:
                assert run is not None
                if run["open_at_day_end"]:
                    rest_start = run["start_ms"]
                    rest_mode = run["mode_before_rest"]
                    rest_moved = moved_at.get(run["run_id"])
                    continue
                if info is None or run["duration_s"] < params.rest_relax_min_s:
                    continue
                if not run["n_cells"]:
                    continue
                relaxed = None
                if run["duration_s"] < params.rest_min_s:
                    curve = relax_at.get((vin, run["run_id"]))
                    relaxed = None if curve is None else ocv_mv_from_relaxation(*curve)
                    if relaxed is None:
                        continue
                cells = cells_at.get((vin, run["run_id"]))
                bad = _implausible_cells(cells)
                if bad:
                    unreadable.append((float(run["end_ms"]), bad))
                    continue
                moved = moved_at.get(run["run_id"])
                step = _rest_point(
                    run,
                    cells,
                    info["chemistry"],
                    relaxed,
                    None if moved is None else moved / 1e6 / float(info["capacity_ah"]),
                )
            # the day's counters, continued from the carried totals
            point = {
                **step,
                "q_uah": float(q_base + step["q_uah"]),
                "covered_ms": float(cov_base + step["covered_ms"]),
                "bad_gaps": float(gaps_base + step["bad_gaps"]),
            }
            readable = point["soc_sigma_pct"] <= params.max_soc_sigma_pct
            # A rest on the LFP plateau may still read a cell far from its neighbours
            # (a fast-fading cell near empty): kept for cell-level pairs only.
            cells_only = (
                not readable
                and info is not None
                and bool(_readable_cells(point, info["chemistry"], params).any())
            )
            if (readable or cells_only) and info is not None:
                est = _best_pair(point, points, info, offset, offset_sigma, params)
                if est is not None:
                    ratio, leak, ratio_pairs = _weakest_cell(est, ratio, leak, ratio_pairs, params)
                cell_est = _cell_pair(point, points, info, offset, offset_sigma, params)
                if cell_est is not None and (
                    est is None
                    or cell_est["soh_pct"]
                    < est["soh_pct"]
                    - 2.0 * math.hypot(cell_est["rel_sigma"], est["rel_sigma"]) * est["soh_pct"]
                ):
                    est = cell_est
                if est is not None:
                    est["vin"] = vin
                    est["chemistry"] = info["chemistry"]
                    est["bms_soh_pct"] = run["end_bms_soh_pct"] if run is not None else None
                    estimates.append(est)
                points.append(point)
            recent = [
                p for p in points if point["t_ms"] - p["t_ms"] <= params.max_pair_hours * 3.6e6
            ]
            vague = [p for p in recent if p["soc_sigma_pct"] > params.max_soc_sigma_pct]
            points = [
                p
                for p in recent
                if p["soc_sigma_pct"] <= params.max_soc_sigma_pct or any(p is v for v in vague[-2:])
            ]
            points = [p for p in points if p["soc_sigma_pct"] > params.max_soc_sigma_pct] + [
                p for p in points if p["soc_sigma_pct"] <= params.max_soc_sigma_pct
            ][-6:]
            points.sort(key=lambda p: p["t_ms"])
        # Rest points older than the pairing window are useless tomorrow.
        estimated = len(estimates) > n_before
        horizon_ms = dc["last_ts_ms"] - params.max_pair_hours * 3.6e6
        points = [p for p in points if p["t_ms"] >= horizon_ms]
        row = {
            "vin": vin,
            "last_date": day,
            "last_ts_ms": dc["last_ts_ms"],
            "last_current_a": dc["last_current_a"],
            "last_voltage_v": dc["last_voltage_v"],
            "last_soc_pct": dc["last_soc_pct"],
            "last_temp_c_max": dc["last_temp_c_max"],
            "last_mode": dc["last_mode"],
            "last_odometer_km": dc["last_odometer_km"],
            "rest_start_ms": rest_start if dc["last_at_rest"] else None,
            "rest_mode_before": rest_mode if dc["last_at_rest"] else None,
            "rest_branch_moved_uah": rest_moved if dc["last_at_rest"] else None,
            "branch_direction": branch[0],
            "branch_since_uah": branch[1],
            "q_total_uah": q_base + int(dc["q_day_uah"]),
            "covered_total_ms": cov_base + int(dc["covered_day_ms"]),
            "bad_gaps_total": gaps_base + int(dc["bad_gaps_day"]),
            **{f"rp_{f}": [float(p[f]) for p in points] for f in _RP_FIELDS},
            "rp_cell_soc_pct": [
                None if p.get("cell_soc") is None else p["cell_soc"].tolist() for p in points
            ],
            "cell_capacity_ratio": None if ratio is None else ratio.tolist(),
            "cell_ratio_pairs": None if ratio is None else ratio_pairs,
            "cell_leak_sums": None if leak is None else leak.tolist(),
            "offset_a": offset,
            "offset_sigma_a": offset_sigma,
            "first_ts_ms": old["first_ts_ms"] if old else dc["first_ts_ms"],
            "first_odometer_km": old["first_odometer_km"] if old else dc["first_odometer_km"],
            "days_seen": (old["days_seen"] if old else 0) + 1,
            "charged_total_uah": (old["charged_total_uah"] if old else 0)
            + round(vd["ah_charged"] * 1e6),
            "charged_dc_total_uah": (old["charged_dc_total_uah"] if old else 0)
            + round(vd["ah_charged_dc"] * 1e6),
            "over_temp_events_total": (old["over_temp_events_total"] if old else 0)
            + vd["over_temp_events"],
            "deep_discharges_total": (old["deep_discharges_total"] if old else 0)
            + vd["deep_discharges"],
            "bms_soh_pct": vd["bms_soh_pct"]
            if vd["bms_soh_pct"] is not None
            else (old or {}).get("bms_soh_pct"),
            **_carry_stress(old, vd, info, estimated=estimated),
            **_carry_soc_range(old, vd, estimated=estimated),
            **_carry_unreadable(old, unreadable, estimated=estimated),
        }
        new[vin] = row
    estimates.sort(key=lambda e: (e["vin"], e["end_ts"]))
    return dict(sorted(new.items())), estimates


#: vehicle_day temperature bands with their (lower, upper) edges, the temperatures
#: daily_ageing_stress charges them at for its lower and upper bound (NaN: below 0 degC
#: the day's minimum, above 45 degC the day's maximum). [degC]
_TEMP_BANDS = (
    ("hours_temp_below_0c", math.nan, 0.0),
    ("hours_temp_0_15c", 0.0, 15.0),
    ("hours_temp_15_25c", 15.0, 25.0),
    ("hours_temp_25_35c", 25.0, 35.0),
    ("hours_temp_35_45c", 35.0, 45.0),
    ("hours_temp_above_45c", 45.0, math.nan),
)
#: C-rate of a day whose highest current is missing, for the upper bound: DC fast
#: charging can exceed 2C (225 kW into a 75 kWh pack is 3C, derived), so 3C. The upper
#: bound rises with it only for LFP (Naumann 2020); Schmalstieg's has no C-rate. [1/h]
_WORST_C_RATE = 3.0


#: vehicle_day's calendar exposure columns, one per SoC bin of CALENDAR_SOC_BINS_PCT.
_EXPOSURE_COLUMNS = tuple(f"cal_soc_{int(z)}_h" for z in CALENDAR_SOC_BINS_PCT[:-1])


def _day_stress(
    vd: Mapping[str, Any], info: Mapping[str, Any]
) -> tuple[float, float, float, float]:
    """``daily_ageing_stress`` of a vehicle_day row, upper then lower bound (calendar,
    cycle each). Calendar: the hours whose temperature and SoC were read from their
    exposure (``calendar_stress_from_exposure``, temperature integrated reading by
    reading); the other hours of the day, upper: at the upper edge of the hottest band
    seen, the day's highest SoC; lower: at the day's minimum temperature (as a parked
    car's) and lowest SoC. Cycle: upper with a missing SoC or C-rate at its worst, lower
    at its mildest and C-rate 0."""
    hours = [float(vd[name] or 0.0) for name, _, _ in _TEMP_BANDS]
    t_max = vd["pack_temp_c_max"]
    t_min = vd["temp_c_min"]
    upper = [
        hi if math.isfinite(hi) else max(float(t_max if t_max is not None else 45.0), 45.0)
        for _, _, hi in _TEMP_BANDS
    ]
    lower = [
        lo if math.isfinite(lo) else min(float(t_min if t_min is not None else -40.0), 0.0)
        for _, lo, _ in _TEMP_BANDS
    ]
    seen = [t for t, h in zip(upper, hours, strict=True) if h > 0]
    coldest = min((t for t, h in zip(lower, hours, strict=True) if h > 0), default=-40.0)
    chem = info["chemistry"]
    exposed_h = min(float(vd.get("cal_covered_h") or 0.0), 24.0)
    exposure = [float(vd.get(c) or 0.0) for c in _EXPOSURE_COLUMNS]
    other_h = max(24.0 - exposed_h, 0.0)
    rated_ah = float(info["capacity_ah"])
    throughput_ah = float((vd["ah_charged"] or 0.0) + (vd["ah_discharged"] or 0.0))
    soc_min, soc_max = vd["soc_min_pct"], vd["soc_max_pct"]
    c_max = vd["max_c_rate"]
    hi = daily_ageing_stress(
        chem,
        band_hours=[other_h],
        band_temp_c=[max(seen) if seen else 45.0],
        soc_min_pct=float(soc_min if soc_min is not None else 0.0),
        soc_max_pct=float(soc_max if soc_max is not None else 100.0),
        throughput_ah=throughput_ah,
        rated_capacity_ah=rated_ah,
        c_rate=float(c_max if c_max is not None else _WORST_C_RATE),
        bound="upper",
    )
    lo = daily_ageing_stress(
        chem,
        band_hours=[other_h],
        band_temp_c=[max(float(t_min), coldest) if t_min is not None else coldest],
        soc_min_pct=float(soc_min if soc_min is not None else 0.0),
        soc_max_pct=float(soc_max if soc_max is not None else (soc_min or 0.0)),
        throughput_ah=throughput_ah,
        rated_capacity_ah=rated_ah,
        c_rate=0.0,
        bound="lower",
    )
    cal_hi = hi[0] + calendar_stress_from_exposure(chem, exposure, bound="upper")
    cal_lo = lo[0] + calendar_stress_from_exposure(chem, exposure, bound="lower")
    return cal_hi, hi[1], cal_lo, lo[1]


#: Carried stress sums: totals and their values at the newest estimate.
_STRESS_TOTALS = (
    "stress_cal_total",
    "stress_cyc_total",
    "stress_cal_low_total",
    "stress_cyc_low_total",
    "stress_days_total",
)
_STRESS_AT_ESTIMATE = tuple(n.replace("_total", "_at_estimate") for n in _STRESS_TOTALS)


def _carry_stress(
    old: Mapping[str, Any] | None,
    vd: Mapping[str, Any],
    info: Mapping[str, Any] | None,
    *,
    estimated: bool,
) -> dict[str, Any]:
    """The carried ageing-stress sums after today (a day with an estimate counts after
    it: the use of that day is not all behind the estimate)."""
    totals = [(old or {}).get(n) or 0 for n in _STRESS_TOTALS]
    out: dict[str, Any] = {n: (old or {}).get(n) for n in _STRESS_AT_ESTIMATE}
    if estimated:
        out.update(zip(_STRESS_AT_ESTIMATE, totals, strict=True))
    if info is not None:
        day = (*_day_stress(vd, info), 1)
        totals = [t + d for t, d in zip(totals, day, strict=True)]
    out.update(zip(_STRESS_TOTALS, totals, strict=True))
    return out


def _carry_soc_range(
    old: Mapping[str, Any] | None, vd: Mapping[str, Any], *, estimated: bool
) -> dict[str, float | None]:
    """The carried BMS SoC range after today: today's alone on a day with an estimate
    (as the stress sums, the day counts after it), else widened by today's."""
    lows, highs = [vd["soc_min_pct"]], [vd["soc_max_pct"]]
    if not estimated and old is not None:
        lows.append(old.get("soc_min_since_estimate_pct"))
        highs.append(old.get("soc_max_since_estimate_pct"))
    return {
        "soc_min_since_estimate_pct": min((v for v in lows if v is not None), default=None),
        "soc_max_since_estimate_pct": max((v for v in highs if v is not None), default=None),
    }


def _carry_unreadable(
    old: Mapping[str, Any] | None, today: list[tuple[float, list[int]]], *, estimated: bool
) -> dict[str, Any]:
    """The carried count of rests whose cells could not be read, with the first one's
    time and the cells, after today (as ``_carry_soc_range``: today's alone on a day
    with an estimate)."""
    n = len(today)
    first = today[0][0] if today else None
    cells = {c for _, bad in today for c in bad}
    if not estimated and old is not None and old.get("unreadable_rests_since_estimate"):
        n += int(old["unreadable_rests_since_estimate"])
        first = old.get("unreadable_since_ms") or first
        cells.update(old.get("unreadable_cells") or [])
    return {
        "unreadable_rests_since_estimate": n,
        "unreadable_since_ms": None if first is None else int(first),
        "unreadable_cells": sorted(cells) if n else None,
    }


def _unreadable_clause(carry: Mapping[str, Any]) -> str:
    """What the carried unreadable rests say, for a verdict's reason."""
    cells = carry.get("unreadable_cells") or []
    since = _ts(carry["unreadable_since_ms"]).date().isoformat()
    return (
        f"{carry['unreadable_rests_since_estimate']} rests since {since} gave no SoC: "
        f"cell{'s' if len(cells) > 1 else ''} {', '.join(str(c) for c in cells)} (0-based) "
        f"read outside {CELL_MV_MIN:,}-{CELL_MV_MAX:,} mV (a broken sense wire or a dead "
        "cell; see the anomaly flags)"
    )


def _implausible_cells(cell_mv: list[int | None] | None) -> list[int]:
    """The cells (0-based) read outside the contract's plausible range
    (``CELL_MV_MIN``..``CELL_MV_MAX``, kept and flagged at ingest). Such a value is no
    state of charge on the OCV curve (a broken sense wire, a cell drained by a short),
    and the pack voltage includes a dead cell's, so the rest gives no SoC point (seen:
    a soft-shorted cell read -32 V, then +32 V, and the mean of the cells' clamped SoCs
    made a 90 -> 97 % window out of 0.1 Ah: SoH 0.3 %)."""
    if cell_mv is None:
        return []
    return [
        i for i, v in enumerate(cell_mv) if v is not None and not CELL_MV_MIN <= v <= CELL_MV_MAX
    ]


def _branch_moves(
    old: Mapping[str, Any] | None,
    runs: list[dict[str, Any]],
    turns: list[tuple[float, int, bool, int]],
    q_base: int,
) -> tuple[tuple[int, int | None], dict[int, int | None]]:
    """How far the hysteresis branch had moved when each of the day's rests began.

    ``runs``: the vehicle's rest runs of the day, ``turns``: its ``branch_turns`` rows
    (time, direction, reset, day's charge count), ``q_base``: the total charge count
    before the day. Returns the direction and total count of the latest turn at the
    day's end (for the carry) and, per rest run id, the charge moved in the direction of
    the current before it [uAh]; None where that is unknown (the data's first readings,
    a gap that broke the charge count, a carry from before the count was kept): the
    branch is then anywhere within half a gap. A rest continuing from the day before
    takes the carried value."""
    direction = int((old or {}).get("branch_direction") or 0)
    since = (old or {}).get("branch_since_uah")
    turns = sorted(turns)
    k = 0

    def turn(d: int, reset: bool, q: int) -> None:
        nonlocal direction, since
        if reset:  # the count restarts in the reading's direction (0: unknown)
            direction, since = d, (q_base + q if d else None)
        elif d != 0 and d != direction:
            direction, since = d, q_base + q

    moved_at: dict[int, int | None] = {}
    for run in sorted(runs, key=lambda r: r["start_ms"]):
        if run["run_id"] == 0:
            moved_at[0] = (old or {}).get("rest_branch_moved_uah")
            continue
        while k < len(turns) and turns[k][0] < run["start_ms"]:
            turn(*turns[k][1:])
            k += 1
        before = _DIRECTION.get(run["mode_before_rest"] or "", 0)
        moved = None
        if before != 0 and before == direction and since is not None:
            moved = max(before * (q_base + int(run["start_q_cum_uah"]) - since), 0)
        moved_at[run["run_id"]] = moved
    for _, d, reset, q in turns[k:]:
        turn(d, reset, q)
    return (direction, since), moved_at


def _rest_point(
    run: Mapping[str, Any],
    cell_mv: list[int] | None,
    chem: str,
    relaxed: RelaxedOcv | None = None,
    moved_share: float | None = None,
) -> dict[str, Any]:
    """The SoC point at the end of a rest (day counters; the caller adds the carried
    base). ``relaxed``: a rest too short to have relaxed, its relaxation extrapolated;
    every cell is moved by the mean cell's correction, and its uncertainty joins the
    rest voltage's. ``moved_share``: charge moved in the direction before the rest, a
    share of capacity (``hysteresis_offset_mv``: the LFP branch and its uncertainty);
    None: not known, nor then the branch. The caller has left out rests with an
    implausible cell (``_implausible_cells``)."""
    direction = 0 if moved_share is None else _DIRECTION.get(run["mode_before_rest"] or "", 0)
    shift_mv = 0.0 if relaxed is None else relaxed.correction_mv
    _, branch_sigma_mv = hysteresis_offset_mv(chem, direction, moved_share)
    sigma_mv = math.hypot(REST_VOLTAGE_SIGMA_MV[chem], branch_sigma_mv)
    if relaxed is not None:
        sigma_mv = math.hypot(sigma_mv, relaxed.sigma_mv)
    cell_soc = None
    if cell_mv is not None and None not in cell_mv:
        mv = np.asarray(cell_mv, dtype=np.float64) + shift_mv
        cell_soc = rest_soc_pct_from_cell_mv(mv, chem, direction, moved_share)
        ocv_v = float(np.mean(mv)) / 1000.0
        soc = float(np.mean(cell_soc))
    else:
        ocv_v = run["end_voltage_v"] / run["n_cells"] + shift_mv / 1000.0
        soc = float(rest_soc_pct_from_cell_mv(ocv_v * 1000.0, chem, direction, moved_share))
    return {
        "t_ms": float(run["end_ms"]),
        "q_uah": float(run["q_cum_uah"]),
        "covered_ms": float(run["covered_cum_ms"]),
        "bad_gaps": float(run["bad_gaps_cum"]),
        "soc_pct": soc,
        "soc_sigma_pct": float(soc_sigma_pct_from_ocv(soc, chem, sigma_mv)),
        "temp_c": float(run["end_temp_c"]) if run["end_temp_c"] is not None else 25.0,
        "ocv_v": ocv_v,
        "rest_h": run["duration_s"] / 3600.0,
        "anchor": 0.0,
        "ocv_sigma_mv": sigma_mv,
        "cell_soc": cell_soc,
    }


#: A charge run's readings count as constant current within this share of its median.
_CC_TOLERANCE = 0.03


class _ListRows:
    """Rows of a list column as a float64 matrix, read from its flat values (Arrow's
    ``take(...).to_pylist()`` per charge run cost more than the fits at 1,000 vehicles)."""

    def __init__(self, column: pa.ChunkedArray, valid: tuple[float, float] | None = None) -> None:
        lists = column.combine_chunks()
        self.offsets = lists.offsets.to_numpy()
        self.lengths = np.diff(self.offsets)
        self.row_null = lists.is_null().to_numpy(zero_copy_only=False)
        values = lists.values
        self.value_null = values.is_null().to_numpy(zero_copy_only=False)
        self.values = values.fill_null(0).to_numpy(zero_copy_only=False)
        if valid is not None:  # values outside count as missing
            self.value_null |= (self.values < valid[0]) | (self.values > valid[1])

    def matrix(self, rows: np.ndarray) -> np.ndarray | None:
        """Rows ``rows`` one per line; None if one is null, holds a null or differs in
        length from the first."""
        if self.row_null[rows].any():
            return None
        lengths = self.lengths[rows]
        if (lengths != lengths[0]).any():
            return None
        at = self.offsets[rows][:, None] + np.arange(lengths[0])
        if self.value_null[at].any():
            return None
        out: np.ndarray = self.values[at].astype(np.float64)
        return out


def _charge_step_points(
    charge_cells: pa.Table, reg: Mapping[str, Mapping[str, Any]], params: AnalyticsParams
) -> dict[str, list[dict[str, Any]]]:
    """SoC points from the day's constant-current charges across an OCV step, per VIN
    (``bms._chargestep``; charge counters of the day, the caller adds the carried base).

    A point needs every cell's fit: the pack's capacity is its weakest cell's, and a cell
    that does not fit (a fast-fading cell's curve is stretched) may be that one.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    if charge_cells.num_rows == 0:
        return out
    col = {
        name: charge_cells[name].to_numpy(zero_copy_only=False)
        for name in charge_cells.column_names
        if name != "cell_mv"
    }
    # a cell outside the contract's plausible range reads no state of charge
    cells = _ListRows(charge_cells["cell_mv"], valid=(CELL_MV_MIN, CELL_MV_MAX))
    n = charge_cells.num_rows
    change = np.ones(n, dtype=bool)
    change[1:] = (
        (col["vin"][1:] != col["vin"][:-1])
        | (col["day_n"][1:] != col["day_n"][:-1])
        | (col["run_id"][1:] != col["run_id"][:-1])
    )
    starts = np.flatnonzero(change)
    for a, b in zip(starts, np.append(starts[1:], n), strict=True):
        vin = str(col["vin"][a])
        info = reg.get(vin)
        if info is None or b - a < 8:
            continue
        cur = col["current_a"][a:b].astype(np.float64)
        med = float(np.median(cur))
        keep = np.flatnonzero(np.abs(cur - med) <= _CC_TOLERANCE * med)
        idx = a + keep
        rows = cells.matrix(idx) if idx.size >= 8 else None
        if rows is None:
            continue
        q_ah = col["q_cum_uah"][idx].astype(np.float64) / 1e6
        since_s = (col["ts_ms"][idx] - col["start_ms"][idx]).astype(np.float64) / 1000.0
        fit = fit_charge_step(
            q_ah,
            rows,
            float(info["capacity_ah"]),
            info["chemistry"],
            # settle time constant: a rest of rest_min_s is about three (science.md 6.2)
            since_start_s=since_s,
            settle_tau_s=params.rest_min_s / 3.0,
            soc_hint_pct=float(col["soc_pct"][idx[0]]),  # NaN (no hint) when missing
        )
        if fit is None:
            continue
        ok = np.isfinite(fit.soc_pct)
        if not ok.all():
            continue  # a cell that does not fit may be the weak one: no estimate
        soc = float(np.mean(fit.soc_pct))
        k = int(idx[fit.ref])
        out.setdefault(vin, []).append(
            {
                "t_ms": float(col["ts_ms"][k]),
                "q_uah": float(col["q_cum_uah"][k]),
                "covered_ms": float(col["covered_cum_ms"][k]),
                "bad_gaps": float(col["bad_gaps_cum"][k]),
                "soc_pct": soc,
                # fit, where the step really lies, and the charge counted at the run's
                # first reading (a current step at an unknown time within its interval:
                # uniform, sigma = step x interval / sqrt(12))
                "soc_sigma_pct": float(
                    np.linalg.norm(
                        [
                            np.median(fit.sigma_pct),
                            params.charge_step_sigma_pct,
                            100.0
                            * float(col["start_step_as"][a] or 0.0)
                            / 3600.0
                            / math.sqrt(12.0)
                            / float(info["capacity_ah"]),
                        ]
                    )
                ),
                "temp_c": float(col["temp_c_mean"][k])
                if np.isfinite(col["temp_c_mean"][k])
                else 25.0,
                "ocv_v": float(ocv_v_from_soc_pct(soc, info["chemistry"])),
                "rest_h": 0.0,
                "anchor": 1.0,
                "ocv_sigma_mv": math.nan,
                "cell_soc": fit.soc_pct,
            }
        )
    return out


def _best_pair(
    point: Mapping[str, Any],
    earlier: list[dict[str, Any]],
    info: Mapping[str, Any],
    offset: float | None,
    offset_sigma: float | None,
    params: AnalyticsParams,
) -> dict[str, Any] | None:
    """The most certain capacity estimate pairing ``point`` with an earlier rest point."""
    rated = float(info["capacity_ah"])
    best: dict[str, Any] | None = None
    best_p: Mapping[str, Any] = point  # the earlier point of ``best``
    off = offset if offset is not None else 0.0
    off_sigma = offset_sigma if offset_sigma is not None else 0.05 * rated / 100
    if point["soc_sigma_pct"] > params.max_soc_sigma_pct:
        return None  # the mean cell is unreadable here (``_cell_pair``)
    for p in earlier:
        if p["bad_gaps"] != point["bad_gaps"] or p["soc_sigma_pct"] > params.max_soc_sigma_pct:
            continue
        if abs(point["soc_pct"] - p["soc_pct"]) < params.min_soc_window_pct:
            continue
        dt_h = (point["t_ms"] - p["t_ms"]) / 3.6e6
        if dt_h <= 0 or dt_h > params.max_pair_hours:
            continue
        counted_h = (point["covered_ms"] - p["covered_ms"]) / 3.6e6
        charge_ah = (point["q_uah"] - p["q_uah"]) / 1e6 - off * counted_h
        cap = float(capacity_ah_from_soc_window(charge_ah, p["soc_pct"], point["soc_pct"]))
        if not math.isfinite(cap):
            continue
        temp_c = (p["temp_c"] + point["temp_c"]) / 2
        rel = float(
            capacity_rel_sigma(
                soc_start_pct=p["soc_pct"],
                soc_end_pct=point["soc_pct"],
                soc_sigma_start_pct=p["soc_sigma_pct"],
                soc_sigma_end_pct=point["soc_sigma_pct"],
                offset_sigma_a=off_sigma,
                duration_h=counted_h,
                capacity_ah=rated,
                temp_c=temp_c,
            )
        )
        if rel > params.max_capacity_rel_sigma:
            continue
        if best is None or rel < best["rel_sigma"]:
            best = _pair_estimate(
                p,
                point,
                (p["soc_pct"], point["soc_pct"]),
                charge_ah,
                off,
                dt_h,
                temp_c,
                cap,
                rated,
                rel,
            )
            best_p = p
    if best is None:
        return None
    # the cells' SoC steps of the chosen pair only (their sigmas read the OCV slope of
    # every cell: computed once, not for every better pair met on the way)
    cells = not (
        best_p.get("cell_soc") is None
        or point.get("cell_soc") is None
        or len(best_p["cell_soc"]) != len(point["cell_soc"])
    )
    best["cell_dsoc"] = point["cell_soc"] - best_p["cell_soc"] if cells else None
    best["cell_dsoc_sigma"] = (
        np.hypot(
            _cell_soc_sigma(best_p, info["chemistry"]),
            _cell_soc_sigma(point, info["chemistry"]),
        )
        if cells
        else None
    )
    return best


def _pair_estimate(
    p: Mapping[str, Any],
    point: Mapping[str, Any],
    soc_pct: tuple[float, float],
    charge_ah: float,
    offset_a: float,
    dt_h: float,
    temp_c: float,
    cap_ah: float,
    rated_ah: float,
    rel: float,
) -> dict[str, Any]:
    """A capacity estimate from the rest points ``p`` -> ``point`` (SoC ``soc_pct`` at
    its ends), as ``_best_pair`` and ``_cell_pair`` record it."""
    return {
        "start_ts": _ts(p["t_ms"]),
        "end_ts": _ts(point["t_ms"]),
        "soc_start_pct": soc_pct[0],
        "soc_end_pct": soc_pct[1],
        "ocv_start_v": p["ocv_v"],
        "ocv_end_v": point["ocv_v"],
        "rest_start_h": p["rest_h"],
        "rest_end_h": point["rest_h"],
        "start_anchor": _ANCHORS[int(p.get("anchor", 0.0))],
        "end_anchor": _ANCHORS[int(point.get("anchor", 0.0))],
        "charge_ah": charge_ah,
        "current_offset_a": offset_a,
        "duration_h": dt_h,
        "temp_c": temp_c,
        "capacity_ah": cap_ah,
        "rated_capacity_ah": rated_ah,
        "soh_pct": 100.0 * cap_ah / rated_ah,
        "rel_sigma": rel,
        "weight": 1.0 / rel**2,
        "t_mid_ms": (p["t_ms"] + point["t_ms"]) / 2,
    }


#: Cell-to-cell uncertainty of a charge-step anchor: the fits' own sigmas are 0.1-0.5 %
#: (the step's position, common to every cell, cancels between cells). [%]
_STEP_CELL_SIGMA_PCT = 0.5
#: A cell whose capacity ratio measured in one pair lies this many sigmas below its
#: smoothed ratio has faded since: the smoothed ratio jumps to the measured one. [-]
_CELL_FADE_Z = 4.0


def _cell_soc_sigma(point: Mapping[str, Any], chem: str, *, absolute: bool = False) -> np.ndarray:
    """Each cell's SoC uncertainty at a point, from its OCV; at a charge-step anchor the
    point's own (``absolute``) or, relative to its neighbours, ``_STEP_CELL_SIGMA_PCT``. [%]"""
    cell_soc = np.asarray(point["cell_soc"], dtype=np.float64)
    if point.get("anchor", 0.0):
        anchor = float(point["soc_sigma_pct"]) if absolute else _STEP_CELL_SIGMA_PCT
        return np.full(cell_soc.shape, anchor)
    sigma_mv = point.get("ocv_sigma_mv")
    return np.asarray(soc_sigma_pct_from_ocv(cell_soc, chem, sigma_mv), dtype=np.float64)


def _readable_cells(point: Mapping[str, Any], chem: str, params: AnalyticsParams) -> np.ndarray:
    """Cells whose SoC at ``point`` is read within ``max_soc_sigma_pct``."""
    if point.get("cell_soc") is None:
        return np.zeros(0, dtype=bool)
    out: np.ndarray = _cell_soc_sigma(point, chem, absolute=True) <= params.max_soc_sigma_pct
    return out


def _cell_pair(
    point: Mapping[str, Any],
    earlier: list[dict[str, Any]],
    info: Mapping[str, Any],
    offset: float | None,
    offset_sigma: float | None,
    params: AnalyticsParams,
) -> dict[str, Any] | None:
    """The pack capacity as its weakest readable cell's, from a pair of which one end
    reads only some cells (an LFP rest on the plateau whose fast-fading cell is near
    empty, science.md 1): each cell readable at both ends gives its own capacity over
    the same charge, the pack's is at most the least of them. Pairs where both ends
    read the mean cell are ``_best_pair``'s (the least of 14 noisy cells is biased
    low); this one counts only where the mean cell cannot be read."""
    chem = info["chemistry"]
    rated = float(info["capacity_ah"])
    if point.get("cell_soc") is None:
        return None
    off = offset if offset is not None else 0.0
    off_sigma = offset_sigma if offset_sigma is not None else 0.05 * rated / 100
    q_soc = np.asarray(point["cell_soc"], dtype=np.float64)
    q_sig = _cell_soc_sigma(point, chem, absolute=True)
    best: dict[str, Any] | None = None
    for p in earlier:
        if p.get("cell_soc") is None or len(p["cell_soc"]) != len(q_soc):
            continue
        if p["bad_gaps"] != point["bad_gaps"]:
            continue
        vague = max(p["soc_sigma_pct"], point["soc_sigma_pct"]) > params.max_soc_sigma_pct
        dt_h = (point["t_ms"] - p["t_ms"]) / 3.6e6
        if not vague or dt_h <= 0 or dt_h > params.max_pair_hours:
            continue
        p_soc = np.asarray(p["cell_soc"], dtype=np.float64)
        p_sig = _cell_soc_sigma(p, chem, absolute=True)
        ok = (
            (p_sig <= params.max_soc_sigma_pct)
            & (q_sig <= params.max_soc_sigma_pct)
            & (np.abs(q_soc - p_soc) >= params.min_soc_window_pct)
        )
        if not ok.any():
            continue
        counted_h = (point["covered_ms"] - p["covered_ms"]) / 3.6e6
        charge_ah = (point["q_uah"] - p["q_uah"]) / 1e6 - off * counted_h
        caps = np.asarray(capacity_ah_from_soc_window(charge_ah, p_soc, q_soc), dtype=np.float64)
        ok &= np.isfinite(caps)
        if not ok.any():
            continue
        j = int(np.flatnonzero(ok)[np.argmin(caps[ok])])  # the weakest readable cell
        temp_c = (p["temp_c"] + point["temp_c"]) / 2
        rel = float(
            capacity_rel_sigma(
                soc_start_pct=p_soc[j],
                soc_end_pct=q_soc[j],
                soc_sigma_start_pct=p_sig[j],
                soc_sigma_end_pct=q_sig[j],
                offset_sigma_a=off_sigma,
                duration_h=counted_h,
                capacity_ah=rated,
                temp_c=temp_c,
            )
        )
        if rel > params.max_capacity_rel_sigma or (best is not None and rel >= best["rel_sigma"]):
            continue
        best = _pair_estimate(
            p,
            point,
            (float(p_soc[j]), float(q_soc[j])),
            charge_ah,
            off,
            dt_h,
            temp_c,
            float(caps[j]),
            rated,
            rel,
        )
    return best


#: Sign of the current before a rest, from the mode of the reading before it.
_DIRECTION = {"ac_charge": 1, "dc_charge": 1, "drive": -1, "v2g": -1}


def _weakest_cell(
    est: dict[str, Any],
    ratio: np.ndarray | None,
    leak: np.ndarray | None,
    pairs: int | None,
    params: AnalyticsParams,
) -> tuple[np.ndarray | None, np.ndarray | None, int | None]:
    """Turn a mean-cell capacity estimate into the pack's (its weakest cell's).

    Each cell's capacity over the same charge is ``dq / dsoc_i``; its ratio to the mean
    cell's is smoothed over pairs so that measurement noise does not make the minimum
    biased low: the running mean of the ``pairs`` pairs so far with
    ``cell_ratio_prior_pairs`` pairs' worth of ratio 1 (all cells equal), then, once
    that gives a pair less weight than ``cell_ratio_smoothing``, an EWMA of that
    weight (a cell's ratio may drift as it ages). An EWMA from the start, starting at 1,
    kept most of the prior for tens of pairs: the first ten estimates of the demo fleet
    stood 1.2 points above the true (weakest-cell) SoH, the next twenty 0.5. A ratio
    measured ``_CELL_FADE_Z`` of its sigmas (from the cells' SoC sigmas at both ends)
    below the smoothed one is taken at once (the cell has faded since); the pack
    capacity is the mean cell's times the smallest smoothed ratio. A cell's SoC step is
    first given back what a clear leak (``bms._leak``, from the sums ``leak``) drained
    over the pair. ``pairs`` None: ratios long smoothed (carried before the count was
    kept). Updates ``est`` and returns the new ratios, leak sums and pair count.
    """
    dsoc = est.pop("cell_dsoc")
    dsoc_sigma = est.pop("cell_dsoc_sigma", None)
    if dsoc is None or not np.all(np.isfinite(dsoc)):
        if ratio is not None:  # no cell SoCs this time: the ratios learnt so far
            weakest = float(ratio.min())
            est["capacity_ah"] *= weakest
            est["soh_pct"] *= weakest
        return ratio, leak, pairs
    if dsoc_sigma is not None and np.all(np.isfinite(dsoc_sigma)):
        leak = update_leak_sums(leak, dsoc, dsoc_sigma, est["duration_h"])
        lost = leak_correction(leak, est["duration_h"])
        if lost is not None:
            dsoc = dsoc + lost[0]
            dsoc_sigma = np.hypot(dsoc_sigma, lost[1])
    mean = float(np.mean(dsoc))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.clip(mean / dsoc, 0.5, 1.5)
    if not np.all(np.isfinite(r)):
        return ratio, leak, pairs
    if ratio is None or ratio.shape != r.shape:
        ratio, pairs = np.ones_like(r), 0
    k = params.cell_ratio_smoothing
    if pairs is not None:
        pairs += 1
        k = max(k, 1.0 / (pairs + params.cell_ratio_prior_pairs))
    smoothed = (1 - k) * ratio + k * r
    if dsoc_sigma is not None:
        # A cell that faded fast since (a fast-fading LFP cell lost 15 % of capacity in
        # three months in the accuracy fleet) is clearly below its smoothed ratio in the
        # first pair that reads it; smoothing it in over tens of pairs kept the pack's
        # estimate above its threshold. Capacity only fades: only falls jump.
        with np.errstate(divide="ignore", invalid="ignore"):
            r_sigma = r * dsoc_sigma / np.abs(dsoc)
        faded = (ratio - r) > _CELL_FADE_Z * r_sigma
        smoothed = np.where(faded, r, smoothed)
    ratio = smoothed
    weakest = float(ratio.min())
    est["capacity_ah"] *= weakest
    est["soh_pct"] *= weakest
    est["weight"] = 1.0 / est["rel_sigma"] ** 2
    return ratio, leak, pairs


# --------------------------------------------------------------------------- history


# --------------------------------------------------------------------------- trend


def _age_years(t_ms: float | np.ndarray, in_service: date) -> Any:
    start_ms = (
        datetime(in_service.year, in_service.month, in_service.day, tzinfo=UTC).timestamp() * 1000
    )
    return (np.asarray(t_ms, dtype=np.float64) - start_ms) / (_MS_PER_DAY * DAYS_PER_YEAR)


def _by_vin(table: pa.Table, day: date, history_days: int) -> dict[str, dict[str, np.ndarray]]:
    lo = day - timedelta(days=history_days)
    mask = pc.and_(
        pc.less_equal(table["date"], pa.scalar(day, pa.date32())),
        pc.greater(table["date"], pa.scalar(lo, pa.date32())),
    )
    t = table.filter(mask)
    cols = {n: t[n].to_numpy(zero_copy_only=False) for n in t.column_names if n not in ("date",)}
    out: dict[str, dict[str, np.ndarray]] = {}
    vins = cols.pop("vin")
    if vins.size == 0:
        return out
    order = np.argsort(vins, kind="stable")
    vins = vins[order]
    bounds = np.flatnonzero(np.r_[True, vins[1:] != vins[:-1], True])
    for i in range(bounds.size - 1):
        sl = order[bounds[i] : bounds[i + 1]]
        out[str(vins[bounds[i]])] = {k: v[sl] for k, v in cols.items()}
    return out


#: Smallest sigma a capacity estimate is given in the SoH trend. [%]
SOH_SIGMA_FLOOR_PCT = 0.2
#: Prior sigma of (SoH when new [%], fade coefficient [% per year**exponent]) of
#: ``fit_vehicle_soh``: weak, around the fleet figures (Geotab 2024-26, science.md 5).
SOH_PRIOR_SIGMA = (5.0, 4.0)


def fit_vehicle_soh(
    t_years: np.ndarray,
    soh_pct: np.ndarray,
    sigma_pct: np.ndarray,
    chemistry: str,
    *,
    systematic_sigma_pct: float = 0.4,
    cluster_days: float | None = None,
    cluster_sigma_pct: float = 0.0,
) -> PowerFit:
    """SoH trend of one vehicle from its capacity estimates (``fit_power_trend`` with the
    chemistry's exponent, fade forced non-negative, weak prior 100 % when new and
    ~2 %/yr fade: Geotab 2024-26 fleet figures, science.md 5). With ``cluster_days``
    the estimates of each such period are one group of ``fit_power_trend``'s cluster
    (a few days' estimates share the season and their rest points), sharing an error of
    ``cluster_sigma_pct`` (its ``cluster_sigma``)."""
    t = np.asarray(t_years, dtype=np.float64)
    return fit_power_trend(
        t,
        soh_pct,
        np.maximum(sigma_pct, SOH_SIGMA_FLOOR_PCT),
        exponent=FADE_EXPONENT[chemistry],
        prior_mean=(100.0, -2.0),
        prior_sigma=SOH_PRIOR_SIGMA,
        b_sign=-1,
        systematic_sigma=systematic_sigma_pct,
        cluster=None
        if cluster_days is None
        else np.floor(t * DAYS_PER_YEAR / cluster_days).astype(np.int64),
        cluster_sigma=cluster_sigma_pct,
    )


def fit_vehicle_resistance(
    t_years: np.ndarray, r_mohm: np.ndarray, sigma_mohm: np.ndarray, chemistry: str
) -> PowerFit:
    """Resistance trend of one vehicle (``fit_power_trend``, no prior, growth >= 0)."""
    return fit_power_trend(
        t_years,
        r_mohm,
        sigma_mohm,
        exponent=RESISTANCE_EXPONENT[chemistry],
        prior_mean=(0.0, 0.0),
        prior_sigma=(math.inf, math.inf),
        b_sign=1,
    )


def interconnect_mohm(r_inter_mohm: np.ndarray, sigma_mohm: np.ndarray) -> float:
    """The interconnects' resistance (busbars, contactors, fuse) over a history: the
    weighted mean of the days' values, days beyond 3 sigma of it dropped once.

    Parameters
    ----------
    r_inter_mohm : array
        Each day's pack resistance minus the cells' share. [mOhm]
    sigma_mohm : array
        Their one-sigma uncertainty. [mOhm]

    Returns
    -------
    float
        Weighted mean; 0 without a usable value. [mOhm]
    """
    r = np.asarray(r_inter_mohm, dtype=np.float64)
    sg = np.asarray(sigma_mohm, dtype=np.float64)
    ok = np.isfinite(r) & np.isfinite(sg) & (sg > 0)
    if not ok.any():
        return 0.0
    r, w = r[ok], 1.0 / sg[ok] ** 2
    mean = float(np.sum(w * r) / np.sum(w))
    spread = float(np.sqrt(np.sum(w * (r - mean) ** 2) / np.sum(w)))
    keep = np.abs(r - mean) <= 3.0 * max(spread, 1e-9)
    if keep.any() and not keep.all():
        mean = float(np.sum(w[keep] * r[keep]) / np.sum(w[keep]))
    return mean


def _trend_and_warranty(
    day: date,
    carry: Mapping[str, Mapping[str, Any]],
    cap_hist: pa.Table,
    res_hist: pa.Table,
    reg: Mapping[str, Mapping[str, Any]],
    vd_rows: Mapping[str, Mapping[str, Any]],
    params: AnalyticsParams,
    policies: _PolicyCache,
    session: _FleetSession,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    caps = _by_vin(cap_hist, day, params.history_days)
    ress = _by_vin(res_hist, day, params.history_days)
    end_ms = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000 + _MS_PER_DAY
    soh_rows: list[dict[str, Any]] = []
    warranty_rows: list[dict[str, Any]] = []

    def fit_rows(
        kind: str, vin: str, rows: Mapping[str, np.ndarray], in_service: date, chem: str
    ) -> PowerFit:
        return session.fit(
            kind,
            vin,
            rows,
            lambda: fit_vehicle_soh(
                _age_years(rows["t_ms"], in_service),
                rows["soh_pct"],
                rows["sigma_pct"],
                chem,
                systematic_sigma_pct=params.systematic_soh_sigma_pct,
                cluster_days=params.soh_cluster_days,
                cluster_sigma_pct=params.soh_cluster_sigma_pct,
            ),
        )

    def soh_fit(vin: str, in_service: date, chem: str) -> PowerFit | None:
        cap = caps.get(vin)
        if cap is None or not cap["t_ms"].size:
            return None
        return fit_rows("capacity", vin, cap, in_service, chem)

    def shifted(fit: PowerFit, vin: str, in_service: date, chem: str) -> PowerFit:
        """``fit`` moved to where its recent estimates stand clearly off it (a fault's
        fade, ``recent_level_shift``), judged by how far the vehicle's estimates strayed
        before them: the whole history's scale counts the fault's own misfit (seed 12's
        LFP 32, truly 75.5 %, read 88.2 with five estimates at 75-76 % not counted)."""
        cap = caps[vin]
        t = _age_years(cap["t_ms"], in_service)
        window = params.soh_recent_days / DAYS_PER_YEAR
        before = t < float(np.max(t)) - window

        def scale() -> float:
            if not 3 <= int(before.sum()) <= t.size - 3:
                return fit.scale
            older = {k: v[before] for k, v in cap.items()}
            return min(fit.scale, fit_rows("capacity-before", vin, older, in_service, chem).scale)

        return recent_level_shift(
            fit,
            t,
            cap["soh_pct"],
            np.maximum(cap["sigma_pct"], SOH_SIGMA_FLOOR_PCT),
            window_years=window,
            cluster_years=params.soh_cluster_days / DAYS_PER_YEAR,
            cluster_sigma=params.soh_cluster_sigma_pct,
            scale=scale,
        )

    # The fleet's own ageing, per chemistry, from its well-measured vehicles: the SoH
    # reported (with n_estimates = 0 and no warranty verdict) for a vehicle that has no
    # capacity estimate of its own yet.
    coefs: dict[str, list[tuple[float, float]]] = {}
    levels: dict[str, list[tuple[float, float]]] = {}  # (age, SoH now) of those vehicles
    moved: dict[str, PowerFit] = {}  # their trends, shifted (reused below)
    for vin, c in carry.items():
        info = reg.get(vin)
        if info is None or (caps.get(vin) is None) or caps[vin]["t_ms"].size < _PRIOR_MIN_ESTIMATES:
            continue
        in_service = info["in_service_date"] or _ts(c["first_ts_ms"]).date()
        f = soh_fit(vin, in_service, info["chemistry"])
        if f is not None:
            coefs.setdefault(info["chemistry"], []).append((f.a, f.b))
            age_v = float(_age_years(end_ms, in_service))
            moved[vin] = shifted(f, vin, in_service, info["chemistry"])
            levels.setdefault(info["chemistry"], []).append(
                (age_v, float(moved[vin].predict(age_v)[0]))
            )
    priors = {
        chem: _fleet_prior(np.asarray(ab), FADE_EXPONENT[chem], params.systematic_soh_sigma_pct)
        for chem, ab in coefs.items()
        if len(ab) >= 3
    }
    # How far the measured vehicles stand from that typical trend now, faults included
    # (the trend's own interval is the spread of the typical vehicles' coefficients,
    # robust to the faulty ones: it says where a typical vehicle is, not where a
    # vehicle never measured may be).
    spread = {
        chem: _population_offsets(
            np.asarray([lv - float(priors[chem].predict(a)[0]) for a, lv in levels[chem]])
        )
        for chem in priors
    }
    for vin, c in carry.items():
        info = reg.get(vin)
        if info is None:
            continue
        chem = info["chemistry"]
        in_service = info["in_service_date"] or _ts(c["first_ts_ms"]).date()
        age = float(_age_years(end_ms, in_service))
        odo = float(c["last_odometer_km"])
        span_days = (c["last_ts_ms"] - c["first_ts_ms"]) / _MS_PER_DAY
        if span_days >= 14:
            km_per_day = (odo - c["first_odometer_km"]) / span_days
        else:
            km_per_day = odo / max(age * DAYS_PER_YEAR, 1.0)
        policy = policies.get(info.get("warranty_policy"))
        cap = caps.get(vin)
        fit = soh_fit(vin, in_service, chem)
        if fit is not None and cap is not None:
            # where the recent estimates stand clearly off the trend (a fault's fade)
            fit = moved[vin] if vin in moved else shifted(fit, vin, in_service, chem)
        shown = fit if fit is not None else priors.get(chem)
        # a vehicle never measured: where the fleet's measured vehicles stand
        offsets = spread.get(chem) if fit is None else None
        r_fit = None
        r_step = None
        inter = 0.0
        res = ress.get(vin)
        if res is not None and res["t_ms"].size >= 3:
            # The cells' share (1 mV cell voltages) is trended; the interconnects'
            # (pack voltage minus cells, coarse but metallic: it does not age) is one
            # constant over the history. Without cell steps, the pack's own values.
            split = np.isfinite(res["r_cells_mohm"].astype(np.float64))
            if split.sum() >= 3:
                inter = interconnect_mohm(
                    res["r_inter_mohm"][split], res["sigma_inter_mohm"][split]
                )
                y, sg = res["r_cells_mohm"], res["sigma_cells_mohm"]
            else:
                y, sg = res["r_mohm"], res["sigma_mohm"]
            t_res = _age_years(res["t_ms"], in_service)
            r_fit = session.fit(
                "resistance", vin, res, partial(fit_vehicle_resistance, t_res, y, sg, chem)
            )
            # A fault that makes a cell's resistance jump is a step, not ageing.
            r_step = session.fit(
                "resistance_step",
                vin,
                res,
                partial(fit_step_trend, t_res, y, sg, exponent=RESISTANCE_EXPONENT[chem]),
            )
        soh = lo = hi = math.nan
        if shown is not None:
            soh, lo, hi = (float(v) for v in shown.interval(age))
            if offsets is not None:
                lo, hi = min(lo, soh + offsets[0]), max(hi, soh + offsets[1])
        r_now = growth = g_lo = g_hi = math.nan
        if r_step is not None and r_step.bic_drop > STEP_MIN_BIC_DROP and r_step.a + inter > 0:
            r_new = r_step.a + inter
            rise, sd_rise = r_step.growth(age)
            r_now = r_new + rise
            growth = 100.0 * rise / r_new
            g_lo = 100.0 * (rise - Z_90 * sd_rise) / r_new
            g_hi = 100.0 * (rise + Z_90 * sd_rise) / r_new
        elif r_fit is not None and r_fit.a + inter > 0:
            r_new = r_fit.a + inter
            r_now = float(r_fit.predict(age)[0]) + inter
            x = max(age, 0.0) ** r_fit.exponent
            growth = 100.0 * r_fit.b * x / r_new
            sd_b = math.sqrt(max(r_fit.cov[2], 0.0))
            g_lo = 100.0 * (r_fit.b - Z_90 * sd_b) * x / r_new
            g_hi = 100.0 * (r_fit.b + Z_90 * sd_b) * x / r_new
        last_th = policy.thresholds[-1]
        h_years, h_km = coverage_end(last_th, age_years=age, odometer_km=odo, km_per_day=km_per_day)
        proj = p_lo = p_hi = math.nan
        if shown is not None:
            proj, p_lo, p_hi = (float(v) for v in shown.interval(h_years))
            if offsets is not None:
                p_lo, p_hi = min(p_lo, proj + offsets[0]), max(p_hi, proj + offsets[1])
        soh_rows.append(
            {
                "vin": vin,
                "chemistry": chem,
                "has_data_today": vin in vd_rows,
                "age_years": age,
                "odometer_km": odo,
                "km_per_day": km_per_day,
                "n_estimates": 0 if cap is None else int(cap["t_ms"].size),
                "soh_pct": soh,
                "soh_low_pct": lo,
                "soh_high_pct": hi,
                "fade_exponent": FADE_EXPONENT[chem],
                "soh_new_pct": shown.a if shown else math.nan,
                "fade_pct_per_year_pow": -shown.b if shown else math.nan,
                "fit_scale": fit.scale if fit else math.nan,
                "soh_shift_pct": fit.shift if fit else math.nan,
                "n_resistance_days": 0 if res is None else int(res["t_ms"].size),
                "resistance_mohm_25c": r_now,
                "resistance_growth_pct": growth,
                "resistance_growth_low_pct": g_lo,
                "resistance_growth_high_pct": g_hi,
                "bms_soh_pct": c["bms_soh_pct"],
                "policy_id": policy.id,
                "horizon_years": h_years,
                "horizon_km": h_km,
                "projected_soh_pct": proj,
                "projected_soh_low_pct": p_lo,
                "projected_soh_high_pct": p_hi,
            }
        )
        charged = c["charged_total_uah"] or 0
        usage = UsageTotals(
            over_temp_events=int(c["over_temp_events_total"] or 0),
            dc_fast_share=(c["charged_dc_total_uah"] or 0) / charged if charged > 0 else 0.0,
            deep_discharges=int(c["deep_discharges_total"] or 0),
        )
        newest_ms = float(np.max(cap["t_ms"])) if cap is not None and cap["t_ms"].size else None
        evidence_days = 0.0 if newest_ms is None else (end_ms - newest_ms) / 86_400_000
        use_since = None
        if c.get("stress_days_at_estimate") is not None:
            since = (
                c["stress_cal_total"] - c["stress_cal_at_estimate"],
                c["stress_cyc_total"] - c["stress_cyc_at_estimate"],
            )
            days_since = c["stress_days_total"] - c["stress_days_at_estimate"]
            use_since = UseSinceEstimate(
                chemistry=chem,
                days_observed=float(days_since),
                # the use since at its upper bound over the use before at its lower
                stress_ratio=usage_stress_ratio(
                    (c["stress_cal_low_at_estimate"], c["stress_cyc_low_at_estimate"]),
                    c["stress_days_at_estimate"],
                    since,
                    days_since,
                ),
                calendar_stress=since[0],
                cycle_stress=since[1],
            )
        verdict = warranty_verdict(
            policy,
            fit,
            age_years=age,
            odometer_km=odo,
            km_per_day=km_per_day,
            usage=usage,
            evidence_age_days=evidence_days,
            max_evidence_age_days=params.max_evidence_age_days,
            use_since=use_since,
            prior_fade_sigma=SOH_PRIOR_SIGMA[1],
        )
        # what the data since the newest estimate (or since they began) lacked
        since_day = _ts(c["first_ts_ms"] if newest_ms is None else newest_ms).date()
        soc_lo = c.get("soc_min_since_estimate_pct")
        soc_hi = c.get("soc_max_since_estimate_pct")
        if verdict.status == "insufficient_data" and soc_lo is not None and soc_hi is not None:
            lacked = missing_capacity_evidence(
                chem,
                soc_lo,
                soc_hi,
                max_sigma_pct=params.max_soc_sigma_pct,
                min_window_pct=params.min_soc_window_pct,
            )
            verdict = dataclasses.replace(
                verdict, reason=f"{verdict.reason}; since {since_day.isoformat()}: {lacked}"
            )
        if verdict.status == "insufficient_data" and c.get("unreadable_rests_since_estimate"):
            verdict = dataclasses.replace(
                verdict, reason=f"{verdict.reason}; {_unreadable_clause(c)}"
            )
        th = verdict.threshold
        evidence = {
            "policy": {"id": policy.id, "name": policy.name, "source": policy.source},
            "threshold": None if th is None else dataclasses.asdict(th),
            # the limit that ended an out_of_coverage verdict's cover (None otherwise)
            "cover_ended_by": verdict.cover_ended_by,
            "soh": {
                "soh_pct": soh,
                "soh_low_pct": lo,
                "soh_high_pct": hi,
                "n_estimates": 0 if cap is None else int(cap["t_ms"].size),
                "newest_estimate_age_days": evidence_days,
            },
            "use_since_estimate": None if use_since is None else dataclasses.asdict(use_since),
            "soc_since_estimate": {
                "since": since_day.isoformat(),
                "bms_soc_min_pct": soc_lo,
                "bms_soc_max_pct": soc_hi,
            },
            "fit": None
            if fit is None
            else {
                "a": fit.a,
                "b": fit.b,
                "exponent": fit.exponent,
                "scale": fit.scale,
                "shift": fit.shift,
                "shift_sigma": fit.shift_sigma,
                "shift_x": fit.shift_x,
            },
            "usage": dataclasses.asdict(usage),
            "usage_limits": dataclasses.asdict(policy.usage),
            "date": day.isoformat(),
            "in_service_date": in_service.isoformat(),
            "age_years": age,
            "odometer_km": odo,
            "km_per_day": km_per_day,
            "model_version": ANALYTICS_MODEL_VERSION,
        }
        warranty_rows.append(
            {
                "vin": vin,
                "policy_id": policy.id,
                "status": verdict.status,
                "reason": verdict.reason,
                "threshold_min_soh_pct": th.min_soh_pct if th else math.nan,
                "threshold_years": th.years if th else math.nan,
                "threshold_km": th.km if th else math.nan,
                "coverage_end_years": verdict.coverage_end_years,
                "coverage_end_km": verdict.coverage_end_km,
                "age_years": age,
                "odometer_km": odo,
                "km_per_day": km_per_day,
                "soh_pct": soh,
                "soh_low_pct": lo,
                "soh_high_pct": hi,
                "projected_soh_pct": verdict.projected_soh_pct,
                "projected_soh_low_pct": verdict.projected_soh_low_pct,
                "projected_soh_high_pct": verdict.projected_soh_high_pct,
                "over_temp_events": usage.over_temp_events,
                "dc_fast_share": usage.dc_fast_share,
                "deep_discharges": usage.deep_discharges,
                "usage_flags": list(verdict.usage_flags),
                "evidence": json.dumps(_finite_or_none(evidence), sort_keys=True, allow_nan=False),
                "model_version": ANALYTICS_MODEL_VERSION,
            }
        )
    return soh_rows, warranty_rows


#: A vehicle with at least this many capacity estimates informs the fleet prior.
_PRIOR_MIN_ESTIMATES = 30


def _population_offsets(offsets_pct: np.ndarray) -> tuple[float, float]:
    """A 90 % prediction interval for one more vehicle's offset from the fleet's typical
    trend, from the measured vehicles' offsets [%]: their smallest and largest. For
    ``n`` exchangeable values, a new one falls between the smallest and the largest
    with probability (n - 1) / (n + 1), whatever their distribution (Wilks 1941, Ann.
    Math. Stat. 12, 91: order statistics as tolerance limits): 90 % from n = 19; with
    fewer the interval covers less, and the trend's own interval still applies. It
    always holds the typical trend itself (offset 0)."""
    return float(min(np.min(offsets_pct), 0.0)), float(max(np.max(offsets_pct), 0.0))


def _fleet_prior(ab: np.ndarray, exponent: float, systematic_sigma: float) -> PowerFit:
    """SoH trend of a typical vehicle of the fleet: median of the well-measured
    vehicles' ``(a, b)``, their spread (1.4826 MAD, at least 0.5) as uncertainty."""
    med = np.median(ab, axis=0)
    sd = np.maximum(1.4826 * np.median(np.abs(ab - med), axis=0), 0.5)
    return PowerFit(
        a=float(med[0]),
        b=float(med[1]),
        cov=(float(sd[0] ** 2), 0.0, float(sd[1] ** 2)),
        exponent=exponent,
        scale=math.nan,
        n=0,
        dof=math.inf,
        systematic_sigma=systematic_sigma,
    )


def _finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (an infinite stress ratio, a NaN SoH)
    replaced by None: JSON has no Infinity or NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def read_metrics(lake_root: Path, table: str, days: Iterable[date] | None = None) -> pa.Table:
    """Read a metrics table (all dates, or some) with ``date`` and ``fleet`` columns."""
    if table not in METRICS_SCHEMAS:
        raise BmsError(f"unknown metrics table {table!r}; valid: {', '.join(METRICS_TABLES)}")
    base = lake_root / "metrics" / table
    wanted = None if days is None else {d.isoformat() for d in days}
    parts = []
    for path in sorted(base.glob("date=*/fleet=*/part.parquet")):
        d = path.parent.parent.name.removeprefix("date=")
        if wanted is not None and d not in wanted:
            continue
        try:
            t = pq.read_table(path, schema=METRICS_SCHEMAS[table])
        except (OSError, pa.ArrowException) as exc:
            raise BmsError(
                damaged_output_message(path, date.fromisoformat(d), "analyze", exc)
            ) from None
        t = t.append_column("date", pa.array([date.fromisoformat(d)] * t.num_rows, pa.date32()))
        t = t.append_column(
            "fleet", pa.array([path.parent.name.removeprefix("fleet=")] * t.num_rows, pa.string())
        )
        parts.append(t)
    if not parts:
        schema = (
            METRICS_SCHEMAS[table]
            .append(pa.field("date", pa.date32()))
            .append(pa.field("fleet", pa.string()))
        )
        return schema.empty_table()
    return pa.concat_tables(parts)
