"""The lake on local disk: atomic Parquet writes and the partition layout.

Every file in the lake is written the same way: into a hidden temporary file in the
target directory, flushed and fsync'ed, renamed over its final name, then the directory
is fsync'ed, so a crash leaves either the old state or the new one and readers (which
glob ``*.parquet``) never see a half-written file.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bms._errors import SchemaError
from bms._telemetry import TELEMETRY_SCHEMA

#: zstd level of fresh ingest files; compaction and archive may use higher ones.
DEFAULT_ZSTD_LEVEL = 3


def fsync_path(path: Path) -> None:
    """fsync a file or directory by path (a directory: so a rename in it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives a power loss."""
    fsync_path(path)


def atomic_write_bytes(data: bytes, path: Path) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def write_secret_file(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write ``data`` to ``path`` with ``mode``; fail if it exists unless ``replace``.

    The content is complete and on disk before the name appears (temporary file, fsync,
    then ``link`` for create-only or ``replace`` for overwrite, then fsync of the folder).
    """
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


@functools.lru_cache(maxsize=64)
def _leaf_paths(schema: pa.Schema) -> dict[str, list[str]]:
    """The Parquet leaf column paths of each top-level column of ``schema`` (cached: the
    caller must not change the dict).

    The writer's per-column properties take leaf paths (``cell_mv.list.element``) and
    silently ignore any other name, so they are read off the Parquet schema the writer
    itself derives (of an empty file written in memory), not rebuilt by hand.
    """
    sink = pa.BufferOutputStream()
    pq.ParquetWriter(sink, schema).close()
    meta = pq.read_metadata(pa.BufferReader(sink.getvalue()))
    leaves = [meta.schema.column(i).path for i in range(meta.num_columns)]
    out: dict[str, list[str]] = {}
    at = 0  # leaves come in the order of the columns (names may hold dots)
    for name in schema.names:
        mine = out.setdefault(name, [])
        while at < len(leaves) and (leaves[at] == name or leaves[at].startswith(name + ".")):
            mine.append(leaves[at])
            at += 1
    return out


#: Parquet encodings a writer must be asked for (dictionary and plain are its defaults).
_CHOSEN_ENCODINGS = (
    "DELTA_BINARY_PACKED",
    "DELTA_LENGTH_BYTE_ARRAY",
    "DELTA_BYTE_ARRAY",
    "BYTE_STREAM_SPLIT",
)


def parquet_column_encodings(pf: pq.ParquetFile) -> dict[str, str]:
    """Top-level column -> the non-default encoding its values were written with, read off
    the first row group: the ``column_encoding`` of ``atomic_parquet_writer`` that
    rewrites the file alike (compaction's delta-encoded sequence numbers, times and cell
    lists)."""
    meta = pf.metadata
    if not meta.num_row_groups:
        return {}
    owner = [name for name, leaves in _leaf_paths(pf.schema_arrow).items() for _ in leaves]
    rg = meta.row_group(0)
    out: dict[str, str] = {}
    for i in range(rg.num_columns):
        chosen = [e for e in rg.column(i).encodings if e in _CHOSEN_ENCODINGS]
        if chosen:
            out[owner[i]] = chosen[0]
    return out


def _known_leaf_paths(schema: pa.Schema, names: Iterable[str], option: str) -> dict[str, list[str]]:
    """``_leaf_paths(schema)``, after checking that writer ``option`` names only columns of
    ``schema`` (``ValueError`` naming the others)."""
    leaves = _leaf_paths(schema)
    unknown = sorted(set(names) - set(leaves))
    if unknown:
        raise ValueError(
            f"{option} names unknown column(s) {', '.join(unknown)}; "
            f"valid: {', '.join(schema.names)}"
        )
    return leaves


def parquet_encoding_options(
    schema: pa.Schema, column_encoding: Mapping[str, str]
) -> dict[str, Any]:
    """Keyword arguments of ``pyarrow.parquet.ParquetWriter`` / ``write_table`` that write
    each top-level column of ``column_encoding`` in its encoding (``DELTA_BINARY_PACKED``,
    ``BYTE_STREAM_SPLIT``, ...; of a list column: its elements) without a dictionary, and
    every other column with one (empty: the writer's defaults).

    The writer takes leaf paths (``cell_mv.list.element``) and silently ignores any other
    name, so they are derived here from ``schema``.

    Raises
    ------
    ValueError
        ``column_encoding`` names a column that ``schema`` does not have.
    """
    if not column_encoding:
        return {}
    leaves = _known_leaf_paths(schema, column_encoding, "column_encoding")
    return {
        "use_dictionary": [
            leaf for name, paths in leaves.items() if name not in column_encoding for leaf in paths
        ],
        "column_encoding": {
            leaf: enc for name, enc in column_encoding.items() for leaf in leaves[name]
        },
    }


@contextmanager
def durable_parquet_writer(
    tmp: Path,
    schema: pa.Schema,
    *,
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
    sorting: list[str] | None = None,
    column_encoding: Mapping[str, str] | None = None,
    statistics: Sequence[str] | None = None,
) -> Iterator[pq.ParquetWriter]:
    """A zstd Parquet writer of ``tmp`` that is closed and fsync'ed on normal exit and
    removed on error; renaming it into place is the caller's (see
    ``atomic_parquet_writer``, and compaction, which renames several files at once).

    ``sorting`` records the columns the rows are sorted by in the file's metadata.
    ``column_encoding`` maps top-level column names to a Parquet encoding
    (``DELTA_BINARY_PACKED``, ``BYTE_STREAM_SPLIT``, ...) of their values (of a list
    column: its elements), written without a dictionary; the other columns keep
    dictionary encoding. ``statistics`` names the top-level columns whose min/max are
    written (default: all); the statistics of a list's elements cost the writer time and
    no reader prunes on them.

    Raises
    ------
    ValueError
        ``column_encoding`` or ``statistics`` names a column that ``schema`` does not have.
    """
    tmp.parent.mkdir(parents=True, exist_ok=True)
    sorting_columns = None
    if sorting:
        sorting_columns = [pq.SortingColumn(schema.get_field_index(c)) for c in sorting]
    options: dict[str, Any] = {"write_statistics": True}
    if statistics is not None:
        leaves = _known_leaf_paths(schema, statistics, "statistics")
        options["write_statistics"] = [leaf for name in statistics for leaf in leaves[name]]
    options.update(parquet_encoding_options(schema, column_encoding or {}))
    writer = pq.ParquetWriter(
        tmp,
        schema,
        compression="zstd",
        compression_level=zstd_level,
        sorting_columns=sorting_columns,
        **options,
    )
    try:
        yield writer
        writer.close()
        fsync_path(tmp)
    except BaseException:
        if writer.is_open:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_parquet_writer(
    path: Path,
    schema: pa.Schema,
    *,
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
    sorting: list[str] | None = None,
    column_encoding: Mapping[str, str] | None = None,
) -> Iterator[pq.ParquetWriter]:
    """A zstd Parquet writer whose file appears at ``path`` only when complete and durable.

    Writes to a hidden temporary in the same directory (leading dot, ``.tmp`` suffix, so
    globs of ``*.parquet`` never match it); on normal exit closes, fsyncs, renames and
    fsyncs the directory; on error removes the temporary. ``sorting`` and
    ``column_encoding`` are those of ``durable_parquet_writer``.

    Raises
    ------
    ValueError
        ``column_encoding`` names a column that ``schema`` does not have.
    """
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    with durable_parquet_writer(
        tmp, schema, zstd_level=zstd_level, sorting=sorting, column_encoding=column_encoding
    ) as writer:
        yield writer
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_parquet_atomic(
    table: pa.Table,
    path: Path,
    *,
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
    row_group_size: int | None = None,
) -> Path:
    """Write ``table`` as zstd Parquet at ``path`` atomically (see ``atomic_parquet_writer``)."""
    with atomic_parquet_writer(path, table.schema, zstd_level=zstd_level) as writer:
        writer.write_table(table, row_group_size=row_group_size)
    return path


#: Encodings of telemetry files as written (ingest, import, simulator): adjacent cells of
#: a pack sit a few mV apart, so the cell list delta-encodes (Parquet
#: DELTA_BINARY_PACKED) into a few bits a value, cheaper to write and to read than a
#: dictionary. Measured on the nightly benchmark's flushes (50,000 readings x 96 cells):
#: a flush written in 159 ms instead of 199; a 300-vehicle day (52 flushes) read by
#: pyarrow in 2.6-3.3 s CPU instead of 3.1-3.6, and 287 MB on disk instead of 328.
TELEMETRY_ENCODING = {"cell_mv": "DELTA_BINARY_PACKED"}


@dataclass(frozen=True, slots=True)
class WrittenFile:
    """One telemetry file written by ``write_telemetry``."""

    path: Path
    day: date
    fleet: str
    rows: int


#: Name prefix of the nightly compaction's output, the files of a compacted partition:
#: ``compacted-<digest>.parquet``, or for a partition written as n files of disjoint VIN
#: ranges ``compacted-<digest>-<i>of<n>.parquet``; each sorted by (vin, ts, seq) with
#: one row per (vin, seq) (``pipeline`` writes them).
COMPACTED_PREFIX = "compacted-"


def compaction_digest(path: Path) -> str | None:
    """The digest naming the compaction that wrote ``path``, or ``None`` if it is not a
    compaction output."""
    name = path.name
    if not name.startswith(COMPACTED_PREFIX):
        return None
    return name[len(COMPACTED_PREFIX) :].split(".", 1)[0].split("-", 1)[0]


def holds_unique_readings(files: Sequence[Path]) -> bool:
    """Whether a telemetry partition's ``files`` hold one row per ``(vin, seq)`` for sure:
    they are all outputs of one compaction (whose files hold disjoint VIN ranges).
    Ingest files may repeat a redelivered reading, and a late file beside a compacted one
    may repeat one of its readings, as may the files of two compactions (seen while a
    recompaction replaces the old file); a job that reads such a partition must
    deduplicate (a sort of every row) and may skip that only here."""
    digests = {compaction_digest(p) for p in files}
    return len(digests) == 1 and None not in digests


def damaged_output_message(path: Path, day: date, command: str, exc: Exception) -> str:
    """One line for a stage's output file that cannot be read: which file, why, and the
    command (``analyze``, ``anomalies``) that computes its date again."""
    return (
        f"cannot read {path} ({exc}); `fleetbms {command} --date {day.isoformat()}` computes that "
        "date again"
    )


def telemetry_dir(lake_root: Path, day: date, fleet: str) -> Path:
    """Hive partition directory of telemetry for one UTC event date and fleet."""
    return lake_root / "telemetry" / f"date={day.isoformat()}" / f"fleet={fleet}"


def write_telemetry(
    table: pa.Table,
    lake_root: Path,
    *,
    file_prefix: str,
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
    file_token: str | None = None,
) -> list[WrittenFile]:
    """The single writer of telemetry: split by (event date, fleet) and write each part.

    Parameters
    ----------
    table : pyarrow.Table
        Output of ``telemetry_table`` / ``ReadingBuffer.to_table``: the stored schema
        plus a ``fleet`` column.
    lake_root : Path
        Root of the lake (``data/lake``).
    file_prefix : str
        Start of each file name (e.g. the worker id); a random suffix makes it unique.
    file_token : str, optional
        The suffix instead of a random one, the same in every partition: writing again
        with the same token (a retry after a partition failed) replaces the partitions
        already written instead of adding copies of their readings.

    Returns
    -------
    list of WrittenFile
        One per partition touched, all durable when this returns.

    Raises
    ------
    SchemaError
        The table does not carry the telemetry schema.
    OSError
        The disk is full or not writable; nothing half-written is left visible.
    """
    expected = ["fleet", *TELEMETRY_SCHEMA.names]
    if table.column_names != expected:
        raise SchemaError(f"telemetry table columns {table.column_names} != {expected}")
    if table.num_rows == 0:
        return []
    days = pc.cast(pc.cast(table["ts"], pa.timestamp("ms")), pa.date32())
    keys = pa.table({"day": days, "fleet": table["fleet"]})
    groups = keys.group_by(["day", "fleet"], use_threads=False).aggregate([])
    written: list[WrittenFile] = []
    day_np = np.asarray(days.to_numpy(zero_copy_only=False))
    fleet_np = np.asarray(table["fleet"].to_numpy(zero_copy_only=False))
    body = table.drop_columns(["fleet"]).replace_schema_metadata(TELEMETRY_SCHEMA.metadata)
    for day, fleet in zip(groups["day"].to_pylist(), groups["fleet"].to_pylist(), strict=True):
        if groups.num_rows == 1:
            part = body
        else:
            mask = (day_np == np.datetime64(day)) & (fleet_np == fleet)
            part = body.filter(pa.array(mask))
        name = f"{file_prefix}-{file_token or uuid.uuid4().hex[:12]}.parquet"
        path = telemetry_dir(lake_root, day, fleet) / name
        with atomic_parquet_writer(
            path, part.schema, zstd_level=zstd_level, column_encoding=TELEMETRY_ENCODING
        ) as writer:
            writer.write_table(part)
        written.append(WrittenFile(path, day, fleet, part.num_rows))
    return written


def telemetry_files(lake_root: Path, day: date | None = None) -> list[Path]:
    """Visible telemetry files (never temporaries), optionally of one event date."""
    base = lake_root / "telemetry"
    pattern = f"date={day.isoformat()}/fleet=*/*.parquet" if day else "date=*/fleet=*/*.parquet"
    return sorted(base.glob(pattern))


def last_seqs(
    lake_root: Path, fleet: str, vins: Iterable[str], *, older: Iterable[Path] = ()
) -> dict[str, int]:
    """The highest ``seq`` the lake holds for each of ``vins`` of ``fleet``.

    A vehicle's seq rises with time (the contract: strictly increasing per VIN), so the
    date partitions are read newest first, only their ``vin`` and ``seq`` columns, until
    every VIN has been seen; a VIN the lake does not hold is left out. ``older``: roots
    of the same layout (``ROOT/telemetry/date=D/fleet=F``) holding older dates than
    ``lake_root`` (the archive), read in turn for the VINs not found before.
    """
    wanted = set(vins)
    found: dict[str, int] = {}
    for root in (lake_root, *older):
        days = sorted((root / "telemetry").glob(f"date=*/fleet={fleet}"), reverse=True)
        for part in days:
            if wanted <= found.keys():
                return found
            for path in sorted(part.glob("*.parquet")):
                t = pq.read_table(path, columns=["vin", "seq"])
                top = t.group_by("vin", use_threads=False).aggregate([("seq", "max")])
                for vin, seq in zip(
                    top["vin"].to_pylist(), top["seq_max"].to_pylist(), strict=True
                ):
                    if vin in wanted and seq is not None and seq > found.get(vin, -1):
                        found[vin] = seq
        # the older roots only for the VINs still unknown (their dates are older)
        wanted -= found.keys()
    return found


def read_telemetry(paths: Iterable[Path]) -> pa.Table:
    """Read telemetry files into one table with the stored schema (no partition columns)."""
    tables = [pq.read_table(p, schema=TELEMETRY_SCHEMA) for p in paths]
    if not tables:
        return TELEMETRY_SCHEMA.empty_table()
    return pa.concat_tables(tables)
