"""Hand-built telemetry with known capacity and resistance for the analytics tests.

A small, deterministic day plan per vehicle (UTC): rest overnight, drive 07:00-08:00,
park 08:00-17:00, drive 17:00-18:00, rest, charge from 19:00 back to the target, rest.
Cells: OCV(SoC) of ``bms.ocv_v_from_soc_pct`` + I x R (LFP: +-10 mV hysteresis on
the branch of the last current direction); current steps happen 17 s after
a sample so that interval integration has to cope with steps between readings.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import bms


@dataclass(frozen=True)
class SynthVehicle:
    vin: str
    chemistry: str = "nmc"
    rated_ah: float = 100.0
    capacity_ah: float = 95.0  # true capacity [Ah]
    cell_r_mohm: float = 1.0  # per cell at 25 degC [mOhm]
    n_cells: int = 14
    offset_a: float = 0.05  # current-sensor offset [A]
    temp_c: float = 25.0
    weak_cell: int = -1  # this cell has 3x resistance and leaks
    # (cell, its capacity over the others'): a smaller cell, all balanced when full
    small_cell: tuple[int, float] | None = None
    drive_temps_c: tuple[float, ...] | None = None  # the sensors while driving [degC]
    in_service: date = date(2026, 1, 1)
    erratic_sensor_c: float = 0.0  # the last sensor's noise, one sigma [degC]
    # (cell, value [mV]): a broken sense wire, the cell reads this value throughout
    bad_cell_mv: tuple[int, int] | None = None
    # (start hour, end hour, current in C) of each day, if not the chemistry's _plan
    plan: tuple[tuple[float, float, float], ...] | None = None
    # LFP: the hysteresis flips gradually, by 1 - 1/e per this share of capacity moved
    # (one-state model, Plett 2015 ch. 2); None: at once
    hysteresis_efold: float | None = None


def _plan(v: SynthVehicle) -> list[tuple[float, float, float]]:
    """(start hour, end hour, current in C) of a day; rests are the gaps."""
    if v.plan is not None:
        return list(v.plan)
    if v.chemistry == "lfp":
        # LFP: from full (rest at ~100 %) down to ~8 % and back to full.
        return [(7.0, 8.0, -0.5), (9.0, 10.0, -0.42), (17.0, 21.5, 0.2)]
    return [(7.0, 8.0, -0.5), (17.0, 18.0, -0.3), (19.0, 23.0, 0.2)]


def _gradual_branch(v: SynthVehicle, t_s: np.ndarray, efold: float) -> np.ndarray:
    """The hysteresis state at the sample times ``t_s`` [s] of a day: it moves towards
    the sign of each segment's current by 1 - 1/e per ``efold`` of capacity, from the
    branch of the plan's last segment (the day before ends on it, flipped)."""
    h = float(np.sign(_plan(v)[-1][2]))
    out = np.full(t_s.shape, h)
    for start_h, end_h, c in sorted(_plan(v)):
        a, b = int(start_h * 3600) + 17, int(end_h * 3600) + 17
        s = float(np.sign(c))
        inside = (t_s >= a) & (t_s < b)
        out[inside] = s + (h - s) * np.exp(-abs(c) * (t_s[inside] - a) / 3600 / efold)
        h = s + (h - s) * math.exp(-abs(c) * (b - a) / 3600 / efold)
        out[t_s >= b] = h
    return out


