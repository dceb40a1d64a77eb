"""The nightly batch as cron runs it: a ``fleetbms nightly`` subprocess on a real lake."""

from __future__ import annotations

import json
import shutil
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bms
from tests.pipeline.nightly_data import (
    VINS,
    day_table,
    fleetbms,
    kill9,
    mtimes,
    snapshot,
    start_paused,
    with_received,
    write_flushes,
)

RUN_DAY = date(2026, 11, 25)
OLD_DAY = RUN_DAY - timedelta(days=40)  # archived by retention (archive_after_days=30)
RUN_ENV = {
    "FLEETBMS_RETENTION__ARCHIVE_AFTER_DAYS": "30",
    "FLEETBMS_RETENTION__PURGE_AFTER_DAYS": "365",
    # Each day's ~430 readings are compacted into two files of disjoint VINs, as a big
    # fleet's day is, so that every later stage reads a split partition.
    "FLEETBMS_NIGHTLY__COMPACT_FILE_ROWS": "200",
}


def build_lake(data_dir: Path) -> None:
    """Run day with a gap and redelivered duplicates, the day before, an old day."""
    lake = data_dir / "lake"
    today = day_table(RUN_DAY, skip_seq={VINS[1]: [5, 6, 7]})
    write_flushes(today, lake, flushes=4)
    write_flushes(today.slice(0, 40), lake, flushes=1, prefix="w2")  # QoS 1 redelivery
    write_flushes(day_table(RUN_DAY - timedelta(days=1)), lake, flushes=3)
    write_flushes(day_table(OLD_DAY), lake, flushes=2)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("base") / "data"
    build_lake(d)
    return d


