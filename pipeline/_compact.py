"""Nightly compaction of a telemetry partition: merge, deduplicate, sort, replace atomically.

A partition ``lake/telemetry/date=D/fleet=F/`` collects many small files from ingest (one
per flush). Compaction merges them into one file sorted by ``(vin, ts, seq)``, keeps one
row per ``(vin, seq)`` (the earliest ``received_at``; among equal times the first in file
name order) and writes row groups of ``row_group_rows`` rows.

Replacing several files cannot be one atomic rename, so the switch is journalled:

1. the journal ``state/nightly/journal/compaction-date=D-fleet=F.json`` names the input
   files and the output file;
2. the output is written under a hidden temporary name and fsync'ed, and its per-VIN
   statistics (readings received, duplicates removed) are written to state;
3. the output is renamed to ``compacted-<digest of the input names and sizes>.parquet``
   (the commit point);
4. the inputs are unlinked, the done record written and the journal removed.

A run killed before step 3 leaves the old files as they were: recovery deletes the
journal, the orphan statistics and the hidden temporary. A run killed after step 3
leaves the new file beside (some of) the inputs: recovery finishes step 4. The output
name derives from the inputs only, so an interrupted and an uninterrupted run give the
same file with the same bytes, and the rows of an input are never counted twice once
recovery has run (every run recovers before it reads). Files that ingest writes into the
partition while compaction runs are not inputs and stay for the next run.

A concurrent reader that globs the partition between steps 3 and 4 (a few unlinks) can
see a row twice; readers that must be exact deduplicate on ``(vin, seq)``.

Partitions larger than ``memory_rows`` are merged in VIN ranges: each input file is read
once and split by range into uncompressed Arrow IPC pieces under ``state/nightly/tmp``,
then each range is merged in memory, so memory stays bounded by about two ranges (the
next range is merged while the current one is written).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
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
    atomic_parquet_writer,
    fsync_dir,
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

_SORT_DEDUP = [("vin", "ascending"), ("seq", "ascending"), ("received_at", "ascending")]
_SORT_OUT = [("vin", "ascending"), ("ts", "ascending"), ("seq", "ascending")]


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
    output: Path | None


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

    Row-group boundaries then depend on the rows only, not on how they were batched,
    which keeps the file bytes deterministic.
    """

    def __init__(self, writer: pq.ParquetWriter, rows: int) -> None:
        self._writer = writer
        self._rows = rows
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def write(self, table: pa.Table) -> None:
        """Buffer ``table`` and write every complete row group."""
        self._buffer.append(table)
        self._buffered += table.num_rows
        while self._buffered >= self._rows:
            whole = pa.concat_tables(self._buffer)
            self._writer.write_table(whole.slice(0, self._rows), row_group_size=self._rows)
            rest = whole.slice(self._rows)
            self._buffer = [rest]
            self._buffered = rest.num_rows

    def close(self) -> None:
        """Write the last, short row group."""
        if self._buffered:
            self._writer.write_table(pa.concat_tables(self._buffer), row_group_size=self._rows)
        self._buffer = []
        self._buffered = 0


def dedup_sort(table: pa.Table) -> tuple[pa.Table, pa.Array]:
    """Keep one row per ``(vin, seq)``, the earliest received; sort by ``(vin, ts, seq)``.

    Among copies received at the same time the first in ``table`` order wins (Arrow's
    ``sort_indices`` is stable), so the result depends only on the input order.

    Returns
    -------
    (pyarrow.Table, pyarrow.Array)
        The kept rows, and the VIN of every dropped duplicate.
    """
    n = table.num_rows
    keys = table.select(["vin", "seq", "ts", "received_at"])
    order = pc.sort_indices(keys, sort_keys=_SORT_DEDUP).to_numpy()
    vin = keys["vin"].combine_chunks().take(order)
    seq = keys["seq"].combine_chunks().take(order)
    first = np.ones(n, dtype=bool)
    if n > 1:
        same = pc.and_(
            pc.equal(vin.slice(1), vin.slice(0, n - 1)),
            pc.equal(seq.slice(1), seq.slice(0, n - 1)),
        )
        first[1:] = ~same.to_numpy(zero_copy_only=False)
    kept = order[first]
    dropped_vins = vin.filter(pa.array(~first))
    kept_keys = keys.take(pa.array(kept))
    final = kept[pc.sort_indices(kept_keys, sort_keys=_SORT_OUT).to_numpy()]
    # One contiguous chunk first: take() over many chunks of list columns is slower.
    return table.combine_chunks().take(pa.array(final)), dropped_vins


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


