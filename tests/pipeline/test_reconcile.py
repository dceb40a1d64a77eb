"""Reconciliation of one day's readings: the same tables whatever order the rows come in."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest._quarantine import QuarantineRow, dump_quarantine_row, write_quarantine
from pipeline._reconcile import (
    _quarantined_by_vin,
    quarantine_files,
    reconcile_partition,
    reconcile_tables,
    reconciliation_inputs,
)
from tests.pipeline.nightly_data import day_table, write_flushes

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


def test_a_quarantine_row_kept_as_a_json_dump_counts_like_a_parquet_row(tmp_path: Path) -> None:
    """Ingest keeps a row the Parquet writer refused even escaped as a JSON dump beside
    the quarantine files (``dump_quarantine_row``): reconciliation counts it as the same
    row stored as Parquet (its topic's vehicle, not ``alert_failed``, this fleet only), and
    its file is an input, so a dump written after a run makes the next run reconcile again."""
    day = date(2026, 5, 1)
    lake = tmp_path / "lake"
    write_flushes(day_table(day), lake, flushes=2)
    ms = int(datetime(2026, 5, 1, 12, tzinfo=UTC).timestamp() * 1000)

    def row(vin: str, reason: str, fleet: str = "demo") -> QuarantineRow:
        return QuarantineRow(f"fleet/{fleet}/{vin}/bms", b"\xff{", reason, "x", ms, None, "mqtt")

    write_quarantine([row(VINS[0], "not_json")], lake, "w1", "t1")
    why = "kept as a JSON dump: writing it raised ArrowInvalid: refused"
    dumps = [
        dump_quarantine_row(row(VINS[0], "bad_value"), why, lake, "w1", "t1-0"),
        dump_quarantine_row(row(VINS[1], "alert_failed"), why, lake, "w1", "t1-1"),
        dump_quarantine_row(row(VINS[2], "not_json", fleet="other"), why, lake, "w1", "t1-2"),
        dump_quarantine_row(row("MAT612345NEX00009", "not_json"), why, lake, "w2", "t2-0"),
    ]
    # A dump keeps text as it came, lone surrogates too (no Arrow string can hold them).
    odd = replace(row(VINS[0], "bad_topic"), topic=f"fleet/demo/{VINS[0]}/bms\udcff")
    dumps.append(dump_quarantine_row(odd, why, lake, "w2", "t2-1"))
    assert all(p.parent == lake / "quarantine" / f"date={day}" for p in dumps)

    assert set(dumps) <= set(reconciliation_inputs(tmp_path, day, "demo"))
    reconcile_partition(tmp_path, day, "demo")
    per_vin = pq.read_table(lake / f"metrics/reconciliation/date={day}/fleet=demo/part.parquet")
    counted = dict(
        zip(per_vin["vin"].to_pylist(), per_vin["readings_quarantined"].to_pylist(), strict=True)
    )
    # VIN 9 sent nothing stored: a row of its own, as for a Parquet row.
    assert counted == {VINS[0]: 3, VINS[1]: 0, VINS[2]: 0, "MAT612345NEX00009": 1}
