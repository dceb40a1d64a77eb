"""Live hard-limit alerts (telemetry contract v1, "Live hard-limit alerts").

Rules, evaluated on every stored reading (quality-flagged ones too):

=====================  ===============================================  ====================
rule                   raised when                                      cleared when
=====================  ===============================================  ====================
``cell_overvoltage``   max cell > ``cell_max_mv``                       max < limit - margin
``cell_undervoltage``  min cell < ``cell_min_mv``                       min > limit + margin
``over_temperature``   max sensor > ``temp_max_c``                      max < limit - margin
``cell_spread``        at rest and max - min cell > ``spread_max_mv``   at rest, < limit - margin
``thermal_rise``       at rest and a sensor rises faster than           rate <= half the limit
                       ``thermal_rise_c_per_min`` over >= the window
=====================  ===============================================  ====================

"At rest" is ``|current_a| < rest_c_rate * capacity_ah`` (C/20 by default).

Values the writer stores as null (sentinels such as 65535 mV, values outside int16) are
not measurements: they never raise or clear an alert, so a sentinel alone cannot raise
``cell_overvoltage``. Implausible but real numbers (4600 mV, flagged ``CELL_MV_RANGE``)
do raise alerts; the alert carries the reading's quality bits so the operator sees it.

Hysteresis: per (VIN, rule) the engine remembers whether the alert is active; a
persisting condition gives one ``raised`` event, and one ``cleared`` event once the value
is back inside the limit by the clearing margin. Readings are evaluated in event-time
order per VIN within each flush. The thermal rate compares a reading with the latest
reading of the same VIN at least ``thermal_window_s`` older (at most five windows older,
same sensor count); the recent readings it needs are kept in memory only, so for the
first window after a restart ``thermal_rise`` is not evaluated.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from bms import write_parquet_atomic

RULES = (
    "cell_overvoltage",
    "cell_undervoltage",
    "over_temperature",
    "cell_spread",
    "thermal_rise",
)

ALERT_SCHEMA = pa.schema(
    [
        pa.field("alert_id", pa.string(), nullable=False),
        pa.field("vin", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("event", pa.string(), nullable=False),
        pa.field("threshold", pa.float64(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("unit", pa.string(), nullable=False),
        pa.field("index", pa.int16()),
        pa.field("index_kind", pa.string()),
        pa.field("chemistry", pa.string(), nullable=False),
        pa.field("quality", pa.int32(), nullable=False),
        pa.field("received_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("worker", pa.string(), nullable=False),
    ],
    metadata={b"fleetbms.table": b"alerts", b"fleetbms.version": b"1"},
)


@dataclass(frozen=True)
class AlertProfile:
    """Hard limits of one chemistry (same fields as ``pipeline`` ``AlertLimits``)."""

    cell_max_mv: int = 4250  # [mV]
    cell_min_mv: int = 2800  # [mV]
    temp_max_c: float = 60.0  # [degC]
    spread_max_mv: int = 100  # [mV]
    rest_c_rate: float = 0.05  # [1/h]
    thermal_rise_c_per_min: float = 1.0  # [degC/min]
    clear_margin_mv: int = 20  # [mV]
    clear_margin_c: float = 3.0  # [degC]


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One raised or cleared alert."""

    vin: str
    fleet: str
    rule: str
    event: str  # "raised" or "cleared"
    threshold: float
    value: float
    unit: str
    index: int | None  # cell or sensor index, 0-based
    index_kind: str | None  # "cell" or "sensor"
    seq: int
    ts_ms: int
    quality: int
    chemistry: str
    received_at_ms: int

    @property
    def alert_id(self) -> str:
        """Deterministic id: the same reading and rule give the same id."""
        return f"{self.vin}-{self.seq}-{self.rule}-{self.event}"

    def payload(self, worker: str) -> bytes:
        """JSON published on ``fleet/{fleet}/{vin}/alert``."""
        ts = datetime.fromtimestamp(self.ts_ms / 1000, tz=UTC)
        return msgspec.json.encode(
            {
                "v": 1,
                "alert_id": self.alert_id,
                "vin": self.vin,
                "fleet": self.fleet,
                "rule": self.rule,
                "event": self.event,
                "threshold": self.threshold,
                "value": round(self.value, 3),
                "unit": self.unit,
                "index": self.index,
                "index_kind": self.index_kind,
                "seq": self.seq,
                "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "quality": self.quality,
                "chemistry": self.chemistry,
                "worker": worker,
            }
        )


