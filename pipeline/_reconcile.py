"""Reconciliation: per vehicle and day, readings expected from ``seq`` against readings kept.

``seq`` counts up by one per reading and per VIN (telemetry contract v1), so between the
first and last reading of a day a vehicle sent ``seq_last - seq_first + 1`` readings;
every missing ``seq`` is a reading that never arrived (yet). Two tables per (date, fleet),
written after compaction and read by the reports:

``lake/metrics/reconciliation/date=D/fleet=F/part.parquet`` (``RECONCILIATION_SCHEMA``),
one row per vehicle: expected, received (with duplicates), stored, duplicates removed,
missing, quarantined, late and flagged readings, number and longest of the gaps.

``lake/metrics/reconciliation_gaps/date=D/fleet=F/part.parquet`` (``GAPS_SCHEMA``), one
row per gap: the missing ``seq`` range and the timestamps of the readings around it.

Vehicles of the fleet's registry (``lake/registry/vehicles.parquet``) that sent nothing
that day get a row with ``readings_stored = 0`` and null ``seq``/``ts`` columns. Gaps
before a day's first reading (across midnight) are not counted: the readings of the
previous day may still arrive late.

Quarantined readings are counted by the quarantine partition's date, which is the
receive date (their event time may be unreadable); for late replays it can differ from
the event date. A row kept as a JSON dump there (``<worker>-<id>.json``, refused by the
Parquet writer even escaped: ``ingest._quarantine.dump_quarantine_row``) counts exactly
as a Parquet row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bms import holds_unique_readings, telemetry_dir, write_parquet_atomic
from ingest._quarantine import ascii_text, read_quarantine_dump
from pipeline._compact import dedup_sort, is_compacted, read_stats, stats_path, vin_ranks

_TS = pa.timestamp("ms", tz="UTC")

RECONCILIATION_SCHEMA = pa.schema(
    [
        pa.field("vin", pa.string(), nullable=False),
        pa.field("seq_first", pa.int64()),
        pa.field("seq_last", pa.int64()),
        pa.field("ts_first", _TS),
        pa.field("ts_last", _TS),
        pa.field("readings_expected", pa.int64(), nullable=False),
        pa.field("readings_received", pa.int64(), nullable=False),
        pa.field("readings_stored", pa.int64(), nullable=False),
        pa.field("duplicates_removed", pa.int64(), nullable=False),
        pa.field("readings_missing", pa.int64(), nullable=False),
        pa.field("readings_quarantined", pa.int64(), nullable=False),
        pa.field("readings_late", pa.int64(), nullable=False),
        pa.field("readings_flagged", pa.int64(), nullable=False),
        pa.field("gap_count", pa.int64(), nullable=False),
        pa.field("longest_gap_s", pa.float64()),
    ],
    metadata={
        b"fleetbms.table": b"reconciliation",
        b"fleetbms.version": b"1",
        b"fleetbms.units": b"counts: readings; longest_gap_s: s",
    },
)

GAPS_SCHEMA = pa.schema(
    [
        pa.field("vin", pa.string(), nullable=False),
        pa.field("seq_from", pa.int64(), nullable=False),
        pa.field("seq_to", pa.int64(), nullable=False),
        pa.field("readings_missing", pa.int64(), nullable=False),
        pa.field("ts_before", _TS, nullable=False),
        pa.field("ts_after", _TS, nullable=False),
        pa.field("gap_s", pa.float64(), nullable=False),
    ],
    metadata={
        b"fleetbms.table": b"reconciliation_gaps",
        b"fleetbms.version": b"1",
        b"fleetbms.units": b"seq_from..seq_to: missing seq range (inclusive); gap_s: s",
    },
)

_COLUMNS = ["vin", "seq", "ts", "received_at", "quality"]


@dataclass(frozen=True, slots=True)
class ReconciliationResult:
    """Totals of one (date, fleet) reconciliation and the files written."""

    day: date
    fleet: str
    vehicles: int
    readings_missing: int
    gap_count: int
    silent_vehicles: int
    outputs: tuple[Path, ...]


def reconciliation_paths(lake: Path, day: date, fleet: str) -> tuple[Path, Path]:
    """The per-vehicle and the per-gap output files of a (date, fleet)."""
    part = f"date={day.isoformat()}/fleet={fleet}/part.parquet"
    return (
        lake / "metrics" / "reconciliation" / part,
        lake / "metrics" / "reconciliation_gaps" / part,
    )


def quarantine_files(lake: Path, day: date) -> list[Path]:
    """Quarantine files of a receive date: Parquet, and the JSON dumps of rows the Parquet
    writer refused (a hidden temporary of either ends in ``.tmp``: left out)."""
    base = lake / "quarantine" / f"date={day.isoformat()}"
    return sorted([*base.rglob("*.parquet"), *base.rglob("*.json")])


def registry_file(lake: Path) -> Path:
    """The fleet's vehicle registry."""
    return lake / "registry" / "vehicles.parquet"


