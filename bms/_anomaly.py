"""Anomaly detection: score one date, keep flags' status, train and refit the model.

For a date ``D`` and a fleet, ``score_anomalies``:

1. builds the feature rows of ``D`` (``bms._features``) and writes them to
   ``lake/anomaly_features/date=D/fleet=F/part.parquet``;
2. picks the model valid for ``D`` (``state/models/fleet=F/``): the newest fitted for a
   date on or before ``D``, refitting on a fixed schedule (every ``refit_days``, dates
   anchored at 1970-01-01 so the choice does not depend on what ran before) or after
   drift; a model refused on load (another scikit-learn version, bad checksum) is
   retired and refitted on the same window;
3. scores the rows of ``D`` and of the previous days of the persistence window; a
   vehicle is flagged by the model when its score is above the model's threshold today
   and on at least ``persist_days`` of the last ``persist_window`` days;
4. evaluates the physical rules (``bms._anomaly_rules``) on today's rows;
5. merges model and rule flags per (vehicle, cell), carries ``first_seen`` from the
   previous date's output and sets the status: ``new``, ``ongoing`` (also while a flag
   has been quiet on fewer than ``clear_days`` days with its vehicle's data, and on a
   day its vehicle sent no data), ``cleared`` (once, then dropped);
6. writes ``lake/anomalies/date=D/fleet=F/part.parquet`` atomically; the same inputs
   give byte-identical output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bms._anomaly_model import (
    AnomalyModel,
    ModelRefusedError,
    fit_model,
    list_models,
    load_model,
    retire_model,
    save_model,
)
from bms._anomaly_rules import CRITICAL, WARNING, RuleLimits, evaluate_rules
from bms._errors import BmsError
from bms._features import (
    CELL_EVIDENCE,
    CELL_FEATURES,
    CELL_INDEX,
    FEATURE_UNITS,
    FEATURES_SCHEMA,
    FeatureCache,
    FeatureParams,
    build_features,
    features_path,
)
from bms._lake import atomic_write_bytes, write_parquet_atomic

#: Features the isolation forest uses by default: the cell z-scores within the pack and
#: the vehicle's temperature excess over its own past and the fleet. The level of a
#: cell's rest deviation is left to the spread rule (a cell that has always sat a few mV
#: off is a manufacturing outlier, not a developing fault; its trend is in, as ``drift_z``
#: and ``drift_growth_z``: read in SoC where the OCV curve gives the cells' offsets, so
#: that a fixed imbalance read at rest SoCs of a flatter or steeper curve does not look
#: like a cell drifting away; a healthy occasional-use LFP car whose cell sat 0.8 % off
#: its pack (0.00-0.04 % change a week) went from 10 to 29 mV and back in a month and was
#: flagged on the mV trend for 16 days, seed 5). Charging and heat
#: exposure are in the feature rows as context but not in the model (they describe use,
#: not faults); so are the 30-day SoH and resistance trends, whose early fits scatter too
#: much to isolate a vehicle on (a weak cell shows earlier in the cell features), and the
#: temperature-sensor figures, which the sensor rules judge physically.
DEFAULT_MODEL_FEATURES: tuple[str, ...] = (
    "self_discharge_z",
    "drift_z",
    "sag_z",
    "resistance_z",
    "min_share_z",
    "drift_growth_z",
    "temp_max_excess_c",
    "temp_rise_excess_c",
)

#: The cell a model flag names when its top feature is a pack-level drift feature: the
#: SoC view's cell (``_DRIFT_CELL``) where the row has it (``_DRIFT_SOURCE`` not null),
#: else the mV view's (``_DRIFT_MV_CELL``).
_DRIFT_CELL = {
    "spread_growth_z": "rest_dev_cell",
    "soc_spread_growth_z": "soc_drift_cell",
    "drift_z": "soc_drift_cell",
    "drift_growth_z": "soc_drift_cell",
}
_DRIFT_SOURCE = {"drift_z": "soc_drift_z", "drift_growth_z": "soc_spread_growth_z"}
_DRIFT_MV_CELL = {"drift_z": "rest_dev_trend_cell", "drift_growth_z": "rest_dev_cell"}

STATUSES = ("new", "ongoing", "cleared")

#: How far back the evidence of a stuck sensor looks for the day it got stuck [d].
STUCK_LOOKBACK_DAYS = 90

_TOP_FEATURE = pa.struct(
    [
        ("feature", pa.string()),
        ("value", pa.float64()),
        ("unit", pa.string()),
        ("normal_low", pa.float64()),
        ("normal_median", pa.float64()),
        ("normal_high", pa.float64()),
        ("distance", pa.float64()),
    ]
)

ANOMALIES_SCHEMA = pa.schema(
    [
        pa.field("vin", pa.string(), nullable=False),
        pa.field("cell", pa.int16(), nullable=False),
        pa.field("sensor", pa.int16(), nullable=False),
        pa.field("date", pa.date32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("severity", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("rules", pa.list_(pa.string()), nullable=False),
        pa.field("top_features", pa.list_(_TOP_FEATURE), nullable=False),
        pa.field("evidence", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("first_seen", pa.date32(), nullable=False),
        pa.field("last_flagged", pa.date32(), nullable=False),
    ],
    metadata={
        b"fleetbms.table": b"anomalies",
        b"fleetbms.version": b"1",
        b"fleetbms.units": (
            b"score: isolation-forest anomaly score s in (0, 1], higher = more anomalous "
            b"(Liu et al. 2008); cell, sensor: 0-based, -1 = pack-level / none"
        ),
    },
)


@dataclass(frozen=True)
class AnomalyParams:
    """Tunables of the anomaly stage (``[anomaly]`` in the configuration)."""

    training_days: int = 90  # rolling window of fleet history the model is fitted on [d]
    min_training_days: int = 21  # no model before this many days of history [d]
    contamination: float = 0.01  # expected share of anomalous training rows (sklearn) [-]
    threshold_sigmas: float = 6.0  # flag threshold: median + this many robust sigmas [-]
    random_state: int = 42  # seed of the isolation forest
    n_estimators: int = 100  # trees
    max_samples: int = 256  # rows per tree (Liu et al. 2008: 256)
    refit_days: int = 7  # refit at least this often [d]
    drift_days: int = 7  # drift: share of rows above threshold over this many days [d]
    drift_factor: float = 4.0  # ... above this multiple of the training share -> refit [-]
    persist_days: int = 6  # model flag: above threshold on this many days ... [d]
    persist_window: int = 8  # ... of the last this many days, including today [d]
    clear_days: int = 3  # a flag quiet on this many days with its vehicle's data is cleared [d]
    top_features: int = 3  # contributing features named per flag
    min_history_days: int = 7  # days of cell data in the trend window before the model
    # judges (and trains on) a vehicle [d]
    model_features: tuple[str, ...] = DEFAULT_MODEL_FEATURES
    features: FeatureParams = field(default_factory=FeatureParams)
    rules: RuleLimits = field(default_factory=RuleLimits)

    def __post_init__(self) -> None:
        unknown = [f for f in self.model_features if f not in FEATURE_UNITS]
        if unknown:
            raise ValueError(
                f"unknown model feature(s) {', '.join(unknown)}; valid: {', '.join(FEATURE_UNITS)}"
            )
        if not 0.0 < self.contamination < 0.5:
            raise ValueError(f"contamination must be within (0, 0.5), got {self.contamination}")
        if self.persist_days > self.persist_window:
            raise ValueError(
                f"persist_days ({self.persist_days}) exceeds persist_window ({self.persist_window})"
            )
        for name in (
            "training_days",
            "min_training_days",
            "refit_days",
            "n_estimators",
            "max_samples",
            "persist_days",
            "clear_days",
            "drift_days",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ModelInfo:
    """Which model scored (or was trained) and why."""

    version: str
    valid_from: date
    training_start: date
    training_end: date
    training_rows: int
    sklearn_version: str
    action: str  # loaded, fitted, refitted
    reason: str  # schedule, drift, manual, or the refusal message


@dataclass(frozen=True)
class AnomalySummary:
    """What ``score_anomalies`` did for one date."""

    day: date
    fleets: tuple[str, ...]
    vehicles: int
    flagged: int  # rows with status new or ongoing
    new: int
    ongoing: int
    cleared: int
    by_source: Mapping[str, int]
    models: tuple[ModelInfo, ...]
    files: tuple[Path, ...]
    seconds: float


# --------------------------------------------------------------------------- paths


def anomalies_path(lake_root: Path, day: date, fleet: str) -> Path:
    """Path of one anomalies partition file."""
    return lake_root / "anomalies" / f"date={day.isoformat()}" / f"fleet={fleet}" / "part.parquet"


def models_root(state_dir: Path, fleet: str) -> Path:
    """Folder of a fleet's models (``state/models/fleet=F``)."""
    return state_dir / "models" / f"fleet={fleet}"