def _floats(col: pa.ChunkedArray | pa.Array) -> npt.NDArray[np.float64]:
    """Column as float64 with NaN for nulls."""
    arr = pc.fill_null(pc.cast(col, pa.float64()), float("nan"))
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)


def _list_values(
    col: pa.ChunkedArray,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Flat values (NaN for null) and offsets of a list column."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = np.asarray(arr.offsets.to_numpy(), dtype=np.int64)
    values = _floats(arr.values)
    return values, offsets


def thermal_rates_c_per_min(
    group: npt.NDArray[np.int64],
    ts_ms: npt.NDArray[np.int64],
    temps_c: npt.NDArray[np.float64],
    offsets: npt.NDArray[np.int64],
    *,
    window_ms: int,
    max_gap_ms: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Fastest sensor temperature rise of each row against an earlier row of its group.

    Parameters
    ----------
    group : array of int
        Group (vehicle) code per row.
    ts_ms : array of int
        Event time per row. [ms]
    temps_c, offsets : arrays
        Sensor temperatures of all rows concatenated (NaN = no value) and the
        ``len(rows) + 1`` list offsets. [degC]
    window_ms : int
        The reference row is the latest one of the same group at least this much
        older. [ms]
    max_gap_ms : int
        References older than this give no rate. [ms]

    Returns
    -------
    rate, sensor : arrays
        :math:`\\max_k (T_k(t) - T_k(t_{ref})) / (t - t_{ref})` per row [degC/min]
        and the sensor index ``k`` of that maximum; NaN and -1 where there is no
        reference with the same sensor count.
    """
    n = len(ts_ms)
    rate = np.full(n, np.nan)
    sensor = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return rate, sensor
    order = np.lexsort((ts_ms, group))
    g = group[order]
    t = ts_ms[order]
    key = g.astype(np.int64) * (1 << 41) + (t - t.min())
    j = np.searchsorted(key, key - window_ms, side="right") - 1
    jc = np.maximum(j, 0)
    n_t = np.diff(offsets)
    n_sorted = n_t[order]
    ok = (j >= 0) & (g[jc] == g) & (t - t[jc] <= max_gap_ms) & (n_sorted[jc] == n_sorted)
    ok &= n_sorted > 0
    for length in np.unique(n_sorted[ok]):
        pos = np.nonzero(ok & (n_sorted == length))[0]
        rows = order[pos]
        refs = order[jc[pos]]
        cols = np.arange(length)
        now = temps_c[offsets[rows][:, None] + cols[None, :]]
        ref = temps_c[offsets[refs][:, None] + cols[None, :]]
        dt_min = (ts_ms[rows] - ts_ms[refs]) / 60_000.0
        r = (now - ref) / dt_min[:, None]
        r = np.where(np.isnan(r), -np.inf, r)
        k = r.argmax(axis=1)
        best = r[np.arange(len(rows)), k]
        has = np.isfinite(best)
        rate[rows] = np.where(has, best, np.nan)
        sensor[rows] = np.where(has, k, -1)
    return rate, sensor


@dataclass
class _Tail:
    """Recent readings per VIN kept for the thermal rate across flushes."""

    vin: npt.NDArray[np.object_]
    ts_ms: npt.NDArray[np.int64]
    temps_c: npt.NDArray[np.float64]
    offsets: npt.NDArray[np.int64]


def _empty_tail() -> _Tail:
    return _Tail(
        np.empty(0, dtype=object),
        np.empty(0, dtype=np.int64),
        np.empty(0, dtype=np.float64),
        np.zeros(1, dtype=np.int64),
    )


def _take_lists(
    values: npt.NDArray[np.float64], offsets: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    lengths = offsets[rows + 1] - offsets[rows]
    new_off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    idx = np.repeat(offsets[rows] - new_off[:-1], lengths) + np.arange(new_off[-1])
    return values[idx], new_off


class AlertEngine:
    """Evaluates the hard-limit rules on flushed readings, with hysteresis.

    Parameters
    ----------
    profiles : mapping
        Chemistry (``nmc``, ``lfp``) to its ``AlertProfile``.
    default_chemistry : str
        Profile of VINs the registry does not know.
    default_capacity_ah : float
        Pack capacity for the rest threshold when the registry does not know it. [Ah]
    vehicles : mapping, optional
        VIN to ``(chemistry, capacity_ah)`` from the registry.
    thermal_window_s : float
        Shortest time over which a thermal rate is measured. [s]
    active : set, optional
        ``(vin, rule)`` pairs already active (from the state file).
    """

    def __init__(
        self,
        profiles: Mapping[str, AlertProfile],
        *,
        default_chemistry: str,
        default_capacity_ah: float,
        vehicles: Mapping[str, tuple[str, float]] | None = None,
        thermal_window_s: float = 60.0,
        active: set[tuple[str, str]] | None = None,
    ) -> None:
        if default_chemistry not in profiles:
            valid = ", ".join(sorted(profiles))
            raise ValueError(f"unknown default chemistry {default_chemistry!r}; valid: {valid}")
        if thermal_window_s <= 0:
            raise ValueError(f"thermal_window_s must be > 0, got {thermal_window_s}")
        self.profiles = dict(profiles)
        self.default_chemistry = default_chemistry
        self.default_capacity_ah = default_capacity_ah
        self.vehicles = dict(vehicles or {})
        self.window_ms = int(thermal_window_s * 1000)
        self.max_gap_ms = 5 * self.window_ms
        self.active: set[tuple[str, str]] = set(active or ())
        self._tail = _empty_tail()

    def _vehicle(self, vin: str) -> tuple[str, AlertProfile, float]:
        chem, cap = self.vehicles.get(vin, (self.default_chemistry, self.default_capacity_ah))
        if chem not in self.profiles:
            chem = self.default_chemistry
        if not cap or cap <= 0 or np.isnan(cap):
            cap = self.default_capacity_ah
        return chem, self.profiles[chem], cap

    def _thermal(
        self,
        vin: npt.NDArray[np.object_],
        ts_ms: npt.NDArray[np.int64],
        temps_c: npt.NDArray[np.float64],
        offsets: npt.NDArray[np.int64],
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        tail = self._tail
        n_tail = len(tail.ts_ms)
        all_vin = np.concatenate([tail.vin, vin])
        all_ts = np.concatenate([tail.ts_ms, ts_ms])
        all_temps = np.concatenate([tail.temps_c, temps_c])
        all_off = np.concatenate([tail.offsets[:-1], offsets + tail.offsets[-1]])
        enc = pa.array(all_vin, pa.string()).dictionary_encode()
        group = np.asarray(enc.indices.to_numpy(), dtype=np.int64)
        rate, sensor = thermal_rates_c_per_min(
            group, all_ts, all_temps, all_off, window_ms=self.window_ms, max_gap_ms=self.max_gap_ms
        )
        newest = np.full(len(enc.dictionary), np.iinfo(np.int64).min)
        np.maximum.at(newest, group, all_ts)
        keep = np.nonzero(all_ts >= newest[group] - self.max_gap_ms)[0]
        kept_temps, kept_off = _take_lists(all_temps, all_off, keep)
        self._tail = _Tail(all_vin[keep], all_ts[keep], kept_temps, kept_off)
        return rate[n_tail:], sensor[n_tail:]

    def evaluate(self, table: pa.Table, *, commit: bool = True) -> list[AlertEvent]:
        """Alerts raised or cleared by the readings of ``table`` (telemetry + ``fleet``).

        The engine's state (active alerts, recent readings for the thermal rate) changes
        only when this returns and ``commit`` is true: a call that raises, or a trial
        (``commit=False``), leaves it as it was, so the same readings, or some of them,
        can be evaluated again.
        """
        active, tail = set(self.active), self._tail
        done = False
        try:
            events = self._evaluate(table)
            done = commit
        finally:
            if not done:
                self.active, self._tail = active, tail
        return events

    def _evaluate(self, table: pa.Table) -> list[AlertEvent]:
        n = table.num_rows
        if n == 0:
            return []
        vin = np.asarray(table["vin"].to_numpy(zero_copy_only=False), dtype=object)
        fleet = np.asarray(table["fleet"].to_numpy(zero_copy_only=False), dtype=object)
        seq = np.asarray(table["seq"].to_numpy(), dtype=np.int64)
        ts = np.asarray(pc.cast(table["ts"], pa.int64()).to_numpy(), dtype=np.int64)
        recv = np.asarray(pc.cast(table["received_at"], pa.int64()).to_numpy(), dtype=np.int64)
        quality = np.asarray(table["quality"].to_numpy(), dtype=np.int64)
        cur = _floats(table["current_a"])
        vmax, vmin = _floats(table["cell_mv_max"]), _floats(table["cell_mv_min"])
        vmax_i, vmin_i = _floats(table["cell_max_idx"]), _floats(table["cell_min_idx"])
        tmax = _floats(table["temp_c_max"])
        temps_dc, t_off = _list_values(table["temp_dc"])
        temps_c = temps_dc / 10.0
        rate, rate_k = self._thermal(vin, ts, temps_c, t_off)

        enc = pa.array(vin, pa.string()).dictionary_encode()
        code = np.asarray(enc.indices.to_numpy(), dtype=np.int64)
        names = enc.dictionary.to_pylist()
        vehicles = [self._vehicle(v) for v in names]
        prm = {
            f: np.array([float(getattr(p, f)) for _, p, _ in vehicles])[code]
            for f in AlertProfile.__dataclass_fields__
        }
        cap = np.array([c for _, _, c in vehicles])[code]
        rest = np.abs(cur) < prm["rest_c_rate"] * cap
        spread = vmax - vmin
        with np.errstate(invalid="ignore"):
            raise_ = {
                "cell_overvoltage": vmax > prm["cell_max_mv"],
                "cell_undervoltage": vmin < prm["cell_min_mv"],
                "over_temperature": tmax > prm["temp_max_c"],
                "cell_spread": rest & (spread > prm["spread_max_mv"]),
                "thermal_rise": rest & (rate > prm["thermal_rise_c_per_min"]),
            }
            clear = {
                "cell_overvoltage": vmax < prm["cell_max_mv"] - prm["clear_margin_mv"],
                "cell_undervoltage": vmin > prm["cell_min_mv"] + prm["clear_margin_mv"],
                "over_temperature": tmax < prm["temp_max_c"] - prm["clear_margin_c"],
                "cell_spread": rest & (spread < prm["spread_max_mv"] - prm["clear_margin_mv"]),
                "thermal_rise": rate <= 0.5 * prm["thermal_rise_c_per_min"],
            }
        # Rows of VINs that raise something here or have an active alert go through the
        # hysteresis state machine in event-time order; all other rows are quiet.
        hit = np.zeros(n, dtype=bool)
        for mask in raise_.values():
            hit |= mask
        candidate_vin = np.zeros(len(names), dtype=bool)
        candidate_vin[np.unique(code[hit])] = True
        if self.active:
            active_vins = {v for v, _ in self.active}
            candidate_vin |= np.array([v in active_vins for v in names])
        rows = np.nonzero(candidate_vin[code])[0]
        if len(rows) == 0:
            return []
        rows = rows[np.lexsort((seq[rows], ts[rows], code[rows]))]
        thr = {
            "cell_overvoltage": prm["cell_max_mv"],
            "cell_undervoltage": prm["cell_min_mv"],
            "over_temperature": prm["temp_max_c"],
            "cell_spread": prm["spread_max_mv"],
            "thermal_rise": prm["thermal_rise_c_per_min"],
        }

        def measured(rule: str, i: int) -> tuple[float, str, int | None, str | None]:
            if rule == "cell_overvoltage":
                return vmax[i], "mV", int(vmax_i[i]), "cell"
            if rule == "cell_undervoltage":
                return vmin[i], "mV", int(vmin_i[i]), "cell"
            if rule == "cell_spread":
                return spread[i], "mV", int(vmin_i[i]), "cell"
            if rule == "thermal_rise":
                k = int(rate_k[i])
                return rate[i], "degC/min", (k if k >= 0 else None), "sensor"
            seg = temps_dc[t_off[i] : t_off[i + 1]]
            k = int(np.argmax(np.where(np.isnan(seg), -np.inf, seg)))
            return tmax[i], "degC", k, "sensor"

        events: list[AlertEvent] = []
        for i in rows.tolist():
            v = vin[i]
            for rule in RULES:
                key = (v, rule)
                is_active = key in self.active
                if not is_active and raise_[rule][i]:
                    self.active.add(key)
                    kind = "raised"
                elif is_active and clear[rule][i]:
                    self.active.discard(key)
                    kind = "cleared"
                else:
                    continue
                value, unit, index, index_kind = measured(rule, i)
                events.append(
                    AlertEvent(
                        vin=v,
                        fleet=fleet[i],
                        rule=rule,
                        event=kind,
                        threshold=float(thr[rule][i]),
                        value=float(value),
                        unit=unit,
                        index=index,
                        index_kind=index_kind,
                        seq=int(seq[i]),
                        ts_ms=int(ts[i]),
                        quality=int(quality[i]),
                        chemistry=vehicles[code[i]][0],
                        received_at_ms=int(recv[i]),
                    )
                )
        return events


def vehicles_from_registry(lake_dir: Path) -> dict[str, tuple[str, float]]:
    """VIN to ``(chemistry, capacity_ah)`` from ``lake/registry/vehicles.parquet``.

    An absent registry gives an empty mapping (every VIN uses the default profile).

    Raises
    ------
    ValueError
        The registry exists but lacks the ``vin``/``chemistry``/``capacity_ah`` columns.
    """
    import pyarrow.parquet as pq

    path = lake_dir / "registry" / "vehicles.parquet"
    if not path.exists():
        return {}
    table = pq.read_table(path)
    missing = {"vin", "chemistry", "capacity_ah"} - set(table.column_names)
    if missing:
        raise ValueError(f"registry {path} lacks columns {sorted(missing)}")
    return {
        str(v): (str(c).lower(), float(a) if a is not None else float("nan"))
        for v, c, a in zip(
            table["vin"].to_pylist(),
            table["chemistry"].to_pylist(),
            table["capacity_ah"].to_pylist(),
            strict=True,
        )
    }


def alerts_table(events: list[AlertEvent], worker: str) -> pa.Table:
    """``ALERT_SCHEMA`` rows of ``events`` plus a leading ``fleet`` column."""
    cols = {
        "fleet": [e.fleet for e in events],
        "alert_id": [e.alert_id for e in events],
        "vin": [e.vin for e in events],
        "seq": [e.seq for e in events],
        "ts": [e.ts_ms for e in events],
        "rule": [e.rule for e in events],
        "event": [e.event for e in events],
        "threshold": [e.threshold for e in events],
        "value": [e.value for e in events],
        "unit": [e.unit for e in events],
        "index": [e.index for e in events],
        "index_kind": [e.index_kind for e in events],
        "chemistry": [e.chemistry for e in events],
        "quality": [e.quality for e in events],
        "received_at": [e.received_at_ms for e in events],
        "worker": [worker] * len(events),
    }
    schema = pa.schema([pa.field("fleet", pa.string(), nullable=False), *ALERT_SCHEMA])
    return pa.Table.from_pydict(cols, schema=schema)


def write_alerts(
    events: list[AlertEvent], lake_dir: Path, worker: str, token: str | None = None
) -> list[Path]:
    """Write ``events`` under ``alerts/date=<event date>/fleet=<fleet>/`` durably.

    ``token`` names the files (``<worker>-<token>.parquet``, random without): writing
    again with the same token replaces the partitions already written, so a retry after
    a later partition failed adds no copies."""
    if not events:
        return []
    table = alerts_table(events, worker)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, e in enumerate(events):
        day = datetime.fromtimestamp(e.ts_ms / 1000, tz=UTC).date().isoformat()
        groups.setdefault((day, e.fleet), []).append(i)
    body = table.drop_columns(["fleet"]).replace_schema_metadata(ALERT_SCHEMA.metadata)
    paths = []
    for (day, fleet), idx in sorted(groups.items()):
        part = body.take(pa.array(idx))
        name = f"{worker}-{token or uuid.uuid4().hex[:12]}.parquet"
        path = lake_dir / "alerts" / f"date={day}" / f"fleet={fleet}" / name
        paths.append(write_parquet_atomic(part, path))
    return paths
