"""Nightly compaction of a telemetry partition: merge, deduplicate, sort, replace atomically.

A partition ``lake/telemetry/date=D/fleet=F/`` collects many small files from ingest (one
per flush). Compaction merges them into one file sorted by ``(vin, ts, seq)``, keeps one
row per ``(vin, seq)`` (the earliest ``received_at``; among equal times the first in file
name order) and writes row groups of ``row_group_rows`` rows.

A partition of at least twice ``file_rows`` rows is written as several files of
consecutive, disjoint VIN ranges (``compacted-<digest>-<i>of<n>.parquet``, each of at
least ``file_rows`` rows), two at a time: pyarrow's Parquet writer encodes on one core,
and the encoding is the larger part of a merge. The cut depends on the rows per VIN only,
so it is the same however the partition is merged.

Replacing several files cannot be one atomic rename, so the switch is journalled:

1. the journal ``state/nightly/journal/compaction-date=D-fleet=F.json`` names the input
   files and the output files;
2. each output is written under a hidden temporary name (``.<name>.tmp``) and fsync'ed,
   and its per-VIN statistics (readings received, duplicates removed) are written to
   state;
3. the outputs are renamed to ``compacted-<digest of the input names and sizes>...``; the
   last rename is the commit point;
4. the inputs are unlinked, the done record written and the journal removed.

A run killed before the last rename of step 3 leaves every input as it was: recovery
deletes the journal, the orphan statistics, the temporaries and any output already
renamed. A run killed after it leaves the new files beside (some of) the inputs: recovery
finishes step 4. The output names derive from the inputs only, so an interrupted and an
uninterrupted run give the same files with the same bytes, and the rows of an input are
never counted twice once recovery has run (every run recovers before it reads). Files
that ingest writes into the partition while compaction runs are not inputs and stay for
the next run.

A concurrent reader that globs the partition during steps 3 and 4 (a few renames and
unlinks) can see a row twice; readers that must be exact deduplicate on ``(vin, seq)``
unless ``bms.holds_unique_readings`` says the files are one compaction's.

Partitions larger than ``memory_rows`` are merged in VIN ranges: each input file is read
once, sorted by ``(vin, seq)`` and spilled under ``state/nightly/tmp`` as an uncompressed
Arrow IPC file with one record batch per range, then each range is merged in memory from
its batches, so memory stays bounded by about two ranges (a lone output prepares the next
range while the current one is written; two outputs are written at once instead). A
range never straddles two output files.

A merge sorts integer keys only (each VIN's rank among the partition's VINs, ``ts``,
``seq``) with numpy; the copies of a redelivered reading then sit side by side and are
dropped in the same pass, and only when a ``(vin, seq)`` recurs with another ``ts`` does a
second sort apply the rule directly. The rows are then gathered one row group at a time
(the list columns as numpy arrays of their flat values, into memory the merge reuses
rather than fresh buffers whose first touch costs more than the copy), and every row
group is written from one contiguous chunk, so the bytes are the same whether the
partition was merged in memory or in ranges. Inputs are read in small record batches,
which decode faster than whole files (see ``_read``).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bms import (
    COMPACTED_PREFIX,
    TELEMETRY_SCHEMA,
    SchemaError,
    durable_parquet_writer,
    fsync_dir,
    holds_unique_readings,
    telemetry_dir,
    write_parquet_atomic,
)
from pipeline._nightly_state import (
    DoneStore,
    digest,
    file_fingerprint,
    pause_point,
    read_json,
    write_json_atomic,
)

STAGE = "compaction"

#: Per-VIN counts kept beside each compacted file (cumulative over recompactions).
STATS_SCHEMA = pa.schema(
    [
        pa.field("vin", pa.string(), nullable=False),
        pa.field("readings_received", pa.int64(), nullable=False),
        pa.field("duplicates_removed", pa.int64(), nullable=False),
    ]
)

#: Encodings of the compacted file's columns that sort well: ``seq``, ``ts`` and
#: ``received_at`` rise within a VIN and adjacent cells of a pack sit a few mV apart, so
#: delta encoding (Parquet DELTA_BINARY_PACKED) packs them into a few bits a value where
#: a dictionary spends one index per value. Measured on the nightly benchmark's
#: partition (200 vehicles, 1.73 M readings, 96 cells): file 15.4 -> 9.4 MiB, writer CPU
#: 4.2-5.0 -> 3.5-3.9 s; DuckDB and pyarrow read the same values as fast. The
#: temperatures keep their dictionary (few distinct values: 1.5 MB against 2.3 MB delta).
COMPACTED_ENCODING = {
    "seq": "DELTA_BINARY_PACKED",
    "ts": "DELTA_BINARY_PACKED",
    "received_at": "DELTA_BINARY_PACKED",
    "cell_mv": "DELTA_BINARY_PACKED",
}

#: Columns whose min/max the compacted file records: the keys and scalars readers filter
#: on. The statistics of the cell and temperature lists' elements cost the writer ~8 %
#: of its CPU (measured on 2M readings of the nightly benchmark) and prune nothing.
COMPACTED_STATISTICS = [f.name for f in TELEMETRY_SCHEMA if f.name not in ("cell_mv", "temp_dc")]


@dataclass(frozen=True, slots=True)
class CompactionResult:
    """What compaction did to one partition.

    ``status`` is ``compacted``, ``up to date`` or ``empty`` (no telemetry).
    """

    day: date
    fleet: str
    status: str
    input_files: int
    rows_in: int
    rows_out: int
    duplicates_removed: int
    outputs: tuple[Path, ...]

    @property
    def output(self) -> Path | None:
        """The first output file (the only one unless the partition was split), or
        ``None`` if nothing was written."""
        return self.outputs[0] if self.outputs else None


def partition_key(day: date, fleet: str) -> str:
    """Key of a (date, fleet) unit in done records and journals."""
    return f"date={day.isoformat()}-fleet={fleet}"


def _journal_path(state_dir: Path, day: date, fleet: str) -> Path:
    return state_dir / "nightly" / "journal" / f"compaction-{partition_key(day, fleet)}.json"


def stats_path(state_dir: Path, compacted: Path) -> Path:
    """Statistics file (``STATS_SCHEMA``) of a compacted telemetry file."""
    fleet_part, date_part = compacted.parent.name, compacted.parent.parent.name
    base = state_dir / "nightly" / "compaction" / date_part / fleet_part
    return base / f"{compacted.stem}.stats.parquet"


def read_stats(state_dir: Path, compacted: Path) -> pa.Table | None:
    """Per-VIN statistics of a compacted file, or ``None`` if unknown."""
    path = stats_path(state_dir, compacted)
    return pq.read_table(path, schema=STATS_SCHEMA) if path.exists() else None


def is_compacted(path: Path) -> bool:
    """Whether a telemetry file is a compaction output."""
    return path.name.startswith(COMPACTED_PREFIX)


class RowGroupWriter:
    """Feeds a ParquetWriter row groups of exactly ``rows`` rows (the last may be short).

    Row-group boundaries then depend on the rows only, not on how they were batched, and
    every row group is written from one contiguous chunk per column (the writer's page
    boundaries follow chunk boundaries), which keeps the file bytes deterministic.
    """

    def __init__(self, writer: pq.ParquetWriter, rows: int) -> None:
        self._writer = writer
        self._rows = rows
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    @property
    def rows(self) -> int:
        """Rows per row group."""
        return self._rows

    def room(self) -> int:
        """Rows still missing from the current row group."""
        return self._rows - self._buffered

    def write(self, table: pa.Table) -> None:
        """Buffer ``table`` and write every complete row group."""
        if table.num_rows == 0:
            return
        self._buffer.append(table)
        self._buffered += table.num_rows
        while self._buffered >= self._rows:
            whole = pa.concat_tables(self._buffer)
            self._emit(whole.slice(0, self._rows))
            rest = whole.slice(self._rows)
            self._buffer = [rest] if rest.num_rows else []
            self._buffered = rest.num_rows

    def close(self) -> None:
        """Write the last, short row group."""
        if self._buffered:
            self._emit(pa.concat_tables(self._buffer))
        self._buffer = []
        self._buffered = 0

    def _emit(self, table: pa.Table) -> None:
        if any(col.num_chunks > 1 for col in table.columns):
            table = table.combine_chunks()
        self._writer.write_table(table, row_group_size=self._rows)


def _int64_keys(table: pa.Table, name: str) -> np.ndarray:
    """A key column as int64 (timestamps as their ms count); keys must not be null."""
    col = table[name]
    if col.null_count:
        raise SchemaError(f"telemetry column {name} holds nulls; it is a key of compaction")
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    return np.asarray(col.to_numpy(), dtype=np.int64)


def vin_ranks(col: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Each row's VIN as its rank among the distinct VINs, and those VINs in order.

    Ranks order as the strings do (byte order, as Arrow sorts them), so sorting by rank
    sorts by VIN at the cost of integers. A dictionary column (a compacted partition
    read as such) gives its codes without hashing a string per row.
    """
    if col.null_count:
        raise SchemaError("telemetry column vin holds nulls; it is a key of compaction")
    if pa.types.is_dictionary(col.type):
        unified = col.unify_dictionaries() if col.num_chunks > 1 else col
        encoded = unified.combine_chunks() if unified.num_chunks != 1 else unified.chunk(0)
    else:
        encoded = pc.dictionary_encode(
            col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        )
    by_name = pc.sort_indices(encoded.dictionary).to_numpy()
    rank_of_code = np.empty(len(by_name), dtype=np.int32)
    rank_of_code[by_name] = np.arange(len(by_name), dtype=np.int32)
    ranks = rank_of_code[np.asarray(encoded.indices.to_numpy(zero_copy_only=False))]
    names = pc.cast(encoded.dictionary, pa.string()).take(pa.array(by_name))
    return ranks, names


