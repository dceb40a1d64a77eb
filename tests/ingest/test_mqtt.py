"""The MQTT ingest worker against a real Mosquitto: durability, dedup, quarantine, alerts."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest

from bms import TELEMETRY_SCHEMA
from ingest import ALERT_SCHEMA, QUARANTINE_SCHEMA
from tests.broker import MosquittoBroker, free_port
from tests.ingest import write_fault
from tests.ingest.helpers import (
    FLEET,
    NOW,
    VINS,
    Client,
    IngestProcess,
    IngestThread,
    bms_topic,
    days_ago,
    encode,
    lake_counts,
    query,
    reading,
    spawn_ingest,
    wait_until,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "contract" / "examples"


def test_ingest_lands_readings_and_batches_exactly_once_with_the_stored_schema(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    ingest = IngestThread(broker.address, data_dir)
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        for vin in VINS:
            for seq in range(30):
                ts = NOW - timedelta(seconds=300 - 10 * seq)
                pub.publish(bms_topic(vin), encode(reading(vin, seq, ts)))
            batch = [reading(vin, s, NOW - timedelta(seconds=5)) for s in range(30, 40)]
            pub.publish(bms_topic(vin, "batch"), encode({"v": 1, "readings": batch}))
        wait_until(lambda: watcher.acks() == dict.fromkeys(VINS, 39), what="acks")
    finally:
        counters = ingest.close()
        pub.close()
        watcher.close()
    assert counters.written == 120
    assert counters.duplicates == 0
    assert lake_counts(data_dir) == (120, 120)
    files = list((data_dir / "lake" / "telemetry").rglob("*.parquet"))
    assert all(f.parent.name == f"fleet={FLEET}" for f in files)
    schema = pq.read_schema(files[0])
    assert schema.names == TELEMETRY_SCHEMA.names
    assert [f.type for f in schema] == [f.type for f in TELEMETRY_SCHEMA]
    rows = query(data_dir, "telemetry", "SELECT n_cells, cell_mv_max, worker FROM t LIMIT 1")
    assert rows == [(14, 3700, "fleetbms-ingest")]
    # The ack is retained: a vehicle connecting later reads its watermark at once.
    late = Client(broker.address, "late", subscribe=(bms_topic(VINS[0], "ack"),))
    try:
        wait_until(lambda: bool(late.messages("/ack")), what="retained ack")
        assert late.acks() == {VINS[0]: 39}
        assert late.messages("/ack")[0][2] is True
    finally:
        late.close()
    state = msgspec.json.decode(
        (data_dir / "state" / "ingest" / "fleetbms-ingest.json").read_bytes()
    )
    assert state["vins"][VINS[1]]["ranges"] == [[0, 39]]
    assert state["vins"][VINS[1]]["acked"] == 39


def _publish_stream(address: str, n_per_vin: int, done: threading.Event) -> None:
    pub = Client(address, "stream")
    try:
        for seq in range(n_per_vin):
            for vin in VINS:
                ts = NOW - timedelta(seconds=10 * (n_per_vin - seq))
                pub.publish(bms_topic(vin), encode(reading(vin, seq, ts)))
    finally:
        pub.close()
        done.set()


def test_kill_9_mid_stream_then_restart_loses_nothing(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    n_per_vin = 400
    total = n_per_vin * len(VINS)
    first = IngestProcess(data_dir, broker.address, "--flush-rows", "60")
    done = threading.Event()
    publisher = threading.Thread(target=_publish_stream, args=(broker.address, n_per_vin, done))
    publisher.start()
    try:
        wait_until(lambda: lake_counts(data_dir)[0] >= 250, what="first files")
    finally:
        first.proc.kill()  # SIGKILL: no flush, no acks, no state save
        first.wait()
    written_before = lake_counts(data_dir)[1]
    assert written_before < total
    publisher.join(60)
    assert done.is_set()
    second = IngestProcess(data_dir, broker.address, "--idle-exit", "1.5")
    rc, _, err = second.wait()
    assert rc == 0, err
    raw, distinct = lake_counts(data_dir)
    assert distinct == total  # none missing
    assert raw >= total  # redelivered-after-crash copies are removed by compaction
    rows = query(data_dir, "telemetry", "SELECT vin, min(seq), max(seq) FROM t GROUP BY vin")
    assert sorted(rows) == [(v, 0, n_per_vin - 1) for v in VINS]


class _Vehicle:
    """A minimal vehicle with a store-and-forward buffer trimmed on the retained ack."""

    def __init__(self, address: str, vin: str) -> None:
        self.vin = vin
        self.buffer: dict[int, bytes] = {}
        self.lock = threading.Lock()
        self.client = Client(address, f"veh-{vin}", subscribe=(bms_topic(vin, "ack"),))
        self.client.c.on_connect = self._on_connect
        self.client.c.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        client.subscribe([(bms_topic(self.vin, "ack"), 1)])
        self.replay()

    def _on_message(self, client, userdata, msg) -> None:
        durable = msgspec.json.decode(msg.payload)["durable_seq"]
        with self.lock:
            for seq in [s for s in self.buffer if s <= durable]:
                del self.buffer[seq]

    def replay(self) -> None:
        with self.lock:
            items = [msgspec.json.decode(self.buffer[s]) for s in sorted(self.buffer)]
        if items:
            self.client.c.publish(
                bms_topic(self.vin, "batch"), encode({"v": 1, "readings": items}), qos=1
            )

    def measure(self, seq: int) -> None:
        payload = encode(reading(self.vin, seq, NOW - timedelta(seconds=1000 - seq)))
        with self.lock:
            self.buffer[seq] = payload
        if self.client.c.is_connected():
            self.client.c.publish(bms_topic(self.vin), payload, qos=1)


def test_broker_restart_with_store_and_forward_publisher_loses_nothing(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    ingest = IngestThread(broker.address, data_dir, reconnect_max_s=1.0)
    vehicles = [_Vehicle(broker.address, vin) for vin in VINS[:2]]
    try:
        seq = 0
        for phase in ("up", "down", "up"):
            if phase == "down":
                broker.stop()
            elif seq:
                broker.start()
            for _ in range(40):
                for v in vehicles:
                    v.measure(seq)
                seq += 1
                time.sleep(0.005)
        wait_until(
            lambda: all(not v.buffer for v in vehicles), timeout=30, what="vehicle buffers drained"
        )
    finally:
        counters = ingest.close()
        for v in vehicles:
            v.client.close()
    raw, distinct = lake_counts(data_dir)
    assert distinct == 2 * seq
    assert counters.written == raw


def test_malformed_messages_are_quarantined_with_reason_and_ingest_keeps_running(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    vin = VINS[0]
    good = reading(vin, 7, NOW)
    bad_batch_item = {"v": 1, "vin": vin, "seq": 9, "ts": "yesterday"}
    cases = [
        (bms_topic(vin), (EXAMPLES / "bad_missing_seq.json").read_bytes(), "missing_field"),
        (bms_topic(vin), (EXAMPLES / "bad_not_json.bin").read_bytes(), "not_json"),
        (bms_topic(vin), (EXAMPLES / "bad_vin.json").read_bytes(), "bad_vin"),
        (bms_topic(vin), os.urandom(2000), "not_json"),
        (bms_topic(vin), b"{" + b" " * (50 * 2**20), "payload_too_large"),
        (bms_topic(VINS[1]), encode(good), "vin_mismatch"),
        (bms_topic(vin), encode({**good, "v": 2}), "unknown_version"),
        (bms_topic(vin), encode(reading(vin, 8, NOW + timedelta(days=2))), "ts_in_future"),
        ("fleet/demo/NOT-A-VIN/bms", encode(good), "bad_topic"),
        (
            bms_topic(vin, "batch"),
            encode({"v": 1, "readings": [reading(vin, 10, NOW), bad_batch_item]}),
            "bad_ts",
        ),
    ]
    ingest = IngestThread(broker.address, data_dir)
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        for topic, payload, _ in cases:
            pub.publish(topic, payload)
        pub.publish(bms_topic(vin), encode(good))  # still running: this one lands
        wait_until(lambda: watcher.acks().get(vin) == 10, 60, what="ack after the bad ones")
    finally:
        counters = ingest.close()
        pub.close()
        watcher.close()
    rows = query(
        data_dir,
        "quarantine",
        "SELECT topic, payload, reason, batch_index, source FROM t ORDER BY received_at",
    )
    assert len(rows) == len(cases)
    by_payload = {(r[0], bytes(r[1])): r for r in rows}
    for topic, payload, reason in cases[:-1]:
        row = by_payload[(topic, payload)]
        assert row[2] == reason, topic
        assert row[3] is None
        assert row[4] == "mqtt"
    batch_row = next(r for r in rows if r[3] is not None)
    assert (batch_row[2], batch_row[3]) == ("bad_ts", 1)
    assert msgspec.json.decode(bytes(batch_row[1])) == bad_batch_item
    assert sum(counters.quarantined.values()) == len(cases)
    assert counters.quarantined["not_json"] == 2
    assert lake_counts(data_dir) == (2, 2)  # seq 7 and batch item seq 10
    files = list((data_dir / "lake" / "quarantine").rglob("*.parquet"))
    assert pq.read_schema(files[0]).names == QUARANTINE_SCHEMA.names
    # seqs 8 (future) and 9 (bad ts) are in quarantine: the watermark runs past them.
    assert watcher.acks()[vin] == 10


def test_duplicates_late_readings_dirty_dates_and_a_single_alert(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    vin, other = VINS[0], VINS[1]
    hot = [True] * 8 + [False] * 4  # over 60 degC for 8 readings, then cool
    ingest = IngestThread(broker.address, data_dir)
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack", "fleet/+/+/alert"))
    try:
        for seq in range(100, 112):
            ts = NOW - timedelta(seconds=10 * (112 - seq))
            temp = 65.0 if hot[seq - 100] else 30.0
            pub.publish(bms_topic(vin), encode(reading(vin, seq, ts, temp_c=temp)))
        # duplicates (QoS 1 redelivery, vehicle replays) and a days-late replay
        pub.publish(bms_topic(vin), encode(reading(vin, 101, NOW - timedelta(seconds=100))))
        # the vehicle was offline three days ago: seqs 90..99 arrive after 100..111
        late = [reading(vin, s, days_ago(3) + timedelta(seconds=10 * s)) for s in range(90, 100)]
        pub.publish(bms_topic(vin, "batch"), encode({"v": 1, "readings": late}))
        pub.publish(bms_topic(vin, "batch"), encode({"v": 1, "readings": late[:3]}))
        pub.publish(bms_topic(other), encode(reading(other, 1, days_ago(1))))
        wait_until(
            lambda: watcher.acks() == {vin: 111, other: 1} and len(watcher.messages("/alert")) == 2,
            what="acks and alerts",
        )
    finally:
        counters = ingest.close()
        pub.close()
        watcher.close()
    assert counters.duplicates == 4
    assert lake_counts(data_dir) == (23, 23)
    parts = query(
        data_dir, "telemetry", "SELECT date::VARCHAR, count(*) FROM t GROUP BY 1 ORDER BY 1"
    )
    live_days = Counter((NOW - timedelta(seconds=10 * (112 - s))).date() for s in range(100, 112))
    expected = Counter({days_ago(3).date(): 10, days_ago(1).date(): 1}) + live_days
    assert parts == sorted((d.isoformat(), n) for d, n in expected.items())
    dirty = sorted(p.name for p in (data_dir / "state" / "dirty").iterdir())
    today = datetime.now(UTC).date()
    assert dirty == sorted(d.isoformat() for d in expected if d < today)
    assert days_ago(3).date().isoformat() in dirty
    assert (data_dir / "state" / "dirty" / dirty[0]).read_bytes() == b""
    alerts = query(
        data_dir,
        "alerts",
        "SELECT rule, event, seq, value, threshold, index_kind FROM t ORDER BY seq",
    )
    assert alerts == [
        ("over_temperature", "raised", 100, 65.0, 60.0, "sensor"),
        ("over_temperature", "cleared", 108, 30.0, 60.0, "sensor"),
    ]
    published = [msgspec.json.decode(p) for _, p, _ in watcher.messages("/alert")]
    assert [(a["rule"], a["event"], a["seq"]) for a in published] == [
        ("over_temperature", "raised", 100),
        ("over_temperature", "cleared", 108),
    ]
    assert published[0]["index"] == 0
    assert published[0]["value"] == 65.0
    files = list((data_dir / "lake" / "alerts").rglob("*.parquet"))
    assert pq.read_schema(files[0]).names == ALERT_SCHEMA.names


def test_sigterm_flushes_acknowledges_and_exits_cleanly(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    proc = IngestProcess(data_dir, broker.address, "--flush-rows", "100000", "--flush-age", "60")
    pub = Client(broker.address, "pub")
    try:
        for seq in range(20):
            pub.publish(bms_topic(VINS[0]), encode(reading(VINS[0], seq, NOW)))
        time.sleep(0.3)
        proc.proc.send_signal(signal.SIGTERM)
        rc, out, err = proc.wait()
    finally:
        pub.close()
    assert rc == 0, err
    assert '"event": "signal"' in err
    assert out.startswith("ingest stopped: 20 readings written")
    assert lake_counts(data_dir) == (20, 20)


def test_unwritable_lake_stops_acknowledging_and_recovers_by_itself(
    broker: MosquittoBroker, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = data_dir / "lake" / "telemetry"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"")  # a file where the telemetry folder must go: every write fails
    ingest = IngestThread(broker.address, data_dir)
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        for seq in range(10):
            pub.publish(bms_topic(VINS[0]), encode(reading(VINS[0], seq, NOW)))
        wait_until(lambda: "flush_failed" in caplog.text, what="flush failure logged")
        assert watcher.acks() == {}
        blocker.unlink()
        wait_until(lambda: watcher.acks() == {VINS[0]: 9}, what="recovery")
    finally:
        counters = ingest.close()
        pub.close()
        watcher.close()
    assert counters.flush_failures >= 1
    assert '"action": "not acknowledging; retrying"' in caplog.text
    assert lake_counts(data_dir) == (10, 10)


def test_shared_subscription_workers_split_the_load_and_still_ack_contiguously(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    """Two workers of one group each see part of every VIN's seqs; acks still advance."""
    workers = [
        IngestThread(broker.address, data_dir, group="g", client_id=f"worker-{i}") for i in (1, 2)
    ]
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        for seq in range(60):
            for vin in VINS:
                ts = NOW - timedelta(seconds=600 - 10 * seq)
                pub.publish(bms_topic(vin), encode(reading(vin, seq, ts)))
        wait_until(lambda: watcher.acks() == dict.fromkeys(VINS, 59), what="group acks")
    finally:
        counters = [w.close() for w in workers]
        pub.close()
        watcher.close()
    assert all(c.written > 0 for c in counters), "the group did not split the load"
    assert sum(c.written for c in counters) == 60 * len(VINS)
    assert lake_counts(data_dir) == (60 * len(VINS), 60 * len(VINS))


