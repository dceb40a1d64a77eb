"""Drain throughput of ``fleetbms ingest`` against a bare paho subscriber, and its peak RSS.

A private Mosquitto (``max_queued_messages 0``) holds a backlog of 96-cell readings for
two offline persistent sessions (QoS 1). Then, in the same run:

(a) a bare paho-mqtt subscriber (MQTT v5, manual ack, receive-maximum 65535) that only
    acknowledges each message: the ceiling;
(b) ``fleetbms ingest`` as a child process, durable (decode, dedup, alerts, Parquet with
    fsync before every ack); its drain ends when the retained ack of every vehicle
    reaches its last seq.

Prints msgs/s of both, the ratio (goal >= 0.8) and the peak RSS of ingest (goal < 500 MB
whatever the backlog).

Usage: python benchmarks/ingest_throughput.py [--backlog 200000] [--vehicles 1000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.broker import MosquittoBroker

TOPICS = [("fleet/+/+/bms", 1), ("fleet/+/+/bms/batch", 1)]


def vin_of(i: int) -> str:
    return f"BENCH{i:012d}"


def payloads(backlog: int, vehicles: int) -> list[tuple[str, bytes]]:
    rng = random.Random(7)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
    base_mv = [rng.randint(3690, 3710) for _ in range(96)]
    enc = msgspec.json.Encoder()
    out = []
    for n in range(backlog):
        v, seq = n % vehicles, n // vehicles
        vin = vin_of(v)
        reading = {
            "v": 1,
            "vin": vin,
            "seq": seq,
            "ts": (start + timedelta(seconds=10 * seq)).isoformat(timespec="milliseconds"),
            "pack": {
                "current_a": round(rng.uniform(-150, 50), 1),
                "voltage_v": 355.2,
                "soc_pct": 63.4,
                "soh_pct": 94.1,
                "cycle_count": 812,
                "odometer_km": 48210.4,
                "mode": "drive",
            },
            "cells": {
                "voltages_mv": [mv + rng.randint(-3, 3) for mv in base_mv],
                "temps_c": [round(rng.uniform(30, 32), 1) for _ in range(16)],
            },
        }
        out.append((f"fleet/bench/{vin}/bms", enc.encode(reading)))
    return out


def connect(broker: MosquittoBroker, client_id: str, *, manual_ack: bool = False) -> mqtt.Client:
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 65535
    c.connect(broker.host, broker.port, clean_start=False, properties=props)
    return c


def make_session(broker: MosquittoBroker, client_id: str) -> None:
    """Create an offline persistent session subscribed to the reading topics."""
    c = connect(broker, client_id)
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.loop_start()
    c.subscribe(TOPICS)
    assert done.wait(10)
    c.disconnect()
    c.loop_stop()


def prefill(broker: MosquittoBroker, msgs: list[tuple[str, bytes]]) -> float:
    c = connect(broker, "bench-pub")
    c.loop_start()
    t0 = time.perf_counter()
    chunk = 30_000  # packet ids are 16 bits: keep fewer than 65535 in flight
    for i in range(0, len(msgs), chunk):
        infos = [c.publish(t, p, qos=1) for t, p in msgs[i : i + chunk]]
        for info in infos:
            info.wait_for_publish(300)
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return len(msgs) / dt


def drain_bare(broker: MosquittoBroker, n: int) -> float:
    """(a) the ceiling: receive and acknowledge only."""
    count = 0
    done = threading.Event()
    t = {"start": 0.0}

    def on_connect(client, userdata, flags, rc, props) -> None:
        t["start"] = time.perf_counter()

    def on_message(client, userdata, msg) -> None:
        nonlocal count
        client.ack(msg.mid, msg.qos)
        count += 1
        if count >= n:
            done.set()

    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5, manual_ack=True
    )
    c.on_connect = on_connect
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 65535
    c.connect(broker.host, broker.port, clean_start=False, properties=props)
    c.loop_start()
    assert done.wait(3600)
    dt = time.perf_counter() - t["start"]
    c.disconnect()
    c.loop_stop()
    return n / dt


def drain_ingest(
    broker: MosquittoBroker, n: int, vehicles: int, data_dir: Path, flush_rows: int
) -> tuple[float, float, dict[str, object]]:
    """(b) ``fleetbms ingest``: msgs/s until every vehicle's ack covers its last seq."""
    last_seq = {vin_of(v): (n - 1 - v) // vehicles for v in range(vehicles)}
    acked: dict[str, int] = {}
    done = threading.Event()
    end = {"t": 0.0}

    def on_message(client, userdata, msg) -> None:
        ack = json.loads(msg.payload)
        acked[ack["vin"]] = ack["durable_seq"]
        if len(acked) == vehicles and all(acked[v] >= s for v, s in last_seq.items()):
            end["t"] = time.time()
            done.set()

    watcher = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-watch", protocol=mqtt.MQTTv5
    )
    watcher.on_message = on_message
    watcher.connect(broker.host, broker.port)
    watcher.subscribe("fleet/bench/+/ack", qos=1)
    watcher.loop_start()
    cmd = [
        sys.executable,
        "-c",
        "import pipeline; pipeline.main()",
        "--data-dir",
        str(data_dir),
        "ingest",
        "--broker",
        broker.address,
        "--client-id",
        "bench-ingest",
        "--flush-rows",
        str(flush_rows),
        "--idle-exit",
        "3",
        "--log-interval",
        "5",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _out, err = proc.communicate(timeout=3600)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    watcher.disconnect()
    watcher.loop_stop()
    if proc.returncode != 0 or not done.is_set():
        raise SystemExit(f"ingest failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    start = next(e["ts"] for e in events if e["event"] == "connected")
    final = next(e for e in events if e["event"] == "stopped")
    return n / (end["t"] - start), peak_mb, final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=200_000, help="queued readings")
    parser.add_argument("--vehicles", type=int, default=1000)
    parser.add_argument("--flush-rows", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetbms-bench-") as tmp:
        root = Path(tmp)
        broker = MosquittoBroker(root / "mosquitto", extra_conf="autosave_interval 0\n")
        broker.start()
        try:
            print(f"backlog: {args.backlog} readings of 96 cells, {args.vehicles} vehicles")
            msgs = payloads(args.backlog, args.vehicles)
            size = sum(len(p) for _, p in msgs) / len(msgs)
            make_session(broker, "bench-bare")
            make_session(broker, "bench-ingest")
            rate = prefill(broker, msgs)
            del msgs
            print(f"prefill: {rate:,.0f} msgs/s ({size:.0f} B each), queued for 2 sessions")
            bare = drain_bare(broker, args.backlog)
            print(f"(a) bare paho subscriber, ack only: {bare:,.0f} msgs/s")
            ing, peak_mb, final = drain_ingest(
                broker, args.backlog, args.vehicles, root / "data", args.flush_rows
            )
            print(
                f"(b) fleetbms ingest, durable:      {ing:,.0f} msgs/s "
                f"({final['written']} written, {final['flushes']} flushes)"
            )
            print(f"ratio ingest/bare: {ing / bare:.2f} (goal >= 0.8)")
            print(f"peak RSS of ingest: {peak_mb:,.0f} MB (goal < 500 MB)")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
