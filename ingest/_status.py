"""What ``fleetbms status`` says about ingest: the workers and the quarantine (reads only).

Workers come from their state files (``state/ingest/<worker>.json``, saved after every
flush) and their locks (``state/ingest/<worker>.lock``, held while the worker runs); the
quarantine from the ``reason``, ``detail``, ``topic`` and ``received_at`` columns of
``lake/quarantine`` (the raw payloads are not read), and from the JSON dumps there of the
rows the Parquet writer refused (``ingest._quarantine.dump_quarantine_row``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pyarrow.parquet as pq

from ingest._quarantine import read_quarantine_dump


class _StateHead(msgspec.Struct):
    worker: str
    updated_at_ms: int
    vins: dict[str, msgspec.Raw]
    group: str = ""


@dataclass(frozen=True)
class WorkerStatus:
    """One ingest (or import) worker of the data directory."""

    worker: str
    running_pid: int | None  # pid holding the worker lock; None = not running
    last_saved: datetime | None  # last state save (after each flush); None = unreadable
    vehicles: int  # VINs in its state
    group: str


@dataclass(frozen=True)
class QuarantineEntry:
    """The newest quarantined message."""

    received_at: datetime
    reason: str
    topic: str
    detail: str


@dataclass(frozen=True)
class IngestStatus:
    """Workers, and the quarantine: rows per reason and the newest one."""

    workers: list[WorkerStatus] = field(default_factory=list)
    quarantined: dict[str, int] = field(default_factory=dict)  # reason -> rows
    newest_quarantined: QuarantineEntry | None = None
    unreadable_files: int = 0  # quarantine files that could not be read
    dumped: int = 0  # rows kept as JSON dumps (refused by the Parquet writer), in quarantined


def _holder(lock: Path) -> int | None:
    """Pid of the running worker named in ``lock``, None when none runs.

    The file is only read, never locked: a ``status`` taking the lock, however briefly,
    could make a worker starting at that moment refuse to run. A worker empties the file
    when it stops; after a ``kill -9`` the pid stays and is checked for life.
    """
    try:
        text = lock.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _workers(state_dir: Path) -> list[WorkerStatus]:
    base = state_dir / "ingest"
    names = {p.stem for p in base.glob("*.json")} | {p.stem for p in base.glob("*.lock")}
    out = []
    for name in sorted(names):
        last: datetime | None = None
        vehicles, group = 0, ""
        try:
            head = msgspec.json.decode((base / f"{name}.json").read_bytes(), type=_StateHead)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            pass
        else:
            last = datetime.fromtimestamp(head.updated_at_ms / 1000, UTC)
            vehicles, group = len(head.vins), head.group
        out.append(WorkerStatus(name, _holder(base / f"{name}.lock"), last, vehicles, group))
    return out


def ingest_status(lake_dir: Path, state_dir: Path) -> IngestStatus:
    """Workers and quarantine of a data directory (``data/lake``, ``data/state``)."""
    counts: dict[str, int] = {}
    newest: QuarantineEntry | None = None
    unreadable = 0
    for f in sorted((lake_dir / "quarantine").glob("date=*/*.parquet")):
        try:
            t = pq.read_table(f, columns=["reason", "received_at", "topic", "detail"])
        except (OSError, ValueError):
            unreadable += 1
            continue
        reasons = t["reason"].to_pylist()
        for r in reasons:
            counts[r] = counts.get(r, 0) + 1
        received = t["received_at"].to_pylist()
        for i, at in enumerate(received):
            if newest is None or at >= newest.received_at:  # rows are in receive order
                detail = t["detail"][i].as_py()
                newest = QuarantineEntry(at, reasons[i], t["topic"][i].as_py(), detail)
    dumped = 0
    for f in sorted((lake_dir / "quarantine").glob("date=*/*.json")):
        try:
            row = read_quarantine_dump(f)
        except (OSError, ValueError):
            unreadable += 1
            continue
        dumped += 1
        counts[row.reason] = counts.get(row.reason, 0) + 1
        at = datetime.fromtimestamp(row.received_at_ms / 1000, UTC)
        if newest is None or at >= newest.received_at:
            newest = QuarantineEntry(at, row.reason, row.topic, row.detail)
    return IngestStatus(
        _workers(state_dir), dict(sorted(counts.items())), newest, unreadable, dumped
    )