def _first_copies(received: np.ndarray, rows: np.ndarray, run_start: np.ndarray) -> np.ndarray:
    """Mask over ``rows`` (grouped in runs that start where ``run_start``): in each run of
    more than one row, the row received first (the earliest in ``rows`` among equal times)."""
    keep = run_start.copy()
    if run_start.all():
        return keep
    run_id = np.cumsum(run_start) - 1
    in_multi = ~run_start
    in_multi[:-1] |= ~run_start[1:]
    idx = np.flatnonzero(in_multi)
    # lexsort is stable: equal receive times keep the order of ``rows``.
    by_received = idx[np.lexsort((received[rows[idx]], run_id[idx]))]
    first = np.ones(len(by_received), dtype=bool)
    first[1:] = run_id[by_received[1:]] != run_id[by_received[:-1]]
    keep[idx] = False
    keep[by_received[first]] = True
    return keep


def _output_order(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array]:
    """Rows of ``table`` to keep, in output order, and the rows dropped as duplicates.

    One row per ``(vin, seq)``: the earliest ``received_at``, among equal times the first
    in ``table`` order; kept rows sorted by ``(vin, ts, seq)``.

    Fast path: one stable sort by ``(vin, ts, seq)`` puts the copies of a redelivered
    reading side by side; if after keeping the earliest of each such run ``seq`` rises
    strictly within every VIN, no ``(vin, seq)`` is left twice and the order is final.
    Otherwise (copies with different ``ts``, or ``seq`` not rising with ``ts``) a second
    sort by ``(vin, seq, received_at)`` applies the rule directly.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, numpy.ndarray, pyarrow.Array)
        Kept row indices in output order, dropped row indices, every row's VIN rank, and
        the distinct VINs by rank.
    """
    rank, vins = vin_ranks(table["vin"])
    ts = _int64_keys(table, "ts")
    seq = _int64_keys(table, "seq")
    received = _int64_keys(table, "received_at")
    order = np.lexsort((seq, ts, rank))
    r, t, s = rank[order], ts[order], seq[order]
    n = len(order)
    run_start = np.ones(n, dtype=bool)
    if n > 1:
        run_start[1:] = (r[1:] != r[:-1]) | (t[1:] != t[:-1]) | (s[1:] != s[:-1])
    keep = _first_copies(received, order, run_start)
    rk, sk = r[keep], s[keep]
    if not np.any((rk[1:] == rk[:-1]) & (sk[1:] <= sk[:-1])):
        return order[keep], order[~keep], rank, vins
    by_seq = np.lexsort((received, seq, rank))
    r, s = rank[by_seq], seq[by_seq]
    first = np.ones(n, dtype=bool)
    first[1:] = (r[1:] != r[:-1]) | (s[1:] != s[:-1])
    kept = by_seq[first]
    kept = kept[np.lexsort((seq[kept], ts[kept], rank[kept]))]
    return kept, by_seq[~first], rank, vins


