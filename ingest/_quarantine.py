"""Quarantine: every rejected message (or batch item), its raw bytes and the reason.

Files: ``lake/quarantine/date=<receive date, UTC>/<worker>-<random>.parquet`` with
``QUARANTINE_SCHEMA``. A row is written, fsync'ed and renamed before the message that
carried it is acknowledged, so nothing rejected is lost either.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from bms import write_parquet_atomic

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("topic", pa.string(), nullable=False),
        pa.field("payload", pa.large_binary(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("received_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("worker", pa.string(), nullable=False),
        pa.field("batch_index", pa.int32()),
        pa.field("source", pa.string(), nullable=False),
    ],
    metadata={
        b"fleetbms.table": b"quarantine",
        b"fleetbms.version": b"1",
        b"fleetbms.reasons": b"see bms.REJECT_REASONS",
    },
)


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    """One rejected message or batch item."""

    topic: str
    payload: bytes
    reason: str
    detail: str
    received_at_ms: int
    batch_index: int | None
    source: str  # "mqtt" or "file:<path>:<line>" (valid UTF-8: see ingest._files._shown)


def escaped(row: QuarantineRow, why: str) -> QuarantineRow:
    """``row`` with its text (``topic``, ``detail``, ``source``) as ASCII, every other
    character a backslash escape (lone surrogates too), and ``why`` at the start of the
    detail; reason, raw bytes, receive time and batch index unchanged. For a row the
    Parquet writer refuses as it is."""

    def ascii_(text: str) -> str:
        return text.encode("ascii", "backslashreplace").decode("ascii")

    return replace(
        row,
        topic=ascii_(row.topic),
        detail=ascii_(f"[{why}] {row.detail}"),
        source=ascii_(row.source),
    )


def quarantine_table(rows: list[QuarantineRow], worker: str) -> pa.Table:
    """``QUARANTINE_SCHEMA`` table of ``rows``."""
    return pa.Table.from_pydict(
        {
            "topic": [r.topic for r in rows],
            "payload": [r.payload for r in rows],
            "reason": [r.reason for r in rows],
            "detail": [r.detail[:2000] for r in rows],
            "received_at": [r.received_at_ms for r in rows],
            "worker": [worker] * len(rows),
            "batch_index": [r.batch_index for r in rows],
            "source": [r.source for r in rows],
        },
        schema=QUARANTINE_SCHEMA,
    )


def write_quarantine(
    rows: list[QuarantineRow], lake_dir: Path, worker: str, token: str | None = None
) -> list[Path]:
    """Write ``rows`` under ``quarantine/date=<receive date>/`` durably; the paths.

    ``token`` names the files (``<worker>-<token>.parquet``, random without): writing
    again with the same token replaces the dates already written, so a retry after a
    later date failed stores (and ``fleetbms status`` counts) each row once."""
    if not rows:
        return []
    by_day: dict[str, list[QuarantineRow]] = {}
    for r in rows:
        day = datetime.fromtimestamp(r.received_at_ms / 1000, tz=UTC).date().isoformat()
        by_day.setdefault(day, []).append(r)
    paths = []
    for day, part in sorted(by_day.items()):
        name = f"{worker}-{token or uuid.uuid4().hex[:12]}.parquet"
        path = lake_dir / "quarantine" / f"date={day}" / name
        paths.append(write_parquet_atomic(quarantine_table(part, worker), path))
    return paths
