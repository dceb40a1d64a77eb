"""Hostile or broken input through the real broker and files: quarantined, never fatal."""

from __future__ import annotations

from pathlib import Path

import msgspec
from click.testing import CliRunner

from pipeline import cli
from tests.broker import MosquittoBroker
from tests.ingest.helpers import (
    NOW,
    VINS,
    Client,
    IngestThread,
    bms_topic,
    encode,
    lake_counts,
    query,
    reading,
    wait_until,
)

#: Valid JSON nested 100,000 levels deep (200 kB): the JSON decoder raises RecursionError.
DEEP = b"[" * 100_000 + b"]" * 100_000


def test_deeply_nested_json_is_quarantined_and_the_worker_keeps_running(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    vin = VINS[0]
    deep_field = encode(reading(vin, 3, NOW))[:-1] + b', "extra": ' + DEEP + b"}"
    cases = [
        (bms_topic(vin), DEEP),
        (bms_topic(vin), deep_field),  # an unknown (ignored) field, nested deep
        (bms_topic(vin, "batch"), b'{"v": 1, "readings": [' + DEEP + b"]}"),
    ]
    ingest = IngestThread(broker.address, data_dir)
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        for topic, payload in cases:
            pub.publish(topic, payload)
        for seq in (0, 1, 2):
            pub.publish(bms_topic(vin), encode(reading(vin, seq, NOW)))
        wait_until(lambda: watcher.acks().get(vin) == 2, 60, what="ack of the good readings")
    finally:
        counters = ingest.close()  # re-raises if the worker died
        pub.close()
        watcher.close()
    assert lake_counts(data_dir) == (3, 3)
    rows = query(
        data_dir, "quarantine", "SELECT topic, payload, reason, detail, batch_index FROM t"
    )
    # the batch's only item is quarantined alone (see the next test)
    expected = [*((t, p, None) for t, p in cases[:2]), (cases[2][0], DEEP, 0)]
    assert sorted((r[0], bytes(r[1]), r[4]) for r in rows) == sorted(expected)
    assert {r[2] for r in rows} == {"not_json"}
    assert all("nested too deeply" in r[3] for r in rows)
    assert counters.quarantined == {"not_json": 3}


def test_a_batch_item_nested_too_deeply_is_quarantined_alone_and_the_others_stored(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    vin = VINS[0]
    deep_field = encode(reading(vin, 4, NOW))[:-1] + b', "extra": ' + DEEP + b"}"
    early = encode({**reading(vin, 1, NOW), "ts": "0001-01-01T00:00:00+05:30"})
    items = [encode(reading(vin, 0, NOW)), DEEP, early, encode(reading(vin, 2, NOW)), deep_field]
    batch = b'{"v": 1, "readings": [' + b", ".join(items) + b"]}"
    ingest = IngestThread(broker.address, data_dir)
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        pub.publish(bms_topic(vin, "batch"), batch)
        pub.publish(bms_topic(vin), encode(reading(vin, 3, NOW)))
        wait_until(lambda: watcher.acks().get(vin) == 3, 60, what="ack of seq 3")
    finally:
        counters = ingest.close()  # re-raises if the worker died
        pub.close()
        watcher.close()
    assert lake_counts(data_dir) == (3, 3)  # seq 0, 2, 3
    rows = query(data_dir, "quarantine", "SELECT payload, reason, detail, batch_index FROM t")
    assert sorted((r[3], r[1], bytes(r[0])) for r in rows) == [
        (1, "not_json", DEEP),
        (2, "bad_ts", early),
        (4, "not_json", deep_field),
    ]
    assert sum("nested too deeply" in r[2] for r in rows) == 2
    assert counters.quarantined == {"not_json": 2, "bad_ts": 1}


def test_import_stores_the_good_readings_of_a_batch_line_with_a_deep_item(
    data_dir: Path, tmp_path: Path
) -> None:
    items = [encode(reading(VINS[0], 1, NOW)), DEEP, encode(reading(VINS[0], 2, NOW))]
    dump = tmp_path / "dump.jsonl"
    dump.write_bytes(b'{"v": 1, "readings": [' + b", ".join(items) + b"]}\n")
    result = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "import", str(dump)])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "imported 1 lines from 1 file(s): 2 readings written, 0 duplicates, "
        "1 quarantined (not_json=1)\n"
    )
    assert lake_counts(data_dir) == (2, 2)


def test_import_quarantines_deeply_nested_lines(data_dir: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    lines = [b'{"vin": ' + DEEP + b"}", encode(reading(VINS[0], 1, NOW))]
    dump.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "import", str(dump)])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "imported 2 lines from 1 file(s): 1 readings written, 0 duplicates, "
        "1 quarantined (not_json=1)\n"
    )
    assert lake_counts(data_dir) == (1, 1)


def test_a_ts_before_year_1_in_utc_is_quarantined_and_the_worker_keeps_running(
    broker: MosquittoBroker, data_dir: Path
) -> None:
    # Valid RFC 3339, but 0001-01-01T00:00+05:30 is in year 0 UTC: no date partition.
    vin = VINS[0]
    early = {**reading(vin, 1, NOW), "ts": "0001-01-01T00:00:00+05:30"}
    early_item = {**reading(vin, 3, NOW), "ts": "0001-01-01T01:00:00+05:30"}
    batch = {"v": 1, "readings": [reading(vin, 2, NOW), early_item, reading(vin, 4, NOW)]}
    ingest = IngestThread(broker.address, data_dir)
    pub = Client(broker.address, "pub")
    watcher = Client(broker.address, "watch", subscribe=("fleet/+/+/ack",))
    try:
        pub.publish(bms_topic(vin), encode(reading(vin, 0, NOW)))
        pub.publish(bms_topic(vin), encode(early))
        pub.publish(bms_topic(vin, "batch"), encode(batch))
        pub.publish(bms_topic(vin), encode(reading(vin, 5, NOW)))
        # quarantined seqs count as handled: the ack passes them
        wait_until(lambda: watcher.acks().get(vin) == 5, 60, what="ack of seq 5")
    finally:
        counters = ingest.close()  # re-raises if the worker died
        pub.close()
        watcher.close()
    assert lake_counts(data_dir) == (4, 4)  # seq 0, 2, 4, 5
    rows = query(data_dir, "quarantine", "SELECT payload, reason, detail, batch_index FROM t")
    got = sorted((msgspec.json.decode(bytes(r[0]))["seq"], r[1], r[3]) for r in rows)
    assert got == [(1, "bad_ts", None), (3, "bad_ts", 1)]
    assert all("before 0001-01-01" in r[2] for r in rows)
    assert counters.quarantined == {"bad_ts": 2}
