"""``fleetbms erase --vin``: nothing of the vehicle remains anywhere under the data dir."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pypdf import PdfReader

import bms
from ingest._quarantine import QuarantineRow, dump_quarantine_row
from reports import load_or_create_pseudonym_key, pseudonym
from tests.broker import MosquittoBroker, free_port
from tests.pipeline.nightly_data import VINS, day_table, fleetbms, write_flushes
from tests.pipeline.test_nightly import OLD_DAY, RUN_DAY, RUN_ENV

GONE = VINS[0]


def reading(vin: str, seq: int, ts: str, cell_mv: int = 3700) -> dict:
    return {
        "v": 1,
        "vin": vin,
        "seq": seq,
        "ts": ts,
        "pack": {
            "current_a": -5.0,
            "voltage_v": 350.0,
            "soc_pct": 60.0,
            "cycle_count": 10,
            "odometer_km": 100.0,
            "mode": "drive",
        },
        "cells": {"voltages_mv": [cell_mv, 3700, 3701], "temps_c": [25.0, 25.5]},
    }


def make_pdf(path: Path, lines: list[str]) -> None:
    from reportlab.pdfgen import canvas

    path.parent.mkdir(parents=True, exist_ok=True)
    c = canvas.Canvas(str(path), pageCompression=1)
    for i, line in enumerate(lines):
        c.drawString(72, 720 - 14 * i, line)
    c.save()


def textual_values(table: pa.Table) -> list[str]:
    """Every string and binary value of a table, nested lists included."""
    out: list[str] = []
    for col in table.columns:
        arr = col.combine_chunks()
        while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
            arr = pc.list_flatten(arr)
        if pa.types.is_dictionary(arr.type):
            arr = arr.cast(arr.type.value_type)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            out += [v for v in arr.to_pylist() if v is not None]
        elif pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
            out += [v.decode("latin-1") for v in arr.to_pylist() if v is not None]
    return out


@pytest.fixture
def full_data_dir(tmp_path: Path) -> Path:
    """A data dir with the VIN in every kind of place the pipeline writes."""
    d = tmp_path / "data"
    lake = d / "lake"
    for day in (OLD_DAY, RUN_DAY - timedelta(days=1), RUN_DAY):
        write_flushes(day_table(day), lake, flushes=2)
    # Through the real importer: telemetry, an alert, a quarantined message, ingest state.
    lines = [
        json.dumps(reading(GONE, 10**6, f"{RUN_DAY}T06:00:00.000Z", cell_mv=4300)),
        json.dumps(reading(VINS[1], 10**6, f"{RUN_DAY}T06:00:00.000Z")),
        json.dumps({"v": 1, "vin": GONE, "seq": 5, "ts": f"{RUN_DAY}T07:00:00Z"}),
    ]
    dump = tmp_path / "gateway.jsonl"
    dump.write_text("\n".join(lines) + "\n")
    imp = fleetbms(d, "import", str(dump), "--fleet", "demo")
    assert imp.returncode == 0, imp.stderr
    assert list((lake / "alerts").rglob("*.parquet"))
    assert list((lake / "quarantine").rglob("*.parquet"))
    registry = pa.table(
        {
            "vin": VINS,
            "fleet": ["demo"] * 3,
            "chemistry": ["nmc"] * 3,
            "capacity_ah": [100.0] * 3,
            "n_cells": pa.array([3] * 3, pa.int16()),
            "n_temps": pa.array([2] * 3, pa.int16()),
            "vehicle_class": ["car"] * 3,
            "in_service_date": pa.array([RUN_DAY - timedelta(days=900)] * 3, pa.date32()),
            "warranty_policy": [""] * 3,
        }
    )
    bms.write_parquet_atomic(registry, lake / "registry" / "vehicles.parquet")
    truth = pa.table({"vin": VINS, "soh_pct": [95.0, 94.0, 93.0]})
    bms.write_parquet_atomic(truth, d / "truth" / "vehicle_day.parquet")
    assert fleetbms(d, "keys", "generate").returncode == 0
    r = fleetbms(
        d,
        "nightly",
        "--date",
        RUN_DAY.isoformat(),
        FLEETBMS_REPORTS__AUDIT_ENABLED="1",
        **RUN_ENV,
    )
    assert r.returncode in (0, 3), r.stderr
    assert list((d / "archive").rglob("*.parquet"))
    assert (d / "reports" / f"date={RUN_DAY}" / "audit-demo" / "manifest.json").exists()
    reports = d / "reports" / f"date={RUN_DAY}"
    make_pdf(reports / "fleet.pdf", [f"{v}  SoH 95.0 %" for v in VINS])
    make_pdf(reports / "vehicles" / f"{GONE}.pdf", [f"Vehicle {GONE}"])
    make_pdf(reports / "vehicles" / f"{VINS[1]}.pdf", [f"Vehicle {VINS[1]}"])
    (reports / "fleet.csv").write_text("vin,soh_pct\n" + "".join(f"{v},95.0\n" for v in VINS))
    return d


def test_erase_leaves_no_trace_of_the_vin_anywhere(full_data_dir: Path):
    d = full_data_dir
    telemetry_before = pq.read_table(bms.telemetry_files(d / "lake", RUN_DAY), columns=["vin"])[
        "vin"
    ]
    kept_rows = int(pc.sum(pc.equal(telemetry_before, VINS[1])).as_py())

    alias = pseudonym(GONE, load_or_create_pseudonym_key(d / "state" / "keys"))
    bundle = d / "reports" / f"date={RUN_DAY}" / "audit-demo"
    assert any(alias.encode() in p.read_bytes() for p in bundle.rglob("*.csv"))

    r = fleetbms(d, "erase", "--vin", GONE)
    assert r.returncode == 0, r.stderr
    assert not bundle.exists()  # signed bundles cannot be edited: deleted whole
    assert r.stdout.startswith(f"erased {GONE}: ")

    scanned = 0
    for p in d.rglob("*"):
        if not p.is_file():
            continue
        scanned += 1
        assert GONE.encode() not in p.read_bytes(), p
        assert alias.encode() not in p.read_bytes(), p
        assert GONE not in str(p.relative_to(d)), p
        if p.suffix == ".parquet":
            assert not any(GONE in v for v in textual_values(pq.read_table(p))), p
        if p.suffix == ".pdf":
            assert GONE not in "".join(page.extract_text() for page in PdfReader(p).pages), p
    assert scanned > 20

    # Other vehicles keep their data.
    after = pq.read_table(bms.telemetry_files(d / "lake", RUN_DAY), columns=["vin"])["vin"]
    assert int(pc.sum(pc.equal(after, VINS[1])).as_py()) == kept_rows
    assert (d / "reports" / f"date={RUN_DAY}" / "vehicles" / f"{VINS[1]}.pdf").exists()
    csv = (d / "reports" / f"date={RUN_DAY}" / "fleet.csv").read_text()
    assert csv == "vin,soh_pct\n" + "".join(f"{v},95.0\n" for v in VINS[1:])
    archive = pq.read_table(sorted((d / "archive").rglob("*.parquet")))
    assert set(archive["vin"].to_pylist()) == set(VINS[1:])
    compacted = pq.read_table(bms.telemetry_files(d / "lake", RUN_DAY)[0])
    keys = list(zip(compacted["vin"].to_pylist(), compacted["ts"].to_pylist(), strict=True))
    assert keys == sorted(keys)

    # The log holds a keyed hash, never the VIN.
    log = (d / "state" / "erasure" / "log.jsonl").read_text().splitlines()
    assert len(log) == 1
    entry = json.loads(log[0])
    key = (d / "state" / "erasure" / "hmac.key").read_bytes()
    assert entry["vin_hmac_sha256"] == hmac.new(key, GONE.encode(), hashlib.sha256).hexdigest()
    assert entry["rows_removed"] > 0
    assert (d / "state" / "erasure" / "hmac.key").stat().st_mode & 0o077 == 0

    # The next nightly does not bring anything back.
    again = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat(), **RUN_ENV)
    assert again.returncode in (0, 3), again.stderr
    for p in d.rglob("*.parquet"):
        assert not any(GONE in v for v in textual_values(pq.read_table(p))), p


def test_erase_rejects_a_malformed_vin(tmp_path: Path):
    r = fleetbms(tmp_path, "erase", "--vin", "MAT612345NEX0000I")
    assert r.returncode == 1
    assert r.stderr == (
        "Error: 'MAT612345NEX0000I' is not a VIN (17 characters of A-H, J-N, P, R-Z, 0-9)\n"
    )


def test_erasing_a_vin_the_data_does_not_hold_says_so_and_logs_the_request(tmp_path: Path):
    (tmp_path / "lake").mkdir()
    r = fleetbms(tmp_path, "erase", "--vin", "MAT612345NEX00009")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(
        f"nothing in {tmp_path} held MAT612345NEX00009: nothing to erase; the request is "
        "logged as HMAC-SHA256 "
    )
    log = (tmp_path / "state" / "erasure" / "log.jsonl").read_text()
    assert log.count("\n") == 1
    assert "MAT612345NEX00009" not in log  # the log holds its HMAC, not the VIN


def test_erase_keeps_row_groups_and_sort_order_of_a_big_file(tmp_path: Path):
    d = tmp_path / "data"
    vins = [f"MAT612345NEX{i:05d}" for i in range(1, 7)]
    write_flushes(day_table(RUN_DAY, vins=vins, cadence_s=60), d / "lake")
    env = {"FLEETBMS_NIGHTLY__ROW_GROUP_ROWS": "2000"}
    assert fleetbms(d, "nightly", "--date", RUN_DAY.isoformat(), **env).returncode == 0
    path = bms.telemetry_files(d / "lake", RUN_DAY)[0]
    before = pq.ParquetFile(path).metadata
    assert [before.row_group(i).num_rows for i in range(before.num_row_groups)][:4] == [2000] * 4
    assert fleetbms(d, "erase", "--vin", vins[2]).returncode == 0
    after = pq.ParquetFile(path).metadata
    sizes = [after.row_group(i).num_rows for i in range(after.num_row_groups)]
    assert sum(sizes) == 5 * 1440
    assert after.row_group(0).sorting_columns == before.row_group(0).sorting_columns
    t = pq.read_table(path)
    assert vins[2] not in set(t["vin"].to_pylist())
    order = np.lexsort((t["ts"].to_numpy(), np.array(t["vin"].to_pylist())))
    assert (order == np.arange(t.num_rows)).all()


def _retained_acks(broker: MosquittoBroker) -> dict[str, bytes]:
    """Every retained ack on the broker, by topic."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: dict[str, bytes] = {}
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = lambda _c, _u, m: got.__setitem__(m.topic, m.payload) if m.retain else None
    c.on_subscribe = lambda *_a: done.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.subscribe("fleet/+/+/ack", qos=1)
    assert done.wait(10)
    time.sleep(0.5)
    c.disconnect()
    c.loop_stop()
    c._reset_sockets()  # else closed only when collected (paho #627)
    return got


