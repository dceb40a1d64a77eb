"""Seq bookkeeping: dedup ranges, the ack watermark, bounded memory, the state file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest import IngestError
from ingest._state import SeqState, VinSeqs


def _add(s: VinSeqs, seqs: list[int], max_ranges: int = 256) -> None:
    s.add_durable(np.array(seqs, dtype=np.int64), max_ranges)


def test_watermark_stops_at_the_first_gap_and_moves_when_it_is_filled() -> None:
    s = VinSeqs("demo")
    _add(s, list(range(10)))
    assert s.watermark() == 9
    s.acked = 9
    _add(s, [12, 13, 14])
    assert s.watermark() == 9
    assert s.seen(13)
    assert not s.seen(11)
    _add(s, [10, 11])
    assert s.watermark() == 14
    assert (s.lo, s.hi) == ([0], [14])


def test_watermark_never_moves_back_for_older_readings() -> None:
    s = VinSeqs("demo", acked=500)
    _add(s, [501, 502])
    assert s.watermark() == 502
    s.acked = 502
    _add(s, [100, 101])  # a replay older than anything seen
    assert s.watermark() == 502
    assert s.seen(100)


def test_ranges_are_bounded_and_forgetting_never_claims_a_gap() -> None:
    s = VinSeqs("demo", acked=0)
    _add(s, [0, 2, 4, 6, 8, 10], max_ranges=3)
    assert len(s.lo) == 3
    assert s.watermark() == 0  # 1 is missing: the gap is not acknowledged
    assert s.seen(0)


def test_buffered_seqs_are_duplicates_until_written(tmp_path: Path) -> None:
    s = VinSeqs("demo")
    s.pending.add(7)
    assert s.seen(7)
    _add(s, [7])
    assert not s.pending
    assert s.seen(7)


def test_state_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "w.json"
    st = SeqState(path, "w")
    v = st.get("MAT612345NEX00001", "demo")
    _add(v, [1, 2, 3, 9])
    v.acked, v.n_cells = 3, 14
    st.alerts_active = {("MAT612345NEX00001", "over_temperature")}
    st.save()
    back = SeqState.load(path, "w")
    b = back.vins["MAT612345NEX00001"]
    assert (b.lo, b.hi, b.acked, b.n_cells, b.fleet) == ([1, 9], [3, 9], 3, 14, "demo")
    assert back.alerts_active == {("MAT612345NEX00001", "over_temperature")}


def test_corrupt_state_file_is_an_ingest_error(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_bytes(b"{half")
    with pytest.raises(IngestError, match=r"ingest state .*w\.json is corrupt"):
        SeqState.load(path, "w")