def test_simulator_live_through_a_broker_outage_lands_every_reading_once(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    """End to end: the simulator's vehicles publish live with their store-and-forward
    buffers, the broker goes away and comes back, and every reading they generated is in
    the lake exactly once; the acks trim the vehicles' buffers."""
    import sim

    spec = sim.FleetSpec(
        vehicles=2, days=2, fleet=FLEET, seed=21, cells=14, fault_rate=0.0, chemistry="nmc"
    )
    buffers = data_dir / "sim" / "buffer"
    ingest = IngestThread(broker.address, data_dir, reconnect_max_s=1.0)
    result: list[sim.LiveSummary] = []
    run = threading.Thread(
        target=lambda: result.append(
            sim.run_live(
                spec,
                broker.address,
                buffer_dir=buffers,
                speed=3000.0,
                start=datetime(2026, 1, 5, 0, 30, tzinfo=UTC),
                max_readings=600,
                segment_readings=50,
                drain_s=20.0,
            )
        )
    )
    try:
        run.start()
        wait_until(lambda: lake_counts(data_dir)[1] >= 100, timeout=30, what="first readings")
        broker.stop()
        time.sleep(2.5)  # the vehicles keep measuring and buffer on disk
        broker.start()
        run.join(120)
        assert not run.is_alive()
        wait_until(lambda: lake_counts(data_dir)[1] >= 600, timeout=30, what="every reading")
    finally:
        counters = ingest.close()
    summary = result[0]
    assert summary.generated == 600
    assert summary.reconnects >= 1
    assert summary.replayed > 0
    raw, distinct = lake_counts(data_dir)
    assert distinct == 600
    assert counters.written == raw
    vins = [sim.make_vin(FLEET, spec.seed, i) for i in range(2)]
    seqs = query(
        data_dir, "telemetry", "SELECT vin, min(seq), max(seq), count(*) FROM t GROUP BY vin"
    )
    per_vin = {v: (lo, hi, n) for v, lo, hi, n in seqs}
    assert set(per_vin) == set(vins)
    assert all(lo == 1 and hi == n for lo, hi, n in per_vin.values()), per_vin
    # The acks reached the vehicles: what they still hold is a tail of unacknowledged seqs.
    held = sum(len(sim.StoreAndForwardBuffer(buffers, v).buffered_seqs()) for v in vins)
    assert held < 600


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_a_drained_backlog_is_acknowledged_and_never_redelivered(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    # An offline persistent session collects a backlog larger than one chunk of messages
    # shipped to the writer; the batched PUBACKs must settle every message at the broker.
    IngestThread(broker.address, data_dir, client_id="drain").close()
    pub = Client(broker.address, "pub")
    n_per_vin = 900
    try:
        for seq in range(n_per_vin):
            for vin in VINS:
                pub.publish(bms_topic(vin), encode(reading(vin, seq, NOW)))
    finally:
        pub.close()
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        ingest = IngestThread(broker.address, data_dir, client_id="drain")
        try:
            wait_until(lambda: watcher.acks() == dict.fromkeys(VINS, n_per_vin - 1), what="acks")
        finally:
            counters = ingest.close()
    finally:
        watcher.close()
    assert counters.messages == counters.acked == n_per_vin * len(VINS)
    again = IngestThread(broker.address, data_dir, client_id="drain")
    time.sleep(1.0)
    assert again.close().messages == 0  # nothing left unacknowledged in the session
    assert lake_counts(data_dir) == (n_per_vin * len(VINS), n_per_vin * len(VINS))


def test_kill_9_of_the_writer_process_stops_ingest_without_acknowledging(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    proc = IngestProcess(data_dir, broker.address, "--flush-age", "60")
    writers = _children(proc.proc.pid)
    assert len(writers) == 1
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        for seq in range(20):
            pub.publish(bms_topic(VINS[0]), encode(reading(VINS[0], seq, NOW)))
        os.kill(writers[0], signal.SIGKILL)
        rc, _, err = proc.wait()
        assert rc != 0
        assert "ingest writer process died" in err
        assert watcher.acks() == {}
        assert lake_counts(data_dir) == (0, 0)
        # the session kept the unacknowledged readings: a restart lands them
        again = IngestProcess(data_dir, broker.address, "--idle-exit", "1.5")
        rc, out, err = again.wait()
        assert rc == 0, err
        assert out.startswith("ingest stopped: 20 readings written")
        wait_until(lambda: watcher.acks() == {VINS[0]: 19}, what="acks after restart")
    finally:
        pub.close()
        watcher.close()
    assert lake_counts(data_dir) == (20, 20)


def test_messages_with_mqtt5_properties_are_read_past_them(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [("gateway", "g-" + "x" * 200), ("fw", "1.2.3")]  # > 127 bytes
    props.ContentType = "application/json"
    props.MessageExpiryInterval = 3600
    ingest = IngestThread(broker.address, data_dir)
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        for seq in range(5):
            payload = encode(reading(VINS[0], seq, NOW))
            pub.c.publish(bms_topic(VINS[0]), payload, qos=1, properties=props).wait_for_publish(30)
        wait_until(lambda: watcher.acks() == {VINS[0]: 4}, what="acks")
    finally:
        counters = ingest.close()
        pub.close()
        watcher.close()
    assert counters.written == 5
    assert sum(counters.quarantined.values()) == 0


def test_a_whole_message_with_nan_is_quarantined_and_acknowledged_a_truncated_one_awaits(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    """A vehicle whose JSON library writes NaN for a failed sensor sends a message strict
    JSON refuses; sent again it reads the same. Once in quarantine its seq counts as
    handled, or that vehicle's ack would stop there for good and its buffer grow. A
    truncated message is not acknowledged: the vehicle's resend may be whole."""
    import json

    vin = VINS[0]
    nan_reading = json.dumps({**reading(vin, 1, NOW), "current_a": float("nan")}).encode()
    assert b"NaN" in nan_reading
    whole = encode(reading(vin, 2, NOW))
    ingest = IngestThread(broker.address, data_dir)
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        pub.publish(bms_topic(vin), encode(reading(vin, 0, NOW)))
        pub.publish(bms_topic(vin), nan_reading)
        pub.publish(bms_topic(vin), whole[: len(whole) // 2])  # seq 2, cut short
        pub.publish(bms_topic(vin), encode(reading(vin, 3, NOW)))
        wait_until(lambda: watcher.acks().get(vin) == 1, 60, what="ack past the NaN one")
        pub.publish(bms_topic(vin), b"{}")  # a later message: the ack stays at 1
        wait_until(lambda: _quarantined_rows(data_dir) == 3, 60, what="quarantine")
        assert watcher.acks()[vin] == 1
        pub.publish(bms_topic(vin), whole)  # the resend, whole
        wait_until(lambda: watcher.acks().get(vin) == 3, 60, what="ack after the resend")
    finally:
        ingest.close()
        pub.close()
        watcher.close()
    reasons = [r[0] for r in query(data_dir, "quarantine", "SELECT reason FROM t")]
    assert sorted(reasons) == ["missing_field", "not_json", "not_json"]
    assert lake_counts(data_dir) == (3, 3)  # seqs 0, 2 and 3


def test_a_whole_message_the_decoder_fails_on_is_acknowledged_a_truncated_one_awaits(
    broker: MosquittoBroker, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message the decoder raises on (a fault injected into msgspec in the writer
    process) is quarantined as decode_failed. Sent again it fails again, so once its row
    is durable its seq counts as handled, like any quarantined whole message: it used to
    stop the vehicle's contiguous ack there for good. A truncated one is not
    acknowledged (the resend may be whole), nor a reading of another VIN in the message."""
    hook = write_fault.hook_dir(tmp_path / "hook", also=("install_decoder",))
    monkeypatch.setenv("PYTHONPATH", str(hook))
    vin = VINS[0]
    faulty = reading(vin, 1, NOW)
    faulty["pack"]["mode"] = "FAULT"
    other = reading(VINS[1], 4, NOW)
    other["pack"]["mode"] = "FAULT"
    cut = reading(vin, 2, NOW)
    cut["pack"]["mode"] = "FAULT"
    whole = encode(cut)
    ingest = IngestThread(broker.address, data_dir)
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        pub.publish(bms_topic(vin), encode(reading(vin, 0, NOW)))
        pub.publish(bms_topic(vin), encode(faulty))
        pub.publish(bms_topic(vin), whole[: whole.index(b"FAULT") + 8])  # seq 2, cut short
        pub.publish(bms_topic(vin), encode(reading(vin, 3, NOW)))
        pub.publish(bms_topic(vin), encode(other))  # seq 4 of another VIN
        wait_until(lambda: watcher.acks().get(vin) == 1, 60, what="ack past the faulty one")
        pub.publish(bms_topic(vin), b"{}")  # a later message: the ack stays at 1
        wait_until(lambda: _quarantined_rows(data_dir) == 4, 60, what="quarantine")
        assert watcher.acks() == {vin: 1}
        pub.publish(bms_topic(vin), encode(reading(vin, 2, NOW)))  # the resend, whole
        wait_until(lambda: watcher.acks().get(vin) == 3, 60, what="ack after the resend")
        pub.publish(bms_topic(vin), encode(reading(vin, 4, NOW)))
        wait_until(lambda: watcher.acks().get(vin) == 4, 60, what="ack of seq 4")
    finally:
        counters = ingest.close()
        pub.close()
        watcher.close()
    assert counters.quarantined == {"decode_failed": 3, "missing_field": 1}
    reasons = [r[0] for r in query(data_dir, "quarantine", "SELECT reason FROM t ORDER BY 1")]
    assert reasons == ["decode_failed"] * 3 + ["missing_field"]
    assert lake_counts(data_dir) == (4, 4)  # seqs 0, 2, 3 and 4
    state = msgspec.json.decode(
        (data_dir / "state" / "ingest" / "fleetbms-ingest.json").read_bytes()
    )
    assert state["vins"][vin]["ranges"] == [[0, 4]]


def _quarantined_rows(data_dir: Path) -> int:
    files = list((data_dir / "lake" / "quarantine").rglob("*.parquet"))
    return sum(pq.read_metadata(f).num_rows for f in files)


def _open_sockets() -> set[str]:
    """The process's open socket descriptors (Linux /proc)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        if target.startswith("socket:"):
            out.add(target)
    return out


def test_a_stopped_subscriber_leaves_no_socket_open(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    """A long-running host (the nightly driver, a service manager's restarts, the tests)
    must get every socket back when ingest stops, not when the garbage collector gets
    round to the client: paho closes its wake-up socket pair only in ``__del__``, and
    our client sits in a cycle with its callbacks."""
    import gc

    gc.collect()
    gc.disable()  # what is open after stop is what stop left, not what a collection freed
    try:
        before = _open_sockets()
        ingest = IngestThread(broker.address, data_dir)
        ingest.close()
        left = _open_sockets() - before
    finally:
        gc.enable()
    assert left == set()


def test_a_message_the_parquet_writer_refuses_is_quarantined_and_ingest_keeps_running(
    broker: MosquittoBroker, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reading the contract accepts but the Parquet write refuses (a fault injected into
    pyarrow in the writer process) used to stop the worker, and the broker redelivered
    it after every restart. Its message is quarantined whole (write_failed), its seqs
    count for the ack, the other readings are written and the worker keeps running."""
    monkeypatch.setenv("PYTHONPATH", str(write_fault.hook_dir(tmp_path / "hook")))
    vin, other = VINS[0], VINS[1]
    marked = reading(vin, 3, NOW)
    marked["pack"]["odometer_km"] = write_fault.MARKED_KM
    batch = [reading(other, s, NOW - timedelta(seconds=50 - s)) for s in range(5)]
    batch[1]["pack"]["odometer_km"] = write_fault.MARKED_KM
    ingest = IngestThread(broker.address, data_dir)
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        for s in range(3):
            pub.publish(bms_topic(vin), encode(reading(vin, s, NOW - timedelta(seconds=9 - s))))
        pub.publish(bms_topic(vin), encode(marked))
        pub.publish(bms_topic(other, "batch"), encode({"v": 1, "readings": batch}))
        for s in range(4, 7):
            pub.publish(bms_topic(vin), encode(reading(vin, s, NOW - timedelta(seconds=9 - s))))
        wait_until(lambda: watcher.acks() == {vin: 6, other: 4}, 60, what="acks past them")
    finally:
        counters = ingest.close()
        pub.close()
        watcher.close()
    assert counters.quarantined == {"write_failed": 2}
    assert counters.written == 6
    assert lake_counts(data_dir) == (6, 6)
    q = query(data_dir, "quarantine", "SELECT topic, payload, reason, detail, source FROM t")
    detail = (
        "writing its readings to Parquet raised ArrowInvalid: "
        f"injected fault: odometer_km in [{write_fault.MARKED_KM}]"
    )
    assert sorted((r[0], bytes(r[1]), r[2], r[3], r[4]) for r in q) == [
        (bms_topic(vin), encode(marked), "write_failed", detail, "mqtt"),
        (
            bms_topic(other, "batch"),
            encode({"v": 1, "readings": batch}),
            "write_failed",
            detail,
            "mqtt",
        ),
    ]


def test_messages_failing_the_conversion_the_alerts_or_the_quarantine_write_do_not_stop_ingest(
    broker: MosquittoBroker, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the writer process (faults injected into pyarrow.array, numpy.argmax and the
    Parquet writer of a quarantine detail outside ASCII): a message whose readings cannot
    be converted to Arrow is quarantined (write_failed) and acked past, one whose alerts
    fail stays stored and is recorded (alert_failed), a rejected message on a topic
    outside ASCII is quarantined with its text escaped. Each used to stop the worker, and
    the broker redelivered it after every restart."""
    also = ("install_conversion", "install_alert", "install_text")
    monkeypatch.setenv("PYTHONPATH", str(write_fault.hook_dir(tmp_path / "hook", also=also)))
    vin = VINS[0]
    unconvertible = reading(vin, 3, NOW - timedelta(seconds=6))
    unconvertible["pack"]["odometer_km"] = write_fault.CONVERSION_KM
    hot = reading(vin, 4, NOW - timedelta(seconds=5), temp_c=write_fault.ALERT_TEMP_C)
    odd_topic = f"fleet/d\u00e9mo/{vin}/bms"
    ingest = IngestThread(broker.address, data_dir)
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        for s in range(3):
            pub.publish(bms_topic(vin), encode(reading(vin, s, NOW - timedelta(seconds=9 - s))))
        pub.publish(bms_topic(vin), encode(unconvertible))
        pub.publish(bms_topic(vin), encode(hot))
        pub.publish(odd_topic, encode(reading(vin, 5, NOW)))
        for s in (5, 6):
            pub.publish(bms_topic(vin), encode(reading(vin, s, NOW - timedelta(seconds=9 - s))))
        wait_until(lambda: watcher.acks() == {vin: 6}, 60, what="the ack past them")
    finally:
        counters = ingest.close()
        pub.close()
        watcher.close()
    assert counters.quarantined == {"write_failed": 1, "alert_failed": 1, "bad_topic": 1}
    assert counters.written == 6
    assert lake_counts(data_dir) == (6, 6)
    q = query(data_dir, "quarantine", "SELECT reason, topic, payload FROM t ORDER BY reason")
    assert [(r[0], r[1], bytes(r[2])) for r in q] == [
        ("alert_failed", bms_topic(vin), encode(hot)),
        ("bad_topic", f"fleet/d\\xe9mo/{vin}/bms", encode(reading(vin, 5, NOW))),
        ("write_failed", bms_topic(vin), encode(unconvertible)),
    ]


def test_a_quarantine_row_refused_even_escaped_is_kept_as_a_dump_and_ingest_keeps_running(
    broker: MosquittoBroker, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quarantine row the Parquet writer refuses even with its text escaped (a fault
    injected into pyarrow in the writer process for a topic, which escaping keeps) used to
    stop the worker, and the broker redelivered its message after every restart. It is
    kept as a JSON dump beside the quarantine files (every field, the raw bytes exactly,
    both errors in the detail), counted (counters, ``fleetbms status``), its message
    acknowledged like any quarantined one; the other rows are stored as Parquet and the
    worker keeps running."""
    import json

    from click.testing import CliRunner

    from ingest import ingest_status
    from pipeline import cli

    hook = write_fault.hook_dir(tmp_path / "hook", also=("install_topic",))
    monkeypatch.setenv("PYTHONPATH", str(hook))
    vin, other = VINS[0], VINS[1]
    refused = f"fleet/{write_fault.REFUSED_TOPIC}/{other}/bms"
    old_version = encode({**reading(other, 0, NOW), "v": 2})
    garbage = b"\xff\xfe not json \x00"
    ingest = IngestThread(broker.address, data_dir)
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        for s in range(2):
            pub.publish(bms_topic(vin), encode(reading(vin, s, NOW - timedelta(seconds=9 - s))))
        pub.publish(bms_topic(vin), b"{}")
        pub.publish(refused, old_version)
        pub.publish(refused, garbage)
        wait_until(lambda: watcher.acks() == {vin: 1, other: 0}, 60, what="acks past them")
        pub.publish(bms_topic(vin), encode(reading(vin, 2, NOW)))  # the worker runs on
        wait_until(lambda: watcher.acks().get(vin) == 2, 60, what="the next ack")
    finally:
        counters = ingest.close()
        pub.close()
        watcher.close()
    reasons = {"missing_field": 1, "not_json": 1, "unknown_version": 1}
    assert counters.quarantined == reasons
    assert counters.quarantine_dumps == 2
    assert lake_counts(data_dir) == (3, 3)
    stored = query(data_dir, "quarantine", "SELECT reason, topic, payload FROM t")
    assert [(r[0], r[1], bytes(r[2])) for r in stored] == [("missing_field", bms_topic(vin), b"{}")]
    dumps = [json.loads(p.read_bytes()) for p in (data_dir / "lake").rglob("quarantine/*/*.json")]
    dumps.sort(key=lambda d: d["reason"])
    assert [(d["reason"], d["topic"], d["source"], d["batch_index"]) for d in dumps] == [
        ("not_json", refused, "mqtt", None),
        ("unknown_version", refused, "mqtt", None),
    ]
    assert [d["payload"].encode("utf-8", "surrogateescape") for d in dumps] == [
        garbage,
        old_version,
    ]
    why = (
        "[kept as a JSON dump: writing it raised ArrowInvalid: injected fault: a refused "
        "topic; with its text escaped, ArrowInvalid: injected fault: a refused topic] "
    )
    assert all(d["detail"].startswith(why) for d in dumps), dumps
    status = ingest_status(data_dir / "lake", data_dir / "state")
    assert (status.quarantined, status.dumped, status.unreadable_files) == (reasons, 2, 0)
    shown = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "status"])
    assert shown.exit_code == 0, shown.output
    assert "quarantined: 3 (missing_field=1, not_json=1, unknown_version=1)" in shown.output
    assert "  2 kept as JSON dumps (the Parquet writer refused them): " in shown.output


def test_a_failed_connection_is_logged_with_its_reason(data_dir: Path) -> None:
    """Nothing listens on the port: each retry's event says so, for the operator to act."""
    proc = spawn_ingest(data_dir, f"127.0.0.1:{free_port()}")
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if b'"event": "connect_failed"' in line:
                event = json.loads(line)
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert event["reason"] == "Connection refused"
    assert event["retry"] == "with backoff"
