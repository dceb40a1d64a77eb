"""What the reports read from the lake, gathered into plain, picklable records.

The report builders never touch Parquet: this module reads the metrics and anomaly
tables (``docs/lake.md``) and hands over ``FleetData`` and ``VehicleData``. Columns a
producing job has not written (an older partition, a stage not run yet) read as missing
values, so a report shows "n/a" rather than failing; a date without the core tables
(``vehicle_soh`` and ``warranty``) is an error.

Tables read (``metrics/<table>/date=D/fleet=F/part.parquet`` unless noted):

- ``vehicle_soh``: SoH with its 90 % interval, fit parameters, resistance growth,
  projection to the warranty horizon (history up to D for the vehicle report);
- ``warranty``: verdict (``status``), policy, binding threshold, coverage end, projected
  SoH there with its interval, usage totals and flags, JSON ``evidence``;
- ``capacity``: the individual capacity estimates (points of the SoH chart);
- ``vehicle_day``: odometer, charge throughput (AC/DC), SoC and temperature exposure;
- ``cell_day``: each cell's rest-voltage deviation from its pack median (heat map);
- ``reconciliation``: readings expected/stored/missing and gaps per vehicle;
- ``anomalies/date=D/fleet=F``: anomaly flags with score, severity, status, top features;
- ``registry/vehicles.parquet``: class, chemistry, in-service date of each vehicle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import bms
from reports._errors import ReportError

FloatArray = npt.NDArray[np.float64]

#: Warranty verdicts, most urgent first (the order of the fleet table).
VERDICT_ORDER = (
    "claim_eligible",
    "at_risk",
    "insufficient_data",
    "ok",
    "out_of_coverage",
)
#: Anomaly severities, most urgent first (``bms`` anomaly rules).
SEVERITY_ORDER = ("critical", "warning")
DAYS_PER_YEAR = 365.25

_VEHICLE_SOH = (
    "vin",
    "chemistry",
    "age_years",
    "odometer_km",
    "km_per_day",
    "n_estimates",
    "soh_pct",
    "soh_low_pct",
    "soh_high_pct",
    "fade_exponent",
    "soh_new_pct",
    "fade_pct_per_year_pow",
    "resistance_mohm_25c",
    "resistance_growth_pct",
    "resistance_growth_low_pct",
    "resistance_growth_high_pct",
    "bms_soh_pct",
    "policy_id",
    "horizon_years",
    "horizon_km",
    "projected_soh_pct",
    "projected_soh_low_pct",
    "projected_soh_high_pct",
)
_WARRANTY = (
    "vin",
    "policy_id",
    "status",
    "reason",
    "threshold_min_soh_pct",
    "threshold_years",
    "threshold_km",
    "coverage_end_years",
    "coverage_end_km",
    "age_years",
    "odometer_km",
    "soh_pct",
    "soh_low_pct",
    "soh_high_pct",
    "projected_soh_pct",
    "projected_soh_low_pct",
    "projected_soh_high_pct",
    "over_temp_events",
    "dc_fast_share",
    "deep_discharges",
    "usage_flags",
    "evidence",
    "model_version",
)
_VEHICLE_DAY = (
    "vin",
    "odometer_km",
    "distance_km",
    "ah_charged",
    "ah_discharged",
    "ah_charged_dc",
    "kwh_charged",
    "kwh_discharged",
    "equivalent_full_cycles",
    "dc_fast_share",
    "hours_soc_above_90",
    "hours_soc_below_10",
    "covered_hours",
    "hours_temp_below_0c",
    "hours_temp_0_15c",
    "hours_temp_15_25c",
    "hours_temp_25_35c",
    "hours_temp_35_45c",
    "hours_temp_above_45c",
    "temp_c_max",
    "pack_temp_c_max",
    "temp_c_min",
    "max_c_rate",
    "max_charge_c_rate",
    "rest_hours",
)
#: Temperature bands of ``vehicle_day`` (column, label) [degC].
TEMP_BANDS = (
    ("hours_temp_below_0c", "< 0"),
    ("hours_temp_0_15c", "0-15"),
    ("hours_temp_15_25c", "15-25"),
    ("hours_temp_25_35c", "25-35"),
    ("hours_temp_35_45c", "35-45"),
    ("hours_temp_above_45c", "> 45"),
)
_CAPACITY = ("vin", "end_ts", "soh_pct", "rel_sigma", "capacity_ah", "temp_c")
_CELL_DAY = ("vin", "cell", "rest_dev_mv", "self_discharge_mv_per_day")
_RECONCILIATION = (
    "vin",
    "readings_expected",
    "readings_stored",
    "readings_missing",
    "readings_quarantined",
    "gap_count",
    "longest_gap_s",
)
_ANOMALIES = (
    "vin",
    "cell",
    "sensor",
    "score",
    "threshold",
    "severity",
    "status",
    "source",
    "rules",
    "first_seen",
    "model_version",
    "top_features",
    "evidence",
)
_REGISTRY = ("vin", "fleet", "chemistry", "capacity_ah", "vehicle_class", "in_service_date")


# --------------------------------------------------------------------------- reading


def _partitions(base: Path, fleet: str, first: date, last: date) -> list[tuple[date, Path]]:
    """``base/date=D/fleet=F/*.parquet`` files with ``first <= D <= last``, by date."""
    out: list[tuple[date, Path]] = []
    if not base.is_dir():
        return out
    for day_dir in sorted(base.glob("date=*")):
        try:
            d = date.fromisoformat(day_dir.name.removeprefix("date="))
        except ValueError:
            continue
        if first <= d <= last:
            out.extend((d, p) for p in sorted((day_dir / f"fleet={fleet}").glob("*.parquet")))
    return out


def _damaged(path: Path, day: date, exc: Exception) -> str:
    """A stage output that cannot be read: which file, and the command that rewrites it."""
    stage = "anomalies" if path.parent.parent.parent.name == "anomalies" else "analyze"
    return bms.damaged_output_message(path, day, stage, exc)


def _read(
    base: Path,
    fleet: str,
    first: date,
    last: date,
    columns: Sequence[str],
    vins: Iterable[str] | None = None,
) -> pa.Table | None:
    """The wanted columns of all partitions in the date range, plus ``date``.

    Columns a file lacks are null; returns None when no partition exists.
    """
    parts = _partitions(base, fleet, first, last)
    if not parts:
        return None
    wanted = pa.array(sorted(set(vins)), pa.string()) if vins is not None else None
    tables = []
    for d, path in parts:
        try:
            names = set(pq.ParquetFile(path).schema_arrow.names)
            have = [c for c in columns if c in names]
            t = pq.read_table(path, columns=have)
        except (OSError, pa.ArrowException) as exc:
            raise ReportError(_damaged(path, d, exc)) from None
        if wanted is not None and "vin" in names:
            t = t.filter(pc.is_in(t["vin"], value_set=wanted))
        cols = {}
        for c in columns:
            cols[c] = t[c] if c in names else pa.nulls(t.num_rows)
        cols["date"] = pa.array([d] * t.num_rows, pa.date32())
        tables.append(pa.table(cols))
    return pa.concat_tables(tables, promote_options="permissive")


def _rows(table: pa.Table | None) -> list[dict[str, Any]]:
    return [] if table is None else table.to_pylist()


def _num(value: Any) -> float:
    """A metric as float; None and non-numbers are NaN."""
    if value is None or isinstance(value, bool | str):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _int(value: Any) -> int:
    v = _num(value)
    return 0 if math.isnan(v) else int(v)


def read_registry(lake_root: Path) -> dict[str, dict[str, Any]]:
    """The vehicle registry by VIN (empty if there is none)."""
    path = lake_root / "registry" / "vehicles.parquet"
    if not path.exists():
        return {}
    names = set(pq.ParquetFile(path).schema_arrow.names)
    table = pq.read_table(path, columns=[c for c in _REGISTRY if c in names])
    return {r["vin"]: r for r in table.to_pylist()}


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Feature:
    """One feature behind an anomaly: its value against the fleet's normal range."""

    name: str
    value: float
    unit: str
    normal_low: float
    normal_high: float


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One anomaly flag with its explanation (``anomalies`` table)."""

    vin: str
    cell: int  # -1 = pack level
    sensor: int  # -1 = none
    score: float
    threshold: float
    severity: str
    status: str
    source: str  # model, rule or both
    rules: tuple[str, ...]
    first_seen: str
    model_version: str
    features: tuple[Feature, ...]
    explanation: str

    @property
    def where(self) -> str:
        if self.cell >= 0:
            return f"cell {self.cell}"
        if self.sensor >= 0:
            return f"sensor {self.sensor}"
        return "pack"


@dataclass(frozen=True, slots=True)
class ShownInterval:
    """An interval as the report pages show it: clipped to what is physically possible,
    with which bound was clipped (the CSV keeps the fit's raw bounds)."""

    low: float
    high: float
    low_clipped: bool
    high_clipped: bool

    @property
    def clipped(self) -> bool:
        return self.low_clipped or self.high_clipped


def clip_interval(low: float, high: float, floor: float, ceiling: float) -> ShownInterval:
    """``low..high`` clipped into ``floor..ceiling`` (a non-finite limit clips nothing)."""
    lo_c = math.isfinite(low) and math.isfinite(floor) and low < floor
    hi_c = math.isfinite(high) and math.isfinite(ceiling) and high > ceiling
    return ShownInterval(floor if lo_c else low, ceiling if hi_c else high, lo_c, hi_c)


def soh_ceiling(soh_pct: float) -> float:
    """Highest SoH a current interval is shown reaching [%]: 100 %, or the estimate
    itself when it is above (a new pack can hold a little more than its rated capacity,
    but an upper bound far above 100 % is the fit's statistics, not a pack)."""
    return max(100.0, soh_pct) if math.isfinite(soh_pct) else 100.0


@dataclass(frozen=True, slots=True)
class VehicleRow:
    """One vehicle's line of the fleet report; its fields are the CSV columns."""

    vin: str
    vehicle_class: str
    chemistry: str
    in_service_date: str
    age_years: float
    odometer_km: float
    soh_pct: float
    soh_low_pct: float
    soh_high_pct: float
    soh_trend_pct_per_year: float
    resistance_growth_pct: float
    resistance_growth_low_pct: float
    resistance_growth_high_pct: float
    n_capacity_estimates: int
    warranty_policy: str
    warranty_status: str
    warranty_reason: str
    warranty_min_soh_pct: float
    warranty_end_age_years: float
    warranty_end_odometer_km: float
    projected_soh_at_warranty_end_pct: float
    projected_soh_at_warranty_end_low_pct: float
    projected_soh_at_warranty_end_high_pct: float
    usage_flags: str
    anomalies_new: int | None  # None: anomaly detection has not run
    anomalies_open: int | None
    anomaly_max_score: float
    # Reconciliation (``data_status``): "" = it has not run for the date (the counts
    # are None then); "silent" = no reading stored, so nothing to count expected or
    # missing readings from (None, not 0); "gaps" = readings missing between the day's
    # first and last stored sequence numbers; "complete" = none missing there.
    data_status: str
    readings_expected: int | None
    readings_stored: int | None
    readings_missing: int | None
    data_gaps: int | None
    longest_gap_s: float

    @property
    def soh_shown(self) -> ShownInterval:
        """The SoH's 90 % interval as shown: within 0..``soh_ceiling``."""
        return clip_interval(self.soh_low_pct, self.soh_high_pct, 0.0, soh_ceiling(self.soh_pct))

    @property
    def projected_shown(self) -> ShownInterval:
        """The projection's 90 % interval as shown: at least 0, and at most the current
        SoH's shown upper bound (capacity does not grow with age)."""
        ceiling = self.soh_shown.high
        if not math.isfinite(ceiling):
            ceiling = soh_ceiling(self.soh_pct)
        return clip_interval(
            self.projected_soh_at_warranty_end_low_pct,
            self.projected_soh_at_warranty_end_high_pct,
            0.0,
            ceiling,
        )


#: A resistance growth whose 90 % interval contains 0 and is wider than this is "not
#: yet determined" on the reports' pages (``resistance_growth_determined``). [% points]
RESISTANCE_GROWTH_MAX_WIDTH_PCT = 50.0


def resistance_growth_determined(low_pct: float, high_pct: float) -> bool:
    """Whether a resistance growth with the 90 % interval ``low_pct..high_pct`` says
    anything a reader can act on.

    Not when the interval contains 0 (no growth at all cannot be ruled out) and is
    wider than ``RESISTANCE_GROWTH_MAX_WIDTH_PCT`` (50 points): such an interval cannot
    tell a pack whose resistance has not grown from one whose resistance grew by half,
    i.e. halfway to the doubled resistance (+100 %) often taken as a cell's end of life
    for power. A narrower interval around 0 ("0 +- 20 %") does say something (the growth
    is small), and one that excludes 0 shows growth, however wide. A missing bound is
    not determined either.
    """
    if not (math.isfinite(low_pct) and math.isfinite(high_pct)):
        return False
    return not (low_pct <= 0.0 <= high_pct and high_pct - low_pct > RESISTANCE_GROWTH_MAX_WIDTH_PCT)


#: CSV header = ``VehicleRow`` fields, units in the names.
CSV_COLUMNS = tuple(VehicleRow.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class GapRow:
    """A vehicle with missing readings on the date (``reconciliation``)."""

    vin: str
    readings_expected: int
    readings_stored: int
    readings_missing: int
    gap_count: int
    longest_gap_s: float


@dataclass(frozen=True)
class FleetData:
    """Everything the fleet report shows, for one date and fleet."""

    day: date
    fleet: str
    rows: tuple[VehicleRow, ...]
    gaps: tuple[GapRow, ...]
    anomalies: tuple[Anomaly, ...]
    policies: dict[str, str]  # policy id -> name
    has_anomaly_table: bool
    has_reconciliation: bool
    model_versions: tuple[str, ...]

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.warranty_status == status)

    @property
    def new_anomalies(self) -> int:
        return sum(1 for a in self.anomalies if a.status == "new")


@dataclass(frozen=True)
class VehicleData:
    """Everything one vehicle's report shows (histories up to ``day``)."""

    day: date
    fleet: str
    row: VehicleRow
    # SoH history: one entry per date with a vehicle_soh row.
    soh_age_years: FloatArray
    soh_pct: FloatArray
    soh_low_pct: FloatArray
    soh_high_pct: FloatArray
    # Capacity estimates (points of the SoH chart).
    estimate_age_years: FloatArray
    estimate_soh_pct: FloatArray
    # Fit of the day: soh = soh_new_pct - fade_pct_per_year_pow * age**fade_exponent.
    soh_new_pct: float
    fade_pct_per_year_pow: float
    fade_exponent: float
    # Daily usage over the report window, oldest first.
    usage_days: tuple[str, ...]
    usage: dict[str, FloatArray]
    # Cell heat map: rest deviation [mV], shape (n_cells, n_days of cell_days).
    cell_days: tuple[str, ...]
    cell_rest_dev_mv: FloatArray
    anomalies: tuple[Anomaly, ...]
    evidence: dict[str, Any] = field(default_factory=dict)
    window_days: int = 90


# --------------------------------------------------------------------------- assembly


def _parse_features(raw: Any) -> tuple[Feature, ...]:
    """Top features of an anomaly (a list of structs, or the same as JSON text)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return ()
    out = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict):
            continue
        out.append(
            Feature(
                name=str(item.get("feature") or item.get("name") or "?"),
                value=_num(item.get("value")),
                unit=str(item.get("unit") or ""),
                normal_low=_num(item.get("normal_low")),
                normal_high=_num(item.get("normal_high")),
            )
        )
    return tuple(out)


def _anomaly(row: dict[str, Any]) -> Anomaly:
    first = row.get("first_seen")
    cell, sensor = row.get("cell"), row.get("sensor")
    return Anomaly(
        vin=str(row["vin"]),
        cell=-1 if cell is None else int(cell),
        sensor=-1 if sensor is None else int(sensor),
        score=_num(row.get("score")),
        threshold=_num(row.get("threshold")),
        severity=str(row.get("severity") or ""),
        status=str(row.get("status") or ""),
        source=str(row.get("source") or ""),
        rules=tuple(str(r) for r in row.get("rules") or ()),
        first_seen="" if first is None else str(first)[:10],
        model_version=str(row.get("model_version") or ""),
        features=_parse_features(row.get("top_features")),
        explanation=str(row.get("evidence") or ""),
    )


_STATUS_ORDER = ("new", "ongoing", "cleared")


def _anomaly_key(a: Anomaly) -> tuple[int, int, float, str, int]:
    status = _STATUS_ORDER.index(a.status) if a.status in _STATUS_ORDER else len(_STATUS_ORDER)
    sev = SEVERITY_ORDER.index(a.severity) if a.severity in SEVERITY_ORDER else len(SEVERITY_ORDER)
    return (status, sev, -a.score if not math.isnan(a.score) else 0.0, a.vin, a.cell)


def soh_trend_pct_per_year(
    soh_pct: float, projected_soh_pct: float, age_years: float, end_years: float
) -> float:
    r"""Expected SoH change per year from now to the end of warranty cover. [%/year]

    :math:`(s_{end} - s_{now}) / (t_{end} - t_{now})`: the average fade rate over the
    rest of the cover, from the SoH now and its projection to the end of cover (both
    shown next to it, so the three agree). Negative when the battery loses capacity;
    NaN without a projection (no fit, cover ended) or when cover ends now.

    Not the secant over the past year of age nor the derivative now: the fit
    :math:`s(t) = a - b\,t^p` (``p`` 0.5-0.75) is steepest near age 0, so a pack a week
    old read -14.8 %/yr (secant since service start) next to a projection of 96 % at
    three years; the derivative, :math:`p` times that secant, still reads -7 %/yr and
    grows without bound towards age 0. The average to the end of cover is what the
    warranty question needs, and stays finite at any age.
    """
    if not all(map(math.isfinite, (soh_pct, projected_soh_pct, age_years, end_years))):
        return math.nan
    if end_years <= age_years:
        return math.nan
    return (projected_soh_pct - soh_pct) / (end_years - age_years)


def _vehicle_row(
    vin: str,
    reg: dict[str, Any],
    soh: dict[str, Any],
    war: dict[str, Any],
    odometer: float,
    anomalies: Sequence[Anomaly],
    rec: dict[str, Any] | None,
    anomalies_known: bool = True,
) -> VehicleRow:
    in_service = reg.get("in_service_date")
    age = _num(soh.get("age_years", war.get("age_years")))
    flags = war.get("usage_flags") or []
    scores = [a.score for a in anomalies if not math.isnan(a.score)]
    soh_pct = _num(soh.get("soh_pct", war.get("soh_pct")))
    end_years = _num(war.get("coverage_end_years"))
    end_km = _num(war.get("coverage_end_km"))
    return VehicleRow(
        vin=vin,
        vehicle_class=str(reg.get("vehicle_class") or ""),
        chemistry=str(reg.get("chemistry") or soh.get("chemistry") or ""),
        in_service_date="" if in_service is None else str(in_service),
        age_years=age,
        odometer_km=odometer,
        soh_pct=soh_pct,
        soh_low_pct=_num(soh.get("soh_low_pct", war.get("soh_low_pct"))),
        soh_high_pct=_num(soh.get("soh_high_pct", war.get("soh_high_pct"))),
        soh_trend_pct_per_year=soh_trend_pct_per_year(
            soh_pct, _num(war.get("projected_soh_pct")), age, end_years
        ),
        resistance_growth_pct=_num(soh.get("resistance_growth_pct")),
        resistance_growth_low_pct=_num(soh.get("resistance_growth_low_pct")),
        resistance_growth_high_pct=_num(soh.get("resistance_growth_high_pct")),
        n_capacity_estimates=_int(soh.get("n_estimates")),
        warranty_policy=str(war.get("policy_id") or soh.get("policy_id") or ""),
        warranty_status=str(war.get("status") or "insufficient_data"),
        warranty_reason=str(war.get("reason") or ""),
        warranty_min_soh_pct=_num(war.get("threshold_min_soh_pct")),
        warranty_end_age_years=end_years,
        warranty_end_odometer_km=end_km,
        projected_soh_at_warranty_end_pct=_num(war.get("projected_soh_pct")),
        projected_soh_at_warranty_end_low_pct=_num(war.get("projected_soh_low_pct")),
        projected_soh_at_warranty_end_high_pct=_num(war.get("projected_soh_high_pct")),
        usage_flags="; ".join(str(f) for f in flags),
        anomalies_new=sum(1 for a in anomalies if a.status == "new") if anomalies_known else None,
        anomalies_open=(
            sum(1 for a in anomalies if a.status != "cleared") if anomalies_known else None
        ),
        anomaly_max_score=max(scores) if scores else math.nan,
        **_reconciliation_fields(rec),
    )


def _data_status(rec: dict[str, Any] | None) -> str:
    """``complete``, ``gaps`` or ``silent`` from a ``reconciliation`` row; "" without one."""
    if rec is None:
        return ""
    if _int(rec.get("readings_stored")) == 0:
        return "silent"
    if _int(rec.get("readings_missing")) > 0 or _int(rec.get("gap_count")) > 0:
        return "gaps"
    return "complete"


def _reconciliation_fields(rec: dict[str, Any] | None) -> dict[str, Any]:
    """The ``VehicleRow`` fields from a ``reconciliation`` row (see ``_data_status``)."""
    if rec is None:
        return {
            "data_status": "",
            "readings_expected": None,
            "readings_stored": None,
            "readings_missing": None,
            "data_gaps": None,
            "longest_gap_s": math.nan,
        }
    status = _data_status(rec)
    silent = status == "silent"
    return {
        "data_status": status,
        "readings_expected": None if silent else _int(rec.get("readings_expected")),
        "readings_stored": _int(rec.get("readings_stored")),
        "readings_missing": None if silent else _int(rec.get("readings_missing")),
        "data_gaps": None if silent else _int(rec.get("gap_count")),
        "longest_gap_s": _num(rec.get("longest_gap_s")),
    }


def _row_key(r: VehicleRow) -> tuple[int, int, int, float, str]:
    """Most urgent first: claims, at risk, open anomalies, then the other verdicts."""
    status = (
        VERDICT_ORDER.index(r.warranty_status)
        if r.warranty_status in VERDICT_ORDER
        else len(VERDICT_ORDER)
    )
    group = status if status < 2 else (2 if r.anomalies_open else 3)
    soh = r.soh_pct if not math.isnan(r.soh_pct) else 1e9
    return (group, status, -(r.anomalies_open or 0), soh, r.vin)


def _policy_names(warranty: Sequence[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for w in warranty:
        pid = str(w.get("policy_id") or "")
        if not pid or pid in out:
            continue
        try:
            ev = json.loads(w.get("evidence") or "{}")
            out[pid] = str(ev.get("policy", {}).get("name") or pid)
        except (json.JSONDecodeError, AttributeError):
            out[pid] = pid
    return out


#: How far back (days before the date) ``newest_odometer_km`` looks first, then next;
#: then the whole history, for the vehicles still without an odometer reading.
_ODOMETER_LOOKBACK_DAYS = (30, 400)


def newest_odometer_km(
    lake_root: Path,
    fleet: str,
    day: date,
    vins: Iterable[str],
    fallback_km: dict[str, float],
) -> dict[str, float]:
    """Each vehicle's newest odometer reading on or before ``day`` [km].

    The odometer of its newest ``vehicle_day`` row that has one, however old (the
    fleet and the vehicle reports share this rule, so they never disagree); else
    ``fallback_km`` (the date's ``vehicle_soh.odometer_km``), else NaN. Recent dates are
    read first; older ones only for the vehicles not found there.
    """
    base = lake_root / "metrics" / "vehicle_day"
    wanted = set(vins)
    found: dict[str, float] = {}
    last = day
    for back in (*_ODOMETER_LOOKBACK_DAYS, None):
        missing = sorted(wanted - found.keys())
        if not missing:
            break
        first = date.min if back is None else max(day - timedelta(days=back), date.min)
        table = _read(base, fleet, first, last, ("vin", "odometer_km"), missing)
        newest: dict[str, float] = {}
        for r in sorted(_rows(table), key=lambda r: r["date"]):
            km = _num(r["odometer_km"])
            if math.isfinite(km):
                newest[r["vin"]] = km
        found.update(newest)
        if first == date.min:
            break
        last = first - timedelta(days=1)
    return {v: found.get(v, fallback_km.get(v, math.nan)) for v in wanted}


def _day_tables(
    lake_root: Path, fleet: str, day: date, vins: Iterable[str] | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    metrics = lake_root / "metrics"
    soh = _read(metrics / "vehicle_soh", fleet, day, day, _VEHICLE_SOH, vins)
    war = _read(metrics / "warranty", fleet, day, day, _WARRANTY, vins)
    if soh is None and war is None:
        raise ReportError(
            f"no metrics for fleet {fleet} on {day.isoformat()} under "
            f"{metrics}/vehicle_soh (run fleetbms analyze first)"
        )
    return {r["vin"]: r for r in _rows(soh)}, {r["vin"]: r for r in _rows(war)}


def _anomalies_on(
    lake_root: Path, fleet: str, day: date, vins: Iterable[str] | None = None
) -> tuple[bool, list[Anomaly]]:
    table = _read(lake_root / "anomalies", fleet, day, day, _ANOMALIES, vins)
    if table is None:
        return False, []
    return True, sorted((_anomaly(r) for r in _rows(table)), key=_anomaly_key)


def load_fleet(lake_root: Path, day: date, fleet: str) -> FleetData:
    """The fleet report's data for one date and fleet.

    Raises
    ------
    ReportError
        No ``vehicle_soh``/``warranty`` metrics for that date and fleet.
    """
    soh, war = _day_tables(lake_root, fleet, day)
    registry = read_registry(lake_root)
    vins = sorted(set(soh) | set(war))
    odometer = newest_odometer_km(
        lake_root,
        fleet,
        day,
        vins,
        {v: _num(r.get("odometer_km")) for v, r in soh.items()},
    )
    has_anomalies, anomalies = _anomalies_on(lake_root, fleet, day)
    rec_table = _read(lake_root / "metrics" / "reconciliation", fleet, day, day, _RECONCILIATION)
    rec = {r["vin"]: r for r in _rows(rec_table)}
    by_vin: dict[str, list[Anomaly]] = {}
    for a in anomalies:
        by_vin.setdefault(a.vin, []).append(a)
    rows = []
    for vin in vins:
        rows.append(
            _vehicle_row(
                vin,
                registry.get(vin, {}),
                soh.get(vin, {}),
                war.get(vin, {}),
                odometer[vin],
                by_vin.get(vin, []),
                rec.get(vin),
                has_anomalies,
            )
        )
    gaps = tuple(
        GapRow(
            vin=r["vin"],
            readings_expected=_int(r["readings_expected"]),
            readings_stored=_int(r["readings_stored"]),
            readings_missing=_int(r["readings_missing"]),
            gap_count=_int(r["gap_count"]),
            longest_gap_s=_num(r["longest_gap_s"]),
        )
        for r in sorted(rec.values(), key=lambda r: (-_int(r["readings_missing"]), r["vin"]))
        if _data_status(r) in ("gaps", "silent")
    )
    versions = sorted(
        {str(w.get("model_version")) for w in war.values() if w.get("model_version")}
        | {a.model_version for a in anomalies if a.model_version}
    )
    return FleetData(
        day=day,
        fleet=fleet,
        rows=tuple(sorted(rows, key=_row_key)),
        gaps=gaps,
        anomalies=tuple(anomalies),
        policies=_policy_names(list(war.values())),
        has_anomaly_table=has_anomalies,
        has_reconciliation=rec_table is not None,
        model_versions=tuple(versions),
    )


def fleet_of(lake_root: Path, vin: str, day: date) -> str:
    """The fleet of ``vin``: from the registry, else from the date's metrics.

    Raises
    ------
    ReportError
        The VIN is neither in the registry nor in the date's ``vehicle_soh`` metrics.
    """
    reg = read_registry(lake_root).get(vin)
    if reg is not None and reg.get("fleet"):
        return str(reg["fleet"])
    base = lake_root / "metrics" / "vehicle_soh" / f"date={day.isoformat()}"
    for path in sorted(base.glob("fleet=*/*.parquet")):
        vins = pq.read_table(path, columns=["vin"])["vin"]
        if pc.any(pc.equal(vins, vin)).as_py():
            return path.parent.name.removeprefix("fleet=")
    raise ReportError(
        f"unknown VIN {vin}: not in the registry and no metrics for it on {day.isoformat()}"
    )


