"""A small lake of metrics and anomaly tables for the audit-bundle tests.

The tables imitate what the analytics and anomaly stages write (the exporter is generic
over them): VINs in ``vin`` columns, in JSON evidence text, in a list column, in a
column name, in schema and field metadata, and one registry VIN that only ever appears
glued inside a longer token.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from reports import generate_signing_keys

FLEET = "demo"
VINS = ["MAT612345NEX00001", "MAT612345NEX00002", "WVWZZZ1JZXW000003"]
#: In the registry only; appears in the data glued into a longer upper-case token.
HIDDEN_VIN = "5YJ3E1EA7KF000004"
DAY0 = date(2026, 11, 1)
N_DAYS = 4
DAYS = [DAY0 + timedelta(days=i) for i in range(N_DAYS)]


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")


def make_lake(data_dir: Path, *, fleet: str = FLEET, days: list[date] | None = None) -> Path:
    """Write the small lake under ``data_dir/lake``; return the lake folder."""
    lake = data_dir / "lake"
    _write(
        pa.table({"vin": [*VINS, HIDDEN_VIN], "fleet": [fleet] * 4, "chemistry": ["nmc"] * 4}),
        lake / "registry" / "vehicles.parquet",
    )
    for i, day in enumerate(days or DAYS):
        soh_field = pa.field(
            "soh_pct",
            pa.float64(),
            metadata={b"unit": b"%", b"description": b"capacity-based state of health"},
        )
        vehicle_day = pa.table(
            {
                "vin": VINS,
                "date": pa.array([day] * 3, pa.date32()),
                "soh_pct": pa.array([95.0 - i * 0.01, 94.0, 90.5], pa.float64()),
                "temp_c_max": pa.array([31.5, 33.0, 29.25], pa.float32()),
                f"soh_{VINS[0]}": [1.0, 2.0, 3.0],
                "ts": pa.array([1_793_000_000_000 + i] * 3, pa.timestamp("ms", tz="UTC")),
            }
        )
        vehicle_day = vehicle_day.set_column(2, soh_field, vehicle_day["soh_pct"])
        vehicle_day = vehicle_day.replace_schema_metadata(
            {b"fleetbms.note": f"computed for {VINS[1]}".encode()}
        )
        _write(vehicle_day, lake / f"metrics/vehicle_day/date={day}/fleet={fleet}/part.parquet")
        n_cells = 14
        cell_day = pa.table(
            {
                "vin": [v for v in VINS for _ in range(n_cells)],
                "cell": pa.array(list(range(n_cells)) * 3, pa.int16()),
                "rest_mv": pa.array([3700 + c for c in range(n_cells)] * 3, pa.float64()),
            }
        )
        _write(cell_day, lake / f"metrics/cell_day/date={day}/fleet={fleet}/part.parquet")
        evidence = json.dumps(
            {"vin": VINS[0], "peers": VINS[1:], "note": f"ref REF{HIDDEN_VIN}X", "cell": 3}
        )
        anomalies = pa.table(
            {
                "vin": [VINS[0]],
                "date": pa.array([day], pa.date32()),
                "score": [0.71],
                "verdict": ["flagged"],
                "evidence": [evidence],
                "peer_vins": pa.array([VINS[1:]], pa.list_(pa.string())),
            }
        )
        _write(anomalies, lake / f"anomalies/date={day}/fleet={fleet}/part.parquet")
    # A day outside the exported periods, and a half-written temporary file: never read.
    outside = DAY0 - timedelta(days=10)
    _write(
        pa.table({"vin": VINS, "soh_pct": [1.0, 2.0, 3.0]}),
        lake / f"metrics/vehicle_day/date={outside}/fleet={fleet}/part.parquet",
    )
    tmp = lake / f"metrics/vehicle_day/date={DAY0}/fleet={fleet}/.part.parquet.abc.tmp"
    tmp.write_bytes(b"half-written " + VINS[0].encode())
    return lake


def make_models(data_dir: Path) -> None:
    """An anomaly model's metadata and binary as the anomaly stage leaves them."""
    models = data_dir / "state" / "models"
    models.mkdir(parents=True, exist_ok=True)
    meta = {"model_version": "iforest-2026-11-01", "trained_on": VINS, "n_estimators": 100}
    (models / "iforest.json").write_text(json.dumps(meta))
    (models / "iforest.joblib").write_bytes(b"\x00binary model\x01")


def make_signed_lake(data_dir: Path) -> Path:
    """The lake, the anomaly model's files and a signing key pair under ``data_dir``: what
    an export needs. Returns the lake."""
    make_models(data_dir)
    generate_signing_keys(data_dir / "state" / "keys")
    return make_lake(data_dir)


def public_key_path(data_dir: Path) -> Path:
    """Where ``make_signed_lake`` leaves the public key."""
    return data_dir / "state" / "keys" / "signing.pub"
