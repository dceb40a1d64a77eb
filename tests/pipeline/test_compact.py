"""Compaction: deduplication rule, deterministic bytes, files arriving mid-compaction."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import bms
from pipeline._compact import _BufferPool, compact_partition, read_stats
from tests.pipeline.nightly_data import (
    day_table,
    fleetbms,
    kill9,
    start_paused,
    with_received,
    with_ts_shifted,
    write_flushes,
)
from tests.pipeline.test_compact_order import reference
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


def _two_models(day_vins: int = 8) -> pa.Table:
    """A fleet of two vehicle models (96 and 14 cells), one reading every 15 s."""
    vins = [f"MAT612345NEX{i:05d}" for i in range(1, day_vins + 1)]
    half = day_vins // 2
    return pa.concat_tables(
        [
            day_table(RUN_DAY, vins=vins[half:], cadence_s=15, n_cells=96, seed=2),
            day_table(RUN_DAY, vins=vins[:half], cadence_s=15, n_cells=14, seed=3),
        ]
    )


def test_range_merge_of_big_row_groups_and_two_cell_counts_gives_the_in_memory_bytes(
    tmp_path: Path,
) -> None:
    # Row groups of several pages straddle VIN ranges (one VIN each): the bytes must not
    # depend on where the ranges cut them (the writer starts pages anew at chunk borders).
    base = tmp_path / "base"
    t = _two_models()
    write_flushes(t, base / "lake", flushes=6)
    write_flushes(t.slice(30_000, 300), base / "lake", flushes=1, prefix="dup")
    outputs = []
    for memory_rows in (10**9, 5_000):
        d = tmp_path / f"m{memory_rows}"
        shutil.copytree(base, d)
        r = compact_partition(d, RUN_DAY, "demo", memory_rows=memory_rows, row_group_rows=20_000)
        assert r.duplicates_removed == 300
        assert r.output is not None
        outputs.append((r.output.name, r.output.read_bytes()))
        assert pq.ParquetFile(r.output).metadata.num_row_groups == 3
    assert outputs[0] == outputs[1]
    want, _ = reference(bms.read_telemetry(bms.telemetry_files(base / "lake", RUN_DAY)))
    assert pq.read_table(r.output).combine_chunks().equals(want)


@pytest.mark.parametrize("memory_rows", [10**9, 100])
def test_a_reading_resent_with_another_ts_is_kept_once_the_earliest_received(
    memory_rows: int, tmp_path: Path
) -> None:
    d = tmp_path / "data"
    t = day_table(RUN_DAY)
    write_flushes(t, d / "lake", flushes=3, prefix="a")
    # The same (vin, seq) again from another file, its ts moved: a clock correction on the
    # vehicle before a replay. Received earlier than the first copies for half of them.
    resent = with_ts_shifted(t.slice(10, 20), 7_000)
    write_flushes(with_received(resent.slice(0, 10), 0), d / "lake", flushes=1, prefix="b")
    write_flushes(resent.slice(10), d / "lake", flushes=1, prefix="c")
    inputs = bms.read_telemetry(bms.telemetry_files(d / "lake", RUN_DAY))
    r = compact_partition(d, RUN_DAY, "demo", memory_rows=memory_rows, row_group_rows=64)
    assert r.duplicates_removed == 20
    assert r.output is not None
    out = pq.read_table(r.output)
    want, _ = reference(inputs)
    assert out.combine_chunks().equals(want)
    received = pc.cast(out["received_at"], pa.int64())
    assert pc.sum(pc.equal(received, 0)).as_py() == 10


@pytest.mark.parametrize("memory_rows", [10**9, 100])
def test_an_empty_input_file_is_merged_away(memory_rows: int, tmp_path: Path) -> None:
    d = tmp_path / "data"
    t = day_table(RUN_DAY)
    write_flushes(t, d / "lake", flushes=2)
    part = bms.telemetry_dir(d / "lake", RUN_DAY, "demo")
    bms.write_parquet_atomic(bms.TELEMETRY_SCHEMA.empty_table(), part / "empty.parquet")
    r = compact_partition(d, RUN_DAY, "demo", memory_rows=memory_rows, row_group_rows=100)
    assert (r.input_files, r.rows_out) == (3, t.num_rows)
    assert bms.telemetry_files(d / "lake", RUN_DAY) == [r.output]


@pytest.mark.parametrize("memory_rows", [10**9, 100])
def test_copies_received_at_the_same_time_keep_the_first_in_file_order(
    memory_rows: int, tmp_path: Path
) -> None:
    d = tmp_path / "data"
    t = day_table(RUN_DAY)
    write_flushes(t, d / "lake", flushes=2, prefix="a")
    # One replayed file holds two copies of each reading, both received at the same time:
    # first one with a corrected ts, then the original. The first in the file wins, in
    # memory and in VIN ranges alike (the range split must keep the file's order).
    part = t.slice(0, 30)
    moved = with_ts_shifted(part, 7_000)
    replay = pa.concat_tables([with_received(moved, 0), with_received(part, 0)])
    bms.write_telemetry(replay, d / "lake", file_prefix="b")
    inputs = bms.read_telemetry(bms.telemetry_files(d / "lake", RUN_DAY))
    r = compact_partition(d, RUN_DAY, "demo", memory_rows=memory_rows, row_group_rows=64)
    assert r.duplicates_removed == 60
    assert r.output is not None
    out = pq.read_table(r.output).combine_chunks()
    want, _ = reference(inputs)
    assert out.equals(want)
    kept_ts = set(pc.cast(out["ts"], pa.int64()).to_pylist())
    assert set(pc.cast(moved["ts"], pa.int64()).to_pylist()) <= kept_ts


def test_the_merge_allocates_from_jemalloc_and_restores_the_default_pool(tmp_path: Path) -> None:
    d = tmp_path / "data"
    write_flushes(day_table(RUN_DAY), d / "lake", flushes=2)
    before = pa.default_memory_pool().backend_name
    compact_partition(d, RUN_DAY, "demo")
    assert pa.default_memory_pool().backend_name == before
    assert pa.jemalloc_memory_pool().max_memory() > 0


def _with_sentinel_cells(table: pa.Table, every: int) -> pa.Table:
    """``table`` with every ``every``-th cell value missing (a sentinel, stored as null)."""
    cells = table["cell_mv"].combine_chunks()
    values = cells.values.to_numpy(zero_copy_only=False).astype(np.float64)
    mask = np.zeros(len(values), dtype=bool)
    mask[::every] = True
    flat = pa.array(np.where(mask, 0, values).astype(np.int16), mask=mask)
    col = pa.ListArray.from_arrays(cells.offsets, flat)
    return table.set_column(table.schema.get_field_index("cell_mv"), "cell_mv", col)


@pytest.mark.parametrize("memory_rows", [10**9, 500])
def test_the_compacted_file_is_delta_encoded_and_duckdb_reads_what_was_written(
    memory_rows: int, tmp_path: Path
) -> None:
    d = tmp_path / "data"
    t = _with_sentinel_cells(day_table(RUN_DAY, cadence_s=120), every=7)
    write_flushes(t, d / "lake", flushes=3)
    write_flushes(t.slice(40, 30), d / "lake", flushes=1, prefix="dup")
    inputs = bms.read_telemetry(bms.telemetry_files(d / "lake", RUN_DAY))
    # ingest files already carry their cell lists delta-encoded (cheaper to read)
    for f in bms.telemetry_files(d / "lake", RUN_DAY):
        col = pq.ParquetFile(f).metadata.row_group(0).column(10)
        assert col.path_in_schema == "cell_mv.list.element"
        assert "DELTA_BINARY_PACKED" in col.encodings
        assert "RLE_DICTIONARY" not in col.encodings
    r = compact_partition(d, RUN_DAY, "demo", memory_rows=memory_rows, row_group_rows=1_000)
    assert r.output is not None
    meta = pq.ParquetFile(r.output).metadata
    for g in range(meta.num_row_groups):
        encodings = {
            meta.row_group(g).column(i).path_in_schema: meta.row_group(g).column(i).encodings
            for i in range(meta.num_columns)
        }
        for leaf in ("seq", "ts", "received_at", "cell_mv.list.element"):
            assert "DELTA_BINARY_PACKED" in encodings[leaf], leaf
            assert "RLE_DICTIONARY" not in encodings[leaf], leaf
        assert "RLE_DICTIONARY" in encodings["temp_dc.list.element"]
        assert "RLE_DICTIONARY" in encodings["vin"]
    want, _ = reference(inputs)
    assert pq.read_table(r.output).combine_chunks().equals(want)
    # the analytics jobs read the lists with DuckDB: every value (and null) as written
    con = duckdb.connect()
    try:
        path = str(r.output).replace("'", "''")
        got = con.sql(
            "SELECT vin, seq, ts, received_at, cell_mv, temp_dc "
            f"FROM read_parquet('{path}') ORDER BY vin, ts, seq"
        ).to_arrow_table()
    finally:
        con.close()
    cols = ["vin", "seq", "ts", "received_at", "cell_mv", "temp_dc"]
    assert got.column("cell_mv").to_pylist() == want["cell_mv"].to_pylist()
    assert got.select(cols).to_pylist() == want.select(cols).to_pylist()
    assert pc.sum(pc.is_null(pc.list_flatten(got["cell_mv"]))).as_py() > 0


def test_a_column_encoding_of_an_unknown_column_is_refused(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match=r"unknown column\(s\) cells; valid: vin, seq"),
        bms.atomic_parquet_writer(
            tmp_path / "x.parquet", bms.TELEMETRY_SCHEMA, column_encoding={"cells": "PLAIN"}
        ),
    ):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_big_partition_is_split_into_files_of_disjoint_vins_with_the_same_rows(
    tmp_path: Path,
) -> None:
    base = tmp_path / "base"
    vins = [f"MAT612345NEX{i:05d}" for i in range(1, 10)]
    t = day_table(RUN_DAY, vins=vins, cadence_s=300)  # 9 x 288 readings
    write_flushes(t, base / "lake", flushes=5)
    write_flushes(t.slice(100, 50), base / "lake", flushes=1, prefix="dup")
    results = {}
    for memory_rows, file_rows in ((10**9, 10**9), (10**9, 800), (700, 800)):
        d = tmp_path / f"m{memory_rows}-f{file_rows}"
        shutil.copytree(base, d)
        results[memory_rows, file_rows] = compact_partition(
            d, RUN_DAY, "demo", memory_rows=memory_rows, file_rows=file_rows, row_group_rows=500
        )
    whole = results[10**9, 10**9]
    split = results[10**9, 800]
    assert len(whole.outputs) == 1
    # 2,592 readings in files of at least 800: three files of three VINs each.
    assert [p.name.split("-")[-1] for p in split.outputs] == [
        "1of3.parquet",
        "2of3.parquet",
        "3of3.parquet",
    ]
    assert split.duplicates_removed == whole.duplicates_removed == 50
    parts = [pq.read_table(p) for p in split.outputs]
    assert [sorted(set(p["vin"].to_pylist())) for p in parts] == [
        vins[0:3],
        vins[3:6],
        vins[6:9],
    ]
    assert pa.concat_tables(parts).combine_chunks().equals(pq.read_table(whole.output))
    # Merged in memory or VIN range by VIN range: the same files, byte for byte.
    ranged = results[700, 800]
    assert [(p.name, p.read_bytes()) for p in ranged.outputs] == [
        (p.name, p.read_bytes()) for p in split.outputs
    ]
    assert bms.holds_unique_readings(split.outputs)
    assert bms.holds_unique_readings(split.outputs[1:])
    # Each file's statistics count its own VINs: 288 received each, the 50 resent
    # readings (rows 100-149: the first VINs' first readings) counted where they belong.
    state = tmp_path / "m1000000000-f800" / "state"
    stats = [read_stats(state, p) for p in split.outputs]
    assert [s["vin"].to_pylist() for s in stats if s is not None] == [
        vins[0:3],
        vins[3:6],
        vins[6:9],
    ]
    received = pa.concat_tables([s for s in stats if s is not None])
    assert pc.sum(received["readings_received"]).as_py() == 9 * 288 + 50
    assert pc.sum(received["duplicates_removed"]).as_py() == 50
    # A second run finds the split partition compacted as it is.
    again = compact_partition(
        tmp_path / "m1000000000-f800", RUN_DAY, "demo", memory_rows=10**9, file_rows=800
    )
    assert again.status == "up to date"


def test_files_of_two_compactions_or_beside_an_ingest_file_need_dedup(tmp_path: Path) -> None:
    one = [tmp_path / "compacted-0123456789abcdef-1of2.parquet"]
    both = [*one, tmp_path / "compacted-0123456789abcdef-2of2.parquet"]
    assert bms.holds_unique_readings(both)
    assert bms.holds_unique_readings([tmp_path / "compacted-0123456789abcdef.parquet"])
    assert not bms.holds_unique_readings([*one, tmp_path / "compacted-fedcba9876543210.parquet"])
    assert not bms.holds_unique_readings([*both, tmp_path / "w1-3f2a.parquet"])
    assert not bms.holds_unique_readings([tmp_path / "w1-3f2a.parquet"])
    assert not bms.holds_unique_readings([])


def test_gather_memory_is_reused_only_once_arrow_has_freed_it() -> None:
    pool = _BufferPool()
    raw, buf = pool.lease(1000)
    raw[:] = 7
    first = buf.address
    values = pa.Array.from_buffers(pa.int16(), 500, [None, buf])
    del raw, buf
    _, busy = pool.lease(1000)
    assert busy.address != first  # ``values`` still uses the first buffer
    assert values.to_numpy().tolist() == [7 * 257] * 500
    del values
    _, again = pool.lease(900)
    assert again.address == first