def _float_column(column: pa.ChunkedArray) -> FloatArray:
    """A column as float64, NaN where null or not a number (``_num`` on every value)."""
    typ = column.type
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        filled = pc.fill_null(pc.cast(column, pa.float64()), math.nan)
        return np.asarray(filled.to_numpy(), dtype=np.float64)
    return np.full(len(column), math.nan)


def _vin_groups(vins: pa.ChunkedArray) -> tuple[npt.NDArray[np.int64], dict[str, slice]]:
    """Row order that groups equal VINs (stable), and each VIN's slice of that order.

    Works on dictionary codes (integers), not strings: millions of cell rows sort fast.
    """
    encoded = pc.dictionary_encode(vins).combine_chunks()
    codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False))
    names = encoded.dictionary.to_pylist()
    valid = np.asarray(pc.is_valid(encoded).to_numpy(zero_copy_only=False), dtype=bool)
    codes = np.where(valid, codes, -1).astype(np.int64)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    bounds = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1], True])
    groups = {}
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        code = int(sorted_codes[lo])
        if code >= 0:
            groups[str(names[code])] = slice(lo, hi)
    return order, groups


def _day_column(column: pa.ChunkedArray) -> npt.NDArray[np.datetime64]:
    """Dates of a timestamp or date column (a zoned timestamp's local date, as
    ``datetime.date()`` gives it); NaT where null or of another type."""
    typ = column.type
    if pa.types.is_timestamp(typ):
        column = pc.cast(column, pa.date32())
    elif not pa.types.is_date(typ):
        return np.full(len(column), np.datetime64("NaT"), dtype="datetime64[D]")
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype="datetime64[D]")