def vehicle_day_table(
    v: SynthVehicle, day: date, soc0: float, *, cadence_s: int, fleet: str, seq0: int
) -> tuple[pa.Table, float]:
    """One day of readings for ``v`` starting at SoC ``soc0`` (0..1); returns the table
    and the SoC at the end of the day."""
    t0 = datetime(day.year, day.month, day.day, tzinfo=UTC)
    n = 86_400 // cadence_s
    t_s = np.arange(n) * cadence_s
    # True current on a 1 s grid, steps 17 s after the plan's hour marks.
    cur_1s = np.zeros(86_400)
    for start_h, end_h, c in _plan(v):
        a = int(start_h * 3600) + 17
        b = int(end_h * 3600) + 17
        cur_1s[a:b] = c * v.capacity_ah
    soc_1s = soc0 + np.cumsum(cur_1s) / 3600 / v.capacity_ah
    soc_1s = np.clip(soc_1s, 0.0, 1.0)
    cur = cur_1s[t_s]
    soc = soc_1s[t_s]
    ocv = bms.ocv_v_from_soc_pct(soc * 100, v.chemistry)
    r_cell = np.full(v.n_cells, v.cell_r_mohm / 1000)
    if v.weak_cell >= 0:
        r_cell[v.weak_cell] *= 3.0
    cell_v = ocv[:, None] + cur[:, None] * r_cell[None, :]
    if v.small_cell is not None:
        # the same charge moves a smaller cell's SoC further: 1 - (1 - soc) / f
        cell, f = v.small_cell
        small_soc = np.clip(1.0 - (1.0 - soc) / f, 0.0, 1.0)
        cell_v[:, cell] += bms.ocv_v_from_soc_pct(small_soc * 100, v.chemistry) - ocv
    if v.chemistry == "lfp":
        # OCV hysteresis: +-10 mV on the branch of the last current direction (before
        # the day's first current, that of the plan's last segment: the day before).
        last = np.sign(cur)
        idx = np.maximum.accumulate(np.where(last != 0, np.arange(n), 0))
        branch = np.where(last[idx] != 0, last[idx], np.sign(_plan(v)[-1][2]))
        if v.hysteresis_efold is not None:
            branch = _gradual_branch(v, t_s, v.hysteresis_efold)
        cell_v += 0.010 * branch[:, None]
    if v.weak_cell >= 0:
        # A leaking cell: 2 mV lower per day of age, whatever the load.
        age_d = (day - v.in_service).days
        cell_v[:, v.weak_cell] -= 0.002 * (age_d + t_s / 86_400)
    cell_mv = np.round(cell_v * 1000).astype(np.int64)
    if v.bad_cell_mv is not None:
        cell_mv[:, v.bad_cell_mv[0]] = v.bad_cell_mv[1]
    pack_v = cell_v.sum(axis=1)
    n_temps = n_temps_of(v)
    temps = np.full((n, n_temps), v.temp_c)
    if v.drive_temps_c is not None:
        temps[cur < 0] = v.drive_temps_c
    if v.erratic_sensor_c > 0:
        noise = np.random.default_rng(zlib.crc32(f"{v.vin}{day}".encode()))
        temps[:, -1] += np.round(v.erratic_sensor_c * noise.standard_normal(n), 1)
    mode = np.where(cur > 0, "ac_charge", np.where(cur < 0, "drive", "idle"))
    odo = (
        1000.0
        + (day - v.in_service).days * 60
        + np.cumsum(np.where(cur < 0, 1, 0)) * (cadence_s / 3600 * 30)
    )
    table = bms.telemetry_table(
        fleet=fleet,
        vin=np.full(n, v.vin, dtype=object),
        seq=seq0 + np.arange(n),
        ts_ms=(t0.timestamp() * 1000 + t_s * 1000).astype(np.int64),
        current_a=cur + v.offset_a,
        voltage_v=pack_v,
        soc_pct=soc * 100,
        soh_pct=np.full(n, 97.0),
        cycle_count=np.full(n, 10),
        odometer_km=odo,
        mode=mode.astype(object),
        cell_mv=cell_mv.ravel(),
        cell_offsets=np.arange(n + 1) * v.n_cells,
        temp_c=temps.ravel(),
        temp_offsets=np.arange(n + 1) * n_temps,
        received_at_ms=(t0.timestamp() * 1000 + t_s * 1000 + 500).astype(np.int64),
        worker="synth",
    )
    return table, float(soc_1s[-1])


def write_fleet(
    lake_root: Path,
    vehicles: list[SynthVehicle],
    start: date,
    days: int,
    *,
    cadence_s: int = 300,
    fleet: str = "demo",
) -> None:
    """Write ``days`` days of every vehicle, and the registry."""
    for v in vehicles:
        soc = 0.9 if v.chemistry == "nmc" else 1.0
        for i in range(days):
            day = start + timedelta(days=i)
            table, soc = vehicle_day_table(
                v, day, soc, cadence_s=cadence_s, fleet=fleet, seq0=i * 1_000_000
            )
            bms.write_telemetry(table, lake_root, file_prefix="synth")
    write_registry(lake_root, vehicles, fleet=fleet)


def n_temps_of(v: SynthVehicle) -> int:
    """Temperature sensors of the synthetic pack."""
    return 2 if v.drive_temps_c is None else len(v.drive_temps_c)


def write_registry(lake_root: Path, vehicles: list[SynthVehicle], *, fleet: str = "demo") -> None:
    reg = pa.table(
        {
            "vin": [v.vin for v in vehicles],
            "fleet": [fleet] * len(vehicles),
            "chemistry": [v.chemistry for v in vehicles],
            "capacity_ah": [v.rated_ah for v in vehicles],
            "n_cells": pa.array([v.n_cells for v in vehicles], pa.int16()),
            "n_temps": pa.array([n_temps_of(v) for v in vehicles], pa.int16()),
            "vehicle_class": ["car"] * len(vehicles),
            "in_service_date": pa.array([v.in_service for v in vehicles], pa.date32()),
            "warranty_policy": [""] * len(vehicles),
        }
    )
    path = lake_root / "registry" / "vehicles.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(reg, path)