def _plan_ranges(vin_counts: pa.Table, memory_rows: int) -> tuple[pa.Array, np.ndarray]:
    """Sorted VINs and, for each, the index of the VIN range it is merged in."""
    agg = vin_counts.group_by("vin", use_threads=False).aggregate([("n", "sum")]).sort_by("vin")
    vins = agg["vin"].combine_chunks()
    counts = agg["n_sum"].to_numpy()
    ranges = np.zeros(len(counts), dtype=np.int64)
    current, filled = 0, 0
    for i, c in enumerate(counts):
        if filled and filled + c > memory_rows:
            current, filled = current + 1, 0
        ranges[i] = current
        filled += int(c)
    return vins, ranges


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


def _read(path: Path) -> pa.Table:
    return pq.read_table(path, schema=TELEMETRY_SCHEMA)


def _merge_to_file(
    inputs: list[Path],
    out: Path,
    spill_dir: Path,
    *,
    stats_file: Path,
    prior_stats: list[pa.Table],
    memory_rows: int,
    row_group_rows: int,
    zstd_level: int,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[int, int]:
    """Merge ``inputs`` into ``out``; return rows in and rows out.

    The per-VIN statistics (``prior_stats`` plus this merge's counts) are written to
    ``stats_file`` before ``out`` appears, so an existing output always has its statistics.
    """
    vin_parts = []
    received_parts = []
    rows_in = 0
    for p in inputs:
        vins = pq.read_table(p, columns=["vin"])["vin"]
        rows_in += len(vins)
        counts = _count_by_vin(vins, "n")
        vin_parts.append(counts)
        if not is_compacted(p):
            received_parts.append(counts.rename_columns(["vin", "readings_received"]))
    sorted_vins, ranges = _plan_ranges(pa.concat_tables(vin_parts), memory_rows)
    n_ranges = int(ranges.max()) + 1 if len(ranges) else 1
    dropped: list[pa.Array] = []
    rows_out = 0
    with atomic_parquet_writer(
        out, TELEMETRY_SCHEMA, zstd_level=zstd_level, sorting=["vin", "ts", "seq"]
    ) as writer:
        rg = RowGroupWriter(writer, row_group_rows)
        if n_ranges == 1:
            merged, drop = dedup_sort(pa.concat_tables([_read(p) for p in inputs]))
            rg.write(merged)
            dropped.append(drop)
            rows_out += merged.num_rows
            if on_progress:
                on_progress(1, 1)
        else:
            shutil.rmtree(spill_dir, ignore_errors=True)
            spill_dir.mkdir(parents=True)
            for r in range(n_ranges):
                (spill_dir / f"{r:06d}").mkdir()

            def split(i: int) -> None:
                """Spill input ``i`` into one IPC piece per VIN range."""
                t = _read(inputs[i])
                rank = pc.index_in(t["vin"], value_set=sorted_vins).to_numpy()
                rid = ranges[rank]
                order = np.argsort(rid, kind="stable")
                t = t.take(pa.array(order))
                bounds = np.searchsorted(rid[order], np.arange(n_ranges + 1))
                for r in range(n_ranges):
                    lo, hi = int(bounds[r]), int(bounds[r + 1])
                    if hi > lo:
                        piece = spill_dir / f"{r:06d}" / f"{i:06d}.arrow"
                        with pa.ipc.new_file(piece, t.schema) as w:
                            w.write_table(t.slice(lo, hi - lo))

            def merge(r: int) -> tuple[pa.Table, pa.Array]:
                """Deduplicate and sort VIN range ``r`` from its pieces (input order)."""
                pieces = sorted((spill_dir / f"{r:06d}").glob("*.arrow"))
                tables = [pa.ipc.open_file(pa.memory_map(str(x))).read_all() for x in pieces]
                return dedup_sort(pa.concat_tables(tables))

            # Arrow releases the GIL: two threads split the inputs, then the next range
            # is merged while the current one is encoded and written.
            try:
                with ThreadPoolExecutor(max_workers=2) as pool:
                    list(pool.map(split, range(len(inputs))))
                    ahead = pool.submit(merge, 0)
                    for r in range(n_ranges):
                        merged, drop = ahead.result()
                        if r + 1 < n_ranges:
                            ahead = pool.submit(merge, r + 1)
                        rg.write(merged)
                        dropped.append(drop)
                        rows_out += merged.num_rows
                        del merged
                        if on_progress:
                            on_progress(r + 1, n_ranges)
            finally:
                shutil.rmtree(spill_dir, ignore_errors=True)
        rg.close()
        dup_counts = _count_by_vin(
            pa.chunked_array(dropped, pa.string()).combine_chunks(), "duplicates_removed"
        )
        stats = _combine_stats([*prior_stats, *received_parts, dup_counts])
        write_parquet_atomic(stats, stats_file)
        pause_point("compaction:before-commit")
    return rows_in, rows_out


def _finish(data_dir: Path, state_dir: Path, journal_path: Path, journal: dict[str, Any]) -> None:
    """Step 4: remove the inputs, record the work as done, drop the journal."""
    day = date.fromisoformat(journal["date"])
    fleet = journal["fleet"]
    part = telemetry_dir(data_dir / "lake", day, fleet)
    output = part / journal["output"]
    for name in journal["inputs"]:
        if name != journal["output"]:
            (part / name).unlink(missing_ok=True)
            if name.startswith(COMPACTED_PREFIX):
                stats_path(state_dir, part / name).unlink(missing_ok=True)
    fsync_dir(part)
    done = DoneStore(state_dir, data_dir)
    inputs_digest = digest(file_fingerprint([output], data_dir))
    done.mark_done(STAGE, partition_key(day, fleet), inputs_digest, [output])
    journal_path.unlink()


def _roll_back(
    data_dir: Path, state_dir: Path, journal_path: Path, journal: dict[str, Any]
) -> None:
    """The output never appeared: drop its temporary, its statistics and the journal."""
    day = date.fromisoformat(journal["date"])
    part = telemetry_dir(data_dir / "lake", day, journal["fleet"])
    for tmp in part.glob(f".{journal['output']}.*.tmp"):
        tmp.unlink()
    stats_path(state_dir, part / journal["output"]).unlink(missing_ok=True)
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
        if (part / journal["output"]).exists():
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
    zstd_level : int
        zstd level of the output.
    on_progress : callable, optional
        Called with (ranges done, ranges in total).

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
        return CompactionResult(day, fleet, "empty", 0, 0, 0, 0, None)
    done = DoneStore(state_dir, data_dir)
    fingerprint = file_fingerprint(inputs, data_dir)
    rows_now = sum(check_telemetry_schema(p) for p in inputs)
    if done.is_done(STAGE, key, digest(fingerprint)):
        return CompactionResult(day, fleet, "up to date", len(inputs), rows_now, rows_now, 0, None)
    if len(inputs) == 1 and is_compacted(inputs[0]) and stats_path(state_dir, inputs[0]).exists():
        # Already a compaction output (e.g. rewritten by an erasure): nothing to merge.
        done.mark_done(STAGE, key, digest(fingerprint), inputs)
        return CompactionResult(day, fleet, "up to date", 1, rows_now, rows_now, 0, None)

    name_digest = digest([[p.name, p.stat().st_size] for p in inputs])[:16]
    output = part / f"{COMPACTED_PREFIX}{name_digest}.parquet"
    spill = state_dir / "nightly" / "tmp" / f"compaction-{key}"
    prior = [s for p in inputs if is_compacted(p) and (s := read_stats(state_dir, p)) is not None]
    journal = {
        "date": day.isoformat(),
        "fleet": fleet,
        "inputs": [p.name for p in inputs],
        "output": output.name,
    }
    write_json_atomic(journal, jp)
    pause_point("compaction:journaled")
    rows_in, rows_out = _merge_to_file(
        inputs,
        output,
        spill,
        stats_file=stats_path(state_dir, output),
        prior_stats=prior,
        memory_rows=memory_rows,
        row_group_rows=row_group_rows,
        zstd_level=zstd_level,
        on_progress=on_progress,
    )
    pause_point("compaction:committed")
    _finish(data_dir, state_dir, jp, journal)
    return CompactionResult(
        day, fleet, "compacted", len(inputs), rows_in, rows_out, rows_in - rows_out, output
    )