def _years_between(
    later: npt.NDArray[np.datetime64] | np.datetime64,
    earlier: npt.NDArray[np.datetime64] | np.datetime64,
) -> FloatArray:
    """Whole days from ``earlier`` to ``later`` in years [years]; NaN where either is NaT."""
    delta = np.atleast_1d(np.asarray(later - earlier))
    out: FloatArray = delta.astype(np.float64) / DAYS_PER_YEAR
    out[np.isnat(delta)] = math.nan
    return out


@dataclass(frozen=True)
class _ByVin:
    """Rows of a table grouped by VIN, in date order within a VIN, as float columns
    (and, if asked for, one column as dates)."""

    groups: dict[str, slice]
    columns: dict[str, FloatArray]
    dates: npt.NDArray[np.datetime64]
    day_columns: dict[str, npt.NDArray[np.datetime64]] = field(default_factory=dict)

    def get(self, vin: str, key: str) -> FloatArray:
        sl = self.groups.get(vin)
        return self.columns[key][sl] if sl is not None else np.zeros(0)

    def days(self, vin: str, key: str = "date") -> npt.NDArray[np.datetime64]:
        column = self.dates if key == "date" else self.day_columns[key]
        sl = self.groups.get(vin)
        return column[sl] if sl is not None else column[:0]


