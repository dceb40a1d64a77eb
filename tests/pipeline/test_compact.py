"""Compaction: deduplication rule, deterministic bytes, files arriving mid-compaction."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bms
from pipeline._compact import compact_partition
from tests.pipeline.nightly_data import (
    day_table,
    fleetbms,
    kill9,
    start_paused,
    with_received,
    write_flushes,
)
from tests.pipeline.test_nightly import RUN_DAY


def test_duplicate_keeps_the_earliest_received_copy_even_from_a_later_file(tmp_path: Path):
    d = tmp_path / "data"
    t = day_table(RUN_DAY)
    late_copy = with_received(t.slice(0, 5), 2_000_000_000_000)
    write_flushes(late_copy, d / "lake", flushes=1, prefix="a")  # sorts first by name
    write_flushes(t, d / "lake", flushes=2, prefix="b")
    r = compact_partition(d, RUN_DAY, "demo")
    assert r.status == "compacted"
    assert r.duplicates_removed == 5
    out = pq.read_table(r.output)
    assert out.num_rows == t.num_rows
    assert out["received_at"].equals(
        pq.read_table(r.output).sort_by([("vin", "ascending"), ("ts", "ascending")])["received_at"]
    )
    assert max(out["received_at"].to_pylist()).year == 2026  # the 2033 copies were dropped


def test_range_merge_gives_the_same_bytes_as_the_in_memory_merge(tmp_path: Path):
    base = tmp_path / "base"
    vins = [f"MAT612345NEX{i:05d}" for i in range(1, 9)]
    t = day_table(RUN_DAY, vins=vins, cadence_s=300)
    write_flushes(t, base / "lake", flushes=5)
    write_flushes(t.slice(100, 50), base / "lake", flushes=1, prefix="dup")
    outputs = []
    for memory_rows in (10**9, 700):
        d = tmp_path / f"m{memory_rows}"
        shutil.copytree(base, d)
        r = compact_partition(d, RUN_DAY, "demo", memory_rows=memory_rows, row_group_rows=500)
        outputs.append((r.output.name, r.output.read_bytes()))
    assert outputs[0] == outputs[1]
    meta = pq.ParquetFile(
        tmp_path / "m700" / "lake" / "telemetry" / f"date={RUN_DAY}" / "fleet=demo" / outputs[0][0]
    ).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sizes == [500] * (len(vins) * 288 // 500) + [len(vins) * 288 % 500]


@pytest.mark.parametrize("point", ["compaction:before-commit", "compaction:committed"])
def test_a_file_ingest_writes_during_compaction_is_kept(point: str, tmp_path: Path):
    d = tmp_path / "data"
    t = day_table(RUN_DAY)
    write_flushes(t.slice(0, 300), d / "lake", flushes=3)
    proc = start_paused(d, point, tmp_path / "paused", "--date", RUN_DAY.isoformat())
    write_flushes(t.slice(300), d / "lake", flushes=1, prefix="during")
    kill9(proc)
    assert fleetbms(d, "nightly", "--date", RUN_DAY.isoformat()).returncode == 0
    files = bms.telemetry_files(d / "lake", RUN_DAY)
    assert len(files) == 1
    out = pq.read_table(files[0])
    assert out.num_rows == t.num_rows
    assert np.array_equal(np.sort(out["seq"].to_numpy()), np.sort(t["seq"].to_numpy()))


def test_a_partition_with_a_foreign_schema_fails_with_its_path(tmp_path: Path):
    d = tmp_path / "data"
    write_flushes(day_table(RUN_DAY), d / "lake")
    part = bms.telemetry_dir(d / "lake", RUN_DAY, "demo")
    bms.write_parquet_atomic(pa.table({"x": [1]}), part / "stray.parquet")
    r = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat())
    assert r.returncode == 1
    assert r.stderr.startswith("Error: stage compaction failed: ")
    assert "stray.parquet" in r.stderr
