"""Telemetry contract v1: message structures, topics and validation.

The wire contract is ``shared/telemetry.md``. Decoding uses msgspec typed structs so
that parsing and most validation happen in one pass in C; the few rules msgspec cannot
express (topic/payload VIN match, timestamp not in the future, version) are checked after.
Every rejection carries a machine-readable reason code (``REJECT_REASONS``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import msgspec
import numpy as np

from bms._errors import ContractError

#: ISO 3779 VIN: 17 characters, no I, O or Q.
VIN_PATTERN = r"^[A-HJ-NPR-Z0-9]{17}$"
#: Fleet id in topics: 1-64 of [A-Za-z0-9_-].
FLEET_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_CELLS = 400
MAX_SENSORS = 400
MAX_BATCH_READINGS = 10_000
#: Readings stamped further than this ahead of the receive time are rejected.
MAX_FUTURE = timedelta(hours=24)
MODES = ("drive", "ac_charge", "dc_charge", "idle", "v2g")

#: Reason codes of the quarantine (``lake/quarantine``, column ``reason``), with their
#: meaning: every reason a quarantine row can hold. The first ones are the contract's
#: rejections; the last three are given by ingest to a message the contract accepted (or
#: could not judge) that failed a later step on its own, so that it is not a crash loop.
REJECT_REASONS: dict[str, str] = {
    "bad_topic": "topic is not fleet/{fleet_id}/{vin}/bms or .../bms/batch",
    "payload_too_large": "payload exceeds the configured size limit",
    "not_json": "payload is not UTF-8 JSON",
    "unknown_version": "field v is not a supported contract version",
    "missing_field": "a required field is missing",
    "wrong_type": "a field has the wrong JSON type",
    "bad_value": "a field is outside its allowed values (mode, seq or float32 range...)",
    "bad_vin": "VIN is not 17 characters of [A-HJ-NPR-Z0-9]",
    "vin_mismatch": "VIN in the payload differs from the VIN in the topic",
    "bad_ts": "ts is not an RFC 3339 timestamp with a time zone, or is before year 1 in UTC",
    "ts_in_future": "ts is more than 24 h after the receive time",
    "bad_cells": "cell voltage or temperature list is empty or longer than 400",
    "batch_too_large": "batch holds more than 10,000 readings",
    "decode_failed": "the decoder raised instead of accepting or rejecting the message "
    "(the exception in the detail)",
    "write_failed": "readings valid, but converting them to Arrow or writing them to "
    "Parquet failed for this message alone; not stored (the exception in the detail)",
    "alert_failed": "readings stored, but evaluating the live hard-limit alerts on them "
    "failed for this message alone: no live alert evaluated (the exception in the detail)",
}

_I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
#: Largest magnitude stored as a finite float32 (larger ones round to infinity): FLT_MAX
#: plus half its last place, 2**128 - 2**103 (excluded).
FLOAT32_LIMIT = 2.0**128 - 2.0**103
#: A pack value stored as float32 (``current_a``, ``voltage_v``, ``soc_pct``, ``soh_pct``).
_F32 = Annotated[float, msgspec.Meta(gt=-FLOAT32_LIMIT, lt=FLOAT32_LIMIT)]
_F32_PATHS = tuple(f"`$.pack.{name}`" for name in ("current_a", "voltage_v", "soc_pct", "soh_pct"))


class Pack(msgspec.Struct, gc=False):
    """Pack-level signals of one reading (units in the names, VSS sign convention)."""

    current_a: _F32
    voltage_v: _F32
    soc_pct: _F32
    cycle_count: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
    odometer_km: float
    mode: Literal["drive", "ac_charge", "dc_charge", "idle", "v2g"]
    soh_pct: _F32 | None = None


class Cells(msgspec.Struct, gc=False):
    """Per-cell voltages [mV] in pack order and per-sensor temperatures [degC]."""

    voltages_mv: Annotated[list[_I64], msgspec.Meta(min_length=1, max_length=MAX_CELLS)]
    temps_c: Annotated[list[float], msgspec.Meta(min_length=1, max_length=MAX_SENSORS)]


class Reading(msgspec.Struct, gc=False):
    """One BMS reading, contract v1. ``(vin, seq)`` is its identity."""

    v: int
    vin: Annotated[str, msgspec.Meta(pattern=VIN_PATTERN)]
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    ts: Annotated[datetime, msgspec.Meta(tz=True)]
    pack: Pack
    cells: Cells


class _RawBatch(msgspec.Struct, gc=False):
    v: int
    readings: list[msgspec.Raw]


class _VersionOnly(msgspec.Struct, gc=False):
    v: object = None


class Ack(msgspec.Struct, gc=False):
    """Retained acknowledgement: every reading with ``seq <= durable_seq`` is stored."""

    v: int
    vin: str
    durable_seq: int


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed vehicle topic ``fleet/{fleet_id}/{vin}/{kind}``."""

    fleet_id: str
    vin: str
    kind: Literal["bms", "batch", "ack", "alert"]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why (part of) a message was rejected.

    ``index`` is the position of the reading inside a batch, ``None`` for the whole
    message; ``raw`` holds the rejected bytes (the whole payload or one batch item).
    """

    reason: str
    detail: str
    raw: bytes
    index: int | None = None


@dataclass(frozen=True, slots=True)
class Decoded:
    """Result of decoding one MQTT message: the accepted readings and the rejections."""

    topic: Topic | None
    readings: list[Reading]
    rejections: list[Rejection]


_reading_decoder = msgspec.json.Decoder(Reading)
_batch_decoder = msgspec.json.Decoder(_RawBatch)
_version_decoder = msgspec.json.Decoder(_VersionOnly)
_ack_encoder = msgspec.json.Encoder()
_ack_decoder = msgspec.json.Decoder(Ack)
_reading_encoder = msgspec.json.Encoder()

_VIN_RE = re.compile(VIN_PATTERN)
_FLEET_RE = re.compile(FLEET_PATTERN)
_PATH_RE = re.compile(r"- at `(\$[^`]*)`")
#: A JSON string (the scan of ``_split_readings`` finds them in order, one after another).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def nested_too_deeply(exc: RecursionError) -> ContractError:
    """The rejection of JSON nested deeper than the decoder can follow (``not_json``).

    msgspec (and the standard library) decode nesting by recursion: a few kB of ``[[[...``
    make them raise ``RecursionError``. The one place that words this reason.
    """
    return ContractError("not_json", f"JSON nested too deeply to decode ({exc})")


def _split_readings(payload: bytes) -> tuple[int, int, list[bytes]] | None:
    """Where the ``readings`` array of a batch is and its items, found without recursion.

    For a batch the decoder cannot follow (an item nested too deeply): the depth of every
    byte outside strings is counted at once (numpy, so a 16 MB nest takes a fraction of
    a second); only the brackets, commas, colons and keys of the envelope and the item
    boundaries (depth <= 2) are looked at one by one. Returns the start and end of the
    array in ``payload`` and the bytes of each item (not validated: each is decoded on
    its own), or ``None`` when ``payload`` is not one object with one ``readings`` array
    (or is cut short, or an item is empty).
    """
    data = np.frombuffer(payload, dtype=np.uint8)
    spans = [m.span() for m in _JSON_STRING.finditer(payload)]
    starts = np.array([a for a, _ in spans], dtype=np.int64)
    marks = np.zeros(len(data) + 1, dtype=np.int8)
    np.add.at(marks, starts, 1)
    np.add.at(marks, np.array([b for _, b in spans], dtype=np.int64), -1)
    in_string = np.cumsum(marks[:-1], dtype=np.int8) > 0
    if ((data == ord('"')) & ~in_string).any():
        return None  # a string not terminated
    opens = ((data == ord("[")) | (data == ord("{"))) & ~in_string
    closes = ((data == ord("]")) | (data == ord("}"))) & ~in_string
    depth = np.cumsum(opens.astype(np.int32) - closes.astype(np.int32), dtype=np.int32)
    text = np.nonzero(~np.isin(data, np.frombuffer(b" \t\n\r", dtype=np.uint8)))[0]
    if len(text) == 0 or data[text[0]] != ord("{") or depth[text[-1]] != 0:
        return None
    if depth[text[0] : text[-1]].min() <= 0:
        return None  # brackets close too early, or text outside the top-level object
    outer = depth - opens  # depth of the container each byte is in
    shallow_mask = opens | closes | (((data == ord(",")) | (data == ord(":"))) & ~in_string)
    shallow_mask[starts] = True
    shallow = np.nonzero(shallow_mask & (outer <= 2))[0]
    expect_key = want_array = in_readings = False
    key: object = None
    start = end = -1
    items: list[bytes] = []
    item_start = 0
    for i in shallow.tolist():
        c = payload[i]
        level = int(outer[i])
        if want_array and c != ord("["):
            return None  # readings is not an array
        if c == ord('"'):
            if level == 1 and expect_key:
                m = _JSON_STRING.match(payload, i)
                try:
                    key = msgspec.json.decode(m.group()) if m else None
                except msgspec.DecodeError:
                    return None
                expect_key = False
        elif c in b"[{":
            if level == 0:
                expect_key = True
            elif level == 1 and want_array:
                if start >= 0:
                    return None  # two readings keys
                start, item_start, in_readings, want_array = i, i + 1, True, False
        elif c in b"]}":
            if level == 1 and in_readings:  # the end of readings
                item = payload[item_start:i].strip()
                if item or items:
                    items.append(item)
                end, in_readings = i + 1, False
        elif c == ord(","):
            if level == 1:
                expect_key = True
            elif level == 2 and in_readings:
                items.append(payload[item_start:i].strip())
                item_start = i + 1
        elif level == 1:  # a colon
            want_array = key == "readings"
    if start < 0 or end < 0 or not all(items):
        return None
    return start, end, items


def topic_for(fleet_id: str, vin: str, kind: str) -> str:
    """Topic string of ``kind`` (``bms``, ``batch``, ``ack``, ``alert``) for a vehicle."""
    suffix = {"bms": "bms", "batch": "bms/batch", "ack": "ack", "alert": "alert"}[kind]
    return f"fleet/{fleet_id}/{vin}/{suffix}"


@functools.lru_cache(maxsize=1 << 16)
def parse_topic(topic: str) -> Topic:
    """Parse ``fleet/{fleet_id}/{vin}/bms[/batch]|ack|alert``.

    Results are cached: a fleet has a bounded set of topics and this runs per message.

    Raises
    ------
    ContractError
        With reason ``bad_topic``.
    """
    parts = topic.split("/")
    kind: Literal["bms", "batch", "ack", "alert"]
    if len(parts) == 5 and parts[3] == "bms" and parts[4] == "batch":
        kind = "batch"
    elif len(parts) == 4 and parts[3] in ("bms", "ack", "alert"):
        kind = parts[3]  # type: ignore[assignment]
    else:
        raise ContractError("bad_topic", f"unexpected topic {topic!r}")
    if parts[0] != "fleet" or not _FLEET_RE.match(parts[1]) or not _VIN_RE.match(parts[2]):
        raise ContractError("bad_topic", f"unexpected topic {topic!r}")
    return Topic(parts[1], parts[2], kind)


def _reason_for(exc: msgspec.ValidationError) -> str:
    msg = str(exc)
    m = _PATH_RE.search(msg)
    path = m.group(1) if m else "$"
    if msg.startswith("Object missing required field"):
        return "missing_field"
    if path == "$.vin":
        return "bad_vin" if "str" in msg and "got" not in msg else "wrong_type"
    if path == "$.ts":
        return "bad_ts"
    if path.startswith(("$.cells.voltages_mv", "$.cells.temps_c")) and "length" in msg:
        return "bad_cells"
    if msg.startswith("Expected `") and ", got `" in msg:
        return "wrong_type"
    return "bad_value"


def _invalid(payload: bytes | msgspec.Raw, exc: msgspec.ValidationError) -> ContractError:
    """The rejection for a payload the typed decoder refused. It stops at the first value
    of the wrong type, so bytes that merely start like JSON (a digit, a quote: one random
    payload in ~16) would read as ``wrong_type``; they are ``not_json`` unless the whole
    payload parses. A second parse, on the rejection path only."""
    try:
        msgspec.json.decode(payload)
    except msgspec.DecodeError as bad:
        return ContractError("not_json", str(bad))
    detail = str(exc)
    if detail.startswith("Expected `float` ") and detail.endswith(_F32_PATHS):
        detail += " (stored as float32: a larger magnitude would be stored as infinity)"
    return _version_error(payload) or ContractError(_reason_for(exc), detail)


def _version_error(payload: bytes | msgspec.Raw) -> ContractError | None:
    """On a failed decode, tell whether the cause is an unsupported version."""
    try:
        v = _version_decoder.decode(payload).v
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if v is not None and v != 1:
        return ContractError("unknown_version", f"v={v!r}, this pipeline understands v=1")
    return None


def decode_reading(
    payload: bytes | msgspec.Raw, *, now: datetime, topic_vin: str | None = None
) -> Reading:
    """Decode and validate one reading.

    Parameters
    ----------
    payload : bytes
        JSON of one reading.
    now : datetime
        Receive time (timezone-aware); a ``ts`` more than 24 h after it is rejected.
    topic_vin : str, optional
        VIN from the topic; the payload's VIN must equal it.

    Raises
    ------
    ContractError
        With one of the ``REJECT_REASONS`` codes (``not_json`` for JSON nested too
        deeply to decode).
    """
    try:
        reading = _decode_typed(payload)
    except RecursionError as exc:
        raise nested_too_deeply(exc) from None
    if reading.v != 1:
        raise ContractError("unknown_version", f"v={reading.v}, this pipeline understands v=1")
    if topic_vin is not None and reading.vin != topic_vin:
        raise ContractError("vin_mismatch", f"payload vin {reading.vin} != topic vin {topic_vin}")
    if reading.ts - now > MAX_FUTURE:
        raise ContractError(
            "ts_in_future", f"ts {reading.ts.isoformat()} is after receive time + 24 h"
        )
    if reading.ts.year == 1 and _before_year_1(reading.ts):
        raise ContractError("bad_ts", f"ts {reading.ts.isoformat()} is before 0001-01-01T00:00:00Z")
    return reading


def _decode_typed(payload: bytes | msgspec.Raw) -> Reading:
    try:
        return _reading_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise _invalid(payload, exc) from None
    except msgspec.DecodeError as exc:
        raise ContractError("not_json", str(exc)) from None


def batch_items(payload: bytes) -> list[bytes] | list[msgspec.Raw]:
    """The undecoded readings of a batch message (``{"v": 1, "readings": [...]}``), its
    envelope checked.

    An item nested too deeply for the decoder does not condemn the others: the items are
    then found by ``_split_readings`` and the envelope is checked without them; each
    item is decoded on its own later.

    Raises
    ------
    ContractError
        For the whole message.
    """
    try:
        return _batch_envelope(payload).readings
    except RecursionError as exc:
        deep = exc
    split = _split_readings(payload)
    if split is None:
        raise nested_too_deeply(deep) from None
    start, end, items = split
    try:
        _batch_envelope(payload[:start] + b"[]" + payload[end:])
    except RecursionError as exc:  # another field of the envelope is too deep
        raise nested_too_deeply(exc) from None
    return items


def _batch_envelope(payload: bytes) -> _RawBatch:
    try:
        batch = _batch_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise _invalid(payload, exc) from None
    except msgspec.DecodeError as exc:
        raise ContractError("not_json", str(exc)) from None
    if batch.v != 1:
        raise ContractError("unknown_version", f"batch v={batch.v}, this pipeline understands v=1")
    return batch


def _before_year_1(ts: datetime) -> bool:
    """``0001-01-01T00:00:00+05:30`` is valid RFC 3339, but its UTC instant has no date:
    stored, it would make writing the whole flush fail."""
    try:
        ts.astimezone(UTC)
    except OverflowError:
        return True
    return False


def decode_message(
    topic: str, payload: bytes, *, now: datetime, max_payload_bytes: int = 16 * 2**20
) -> Decoded:
    """Decode one MQTT message (single reading or batch) into readings and rejections.

    A batch is validated reading by reading: one bad reading is quarantined alone and
    the others are kept (nothing good is thrown away with it), also when the bad one is
    nested too deeply to decode. JSON nested too deeply is ``not_json``, whole message or
    batch item, like any other JSON that does not decode.
    """
    try:
        parsed = parse_topic(topic)
    except ContractError as exc:
        return Decoded(None, [], [Rejection(exc.reason, exc.detail, payload)])
    if parsed.kind not in ("bms", "batch"):
        return Decoded(
            parsed, [], [Rejection("bad_topic", f"not a reading topic: {topic}", payload)]
        )
    if len(payload) > max_payload_bytes:
        detail = f"{len(payload)} bytes > limit {max_payload_bytes}"
        return Decoded(parsed, [], [Rejection("payload_too_large", detail, payload)])
    if parsed.kind == "bms":
        try:
            return Decoded(parsed, [decode_reading(payload, now=now, topic_vin=parsed.vin)], [])
        except ContractError as exc:
            return Decoded(parsed, [], [Rejection(exc.reason, exc.detail, payload)])
    try:
        items = batch_items(payload)
    except ContractError as exc:
        return Decoded(parsed, [], [Rejection(exc.reason, exc.detail, payload)])
    if len(items) > MAX_BATCH_READINGS:
        detail = f"{len(items)} readings > {MAX_BATCH_READINGS}"
        return Decoded(parsed, [], [Rejection("batch_too_large", detail, payload)])
    readings: list[Reading] = []
    rejections: list[Rejection] = []
    for i, raw in enumerate(items):
        try:
            readings.append(decode_reading(raw, now=now, topic_vin=parsed.vin))
        except ContractError as exc:
            rejections.append(Rejection(exc.reason, exc.detail, bytes(raw), i))
    return Decoded(parsed, readings, rejections)


def encode_reading(reading: Reading) -> bytes:
    """JSON bytes of a reading (the form vehicles send)."""
    return _reading_encoder.encode(reading)


def encode_batch(readings: list[Reading]) -> bytes:
    """JSON bytes of a store-and-forward batch (``{"v": 1, "readings": [...]}``)."""
    return _reading_encoder.encode({"v": 1, "readings": readings})


def encode_ack(vin: str, durable_seq: int) -> bytes:
    """JSON bytes of the retained acknowledgement for ``vin``."""
    return _ack_encoder.encode(Ack(1, vin, durable_seq))


def decode_ack(payload: bytes) -> Ack:
    """Decode an acknowledgement; raises ``ContractError`` if malformed."""
    try:
        return _ack_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ContractError("bad_value", f"malformed ack: {exc}") from None