def _vin_counts(vins: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    """Rows per VIN (nulls ignored)."""
    if pa.types.is_dictionary(vins.type):
        vins = pc.cast(vins, pa.string())
    vins = pc.drop_null(vins)
    if not len(vins):
        return {}
    vc = pc.value_counts(vins)
    return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True))


def _add(into: dict[str, int], counts: dict[str, int]) -> None:
    for v, c in counts.items():
        into[v] = into.get(v, 0) + int(c)


def _quarantined_by_vin(files: list[Path], fleet: str) -> dict[str, int]:
    """Quarantined messages per VIN of ``fleet``, from a ``vin`` column or the topic.

    Ingest stores the topic (``fleet/{fleet_id}/{vin}/bms``) of every rejected message;
    a message whose topic names no vehicle of this fleet is not counted here, nor one
    recorded as ``alert_failed`` (its readings are stored). A JSON dump (``*.json``)
    counts as its row would as Parquet; one that cannot be read raises (``OSError``,
    ``ValueError``), as a damaged Parquet file does: never an undercount.
    """
    counts: dict[str, int] = {}
    dumped = [read_quarantine_dump(f) for f in files if f.suffix == ".json"]
    if dumped:
        # The topic as the row's escaped Parquet copy would hold it: lone surrogates
        # (kept in a dump) cannot become an Arrow string.
        t = pa.table(
            {
                "topic": [ascii_text(r.topic) for r in dumped],
                "reason": [r.reason for r in dumped],
            }
        )
        _add(counts, _topic_counts(t, fleet))
    for f in files:
        if f.suffix == ".json":
            continue
        names = pq.read_schema(f).names
        if "vin" in names:
            cols = ["vin", "fleet"] if "fleet" in names else ["vin"]
            t = pq.read_table(f, columns=cols)
            if "fleet" in names:
                t = t.filter(pc.equal(t["fleet"], fleet))
            _add(counts, _vin_counts(t["vin"]))
        elif "topic" in names:
            t = pq.read_table(f, columns=["topic", "reason"] if "reason" in names else ["topic"])
            _add(counts, _topic_counts(t, fleet))
    return counts


def _topic_counts(t: pa.Table, fleet: str) -> dict[str, int]:
    """Rows per VIN of ``fleet`` named by the ``topic`` column, ``alert_failed`` left out."""
    if "reason" in t.column_names:  # alert_failed: stored, only its alerts were not evaluated
        t = t.filter(pc.invert(pc.fill_null(pc.equal(t["reason"], "alert_failed"), False)))
    parts = pc.extract_regex(t["topic"], r"^fleet/(?P<fleet>[^/]+)/(?P<vin>[^/]+)/")
    mine = pc.fill_null(pc.equal(pc.struct_field(parts, "fleet"), fleet), False)
    return _vin_counts(pc.struct_field(parts, "vin").filter(mine))


def _registered_vins(lake: Path, fleet: str, day: date) -> set[str]:
    path = registry_file(lake)
    if not path.exists():
        return set()
    reg = pq.read_table(path)
    if "fleet" in reg.column_names:
        reg = reg.filter(pc.equal(reg["fleet"], fleet))
    vins = set(reg["vin"].to_pylist())
    if "in_service_date" in reg.column_names:
        later = reg.filter(pc.greater(reg["in_service_date"], pa.scalar(day, pa.date32())))
        vins -= set(later["vin"].to_pylist())
    return vins


