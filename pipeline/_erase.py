"""Erasure of one vehicle's personal data from everything under the data directory.

A VIN linked to an owner makes its telemetry personal data; India's DPDP Act 2023 gives
the data principal a right to erasure (s.12) and requires erasure once the purpose is
served (s.8(7)). ``erase_vehicle`` walks every file under the data directory (lake,
archive, state, reports, simulator truth) rather than a list of known tables, so a table
added later is covered too:

- Parquet: every row whose string or binary columns mention the VIN (a ``vin`` column,
  a topic, the raw bytes of a quarantined message, an evidence text) is removed and the
  file rewritten atomically with the same name, row groups, sort order and metadata
  (metadata entries that mention the VIN are dropped); a file left without rows is
  deleted. Values are read back, not bytes scanned: zstd hides strings from a byte scan;
- JSON: entries whose key mentions the VIN and records (objects) with a value that
  mentions it are removed; other text files (CSV, JSON lines, logs) lose the lines that
  mention it;
- PDFs that mention the VIN (in their text streams or their name) and any other file or
  directory whose name or bytes mention it are deleted: a report is derived data and is
  written again, without the vehicle, by the next report run;
- audit bundles that hold the vehicle's keyed pseudonym are deleted whole (a signed
  bundle cannot be edited); the next export writes them without it.

Nothing outside the data directory is reached: bundles exported elsewhere (or sent to an
insurer) keep the vehicle under its pseudonym, and ``--reveal`` files map pseudonyms to
VINs. ``ErasureResult.bundles_exported`` says whether bundles were ever exported (the
pseudonym key exists), for the command's reminder.

The erasure log ``state/erasure/log.jsonl`` records each erasure without the VIN in
clear: it stores ``HMAC-SHA256(key, VIN)`` with a random key kept in
``state/erasure/hmac.key`` (0600), the time, the key's id and the counts of files and
rows, nothing else. A plain hash would not do: VINs are structured (a manufacturer
prefix, a model code, a serial), so all plausible VINs of a fleet can be hashed and
matched in seconds. With the keyed hash the operator can still answer "was this VIN
erased, and when?" for a VIN someone presents, while the log alone reveals nothing;
destroying the key makes the log anonymous. The log is a hash chain
(``reports._erasure_log``): each entry holds the SHA-256 of the previous one; the chain
is checked before an erasure starts (a broken chain stops it before anything is
touched), and audit bundles carry the log and its head.

The broker keeps one more trace: the retained ack ``fleet/{fleet}/{vin}/ack``.
``clear_retained_acks`` (``fleetbms erase --broker``) finds the vehicle's retained acks
by subscribing to ``fleet/+/{vin}/ack`` and deletes each with an empty retained message
(MQTT v5, 3.3.1.3: a retained message with an empty payload removes the retained one).

Erasure runs under the nightly lock so it does not race compaction or retention. It does
not stop new readings of the VIN from arriving: stop ingest of the vehicle first.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import os
import re
import secrets
import shutil
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bms import VIN_PATTERN, atomic_write_bytes, write_secret_file
from pipeline._retention import rewrite_parquet
from reports import (
    ERASURE_LOG_PATH,
    PSEUDONYM_KEY_NAME,
    append_erasure_entry,
    read_erasure_chain,
)

_REMOVE = object()
_PDF_STREAM = re.compile(rb"stream\r?\n(.*?)endstream", re.S)


@dataclass(frozen=True, slots=True)
class ErasureResult:
    """What an erasure changed. ``vin_hmac`` is what the log holds instead of the VIN."""

    vin_hmac: str
    files_rewritten: int
    files_deleted: int
    rows_removed: int
    log: Path
    #: Parquet files that could not be read (a temporary still being written, or a
    #: damaged file): they may still hold the VIN.
    unchecked: tuple[Path, ...] = ()
    #: The data directory holds a pseudonym key: audit bundles were exported from it,
    #: and copies kept outside it are out of the erasure's reach.
    bundles_exported: bool = False


def _hmac_key(state_dir: Path) -> bytes:
    path = state_dir / "erasure" / "hmac.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Complete and durable before its name appears: a crash never leaves an empty key.
        # FileExistsError: another process created it first; use theirs.
        with contextlib.suppress(FileExistsError):
            write_secret_file(path, secrets.token_bytes(32), 0o600, replace=False)
    return path.read_bytes()


def vin_hmac(state_dir: Path, vin: str) -> str:
    """Keyed hash (HMAC-SHA256, hex) of a VIN, as stored in the erasure log."""
    return hmac.new(_hmac_key(state_dir), vin.encode(), sha256).hexdigest()


def _mentions(array: pa.Array | pa.ChunkedArray, vin: str) -> np.ndarray:
    """Per row: does this column (any nesting) mention ``vin``?"""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    n = len(array)
    typ = array.type
    if pa.types.is_dictionary(typ):
        return _mentions(array.cast(typ.value_type), vin)
    if (
        pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or pa.types.is_binary(typ)
        or pa.types.is_large_binary(typ)
    ):
        hit = pc.match_substring(array, vin)
        return np.asarray(pc.fill_null(hit, False).to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        inner = _mentions(pc.list_flatten(array), vin)
        parents = pc.list_parent_indices(array).to_numpy()
        out = np.zeros(n, dtype=bool)
        out[parents[inner]] = True
        return out
    if pa.types.is_struct(typ):
        out = np.zeros(n, dtype=bool)
        for i in range(typ.num_fields):
            out |= _mentions(array.field(i), vin)
        return out
    return np.zeros(n, dtype=bool)


def _textual(typ: pa.DataType) -> bool:
    if pa.types.is_dictionary(typ):
        return _textual(typ.value_type)
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return _textual(typ.value_type)
    if pa.types.is_struct(typ):
        return any(_textual(typ.field(i).type) for i in range(typ.num_fields))
    return bool(
        pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or pa.types.is_binary(typ)
        or pa.types.is_large_binary(typ)
    )


def _is_parquet(path: Path) -> bool:
    """Does the file start like Parquet (``PAR1``), whatever its name?"""
    with open(path, "rb") as fh:
        return fh.read(4) == b"PAR1"


def _erase_parquet(
    path: Path, vin: str, zstd_level: int, *, rewrite: bool = True
) -> tuple[str, int]:
    """Remove the VIN's rows from a Parquet file; return (action, rows removed).

    With ``rewrite`` false (a writer's hidden temporary) a file that mentions the VIN is
    deleted instead: its name is not the one that holds the data.
    """
    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    columns = [f.name for f in schema if _textual(f.type)]
    meta = schema.metadata or {}
    meta_hit = any(vin.encode() in k or vin.encode() in v for k, v in meta.items())
    removed = 0
    hit_groups: list[int] = []
    for i in range(pf.metadata.num_row_groups):
        if not columns:
            break
        t = pf.read_row_group(i, columns=columns)
        hits = np.zeros(t.num_rows, dtype=bool)
        for c in columns:
            hits |= _mentions(t[c], vin)
        if hits.any():
            hit_groups.append(i)
            removed += int(hits.sum())
    if not hit_groups and not meta_hit:
        return "", 0
    if removed == pf.metadata.num_rows or not rewrite:
        path.unlink()
        return "deleted", removed

    def keep(f: pq.ParquetFile, i: int) -> pa.Table:
        t = f.read_row_group(i)
        if i in hit_groups:
            hits = np.zeros(t.num_rows, dtype=bool)
            for c in columns:
                hits |= _mentions(t[c], vin)
            t = t.filter(pa.array(~hits))
        return t

    clean = {k: v for k, v in meta.items() if vin.encode() not in k + v}
    rewrite_parquet(path, path, zstd_level=zstd_level, keep=keep, metadata=clean)
    return "rewritten", removed


def _scrub_json(obj: Any, vin: str) -> Any:
    if isinstance(obj, str):
        return _REMOVE if vin in obj else obj
    if isinstance(obj, dict):
        if any(isinstance(v, str) and vin in v for v in obj.values()):
            return _REMOVE
        out = {}
        for k, v in obj.items():
            if vin in str(k):
                continue
            s = _scrub_json(v, vin)
            if s is not _REMOVE:
                out[k] = s
        return out
    if isinstance(obj, list):
        return [s for x in obj if (s := _scrub_json(x, vin)) is not _REMOVE]
    return obj


def _pdf_stream_texts(data: bytes) -> list[bytes]:
    """Decoded content of a PDF's streams (Flate, or ASCII85 then Flate as reportlab)."""
    out: list[bytes] = []
    for m in _PDF_STREAM.finditer(data):
        # Flate data may end in a byte that looks like white space: not stripped; what
        # follows the compressed stream (the EOL before "endstream") is left unused.
        try:
            out.append(zlib.decompressobj().decompress(m.group(1)))
            continue
        except zlib.error:
            pass
        try:
            raw = m.group(1).strip()
            out.append(zlib.decompress(base64.a85decode(raw.removesuffix(b"~>"))))
        except (zlib.error, ValueError):
            continue
    return out


def _pdf_mentions(data: bytes, vin: str) -> bool:
    """Does a PDF show ``vin``: in clear, in a decoded stream, or as a hex string?"""
    needles = (vin.encode(), vin.encode().hex().encode(), vin.encode().hex().upper().encode())
    return any(n in chunk for chunk in (data, *_pdf_stream_texts(data)) for n in needles)


def _erase_other(path: Path, vin: str) -> str:
    """Handle a non-Parquet file; return ``deleted``, ``rewritten`` or ``""``."""
    data = path.read_bytes()
    if path.suffix.lower() == ".pdf":
        if _pdf_mentions(data, vin):
            path.unlink()
            return "deleted"
        return ""
    if vin.encode() not in data:
        return ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        path.unlink()
        return "deleted"
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = _REMOVE
        if obj is not _REMOVE:
            scrubbed = _scrub_json(obj, vin)
            if scrubbed is not _REMOVE:
                atomic_write_bytes((json.dumps(scrubbed, indent=2) + "\n").encode(), path)
                return "rewritten"
        path.unlink()
        return "deleted"
    kept = [line for line in text.splitlines(keepends=True) if vin not in line]
    atomic_write_bytes("".join(kept).encode(), path)
    return "rewritten"


def _file_mentions(path: Path, needle: str) -> bool:
    """Does a file mention ``needle``: Parquet values, else its bytes."""
    if path.suffix == ".parquet":
        pf = pq.ParquetFile(path)
        columns = [f.name for f in pf.schema_arrow if _textual(f.type)]
        if not columns:
            return False
        table = pf.read(columns=columns)
        return any(_mentions(table[c], needle).any() for c in columns)
    return needle.encode() in path.read_bytes()


def _erase_audit_bundles(data_dir: Path, vin: str) -> int:
    """Delete audit bundles that hold the vehicle under its keyed pseudonym.

    Bundles replace VINs by ``reports.pseudonym(vin, key)``, which is still personal data
    for whoever holds the key. A signed bundle cannot be edited without breaking its
    manifest, so a bundle that mentions the pseudonym is deleted whole; the next export
    writes it again without the vehicle.
    """
    key_file = data_dir / "state" / "keys" / "pseudonym.key"
    if not key_file.exists():
        return 0
    from reports import load_or_create_pseudonym_key, pseudonym

    needle = pseudonym(vin, load_or_create_pseudonym_key(key_file.parent))
    deleted = 0
    # Outermost first: a bundle holds per-day folders with manifests of their own.
    for manifest in sorted(data_dir.rglob("manifest.json"), key=lambda p: (len(p.parts), p)):
        bundle = manifest.parent
        if not manifest.exists():
            continue  # inside a bundle deleted already
        if any(p.is_file() and _file_mentions(p, needle) for p in bundle.rglob("*")):
            shutil.rmtree(bundle)
            deleted += 1
    for tar in sorted(data_dir.rglob("*.tar")):
        if needle.encode() in tar.read_bytes():
            tar.unlink()
            deleted += 1
    return deleted


def erase_vehicle(
    data_dir: Path, vin: str, *, lake_zstd_level: int = 3, archive_zstd_level: int = 19
) -> ErasureResult:
    """Remove every trace of ``vin`` under ``data_dir`` and log the erasure (keyed hash).

    Parameters
    ----------
    data_dir : Path
        The data directory.
    vin : str
        17 characters of ``[A-HJ-NPR-Z0-9]``.
    lake_zstd_level, archive_zstd_level : int
        zstd levels of rewritten files outside and inside ``archive/``.

    Raises
    ------
    ValueError
        ``vin`` is not a VIN, ``data_dir`` does not exist, or the erasure log's chain is
        broken (then nothing is erased or logged).
    """
    if not re.fullmatch(VIN_PATTERN, vin):
        raise ValueError(f"{vin!r} is not a VIN (17 characters of A-H, J-N, P, R-Z, 0-9)")
    if not data_dir.is_dir():
        raise ValueError(f"data directory {data_dir} does not exist")
    state_dir = data_dir / "state"
    erasure_dir = state_dir / "erasure"
    log = state_dir / ERASURE_LOG_PATH
    # Before anything is touched: an erasure that could not be logged is not done.
    _, chain = read_erasure_chain(state_dir)
    if chain.broken:
        raise ValueError(
            f"erasure log {log} is broken at {chain.broken}; nothing erased, nothing appended"
        )
    rewritten = rows = 0
    unchecked: list[Path] = []
    deleted = _erase_audit_bundles(data_dir, vin)
    for root, dirs, files in os.walk(data_dir, topdown=True):
        here = Path(root)
        if here == erasure_dir:
            dirs[:] = []
            continue
        for d in [d for d in dirs if vin in d]:
            shutil.rmtree(here / d)
            dirs.remove(d)
            deleted += 1
        for name in sorted(files):
            path = here / name
            if path.is_symlink() or not path.is_file():
                continue
            if vin in name:
                path.unlink()
                deleted += 1
                continue
            # By content, not name: a writer's hidden temporary (``.x.parquet.<id>.tmp``,
            # left by a crash) is Parquet too, and its zstd pages hide the VIN from a
            # byte scan.
            if _is_parquet(path):
                tier = path.relative_to(data_dir).parts[0]
                level = archive_zstd_level if tier == "archive" else lake_zstd_level
                try:
                    action, n = _erase_parquet(path, vin, level, rewrite=not name.startswith("."))
                except (pa.ArrowException, OSError):
                    unchecked.append(path)
                    continue
                rows += n
            else:
                action = _erase_other(path, vin)
            rewritten += action == "rewritten"
            deleted += action == "deleted"
    digest = vin_hmac(state_dir, vin)
    entry = {
        "erased_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "vin_hmac_sha256": digest,
        "key_id": sha256(_hmac_key(state_dir)).hexdigest()[:16],
        "files_rewritten": rewritten,
        "files_deleted": deleted,
        "rows_removed": rows,
        "files_unchecked": len(unchecked),
    }
    append_erasure_entry(state_dir, entry)
    # No registry of exports: the pseudonym key is made by the first export, so while it
    # exists, bundles (and maybe --reveal files) may have left the data directory.
    exported = (state_dir / "keys" / PSEUDONYM_KEY_NAME).exists()
    return ErasureResult(digest, rewritten, deleted, rows, log, tuple(unchecked), exported)


class BrokerError(RuntimeError):
    """The broker could not be reached or did not confirm the deletion."""


def clear_retained_acks(
    vin: str,
    broker: str,
    *,
    username: str = "",
    password: str = "",
    tls_ca: str = "",
    tls_cert: str = "",
    tls_key: str = "",
    timeout_s: float = 10.0,
    settle_s: float = 0.5,
) -> list[str]:
    """Delete the retained acks of ``vin`` on ``broker`` (``HOST:PORT``).

    Returns the topics cleared. Raises ``BrokerError`` when the broker cannot be reached
    or does not acknowledge within ``timeout_s``; ``settle_s`` is how long retained
    messages may take to arrive after the subscription is granted.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if not re.fullmatch(VIN_PATTERN, vin):
        raise ValueError(f"{vin!r} is not a VIN (17 characters of A-H, J-N, P, R-Z, 0-9)")
    from ingest import IngestError, IngestOptions

    try:
        # the parsing --broker is checked with: a bracketed IPv6 address connects to the
        # address inside the brackets
        host, port = IngestOptions(broker=broker).host_port()
    except IngestError as exc:
        raise ValueError(str(exc)) from None
    topics: set[str] = set()
    subscribed = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"fleetbms-erase-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv5,
    )
    if username:
        client.username_pw_set(username, password or None)
    if tls_ca:
        client.tls_set(ca_certs=tls_ca, certfile=tls_cert or None, keyfile=tls_key or None)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        if msg.retain and msg.payload:
            topics.add(msg.topic)

    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    try:
        client.connect(host, port)
    except OSError as exc:
        raise BrokerError(f"cannot reach the broker at {broker}: {exc.strerror or exc}") from None
    client.loop_start()
    try:
        client.subscribe(f"fleet/+/{vin}/ack", qos=1)
        if not subscribed.wait(timeout_s):
            raise BrokerError(f"the broker at {broker} did not grant the subscription")
        time.sleep(settle_s)
        client.unsubscribe(f"fleet/+/{vin}/ack")
        pending = [client.publish(t, b"", qos=1, retain=True) for t in sorted(topics)]
        deadline = time.monotonic() + timeout_s
        for info in pending:
            info.wait_for_publish(max(deadline - time.monotonic(), 0.01))
            if not info.is_published():
                raise BrokerError(f"the broker at {broker} did not confirm the deletion")
    finally:
        client.disconnect()
        client.loop_stop()
    return sorted(topics)
