"""``fleetbms status``: last runs, running or interrupted runs, dirty dates, sizes, lag."""

from __future__ import annotations

import json
import signal
import time
from datetime import timedelta
from pathlib import Path

import bms
from tests.broker import MosquittoBroker
from tests.ingest.helpers import (
    NOW,
    VINS,
    Client,
    IngestProcess,
    bms_topic,
    encode,
    reading,
    wait_until,
)
from tests.pipeline.nightly_data import (
    day_table,
    fleetbms,
    kill9,
    start_paused,
    with_received,
    write_flushes,
)
from tests.pipeline.test_nightly import RUN_DAY


def test_status_shows_runs_dirty_dates_sizes_and_ingest_lag(tmp_path: Path):
    d = tmp_path / "data"
    assert json.loads(fleetbms(d, "status", "--json").stdout)["open_anomalies"] is None
    write_flushes(day_table(RUN_DAY), d / "lake")
    assert fleetbms(d, "nightly", "--date", RUN_DAY.isoformat()).returncode == 0
    hour_ago_ms = int(time.time() * 1000) - 3_600_000
    late = with_received(day_table(RUN_DAY - timedelta(days=3)).slice(0, 10), hour_ago_ms)
    write_flushes(late, d / "lake", flushes=1, prefix="late")
    bms.atomic_write_bytes(b"", d / "state" / "dirty" / (RUN_DAY - timedelta(days=3)).isoformat())

    r = fleetbms(d, "status", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert (st["data_dir"], st["data_dir_exists"]) == (str(d), True)
    assert [(x["run_date"], x["status"], x["exit_code"]) for x in st["runs"]] == [
        (RUN_DAY.isoformat(), "ok", 0)
    ]
    assert st["running"] is None
    assert st["dirty_dates"] == [(RUN_DAY - timedelta(days=3)).isoformat()]
    assert st["sizes_bytes"]["lake/telemetry"] > 0
    assert st["sizes_bytes"]["lake/metrics"] > 0
    assert st["sizes_bytes"]["archive"] == 0
    assert 3600 <= st["ingest_lag_s"] < 3600 + 300
    assert st["open_anomalies"] == 0  # scored by the nightly's anomaly stage, none flagged

    text = fleetbms(d, "status").stdout
    assert text.startswith(f"data directory: {d}\nrunning: no\n")
    assert f"date {RUN_DAY}  fleet demo  ok (exit 0)" in text
    assert f"dirty dates: {RUN_DAY - timedelta(days=3)}" in text
    assert "open anomalies: 0" in text


def test_status_of_a_data_directory_that_does_not_exist_says_so(tmp_path: Path):
    """Exit 0 (a fresh install has nothing yet), but all zeros must not read as a healthy
    idle install when the directory is simply not there (a mistyped --data-dir)."""
    d = tmp_path / "does" / "not" / "exist"
    r = fleetbms(d, "status")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.splitlines()[0] == (
        f"data directory: {d} does not exist yet: nothing has run there "
        "(wrong --data-dir or FLEETBMS_DATA_DIR?)"
    )
    r = fleetbms(d, "status", "--json")
    assert (r.returncode, r.stderr) == (0, "")
    st = json.loads(r.stdout)
    assert (st["data_dir"], st["data_dir_exists"]) == (str(d), False)
    assert (st["runs"], st["open_anomalies"], st["ingest_lag_s"]) == ([], None, None)
    assert not (tmp_path / "does").exists()  # status only reads
    # an existing, still empty, directory is a fresh install, not a missing one
    d.mkdir(parents=True)
    assert json.loads(fleetbms(d, "status", "--json").stdout)["data_dir_exists"] is True
    assert fleetbms(d, "status").stdout.startswith(f"data directory: {d}\nrunning: no\n")


def test_status_sizes_cover_every_part_of_the_data_directory(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """The sizes add up to the data directory's: simulator registry and truth, the
    anomaly features and the live simulator's buffers are parts of it too."""
    d = tmp_path / "data"
    sim = ("simulate", "--vehicles", "2", "--cells", "14", "--start", "2026-01-01")
    r = fleetbms(d, *sim, "--to-lake", "--days", "3")
    assert r.returncode == 0, r.stderr
    r = fleetbms(
        d, *sim, "--live", "--broker", broker.address, "--speed", "3000", "--max-readings", "50"
    )
    assert r.returncode == 0, r.stderr
    r = fleetbms(d, "nightly", "--date", "2026-01-03")
    assert r.returncode == 0, r.stderr
    r = fleetbms(d, "status", "--json")
    assert r.returncode == 0, r.stderr
    sizes = json.loads(r.stdout)["sizes_bytes"]
    for part in ("lake/registry", "lake/anomaly_features", "truth", "sim"):
        assert sizes[part] > 0, part
    assert sum(sizes.values()) == sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    text = fleetbms(d, "status").stdout
    assert "\n  lake/registry " in text
    assert "\n  truth " in text


def test_status_tells_a_running_run_from_a_killed_one(tmp_path: Path):
    d = tmp_path / "data"
    write_flushes(day_table(RUN_DAY), d / "lake")
    proc = start_paused(d, "before:reconciliation", tmp_path / "paused", "--date", "2026-11-25")
    running = json.loads(fleetbms(d, "status", "--json").stdout)
    assert running["running"].endswith(f"(pid {proc.pid})")
    kill9(proc)
    after = json.loads(fleetbms(d, "status", "--json").stdout)
    assert after["running"] is None
    assert after["runs"][0]["status"] == "interrupted"


def test_status_shows_ingest_workers_and_the_quarantine_by_reason(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    d = tmp_path / "data"
    d.mkdir()
    vin = VINS[0]
    worker = IngestProcess(d, broker.address, "--client-id", "ingest-1")
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        pub.publish(bms_topic(vin), b"{not json")
        pub.publish(bms_topic(vin), encode({**reading(vin, 1, NOW), "v": 2}))
        pub.publish(bms_topic(vin), encode(reading(vin, 0, NOW)))
        wait_until(lambda: watcher.acks().get(vin) == 1, 60, what="ack past the bad v=2")
        pub.publish(bms_topic(vin), encode({**reading(vin, 2, NOW), "seq": "2"}))  # the newest
        pub.publish(bms_topic(vin), encode(reading(vin, 3, NOW)))
        wait_until(
            lambda: (
                json.loads(fleetbms(d, "status", "--json").stdout)["ingest"]["quarantined_total"]
                == 3
            ),
            60,
            what="quarantine files",
        )
        running = json.loads(fleetbms(d, "status", "--json").stdout)["ingest"]
        text = fleetbms(d, "status").stdout
    finally:
        worker.proc.send_signal(signal.SIGTERM)
        rc, _out, err = worker.wait()
        pub.close()
        watcher.close()
    assert rc == 0, err
    assert running["quarantined"] == {"not_json": 1, "unknown_version": 1, "wrong_type": 1}
    newest = running["newest_quarantined"]
    assert (newest["reason"], newest["topic"]) == ("wrong_type", bms_topic(vin))
    assert "$.seq" in newest["detail"]
    [w] = running["workers"]
    assert (w["worker"], w["running_pid"], w["vehicles"]) == ("ingest-1", worker.proc.pid, 1)
    assert w["last_saved"] is not None
    assert f"ingest-1         running (pid {worker.proc.pid}), 1 vehicle, last flush" in text
    assert "quarantined: 3 (not_json=1, unknown_version=1, wrong_type=1)" in text
    assert "newest " in text
    assert "wrong_type on fleet/demo/" in text
    stopped = json.loads(fleetbms(d, "status", "--json").stdout)["ingest"]
    assert stopped["workers"][0]["running_pid"] is None
    assert "ingest-1         stopped, 1 vehicle" in fleetbms(d, "status").stdout


def test_status_shows_the_running_run_however_few_runs_are_listed(tmp_path: Path):
    """``--runs 0`` lists no runs but must not say ``running: no`` while one runs; a run
    without an exit code (running, or killed) shows none, not ``exit None``."""
    d = tmp_path / "data"
    write_flushes(day_table(RUN_DAY), d / "lake")
    proc = start_paused(d, "before:reconciliation", tmp_path / "paused", "--date", "2026-11-25")
    try:
        text = fleetbms(d, "status", "--runs", "0").stdout.splitlines()
        running = fleetbms(d, "status", "--runs", "0", "--json").stdout
        line = fleetbms(d, "status", "--runs", "1").stdout.splitlines()[3]
    finally:
        kill9(proc)  # a paused run waits forever
    assert text[1].startswith("running: run ")
    assert text[1].endswith(f"(pid {proc.pid})")
    assert text[2] == "last runs: none"
    assert json.loads(running)["running"]
    assert line.endswith("  date 2026-11-25  fleet demo  running")
    line = fleetbms(d, "status", "--runs", "1").stdout.splitlines()[3]
    assert line.endswith("  date 2026-11-25  fleet demo  interrupted")


def test_status_json_gives_the_newest_reading_time_in_iso_8601(tmp_path: Path):
    """A machine reads ``--json``: the time is ISO 8601 (``T``), as the text output and
    the workers' ``last_saved`` give it, not Python's ``str()`` of a datetime."""
    d = tmp_path / "data"
    received_ms = 1_796_000_000_123
    write_flushes(with_received(day_table(RUN_DAY), received_ms), d / "lake", flushes=1)
    st = json.loads(fleetbms(d, "status", "--json").stdout)
    assert st["newest_received_at"] == "2026-11-30T00:53:20.123000+00:00"
