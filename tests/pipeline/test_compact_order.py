"""Compaction's row order and deduplication against a plain Arrow statement of the rule."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline._compact import dedup_sort

TS = pa.timestamp("ms", tz="UTC")
VINS = ["MAT612345NEX00009", "MAT612345NEX00001", "LFP000000000000B2", "ZZZ000000000000A1"]


def reference(table: pa.Table) -> tuple[pa.Table, list[str]]:
    """The rule, stated with Arrow's stable sorts: per ``(vin, seq)`` the earliest
    ``received_at`` (first in table order among equal times), sorted by ``(vin, ts, seq)``."""
    n = table.num_rows
    by_seq = pc.sort_indices(
        table, [("vin", "ascending"), ("seq", "ascending"), ("received_at", "ascending")]
    ).to_numpy()
    vin = table["vin"].to_numpy(zero_copy_only=False)[by_seq]
    seq = table["seq"].to_numpy()[by_seq]
    first = np.ones(n, dtype=bool)
    first[1:] = (vin[1:] != vin[:-1]) | (seq[1:] != seq[:-1])
    kept = table.take(pa.array(by_seq[first]))
    order = pc.sort_indices(kept, [("vin", "ascending"), ("ts", "ascending"), ("seq", "ascending")])
    return kept.take(order).combine_chunks(), sorted(vin[~first].tolist())


def readings(
    rng: np.random.Generator,
    n: int,
    *,
    dup_share: float,
    other_ts_share: float = 0.0,
    backwards_share: float = 0.0,
    widths: tuple[int, ...] = (6,),
    null_values: bool = False,
) -> pa.Table:
    """``n`` readings of a few VINs, a share of them resent (same or another ``ts``)."""
    vin_idx = rng.integers(0, len(VINS), n)
    seq = rng.integers(0, n, n)
    ts = 1_764_000_000_000 + seq * 10_000
    backwards = rng.random(n) < backwards_share  # clock steps back: ts against seq
    ts[backwards] -= rng.integers(20_000, 90_000, int(backwards.sum()))
    resent = rng.random(n) < dup_share
    src = rng.integers(0, n, n)
    vin_idx[resent], seq[resent], ts[resent] = (
        vin_idx[src[resent]],
        seq[src[resent]],
        ts[src[resent]],
    )
    other_ts = resent & (rng.random(n) < other_ts_share)  # a resend with another timestamp
    ts[other_ts] += rng.integers(1, 5, int(other_ts.sum())) * 1000
    received = ts + rng.integers(0, 3, n) * 1000  # coarse: ties between copies
    width = np.asarray(widths)[vin_idx % len(widths)]
    offsets = np.concatenate([[0], np.cumsum(width)]).astype(np.int32)
    values = pa.array(
        rng.integers(3000, 4200, int(offsets[-1])).astype(np.int16),
        mask=(rng.random(int(offsets[-1])) < 0.05) if null_values else None,
    )
    return pa.table(
        {
            "vin": pa.array(np.asarray(VINS, dtype=object)[vin_idx], pa.string()),
            "seq": pa.array(seq, pa.int64()),
            "ts": pa.array(ts, TS),
            "cell_mv": pa.ListArray.from_arrays(pa.array(offsets), values),
            "received_at": pa.array(received, TS),
            "worker": pa.array([f"w{i % 3}" for i in range(n)]),
        }
    )


def as_files(table: pa.Table, rng: np.random.Generator, files: int) -> pa.Table:
    """``table`` cut into chunks at random places, like files read one after another,
    each chunk a slice of a bigger array (non-zero offsets)."""
    cuts = np.sort(rng.choice(np.arange(1, table.num_rows), files - 1, replace=False))
    pieces = []
    for a, b in zip([0, *cuts], [*cuts, table.num_rows], strict=True):
        padded = pa.concat_tables([table.slice(0, 3), table.slice(a, b - a)]).combine_chunks()
        pieces.append(padded.slice(3))
    return pa.concat_tables(pieces)


CASES: dict[str, dict[str, Any]] = {
    "no duplicates": {"dup_share": 0.0},
    "redelivered copies": {"dup_share": 0.3},
    "copies with another ts": {"dup_share": 0.3, "other_ts_share": 0.5},
    "clock stepping back": {"dup_share": 0.1, "backwards_share": 0.2},
    "two cell counts": {"dup_share": 0.2, "widths": (6, 3, 0)},
    "null cell values": {"dup_share": 0.2, "null_values": True},
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("files", [1, 7])
def test_dedup_sort_follows_the_rule(case: str, files: int) -> None:
    for seed in range(4):
        rng = np.random.default_rng(seed)
        table = readings(rng, 3_000, **CASES[case])
        if files > 1:
            table = as_files(table, rng, files)
        kept, dropped = dedup_sort(table)
        want, want_dropped = reference(table)
        assert kept.combine_chunks().equals(want)
        assert sorted(dropped.to_pylist()) == want_dropped


def test_dedup_sort_of_no_rows_and_of_one_row() -> None:
    rng = np.random.default_rng(0)
    one = readings(rng, 1, dup_share=0.0)
    for table in (one.slice(0, 0), one):
        kept, dropped = dedup_sort(table)
        assert kept.equals(table)
        assert len(dropped) == 0
