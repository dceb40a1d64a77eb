"""Helpers of the ingest tests: readings, a QoS 1 publisher, an in-process worker, lake reads."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bms import decode_ack
from ingest import AlertEngine, AlertProfile, IngestOptions, run_ingest

VINS = ("MAT612345NEX00001", "MAT612345NEX00002", "MAT612345NEX00003")
FLEET = "demo"
NOW = datetime.now(UTC).replace(microsecond=0)


def reading(
    vin: str,
    seq: int,
    ts: datetime,
    *,
    cells: int = 14,
    mv: int = 3700,
    temp_c: float = 25.0,
    current_a: float = -20.0,
) -> dict[str, Any]:
    """A valid contract-v1 reading (14 cells, 4 sensors by default)."""
    return {
        "v": 1,
        "vin": vin,
        "seq": seq,
        "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "pack": {
            "current_a": current_a,
            "voltage_v": cells * mv / 1000,
            "soc_pct": 55.0,
            "cycle_count": 10,
            "odometer_km": 1000.0 + seq,
            "mode": "drive",
        },
        "cells": {"voltages_mv": [mv] * cells, "temps_c": [temp_c] * 4},
    }


def encode(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


def bms_topic(vin: str, kind: str = "bms", fleet: str = FLEET) -> str:
    return f"fleet/{fleet}/{vin}/" + ("bms/batch" if kind == "batch" else kind)


def wait_until(pred: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or pred}")


class Client:
    """A paho v5 client that publishes QoS 1 and records what it receives."""

    def __init__(self, address: str, client_id: str, subscribe: tuple[str, ...] = ()) -> None:
        host, port = address.rsplit(":", 1)
        self.received: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        self.topics = subscribe
        self.subscribed = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.reconnect_delay_set(1, 1)
        self.c.connect(host, int(port))
        self.c.loop_start()
        if subscribe:
            assert self.subscribed.wait(10)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if self.topics:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.received.append((msg.topic, msg.payload, bool(msg.retain)))

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(30)

    def messages(self, suffix: str) -> list[tuple[str, bytes, bool]]:
        with self.lock:
            return [m for m in self.received if m[0].endswith(suffix)]

    def acks(self) -> dict[str, int]:
        """Latest durable_seq per VIN seen on the ack topics."""
        out: dict[str, int] = {}
        for _, payload, _ in self.messages("/ack"):
            ack = decode_ack(payload)
            out[ack.vin] = max(out.get(ack.vin, -1), ack.durable_seq)
        return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
        self.c._reset_sockets()  # paho closes them only when collected (eclipse-paho #627)


def engine(**overrides: Any) -> AlertEngine:
    return AlertEngine(
        {"nmc": AlertProfile(**overrides), "lfp": AlertProfile(cell_max_mv=3650, cell_min_mv=2500)},
        default_chemistry="nmc",
        default_capacity_ah=100.0,
    )


class IngestThread:
    """``run_ingest`` in a thread of the test process (real broker, real files)."""

    def __init__(self, address: str, data_dir: Path, **options: Any) -> None:
        opts = {"broker": address, "flush_age_s": 0.2, "log_interval_s": 60.0, **options}
        self.stop = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.result = run_ingest(
                    IngestOptions(**opts),
                    lake_dir=data_dir / "lake",
                    state_dir=data_dir / "state",
                    engine=engine(),
                    stop=self.stop,
                    handle_signals=False,
                )
            except BaseException as exc:  # re-raised in the test thread by close()
                self.error = exc

        subscribed = threading.Event()

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if '"event": "subscribed"' in record.getMessage():
                    subscribed.set()

        self.handler = _Handler()
        logger = logging.getLogger("fleetbms.ingest")
        logger.setLevel(logging.INFO)
        logger.addHandler(self.handler)
        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()
        if not subscribed.wait(20):
            self.close()
            raise AssertionError("ingest did not subscribe")

    def close(self) -> Any:
        self.stop.set()
        self.thread.join(30)
        logging.getLogger("fleetbms.ingest").removeHandler(self.handler)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.result


class IngestProcess:
    """``fleetbms ingest`` as a child process (for kill -9 and signals), once subscribed."""

    def __init__(self, data_dir: Path, address: str, *args: str) -> None:
        self.proc = spawn_ingest(data_dir, address, *args)
        self.stderr: list[bytes] = []
        subscribed = threading.Event()

        def drain() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line)
                if b'"event": "subscribed"' in line:
                    subscribed.set()

        self.reader = threading.Thread(target=drain, daemon=True)
        self.reader.start()
        if not subscribed.wait(30):
            self.proc.kill()
            raise AssertionError(b"".join(self.stderr).decode())

    def wait(self, timeout: float = 60) -> tuple[int, str, str]:
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        rc = self.proc.wait(timeout)
        self.reader.join(10)
        self.proc.stdout.close()
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return rc, out.decode(), b"".join(self.stderr).decode()


def spawn_ingest(data_dir: Path, address: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pipeline; pipeline.main()",
            "--data-dir",
            str(data_dir),
            "ingest",
            "--broker",
            address,
            "--flush-age",
            "0.1",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def lake_counts(data_dir: Path) -> tuple[int, int]:
    """(raw rows, distinct (vin, seq)) of the telemetry in the lake."""
    files = list((data_dir / "lake" / "telemetry").glob("date=*/fleet=*/*.parquet"))
    if not files:
        return 0, 0
    glob = str(data_dir / "lake" / "telemetry" / "*" / "*" / "*.parquet")
    con = duckdb.connect()
    raw = con.execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchone()
    distinct = con.execute(
        f"SELECT count(*) FROM (SELECT DISTINCT vin, seq FROM read_parquet('{glob}'))"
    ).fetchone()
    assert raw is not None
    assert distinct is not None
    return int(raw[0]), int(distinct[0])


def query(data_dir: Path, table: str, sql: str) -> list[tuple[Any, ...]]:
    """Run ``sql`` with ``t`` = the hive-partitioned lake table ``table``."""
    root = data_dir / "lake" / table
    depth = "*/*/*.parquet" if table != "quarantine" else "*/*.parquet"
    con = duckdb.connect()
    con.execute(
        f"CREATE VIEW t AS SELECT * FROM read_parquet('{root}/{depth}', hive_partitioning=true)"
    )
    return con.execute(sql).fetchall()


def days_ago(n: int) -> datetime:
    """Noon (UTC) ``n`` days before today."""
    return (NOW - timedelta(days=n)).replace(hour=12, minute=0, second=0)
