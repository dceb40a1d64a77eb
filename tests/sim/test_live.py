"""Live mode against a real Mosquitto: store-and-forward across a broker restart, buffer
trimmed only by acks, and a clean stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pyarrow.parquet as pq
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import bms
import sim
from tests.broker import MosquittoBroker

FLEET = "live"
SPEC = sim.FleetSpec(
    vehicles=2, days=2, fleet=FLEET, seed=21, cells=14, fault_rate=0.0, chemistry="nmc"
)
#: 06:00 in Asia/Kolkata: parked first, then the morning drive.
START = datetime(2026, 1, 5, 0, 30, tzinfo=UTC)


class Collector:
    """A plain subscriber with a persistent session, as an ingest worker would be."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.seqs: dict[str, set[int]] = defaultdict(set)
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="collector", protocol=mqtt.MQTTv5
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe([(f"fleet/{FLEET}/+/bms", 1), (f"fleet/{FLEET}/+/bms/batch", 1)])
        self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        decoded = bms.decode_message(message.topic, message.payload, now=datetime.now(UTC))
        assert not decoded.rejections, decoded.rejections
        with self.lock:
            for r in decoded.readings:
                self.seqs[r.vin].add(r.seq)

    def count(self) -> int:
        with self.lock:
            return sum(len(s) for s in self.seqs.values())

    def wait_for(self, expected: dict[str, int], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if all(self.seqs[v] >= set(range(1, n + 1)) for v, n in expected.items()):
                    return
            time.sleep(0.1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()  # else closed only when collected (paho #627)


def _wait(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_live_buffers_through_a_broker_outage_and_trims_only_after_an_ack(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    buffers = tmp_path / "buffer"
    collector = Collector(broker)
    assert collector.subscribed.wait(10)
    result: list[sim.LiveSummary] = []
    run = threading.Thread(
        target=lambda: result.append(
            sim.run_live(
                SPEC,
                broker.address,
                buffer_dir=buffers,
                speed=3000.0,
                start=START,
                max_readings=700,
                segment_readings=50,
                drain_s=10.0,
            )
        )
    )
    run.start()
    assert _wait(lambda: collector.count() >= 120, 30)
    broker.stop()
    time.sleep(2.5)  # readings keep coming; the vehicles buffer them
    broker.start()
    run.join(90)
    assert not run.is_alive()
    summary = result[0]
    assert summary.generated == 700
    assert summary.reconnects >= 1
    assert summary.replayed > 0

    vins = [sim.make_vin(FLEET, SPEC.seed, i) for i in range(2)]
    held = {vin: sim.StoreAndForwardBuffer(buffers, vin).buffered_seqs() for vin in vins}
    expected = {vin: len(seqs) for vin, seqs in held.items()}
    assert sum(expected.values()) == 700
    collector.wait_for(expected, 30)
    for vin in vins:
        # Every seq arrived (live or replayed), and the buffer still holds them all:
        # nobody acknowledged anything yet.
        assert collector.seqs[vin] == set(range(1, expected[vin] + 1))
        assert held[vin] == list(range(1, expected[vin] + 1))

    # The pipeline acknowledges the first vehicle up to seq 120 (retained ack).
    ack = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="acker", protocol=mqtt.MQTTv5)
    ack.connect(broker.host, broker.port)
    ack.loop_start()
    ack.publish(
        bms.topic_for(FLEET, vins[0], "ack"), bms.encode_ack(vins[0], 120), qos=1, retain=True
    ).wait_for_publish(10)
    ack.disconnect()
    ack.loop_stop()
    ack._reset_sockets()  # else closed only when collected (paho #627)
    again = sim.run_live(
        SPEC,
        broker.address,
        buffer_dir=buffers,
        speed=3000.0,
        start=START,
        duration_s=2.0,
        max_readings=4,
        segment_readings=50,
        drain_s=3.0,
    )
    collector.close()
    assert again.generated == 4
    first = sim.StoreAndForwardBuffer(buffers, vins[0]).buffered_seqs()
    second = sim.StoreAndForwardBuffer(buffers, vins[1]).buffered_seqs()
    # Whole segments up to the ack are gone, nothing after it; seqs continue.
    assert first[0] == 101
    assert first == list(range(101, first[-1] + 1))
    assert first[-1] > expected[vins[0]]
    assert second[0] == 1


def test_cli_live_stops_cleanly_on_sigterm(broker: MosquittoBroker, tmp_path: Path) -> None:
    data = tmp_path / "data"
    cmd = [
        sys.executable,
        "-c",
        "from pipeline import main; main()",
        "--data-dir",
        str(data),
        "simulate",
        "--live",
        "--broker",
        broker.address,
        "--vehicles",
        "1",
        "--cells",
        "14",
        "--speed",
        "600",
        "--fleet",
        FLEET,
        "--start",
        "2026-01-05",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    vin = sim.make_vin(FLEET, 0, 0)
    buffer = data / "sim" / "buffer" / vin
    try:
        assert _wait(lambda: any(buffer.glob("seg-*.jsonl")), 30)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert b"stopped by signal" in out
    held = sim.StoreAndForwardBuffer(data / "sim" / "buffer", vin)
    assert held.next_seq > 1
    assert held.buffered_seqs() == list(range(1, held.next_seq))


@pytest.mark.parametrize("address", ["localhost", "host:port", ":1883", "h:70000"])
def test_run_live_rejects_a_bad_broker_address(tmp_path: Path, address: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        sim.run_live(SPEC, address, buffer_dir=tmp_path, max_readings=1)


def test_a_publish_refused_while_the_link_drops_is_settled_not_fatal() -> None:
    """A reading published just as the broker went away comes back refused (not
    connected); paho's ``is_published`` raises for it. The simulator lets it go (the
    reading stays in its buffer for the replay) instead of ending the run."""
    from paho.mqtt.enums import MQTTErrorCode

    from sim._live import _settled

    refused = mqtt.MQTTMessageInfo(1)
    refused.rc = MQTTErrorCode.MQTT_ERR_NO_CONN
    with pytest.raises(RuntimeError):
        refused.is_published()
    assert _settled(refused)
    in_flight = mqtt.MQTTMessageInfo(2)
    assert not _settled(in_flight)
    in_flight._set_as_published()
    assert _settled(in_flight)


def test_run_live_stops_at_its_reading_limit_not_at_the_next_reading(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """At 06:00 the cars are parked (a reading every 10 minutes): the run ends as soon as
    it has its readings, in real time, not when the next one falls due (the duration,
    far shorter than the idle interval, would then have stopped it)."""
    summary = sim.run_live(
        SPEC,
        broker.address,
        buffer_dir=tmp_path / "buffer",
        speed=1.0,
        start=START,
        duration_s=60.0,
        max_readings=2,
        drain_s=5.0,
    )
    assert (summary.generated, summary.stopped_by) == (2, "readings")


def test_run_live_continues_each_vehicle_after_the_seqs_the_pipeline_holds(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """A history written straight into the lake used seqs 1..N; the live vehicles go on
    from N + 1 (a fresh buffer would start again at 1 and repeat (vin, seq) pairs)."""
    vins = [sim.make_vin(FLEET, SPEC.seed, i) for i in range(2)]
    collector = Collector(broker)
    assert collector.subscribed.wait(10)
    summary = sim.run_live(
        SPEC,
        broker.address,
        buffer_dir=tmp_path / "buffer",
        speed=3000.0,
        start=START,
        max_readings=20,
        durable_seqs={vins[0]: 5000, "FBMXXXXX0TS999999": 7},
        drain_s=10.0,
    )
    assert summary.generated == 20
    assert _wait(lambda: collector.count() == 20, 30)
    collector.close()
    first, second = sorted(collector.seqs[vins[0]]), sorted(collector.seqs[vins[1]])
    assert first == list(range(5001, 5001 + len(first)))
    assert second == list(range(1, 1 + len(second)))
    assert first
    assert second
    # nothing from before is pending: the held seqs count as acknowledged
    assert summary.pending == 20


def _fleetbms(
    data: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from pipeline import main; main()", "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[2],
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


def test_cli_live_continues_the_seqs_of_the_fleet_history_in_the_lake(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    fleet = ["simulate", "--vehicles", "2", "--cells", "14", "--fleet", FLEET, "--seed", "3"]
    history = _fleetbms(data, *fleet, "--to-lake", "--days", "2")
    assert history.returncode == 0, history.stderr
    vins = [sim.make_vin(FLEET, 3, i) for i in range(2)]
    held = bms.last_seqs(data / "lake", FLEET, vins)
    assert set(held) == set(vins)
    assert min(held.values()) > 100
    live = ["--live", "--broker", broker.address, "--speed", "600", "--max-readings", "6"]
    out = _fleetbms(data, *fleet, *live)
    assert out.returncode == 0, out.stderr
    assert "stopped by readings" in out.stdout
    seqs = {v: sim.StoreAndForwardBuffer(data / "sim" / "buffer", v).buffered_seqs() for v in vins}
    assert sum(len(s) for s in seqs.values()) == 6
    for vin in vins:
        assert seqs[vin] == list(range(held[vin] + 1, held[vin] + 1 + len(seqs[vin])))


def test_cli_live_continues_the_seqs_of_a_fleet_history_retention_archived(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """The fleet's whole history is older than retention.archive_after_days: the nightly
    moved it to the archive. The live vehicles still go on after its seqs (from 1, they
    would repeat (vin, seq) pairs the pipeline holds)."""
    data = tmp_path / "data"
    fleet = ["simulate", "--vehicles", "2", "--cells", "14", "--fleet", FLEET, "--seed", "3"]
    run_date = datetime.now(UTC).date()
    start = (run_date - timedelta(days=10)).isoformat()
    history = _fleetbms(data, *fleet, "--to-lake", "--days", "2", "--start", start)
    assert history.returncode == 0, history.stderr
    nightly = _fleetbms(
        data,
        *("nightly", "--fleet", FLEET, "--date", run_date.isoformat()),
        env={"FLEETBMS_RETENTION__ARCHIVE_AFTER_DAYS": "0"},
    )
    assert nightly.returncode in (0, 3, 66), nightly.stderr
    assert not list((data / "lake" / "telemetry").glob(f"date=*/fleet={FLEET}/*.parquet"))
    archived = sorted((data / "archive" / "telemetry").glob(f"date=*/fleet={FLEET}/*.parquet"))
    assert archived
    held: dict[str, int] = {}
    for path in archived:
        for row in pq.read_table(path, columns=["vin", "seq"]).to_pylist():
            held[row["vin"]] = max(held.get(row["vin"], 0), row["seq"])
    vins = [sim.make_vin(FLEET, 3, i) for i in range(2)]
    assert set(held) == set(vins)
    live = ["--live", "--broker", broker.address, "--speed", "600", "--max-readings", "6"]
    out = _fleetbms(data, *fleet, *live)
    assert out.returncode == 0, out.stderr
    seqs = {v: sim.StoreAndForwardBuffer(data / "sim" / "buffer", v).buffered_seqs() for v in vins}
    assert sum(len(s) for s in seqs.values()) == 6
    for vin in vins:
        assert seqs[vin] == list(range(held[vin] + 1, held[vin] + 1 + len(seqs[vin])))
