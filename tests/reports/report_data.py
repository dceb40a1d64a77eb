"""A small lake of metrics for the report tests, in the analytics stage's own schemas.

``bms.METRICS_SCHEMAS`` defines the metrics tables, so a schema change in the analytics
stage shows up here. The values are chosen to cover every verdict: one vehicle
claim-eligible, one at risk, one ok, one without estimates; a new anomaly on a cell, a
data gap. The anomaly table follows the columns documented in ``reports._inputs``.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import bms

FLEET = "demo"
DAY = date(2026, 11, 24)
N_DAYS = 12
N_CELLS = 14
IN_SERVICE = date(2022, 11, 24)
#: vin -> (status, soh now, projected at end, anomalies)
VEHICLES = {
    "MAT612345NEX00001": ("claim_eligible", 68.4, 61.2),
    "MAT612345NEX00002": ("at_risk", 74.9, 68.3),
    "MAT612345NEX00003": ("ok", 93.1, 85.7),
    "MAT612345NEX00004": ("insufficient_data", math.nan, math.nan),
}
FLAGGED_VIN = "MAT612345NEX00003"
FLAGGED_CELL = 5
GAP_VIN = "MAT612345NEX00002"


def _write(table: pa.Table, lake: Path, name: str, day: date, fleet: str = FLEET) -> None:
    path = lake / name / f"date={day.isoformat()}" / f"fleet={fleet}" / "part.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _age(day: date) -> float:
    return ((day - IN_SERVICE).days + 1) / 365.25


def make_lake(data_dir: Path, *, day: date = DAY, n_days: int = N_DAYS) -> Path:
    """Write registry, metrics and anomalies of ``n_days`` ending ``day``; return the lake."""
    lake = data_dir / "lake"
    vins = list(VEHICLES)
    reg = pa.table(
        {
            "vin": vins,
            "fleet": [FLEET] * len(vins),
            "chemistry": ["nmc", "nmc", "lfp", "nmc"],
            "capacity_ah": [100.0] * len(vins),
            "n_cells": pa.array([N_CELLS] * len(vins), pa.int16()),
            "n_temps": pa.array([4] * len(vins), pa.int16()),
            "vehicle_class": ["car"] * len(vins),
            "in_service_date": pa.array([IN_SERVICE] * len(vins), pa.date32()),
            "warranty_policy": [""] * len(vins),
        }
    )
    (lake / "registry").mkdir(parents=True, exist_ok=True)
    pq.write_table(reg, lake / "registry" / "vehicles.parquet")
    policy = bms.load_warranty_policy("oem-8y-160k-70")
    rng = np.random.default_rng(7)
    for k in range(n_days):
        d = day - timedelta(days=n_days - 1 - k)
        age = _age(d)
        soh_rows, war_rows, vd_rows, cell_rows, cap_rows = [], [], [], [], []
        for i, (vin, (status, soh, proj)) in enumerate(VEHICLES.items()):
            drift = (n_days - 1 - k) * 0.01
            s = soh + drift
            odo = 60_000.0 + 1000 * i + 50 * k
            soh_rows.append(
                {
                    "vin": vin,
                    "chemistry": "nmc",
                    "has_data_today": True,
                    "age_years": age,
                    "odometer_km": odo,
                    "km_per_day": 50.0,
                    "n_estimates": 0 if math.isnan(soh) else 20 + k,
                    "soh_pct": s,
                    "soh_low_pct": s - 1.5,
                    "soh_high_pct": s + 1.5,
                    "fade_exponent": 0.75,
                    "soh_new_pct": 100.0,
                    "fade_pct_per_year_pow": (100.0 - soh) / age**0.75,
                    "fit_scale": 1.0,
                    "n_resistance_days": 10,
                    "resistance_mohm_25c": 80.0,
                    "resistance_growth_pct": 12.5 + i,
                    "resistance_growth_low_pct": 10.0,
                    "resistance_growth_high_pct": 15.0,
                    "bms_soh_pct": 95.0,
                    "policy_id": policy.id,
                    "horizon_years": 8.0,
                    "horizon_km": 160_000.0,
                    "projected_soh_pct": proj,
                    "projected_soh_low_pct": proj - 3.0,
                    "projected_soh_high_pct": proj + 3.0,
                }
            )
            today_status = status if d == day or status != "at_risk" else "ok"
            evidence = {
                "policy": {"id": policy.id, "name": policy.name, "source": policy.source},
                "threshold": {"years": 8.0, "km": 160_000.0, "min_soh_pct": 70.0},
                "fit": {
                    "a": 100.0,
                    "b": -(100.0 - soh) / age**0.75,
                    "exponent": 0.75,
                    "scale": 1.0,
                },
                "usage": {"over_temp_events": 1, "dc_fast_share": 0.25, "deep_discharges": 0},
                "usage_limits": {
                    "max_over_temp_events": 10,
                    "max_dc_fast_share": 0.8,
                    "max_deep_discharges": 20,
                },
                "model_version": "analytics-1",
            }
            war_rows.append(
                {
                    "vin": vin,
                    "policy_id": policy.id,
                    "status": today_status,
                    "reason": f"test reason {status}",
                    "threshold_min_soh_pct": 70.0,
                    "threshold_years": 8.0,
                    "threshold_km": 160_000.0,
                    "coverage_end_years": 8.0,
                    "coverage_end_km": 150_000.0,
                    "age_years": age,
                    "odometer_km": odo,
                    "km_per_day": 50.0,
                    "soh_pct": s,
                    "soh_low_pct": s - 1.5,
                    "soh_high_pct": s + 1.5,
                    "projected_soh_pct": proj,
                    "projected_soh_low_pct": proj - 3.0,
                    "projected_soh_high_pct": proj + 3.0,
                    "over_temp_events": 1,
                    "dc_fast_share": 0.25,
                    "deep_discharges": 0,
                    "usage_flags": [],
                    "evidence": json.dumps(evidence),
                    "model_version": "analytics-1",
                }
            )
            vd = {f.name: None for f in bms.METRICS_SCHEMAS["vehicle_day"]}
            vd.update(
                vin=vin,
                chemistry="nmc",
                odometer_km=odo,
                distance_km=50.0,
                covered_hours=24.0,
                ah_charged=40.0 + i,
                ah_charged_dc=10.0,
                ah_discharged=42.0,
                equivalent_full_cycles=0.4,
                hours_soc_above_90=2.0,
                hours_soc_below_10=0.5,
                hours_temp_below_0c=0.0,
                hours_temp_0_15c=3.0,
                hours_temp_15_25c=12.0,
                hours_temp_25_35c=8.0,
                hours_temp_35_45c=1.0,
                hours_temp_above_45c=0.0,
                temp_c_max=41.5,
                pack_temp_c_max=41.5,
                max_charge_c_rate=1.2,
            )
            vd_rows.append(vd)
            for c in range(N_CELLS):
                dev = rng.normal(0, 2.0)
                if vin == FLAGGED_VIN and c == FLAGGED_CELL:
                    dev = -3.0 * k
                cell = {f.name: None for f in bms.METRICS_SCHEMAS["cell_day"]}
                cell.update(vin=vin, cell=c, n_cells=N_CELLS, rest_dev_mv=dev, n_rest=2)
                cell_rows.append(cell)
            if not math.isnan(soh):
                ts = datetime(d.year, d.month, d.day, 6, tzinfo=UTC)
                cap = {f.name: None for f in bms.METRICS_SCHEMAS["capacity"]}
                cap.update(
                    vin=vin,
                    chemistry="nmc",
                    start_ts=ts,
                    end_ts=ts,
                    soh_pct=s + 0.7,
                    capacity_ah=s + 0.7,
                    rated_capacity_ah=100.0,
                    rel_sigma=0.02,
                )
                cap_rows.append(cap)
        for name, rows in (
            ("vehicle_soh", soh_rows),
            ("warranty", war_rows),
            ("vehicle_day", vd_rows),
            ("cell_day", cell_rows),
            ("capacity", cap_rows),
        ):
            table = pa.Table.from_pylist(rows, schema=bms.METRICS_SCHEMAS[name])
            _write(table, lake / "metrics", name, d)
    rec = pa.table(
        {
            "vin": vins,
            "readings_expected": [144, 144, 144, 144],
            "readings_stored": [144, 130, 144, 144],
            "readings_missing": [0, 14, 0, 0],
            "readings_quarantined": [0, 0, 0, 0],
            "gap_count": [0, 2, 0, 0],
            "longest_gap_s": [None, 4200.0, None, None],
        }
    )
    _write(rec, lake / "metrics", "reconciliation", day)
    feature = pa.struct(
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
    top = [
        {
            "feature": "self_discharge_z",
            "value": -6.1,
            "unit": "sigma",
            "normal_low": -2.0,
            "normal_median": 0.0,
            "normal_high": 2.0,
            "distance": 6.1,
        },
        {
            "feature": "rest_dev_z",
            "value": -4.5,
            "unit": "sigma",
            "normal_low": -2.0,
            "normal_median": 0.0,
            "normal_high": 2.0,
            "distance": 4.5,
        },
    ]
    anomalies = pa.table(
        {
            "vin": [FLAGGED_VIN, "MAT612345NEX00001"],
            "cell": pa.array([FLAGGED_CELL, -1], pa.int16()),
            "sensor": pa.array([-1, 2], pa.int16()),
            "date": pa.array([day, day], pa.date32()),
            "status": ["new", "ongoing"],
            "severity": ["critical", "warning"],
            "source": ["both", "model"],
            "score": [0.81, 0.62],
            "threshold": [0.6, 0.6],
            "rules": pa.array([["self_discharge"], []], pa.list_(pa.string())),
            "top_features": pa.array([top, top[1:]], pa.list_(feature)),
            "evidence": ["model score 0.81 > threshold 0.6; cell 5 loses charge at rest", ""],
            "model_version": ["iforest-test-1", "iforest-test-1"],
            "first_seen": pa.array([day, day - timedelta(days=3)], pa.date32()),
            "last_flagged": pa.array([day, day], pa.date32()),
        }
    )
    _write(anomalies, lake, "anomalies", day)
    return lake


def patch_rows(lake: Path, name: str, vin: str, day: date = DAY, **values: object) -> None:
    """Set columns of ``vin``'s row in table ``name`` (``metrics/<name>`` or
    ``anomalies``) on ``day`` to ``values``, in place, keeping the table's schema."""
    base = lake / "metrics" / name if name != "anomalies" else lake / name
    path = base / f"date={day.isoformat()}" / f"fleet={FLEET}" / "part.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    for row in rows:
        if row["vin"] == vin:
            row.update(values)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


def patch_silent(lake: Path, vin: str, day: date = DAY) -> None:
    """Make ``vin`` store no reading on ``day`` in its reconciliation row: no sequence
    numbers to count from (expected 0, missing 0), as reconciliation writes it."""
    patch_rows(
        lake,
        "reconciliation",
        vin,
        day,
        readings_expected=0,
        readings_stored=0,
        readings_missing=0,
        readings_quarantined=0,
        gap_count=0,
        longest_gap_s=None,
    )