def _publish_acks(broker: MosquittoBroker, acks: list[tuple[str, str]]) -> None:
    """Retained acks of these (fleet, VIN) on ``broker``."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    for fleet, vin in acks:
        payload = json.dumps({"v": 1, "vin": vin, "durable_seq": 7}).encode()
        pub.publish(bms.topic_for(fleet, vin, "ack"), payload, qos=1, retain=True).wait_for_publish(
            10
        )
    pub.disconnect()
    pub.loop_stop()
    pub._reset_sockets()  # else closed only when collected (paho #627)


def test_erase_with_broker_deletes_the_vehicles_retained_acks(
    tmp_path: Path, broker: MosquittoBroker
):
    keep = VINS[1]
    _publish_acks(broker, [("north", GONE), ("south", GONE), ("north", keep)])
    assert len(_retained_acks(broker)) == 3

    (tmp_path / "data").mkdir()
    r = fleetbms(tmp_path / "data", "erase", "--vin", GONE, "--broker", broker.address)
    assert r.returncode == 0, r.stderr
    assert "retained acks deleted on " + broker.address + ": 2" in r.stdout
    assert list(_retained_acks(broker)) == [bms.topic_for("north", keep, "ack")]


def test_erase_with_a_bracketed_ipv6_broker_deletes_the_retained_acks(tmp_path: Path):
    """--broker "[::1]:PORT" passes the address check (the ingest's HOST:PORT parsing),
    so the acks must be cleared at ::1, not looked up at the host name "[::1]" after the
    files were erased."""
    keep = VINS[1]
    with MosquittoBroker(tmp_path / "mosquitto", host="::1") as broker:
        assert broker.address == f"[::1]:{broker.port}"
        _publish_acks(broker, [("north", GONE), ("north", keep)])
        assert len(_retained_acks(broker)) == 2
        (tmp_path / "data").mkdir()
        r = fleetbms(tmp_path / "data", "erase", "--vin", GONE, "--broker", broker.address)
        assert r.returncode == 0, r.stderr
        assert f"retained acks deleted on [::1]:{broker.port}: 1" in r.stdout
        assert list(_retained_acks(broker)) == [bms.topic_for("north", keep, "ack")]


def test_erase_with_an_unreachable_broker_says_so_in_one_line(tmp_path: Path):
    (tmp_path / "data").mkdir()
    port = free_port()
    r = fleetbms(tmp_path / "data", "erase", "--vin", GONE, "--broker", f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert r.stderr == (
        "Error: files erased, but the retained acks were not: cannot reach the broker at "
        f"127.0.0.1:{port}: Connection refused\n"
    )


@pytest.mark.parametrize("broker", ["broker.example", "127.0.0.1:", "127.0.0.1:70000", ""])
def test_a_malformed_broker_address_is_a_usage_error_and_nothing_is_erased(
    tmp_path: Path, broker: str
):
    """A typo in --broker must not leave the vehicle erased with its acks kept: the address
    is checked before any file is touched."""
    d = tmp_path / "data"
    write_flushes(day_table(RUN_DAY), d / "lake")
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    r = fleetbms(d, "erase", "--vin", GONE, "--broker", broker)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("Error: Invalid value for '--broker': ")
    assert r.stderr.count("\n") == 1
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before


def test_a_pdf_stream_ending_in_a_white_space_byte_is_still_read() -> None:
    """Flate data whose last byte looks like white space (a fleet PDF's page once did):
    stripping it made the stream undecodable and the VIN in it unseen."""
    import zlib

    from pipeline._erase import _pdf_mentions

    vin = "MAT612345NEX00001"
    for k in range(10_000):
        pad = hashlib.sha256(str(k).encode()).hexdigest()  # varies the checksum's last byte
        data = zlib.compress(f"BT ({vin}) Tj ET % {pad}".encode())
        if data[-1:] in (b" ", b"\n", b"\r", b"\t"):
            break
    else:
        raise AssertionError("no such stream in 10,000 tries")
    pdf = b"%PDF-1.4\n1 0 obj << /Filter [ /FlateDecode ] >>\nstream\n" + data
    assert _pdf_mentions(pdf + b"\nendstream\nendobj\n", vin)


def test_erase_reaches_parquet_temporaries_a_crashed_writer_left(tmp_path: Path):
    # A writer killed between writing its hidden temporary and renaming it leaves a
    # complete Parquet file under a name that does not end in .parquet.
    d = tmp_path / "data"
    gone = VINS[1]  # neither the min nor the max: only in compressed pages
    write_flushes(day_table(RUN_DAY), d / "lake", flushes=1)
    src = bms.telemetry_files(d / "lake", RUN_DAY)[0]
    temp = src.parent / f".{src.name}.0123abcd.tmp"
    pq.write_table(day_table(RUN_DAY, cadence_s=60), temp, compression="zstd")
    assert gone.encode() not in temp.read_bytes()  # a byte scan cannot see it
    assert gone in textual_values(pq.read_table(temp))
    r = fleetbms(d, "erase", "--vin", gone)
    assert r.returncode == 0, r.stderr
    # Deleted, not rewritten: the temporary's name is not where the data lives.
    assert not temp.exists()
    assert gone not in textual_values(pq.read_table(src))


def test_erase_names_a_parquet_file_it_cannot_read_and_exits_1(tmp_path: Path):
    d = tmp_path / "data"
    write_flushes(day_table(RUN_DAY), d / "lake", flushes=1)
    src = bms.telemetry_files(d / "lake", RUN_DAY)[0]
    partial = src.parent / f".{src.name}.89abcdef.tmp"
    partial.write_bytes(src.read_bytes()[: src.stat().st_size // 2])  # no footer yet
    r = fleetbms(d, "erase", "--vin", GONE)
    assert r.returncode == 1
    assert r.stderr == (
        f"Error: {partial}: not readable as Parquet (being written, or damaged); it may "
        "still hold the VIN: remove it or let its writer finish, then erase again\n"
    )
    assert GONE not in textual_values(pq.read_table(src))  # the rest is erased
    entry = json.loads((d / "state" / "erasure" / "log.jsonl").read_text().splitlines()[-1])
    assert entry["files_unchecked"] == 1


def test_erase_deletes_a_quarantine_json_dump_that_names_the_vin(tmp_path: Path):
    """A quarantine row the Parquet writer refused is kept as a JSON dump (ingest's
    ``dump_quarantine_row``): erased like a Parquet quarantine row, others untouched."""
    d = tmp_path / "data"
    _lake_with(d)
    ms = int(datetime(RUN_DAY.year, RUN_DAY.month, RUN_DAY.day, 6, tzinfo=UTC).timestamp() * 1000)

    def dump(vin: str, token: str) -> Path:
        payload = b'{"vin": "' + vin.encode() + b'", "x": "\xff"}'
        row = QuarantineRow(f"fleet/demo/{vin}/bms", payload, "not_json", "x", ms, None, "mqtt")
        return dump_quarantine_row(row, "kept as a JSON dump: refused", d / "lake", "w1", token)

    gone, kept = dump(GONE, "t-0"), dump(VINS[1], "t-1")
    kept_bytes = kept.read_bytes()
    r = fleetbms(d, "erase", "--vin", GONE)
    assert r.returncode == 0, r.stderr
    assert not gone.exists()
    assert kept.read_bytes() == kept_bytes


# --- the erasure log is a hash chain ----------------------------------------------------

GENESIS = "0" * 64


def _log(d: Path) -> Path:
    return d / "state" / "erasure" / "log.jsonl"


def _lake_with(d: Path) -> None:
    write_flushes(day_table(RUN_DAY), d / "lake", flushes=1)


def _vins_in_lake(d: Path) -> set[str]:
    files = bms.telemetry_files(d / "lake", RUN_DAY)
    return set(pq.read_table(files, columns=["vin"])["vin"].to_pylist())


def test_erasure_log_entries_form_a_hash_chain_from_genesis(tmp_path: Path):
    d = tmp_path / "data"
    _lake_with(d)
    for vin in VINS:
        r = fleetbms(d, "erase", "--vin", vin)
        assert r.returncode == 0, r.stderr
    raw = _log(d).read_bytes()
    lines = raw.split(b"\n")
    assert lines.pop() == b""
    assert len(lines) == 3
    prev = GENESIS
    for line in lines:
        entry = json.loads(line)
        assert entry["prev"] == prev
        # canonical JSON: what is hashed is the entry's canonical bytes
        assert line == json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
        assert set(entry) == {
            "erased_at",
            "vin_hmac_sha256",
            "key_id",
            "files_rewritten",
            "files_deleted",
            "rows_removed",
            "files_unchecked",
            "prev",
        }
        prev = hashlib.sha256(line).hexdigest()
    for vin in VINS:  # keyed hashes only, as before
        assert vin.encode() not in raw


def _tamper(lines: list[bytes], how: str) -> list[bytes]:
    if how == "remove first":
        return lines[1:]
    if how == "remove middle":
        return [lines[0], lines[2]]
    if how == "edit":
        entry = json.loads(lines[1])
        entry["rows_removed"] += 1
        return [
            lines[0],
            json.dumps(entry, sort_keys=True, separators=(",", ":")).encode(),
            lines[2],
        ]
    if how == "swap":
        return [lines[1], lines[0], lines[2]]
    if how == "insert":
        return [lines[0], lines[0], lines[1], lines[2]]
    raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "line", "why"),
    [
        ("remove first", 1, "prev "),
        ("remove middle", 2, "prev "),
        ("edit", 3, "prev "),  # the edited line's hash no longer matches its successor's link
        ("swap", 1, "prev "),
        ("insert", 2, "prev "),
    ],
)
def test_a_removed_edited_or_inserted_log_line_stops_the_next_erase(
    tmp_path: Path, how: str, line: int, why: str
):
    d = tmp_path / "data"
    _lake_with(d)
    for vin in ("MAT612345NEX00007", "MAT612345NEX00008", "MAT612345NEX00009"):
        assert fleetbms(d, "erase", "--vin", vin).returncode == 0
    lines = _log(d).read_bytes().splitlines()
    forged = b"".join(x + b"\n" for x in _tamper(lines, how))
    _log(d).write_bytes(forged)
    r = fleetbms(d, "erase", "--vin", GONE)
    assert r.returncode == 1
    assert r.stderr.startswith(f"Error: erasure log {_log(d)} is broken at line {line}: {why}")
    assert r.stderr.endswith("; nothing erased, nothing appended\n")
    assert r.stderr.count("\n") == 1
    assert _log(d).read_bytes() == forged  # nothing appended
    assert GONE in _vins_in_lake(d)  # nothing erased


def test_a_log_cut_short_or_with_a_stray_unlinked_line_stops_the_next_erase(tmp_path: Path):
    d = tmp_path / "data"
    _lake_with(d)
    for vin in ("MAT612345NEX00007", "MAT612345NEX00008"):
        assert fleetbms(d, "erase", "--vin", vin).returncode == 0
    good = _log(d).read_bytes()
    stray = json.dumps({"erased_at": "2026-01-01T00:00:00+00:00", "rows_removed": 0}).encode()
    for forged, line, why in (
        (good[:-5], 2, "cut short (no end of line)"),
        (good + stray + b"\n", 3, "an entry without a 'prev' link after linked entries"),
        (good + b"\n", 3, "not a JSON object"),
        (good.replace(b'"rows_removed":0', b'"rows_removed": 0', 1), 1, "not in canonical"),
    ):
        _log(d).write_bytes(forged)
        r = fleetbms(d, "erase", "--vin", GONE)
        assert (r.returncode, r.stdout) == (1, "")
        assert r.stderr.startswith(f"Error: erasure log {_log(d)} is broken at line {line}: {why}")
        assert _log(d).read_bytes() == forged
        assert GONE in _vins_in_lake(d)


def test_an_erasure_log_from_before_the_chain_is_kept_as_its_start(tmp_path: Path):
    """Entries written without ``prev`` stay byte for byte; the first linked entry links
    to the SHA-256 of all of them, so removing or editing one is still seen."""
    d = tmp_path / "data"
    _lake_with(d)
    old = [
        {
            "erased_at": f"2025-0{i}-01T10:00:00+00:00",
            "vin_hmac_sha256": hashlib.sha256(str(i).encode()).hexdigest(),
            "key_id": "0123456789abcdef",
            "files_rewritten": i,
            "files_deleted": 0,
            "rows_removed": 10 * i,
            "files_unchecked": 0,
        }
        for i in (1, 2)
    ]
    legacy = "".join(json.dumps(e, sort_keys=True) + "\n" for e in old).encode()  # as written
    _log(d).parent.mkdir(parents=True)
    _log(d).write_bytes(legacy)
    assert fleetbms(d, "erase", "--vin", GONE).returncode == 0
    assert fleetbms(d, "erase", "--vin", VINS[1]).returncode == 0
    raw = _log(d).read_bytes()
    assert raw.startswith(legacy)
    first, second = raw[len(legacy) :].splitlines()
    assert json.loads(first)["prev"] == hashlib.sha256(legacy).hexdigest()
    assert json.loads(second)["prev"] == hashlib.sha256(first).hexdigest()

    edited = raw.replace(b'"rows_removed": 10', b'"rows_removed": 11', 1)
    _log(d).write_bytes(edited)
    r = fleetbms(d, "erase", "--vin", VINS[2])
    assert r.returncode == 1
    assert r.stderr.startswith(f"Error: erasure log {_log(d)} is broken at line 3: prev ")
    assert "of the 2 entries before it, written before the chain" in r.stderr
    assert VINS[2] in _vins_in_lake(d)


def test_an_erasure_makes_the_nightly_export_the_run_dates_bundle_again(tmp_path: Path):
    """The bundle carries the erasure log: a rerun after an erasure is not up to date."""
    d = tmp_path / "data"
    write_flushes(day_table(RUN_DAY), d / "lake", flushes=1)
    assert fleetbms(d, "keys", "generate").returncode == 0
    env = {"FLEETBMS_REPORTS__AUDIT_ENABLED": "1", **RUN_ENV}
    r = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat(), **env)
    assert r.returncode in (0, 3), r.stderr
    manifest = d / "reports" / f"date={RUN_DAY}" / "audit-demo" / "manifest.json"
    assert json.loads(manifest.read_bytes())["erasure_log"]["entries"] == 0
    # A VIN the data does not hold: the bundle stays, the log grows.
    assert fleetbms(d, "erase", "--vin", "MAT612345NEX00009").returncode == 0
    assert manifest.exists()
    again = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat(), **env)
    assert again.returncode in (0, 3), again.stderr
    assert json.loads(manifest.read_bytes())["erasure_log"]["entries"] == 1


REMINDER = (
    "reminder: audit bundles were exported from {d} (it holds state/keys/pseudonym.key): "
    "copies kept outside it still hold the vehicle under its pseudonym, and --reveal files "
    "map that to its VIN; erase cannot reach them: delete them, and have whoever received "
    "one do the same (README, erase)\n"
)


def test_erase_reminds_of_bundles_and_reveal_files_outside_the_data_dir(tmp_path: Path):
    d = tmp_path / "data"
    _lake_with(d)
    r = fleetbms(d, "erase", "--vin", VINS[1])
    assert r.returncode == 0, r.stderr
    assert "reminder" not in r.stdout  # nothing was ever exported: no pseudonym key
    # A bundle exported outside the data directory (the export creates the pseudonym key).
    from tests.reports.audit_data import DAYS, make_lake

    make_lake(d)
    assert fleetbms(d, "keys", "generate").returncode == 0
    period = ["--from", DAYS[0].isoformat(), "--to", DAYS[-1].isoformat()]
    outside = tmp_path / "sent-to-insurer"
    exp = fleetbms(d, "audit", "export", *period, "--out", str(outside))
    assert exp.returncode == 0, exp.stderr
    r = fleetbms(d, "erase", "--vin", GONE)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines(keepends=True)
    assert lines[0].startswith(f"erased {GONE}: ")
    assert lines[-1] == REMINDER.format(d=d)


def test_the_next_nightly_writes_again_the_fleet_reports_an_erasure_deleted(tmp_path: Path):
    """Erasure deletes every fleet PDF naming the vehicle, old dates' too; the next
    nightly writes them again without it, as the README promises, not only the run's."""
    d = tmp_path / "data"
    registry = pa.table(
        {
            "vin": VINS,
            "fleet": ["demo"] * 3,
            "chemistry": ["nmc"] * 3,
            "capacity_ah": [100.0] * 3,
            "n_cells": pa.array([14] * 3, pa.int16()),
            "n_temps": pa.array([4] * 3, pa.int16()),
            "vehicle_class": ["car"] * 3,
            "in_service_date": pa.array([RUN_DAY - timedelta(days=900)] * 3, pa.date32()),
            "warranty_policy": [""] * 3,
        }
    )
    bms.write_parquet_atomic(registry, d / "lake" / "registry" / "vehicles.parquet")
    old = RUN_DAY - timedelta(days=2)
    # the day between has telemetry too: a day without any would be a reported gap
    write_flushes(day_table(old + timedelta(days=1)), d / "lake", flushes=1)
    for day in (old, RUN_DAY):
        write_flushes(day_table(day), d / "lake", flushes=1)
        assert fleetbms(d, "nightly", "--date", day.isoformat()).returncode == 0
    pdfs = [d / "reports" / f"date={day}" / "fleet-demo.pdf" for day in (old, RUN_DAY)]
    assert all(p.exists() for p in pdfs)
    assert fleetbms(d, "erase", "--vin", VINS[0]).returncode == 0
    assert not any(p.exists() for p in pdfs)
    r = fleetbms(d, "nightly", "--date", RUN_DAY.isoformat())
    assert r.returncode == 0, r.stderr
    for p in pdfs:
        text = "".join(page.extract_text() for page in PdfReader(p).pages)
        assert VINS[1] in text
        assert VINS[0] not in text