def _by_vin(table: pa.Table | None, keys: Sequence[str], day_keys: Sequence[str] = ()) -> _ByVin:
    """``table`` (with ``vin`` and ``date``) grouped per VIN, columns ``keys`` as floats,
    ``day_keys`` as dates."""
    if table is None or table.num_rows == 0:
        no_days = np.zeros(0, "datetime64[D]")
        return _ByVin({}, {k: np.zeros(0) for k in keys}, no_days, {k: no_days for k in day_keys})
    # Date order first, then a stable grouping by VIN keeps it within each VIN.
    table = table.take(pc.sort_indices(table["date"]))
    order, groups = _vin_groups(table["vin"])
    table = table.take(pa.array(order))
    dates = np.asarray(table["date"].to_numpy(), dtype="datetime64[D]")
    return _ByVin(
        groups,
        {k: _float_column(table[k]) for k in keys},
        dates,
        {k: _day_column(table[k]) for k in day_keys},
    )


def load_vehicles(
    lake_root: Path,
    day: date,
    fleet: str,
    vins: Sequence[str],
    *,
    window_days: int = 90,
    history_days: int = 730,
) -> list[VehicleData]:
    """The vehicle reports' data of ``vins`` (one pass over each table).

    Raises
    ------
    ReportError
        No metrics for the date and fleet, or a VIN without metrics on that date.
    """
    want = sorted(set(vins))
    soh_day, war_day = _day_tables(lake_root, fleet, day, want)
    missing = [v for v in want if v not in soh_day and v not in war_day]
    if missing:
        raise ReportError(
            f"unknown VIN {missing[0]}: no metrics for it in fleet {fleet} on {day.isoformat()}"
        )
    registry = read_registry(lake_root)
    metrics = lake_root / "metrics"
    first_hist = day - timedelta(days=history_days)
    first_win = day - timedelta(days=window_days - 1)
    soh_hist = _by_vin(
        _read(metrics / "vehicle_soh", fleet, first_hist, day, _VEHICLE_SOH, want),
        ("age_years", "soh_pct", "soh_low_pct", "soh_high_pct"),
    )
    cap_hist = _by_vin(
        _read(metrics / "capacity", fleet, first_hist, day, _CAPACITY, want),
        ("soh_pct",),
        ("end_ts",),
    )
    usage_keys = [k for k in _VEHICLE_DAY if k != "vin"]
    usage = _by_vin(
        _read(metrics / "vehicle_day", fleet, first_win, day, _VEHICLE_DAY, want), usage_keys
    )
    cells = _read(metrics / "cell_day", fleet, first_win, day, _CELL_DAY, want)
    rec_table = _read(metrics / "reconciliation", fleet, day, day, _RECONCILIATION, want)
    rec = {r["vin"]: r for r in _rows(rec_table)}
    has_anomalies, anomalies = _anomalies_on(lake_root, fleet, day, want)
    by_vin: dict[str, list[Anomaly]] = {}
    for a in anomalies:
        by_vin.setdefault(a.vin, []).append(a)
    cell_maps = _cell_maps(cells, first_win, day)
    odometer = newest_odometer_km(
        lake_root,
        fleet,
        day,
        want,
        {v: _num(r.get("odometer_km")) for v, r in soh_day.items()},
    )
    out = []
    for vin in want:
        reg = registry.get(vin, {})
        soh = soh_day.get(vin, {})
        war = war_day.get(vin, {})
        row = _vehicle_row(
            vin, reg, soh, war, odometer[vin], by_vin.get(vin, []), rec.get(vin), has_anomalies
        )
        in_service = reg.get("in_service_date")
        if in_service is not None:
            est_age = _years_between(cap_hist.days(vin, "end_ts"), np.datetime64(in_service, "D"))
        else:
            # Without a registry date, place estimates by their date relative to today.
            est_age = row.age_years - _years_between(np.datetime64(day, "D"), cap_hist.days(vin))
        cell_days, dev = cell_maps.get(vin, ((), np.zeros((0, 0))))
        try:
            evidence = json.loads(war.get("evidence") or "{}")
        except json.JSONDecodeError:
            evidence = {"raw": str(war.get("evidence"))}
        out.append(
            VehicleData(
                day=day,
                fleet=fleet,
                row=row,
                soh_age_years=soh_hist.get(vin, "age_years"),
                soh_pct=soh_hist.get(vin, "soh_pct"),
                soh_low_pct=soh_hist.get(vin, "soh_low_pct"),
                soh_high_pct=soh_hist.get(vin, "soh_high_pct"),
                estimate_age_years=est_age,
                estimate_soh_pct=cap_hist.get(vin, "soh_pct"),
                soh_new_pct=_num(soh.get("soh_new_pct")),
                fade_pct_per_year_pow=_num(soh.get("fade_pct_per_year_pow")),
                fade_exponent=_num(soh.get("fade_exponent")),
                usage_days=tuple(np.datetime_as_string(usage.days(vin), unit="D").tolist()),
                usage={k: usage.get(vin, k) for k in usage_keys},
                cell_days=cell_days,
                cell_rest_dev_mv=dev,
                anomalies=tuple(by_vin.get(vin, [])),
                evidence=evidence if isinstance(evidence, dict) else {"evidence": evidence},
                window_days=window_days,
            )
        )
    return out


