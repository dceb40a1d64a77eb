"""``import``: JSON-lines files of readings or batches (optionally gzip) into the lake.

Each line is one reading or one ``{"v": 1, "readings": [...]}`` batch, exactly as sent
over MQTT. The topic is derived from the payload's VIN and the fleet id, then the line
goes through the same ``Processor`` as a live message: validation and quarantine (with
``source = "file:<path>:<line>"``, bytes of a file name that are not UTF-8 shown as
``\\xff`` escapes), dedup against this importer's own state
(``data/state/ingest/import.json``, so importing a file twice writes it once), the
single telemetry writer, dirty-date markers and alerts (stored, not published).
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import msgspec

from bms import FLEET_PATTERN, VIN_PATTERN, ContractError, Rejection, batch_items, topic_for
from ingest._alerts import AlertEngine
from ingest._errors import IngestError
from ingest._processor import Counters, Processor
from ingest._state import WorkerLock


class _Probe(msgspec.Struct):
    vin: object = None
    readings: list[msgspec.Raw] | None = None


class _VinProbe(msgspec.Struct):
    vin: object = None


_probe = msgspec.json.Decoder(_Probe)
_vin_probe = msgspec.json.Decoder(_VinProbe)


@dataclass(frozen=True)
class ImportSummary:
    """Totals of one ``import`` run."""

    files: int
    lines: int
    counters: Counters


def _shown(path: Path) -> str:
    """``path`` as valid UTF-8 text that still names the file, for quarantine rows and
    messages. A file name may hold bytes that are not UTF-8 (Linux allows any); Python
    keeps them in a str path as lone surrogates (``os.fsdecode``), which a Parquet
    string column refuses (``UnicodeEncodeError``) and a strict UTF-8 stream cannot
    print. They are shown as backslash escapes instead (the byte 0xff as ``\\xff``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _open(path: Path) -> IO[bytes]:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with _open(path) as fh:
        for n, line in enumerate(fh, start=1):
            line = line.strip()
            if line:
                yield n, line


def _is_vin(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(VIN_PATTERN, value) is not None


def _topic_of(line: bytes, fleet: str) -> tuple[str | None, Rejection | None]:
    """Topic a gateway would have used for ``line``, or why there is none."""
    try:
        probe = _probe.decode(line)
    except msgspec.DecodeError as exc:
        return None, Rejection("not_json", str(exc), line)
    except msgspec.ValidationError as exc:
        return None, Rejection("wrong_type", str(exc), line)
    except RecursionError:
        # a batch with an item too deep to skip still has a topic: decode_message keeps
        # its other items, as for a message from the broker
        try:
            items = batch_items(line)
        except ContractError as err:  # not a batch: the line is nested too deeply
            return None, Rejection(err.reason, err.detail, line)
        probe = _Probe(readings=[msgspec.Raw(item) for item in items[:1]])
    if probe.readings is not None:
        vin: object = None
        if probe.readings:
            try:
                vin = _vin_probe.decode(probe.readings[0]).vin
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                vin = None
        if not _is_vin(vin):
            return None, Rejection("bad_vin", "first reading of the batch has no valid vin", line)
        return topic_for(fleet, str(vin), "batch"), None
    if probe.vin is None:
        return None, Rejection("missing_field", "Object missing required field `vin`", line)
    if not _is_vin(probe.vin):
        return None, Rejection("bad_vin", f"vin {probe.vin!r} is not a VIN", line)
    return topic_for(fleet, str(probe.vin), "bms"), None


def import_files(
    paths: Sequence[Path],
    *,
    fleet: str,
    lake_dir: Path,
    state_dir: Path,
    engine: AlertEngine | None,
    flush_rows: int = 50_000,
    max_payload_bytes: int = 16 * 2**20,
    max_ranges: int = 256,
    worker: str = "import",
) -> ImportSummary:
    """Import JSON-lines files (plain or gzip) of readings and batches.

    Raises
    ------
    IngestError
        A path does not exist or is not a readable file, or the fleet id is invalid;
        checked for every path before anything is written. Another import (same
        ``worker``) runs on this data directory.
    OSError
        The lake is not writable (what was flushed before stays; a rerun dedups).
    """
    if not re.fullmatch(FLEET_PATTERN, fleet):
        raise IngestError(f"fleet id {fleet!r} is not 1-64 characters of [A-Za-z0-9_-]")
    for p in paths:
        if not p.exists():
            raise IngestError(f"{_shown(p)}: no such file")
        if not p.is_file():
            raise IngestError(f"{_shown(p)}: not a file")
        try:
            with open(p, "rb"):
                pass
        except OSError as exc:
            raise IngestError(f"{_shown(p)}: {exc.strerror}") from None
    lock = WorkerLock(state_dir, worker)
    try:
        proc = Processor(
            lake_dir=lake_dir,
            state_dir=state_dir,
            worker=worker,
            engine=engine,
            max_payload_bytes=max_payload_bytes,
            max_ranges=max_ranges,
        )
        lines = _import_all(proc, paths, fleet, flush_rows)
    finally:
        lock.release()
    return ImportSummary(files=len(paths), lines=lines, counters=proc.counters)


def _import_all(proc: Processor, paths: Sequence[Path], fleet: str, flush_rows: int) -> int:
    """Feed every line of ``paths`` to ``proc``, flushing as it goes; lines read."""
    lines = 0

    def flush() -> None:
        batch = proc.take()
        if batch is not None:
            proc.write(batch)

    for p in paths:
        shown = _shown(p)
        try:
            for n, line in _lines(p):
                lines += 1
                source = f"file:{shown}:{n}"
                topic, rejection = _topic_of(line, fleet)
                if topic is None:
                    assert rejection is not None
                    proc.reject(f"import/{fleet}", rejection, source=source)
                    continue
                rows, qbytes = proc.add(topic, line, source=source)
                if rows >= flush_rows or qbytes >= 64 * 2**20:
                    flush()
        except (gzip.BadGzipFile, EOFError) as exc:
            flush()
            raise IngestError(f"{shown}: broken gzip file after line {lines}: {exc}") from None
    flush()
    proc.save_state()
    return lines