def reconcile_tables(
    readings: pa.Table,
    received_by_vin: dict[str, int],
    quarantined_by_vin: dict[str, int],
    registered: set[str],
    *,
    late_after_s: float,
    already_unique: bool = False,
) -> tuple[pa.Table, pa.Table]:
    """Per-vehicle and per-gap tables from the (possibly duplicated) readings of one day.

    Parameters
    ----------
    readings : pyarrow.Table
        Columns ``vin, seq, ts, received_at, quality``; duplicates allowed.
    received_by_vin : dict
        Readings received per VIN before deduplication (duplicates included). [readings]
    quarantined_by_vin, registered
        Quarantined readings per VIN; VINs expected to report.
    late_after_s : float
        A reading counts as late when received more than this after its ``ts``. [s]
    already_unique : bool
        ``readings`` hold one row per ``(vin, seq)`` (a compacted file): skip deduplication.
    """
    kept = readings if already_unique else dedup_sort(readings)[0]
    n = kept.num_rows
    rank, names = vin_ranks(kept["vin"])
    seq = np.asarray(kept["seq"].to_numpy(), dtype=np.int64)
    # (vin, seq) order: nearly always already there (compaction writes (vin, ts, seq) and
    # seq rises with ts), checked in one pass over integers; else one integer sort.
    if n > 1 and (np.any(np.diff(rank) < 0) or np.any((np.diff(rank) == 0) & (np.diff(seq) <= 0))):
        order = np.lexsort((seq, rank))
        kept, rank, seq = kept.take(pa.array(order)), rank[order], seq[order]
    ts = pc.cast(kept["ts"], pa.int64()).to_numpy()
    recv = pc.cast(kept["received_at"], pa.int64()).to_numpy()
    quality = kept["quality"].to_numpy()
    starts = np.zeros(0, dtype=np.int64)
    if n:
        change = np.ones(n, dtype=bool)
        change[1:] = rank[1:] != rank[:-1]
        starts = np.flatnonzero(change)
    ends = np.append(starts[1:], n)
    vins = names.take(pa.array(rank[starts])).to_pylist()
    stored = ends - starts
    late = np.add.reduceat(recv - ts > late_after_s * 1000, starts) if n else np.zeros(0)
    flagged = np.add.reduceat(quality != 0, starts) if n else np.zeros(0)

    step = np.diff(seq)
    gap_at = np.flatnonzero(step > 1)
    gap_at = gap_at[~change[gap_at + 1]] if n > 1 else gap_at
    gap_owner = np.searchsorted(starts, gap_at, side="right") - 1
    gaps = pa.table(
        {
            "vin": names.take(pa.array(rank[gap_at])),
            "seq_from": seq[gap_at] + 1,
            "seq_to": seq[gap_at + 1] - 1,
            "readings_missing": step[gap_at] - 1,
            "ts_before": pa.array(ts[gap_at], _TS),
            "ts_after": pa.array(ts[gap_at + 1], _TS),
            "gap_s": (ts[gap_at + 1] - ts[gap_at]) / 1000.0,
        },
        schema=GAPS_SCHEMA,
    )
    gap_count = np.bincount(gap_owner, minlength=len(starts))
    longest = np.zeros(len(starts))
    np.maximum.at(longest, gap_owner, (ts[gap_at + 1] - ts[gap_at]) / 1000.0)

    expected = seq[ends - 1] - seq[starts] + 1 if n else np.zeros(0, np.int64)
    received = np.array(
        [max(received_by_vin.get(v, 0), s) for v, s in zip(vins, stored, strict=True)], np.int64
    )
    rows = {
        "vin": vins,
        "seq_first": seq[starts].tolist(),
        "seq_last": seq[ends - 1].tolist(),
        "ts_first": pa.array(ts[starts], _TS),
        "ts_last": pa.array(ts[ends - 1], _TS),
        "readings_expected": expected,
        "readings_received": received,
        "readings_stored": stored,
        "duplicates_removed": received - stored,
        "readings_missing": expected - stored,
        "readings_quarantined": [quarantined_by_vin.get(v, 0) for v in vins],
        "readings_late": late.astype(np.int64),
        "readings_flagged": flagged.astype(np.int64),
        "gap_count": gap_count.astype(np.int64),
        "longest_gap_s": pa.array(longest, mask=gap_count == 0),
    }
    per_vin = pa.table(rows, schema=RECONCILIATION_SCHEMA)
    silent = sorted((registered | set(quarantined_by_vin)) - set(vins))
    if silent:
        zeros = np.zeros(len(silent), np.int64)
        extra = pa.table(
            {
                "vin": silent,
                "seq_first": pa.nulls(len(silent), pa.int64()),
                "seq_last": pa.nulls(len(silent), pa.int64()),
                "ts_first": pa.nulls(len(silent), _TS),
                "ts_last": pa.nulls(len(silent), _TS),
                "readings_expected": zeros,
                "readings_received": zeros,
                "readings_stored": zeros,
                "duplicates_removed": zeros,
                "readings_missing": zeros,
                "readings_quarantined": [quarantined_by_vin.get(v, 0) for v in silent],
                "readings_late": zeros,
                "readings_flagged": zeros,
                "gap_count": zeros,
                "longest_gap_s": pa.nulls(len(silent), pa.float64()),
            },
            schema=RECONCILIATION_SCHEMA,
        )
        per_vin = pa.concat_tables([per_vin, extra]).sort_by("vin")
    return per_vin, gaps


