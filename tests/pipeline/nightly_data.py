"""Synthetic telemetry for the nightly-batch tests: ingest-like small files in the lake."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import bms

VINS = ["MAT612345NEX00001", "MAT612345NEX00002", "MAT612345NEX00003"]


def day_table(
    day: date,
    *,
    vins: list[str] = VINS,
    fleet: str = "demo",
    cadence_s: int = 600,
    n_cells: int = 14,
    n_temps: int = 4,
    skip_seq: dict[str, list[int]] | None = None,
    delay_s: float = 2.0,
    seed: int = 1,
) -> pa.Table:
    """One day of readings of ``vins`` every ``cadence_s``, ``seq`` counting per VIN.

    ``skip_seq`` maps a VIN to reading numbers of the day that were never sent (gaps).
    """
    rng = np.random.default_rng(seed)
    start_ms = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    per_vin = 86_400 // cadence_s
    day_index = (day - date(2026, 1, 1)).days
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("vin", "seq", "ts")}
    for v in vins:
        k = np.arange(per_vin)
        if skip_seq and v in skip_seq:
            k = np.setdiff1d(k, skip_seq[v])
        rows["vin"].append(np.full(len(k), v, dtype=object))
        rows["seq"].append(day_index * per_vin + k)
        rows["ts"].append(start_ms + k * cadence_s * 1000)
    vin = np.concatenate(rows["vin"])
    seq = np.concatenate(rows["seq"]).astype(np.int64)
    ts = np.concatenate(rows["ts"]).astype(np.int64)
    n = len(seq)
    cells = rng.integers(3600, 3800, size=n * n_cells)
    temps = np.round(rng.uniform(20, 35, size=n * n_temps), 1)
    return bms.telemetry_table(
        fleet=fleet,
        vin=vin,
        seq=seq,
        ts_ms=ts,
        current_a=rng.normal(-10, 20, n),
        voltage_v=rng.uniform(340, 360, n),
        soc_pct=rng.uniform(20, 90, n),
        soh_pct=np.full(n, 95.0),
        cycle_count=np.full(n, 300),
        odometer_km=np.linspace(1000, 1100, n),
        mode="drive",
        cell_mv=cells,
        cell_offsets=np.arange(n + 1) * n_cells,
        temp_c=temps,
        temp_offsets=np.arange(n + 1) * n_temps,
        received_at_ms=ts + int(delay_s * 1000),
        worker="test",
    )


def write_flushes(table: pa.Table, lake: Path, *, flushes: int = 4, prefix: str = "w1") -> int:
    """Write ``table`` in time order as ``flushes`` small files, like an ingest worker."""
    order = np.argsort(table["ts"].to_numpy(), kind="stable")
    table = table.take(pa.array(order))
    files = 0
    for chunk in np.array_split(np.arange(table.num_rows), flushes):
        if len(chunk):
            files += len(bms.write_telemetry(table.take(pa.array(chunk)), lake, file_prefix=prefix))
    return files


def with_received(table: pa.Table, received_ms: int) -> pa.Table:
    """``table`` with every ``received_at`` set to ``received_ms`` (a late replay)."""
    col = pa.array(np.full(table.num_rows, received_ms), pa.timestamp("ms", tz="UTC"))
    return table.set_column(table.schema.get_field_index("received_at"), "received_at", col)


def with_ts_shifted(table: pa.Table, shift_ms: int) -> pa.Table:
    """``table`` with every ``ts`` moved by ``shift_ms`` (a clock corrected on the vehicle)."""
    ts = pa.array(table["ts"].cast(pa.int64()).to_numpy() + shift_ms, pa.timestamp("ms", tz="UTC"))
    return table.set_column(table.schema.get_field_index("ts"), table.schema.field("ts"), ts)


FLEETBMS = str(Path(sys.executable).with_name("fleetbms"))


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a ``fleetbms`` subprocess: no inherited FLEETBMS_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETBMS_")}
    env.update(extra)
    return env


def fleetbms(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``fleetbms --data-dir DATA ARGS`` to completion (output captured)."""
    return subprocess.run(
        [FLEETBMS, "--data-dir", str(data_dir), *args],
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def start_paused(
    data_dir: Path, point: str, flag: Path, *args: str, **env: str
) -> subprocess.Popen[str]:
    """Start ``fleetbms nightly`` and return once it waits at pause point ``point``."""
    proc = subprocess.Popen(
        [FLEETBMS, "--data-dir", str(data_dir), "nightly", *args],
        env=cli_env(FLEETBMS_TEST_PAUSE_AT=point, FLEETBMS_TEST_PAUSE_FILE=str(flag), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not flag.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"run ended before {point}: {proc.returncode}\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"run did not reach {point}")
        time.sleep(0.02)
    return proc


def kill9(proc: subprocess.Popen[str]) -> None:
    """``kill -9`` and reap."""
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


#: Tables whose file metadata is known to vary between identical runs; their values are
#: compared instead of their bytes. bms anomaly scoring writes a digest of its input
#: files' modification times into ``anomaly_features`` (``fleetbms.inputs``): reported to
#: the anomaly owner; remove the entry once the file holds only content-derived data.
VALUES_ONLY = ("anomaly_features",)


def _digest(p: Path) -> str:
    if p.suffix == ".parquet" and any(t in p.parts for t in VALUES_ONLY):
        table = pq.read_table(p).replace_schema_metadata(None)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        return "values:" + hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()
    return hashlib.sha256(p.read_bytes()).hexdigest()


def snapshot(*roots: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``roots`` (hidden files included)."""
    out: dict[str, str] = {}
    for root in roots:
        for p in sorted(root.rglob("*")) if root.exists() else []:
            if p.is_file():
                out[str(p.relative_to(root.parent))] = _digest(p)
    return out


def mtimes(root: Path) -> dict[str, int]:
    """Relative path -> mtime_ns of every file under ``root``."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