def _cell_maps(
    cells: pa.Table | None, first: date, last: date
) -> dict[str, tuple[tuple[str, ...], FloatArray]]:
    """Per VIN: the window's days and the (cell x day) matrix of rest deviation [mV]."""
    if cells is None or cells.num_rows == 0:
        return {}
    n_days = (last - first).days + 1
    days = tuple((first + timedelta(days=i)).isoformat() for i in range(n_days))
    cell = _float_column(cells["cell"])
    dev = _float_column(cells["rest_dev_mv"])
    d = cells["date"].to_numpy(zero_copy_only=False).astype("datetime64[D]")
    col = (d - np.datetime64(first.isoformat())).astype(np.int64)
    out = {}
    order, groups = _vin_groups(cells["vin"])
    for vin, rows in groups.items():
        sl = order[rows]
        ok = np.isfinite(cell[sl])
        sl = sl[ok]
        if sl.size == 0:
            continue
        n_cells = int(cell[sl].max()) + 1
        m = np.full((n_cells, n_days), np.nan)
        m[cell[sl].astype(np.int64), col[sl]] = dev[sl]
        out[vin] = (days, m)
    return out


def newly_flagged(lake_root: Path, day: date, fleet: str) -> list[str]:
    """VINs that need a vehicle report on ``day``.

    A vehicle is newly flagged when an anomaly of it has status ``new`` on the date, or
    its warranty status became ``at_risk`` or ``claim_eligible`` on the date (it was
    different, or unknown, on the latest earlier date with a ``warranty`` partition).
    A flagged VIN without SoH or warranty rows on the date (not in the registry) has no
    vehicle report to make: its anomalies are in the fleet report, and one unregistered
    vehicle must not stop the nightly reports of the others.
    """
    _, anomalies = _anomalies_on(lake_root, fleet, day)
    flagged = {a.vin for a in anomalies if a.status == "new"}
    base = lake_root / "metrics" / "warranty"
    today = _read(base, fleet, day, day, ("vin", "status"))
    earlier = [d for d, _ in _partitions(base, fleet, date.min, day - timedelta(days=1))]
    before: dict[str, Any] = {}
    if earlier:
        prev = _read(base, fleet, earlier[-1], earlier[-1], ("vin", "status"))
        before = {r["vin"]: r["status"] for r in _rows(prev)}
    for r in _rows(today):
        if r["status"] in ("at_risk", "claim_eligible") and before.get(r["vin"]) != r["status"]:
            flagged.add(r["vin"])
    if not flagged:
        return []
    soh_day, war_day = _day_tables(lake_root, fleet, day, flagged)
    return sorted(v for v in flagged if v in soh_day or v in war_day)
