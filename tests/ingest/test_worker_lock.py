"""One worker id per data directory: a second ``fleetbms ingest`` or ``import`` refuses."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from tests.broker import MosquittoBroker
from tests.ingest.helpers import (
    NOW,
    VINS,
    Client,
    IngestProcess,
    bms_topic,
    encode,
    lake_counts,
    reading,
    wait_until,
)
from tests.pipeline.nightly_data import fleetbms


def test_a_second_ingest_with_the_same_worker_id_refuses_and_the_first_runs_on(
    broker: MosquittoBroker, data_dir: Path, tmp_path: Path
) -> None:
    first = IngestProcess(data_dir, broker.address, "--client-id", "twin")
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        second = fleetbms(data_dir, "ingest", "--broker", broker.address, "--client-id", "twin")
        assert second.returncode == 1
        assert second.stderr.startswith("Error: another ingest or import with worker id 'twin'")
        assert f"(pid {first.proc.pid})" in second.stderr
        # another worker id on the same data directory is allowed
        dump = tmp_path / "dump.jsonl"
        dump.write_bytes(encode(reading(VINS[1], 0, NOW)) + b"\n")
        assert fleetbms(data_dir, "import", str(dump)).returncode == 0
        for seq in range(20):
            pub.publish(bms_topic(VINS[0]), encode(reading(VINS[0], seq, NOW)))
        wait_until(lambda: watcher.acks().get(VINS[0]) == 19, 60, what="acks of the first")
    finally:
        first.proc.send_signal(signal.SIGTERM)
        rc, _out, err = first.wait()
        pub.close()
        watcher.close()
    assert rc == 0, err
    assert '"event": "disconnected"' not in err  # nobody took its session over
    assert lake_counts(data_dir) == (21, 21)
    # the lock goes with the process: the same id starts again
    again = IngestProcess(data_dir, broker.address, "--client-id", "twin")
    again.proc.send_signal(signal.SIGTERM)
    assert again.wait()[0] == 0


def test_a_metrics_port_in_use_is_one_error_line_and_releases_the_worker_id(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        r = fleetbms(
            data_dir, "ingest", "--broker", broker.address, "--metrics-port", port,
            "--idle-exit", "1",
        )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"Error: cannot serve metrics on port {port}: ")
    assert len(r.stderr.splitlines()) == 1, r.stderr
    # nothing holds the worker id: the same worker starts and stops cleanly
    again = fleetbms(data_dir, "ingest", "--broker", broker.address, "--idle-exit", "1")
    assert again.returncode == 0, again.stderr
