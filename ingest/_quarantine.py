"""Quarantine: every rejected message (or batch item), its raw bytes and the reason.

Files: ``lake/quarantine/date=<receive date, UTC>/<worker>-<random>.parquet`` with
``QUARANTINE_SCHEMA``. A row is written, fsync'ed and renamed before the message that
carried it is acknowledged, so nothing rejected is lost either.

Last resort: a row the Parquet writer refuses even with its text escaped is kept as a
JSON dump beside them, ``<worker>-<random>.json`` (``dump_quarantine_row``): the row's
fields under the schema's names, ``received_at_ms`` for ``received_at``, and ``payload``,
the raw bytes as text (bytes that are not UTF-8 as U+DC80..U+DCFF, Python's
``surrogateescape``; ``read_quarantine_dump`` gives them back exactly). Written with
``atomic_write_bytes``, it can fail only as the disk does.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from bms import atomic_write_bytes, write_parquet_atomic

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


def ascii_text(text: str) -> str:
    """``text`` as ASCII, every other character a backslash escape (lone surrogates too)."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


def escaped(row: QuarantineRow, why: str) -> QuarantineRow:
    """``row`` with its text (``topic``, ``detail``, ``source``) as ASCII (``ascii_text``)
    and ``why`` at the start of the detail; reason, raw bytes, receive time and batch index
    unchanged. For a row the Parquet writer refuses as it is."""
    return replace(
        row,
        topic=ascii_text(row.topic),
        detail=ascii_text(f"[{why}] {row.detail}"),
        source=ascii_text(row.source),
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


def _receive_day(row: QuarantineRow) -> str:
    return datetime.fromtimestamp(row.received_at_ms / 1000, tz=UTC).date().isoformat()


def dump_quarantine_row(
    row: QuarantineRow, why: str, lake_dir: Path, worker: str, token: str
) -> Path:
    """Keep ``row`` as a JSON dump (see the module docstring), ``why`` at the start of its
    detail; ``token`` names the file (the same token replaces it). The path."""
    doc = {
        "topic": row.topic,
        "payload": row.payload.decode("utf-8", "surrogateescape"),
        "reason": row.reason,
        "detail": f"[{why}] {row.detail}",
        "received_at_ms": row.received_at_ms,
        "worker": worker,
        "batch_index": row.batch_index,
        "source": row.source,
    }
    # ensure_ascii: lone surrogates (of the payload, or of any text) as \udcxx escapes
    data = json.dumps(doc, ensure_ascii=True).encode("ascii") + b"\n"
    path = lake_dir / "quarantine" / f"date={_receive_day(row)}" / f"{worker}-{token}.json"
    return atomic_write_bytes(data, path)


def read_quarantine_dump(path: Path) -> QuarantineRow:
    """The row of a dump written by ``dump_quarantine_row``.

    Raises
    ------
    OSError
        The file cannot be read.
    ValueError
        It is not such a dump (``json.JSONDecodeError`` is one).
    """
    doc = json.loads(path.read_bytes())
    try:
        return QuarantineRow(
            topic=str(doc["topic"]),
            payload=str(doc["payload"]).encode("utf-8", "surrogateescape"),
            reason=str(doc["reason"]),
            detail=str(doc["detail"]),
            received_at_ms=int(doc["received_at_ms"]),
            batch_index=None if doc["batch_index"] is None else int(doc["batch_index"]),
            source=str(doc["source"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a quarantine dump: {exc!r}") from None


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
        by_day.setdefault(_receive_day(r), []).append(r)
    paths = []
    for day, part in sorted(by_day.items()):
        name = f"{worker}-{token or uuid.uuid4().hex[:12]}.parquet"
        path = lake_dir / "quarantine" / f"date={day}" / name
        paths.append(write_parquet_atomic(quarantine_table(part, worker), path))
    return paths