def reconciliation_inputs(data_dir: Path, day: date, fleet: str) -> list[Path]:
    """Every file reconciliation of (date, fleet) reads (for its input fingerprint)."""
    lake = data_dir / "lake"
    files = sorted(telemetry_dir(lake, day, fleet).glob("*.parquet"))
    extra = [stats_path(data_dir / "state", p) for p in files if is_compacted(p)]
    reg = registry_file(lake)
    return [*files, *extra, *quarantine_files(lake, day), *([reg] if reg.exists() else [])]


def reconcile_partition(
    data_dir: Path, day: date, fleet: str, *, late_after_s: float = 3600.0
) -> ReconciliationResult:
    """Reconcile one (date, fleet) and write its two tables (see the module docstring)."""
    lake = data_dir / "lake"
    state = data_dir / "state"
    files = sorted(telemetry_dir(lake, day, fleet).glob("*.parquet"))
    unique = holds_unique_readings(files)
    # One compaction's files: VINs read as the file's dictionary codes (no string per row).
    tables = [
        pq.read_table(p, columns=_COLUMNS, read_dictionary=["vin"] if unique else None)
        for p in files
    ]
    readings = (
        pa.concat_tables(tables)
        if tables
        else pa.table(
            {
                "vin": pa.array([], pa.string()),
                "seq": pa.array([], pa.int64()),
                "ts": pa.array([], _TS),
                "received_at": pa.array([], _TS),
                "quality": pa.array([], pa.int32()),
            }
        )
    )
    received: dict[str, int] = {}
    for p, t in zip(files, tables, strict=True):
        stats = read_stats(state, p) if is_compacted(p) else None
        if stats is not None:
            vins = stats["vin"].to_pylist()
            _add(received, dict(zip(vins, stats["readings_received"].to_pylist(), strict=True)))
        else:
            _add(received, _vin_counts(t["vin"]))
    per_vin, gaps = reconcile_tables(
        readings,
        received,
        _quarantined_by_vin(quarantine_files(lake, day), fleet),
        _registered_vins(lake, fleet, day),
        late_after_s=late_after_s,
        already_unique=unique,
    )
    out_vin, out_gaps = reconciliation_paths(lake, day, fleet)
    write_parquet_atomic(per_vin, out_vin)
    write_parquet_atomic(gaps, out_gaps)
    stored = per_vin["readings_stored"].to_numpy()
    return ReconciliationResult(
        day,
        fleet,
        per_vin.num_rows,
        int(pc.sum(per_vin["readings_missing"]).as_py() or 0),
        gaps.num_rows,
        int((stored == 0).sum()),
        (out_vin, out_gaps),
    )
