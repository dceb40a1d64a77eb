"""Reconciliation of one day's readings: the same tables whatever order the rows come in."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ingest._quarantine import QuarantineRow, write_quarantine
from pipeline._reconcile import _quarantined_by_vin, quarantine_files, reconcile_tables

_TS = pa.timestamp("ms", tz="UTC")
VINS = ["MAT612345NEX00001", "MAT612345NEX00002", "MAT612345NEX00003"]


def _readings() -> pa.Table:
    """Three vehicles, 50 readings each every 10 s; vehicle 2 misses seq 20-24, and its
    seq 30 was stamped by a clock that jumped back (its ts sorts before seq 29's)."""
    vin, seq, ts = [], [], []
    for i, v in enumerate(VINS):
        for k in range(50):
            if i == 1 and 20 <= k < 25:
                continue
            vin.append(v)
            seq.append(k)
            ts.append(1_780_000_000_000 + 10_000 * k - (25_000 if (i == 1 and k == 30) else 0))
    table = pa.table(
        {
            "vin": pa.array(vin, pa.string()),
            "seq": pa.array(seq, pa.int64()),
            "ts": pa.array(ts, _TS),
            "received_at": pa.array(np.array(ts) + 800, _TS),
            "quality": pa.array(np.zeros(len(vin), np.int32)),
        }
    )
    return table


def _reconcile(table: pa.Table, unique: bool) -> tuple[pa.Table, pa.Table]:
    return reconcile_tables(
        table,
        {v: 50 for v in VINS},
        {},
        set(VINS),
        late_after_s=3600.0,
        already_unique=unique,
    )


@pytest.mark.parametrize("unique", [True, False])
def test_rows_in_ts_order_or_shuffled_give_the_tables_of_rows_in_seq_order(unique: bool) -> None:
    by_seq = _readings()
    want_vin, want_gaps = _reconcile(by_seq, unique)
    assert want_gaps["vin"].to_pylist() == [VINS[1]]
    assert want_gaps["readings_missing"].to_pylist() == [5]
    # As compaction writes them: sorted by (vin, ts), so seq 30 of vehicle 2 comes first.
    ts_order = np.lexsort(
        (by_seq["ts"].cast(pa.int64()).to_numpy(), np.repeat([0, 1, 2], [50, 45, 50]))
    )
    for order in (ts_order, np.random.default_rng(3).permutation(by_seq.num_rows)):
        got_vin, got_gaps = _reconcile(by_seq.take(pa.array(order)), unique)
        assert got_vin.equals(want_vin)
        assert got_gaps.equals(want_gaps)


def test_quarantined_messages_count_per_vehicle_except_those_whose_readings_were_stored(
    tmp_path: Path,
) -> None:
    """A rejected message counts for the vehicle its topic names; one recorded as
    ``alert_failed`` (its readings stored, only the live alerts not evaluated on them)
    is no missing data and does not count; other fleets' topics do not either."""
    day = date(2026, 5, 1)
    ms = int(datetime(2026, 5, 1, 12, tzinfo=UTC).timestamp() * 1000)

    def row(vin: str, reason: str, fleet: str = "demo") -> QuarantineRow:
        return QuarantineRow(f"fleet/{fleet}/{vin}/bms", b"{}", reason, "x", ms, None, "mqtt")

    rows = [
        row(VINS[0], "not_json"),
        row(VINS[0], "write_failed"),
        row(VINS[0], "alert_failed"),
        row(VINS[1], "alert_failed"),
        row(VINS[2], "bad_value", fleet="other"),
    ]
    write_quarantine(rows, tmp_path / "lake", "w1")
    counted = _quarantined_by_vin(quarantine_files(tmp_path / "lake", day), "demo")
    assert counted == {VINS[0]: 2}
