"""Telemetry contract v1: the shared examples, validation reasons, round trips."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import hypothesis.strategies as st
import msgspec
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings

import bms

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "contract" / "examples"
NOW = datetime(2026, 11, 25, tzinfo=UTC)
VIN = "MAT612345NEX00001"
TOPIC = f"fleet/demo/{VIN}/bms"

# What the contract says of each shared example: (kind, expected reason or quality bits).
EXPECTED = {
    "reading.json": ("accepted", 0),
    "batch.json": ("accepted", 0),
    "flagged_sentinel_cell.json": ("accepted", bms.Quality.SENTINEL),
    "bad_missing_seq.json": ("quarantined", "missing_field"),
    "bad_not_json.bin": ("quarantined", "not_json"),
    "bad_vin.json": ("quarantined", "bad_vin"),
}


def reading_dict(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = json.loads((EXAMPLES / "reading.json").read_text())
    base.update(overrides)
    return base


def decode(payload: bytes, topic: str = TOPIC) -> bms.Decoded:
    return bms.decode_message(topic, payload, now=NOW)


def test_every_shared_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_example_is_handled_as_the_contract_says(name: str, tmp_path: Path) -> None:
    kind, expected = EXPECTED[name]
    topic = TOPIC + ("/batch" if name.startswith("batch") else "")
    result = decode((EXAMPLES / name).read_bytes(), topic)
    if kind == "quarantined":
        assert result.readings == []
        assert [r.reason for r in result.rejections] == [expected]
        assert result.rejections[0].raw == (EXAMPLES / name).read_bytes()
        return
    assert result.rejections == []
    assert result.readings
    table = bms.readings_table([(r, "demo") for r in result.readings], received_at_ms=0, worker="t")
    assert set(table["quality"].to_pylist()) == {int(expected)}
    files = bms.write_telemetry(table, tmp_path, file_prefix="t")
    assert sum(f.rows for f in files) == len(result.readings)


def test_sentinel_cell_is_kept_as_null_and_left_out_of_min_max(tmp_path: Path) -> None:
    result = decode((EXAMPLES / "flagged_sentinel_cell.json").read_bytes())
    table = bms.readings_table([(result.readings[0], "demo")], received_at_ms=0, worker="t")
    row = table.to_pylist()[0]
    assert row["cell_mv"][5] is None
    assert row["cell_mv_max"] < 4500
    assert row["n_cells"] == 96


@pytest.mark.parametrize(
    ("payload", "topic", "reason"),
    [
        (reading_dict(v=2), TOPIC, "unknown_version"),
        ({"v": 2, "something": "else"}, TOPIC, "unknown_version"),
        (reading_dict(seq="12"), TOPIC, "wrong_type"),
        (reading_dict(seq=-1), TOPIC, "bad_value"),
        (reading_dict(ts="yesterday"), TOPIC, "bad_ts"),
        (reading_dict(ts="2026-11-24T03:15:20"), TOPIC, "bad_ts"),
        (reading_dict(ts="2026-11-26T01:00:00Z"), TOPIC, "ts_in_future"),
        (reading_dict(ts="0001-01-01T00:00:00+05:30"), TOPIC, "bad_ts"),  # year 0 in UTC
        (reading_dict(vin="MAT612345NEX00002"), TOPIC, "vin_mismatch"),
        (reading_dict(cells={"voltages_mv": [], "temps_c": [30.0]}), TOPIC, "bad_cells"),
        (reading_dict(cells={"voltages_mv": [3700] * 401, "temps_c": [30.0]}), TOPIC, "bad_cells"),
        (reading_dict(pack={"current_a": 1}), TOPIC, "missing_field"),
        (reading_dict(), "fleet/demo/bms", "bad_topic"),
        (reading_dict(), f"fleet/demo/{VIN}/ack", "bad_topic"),
    ],
)
def test_rejections_carry_the_contract_reason(payload: object, topic: str, reason: str) -> None:
    result = decode(json.dumps(payload).encode(), topic)
    assert result.readings == []
    assert [r.reason for r in result.rejections] == [reason]
    assert reason in bms.REJECT_REASONS


def test_mode_outside_the_contract_is_rejected() -> None:
    pack = reading_dict()["pack"]
    assert isinstance(pack, dict)
    result = decode(json.dumps(reading_dict(pack={**pack, "mode": "flying"})).encode())
    assert [r.reason for r in result.rejections] == ["bad_value"]


def test_unknown_extra_fields_are_ignored() -> None:
    result = decode(json.dumps(reading_dict(extra={"x": 1}, gps=[1, 2])).encode())
    assert len(result.readings) == 1


def test_ts_just_under_24h_ahead_is_accepted() -> None:
    ts = (NOW + timedelta(hours=23, minutes=59)).isoformat()
    assert len(decode(json.dumps(reading_dict(ts=ts)).encode()).readings) == 1


def test_payload_over_the_size_limit_is_quarantined_whole() -> None:
    payload = json.dumps(reading_dict()).encode()
    result = bms.decode_message(TOPIC, payload, now=NOW, max_payload_bytes=100)
    assert [r.reason for r in result.rejections] == ["payload_too_large"]


def test_batch_keeps_good_readings_and_quarantines_the_bad_one() -> None:
    batch = json.loads((EXAMPLES / "batch.json").read_text())
    batch["readings"][1]["vin"] = "MAT612345NEX00009"
    result = decode(json.dumps(batch).encode(), TOPIC + "/batch")
    assert [r.seq for r in result.readings] == [184400, 184402]
    assert [(r.reason, r.index) for r in result.rejections] == [("vin_mismatch", 1)]
    assert json.loads(result.rejections[0].raw)["seq"] == 184401


def test_batch_over_10000_readings_is_quarantined() -> None:
    one = reading_dict()
    payload = json.dumps({"v": 1, "readings": [one] * 10_001}).encode()
    result = decode(payload, TOPIC + "/batch")
    assert [r.reason for r in result.rejections] == ["batch_too_large"]


def test_quality_bits_for_out_of_range_values() -> None:
    cells = {"voltages_mv": [3700, 4600, 3700], "temps_c": [30.0, 95.5, 40000.0]}
    pack = {**reading_dict()["pack"], "soc_pct": 101.0}  # type: ignore[dict-item]
    result = decode(json.dumps(reading_dict(cells=cells, pack=pack)).encode())
    table = bms.readings_table([(result.readings[0], "demo")], received_at_ms=0, worker="t")
    quality = bms.Quality(table["quality"][0].as_py())
    assert quality == (
        bms.Quality.CELL_MV_RANGE
        | bms.Quality.TEMP_RANGE
        | bms.Quality.SOC_RANGE
        | bms.Quality.UNREPRESENTABLE
    )
    row = table.to_pylist()[0]
    assert row["temp_dc"] == [300, 955, None]
    assert row["cell_max_idx"] == 1


def test_topic_round_trip() -> None:
    for kind in ("bms", "batch", "ack", "alert"):
        assert bms.parse_topic(bms.topic_for("fleet-1", VIN, kind)) == bms.Topic(
            "fleet-1", VIN, kind
        )


def test_ack_round_trip() -> None:
    ack = bms.decode_ack(bms.encode_ack(VIN, 42))
    assert (ack.vin, ack.durable_seq) == (VIN, 42)
    with pytest.raises(bms.ContractError):
        bms.decode_ack(b"{}")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_decoding_arbitrary_bytes_never_raises(payload: bytes) -> None:
    for topic in (TOPIC, TOPIC + "/batch", "x/y"):
        result = bms.decode_message(topic, payload, now=NOW)
        assert len(result.readings) + len(result.rejections) >= 1
        assert all(r.reason in bms.REJECT_REASONS for r in result.rejections)


@pytest.mark.parametrize("topic", [TOPIC, TOPIC + "/batch"])
@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"5\xff\x00 garbage", "not_json"),  # starts like a number: still not JSON
        (b'"abc\x01', "not_json"),
        (b"[1, 2", "not_json"),
        (b"5", "wrong_type"),  # JSON, of the wrong type
        (b'["x"]', "wrong_type"),
    ],
)
def test_bytes_that_only_start_like_json_are_not_json(
    payload: bytes, reason: str, topic: str
) -> None:
    (rejection,) = decode(payload, topic).rejections
    assert rejection.reason == reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=2000))
def test_payloads_that_do_not_parse_are_not_json(payload: bytes) -> None:
    try:
        msgspec.json.decode(payload)
    except msgspec.DecodeError:
        for topic in (TOPIC, TOPIC + "/batch"):
            (rejection,) = decode(payload, topic).rejections
            assert rejection.reason == "not_json"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["v", "vin", "seq", "ts", "pack", "cells"]), json_values))
def test_decoding_arbitrary_json_objects_never_raises(obj: dict[str, object]) -> None:
    result = decode(json.dumps(obj).encode())
    assert all(r.reason in bms.REJECT_REASONS for r in result.rejections)


vins = st.from_regex(r"\A[A-HJ-NPR-Z0-9]{17}\Z")
readings = st.builds(
    bms.Reading,
    v=st.just(1),
    vin=vins,
    seq=st.integers(0, 2**63 - 1),
    ts=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
    pack=st.builds(
        bms.Pack,
        current_a=st.floats(-1000, 1000, width=32),
        voltage_v=st.floats(0, 1000, width=32),
        soc_pct=st.floats(0, 100, width=32),
        cycle_count=st.integers(0, 100_000),
        odometer_km=st.floats(0, 2e6),
        mode=st.sampled_from(bms.MODES),
        soh_pct=st.none() | st.floats(0, 110, width=32),
    ),
    cells=st.builds(
        bms.Cells,
        voltages_mv=st.lists(st.integers(1500, 4500), min_size=1, max_size=400),
        temps_c=st.lists(st.integers(-400, 900).map(lambda x: x / 10), min_size=1, max_size=400),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(readings, min_size=1, max_size=5, unique_by=lambda r: (r.vin, r.seq)))
def test_valid_readings_round_trip_through_the_writer(
    tmp_path_factory: pytest.TempPathFactory, batch: list[bms.Reading]
) -> None:
    """Encode -> decode -> columnar buffer -> Parquet -> read back gives the same values."""
    root = tmp_path_factory.mktemp("lake")
    decoded = [
        bms.decode_reading(bms.encode_reading(r), now=datetime(2100, 1, 2, tzinfo=UTC))
        for r in batch
    ]
    assert decoded == batch
    table = bms.readings_table([(r, "f1") for r in decoded], received_at_ms=1, worker="w")
    files = bms.write_telemetry(table, root, file_prefix="p")
    back = bms.read_telemetry([f.path for f in files]).to_pylist()
    assert len(back) == len(batch)
    by_key = {(r["vin"], r["seq"]): r for r in back}
    for r in batch:
        row = by_key[(r.vin, r.seq)]
        assert row["ts"] == r.ts
        assert row["cell_mv"] == r.cells.voltages_mv
        assert row["temp_dc"] == [round(t * 10) for t in r.cells.temps_c]
        assert row["mode"] == r.pack.mode
        assert row["cycle_count"] == r.pack.cycle_count
        assert row["odometer_km"] == r.pack.odometer_km
        assert row["current_a"] == pytest.approx(r.pack.current_a, rel=1e-6, abs=1e-6)
        assert row["soc_pct"] == pytest.approx(r.pack.soc_pct, rel=1e-6, abs=1e-6)
        assert (row["soh_pct"] is None) == (r.pack.soh_pct is None)
        assert row["cell_mv_min"] == min(r.cells.voltages_mv)
        assert row["cell_mv"][row["cell_max_idx"]] == max(r.cells.voltages_mv)
        assert row["quality"] == 0
        assert row["n_cells"] == len(r.cells.voltages_mv)


def test_written_files_are_partitioned_by_event_date_and_fleet(tmp_path: Path) -> None:
    base = json.loads((EXAMPLES / "reading.json").read_text())
    payloads = [
        {**base, "seq": 1, "ts": "2026-11-20T23:59:59.999Z"},
        {**base, "seq": 2, "ts": "2026-11-21T00:00:00.000Z"},
    ]
    rs = [bms.decode_reading(json.dumps(p).encode(), now=NOW) for p in payloads]
    table = bms.readings_table([(rs[0], "a"), (rs[1], "b")], received_at_ms=0, worker="w")
    files = bms.write_telemetry(table, tmp_path, file_prefix="w")
    rel = sorted(str(f.path.parent.relative_to(tmp_path)) for f in files)
    assert rel == ["telemetry/date=2026-11-20/fleet=a", "telemetry/date=2026-11-21/fleet=b"]
    for f in files:
        assert pq.read_schema(f.path).equals(bms.TELEMETRY_SCHEMA, check_metadata=False)
    assert not list(tmp_path.rglob("*.tmp"))


def test_writer_rejects_a_table_without_the_schema(tmp_path: Path) -> None:
    table = bms.readings_table([], received_at_ms=0, worker="w").drop_columns(["worker"])
    with pytest.raises(bms.SchemaError):
        bms.write_telemetry(table, tmp_path, file_prefix="w")


def test_msgspec_raw_batch_item_keeps_exact_bytes() -> None:
    raw = msgspec.json.encode({"v": 1, "readings": [{"v": 1}]})
    result = decode(raw, TOPIC + "/batch")
    assert result.rejections[0].raw == b'{"v":1}'


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize("levels", [1_000, 100_000])
def test_a_batch_item_nested_too_deeply_is_rejected_alone(levels: int) -> None:
    good = [json.dumps(reading_dict(seq=s)).encode() for s in (1, 2, 3)]
    deep_field = json.dumps(reading_dict(seq=9))[:-1].encode() + b', "x": ' + _deep(levels) + b"}"
    items = [good[0], _deep(levels), good[1], deep_field, good[2]]
    payload = b'{"v": 1, "extra": {"k": [1, "]"]}, "readings": [' + b", ".join(items) + b"]}"
    result = decode(payload, TOPIC + "/batch")
    assert [r.seq for r in result.readings] == [1, 2, 3]
    assert [(r.reason, r.index, r.raw) for r in result.rejections] == [
        ("not_json", 1, items[1]),
        ("not_json", 3, items[3]),
    ]
    assert all("nested too deeply" in r.detail for r in result.rejections)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"v": 1, "readings": [' + _deep(5_000), "not_json"),  # cut short
        (b'{"v": 1, "readings": [' + _deep(5_000) + b",]}", "not_json"),
        (b'{"v": 1, "readings": [' + _deep(5_000) + b"]} x", "not_json"),
        (b'{"v": 1, "readings": [' + _deep(5_000) + b"}", "not_json"),
        (b'{"v": 1, "readings": {"a": ' + _deep(5_000) + b"}}", "not_json"),
        (b'{"v": 1, "more": ' + _deep(5_000) + b', "readings": []}', "not_json"),
        (b'{"v": 2, "readings": [' + _deep(5_000) + b"]}", "unknown_version"),
        (b'{"readings": [' + _deep(5_000) + b"]}", "missing_field"),
        (b'{"v": "1", "readings": [' + _deep(5_000) + b"]}", "unknown_version"),
        (_deep(5_000), "not_json"),
    ],
)
def test_a_broken_batch_with_a_deep_item_is_rejected_whole(payload: bytes, reason: str) -> None:
    result = decode(payload, TOPIC + "/batch")
    assert result.readings == []
    assert [(r.reason, r.index, r.raw) for r in result.rejections] == [(reason, None, payload)]


def test_a_reading_nested_too_deeply_is_not_json() -> None:
    payload = json.dumps(reading_dict())[:-1].encode() + b', "x": ' + _deep(5_000) + b"}"
    result = decode(payload)
    assert [(r.reason, r.index) for r in result.rejections] == [("not_json", None)]
    assert "nested too deeply" in result.rejections[0].detail


@pytest.mark.parametrize(
    ("field", "value"),
    [("voltage_v", 1e39), ("current_a", -1e39), ("soc_pct", 3.5e38), ("soh_pct", -1e300)],
)
def test_a_pack_value_beyond_float32_is_a_bad_value(field: str, value: float) -> None:
    # stored as float32, it would be infinity; quarantined instead (a batch item alone)
    pack = reading_dict()["pack"]
    assert isinstance(pack, dict)
    bad = reading_dict(seq=2, pack={**pack, field: value})
    payload = json.dumps({"v": 1, "readings": [reading_dict(seq=1), bad]}).encode()
    result = decode(payload, TOPIC + "/batch")
    assert [r.seq for r in result.readings] == [1]
    assert [(r.reason, r.index) for r in result.rejections] == [("bad_value", 1)]
    assert result.rejections[0].detail.endswith(
        f"`$.pack.{field}` (stored as float32: a larger magnitude would be stored as infinity)"
    )


def test_the_largest_float32_values_are_kept_finite(tmp_path: Path) -> None:
    pack = reading_dict()["pack"]
    assert isinstance(pack, dict)
    big = {"current_a": -3.4028235e38, "voltage_v": 3.4028235e38, "soh_pct": 3.4028235e38}
    result = decode(json.dumps(reading_dict(pack={**pack, **big})).encode())
    table = bms.readings_table([(result.readings[0], "demo")], received_at_ms=0, worker="t")
    row = table.to_pylist()[0]
    assert [row[k] for k in big] == [-3.4028234663852886e38, *[3.4028234663852886e38] * 2]


def test_the_contract_document_lists_every_reject_reason() -> None:
    """docs/contract/telemetry-v1.md lists the quarantine's reason codes for the people who
    read the quarantine: the same codes as bms.REJECT_REASONS."""
    doc = (
        Path(__file__).resolve().parents[2] / "docs" / "contract" / "telemetry-v1.md"
    ).read_text()
    section = doc.split("### Quarantine reason codes", 1)[1].split("\n#", 1)[0]
    listed = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert listed == list(bms.REJECT_REASONS)