@pytest.fixture(scope="module")
def reference(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Outputs of one uninterrupted run."""
    d = tmp_path_factory.mktemp("ref") / "data"
    shutil.copytree(base_dir, d)
    r = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat(), **RUN_ENV)
    assert r.returncode == 3, r.stderr
    return snapshot(d / "lake", d / "archive", d / "reports")


def copy_of(base_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "data"
    shutil.copytree(base_dir, d)
    return d


def last_record(data_dir: Path) -> dict:
    runs = sorted((data_dir / "state" / "runs").glob("*.json"))
    return json.loads(runs[-1].read_text())


def test_nightly_rerun_does_no_work_and_changes_no_output(base_dir: Path, tmp_path: Path):
    d = copy_of(base_dir, tmp_path)
    first = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat(), **RUN_ENV)
    assert first.returncode == 3, first.stderr  # VIN 2 misses three readings
    rec = last_record(d)
    status = {s["name"]: s["status"] for s in rec["stages"]}
    assert status == {
        "compaction": "done",
        "reconciliation": "done",
        "analytics": "done",
        "anomalies": "done",
        "reports": "done",
        "audit": "not configured",
        "retention": "done",
    }
    assert rec["exit_code"] == 3
    assert rec["dates"] == ["2026-11-24", "2026-11-25"]
    assert rec["versions"]["pyarrow"]
    compaction = rec["stages"][0]
    assert compaction["counts"]["duplicates"] == 40
    assert compaction["counts"]["files_in"] == 8
    assert compaction["counts"]["files_out"] == 4
    assert [p.name[-13:] for p in bms.telemetry_files(d / "lake", RUN_DAY)] == [
        "-1of2.parquet",
        "-2of2.parquet",
    ]
    before = snapshot(d / "lake", d / "archive", d / "reports")
    times = mtimes(d / "lake") | mtimes(d / "archive") | mtimes(d / "reports")

    second = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat(), **RUN_ENV)
    assert second.returncode == 3, second.stderr
    rec2 = last_record(d)
    assert rec2["run_id"] != rec["run_id"]
    assert [s["status"] for s in rec2["stages"] if s["name"] != "audit"] == ["up to date"] * 6
    assert snapshot(d / "lake", d / "archive", d / "reports") == before
    assert mtimes(d / "lake") | mtimes(d / "archive") | mtimes(d / "reports") == times


def test_nightly_outputs_sorted_deduplicated_telemetry_and_gap_table(
    base_dir: Path, tmp_path: Path
):
    d = copy_of(base_dir, tmp_path)
    assert fleetbms(d, "nightly", "--date", RUN_DAY.isoformat()).returncode == 3
    files = bms.telemetry_files(d / "lake", RUN_DAY)
    assert len(files) == 1
    assert files[0].name.startswith("compacted-")
    t = pq.read_table(files[0])
    keys = list(zip(t["vin"].to_pylist(), t["ts"].to_pylist(), strict=True))
    assert keys == sorted(keys)
    assert t.num_rows == 3 * 144 - 3
    assert len(set(zip(t["vin"].to_pylist(), t["seq"].to_pylist(), strict=True))) == t.num_rows
    gaps = pq.read_table(
        d / f"lake/metrics/reconciliation_gaps/date={RUN_DAY}/fleet=demo/part.parquet"
    ).to_pylist()
    assert [(g["vin"], g["readings_missing"], g["gap_s"]) for g in gaps] == [(VINS[1], 3, 2400.0)]
    per_vin = pq.read_table(
        d / f"lake/metrics/reconciliation/date={RUN_DAY}/fleet=demo/part.parquet"
    ).to_pylist()
    assert [(r["vin"], r["duplicates_removed"], r["readings_missing"]) for r in per_vin] == [
        (VINS[0], 40, 0),
        (VINS[1], 0, 3),
        (VINS[2], 0, 0),
    ]


def test_nightly_without_gaps_exits_0(tmp_path: Path):
    d = tmp_path / "data"
    write_flushes(day_table(RUN_DAY), d / "lake")
    r = fleetbms(
        d,
        "nightly",
        "--date",
        RUN_DAY.isoformat(),
        "--fleet",
        "demo",
        # any case and spacing, as the config check reads it
        FLEETBMS_NIGHTLY__SKIP_STAGES=" Analytics ",
    )
    assert r.returncode == 0, r.stderr
    assert {s["name"]: s["status"] for s in last_record(d)["stages"]}["analytics"] == "skipped"
    lines = [json.loads(x) for x in r.stdout.splitlines()]  # JSON log lines off a terminal
    assert lines[-1]["event"] == "run_end"
    assert lines[-1]["exit_code"] == 0


def test_nightly_for_a_date_without_telemetry_does_the_rest_and_exits_66(tmp_path: Path):
    """A whole day without telemetry is not a success (SuccessExitStatus=3 in the README's
    systemd unit): ingest was down, or the date is wrong. The other work is still done."""
    d = tmp_path / "data"
    before = RUN_DAY - timedelta(days=1)
    write_flushes(day_table(before), d / "lake")
    r = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat())
    assert r.returncode == 66, r.stderr
    assert r.stderr == (
        f"Error: no telemetry for fleet demo on {RUN_DAY} in {d / 'lake' / 'telemetry'} "
        f"(its telemetry in the lake spans {before}..{before}); is ingest running, "
        "or is the date wrong?\n"
    )
    rec = last_record(d)
    assert (rec["status"], rec["exit_code"]) == ("no telemetry for the run date", 66)
    assert rec["dates"] == [before.isoformat(), RUN_DAY.isoformat()]  # lookback: compacted
    assert [p.name[:10] for p in bms.telemetry_files(d / "lake", before)] == ["compacted-"]


@pytest.mark.parametrize("make_dir", [True, False])
def test_nightly_without_a_lake_is_one_line_error_and_writes_nothing(
    tmp_path: Path, make_dir: bool
):
    d = tmp_path / "data"
    if make_dir:
        d.mkdir()
    r = fleetbms(d, "nightly")
    assert r.returncode == 1
    assert r.stderr == (
        f"Error: no lake at {d / 'lake'}: nothing was ingested, imported or simulated into "
        f"{d} (wrong --data-dir?)\n"
    )
    assert r.stdout == ""
    assert sorted(tmp_path.rglob("*")) == ([d] if make_dir else [])


def test_nightly_for_an_unknown_fleet_is_one_line_error_and_writes_nothing(
    base_dir: Path, tmp_path: Path
):
    d = copy_of(base_dir, tmp_path)
    before = snapshot(d)
    r = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat(), "--fleet", "nope")
    assert r.returncode == 1
    assert r.stderr == (
        f"Error: unknown fleet 'nope': no telemetry or registered vehicle of it under "
        f"{d / 'lake'}; known fleets: demo\n"
    )
    assert snapshot(d) == before
    assert not (d / "state").exists()


def test_nightly_bad_fleet_and_bad_date_are_one_line_errors(tmp_path: Path):
    r = fleetbms(tmp_path / "data", "nightly", "--fleet", "no/slash")
    assert r.returncode == 1
    assert r.stderr == "Error: fleet 'no/slash' is not 1-64 characters of [A-Za-z0-9_-]\n"
    for bad in ("2026-13-01", "2026-02-30", "25.11.2026"):
        r = fleetbms(tmp_path / "data", "nightly", "--date", bad)
        assert r.returncode == 2
        assert r.stderr == (
            f"Error: Invalid value for '--date': invalid date {bad} (expected YYYY-MM-DD)\n"
        )


def test_nightly_refuses_a_future_date_and_deletes_nothing(base_dir: Path, tmp_path: Path):
    """Retention counts ages from the run date: a run for 2999 would purge everything."""
    d = copy_of(base_dir, tmp_path)
    before = snapshot(d)
    r = fleetbms(d, "nightly", "--date", "2999-01-01", **RUN_ENV)
    assert r.returncode == 2
    assert r.stderr.startswith("Error: Invalid value for '--date': 2999-01-01 is in the future ")
    assert len(r.stderr.splitlines()) == 1
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    assert snapshot(d) == before
    assert not (d / "state").exists()


# Every stage boundary (before:X is the same state as after: the previous stage, so only
# the first is listed) and the steps inside compaction and retention.
PAUSE_POINTS = [
    "before:compaction",
    "compaction:journaled",
    "compaction:before-commit",
    "compaction:first-renamed",
    "compaction:committed",
    "after:compaction",
    "after:reconciliation",
    "after:analytics",
    "after:anomalies",
    "after:reports",
    "retention:archived-file",
    "after:retention",
]


@pytest.mark.parametrize("point", PAUSE_POINTS)
def test_kill9_then_rerun_gives_the_bytes_of_an_uninterrupted_run(
    point: str, base_dir: Path, reference: dict[str, str], tmp_path: Path
):
    d = copy_of(base_dir, tmp_path)
    proc = start_paused(d, point, tmp_path / "paused", "--date", RUN_DAY.isoformat(), **RUN_ENV)
    kill9(proc)
    r = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat(), **RUN_ENV)
    assert r.returncode == 3, r.stderr
    assert snapshot(d / "lake", d / "archive", d / "reports") == reference
    assert not list((d / "state" / "nightly" / "journal").glob("*.json"))
    records = sorted((d / "state" / "runs").glob("*.json"))
    assert json.loads(records[0].read_text())["status"] == "running"  # the killed one
    assert json.loads(records[1].read_text())["status"] == "ok, data gaps"


def test_a_day_compacted_into_one_file_gives_the_outputs_of_the_split_day(
    base_dir: Path, reference: dict[str, str], tmp_path: Path
):
    d = copy_of(base_dir, tmp_path)
    one_file = {k: v for k, v in RUN_ENV.items() if k != "FLEETBMS_NIGHTLY__COMPACT_FILE_ROWS"}
    r = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat(), **one_file)
    assert r.returncode == 3, r.stderr
    assert len(bms.telemetry_files(d / "lake", RUN_DAY)) == 1

    def outputs(files: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in files.items() if "telemetry/" not in k}

    got = snapshot(d / "lake", d / "archive", d / "reports")
    assert outputs(got) == outputs(reference)
    assert len(outputs(got)) > 20


def test_second_concurrent_run_exits_75_and_a_killed_run_leaves_no_stale_lock(
    base_dir: Path, tmp_path: Path
):
    d = copy_of(base_dir, tmp_path)
    first = start_paused(d, "before:reconciliation", tmp_path / "paused", "--date", "2026-11-25")
    second = fleetbms(d, "nightly", "--date", "2026-11-25")
    assert second.returncode == 75
    assert second.stderr.startswith(
        f"Error: another nightly batch is running (pid {first.pid}, "
        "nightly 2026-11-25 fleet demo, since "
    )
    assert second.stderr.endswith(f"lock {d / 'state' / 'nightly.lock'}\n")
    erase = fleetbms(d, "erase", "--vin", VINS[0])
    assert erase.returncode == 75
    kill9(first)
    third = fleetbms(d, "nightly", "--date", "2026-11-25")
    assert third.returncode == 3, third.stderr


def test_late_data_for_an_old_date_recomputes_that_date(tmp_path: Path):
    d = tmp_path / "data"
    lake = d / "lake"
    old = RUN_DAY - timedelta(days=5)
    full = day_table(old)
    missing = full.slice(10, 20)  # vehicle offline: 20 readings buffered
    sent = full.filter(pa.array([not (10 <= i < 30) for i in range(full.num_rows)]))
    write_flushes(sent, lake)
    for k in range(1, 6):  # the days after it complete (a day without any is a gap too)
        write_flushes(day_table(old + timedelta(days=k), seed=k), lake)
    assert fleetbms(d, "nightly", "--date", old.isoformat()).returncode == 3
    recon = lake / f"metrics/reconciliation/date={old}/fleet=demo/part.parquet"
    assert pq.read_table(recon)["readings_missing"].to_pylist() == [20, 0, 0]
    assert fleetbms(d, "nightly", "--date", RUN_DAY.isoformat()).returncode == 0

    # The replay arrives days later; ingest marks the date dirty.
    replay_ms = int((RUN_DAY + timedelta(days=1) - date(1970, 1, 1)).total_seconds() * 1000)
    write_flushes(with_received(missing, replay_ms), lake, flushes=1, prefix="late")
    bms.atomic_write_bytes(b"", d / "state" / "dirty" / old.isoformat())
    r = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat())
    assert r.returncode == 0, r.stdout + r.stderr
    rec = last_record(d)
    assert rec["dates"] == [old.isoformat(), RUN_DAY.isoformat()]
    assert rec["dirty_dates"] == [old.isoformat()]
    table = pq.read_table(recon)
    assert table["readings_missing"].to_pylist() == [0, 0, 0]
    assert table["readings_late"].to_pylist() == [20, 0, 0]
    assert not (d / "state" / "dirty" / old.isoformat()).exists()
    assert len(bms.telemetry_files(lake, old)) == 1
    assert pq.read_table(bms.telemetry_files(lake, old)[0]).num_rows == full.num_rows


def test_dirty_marker_stays_while_another_fleet_of_that_date_is_not_compacted(tmp_path: Path):
    d = tmp_path / "data"
    old = RUN_DAY - timedelta(days=9)
    write_flushes(day_table(old), d / "lake")
    write_flushes(day_table(old, fleet="buses", vins=["MAT612345NEX00009"]), d / "lake")
    bms.atomic_write_bytes(b"", d / "state" / "dirty" / old.isoformat())
    # RUN_DAY has no telemetry (exit 66); the dirty date is done all the same.
    assert fleetbms(d, "nightly", "--date", RUN_DAY.isoformat()).returncode == 66
    assert (d / "state" / "dirty" / old.isoformat()).exists()  # buses still to do
    assert (
        fleetbms(d, "nightly", "--date", RUN_DAY.isoformat(), "--fleet", "buses").returncode == 66
    )
    assert not (d / "state" / "dirty" / old.isoformat()).exists()


def test_nights_missed_since_the_last_run_are_caught_up(tmp_path: Path):
    """cron did not run for three nights (server down): the next run takes on every date
    since the last completed run, beyond ``nightly.lookback_days``; none is left
    uncompacted, unreconciled and without its report."""
    d = tmp_path / "data"
    lake = d / "lake"
    first = RUN_DAY - timedelta(days=4)
    for k in range(5):
        write_flushes(day_table(first + timedelta(days=k), seed=k), lake)
    assert fleetbms(d, "nightly", "--date", first.isoformat()).returncode == 0
    r = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat())
    assert r.returncode == 0, r.stderr
    days = [(first + timedelta(days=k)).isoformat() for k in range(1, 5)]
    assert last_record(d)["dates"] == days
    for day in days:
        files = bms.telemetry_files(lake, date.fromisoformat(day))
        assert [p.name[:10] for p in files] == ["compacted-"]
        assert (lake / f"metrics/reconciliation/date={day}/fleet=demo/part.parquet").is_file()
        assert (d / f"reports/date={day}/fleet-demo.csv").is_file()


def test_every_date_a_run_catches_up_gets_its_audit_bundle(tmp_path: Path):
    """With audit bundles on, the nights cron missed get theirs too (an insurer's series
    of daily bundles has no hole), and a run with nothing new exports none again."""
    d = tmp_path / "data"
    lake = d / "lake"
    first = RUN_DAY - timedelta(days=3)
    for k in range(4):
        write_flushes(day_table(first + timedelta(days=k), seed=k), lake)
    assert fleetbms(d, "keys", "generate").returncode == 0
    env = {"FLEETBMS_REPORTS__AUDIT_ENABLED": "1"}
    assert fleetbms(d, "nightly", "--date", first.isoformat(), **env).returncode == 0
    r = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat(), **env)
    assert r.returncode == 0, r.stderr
    days = [first + timedelta(days=k) for k in range(4)]
    manifests = [d / f"reports/date={day}/audit-demo/manifest.json" for day in days]
    assert all(m.is_file() for m in manifests)
    audit = next(s for s in last_record(d)["stages"] if s["name"] == "audit")
    assert audit["counts"]["bundles"] == 3
    for day, manifest in zip(days, manifests, strict=True):
        ok = fleetbms(
            d,
            "audit",
            "verify",
            str(manifest.parent),
            "--public-key",
            str(d / "state/keys/signing.pub"),
        )
        assert ok.returncode == 0, (day, ok.stdout + ok.stderr)
    before = [m.stat().st_mtime_ns for m in manifests]
    assert fleetbms(d, "nightly", "--date", RUN_DAY.isoformat(), **env).returncode == 0
    assert [m.stat().st_mtime_ns for m in manifests] == before


def test_a_missed_night_without_any_telemetry_is_reported_as_a_gap(tmp_path: Path):
    """Server and ingest down for a whole day, and its night missed: the next run names
    the day without telemetry and exits 3 instead of 0 (it was never reported)."""
    d = tmp_path / "data"
    lake = d / "lake"
    first = RUN_DAY - timedelta(days=2)
    for k in (0, 2):  # nothing for the day between
        write_flushes(day_table(first + timedelta(days=k), seed=k), lake)
    assert fleetbms(d, "nightly", "--date", first.isoformat()).returncode == 0
    r = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat())
    assert r.returncode == 3, r.stderr
    gap = (first + timedelta(days=1)).isoformat()
    assert last_record(d)["dates"] == [gap, RUN_DAY.isoformat()]
    assert f"no telemetry for fleet demo on {gap}" in r.stderr + r.stdout
    # the same run again: the same finding (and no work); the next night's run, after a
    # completed one, no longer counts that day as missed
    r = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat())
    assert r.returncode == 3, r.stderr
    nxt = RUN_DAY + timedelta(days=1)
    write_flushes(day_table(nxt, seed=3), lake)
    r = fleetbms(d, "nightly", "--date", nxt.isoformat())
    assert r.returncode == 0, r.stderr
    assert gap not in last_record(d)["dates"]


def test_the_default_run_date_is_never_a_utc_date_that_has_not_ended(tmp_path: Path):
    """Run by hand at 01:30 in India (20:00 UTC the day before): the fleet's yesterday is
    the UTC date still running; the default is the UTC yesterday, whose data is whole."""
    from datetime import UTC, datetime

    from pipeline._config import load_settings
    from pipeline._nightly import run_nightly

    d = tmp_path / "data"
    for k in (1, 0):
        write_flushes(day_table(RUN_DAY - timedelta(days=k), seed=k), d / "lake")
    settings = load_settings(data_dir=d, env={})
    assert settings.fleet.timezone == "Asia/Kolkata"
    late_evening_utc = datetime(RUN_DAY.year, RUN_DAY.month, RUN_DAY.day, 20, 0, tzinfo=UTC)
    record = run_nightly(settings, now=late_evening_utc)
    assert record["run_date"] == (RUN_DAY - timedelta(days=1)).isoformat()
    # after midnight UTC (05:30 in India) the fleet's yesterday is a whole UTC date
    record = run_nightly(settings, now=late_evening_utc + timedelta(hours=5))
    assert record["run_date"] == RUN_DAY.isoformat()


def test_dates_before_the_fleets_first_telemetry_are_no_missed_nights(tmp_path: Path):
    """A first run for a date before the fleet's vehicles ever reported (exit 66), then
    the next run once they do: the days in between before its first telemetry are no
    nights whose telemetry went missing (no gap, exit 0); a day without any after it
    still is one."""
    d = tmp_path / "data"
    lake = d / "lake"
    first = RUN_DAY - timedelta(days=3)
    for k in (0, 1, 3):  # nothing on the day before RUN_DAY
        write_flushes(day_table(first + timedelta(days=k), seed=k), lake)
    early = first - timedelta(days=5)
    assert fleetbms(d, "nightly", "--date", early.isoformat()).returncode == 66
    mid = first + timedelta(days=1)
    r = fleetbms(d, "nightly", "--date", mid.isoformat())
    assert r.returncode == 0, r.stdout + r.stderr
    assert last_record(d)["dates"] == [first.isoformat(), mid.isoformat()]
    r = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat())
    assert r.returncode == 3, r.stderr
    gap = (RUN_DAY - timedelta(days=1)).isoformat()
    assert last_record(d)["dates"] == [gap, RUN_DAY.isoformat()]
    assert f"no telemetry for fleet demo on {gap}" in r.stderr + r.stdout


def test_caught_up_nights_archived_since_are_no_gaps_when_their_date_is_run_again(
    tmp_path: Path,
):
    """Two nights missed and caught up by the next run; a later run archives them
    (retention.archive_after_days); that next run's date run again finds their telemetry
    in the archive, not missing: no gap, exit 0 as the first time."""
    d = tmp_path / "data"
    lake = d / "lake"
    env = {
        "FLEETBMS_RETENTION__ARCHIVE_AFTER_DAYS": "3",
        "FLEETBMS_RETENTION__PURGE_AFTER_DAYS": "365",
    }
    first = RUN_DAY - timedelta(days=6)
    for k in range(7):
        write_flushes(day_table(first + timedelta(days=k), seed=k), lake)
    again = first + timedelta(days=3)
    for day in (first, again, RUN_DAY):
        r = fleetbms(d, "nightly", "--date", day.isoformat(), **env)
        assert r.returncode == 0, (day, r.stdout + r.stderr)
    archived = [first + timedelta(days=k) for k in (1, 2)]
    for day in archived:
        assert not bms.telemetry_files(lake, day)
        assert list((d / "archive" / "telemetry" / f"date={day}").glob("fleet=demo/*.parquet"))
    r = fleetbms(d, "nightly", "--date", again.isoformat(), **env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert last_record(d)["dates"] == [again.isoformat()]