#: Rows per block when gathering lists of unequal lengths (bounds the index arrays).
_GATHER_BLOCK_ROWS = 65_536


class _Lease:
    """Returns a pooled array to its pool when the Arrow buffer that wraps it is freed."""

    __slots__ = ("array", "pool")

    def __init__(self, pool: _BufferPool, array: np.ndarray) -> None:
        self.pool = pool
        self.array = array

    def __del__(self) -> None:
        self.pool.give_back(self.array)


class _BufferPool:
    """Memory for gathered list values, reused once Arrow lets go of it.

    A merge gathers the same few sizes over and over (a spilled input, a row group); a
    fresh buffer each time costs its first touch of every page (the allocator hands
    freed blocks of this size back to the system), 0.7-1 ms per MB on the nightly
    benchmark's machine, more than the gather itself. A buffer goes back to the pool only
    when the last Arrow array over it is freed, so no live array ever sees it rewritten.
    """

    #: Free buffers kept (the oldest are dropped): a merge has a few gathers in flight.
    KEEP = 8

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        # Reentrant: a lease freed by the garbage collector inside ``lease`` gives back.
        self._lock = threading.RLock()

    def lease(self, nbytes: int) -> tuple[np.ndarray, pa.Buffer]:
        """``nbytes`` of memory (not zeroed): a writable byte array and the Arrow buffer
        over it, which keeps it from the pool while alive."""
        with self._lock:
            # The smallest free buffer that fits and wastes at most half of itself.
            fits = [
                (a.nbytes, i)
                for i, a in enumerate(self._free)
                if nbytes <= a.nbytes <= 2 * max(nbytes, 1)
            ]
            array = self._free.pop(min(fits)[1]) if fits else None
        if array is None:
            array = np.empty(max(nbytes, 1), dtype=np.uint8)
        buffer = pa.foreign_buffer(array.ctypes.data, nbytes, base=_Lease(self, array))
        return array[:nbytes], buffer

    def give_back(self, array: np.ndarray) -> None:
        with self._lock:
            self._free.append(array)
            del self._free[: -self.KEEP]

    def clear(self) -> None:
        """Drop the free buffers (leased ones come back as usual)."""
        with self._lock:
            self._free.clear()


