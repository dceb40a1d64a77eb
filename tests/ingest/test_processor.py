"""``ingest.Processor`` on its own (real Parquet files, DuckDB): flushes retried after a
failure part-way, with the receive times a test chooses (a flush over midnight)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from ingest import Processor, ingest_status
from tests.ingest import write_fault
from tests.ingest.helpers import (
    NOW,
    VINS,
    bms_topic,
    encode,
    engine,
    lake_counts,
    query,
    reading,
)


def _processor(data_dir: Path) -> Processor:
    return Processor(
        lake_dir=data_dir / "lake", state_dir=data_dir / "state", worker="w", engine=engine()
    )


def _midnight() -> tuple[datetime, datetime]:
    """One second before and after the last midnight (UTC)."""
    midnight = NOW.replace(hour=0, minute=0, second=0)
    return midnight - timedelta(seconds=1), midnight + timedelta(seconds=1)


def _add(proc: Processor, topic: str, doc: object, at: datetime) -> None:
    proc.add(topic, encode(doc), received_at_ms=int(at.timestamp() * 1000))


@pytest.mark.parametrize("table", ["telemetry", "alerts", "quarantine"])
def test_a_flush_over_midnight_retried_after_its_second_date_failed_stores_each_row_once(
    data_dir: Path, table: str
) -> None:
    """A flush over midnight writes two date partitions of telemetry, alerts and
    quarantine. When the second date's write fails (here its folder is a file: the disk's
    error, retried) after the first date's file was written, the retry used to write that
    file again: its readings twice in the lake, its quarantine rows counted twice by
    ``fleetbms status``. The retry replaces it: every row is stored once."""
    lake = data_dir / "lake"
    before, after = _midnight()
    proc = _processor(data_dir)
    # VINS[0] over the temperature limit before midnight, VINS[1] after: alerts on both dates
    for seq, at in enumerate((before, after)):
        _add(proc, bms_topic(VINS[0]), reading(VINS[0], seq, at, temp_c=65.0 - 40 * seq), at)
        _add(proc, bms_topic(VINS[1]), reading(VINS[1], seq, at, temp_c=25.0 + 40 * seq), at)
        _add(proc, bms_topic(VINS[2]), {**reading(VINS[2], seq, at), "v": 2}, at)
    batch = proc.take()
    assert batch is not None
    blocker = lake / table / f"date={after.date().isoformat()}"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"")
    with pytest.raises(OSError, match=blocker.name):
        proc.write(batch)
    first = lake / table / f"date={before.date().isoformat()}"
    assert list(first.rglob("*.parquet"))  # the first date was written before the failure
    blocker.unlink()
    result = proc.write(batch)

    assert result.rows == 4
    assert lake_counts(data_dir) == (4, 4)
    alerts = query(data_dir, "alerts", "SELECT vin, seq, rule, event FROM t ORDER BY ALL")
    assert {e.ts_ms // 86_400_000 for e in result.events} == {
        int(before.timestamp()) // 86_400,
        int(after.timestamp()) // 86_400,
    }
    assert alerts == sorted((e.vin, e.seq, e.rule, e.event) for e in result.events)
    status = ingest_status(lake, data_dir / "state")
    assert status.quarantined == {"unknown_version": 2}
    assert status.unreadable_files == 0


def test_a_quarantine_row_refused_on_the_second_date_of_a_flush_leaves_the_first_stored_once(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quarantine of a flush over midnight: the first date's file is written, then the
    second date's is refused for one row (a fault injected into pyarrow for a detail
    outside ASCII: a bad topic quoted). That row is stored with its text escaped and the
    second date written again; the first date used to be written a second time too,
    counted twice by ``fleetbms status``."""
    write_fault.install_text(monkeypatch.setattr)
    lake = data_dir / "lake"
    before, after = _midnight()
    proc = _processor(data_dir)
    _add(proc, bms_topic(VINS[0]), {**reading(VINS[0], 0, before), "v": 2}, before)
    _add(proc, f"fleet/d\u00e9mo/{VINS[1]}/bms", reading(VINS[1], 0, after), after)
    batch = proc.take()
    assert batch is not None
    proc.write(batch)

    assert ingest_status(lake, data_dir / "state").quarantined == {
        "bad_topic": 1,
        "unknown_version": 1,
    }
    q = query(data_dir, "quarantine", "SELECT date, reason FROM t ORDER BY date")
    assert [(str(r[0]), r[1]) for r in q] == [
        (before.date().isoformat(), "unknown_version"),
        (after.date().isoformat(), "bad_topic"),
    ]