def day_sums_root(state_dir: Path) -> Path:
    """Where the feature builder keeps each day's telemetry sums between runs."""
    return state_dir / "anomaly" / "day_sums"


def _ledger_path(state_dir: Path, fleet: str, day: date) -> Path:
    return state_dir / "anomaly" / "runs" / f"fleet={fleet}" / f"{day.isoformat()}.json"


def analysed_dates(lake_root: Path, fleet: str | None = None) -> dict[str, list[date]]:
    """Dates with analytics outputs (``metrics/vehicle_day``), per fleet."""
    out: dict[str, list[date]] = {}
    for p in sorted((lake_root / "metrics" / "vehicle_day").glob("date=*/fleet=*/part.parquet")):
        fl = p.parent.name.removeprefix("fleet=")
        if fleet is not None and fl != fleet:
            continue
        out.setdefault(fl, []).append(
            date.fromisoformat(p.parent.parent.name.removeprefix("date="))
        )
    return {k: sorted(v) for k, v in sorted(out.items())}


def _inputs_fingerprint(lake_root: Path, day: date, fleet: str) -> str:
    """Digest of the direct inputs of one (date, fleet): names, sizes, mtimes."""
    parts = []
    for table in ("metrics/vehicle_day", "metrics/cell_day", "metrics/vehicle_soh", "telemetry"):
        folder = lake_root / table / f"date={day.isoformat()}" / f"fleet={fleet}"
        for p in sorted(folder.glob("*.parquet")):
            st = p.stat()
            parts.append(f"{table}/{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def pending_anomaly_dates(
    lake_root: Path, state_dir: Path, *, fleet: str | None = None
) -> dict[str, list[date]]:
    """Analysed dates not yet scored (or whose inputs changed since), per fleet, in order.

    Once a date is pending, every later analysed date of its fleet is too: a flag's
    status and the persistence window depend on the dates before.
    """
    out: dict[str, list[date]] = {}
    for fl, days in analysed_dates(lake_root, fleet).items():
        pending: list[date] = []
        for d in days:
            if pending:
                pending.append(d)
                continue
            ledger = _ledger_path(state_dir, fl, d)
            path = anomalies_path(lake_root, d, fl)
            if not path.is_file() or not ledger.is_file():
                pending.append(d)
                continue
            try:
                rec = json.loads(ledger.read_text(encoding="utf-8"))
            except ValueError:
                pending.append(d)
                continue
            if rec.get("inputs") != _inputs_fingerprint(lake_root, d, fl) or rec.get(
                "output_sha256"
            ) != _file_sha(path):
                pending.append(d)
        if pending:
            out[fl] = pending
    return out


