"""Retention of raw telemetry: an archive tier after N days, deletion after M days.

Raw readings are personal data once a VIN is linked to an owner (India's DPDP Act 2023,
s.8(7): erase once the purpose is served), and they are by far the largest table. After
``archive_after_days`` a telemetry partition moves from ``lake/telemetry/`` to
``archive/telemetry/`` (same layout, same file names, same row groups, a higher zstd
level); after ``purge_after_days`` it is deleted, together with its compaction
statistics. The quarantine (raw rejected messages, by receive date) and the live alerts
(by event date) hold the same personal data and are deleted at the same age. Metrics,
anomalies and reports are kept.

Moving a file is: write the archive copy atomically, then unlink the lake file. A run
killed in between finds the archive copy complete on the next run and only unlinks the
lake file, so nothing is lost and nothing is archived twice. Age is counted from the
nightly's run date, not the wall clock, so reruns of a date give the same result; but
never from a date after today (UTC): a run date in the future would otherwise archive
and purge data that is not old at all.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bms import atomic_parquet_writer, fsync_dir, parquet_column_encodings
from pipeline._nightly_state import pause_point


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """What retention moved and deleted (partitions are (date, fleet) directories)."""

    archived_files: int
    archived_partitions: int
    purged_partitions: int
    archive_before: date
    purge_before: date
    purged_quarantine_alerts: int = 0  # date partitions of lake/quarantine and lake/alerts


def _partition_dates(base: Path) -> list[tuple[date, Path]]:
    out: list[tuple[date, Path]] = []
    for d in sorted(base.glob("date=*")) if base.is_dir() else []:
        try:
            out.append((date.fromisoformat(d.name.removeprefix("date=")), d))
        except ValueError:
            continue
    return out


def rewrite_parquet(
    src: Path,
    dst: Path,
    *,
    zstd_level: int,
    keep: Callable[[pq.ParquetFile, int], pa.Table] | None = None,
    metadata: dict[bytes, bytes] | None = None,
) -> int:
    """Copy ``src`` to ``dst`` atomically, row group by row group, at ``zstd_level``.

    Schema, metadata, row-group boundaries, declared sort order and the columns' chosen
    encodings (``bms.parquet_column_encodings``) are kept, and memory holds one row group.
    ``keep(file, i)`` may return a filtered table for row group ``i`` and ``metadata``
    replaces the schema metadata (both used by erasure). Returns the number of rows
    written.
    """
    pf = pq.ParquetFile(src)
    meta = pf.metadata
    schema = pf.schema_arrow if metadata is None else pf.schema_arrow.with_metadata(metadata)
    sorting = meta.row_group(0).sorting_columns if meta.num_row_groups else None
    names = [pf.schema_arrow.field(c.column_index).name for c in sorting or ()]
    rows = 0
    with atomic_parquet_writer(
        dst,
        schema,
        zstd_level=zstd_level,
        sorting=names or None,
        column_encoding=parquet_column_encodings(pf) or None,
    ) as writer:
        for i in range(meta.num_row_groups):
            table = keep(pf, i) if keep is not None else pf.read_row_group(i)
            n = table.num_rows
            if n:
                writer.write_table(table.replace_schema_metadata(schema.metadata), row_group_size=n)
                rows += n
    return rows


def apply_retention(
    data_dir: Path,
    run_date: date,
    *,
    archive_after_days: int,
    purge_after_days: int,
    zstd_level: int,
    on_progress: Callable[[int, int], None] | None = None,
    today: date | None = None,
) -> RetentionResult:
    """Archive telemetry older than ``archive_after_days``, purge it after ``purge_after_days``.

    Parameters
    ----------
    data_dir : Path
        The data directory.
    run_date : date
        The nightly's date; ages are counted from it, or from ``today`` if it is later.
    archive_after_days, purge_after_days : int
        Ages at which a partition is archived and deleted. [days]
    zstd_level : int
        zstd level of archive files.
    today : date, optional
        Today's date in UTC [default: the clock's]; ages never count from a later date.

    Raises
    ------
    ValueError
        ``purge_after_days`` is not greater than ``archive_after_days``, or negative ages.
    """
    if archive_after_days < 0 or purge_after_days <= archive_after_days:
        raise ValueError(
            "retention: need 0 <= archive_after_days < purge_after_days, got "
            f"{archive_after_days} and {purge_after_days}"
        )
    reference = min(run_date, today or datetime.now(UTC).date())
    archive_before = reference - timedelta(days=archive_after_days)
    purge_before = reference - timedelta(days=purge_after_days)
    lake_base = data_dir / "lake" / "telemetry"
    archive_base = data_dir / "archive" / "telemetry"
    state_base = data_dir / "state" / "nightly" / "compaction"

    purged = 0
    for day, d in _partition_dates(archive_base) + _partition_dates(lake_base):
        if day < purge_before:
            shutil.rmtree(d)
            shutil.rmtree(state_base / d.name, ignore_errors=True)
            purged += 1
    if purged:
        for base in (archive_base, lake_base):
            if base.is_dir():
                fsync_dir(base)
    side = 0
    for base in (data_dir / "lake" / "quarantine", data_dir / "lake" / "alerts"):
        old = [d for day, d in _partition_dates(base) if day < purge_before]
        for d in old:
            shutil.rmtree(d)
        if old:
            fsync_dir(base)
        side += len(old)

    todo = [
        (day, fleet_dir)
        for day, d in _partition_dates(lake_base)
        if day < archive_before
        for fleet_dir in sorted(d.glob("fleet=*"))
    ]
    files = 0
    for k, (_day, fleet_dir) in enumerate(todo):
        rel = fleet_dir.relative_to(lake_base)
        for src in sorted(fleet_dir.glob("*.parquet")):
            dst = archive_base / rel / src.name
            if not dst.exists():
                rewrite_parquet(src, dst, zstd_level=zstd_level)
            pause_point("retention:archived-file")
            src.unlink()
            files += 1
        fsync_dir(fleet_dir)
        _remove_empty(fleet_dir, lake_base)
        if on_progress:
            on_progress(k + 1, len(todo))
    return RetentionResult(files, len(todo), purged, archive_before, purge_before, side)


#: A hidden temporary (``.NAME.<id>.tmp``, the atomic writes of ``bms._lake``) older than
#: this was left by a writer that died (kill -9, power loss): no write takes a day. [s]
STALE_TEMPORARY_S = 86_400.0


def sweep_stale_temporaries(
    data_dir: Path, *, now_s: float | None = None, older_than_s: float = STALE_TEMPORARY_S
) -> int:
    """Delete the hidden temporaries of dead writers under the data directory's lake,
    archive, state and reports; return how many. Readers never see them, but they pile
    up and count in ``fleetbms status`` sizes. Only old ones: a command running beside
    the nightly (``analyze``, ``report``, ingest) may be writing a fresh one."""
    now = time.time() if now_s is None else now_s
    removed = 0
    for base in ("lake", "archive", "state", "reports"):
        root = data_dir / base
        if not root.is_dir():
            continue
        for path in root.rglob(".*.tmp"):
            try:
                if path.is_file() and now - path.stat().st_mtime > older_than_s:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # its writer finished or cleaned up meanwhile
                continue
    return removed


def _remove_empty(path: Path, stop: Path) -> None:
    """Remove ``path`` and its parents up to ``stop`` while they are empty."""
    while path != stop:
        try:
            path.rmdir()
        except OSError:  # not empty (e.g. a file ingest is writing right now) or gone
            return
        path = path.parent