class _FlatList:
    """A list column without nulls, held as numpy views of each chunk's flat values plus
    every row's chunk, start and length, so rows are gathered with numpy (one copy of
    the values, no concatenation of the chunks) instead of Arrow's list-by-list take."""

    def __init__(self, col: pa.ChunkedArray) -> None:
        self.type = col.type
        chunks = [c for c in col.chunks if len(c)]
        self.values = [np.asarray(c.flatten().to_numpy()) for c in chunks]
        offsets = [np.asarray(c.offsets.to_numpy(), dtype=np.int64) for c in chunks]
        self.row_base = np.cumsum([0, *(len(c) for c in chunks)])
        self.starts = np.concatenate([o[:-1] - o[0] for o in offsets] or [np.empty(0, np.int64)])
        self.lengths = np.concatenate([np.diff(o) for o in offsets] or [np.empty(0, np.int64)])
        # Every list of one length (the usual case: one cell count per vehicle model):
        # each chunk's values are a 2-D array and a row gather is one numpy take.
        width = int(self.lengths[0]) if len(self.lengths) else 0
        self.width = width if width and (self.lengths == width).all() else 0

    @staticmethod
    def usable(col: pa.ChunkedArray) -> bool:
        """Whether ``col`` is a list of integers or floats with no nulls at any level."""
        if not pa.types.is_list(col.type):
            return False
        value_type = col.type.value_type
        if not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type)):
            return False
        return not any(c.null_count or c.flatten().null_count for c in col.chunks)

    def take(self, rows: np.ndarray, pool: _BufferPool | None = None) -> pa.Array:
        """The lists of ``rows``, in that order (their values in memory of ``pool``)."""
        lengths = self.lengths[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        if total > np.iinfo(np.int32).max:
            raise ValueError(f"{total} list values do not fit the 32-bit offsets of {self.type}")
        dtype = np.dtype(self.type.value_type.to_pandas_dtype())
        # Reused memory, or from Arrow's pool (see _jemalloc_pool).
        nbytes = total * dtype.itemsize
        if pool is not None:
            raw, buffer = pool.lease(nbytes)
            out = raw.view(dtype)
        else:
            buffer = pa.allocate_buffer(nbytes)
            out = np.frombuffer(buffer, dtype=dtype)
        if self.width and len(self.values) == 1:
            w = self.width
            np.take(self.values[0].reshape(-1, w), rows, axis=0, out=out.reshape(-1, w))
            return self._array(offsets, buffer, total)
        # Output rows grouped by source chunk (positions within a chunk stay ascending).
        chunk = np.searchsorted(self.row_base, rows, side="right") - 1
        by_chunk = np.argsort(chunk, kind="stable")
        cuts = np.searchsorted(chunk[by_chunk], np.arange(len(self.values) + 1))
        for k, values in enumerate(self.values):
            pos = by_chunk[cuts[k] : cuts[k + 1]]
            if not len(pos):
                continue
            local = rows[pos] - self.row_base[k]
            if self.width:
                w = self.width
                out.reshape(-1, w)[pos] = values.reshape(-1, w)[local]
                continue
            for a in range(0, len(pos), _GATHER_BLOCK_ROWS):
                p, n = pos[a : a + _GATHER_BLOCK_ROWS], lengths[pos[a : a + _GATHER_BLOCK_ROWS]]
                within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
                src = np.repeat(self.starts[rows[p]], n) + within
                out[np.repeat(offsets[p], n) + within] = values[src]
        return self._array(offsets, buffer, total)

    def _array(self, offsets: np.ndarray, values: pa.Buffer, total: int) -> pa.Array:
        flat = pa.Array.from_buffers(self.type.value_type, total, [None, values])
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat, type=self.type)


class _Gatherer:
    """A table prepared once for gathering many row subsets (``table.take`` piece by
    piece): list columns as ``_FlatList``, the others as single Arrow arrays."""

    def __init__(self, table: pa.Table, pool: _BufferPool | None = None) -> None:
        self.schema = table.schema
        self.pool = pool
        self.columns: list[_FlatList | pa.Array] = []
        for col in table.columns:
            self.columns.append(_FlatList(col) if _FlatList.usable(col) else col.combine_chunks())

    def take(self, rows: np.ndarray) -> pa.Table:
        """The rows ``rows`` of the table, in that order."""
        indices = pa.array(rows, pa.int64())
        return pa.Table.from_arrays(
            [
                c.take(rows, self.pool) if isinstance(c, _FlatList) else c.take(indices)
                for c in self.columns
            ],
            schema=self.schema,
        )


def dedup_sort(table: pa.Table) -> tuple[pa.Table, pa.Array]:
    """Keep one row per ``(vin, seq)``, the earliest received; sort by ``(vin, ts, seq)``.

    Among copies received at the same time the first in ``table`` order wins, so the
    result depends only on the input order.

    Returns
    -------
    (pyarrow.Table, pyarrow.Array)
        The kept rows, and the VIN of every dropped duplicate.
    """
    kept, dropped, rank, vins = _output_order(table)
    return _Gatherer(table).take(kept), vins.take(pa.array(rank[dropped]))


def _count_by_vin(vins: pa.Array | pa.ChunkedArray, column: str) -> pa.Table:
    if len(vins) == 0:
        return pa.table({"vin": pa.array([], pa.string()), column: pa.array([], pa.int64())})
    counts = pc.value_counts(vins)
    return pa.table(
        {"vin": counts.field("values"), column: pc.cast(counts.field("counts"), pa.int64())}
    )


def _combine_stats(parts: list[pa.Table]) -> pa.Table:
    """Sum per-VIN counts from several tables with subsets of the stats columns."""
    full = []
    for t in parts:
        cols = {"vin": pc.cast(t["vin"], pa.string())}
        for name in ("readings_received", "duplicates_removed"):
            cols[name] = (
                t[name] if name in t.column_names else pa.array(np.zeros(t.num_rows, np.int64))
            )
        full.append(pa.table(cols, schema=STATS_SCHEMA))
    merged = pa.concat_tables(full) if full else STATS_SCHEMA.empty_table()
    agg = merged.group_by("vin", use_threads=False).aggregate(
        [("readings_received", "sum"), ("duplicates_removed", "sum")]
    )
    out = pa.table(
        {
            "vin": agg["vin"],
            "readings_received": agg["readings_received_sum"],
            "duplicates_removed": agg["duplicates_removed_sum"],
        },
        schema=STATS_SCHEMA,
    )
    return out.sort_by("vin")