# --------------------------------------------------------------------------- features


@dataclass
class _Cache:
    """Feature tables, models and scores reused while one run scores many dates."""

    features: dict[tuple[str, date], pa.Table | None] = field(default_factory=dict)
    models: dict[tuple[str, str], AnomalyModel] = field(default_factory=dict)
    scores: dict[tuple[str, date, str], tuple[list[str], np.ndarray]] = field(default_factory=dict)
    # the feature builder's inputs reused from date to date, and its DuckDB connection
    inputs: FeatureCache = field(default_factory=FeatureCache)
    # analysed dates per fleet (the run writes no analytics output); the vehicles flagged
    # (not cleared) in each anomalies file this run wrote
    analysed: dict[str | None, dict[str, list[date]]] = field(default_factory=dict)
    flagged: dict[tuple[str, date], pa.Array] = field(default_factory=dict)

    @classmethod
    def for_state(cls, state_dir: Path) -> _Cache:
        """A cache whose feature builder keeps its per-day telemetry sums in state."""
        cache = cls()
        cache.inputs.day_store = day_sums_root(state_dir)
        return cache

    def analysed_dates(self, lake_root: Path, fleet: str | None) -> dict[str, list[date]]:
        if fleet not in self.analysed:
            self.analysed[fleet] = analysed_dates(lake_root, fleet)
        return self.analysed[fleet]

    def trim(self, keep_after: date, inputs_after: date) -> None:
        for key in [k for k in self.features if k[1] < keep_after]:
            del self.features[key]
        for skey in [k for k in self.scores if k[1] < keep_after]:
            del self.scores[skey]
        for fkey in [k for k in self.flagged if k[1] < keep_after]:
            del self.flagged[fkey]
        self.inputs.trim(inputs_after)

    def close(self) -> None:
        self.inputs.close()


def _features(
    lake_root: Path,
    day: date,
    fleet: str,
    params: AnomalyParams,
    *,
    rebuild: bool,
    cache: _Cache | None = None,
) -> pa.Table | None:
    """Feature rows of one (date, fleet): read, or built (and written) when needed.

    ``None`` when the date has no analytics output.
    """
    if cache is not None and not rebuild and (fleet, day) in cache.features:
        return cache.features[(fleet, day)]
    table = _features_uncached(
        lake_root,
        day,
        fleet,
        params,
        rebuild=rebuild,
        inputs=cache.inputs if cache is not None else None,
    )
    if cache is not None:
        cache.features[(fleet, day)] = table
    return table


def _features_uncached(
    lake_root: Path,
    day: date,
    fleet: str,
    params: AnomalyParams,
    *,
    rebuild: bool,
    inputs: FeatureCache | None = None,
) -> pa.Table | None:
    vd = lake_root / "metrics" / "vehicle_day" / f"date={day.isoformat()}" / f"fleet={fleet}"
    if not any(vd.glob("*.parquet")):
        return None
    path = features_path(lake_root, day, fleet)
    fp = _inputs_fingerprint(lake_root, day, fleet).encode()
    if not rebuild and path.is_file():
        meta = pq.read_schema(path).metadata or {}
        version = (FEATURES_SCHEMA.metadata or {}).get(b"fleetbms.version")
        if meta.get(b"fleetbms.inputs") == fp and meta.get(b"fleetbms.version") == version:
            return pq.read_table(path, schema=FEATURES_SCHEMA.with_metadata(meta))
    table = build_features(lake_root, day, fleet, params.features, inputs)
    table = table.replace_schema_metadata(
        {**(FEATURES_SCHEMA.metadata or {}), b"fleetbms.inputs": fp}
    )
    write_parquet_atomic(table, path)
    return table


