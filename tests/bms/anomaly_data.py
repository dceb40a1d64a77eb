"""Small synthetic analytics outputs (metrics tables in their documented layout) for the
anomaly machinery's unit tests: fast, and with a fault whose start and end we choose."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

import bms

FLEET = "unit"
START = date(2026, 1, 1)


@dataclass(frozen=True)
class Short:
    """A soft short on one cell between two day indices: its rest deviation drains."""

    vehicle: int
    cell: int
    start: int
    stop: int  # day index the leak stops (cell repaired)
    mv_per_day: float = 6.0


def vin(i: int) -> str:
    return f"UNT0000000T{i:06d}"


def make_metrics_lake(
    data_dir: Path,
    *,
    vehicles: int = 30,
    days: int = 60,
    cells: int = 14,
    shorts: tuple[Short, ...] = (),
    seed: int = 0,
) -> Path:
    """Write registry and metrics/{vehicle_day,cell_day,vehicle_soh}; return the lake root."""
    lake = data_dir / "lake"
    rng = np.random.default_rng(seed)
    vins = [vin(i) for i in range(vehicles)]
    chem = ["nmc" if i % 3 else "lfp" for i in range(vehicles)]
    bms.write_parquet_atomic(
        pa.table(
            {
                "vin": vins,
                "fleet": [FLEET] * vehicles,
                "chemistry": chem,
                "capacity_ah": [100.0] * vehicles,
                "n_cells": pa.array([cells] * vehicles, pa.int16()),
            }
        ),
        lake / "registry" / "vehicles.parquet",
    )
    offset = np.zeros((vehicles, cells))
    base_temp = rng.uniform(28, 34, vehicles)
    for d in range(days):
        day = START + timedelta(days=d)
        sd = rng.normal(0.0, 0.15, (vehicles, cells))
        for s in shorts:
            if s.start <= d < s.stop:
                sd[s.vehicle, s.cell] -= s.mv_per_day
                offset[s.vehicle, s.cell] -= s.mv_per_day
            elif d >= s.stop:
                offset[s.vehicle, s.cell] *= 0.5  # rebalanced after repair
        rest = offset + rng.normal(0.0, 1.0, (vehicles, cells))
        part = f"date={day.isoformat()}/fleet={FLEET}/part.parquet"
        bms.write_parquet_atomic(
            pa.table(
                {
                    "vin": np.repeat(vins, cells),
                    "cell": pa.array(np.tile(np.arange(cells), vehicles), pa.int16()),
                    "n_cells": pa.array(np.full(vehicles * cells, cells), pa.int16()),
                    "rest_dev_mv": rest.ravel(),
                    "n_rest": np.full(vehicles * cells, 2),
                    "self_discharge_mv_per_day": sd.ravel(),
                    "self_discharge_hours": np.full(vehicles * cells, 8.0),
                    "sag_mv": rng.normal(0.0, 1.0, vehicles * cells),
                    "n_load": np.full(vehicles * cells, 50),
                    "resistance_dev_pct": rng.normal(0.0, 2.0, vehicles * cells),
                    "n_steps": np.full(vehicles * cells, 3),
                    "temp_dev_c": rng.normal(0.0, 0.2, vehicles * cells),
                    "min_cell_share": rng.uniform(0.0, 2.0 / cells, vehicles * cells),
                }
            ),
            lake / "metrics" / "cell_day" / part,
        )
        tmax = base_temp + rng.normal(0, 1.0, vehicles)
        bms.write_parquet_atomic(
            pa.table(
                {
                    "vin": vins,
                    "chemistry": chem,
                    "temp_c_max": tmax,
                    "temp_c_min": tmax - rng.uniform(5, 9, vehicles),
                    "dc_fast_share": rng.uniform(0, 0.3, vehicles),
                    "hours_soc_above_90": rng.uniform(0, 3, vehicles),
                    "hours_temp_above_45c": np.zeros(vehicles),
                }
            ),
            lake / "metrics" / "vehicle_day" / part,
        )
        bms.write_parquet_atomic(
            pa.table(
                {
                    "vin": vins,
                    "soh_pct": 98.0 - 0.005 * d + rng.normal(0, 0.05, vehicles),
                    "resistance_growth_pct": 1.0 + 0.01 * d + rng.normal(0, 0.05, vehicles),
                }
            ),
            lake / "metrics" / "vehicle_soh" / part,
        )
    return lake


def write_sensor_readings(
    lake: Path, vin: str, day: date, temps_c: np.ndarray, *, cadence_s: int = 300
) -> None:
    """Write one day of telemetry of one vehicle of ``FLEET`` parked all day: readings
    every ``cadence_s`` from midnight UTC, ``temps_c`` of shape (readings, sensors)
    [degC], 14 cells at 3,700 mV. The anomaly features read their temperature-sensor
    figures from telemetry; the metrics tables of ``make_metrics_lake`` stay as they are.
    """
    n, sensors = temps_c.shape
    t0_ms = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    seq = np.arange(n) + (day - START).days * 100_000
    ts_ms = t0_ms + np.arange(n) * cadence_s * 1000
    table = bms.telemetry_table(
        fleet=FLEET,
        vin=np.full(n, vin, dtype=object),
        seq=seq,
        ts_ms=ts_ms,
        current_a=np.zeros(n),
        voltage_v=np.full(n, 51.8),
        soc_pct=np.full(n, 60.0),
        soh_pct=np.full(n, 97.0),
        cycle_count=np.full(n, 10),
        odometer_km=np.full(n, 1000.0),
        mode=np.full(n, "idle", dtype=object),
        cell_mv=np.full(n * 14, 3700),
        cell_offsets=np.arange(n + 1) * 14,
        temp_c=temps_c.ravel(),
        temp_offsets=np.arange(n + 1) * sensors,
        received_at_ms=ts_ms + 500,
        worker="w",
    )
    bms.write_telemetry(table, lake, file_prefix=f"sensors-{vin}")