@dataclass(frozen=True, slots=True)
class _Plan:
    """How a partition is merged: its distinct VINs in order, with each VIN's output file
    (``part``) and merge range (``range_``); a range never straddles two files."""

    vins: pa.Array
    part: np.ndarray
    range_: np.ndarray

    @property
    def parts(self) -> int:
        return int(self.part.max()) + 1 if len(self.part) else 1

    @property
    def ranges(self) -> int:
        return int(self.range_.max()) + 1 if len(self.range_) else 0

    def ranges_of(self, part: int) -> list[int]:
        """The merge ranges of output file ``part``, in order."""
        return sorted({int(r) for r in self.range_[self.part == part]})

    def part_of(self, vins: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """The output file of each of ``vins`` by VIN order (a VIN the partition does
        not hold goes to the file whose VIN range it falls in)."""
        if not len(self.vins):
            return np.zeros(len(vins), dtype=np.int64)
        firsts = np.array(
            [self.vins[int(np.argmax(self.part == k))].as_py() for k in range(self.parts)],
            dtype=object,
        )
        where = np.searchsorted(firsts, np.array(vins.to_pylist(), dtype=object), side="right")
        return np.maximum(where - 1, 0)


def _plan(vin_counts: pa.Table, file_rows: int, memory_rows: int) -> _Plan:
    """Cut the partition's VINs (``vin_counts``: rows ``n`` per VIN, VINs may repeat) into
    output files of at least ``file_rows`` rows each, of about equal size, and each file
    into merge ranges of about ``memory_rows`` rows."""
    agg = vin_counts.group_by("vin", use_threads=False).aggregate([("n", "sum")]).sort_by("vin")
    vins = agg["vin"].combine_chunks()
    counts = agg["n_sum"].to_numpy().astype(np.int64)
    total = int(counts.sum())
    files = max(1, min(len(counts), total // max(file_rows, 1)))
    # Each VIN goes to the file its middle row falls in when the rows are cut into equal
    # shares; a VIN bigger than a share can leave a share empty, so ids are renumbered.
    before = np.cumsum(counts) - counts
    share = (2 * before + counts) * files // max(2 * total, 1)
    part = np.unique(share, return_inverse=True)[1].astype(np.int64).reshape(-1)
    ranges = np.zeros(len(counts), dtype=np.int64)
    current, filled = 0, 0
    for i, c in enumerate(counts):
        if filled and (filled + c > memory_rows or part[i] != part[i - 1]):
            current, filled = current + 1, 0
        ranges[i] = current
        filled += int(c)
    return _Plan(vins, part, ranges)


def output_names(name_digest: str, files: int) -> list[str]:
    """Names of a compaction's output files (see ``bms.COMPACTED_PREFIX``)."""
    if files == 1:
        return [f"{COMPACTED_PREFIX}{name_digest}.parquet"]
    width = len(str(files))
    return [
        f"{COMPACTED_PREFIX}{name_digest}-{i:0{width}d}of{files}.parquet"
        for i in range(1, files + 1)
    ]


def _tmp_path(output: Path) -> Path:
    """The hidden temporary an output is written to before the commit renames it."""
    return output.parent / f".{output.name}.tmp"


def check_telemetry_schema(path: Path) -> int:
    """Rows of a telemetry file; raise ``SchemaError`` naming it if its schema is foreign."""
    pf = pq.ParquetFile(path)
    found = [(f.name, f.type) for f in pf.schema_arrow]
    expected = [(f.name, f.type) for f in TELEMETRY_SCHEMA]
    if found != expected:
        missing = sorted({n for n, _ in expected} - {n for n, _ in found})
        raise SchemaError(
            f"{path} is not a telemetry file (missing or mistyped columns: "
            f"{', '.join(missing) or 'types differ'}); move it out of the lake"
        )
    return int(pf.metadata.num_rows)


@contextmanager
def _jemalloc_pool() -> Iterator[None]:
    """pyarrow allocates from its jemalloc pool while a merge runs; its memory goes back to
    the system at the end.

    The merge allocates and frees the same few hundred MB over and over (decoded inputs,
    gathered row groups, the Parquet writer's level and page buffers). With the default
    pool (mimalloc) 0.58-0.90 GB stayed resident after compacting 1.7 M readings, and
    counted in the peak of every later stage of the nightly run; with jemalloc 0.34-0.41
    GB, and the merge's own peak is 1.31-1.34 GB instead of 1.39-1.41 GB (CPU time the
    same within noise). Without jemalloc in this pyarrow build the default pool is kept.
    """
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:
        yield
        return
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(previous)
        pool.release_unused()


#: Rows per record batch when reading an input. Whole-file reads (50,000 readings of 96
#: cells) decode each list column into buffers grown by reallocation, tens of MB of fresh
#: memory per file; batches this small reuse the pool's memory. Measured on 40 ingest
#: files of the nightly benchmark: 1.4-1.5 s CPU instead of 1.9-2.9 s.
_READ_BATCH_ROWS = 8192


def _read(path: Path) -> pa.Table:
    """An input file in batches of ``_READ_BATCH_ROWS`` rows, decoded on this thread (the
    caller reads files two at a time)."""
    pf = pq.ParquetFile(path)
    batches = list(pf.iter_batches(batch_size=_READ_BATCH_ROWS, use_threads=False))
    # The cast only renames (list item fields, nullability): no values are copied.
    return pa.Table.from_batches(batches, pf.schema_arrow).cast(TELEMETRY_SCHEMA)


def _read_vins(path: Path) -> pa.ChunkedArray:
    return pq.read_table(path, columns=["vin"])["vin"]


def _write_sorted(
    rg: RowGroupWriter, source: _Gatherer, kept: np.ndarray, pool: ThreadPoolExecutor
) -> None:
    """Write the ``kept`` rows of ``source`` in that order, gathered piece by piece (each
    piece ends on a row-group boundary); the next piece is gathered while one is encoded."""
    first = min(rg.room(), len(kept))
    bounds = [0, *range(first, len(kept), rg.rows), len(kept)]
    pieces = [(a, b) for a, b in pairwise(bounds) if b > a]
    if not pieces:
        return
    ahead = pool.submit(source.take, kept[pieces[0][0] : pieces[0][1]])
    for i in range(len(pieces)):
        piece = ahead.result()
        if i + 1 < len(pieces):
            a, b = pieces[i + 1]
            ahead = pool.submit(source.take, kept[a:b])
        rg.write(piece)


class _Outputs:
    """The output files of one merge: a durable writer per file, written one or two at a
    time; progress is reported as ranges are done (from any thread)."""

    def __init__(
        self,
        outputs: list[Path],
        row_group_rows: int,
        zstd_level: int,
        total_steps: int,
        on_progress: Callable[[int, int], None] | None,
    ) -> None:
        self.outputs = outputs
        self.row_group_rows = row_group_rows
        self.zstd_level = zstd_level
        self.total_steps = max(total_steps, 1)
        self._steps = 0
        self._lock = threading.Lock()
        self._on_progress = on_progress

    @contextmanager
    def writer(self, part: int) -> Iterator[RowGroupWriter]:
        """Row groups of output ``part``, written to its temporary (closed and fsync'ed)."""
        with durable_parquet_writer(
            _tmp_path(self.outputs[part]),
            TELEMETRY_SCHEMA,
            zstd_level=self.zstd_level,
            sorting=["vin", "ts", "seq"],
            column_encoding=COMPACTED_ENCODING,
            statistics=COMPACTED_STATISTICS,
        ) as writer:
            rg = RowGroupWriter(writer, self.row_group_rows)
            yield rg
            rg.close()

    def step_done(self) -> None:
        with self._lock:
            self._steps += 1
            if self._on_progress:
                self._on_progress(min(self._steps, self.total_steps), self.total_steps)

    def each_part(self, work: Callable[[int], None]) -> None:
        """Run ``work(part)`` for every output: two at a time, as each Parquet writer
        encodes on one core."""
        if len(self.outputs) == 1:
            work(0)
            return
        with ThreadPoolExecutor(max_workers=2) as parts:
            list(parts.map(work, range(len(self.outputs))))


def _merge_in_memory(
    inputs: list[Path], plan: _Plan, out: _Outputs, dropped: list[pa.Array]
) -> int:
    """Merge ``inputs`` held in memory at once; return rows out."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        table = pa.concat_tables(list(pool.map(_read, inputs)))
    kept, drop, rank, vins = _output_order(table)
    dropped.append(vins.take(pa.array(rank[drop])))
    source = _Gatherer(table, _BufferPool())
    del table
    # Kept rows are in VIN order, and files hold consecutive VIN ranks.
    bounds = np.searchsorted(plan.part[rank[kept]], np.arange(plan.parts + 1))

    def write(part: int) -> None:
        with ThreadPoolExecutor(max_workers=2) as pool, out.writer(part) as rg:
            _write_sorted(rg, source, kept[bounds[part] : bounds[part + 1]], pool)
        out.step_done()

    out.each_part(write)
    return len(kept)


def _merge_ranges(
    inputs: list[Path],
    plan: _Plan,
    out: _Outputs,
    spill_dir: Path,
    dropped: list[pa.Array],
) -> int:
    """Merge ``inputs`` VIN range by VIN range (see the module docstring); return rows out.

    Appends the VINs of dropped duplicates to ``dropped``.
    """
    n_ranges = plan.ranges
    buffers = _BufferPool()
    shutil.rmtree(spill_dir, ignore_errors=True)
    spill_dir.mkdir(parents=True)

    def split(i: int) -> None:
        """Spill input ``i`` as one IPC file, its rows grouped by VIN range: record batch
        ``r`` holds range ``r`` (maybe no rows). One gather per input, not one per range."""
        t = _read(inputs[i])
        if t.num_rows == 0:
            return
        # Rows sorted by (vin, seq), hence grouped by range: the range merge then reads
        # each spilled input front to back instead of hopping between its rows. Stable,
        # and (vin, seq) only: copies of a reading keep their order in the file, which
        # breaks ties between equal receive times.
        rank = pc.index_in(t["vin"], value_set=plan.vins).to_numpy()
        order = np.lexsort((_int64_keys(t, "seq"), rank))
        bounds = np.searchsorted(plan.range_[rank[order]], np.arange(n_ranges + 1))
        grouped = _Gatherer(t, buffers).take(order).to_batches()[0]
        del t
        with pa.ipc.new_file(spill_dir / f"{i:06d}.arrow", grouped.schema) as w:
            for r in range(n_ranges):
                w.write_batch(grouped.slice(int(bounds[r]), int(bounds[r + 1] - bounds[r])))

    def prepare(r: int) -> tuple[_Gatherer, np.ndarray, pa.Array]:
        """VIN range ``r`` from the spilled inputs (in input order): its rows as a
        ``_Gatherer``, the kept rows in output order, the VINs of dropped duplicates.
        Each file is mapped anew per range, so its pages leave memory with the range."""
        batches = []
        for x in sorted(spill_dir.glob("*.arrow")):
            batch = pa.ipc.open_file(pa.memory_map(str(x))).get_batch(r)
            if batch.num_rows:
                batches.append(batch)
        table = pa.Table.from_batches(batches, TELEMETRY_SCHEMA)
        kept, drop, rank, vins = _output_order(table)
        return _Gatherer(table, buffers), kept, vins.take(pa.array(rank[drop]))

    rows_out = 0
    rows_lock = threading.Lock()

    def write(part: int) -> None:
        """Merge the ranges of output ``part``. A lone output prepares the next range while
        one is written; outputs written two at a time keep both cores busy without that
        (and memory at about two ranges either way)."""
        nonlocal rows_out
        ranges = plan.ranges_of(part)
        ahead_of_time = len(out.outputs) == 1
        with ThreadPoolExecutor(max_workers=2) as pool, out.writer(part) as rg:
            ahead = pool.submit(prepare, ranges[0]) if ahead_of_time and ranges else None
            for k, r in enumerate(ranges):
                if ahead is not None:
                    source, kept, drop = ahead.result()
                    if k + 1 < len(ranges):
                        ahead = pool.submit(prepare, ranges[k + 1])
                else:
                    source, kept, drop = prepare(r)
                _write_sorted(rg, source, kept, pool)
                dropped.append(drop)
                with rows_lock:
                    rows_out += len(kept)
                del source, kept
                out.step_done()

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(split, range(len(inputs))))
        buffers.clear()  # sized for a spilled input, not for a row group
        out.each_part(write)
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    return rows_out


def _merge(
    inputs: list[Path],
    outputs: list[Path],
    spill_dir: Path,
    *,
    plan: _Plan,
    stats_of: Callable[[Path], Path],
    prior_stats: list[pa.Table],
    received: list[pa.Table],
    rows_total: int,
    memory_rows: int,
    row_group_rows: int,
    zstd_level: int,
    on_progress: Callable[[int, int], None] | None,
) -> int:
    """Merge ``inputs`` (``rows_total`` rows) into the temporaries of ``outputs`` (one per
    file of ``plan``), each closed and fsync'ed, and write each output's per-VIN
    statistics (``prior_stats`` plus ``received`` plus this merge's duplicates, split
    by the outputs' VIN ranges) to ``stats_of(output)``; return rows out.
    """
    dropped: list[pa.Array] = []
    in_memory = rows_total <= memory_rows
    out = _Outputs(
        outputs, row_group_rows, zstd_level, len(outputs) if in_memory else plan.ranges, on_progress
    )
    if in_memory:
        rows_out = _merge_in_memory(inputs, plan, out, dropped)
    else:
        rows_out = _merge_ranges(inputs, plan, out, spill_dir, dropped)
    dup_counts = _count_by_vin(
        pa.chunked_array(dropped, pa.string()).combine_chunks(), "duplicates_removed"
    )
    stats = _combine_stats([*prior_stats, *received, dup_counts])
    part = plan.part_of(stats["vin"])
    for k, output in enumerate(outputs):
        write_parquet_atomic(stats.filter(pa.array(part == k)), stats_of(output))
    return rows_out


def _outputs_of(journal: dict[str, Any]) -> list[str]:
    """The output names a journal names (one ``output`` in journals of before the split)."""
    names = journal.get("outputs")
    return list(names) if names is not None else [journal["output"]]


def _commit(outputs: list[Path]) -> None:
    """Step 3: rename every durable temporary into place; the last rename commits."""
    for i, output in enumerate(outputs):
        os.replace(_tmp_path(output), output)
        if i == 0 and len(outputs) > 1:
            pause_point("compaction:first-renamed")
    fsync_dir(outputs[0].parent)


def _finish(data_dir: Path, state_dir: Path, journal_path: Path, journal: dict[str, Any]) -> None:
    """Step 4: remove the inputs, record the work as done, drop the journal."""
    day = date.fromisoformat(journal["date"])
    fleet = journal["fleet"]
    part = telemetry_dir(data_dir / "lake", day, fleet)
    outputs = _outputs_of(journal)
    for name in journal["inputs"]:
        if name not in outputs:
            (part / name).unlink(missing_ok=True)
            if name.startswith(COMPACTED_PREFIX):
                stats_path(state_dir, part / name).unlink(missing_ok=True)
    fsync_dir(part)
    done = DoneStore(state_dir, data_dir)
    files = [part / name for name in outputs]
    inputs_digest = digest(file_fingerprint(files, data_dir))
    done.mark_done(STAGE, partition_key(day, fleet), inputs_digest, files)
    journal_path.unlink()


def _roll_back(
    data_dir: Path, state_dir: Path, journal_path: Path, journal: dict[str, Any]
) -> None:
    """Not every output was renamed into place, so no input was removed yet: drop the
    outputs that were, the temporaries, their statistics and the journal."""
    day = date.fromisoformat(journal["date"])
    part = telemetry_dir(data_dir / "lake", day, journal["fleet"])
    for name in _outputs_of(journal):
        if name not in journal["inputs"]:
            (part / name).unlink(missing_ok=True)
        # ``.name.tmp``, and ``.name.<uuid>.tmp`` of journals of before the split.
        for tmp in part.glob(f".{name}*.tmp"):
            tmp.unlink()
        stats_path(state_dir, part / name).unlink(missing_ok=True)
    journal_path.unlink()


def recover_compactions(data_dir: Path) -> list[str]:
    """Finish or undo compactions that a killed run left half done.

    Returns
    -------
    list of str
        One line per journal handled, e.g. ``rolled forward date=2026-11-25-fleet=demo``.
    """
    state_dir = data_dir / "state"
    jdir = state_dir / "nightly" / "journal"
    done: list[str] = []
    for jp in sorted(jdir.glob("compaction-*.json")) if jdir.is_dir() else []:
        journal = read_json(jp)
        day = date.fromisoformat(journal["date"])
        part = telemetry_dir(data_dir / "lake", day, journal["fleet"])
        key = partition_key(day, journal["fleet"])
        if all((part / name).exists() for name in _outputs_of(journal)):
            _finish(data_dir, state_dir, jp, journal)
            done.append(f"rolled forward {key}")
        else:
            _roll_back(data_dir, state_dir, jp, journal)
            done.append(f"rolled back {key}")
    shutil.rmtree(state_dir / "nightly" / "tmp", ignore_errors=True)
    return done


def compact_partition(
    data_dir: Path,
    day: date,
    fleet: str,
    *,
    row_group_rows: int = 250_000,
    memory_rows: int = 1_000_000,
    file_rows: int = 4_000_000,
    zstd_level: int = 3,
    on_progress: Callable[[int, int], None] | None = None,
) -> CompactionResult:
    """Compact the telemetry of one UTC event date and fleet (see the module docstring).

    Parameters
    ----------
    data_dir : Path
        The data directory (``lake/`` and ``state/`` inside).
    day, fleet : date, str
        The partition.
    row_group_rows : int
        Rows per row group of the output. [rows]
    memory_rows : int
        Partitions with more rows are merged in VIN ranges of about this many rows. [rows]
    file_rows : int
        A partition of at least twice this many rows is written as several files of
        disjoint VIN ranges, each of at least this many rows, two at a time. [rows]
    zstd_level : int
        zstd level of the output.
    on_progress : callable, optional
        Called with (steps done, steps in total).

    Raises
    ------
    ValueError
        A compaction journal of this partition is still pending (run
        ``recover_compactions`` first).
    SchemaError
        A file in the partition does not have the telemetry schema.
    """
    state_dir = data_dir / "state"
    lake = data_dir / "lake"
    part = telemetry_dir(lake, day, fleet)
    key = partition_key(day, fleet)
    jp = _journal_path(state_dir, day, fleet)
    if jp.exists():
        raise ValueError(f"compaction journal {jp} is pending; recover it first")
    inputs = sorted(part.glob("*.parquet"))
    if not inputs:
        return CompactionResult(day, fleet, "empty", 0, 0, 0, 0, ())
    done = DoneStore(state_dir, data_dir)
    fingerprint = file_fingerprint(inputs, data_dir)
    rows_now = sum(check_telemetry_schema(p) for p in inputs)
    if done.is_done(STAGE, key, digest(fingerprint)):
        return CompactionResult(day, fleet, "up to date", len(inputs), rows_now, rows_now, 0, ())
    if holds_unique_readings(inputs) and all(stats_path(state_dir, p).exists() for p in inputs):
        # Already a compaction output (e.g. rewritten by an erasure): nothing to merge.
        done.mark_done(STAGE, key, digest(fingerprint), inputs)
        return CompactionResult(day, fleet, "up to date", len(inputs), rows_now, rows_now, 0, ())

    with ThreadPoolExecutor(max_workers=2) as pool:
        vin_counts = list(pool.map(lambda p: _count_by_vin(_read_vins(p), "n"), inputs))
    plan = _plan(pa.concat_tables(vin_counts), file_rows, memory_rows)
    name_digest = digest([[p.name, p.stat().st_size] for p in inputs])[:16]
    outputs = [part / name for name in output_names(name_digest, plan.parts)]
    spill = state_dir / "nightly" / "tmp" / f"compaction-{key}"
    prior = [s for p in inputs if is_compacted(p) and (s := read_stats(state_dir, p)) is not None]
    received = [
        c.rename_columns(["vin", "readings_received"])
        for p, c in zip(inputs, vin_counts, strict=True)
        if not is_compacted(p)
    ]
    journal = {
        "date": day.isoformat(),
        "fleet": fleet,
        "inputs": [p.name for p in inputs],
        "outputs": [p.name for p in outputs],
    }
    write_json_atomic(journal, jp)
    pause_point("compaction:journaled")
    with _jemalloc_pool():
        rows_out = _merge(
            inputs,
            outputs,
            spill,
            plan=plan,
            stats_of=lambda p: stats_path(state_dir, p),
            prior_stats=prior,
            received=received,
            rows_total=rows_now,
            memory_rows=memory_rows,
            row_group_rows=row_group_rows,
            zstd_level=zstd_level,
            on_progress=on_progress,
        )
    pause_point("compaction:before-commit")
    _commit(outputs)
    pause_point("compaction:committed")
    _finish(data_dir, state_dir, jp, journal)
    return CompactionResult(
        day,
        fleet,
        "compacted",
        len(inputs),
        rows_now,
        rows_out,
        rows_now - rows_out,
        tuple(outputs),
    )
