"""Retention: raw telemetry to the archive tier after N days, deleted after M days."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import bms
from ingest._quarantine import QuarantineRow, dump_quarantine_row
from pipeline._retention import apply_retention, rewrite_parquet
from tests.pipeline.nightly_data import VINS, day_table, fleetbms, snapshot, write_flushes
from tests.pipeline.test_nightly import RUN_DAY

ENV = {
    "FLEETBMS_RETENTION__ARCHIVE_AFTER_DAYS": "30",
    "FLEETBMS_RETENTION__PURGE_AFTER_DAYS": "365",
}


def test_retention_archives_old_partitions_and_purges_older_ones(tmp_path: Path):
    d = tmp_path / "data"
    lake = d / "lake"
    recent, old, ancient = (RUN_DAY - timedelta(days=k) for k in (10, 40, 400))
    for day in (RUN_DAY, recent, old, ancient):
        write_flushes(day_table(day), lake, flushes=2)
    archived_before = d / "archive" / "telemetry" / f"date={RUN_DAY - timedelta(days=370)}"
    write_flushes(day_table(RUN_DAY - timedelta(days=370)), d / "archive")
    assert archived_before.is_dir()
    old_files = {p.name: pq.read_table(p) for p in bms.telemetry_files(lake, old)}
    side = {}  # quarantine (receive date) and alerts (event date) of an ancient and a recent day
    for kind, sub in (("quarantine", ""), ("alerts", "fleet=demo")):
        for day in (ancient, recent):
            path = lake / kind / f"date={day}" / sub / "part-1.parquet"
            path.parent.mkdir(parents=True)
            pq.write_table(pa.table({"topic": [f"fleet/demo/{VINS[0]}/telemetry"]}), path)
            side[kind, day] = path

    r = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat(), **ENV)
    assert r.returncode == 0, r.stderr

    assert bms.telemetry_files(lake, recent)  # kept (not in the run's dates: not compacted)
    assert not (lake / "telemetry" / f"date={old}").exists()
    assert not (lake / "telemetry" / f"date={ancient}").exists()
    assert not archived_before.exists()
    moved = sorted((d / "archive" / "telemetry" / f"date={old}" / "fleet=demo").iterdir())
    assert [p.name for p in moved] == sorted(old_files)
    for p in moved:
        assert pq.read_table(p).equals(old_files[p.name])
        assert pq.ParquetFile(p).metadata.row_group(0).column(0).compression == "ZSTD"
    assert (lake / "metrics" / "reconciliation" / f"date={RUN_DAY}").is_dir()  # metrics kept
    for (kind, day), path in side.items():
        assert path.exists() == (day == recent), (kind, day)
        assert (lake / kind / f"date={day}").exists() == (day == recent), (kind, day)
    assert '"purged_quarantine_alerts": 2' in r.stdout

    before = snapshot(lake, d / "archive")
    again = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat(), **ENV)
    assert again.returncode == 0
    assert '"archived_partitions": 0' in again.stdout
    assert snapshot(lake, d / "archive") == before


def test_retention_with_purge_before_archive_is_refused_before_the_run(tmp_path: Path):
    """Refused when the configuration is read: no stage runs on a contradictory one."""
    d = tmp_path / "data"
    write_flushes(day_table(RUN_DAY), d / "lake")
    r = fleetbms(
        d,
        "nightly",
        "--date",
        RUN_DAY.isoformat(),
        FLEETBMS_RETENTION__ARCHIVE_AFTER_DAYS="30",
        FLEETBMS_RETENTION__PURGE_AFTER_DAYS="20",
    )
    assert r.returncode == 1
    assert r.stderr == (
        "Error: retention.archive_after_days = 30 must be below retention.purge_after_days = 20 "
        "(retention.archive_after_days from FLEETBMS_RETENTION__ARCHIVE_AFTER_DAYS, "
        "retention.purge_after_days from FLEETBMS_RETENTION__PURGE_AFTER_DAYS)\n"
    )
    assert not (d / "state").exists()  # nothing ran


def test_retention_never_counts_ages_from_a_date_after_today(tmp_path: Path):
    """A run date in the future (a typo, a wrong clock) must not purge data that is not
    old: ages are counted from today at the latest."""
    d = tmp_path / "data"
    lake = d / "lake"
    today = RUN_DAY
    due, young, recent = (today - timedelta(days=k) for k in (366, 364, 29))
    for day in (due, young, recent):
        write_flushes(day_table(day), lake, flushes=1)
    r = apply_retention(
        d,
        today + timedelta(days=4 * 365),
        archive_after_days=30,
        purge_after_days=365,
        zstd_level=3,
        today=today,
    )
    assert (r.purge_before, r.archive_before) == (
        today - timedelta(days=365),
        today - timedelta(days=30),
    )
    assert r.purged_partitions == 1
    assert not (lake / "telemetry" / f"date={due}").exists()
    assert (d / "archive" / "telemetry" / f"date={young}").is_dir()  # archived, not purged
    assert bms.telemetry_files(lake, recent)  # younger than archive_after_days: untouched


def test_rewrite_keeps_the_delta_encodings_of_a_compacted_file(tmp_path: Path):
    """Archiving (and erasure) rewrite a file at another zstd level: the delta-encoded
    columns of a compacted file stay delta-encoded, the others keep their dictionary."""
    table = pa.table(
        {
            "vin": pa.array(["A"] * 4 + ["B"] * 4),
            "seq": pa.array(range(8), pa.int64()),
            "cell_mv": pa.array([[3700 + k, 3701 + k] for k in range(8)], pa.list_(pa.int16())),
        }
    )
    src, dst = tmp_path / "src.parquet", tmp_path / "dst.parquet"
    encoding = {"seq": "DELTA_BINARY_PACKED", "cell_mv": "DELTA_BINARY_PACKED"}
    with bms.atomic_parquet_writer(src, table.schema, column_encoding=encoding) as w:
        w.write_table(table, row_group_size=4)
    assert rewrite_parquet(src, dst, zstd_level=9) == 8
    assert pq.read_table(dst).equals(table)
    meta = pq.ParquetFile(dst).metadata
    assert meta.num_row_groups == 2
    for g in range(2):
        chunks = {
            meta.row_group(g).column(i).path_in_schema: meta.row_group(g).column(i)
            for i in range(3)
        }
        assert "DELTA_BINARY_PACKED" in chunks["seq"].encodings
        assert "DELTA_BINARY_PACKED" in chunks["cell_mv.list.element"].encodings
        assert "RLE_DICTIONARY" in chunks["vin"].encodings


def test_retention_purges_quarantine_json_dumps_with_their_date(tmp_path: Path):
    """A quarantine row the Parquet writer refused is kept as a JSON dump (ingest's
    ``dump_quarantine_row``) in its receive date's partition: purged at the same age,
    also when the partition holds nothing else."""
    d = tmp_path / "data"
    recent, ancient = RUN_DAY - timedelta(days=10), RUN_DAY - timedelta(days=400)
    dumps = {}
    for day in (recent, ancient):
        ms = int(datetime(day.year, day.month, day.day, 6, tzinfo=UTC).timestamp() * 1000)
        row = QuarantineRow(f"fleet/demo/{VINS[0]}/bms", b"{", "not_json", "x", ms, None, "mqtt")
        dumps[day] = dump_quarantine_row(row, "kept as a JSON dump", d / "lake", "w1", "t-0")
    r = apply_retention(
        d, RUN_DAY, archive_after_days=30, purge_after_days=365, zstd_level=3, today=RUN_DAY
    )
    assert r.purged_quarantine_alerts == 1
    assert dumps[recent].exists()
    assert not (d / "lake" / "quarantine" / f"date={ancient}").exists()


def test_the_nightly_removes_temporaries_of_writers_that_died_long_ago(tmp_path: Path):
    """A kill -9 during a write leaves its hidden temporary (``.part.parquet.<id>.tmp``);
    the nightly's retention removes those a day old, and leaves a fresh one (another
    command may be writing it right now) and every visible file."""
    d = tmp_path / "data"
    write_flushes(day_table(RUN_DAY), d / "lake")
    day_ago = datetime.now(UTC).timestamp() - 2 * 86_400
    stale = [
        d / "lake/metrics/vehicle_day/date=2026-11-20/fleet=demo/.part.parquet.0a1b.tmp",
        d / "state/analytics/carry/.carry.parquet.2c3d.tmp",
        d / "reports/date=2026-11-20/.fleet-demo.pdf.4e5f.tmp",
    ]
    fresh = d / "lake/metrics/vehicle_day/date=2026-11-20/fleet=demo/.part.parquet.6a7b.tmp"
    for path in (*stale, fresh):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"PAR1 half written")
    for path in stale:
        os.utime(path, (day_ago, day_ago))
    r = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat(), **ENV)
    assert r.returncode == 0, r.stderr
    assert not any(p.exists() for p in stale)
    assert fresh.exists()
    assert '"stale_temporaries": 3' in r.stdout
    assert bms.telemetry_files(d / "lake", RUN_DAY)