def _matrix(table: pa.Table, features: Iterable[str]) -> np.ndarray:
    cols = [
        np.asarray(pc.cast(table[f], pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        for f in features
    ]
    if not cols:
        return np.zeros((table.num_rows, 0))
    return np.column_stack(cols)


# --------------------------------------------------------------------------- models


def load_anomaly_model(state_dir: Path, fleet: str, version: str) -> AnomalyModel:
    """Load a fleet's saved model by version, after its version and checksum checks.

    Raises
    ------
    ModelRefusedError
        Saved by another scikit-learn version, or its file does not match its checksum.
    """
    return load_model(models_root(state_dir, fleet), version)


def _schedule_date(day: date, refit_days: int) -> date:
    """Latest scheduled refit date on or before ``day`` (anchored at 1970-01-01)."""
    epoch = date(1970, 1, 1)
    n = (day - epoch).days
    return epoch + timedelta(days=n - n % refit_days)


def _flagged_vins(table: pa.Table) -> pa.Array:
    """VINs of an anomalies table's rows that are not cleared."""
    flagged: pa.Array = pc.filter(table["vin"], pc.not_equal(table["status"], "cleared"))
    return flagged


def _clean_rows(
    lake_root: Path,
    fleet: str,
    day: date,
    table: pa.Table,
    params: AnomalyParams,
    cache: _Cache | None = None,
) -> pa.Table:
    """Training rows of one date: vehicles past their warm-up and not flagged that day."""
    keep = pc.greater_equal(table["window_days"], params.min_history_days)
    flagged = cache.flagged.get((fleet, day)) if cache is not None else None
    if flagged is None:
        path = anomalies_path(lake_root, day, fleet)
        if path.is_file():
            flagged = _flagged_vins(pq.read_table(path, columns=["vin", "status"]))
    if flagged is not None:
        keep = pc.and_(keep, pc.invert(pc.is_in(table["vin"], value_set=flagged)))
    return table.filter(keep)


def _training_rows(
    lake_root: Path, fleet: str, valid_from: date, params: AnomalyParams, cache: _Cache
) -> tuple[np.ndarray, int, int, date, date]:
    """Training matrix of the window before ``valid_from``: rows, days, vehicles, span."""
    analysed = set(cache.analysed_dates(lake_root, fleet).get(fleet, []))
    start = valid_from - timedelta(days=params.training_days)
    end = valid_from - timedelta(days=1)
    mats = []
    vins: set[str] = set()
    used_days = []
    d = start
    while d <= end:
        if d in analysed:
            t = _features(lake_root, d, fleet, params, rebuild=False, cache=cache)
            if t is not None and t.num_rows:
                t = _clean_rows(lake_root, fleet, d, t, params, cache)
            if t is not None and t.num_rows:
                mats.append(_matrix(t, params.model_features))
                vins.update(str(v) for v in t["vin"].to_pylist())
                used_days.append(d)
        d += timedelta(days=1)
    x = np.vstack(mats) if mats else np.zeros((0, len(params.model_features)))
    first = used_days[0] if used_days else start
    last = used_days[-1] if used_days else end
    return x, len(used_days), len(vins), first, last


def _info(model: AnomalyModel, action: str, reason: str) -> ModelInfo:
    m = model.metadata
    return ModelInfo(
        version=model.version,
        valid_from=model.valid_from,
        training_start=date.fromisoformat(m["training_window"]["start"]),
        training_end=date.fromisoformat(m["training_window"]["end"]),
        training_rows=int(m["training_rows"]),
        sklearn_version=str(m["sklearn_version"]),
        action=action,
        reason=reason,
    )


def _fit_and_save(
    lake_root: Path,
    state_dir: Path,
    fleet: str,
    valid_from: date,
    params: AnomalyParams,
    reason: str,
    cache: _Cache,
) -> AnomalyModel | None:
    x, n_days, n_vins, first, last = _training_rows(lake_root, fleet, valid_from, params, cache)
    if n_days < params.min_training_days or len(x) < 2:
        return None
    model = fit_model(
        x,
        params.model_features,
        valid_from=valid_from,
        training_start=first,
        training_end=last,
        contamination=params.contamination,
        random_state=params.random_state,
        n_estimators=params.n_estimators,
        max_samples=params.max_samples,
        n_vehicles=n_vins,
        reason=reason,
        threshold_sigmas=params.threshold_sigmas,
    )
    root = models_root(state_dir, fleet)
    for vf, version in list_models(root):
        if vf == valid_from and version != model.version:
            retire_model(root, version, "superseded")
    save_model(model, root)
    cache.models[(fleet, model.version)] = model
    return model


def _load_or_refit(
    lake_root: Path,
    state_dir: Path,
    fleet: str,
    valid_from: date,
    version: str,
    params: AnomalyParams,
    cache: _Cache,
) -> tuple[AnomalyModel | None, str, str]:
    root = models_root(state_dir, fleet)
    if (fleet, version) in cache.models:
        cached = cache.models[(fleet, version)]
        return cached, "loaded", str(cached.metadata.get("reason", ""))
    try:
        model = load_model(root, version)
    except ModelRefusedError as exc:
        retired = retire_model(root, version, f"refused-{exc.reason}")
        refit = _fit_and_save(lake_root, state_dir, fleet, valid_from, params, exc.reason, cache)
        return refit, "refitted", f"{exc} (old model kept as retired/{retired.name})"
    if tuple(model.features) != tuple(params.model_features):
        refit = _fit_and_save(lake_root, state_dir, fleet, valid_from, params, "features", cache)
        return refit, "refitted", "the configured feature list changed"
    cache.models[(fleet, version)] = model
    return model, "loaded", str(model.metadata.get("reason", ""))


def model_for(
    lake_root: Path,
    state_dir: Path,
    fleet: str,
    day: date,
    params: AnomalyParams,
    cache: _Cache | None = None,
) -> tuple[AnomalyModel | None, ModelInfo | None]:
    """The model that scores ``day``: saved, fitted on schedule, or refitted if refused."""
    if cache is None:
        own = _Cache.for_state(state_dir)
        try:
            return model_for(lake_root, state_dir, fleet, day, params, own)
        finally:
            own.close()
    root = models_root(state_dir, fleet)
    saved = [(vf, v) for vf, v in list_models(root) if vf <= day]
    scheduled = _schedule_date(day, params.refit_days)
    if saved and saved[-1][0] >= scheduled:
        model, action, reason = _load_or_refit(
            lake_root, state_dir, fleet, *saved[-1], params, cache
        )
        return model, (_info(model, action, reason) if model else None)
    fitted = _fit_and_save(lake_root, state_dir, fleet, scheduled, params, "schedule", cache)
    if fitted is not None:
        return fitted, _info(fitted, "fitted", "schedule")
    if saved:  # not enough history in the new window: keep the last model
        model, action, reason = _load_or_refit(
            lake_root, state_dir, fleet, *saved[-1], params, cache
        )
        return model, (_info(model, action, reason) if model else None)
    return None, None


def train_anomaly_model(
    lake_root: Path,
    state_dir: Path,
    *,
    day: date | None = None,
    fleet: str | None = None,
    params: AnomalyParams | None = None,
) -> list[ModelInfo]:
    """Fit (refit) the model of each fleet on the window before ``day`` and save it.

    Parameters
    ----------
    day : date, optional
        First date the new model scores; default the day after the last analysed date.
        Trained on the ``training_days`` before it.

    Raises
    ------
    BmsError
        No analysed dates, or too little history (fewer than ``min_training_days``).
    """
    params = params or AnomalyParams()
    fleets = analysed_dates(lake_root, fleet)
    if not fleets:
        where = f" of fleet {fleet}" if fleet else ""
        raise BmsError(f"no analysed dates{where} under {lake_root / 'metrics' / 'vehicle_day'}")
    out = []
    for fl, days in fleets.items():
        vf = day or days[-1] + timedelta(days=1)
        cache = _Cache.for_state(state_dir)
        try:
            model = _fit_and_save(lake_root, state_dir, fl, vf, params, "manual", cache)
        finally:
            cache.close()
        if model is None:
            raise BmsError(
                f"fleet {fl}: fewer than {params.min_training_days} analysed days in the "
                f"{params.training_days} days before {vf.isoformat()}; cannot train"
            )
        out.append(_info(model, "fitted", "manual"))
    return out


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ScoredRows:
    """Model scores and rule hits of a batch of feature rows."""

    scores: np.ndarray  # isolation-forest score per row (NaN without a model) [-]
    above: np.ndarray  # score above the model's threshold (one day; no persistence)
    rule_hits: pa.Table  # bms rule hits (vin, cell, sensor, rule, severity, value...)


def score_feature_rows(
    model: AnomalyModel | None, features: pa.Table, params: AnomalyParams
) -> ScoredRows:
    """Score feature rows (``ANOMALY_FEATURES_SCHEMA``) with a model and the rules.

    The per-row work of ``score_anomalies`` without the I/O, the persistence window and
    the status bookkeeping (what the benchmark times on a million rows).
    """
    if model is None:
        scores = np.full(features.num_rows, np.nan)
        above = np.zeros(features.num_rows, dtype=bool)
    else:
        scores = model.score(_matrix(features, model.features))
        above = scores > model.threshold
    return ScoredRows(scores, above, evaluate_rules(features, params.rules))


def _fmt(x: float) -> str:
    return "nan" if np.isnan(x) else f"{x:.3g}"


def _unit(unit: str) -> str:
    """A value's unit with its leading space; none for unitless ("-") values."""
    return "" if unit in ("", "-") else f" {unit}"


def _rule_text(hit: Mapping[str, Any], where: str) -> str:
    """One rule hit as evidence: ``rule [cell|sensor N]: value unit (limit L)`` (the form
    ``reports._vehicle_pdf`` reads back). A rule on a magnitude (a cell's rest deviation
    or its trend, either way from the pack median) states its limit with the value's
    sign: "-2.42 mV/day (limit -2)", not "(limit 2)", which read as a value below its
    limit."""
    value, thr = float(hit["value"]), float(hit["threshold"])
    if value < 0 < thr:
        thr = -thr
    return f"{hit['rule']}{where}: {_fmt(value)}{_unit(str(hit['unit']))} (limit {_fmt(thr)})"


def _quiet_days(
    lake_root: Path,
    fleet: str,
    vin: str,
    last_flagged: date,
    day: date,
    params: AnomalyParams,
    cache: _Cache,
) -> int:
    """Observed quiet days of a flag, counted up to ``clear_days``: ``day`` (the vehicle
    has data on it) and the days after ``last_flagged`` with the vehicle's data (a feature
    row) and hence no finding. Days without its data do not count: a vehicle back from an
    outage is judged on the days it reported."""
    quiet = 1
    for d in reversed(cache.analysed_dates(lake_root, fleet).get(fleet, [])):
        if quiet >= params.clear_days or d <= last_flagged:
            break
        if d >= day:
            continue
        t = _features(lake_root, d, fleet, params, rebuild=False, cache=cache)
        if t is not None and int(pc.index(t["vin"], vin).as_py()) >= 0:
            quiet += 1
    return quiet


def _stuck_text(
    lake_root: Path,
    fleet: str,
    day: date,
    today: pa.Table,
    i: int,
    params: AnomalyParams,
    cache: _Cache,
) -> str:
    """What a stuck sensor sits at and since when, as evidence: ``sensor 2 stuck at
    24.3 degC since 2026-03-02 (stuck all day on 6 days with its data)``.

    Since: the first day of the run of days, up to ``STUCK_LOOKBACK_DAYS`` back, on which
    the vehicle's feature row found the same sensor stuck at the same value; a day
    without the vehicle's data neither extends nor ends the run ("or earlier" where the
    run reaches the look-back limit and the fleet has older dates).
    """
    vin = str(today["vin"][i].as_py())
    sensor = int(today["stuck_sensor"][i].as_py())
    value_c = today["stuck_value_c"][i].as_py()
    if value_c is None:  # no value (not expected: a stuck sensor has readings)
        return f"sensor {sensor} stuck all day"
    analysed = cache.analysed_dates(lake_root, fleet).get(fleet, [])
    oldest = day - timedelta(days=STUCK_LOOKBACK_DAYS)
    since, days = day, 1
    cut = any(d < oldest for d in analysed)
    for d in reversed([d for d in analysed if oldest <= d < day]):
        t = _features(lake_root, d, fleet, params, rebuild=False, cache=cache)
        j = -1 if t is None else int(pc.index(t["vin"], vin).as_py())
        if t is None or j < 0:
            continue  # no data that day
        if t["stuck_sensor"][j].as_py() != sensor or t["stuck_value_c"][j].as_py() != value_c:
            cut = False
            break
        since, days = d, days + 1
    earlier = " or earlier" if cut else ""
    return (
        f"sensor {sensor} stuck at {value_c:.1f} degC since {since.isoformat()}{earlier} "
        f"(stuck all day on {days} day{'s' if days > 1 else ''} with its data)"
    )


def _outside_normal(top: Mapping[str, Any]) -> bool:
    """Whether a top feature's value lies outside the fleet's normal range (a missing
    value or range is not outside)."""
    value = top["value"]
    if value is None:
        return False
    return bool(value < top["normal_low"] or value > top["normal_high"])


def _top_features(
    model: AnomalyModel, x: np.ndarray, k: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    dist = model.robust_distance(x[None, :])[0]
    dist = np.where(np.isnan(dist), -1.0, dist)
    order = sorted(range(len(model.features)), key=lambda j: (-dist[j], model.features[j]))[:k]
    out = []
    for j in order:
        name = model.features[j]
        s = model.stats[name]
        out.append(
            {
                "feature": name,
                "value": None if np.isnan(x[j]) else float(x[j]),
                "unit": FEATURE_UNITS[name],
                "normal_low": s.low,
                "normal_median": s.median,
                "normal_high": s.high,
                "distance": float(max(dist[j], 0.0)),
            }
        )
    return out, dist


def _row(table: pa.Table, i: int) -> dict[str, Any]:
    return {c: table[c][i].as_py() for c in table.column_names}


def _previous(
    lake_root: Path, fleet: str, day: date, lookback: int
) -> tuple[pa.Table | None, Path | None]:
    for k in range(1, lookback + 1):
        p = anomalies_path(lake_root, day - timedelta(days=k), fleet)
        if p.is_file():
            return pq.read_table(p, schema=ANOMALIES_SCHEMA), p
    return None, None


def _window_scores(
    lake_root: Path,
    fleet: str,
    day: date,
    days: int,
    model: AnomalyModel,
    params: AnomalyParams,
    cache: _Cache,
) -> dict[date, tuple[list[str], np.ndarray]]:
    """Scores of the ``days`` dates before ``day`` (not ``day`` itself), one batch."""
    out: dict[date, tuple[list[str], np.ndarray]] = {}
    todo: list[tuple[date, pa.Table]] = []
    for k in range(1, days):
        d = day - timedelta(days=k)
        key = (fleet, d, model.version)
        if key in cache.scores:
            out[d] = cache.scores[key]
            continue
        t = _features(lake_root, d, fleet, params, rebuild=False, cache=cache)
        if t is not None and t.num_rows:
            todo.append((d, t))
    if todo:
        x = np.vstack([_matrix(t, params.model_features) for _d, t in todo])
        s = model.score(x)
        at = 0
        for d, t in todo:
            vins = [str(v) for v in t["vin"].to_pylist()]
            out[d] = (vins, s[at : at + len(vins)])
            cache.scores[(fleet, d, model.version)] = out[d]
            at += len(vins)
    return out


def _score_fleet_day(
    lake_root: Path,
    state_dir: Path,
    day: date,
    fleet: str,
    params: AnomalyParams,
    cache: _Cache,
) -> tuple[pa.Table, ModelInfo | None, int, Path]:
    today = _features(lake_root, day, fleet, params, rebuild=True, cache=cache)
    if today is None:
        raise BmsError(f"no analytics output for {day.isoformat()} and fleet {fleet}")
    model, info = model_for(lake_root, state_dir, fleet, day, params, cache)

    # Model: score today and the persistence (and drift) window.
    vins = [str(v) for v in today["vin"].to_pylist()]
    x_today = _matrix(today, params.model_features)
    scores = np.full(len(vins), np.nan)
    model_flag = np.zeros(len(vins), dtype=bool)
    past: dict[date, tuple[list[str], np.ndarray]] = {}
    if model is not None and len(vins):
        scores = model.score(x_today)
        cache.scores[(fleet, day, model.version)] = (vins, scores)
        past = _window_scores(
            lake_root,
            fleet,
            day,
            max(params.persist_window, params.drift_days),
            model,
            params,
            cache,
        )
        hits_today = scores > model.threshold
        count = hits_today.astype(np.int64)
        pos = {v: i for i, v in enumerate(vins)}
        for k in range(1, params.persist_window):
            got = past.get(day - timedelta(days=k))
            if got is None:
                continue
            for v, hit in zip(got[0], got[1] > model.threshold, strict=True):
                if hit and v in pos:
                    count[pos[v]] += 1
        warm = np.asarray(today["window_days"].to_numpy(zero_copy_only=False))
        model_flag = hits_today & (count >= params.persist_days) & (warm >= params.min_history_days)

    rule_hits = evaluate_rules(today, params.rules)
    # Candidates keyed by (vin, cell).
    cands: dict[tuple[str, int], dict[str, Any]] = {}
    row_of = {v: i for i, v in enumerate(vins)}
    for i in np.flatnonzero(model_flag):
        assert model is not None
        top, _dist = _top_features(model, x_today[i], params.top_features)
        # the cell of the top feature if it is a cell feature (spread growth: the cell
        # furthest from the median, or the one whose SoC offset moved most), else the pack
        cell = -1
        lead = top[0]["feature"] if top else ""
        index_col = CELL_INDEX.get(lead) or _DRIFT_CELL.get(lead, "")
        if lead in _DRIFT_SOURCE and today[_DRIFT_SOURCE[lead]][i].as_py() is None:
            index_col = _DRIFT_MV_CELL[lead]
        if index_col:
            c = today[index_col][i].as_py()
            cell = int(c) if c is not None and c >= 0 else -1
        sensor = -1
        if top and top[0]["feature"] in ("sensor_jitter_excess_c", "rest_rise_c_per_h"):
            col = (
                "jitter_sensor"
                if top[0]["feature"] == "sensor_jitter_excess_c"
                else "rest_rise_sensor"
            )
            sensor = int(today[col][i].as_py() if today[col][i].as_py() is not None else -1)
        cands[(vins[i], cell)] = {
            "sensor": sensor,
            "model": True,
            "rules": [],
            "severity": WARNING,
            "top": top,
            "rule_text": [],
        }
    for r in rule_hits.to_pylist():
        key = (str(r["vin"]), int(r["cell"]))
        c = cands.setdefault(
            key,
            {
                "sensor": -1,
                "model": False,
                "rules": [],
                "severity": WARNING,
                "top": None,
                "rule_text": [],
            },
        )
        if r["rule"] not in c["rules"]:
            c["rules"].append(r["rule"])
        if r["sensor"] >= 0 and c["sensor"] < 0:
            c["sensor"] = int(r["sensor"])
        if r["severity"] == CRITICAL:
            c["severity"] = CRITICAL
        where = (
            f" sensor {r['sensor']}"
            if r["sensor"] >= 0
            else (f" cell {r['cell']}" if r["cell"] >= 0 else "")
        )
        c["rule_text"].append(_rule_text(r, where))
        if r["note"]:
            c["rule_text"].append(str(r["note"]))
        if r["rule"] == "sensor_stuck":
            c["rule_text"].append(
                _stuck_text(lake_root, fleet, day, today, row_of[key[0]], params, cache)
            )
    for key, c in cands.items():
        ci = row_of[key[0]]
        if c["top"] is None and model is not None:
            # Raised by rules only: the model features explain nothing unless they lie
            # outside the fleet's normal range; those inside it are noise beside the rule.
            ranked, _ = _top_features(model, x_today[ci], len(model.features))
            c["top"] = [t for t in ranked if _outside_normal(t)][: params.top_features]
        c["score"] = None if np.isnan(scores[ci]) else float(scores[ci])
        parts = list(c["rule_text"])
        if c["model"] and model is not None:
            parts.insert(0, f"model score {_fmt(scores[ci])} > threshold {_fmt(model.threshold)}")
        for t in c["top"] or []:
            parts.append(
                f"{t['feature']}={_fmt(t['value'] if t['value'] is not None else np.nan)}"
                f"{_unit(t['unit'])} (fleet normal {_fmt(t['normal_low'])}.."
                f"{_fmt(t['normal_high'])})"
            )
        if key[1] >= 0:
            feats = _row(today, ci)
            for f in CELL_FEATURES:
                col, unit = CELL_EVIDENCE[f.name]
                if feats.get(CELL_INDEX[f.name]) == key[1] and feats.get(col) is not None:
                    parts.append(f"cell {key[1]} {col}={_fmt(feats[col])}{_unit(unit)}")
        c["evidence"] = "; ".join(parts)

    # Status against the previous output.
    prev, prev_path = _previous(lake_root, fleet, day, params.clear_days + params.persist_window)
    prev_rows: dict[tuple[str, int], dict[str, Any]] = {}
    if prev is not None:
        for r in prev.to_pylist():
            if r["status"] != "cleared":
                prev_rows[(str(r["vin"]), int(r["cell"]))] = r
    rows = []
    version = model.version if model is not None else "rules-only"
    thr = model.threshold if model is not None else None
    for key in sorted(set(cands) | set(prev_rows)):
        c = cands.get(key)
        p = prev_rows.get(key)
        if c is not None:
            source = "both" if c["model"] and c["rules"] else ("model" if c["model"] else "rule")
            rows.append(
                {
                    "vin": key[0],
                    "cell": key[1],
                    "sensor": c["sensor"],
                    "date": day,
                    "status": "ongoing" if p is not None else "new",
                    "severity": c["severity"],
                    "source": source,
                    "score": c["score"],
                    "threshold": thr,
                    "rules": sorted(c["rules"]),
                    "top_features": c["top"] or [],
                    "evidence": c["evidence"],
                    "model_version": version,
                    "first_seen": p["first_seen"] if p is not None else day,
                    "last_flagged": day,
                }
            )
        else:
            assert p is not None
            pi = row_of.get(key[0])
            score = None if pi is None or np.isnan(scores[pi]) else float(scores[pi])
            # A vehicle without data today (offline, or its telemetry late) is not quiet:
            # its flag stays open until days with its data find it quiet long enough.
            cleared = pi is not None and (
                _quiet_days(lake_root, fleet, key[0], p["last_flagged"], day, params, cache)
                >= params.clear_days
            )
            rows.append(
                {
                    **p,
                    "date": day,
                    "score": score,
                    "threshold": thr,
                    "model_version": version,
                    "status": "cleared" if cleared else "ongoing",
                }
            )
    table = pa.Table.from_pylist(rows, schema=ANOMALIES_SCHEMA)
    path = write_parquet_atomic(table, anomalies_path(lake_root, day, fleet))
    cache.flagged[(fleet, day)] = _flagged_vins(table)
    ledger = {
        "date": day.isoformat(),
        "fleet": fleet,
        "inputs": _inputs_fingerprint(lake_root, day, fleet),
        "previous": prev_path.parent.parent.name if prev_path else None,
        "model_version": version,
        "output_sha256": _file_sha(path),
        "params": json.loads(json.dumps(dataclasses.asdict(params), default=str)),
    }
    atomic_write_bytes(
        (json.dumps(ledger, indent=2, sort_keys=True) + "\n").encode(),
        _ledger_path(state_dir, fleet, day),
    )

    # Drift: too many rows above the threshold lately -> a new model from tomorrow.
    if model is not None and (day - model.valid_from).days >= params.drift_days:
        above = int(np.count_nonzero(scores > model.threshold))
        total = len(scores)
        for k in range(1, params.drift_days):
            got = past.get(day - timedelta(days=k))
            if got is not None:
                above += int(np.count_nonzero(got[1] > model.threshold))
                total += len(got[1])
        base = max(float(model.metadata.get("training_share_above_threshold", 0.0)), 0.001)
        if total and above / total > params.drift_factor * base:
            nxt = day + timedelta(days=1)
            if not any(vf == nxt for vf, _ in list_models(models_root(state_dir, fleet))):
                _fit_and_save(lake_root, state_dir, fleet, nxt, params, "drift", cache)
    return table, info, len(vins), path


def score_anomalies(
    lake_root: Path,
    state_dir: Path,
    day: date,
    params: AnomalyParams | None = None,
    *,
    fleet: str | None = None,
) -> AnomalySummary:
    """Score one date: model and rules, flags with status, written to ``lake/anomalies``.

    Parameters
    ----------
    lake_root : Path
        Root of the lake (``data/lake``).
    state_dir : Path
        State folder (``data/state``); models live in ``models/fleet=F/``.
    day : date
        UTC event date with analytics output (``metrics/vehicle_day``).
    params : AnomalyParams, optional
    fleet : str, optional
        Only this fleet (default: every fleet analysed on ``day``).

    Returns
    -------
    AnomalySummary

    Raises
    ------
    BmsError
        No analytics output for the date (and fleet).
    """
    cache = _Cache.for_state(state_dir)
    try:
        return _score_day(lake_root, state_dir, day, params or AnomalyParams(), fleet, cache)
    finally:
        cache.close()


def _score_day(
    lake_root: Path,
    state_dir: Path,
    day: date,
    params: AnomalyParams,
    fleet: str | None,
    cache: _Cache,
) -> AnomalySummary:
    started = time.perf_counter()
    fleets = [fl for fl, days in cache.analysed_dates(lake_root, fleet).items() if day in days]
    if not fleets:
        where = f" and fleet {fleet}" if fleet else ""
        raise BmsError(
            f"no analytics output for {day.isoformat()}{where} in {lake_root / 'metrics'}; "
            "run fleetbms analyze first"
        )
    tables, infos, files = [], [], []
    vehicles = 0
    for fl in fleets:
        table, info, n, path = _score_fleet_day(lake_root, state_dir, day, fl, params, cache)
        tables.append(table)
        vehicles += n
        files.append(path)
        if info is not None:
            infos.append(info)
    allrows = pa.concat_tables(tables)
    status = allrows["status"].to_pylist()
    source = [
        s for s, st in zip(allrows["source"].to_pylist(), status, strict=True) if st != "cleared"
    ]
    return AnomalySummary(
        day=day,
        fleets=tuple(fleets),
        vehicles=vehicles,
        flagged=sum(1 for s in status if s != "cleared"),
        new=status.count("new"),
        ongoing=status.count("ongoing"),
        cleared=status.count("cleared"),
        by_source={k: source.count(k) for k in ("model", "rule", "both") if source.count(k)},
        models=tuple(infos),
        files=tuple(files),
        seconds=time.perf_counter() - started,
    )


def score_pending_anomalies(
    lake_root: Path,
    state_dir: Path,
    params: AnomalyParams | None = None,
    *,
    fleet: str | None = None,
) -> list[AnomalySummary]:
    """Catch up: score every analysed date not yet scored (or changed since), in order."""
    params = params or AnomalyParams()
    out = []
    for fl, days in pending_anomaly_dates(lake_root, state_dir, fleet=fleet).items():
        cache = _Cache.for_state(state_dir)
        # the oldest input a later date reads (bms._features.build_features windows)
        fp = params.features
        inputs_days = max(
            fp.baseline_lag_days + fp.baseline_days, fp.trend_days, fp.soh_lag_days + 7
        )
        try:
            for d in days:
                out.append(_score_day(lake_root, state_dir, d, params, fl, cache))
                cache.trim(
                    d - timedelta(days=params.training_days + params.refit_days),
                    d - timedelta(days=inputs_days),
                )
        finally:
            cache.close()
    return out


def read_anomalies(lake_root: Path, days: Iterable[date] | None = None) -> pa.Table:
    """Anomaly rows (all dates, or some) with a ``fleet`` column."""
    wanted = None if days is None else {d.isoformat() for d in days}
    parts = []
    for p in sorted((lake_root / "anomalies").glob("date=*/fleet=*/part.parquet")):
        if wanted is not None and p.parent.parent.name.removeprefix("date=") not in wanted:
            continue
        t = pq.read_table(p, schema=ANOMALIES_SCHEMA)
        parts.append(
            t.append_column(
                "fleet", pa.array([p.parent.name.removeprefix("fleet=")] * t.num_rows, pa.string())
            )
        )
    if not parts:
        return ANOMALIES_SCHEMA.append(pa.field("fleet", pa.string())).empty_table()
    return pa.concat_tables(parts)
