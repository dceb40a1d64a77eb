"""Drain throughput of ``fleetbms ingest`` against a bare paho subscriber, and its peak RSS.

A private Mosquitto (``max_queued_messages 0``) holds a backlog of 96-cell readings for
two offline persistent sessions (QoS 1). Then, in the same run:

(a) a bare paho-mqtt subscriber (MQTT v5, manual ack, receive-maximum 65535) that only
    acknowledges each message: the ceiling;
(a') the same with ingest's own tuned paho client (for comparison: how much of ingest's
     rate comes from the client tuning rather than from the writer process);
(b) ``fleetbms ingest`` as a child process, durable (decode, dedup, alerts, Parquet with
    fsync before every ack); its drain ends when the retained ack of every vehicle
    reaches its last seq.

Prints msgs/s of both, the ratio (goal >= 0.8) and the peak RSS of ingest (goal < 500 MB
whatever the backlog): ingest runs as two processes (MQTT network side and the writer
that decodes and writes), so their resident sizes are sampled every 50 ms and summed;
the sum of each process's own high-water mark (``VmHWM``) is printed too (an upper
bound: the two peaks need not coincide, and pages of shared libraries count twice).

Usage: python benchmarks/ingest_throughput.py [--backlog 200000] [--vehicles 1000]
       python benchmarks/ingest_throughput.py --backlog 1000000 --no-bare   # memory
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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


def payloads(backlog: int, vehicles: int) -> Iterator[tuple[str, bytes]]:
    """The backlog, generated lazily (1M readings would hold 800 MB here otherwise)."""
    rng = random.Random(7)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
    base_mv = [rng.randint(3690, 3710) for _ in range(96)]
    enc = msgspec.json.Encoder()
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
        yield f"fleet/bench/{vin}/bms", enc.encode(reading)


def cpu_s(who: int) -> float:
    """User + system CPU time [s] of RUSAGE_SELF or RUSAGE_CHILDREN (reaped descendants)."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def broker_cpu_s(broker: MosquittoBroker) -> float:
    """User + system CPU time [s] of the broker process (/proc/PID/stat fields 14, 15)."""
    assert broker.proc is not None
    fields = Path(f"/proc/{broker.proc.pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def prefill(broker: MosquittoBroker, msgs: Iterator[tuple[str, bytes]]) -> tuple[float, float]:
    """Publish the backlog; msgs/s and mean payload size [B]."""
    c = connect(broker, "bench-pub")
    c.loop_start()
    t0 = time.perf_counter()
    n = size = 0
    chunk = 30_000  # packet ids are 16 bits: keep fewer than 65535 in flight
    while part := list(itertools.islice(msgs, chunk)):
        infos = [c.publish(t, p, qos=1) for t, p in part]
        n += len(part)
        size += sum(len(p) for _, p in part)
        for info in infos:
            info.wait_for_publish(300)
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return n / dt, size / n


class RssSampler:
    """Peak of the summed resident size of a process and its descendants (Linux /proc)."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid = pid
        self.peak_sum_kb = 0
        self.hwm_kb: dict[int, int] = {}  # pid -> VmHWM last seen
        self.cpu_s: dict[int, float] = {}  # pid -> user + system CPU last seen [s]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)
        self.thread.start()

    @staticmethod
    def _status(pid: int) -> dict[str, int]:
        out = {}
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
        except (OSError, ValueError):
            pass
        return out

    def _tree(self) -> list[int]:
        pids, i = [self.pid], 0
        while i < len(pids):
            try:
                for task in Path(f"/proc/{pids[i]}/task").iterdir():
                    pids += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
            i += 1
        return pids

    def _run(self, interval_s: float) -> None:
        while not self.stop.wait(interval_s):
            total = 0
            for pid in self._tree():
                st = self._status(pid)
                total += st.get("VmRSS", 0)
                if "VmHWM" in st:
                    self.hwm_kb[pid] = st["VmHWM"]
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                    self.cpu_s[pid] = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
                except (OSError, IndexError, ValueError):
                    pass
            self.peak_sum_kb = max(self.peak_sum_kb, total)

    def close(self) -> tuple[float, list[float]]:
        """Peak summed RSS and the per-process peaks, the started process first [MB]."""
        self.stop.set()
        self.thread.join()
        return self.peak_sum_kb / 1024, [kb / 1024 for kb in self.hwm_kb.values()]


def _timed_drain(
    broker: MosquittoBroker, c: Any, n: int, done: threading.Event, t: dict[str, float]
) -> tuple[float, float, float]:
    """Resume the offline session with client ``c`` (callbacks set; ``on_connect``
    stores the start time in ``t``), wait until ``done``; msgs/s, CPU us/msg of this
    process and of the broker."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 65535
    cpu0, broker0 = cpu_s(resource.RUSAGE_SELF), broker_cpu_s(broker)
    c.connect(broker.host, broker.port, clean_start=False, properties=props)
    c.loop_start()
    assert done.wait(3600)
    dt = time.perf_counter() - t["start"]
    cpu, broker_cpu = cpu_s(resource.RUSAGE_SELF) - cpu0, broker_cpu_s(broker) - broker0
    c.disconnect()
    c.loop_stop()
    return n / dt, cpu / n * 1e6, broker_cpu / n * 1e6


def drain_bare(broker: MosquittoBroker, n: int) -> tuple[float, float, float]:
    """(a) the ceiling: receive and acknowledge only; msgs/s, CPU us/msg of it and broker."""
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
    return _timed_drain(broker, c, n, done, t)


def drain_tuned(broker: MosquittoBroker, n: int) -> tuple[float, float, float]:
    """(a') for comparison: ingest's tuned paho client (chunked socket reads, publish
    packets without paho's message object, PUBACKs batched per 1000), ack only."""
    from ingest._mqtt import _ack_all, _client_class

    count = 0
    mids: list[int] = []
    done = threading.Event()
    t = {"start": 0.0}

    def on_connect(client, userdata, flags, rc, props) -> None:  # type: ignore[no-untyped-def]
        t["start"] = time.perf_counter()

    c = _client_class()(
        CallbackAPIVersion.VERSION2, client_id="bench-tuned", protocol=mqtt.MQTTv5, manual_ack=True
    )

    def on_publish_packet(topic: str, payload: bytes, mid: int, qos: int) -> None:
        nonlocal count
        mids.append(mid)
        count += 1
        if len(mids) >= 1000 or count >= n:
            _ack_all(c, mids)
            mids.clear()
        if count >= n:
            done.set()

    c.on_connect = on_connect
    c.on_publish_packet = on_publish_packet
    return _timed_drain(broker, c, n, done, t)


def drain_ingest(
    broker: MosquittoBroker, n: int, vehicles: int, data_dir: Path, flush_rows: int
) -> tuple[float, tuple[float, float], tuple[float, list[float], float], dict[str, object]]:
    """(b) ``fleetbms ingest``: msgs/s until every vehicle's ack covers its last seq.

    Also CPU us/msg of ingest (both processes, start-up imports included) and of the
    broker, and memory (see ``RssSampler``).
    """
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
    cpu0, broker0 = cpu_s(resource.RUSAGE_CHILDREN), broker_cpu_s(broker)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = RssSampler(proc.pid)
    _out, err = proc.communicate(timeout=3600)
    cpu, broker_cpu = cpu_s(resource.RUSAGE_CHILDREN) - cpu0, broker_cpu_s(broker) - broker0
    peak_sum_mb, hwm_mb = sampler.close()
    # largest single descendant (the writer is a grandchild: counted once it is reaped)
    max_one_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    watcher.disconnect()
    watcher.loop_stop()
    if proc.returncode != 0 or not done.is_set():
        raise SystemExit(f"ingest failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    start = next(e["ts"] for e in events if e["event"] == "connected")
    final = next(e for e in events if e["event"] == "stopped")
    cpus = (cpu / n * 1e6, broker_cpu / n * 1e6)
    final["cpu_per_process"] = " + ".join(f"{c / n * 1e6:.0f}" for c in sampler.cpu_s.values())
    return n / (end["t"] - start), cpus, (peak_sum_mb, hwm_mb, max_one_mb), final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=200_000, help="queued readings")
    parser.add_argument("--vehicles", type=int, default=1000)
    parser.add_argument("--flush-rows", type=int, default=50_000)
    parser.add_argument(
        "--no-bare", action="store_true", help="skip (a): only ingest's rate and memory"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetbms-bench-") as tmp:
        root = Path(tmp)
        broker = MosquittoBroker(root / "mosquitto", extra_conf="autosave_interval 0\n")
        broker.start()
        try:
            print(f"backlog: {args.backlog} readings of 96 cells, {args.vehicles} vehicles")
            if not args.no_bare:
                make_session(broker, "bench-bare")
                make_session(broker, "bench-tuned")
            make_session(broker, "bench-ingest")
            rate, size = prefill(broker, payloads(args.backlog, args.vehicles))
            sessions = 1 if args.no_bare else 3
            print(
                f"prefill: {rate:,.0f} msgs/s ({size:.0f} B each), queued for {sessions} sessions"
            )
            bare = 0.0
            if not args.no_bare:
                bare, cpu, broker_cpu = drain_bare(broker, args.backlog)
                print(
                    f"(a) bare paho subscriber, ack only: {bare:,.0f} msgs/s "
                    f"(CPU {cpu:.0f} us/msg, broker {broker_cpu:.0f} us/msg)"
                )
                tuned, cpu, broker_cpu = drain_tuned(broker, args.backlog)
                print(
                    f"(a') ingest's tuned paho client, ack only: {tuned:,.0f} msgs/s "
                    f"(CPU {cpu:.0f} us/msg, broker {broker_cpu:.0f} us/msg)"
                )
            ing, (cpu, broker_cpu), (peak_sum, hwm, max_one), final = drain_ingest(
                broker, args.backlog, args.vehicles, root / "data", args.flush_rows
            )
            print(
                f"(b) fleetbms ingest, durable:      {ing:,.0f} msgs/s "
                f"(CPU {cpu:.0f} us/msg incl. start-up, broker {broker_cpu:.0f} us/msg; "
                f"{final['written']} written, {final['flushes']} flushes)"
            )
            print(f"    CPU us/msg by process, network side first: {final['cpu_per_process']}")
            if bare:
                print(f"ratio ingest/bare: {ing / bare:.2f} (goal >= 0.8)")
                print(f"ratio ingest/tuned client (for comparison): {ing / tuned:.2f}")
            print(
                f"peak RSS of ingest, network + writer process summed: {peak_sum:,.0f} MB "
                f"(goal < 500 MB); per-process peaks "
                f"{' + '.join(f'{mb:,.0f}' for mb in hwm)} = {sum(hwm):,.0f} MB; "
                f"largest single process {max_one:,.0f} MB"
            )
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
