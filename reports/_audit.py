"""Export of signed, pseudonymised insurer audit bundles (format in ``reports._bundle``).

The exporter reads whatever the analytics and anomaly stages left in the lake for the
period (``metrics/<table>/date=D/fleet=F/*.parquet`` and ``anomalies/date=D/fleet=F/``),
replaces every VIN by its keyed pseudonym, writes each (day, table, fleet) as Parquet
and CSV, chains the day manifests, and signs the top manifest with Ed25519 (RFC 8032).

Everything written is a function of the inputs and the keys: no wall clock, sorted
paths, canonical JSON, deterministic Parquet/CSV writers and deterministic Ed25519
signatures, so a rerun gives a byte-identical bundle.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import shutil
import tarfile
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bms import FLEET_PATTERN, fsync_dir, fsync_path, parquet_encoding_options, write_secret_file
from reports import _bundle as fmt
from reports._csv import preload, repeats, write_csv_file
from reports._dictionary import TableInfo, data_dictionary, methodology
from reports._erasure_log import ERASURE_LOG_PATH, ErasureChain, read_erasure_chain
from reports._errors import ReportError
from reports._keys import (
    SIGNING_KEY_NAME,
    load_or_create_pseudonym_key,
    load_signing_key,
    public_key_fingerprint,
)
from reports._pseudonym import (
    PSEUDONYM_HEX_DIGITS,
    PSEUDONYM_PREFIX,
    Pseudonymizer,
    is_vin_column,
)

#: zstd level of the bundle's Parquet files (the lake's ingest level).
PARQUET_ZSTD_LEVEL = 3
_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_UTC_NAMES = frozenset({"UTC", "utc", "Etc/UTC", "+00:00", "Z"})
#: fsyncs in flight at once (``_Syncer``).
_SYNC_THREADS = 8
#: VINs gathered from files before they are reduced to the distinct ones (``_known_vins``).
_VINS_PENDING = 200_000


@dataclass(frozen=True, slots=True)
class AuditExport:
    """Result of ``export_audit_bundle``.

    Attributes
    ----------
    path : Path
        The bundle (directory, or ``.tar`` file).
    date_from, date_to : date
        The period, both days included.
    fleets : tuple of str
        Fleets with data in the bundle.
    days_with_data : int
        Days of the period that had at least one table.
    tables : tuple of str
        Exported tables (``metrics/<name>``, ``anomalies``).
    files : int
        Files listed in the manifest.
    rows : int
        Rows exported, over all tables.
    vehicles : int
        Distinct VINs replaced by pseudonyms.
    input_bytes, output_bytes : int
        Size of the lake files read and of the bundle files written. [bytes]
    chain_head : str
        SHA-256 of the last day manifest.
    manifest_sha256 : str
        SHA-256 of ``manifest.json``.
    signer : str
        ``sha256:`` fingerprint of the signing public key.
    erasures : int
        Entries of the erasure log carried by the bundle (``erasure/log.jsonl``).
    erasure_head : str
        Head of the erasure log's hash chain, as recorded in ``manifest.json``.
    """

    path: Path
    date_from: date
    date_to: date
    fleets: tuple[str, ...]
    days_with_data: int
    tables: tuple[str, ...]
    files: int
    rows: int
    vehicles: int
    input_bytes: int
    output_bytes: int
    chain_head: str
    manifest_sha256: str
    signer: str
    erasures: int
    erasure_head: str


@dataclass(frozen=True, slots=True)
class _Partition:
    key: str  # "metrics/<table>" or "anomalies"
    day: date
    fleet: str
    files: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class _Written:
    path: str  # bundle-relative
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class _Finished:
    files: dict[str, _Written]
    tables: dict[str, TableInfo]
    chain_head: str
    manifest_sha256: str


@dataclass(frozen=True, slots=True)
class _PartResult:
    part: _Partition
    out_key: str  # scrubbed table key
    out_fleet: str
    schema: pa.Schema
    rows: int
    written: tuple[_Written, ...]


def _date_dirs(base: Path, date_from: date, date_to: date) -> list[tuple[date, Path]]:
    if not base.is_dir():
        return []
    out = []
    for entry in base.iterdir():
        m = _DATE_DIR.match(entry.name)
        if not m or not entry.is_dir():
            continue
        try:
            day = date.fromisoformat(m.group(1))
        except ValueError:
            continue
        if date_from <= day <= date_to:
            out.append((day, entry))
    return sorted(out)


def _fleet_parts(key: str, day: date, day_path: Path, fleet: str | None) -> list[_Partition]:
    parts = []
    for entry in sorted(day_path.iterdir()):
        if not entry.name.startswith("fleet=") or not entry.is_dir():
            continue
        fleet_id = entry.name[len("fleet=") :]
        if fleet is not None and fleet_id != fleet:
            continue
        files = tuple(
            sorted(p for p in entry.glob("*.parquet") if not p.name.startswith(".") and p.is_file())
        )
        if files:
            parts.append(_Partition(key, day, fleet_id, files))
    return parts


def find_partitions(
    lake_dir: Path, date_from: date, date_to: date, fleet: str | None = None
) -> list[_Partition]:
    """Lake partitions of metrics and anomalies in the period, sorted."""
    found: list[_Partition] = []
    metrics = lake_dir / "metrics"
    if metrics.is_dir():
        for table_dir in sorted(metrics.iterdir()):
            if table_dir.name.startswith(".") or not table_dir.is_dir():
                continue
            for day, day_path in _date_dirs(table_dir, date_from, date_to):
                found += _fleet_parts(f"metrics/{table_dir.name}", day, day_path, fleet)
    for day, day_path in _date_dirs(lake_dir / "anomalies", date_from, date_to):
        found += _fleet_parts("anomalies", day, day_path, fleet)
    return sorted(found, key=lambda p: (p.day, p.key, p.fleet))


def _known_vins(lake_dir: Path, parts: list[_Partition]) -> set[str]:
    """VINs of the registry and of every VIN column of the partitions' files."""
    files = [f for p in parts for f in p.files]
    registry = lake_dir / "registry" / "vehicles.parquet"
    if registry.is_file():
        files.append(registry)

    def of_file(path: Path) -> list[pa.Array]:
        try:
            meta = pq.read_metadata(path)
            schema = meta.schema.to_arrow_schema()
            names = [f.name for f in schema if is_vin_column(f.name) and _is_text(f.type)]
            if not names:
                return []
            # As dictionaries: the distinct VINs come straight from the dictionary pages.
            # One file per thread of the pool: no further threads inside the read.
            with pq.ParquetFile(path, metadata=meta, read_dictionary=names) as pf:
                table = pf.read(columns=names, use_threads=False)
        except (OSError, pa.ArrowException) as exc:
            raise ReportError(f"cannot read {path}: {exc}") from None
        return [
            (chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk).cast(
                pa.large_string()
            )
            for column in table.columns
            for chunk in column.chunks
        ]

    # Distinct in Arrow over many files, to Python once: the VINs of one fleet repeat in
    # every file, and turning each file's into Python strings cost more than its read.
    distinct: list[pa.Array] = []
    pending = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        for arrays in pool.map(of_file, files):
            distinct += arrays
            pending += sum(len(a) for a in arrays)
            if pending > _VINS_PENDING:
                distinct = [pc.unique(pa.chunked_array(distinct, pa.large_string()))]
                pending = len(distinct[0])
    if not distinct:
        return set()
    return {v for v in pc.unique(pa.chunked_array(distinct, pa.large_string())).to_pylist() if v}


def _is_text(typ: pa.DataType) -> bool:
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return bool(pa.types.is_string(typ) or pa.types.is_large_string(typ))


def _read_part(part: _Partition) -> tuple[pa.Table, set[str]]:
    """The partition's rows, and the names of the VIN columns read as dictionaries.

    Plain-string VIN columns are read as dictionaries, so each distinct VIN is
    pseudonymised once (not once per row); the caller casts them back to strings.
    """
    tables: list[pa.Table] = []
    as_dictionary: set[str] = set()
    for path in part.files:
        try:
            # ParquetFile, not read_table: no dataset layer, the footer parsed once.
            meta = pq.read_metadata(path)
            names = [
                f.name
                for f in meta.schema.to_arrow_schema()
                if is_vin_column(f.name) and pa.types.is_string(f.type)
            ]
            with pq.ParquetFile(path, metadata=meta, read_dictionary=names) as pf:
                tables.append(pf.read())
        except (OSError, pa.ArrowException) as exc:
            raise ReportError(f"cannot read {path}: {exc}") from None
        as_dictionary.update(names)
    if len(tables) == 1:
        return tables[0], as_dictionary
    try:
        return pa.concat_tables(tables, promote_options="permissive"), as_dictionary
    except pa.ArrowException as exc:
        folder = part.files[0].parent
        raise ReportError(f"files of {folder} have incompatible schemas: {exc}") from None


def _json_cell(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _csv_table(table: pa.Table) -> pa.Table:
    """``table`` with columns the CSV writer cannot format (or formats slowly) as text.

    Nested values become JSON; UTC timestamps are formatted without the per-value time
    zone lookup (same text as Arrow's: ``2026-11-01 00:00:00.000Z``).
    """
    columns = []
    for column in table.columns:
        typ = column.type
        if pa.types.is_timestamp(typ) and typ.tz in _UTC_NAMES:
            naive = pc.cast(column, pa.timestamp(typ.unit))
            column = pc.binary_join_element_wise(pc.cast(naive, pa.string()), "Z", "")
        elif pa.types.is_nested(typ):
            column = pa.array([_json_cell(v) for v in column.to_pylist()], pa.string())
        elif pa.types.is_interval(typ):
            column = pa.array([None if v is None else str(v) for v in column.to_pylist()])
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


class _Syncer:
    """fsyncs finished files and folders on background threads.

    The disk flushes one file while the exporters format the next (an fsync right after
    each write left a core idle for every flush); ``wait`` returns when all are durable.
    The threads wait on the disk, not on a core: several fsyncs in flight share the
    file system's journal commits (on ext4 here, 270 files took 0.85-1.3 s to fsync one
    after the other and 0.1 s on 8 threads). ``enabled=False`` for a ``.tar`` bundle,
    whose loose files are temporary: only the tar file has to reach the disk.
    """

    def __init__(self, enabled: bool = True) -> None:
        self._pool = ThreadPoolExecutor(max_workers=_SYNC_THREADS) if enabled else None
        self._pending: list[Future[None]] = []

    def __call__(self, path: Path) -> None:
        if self._pool is not None:
            self._pending.append(self._pool.submit(fsync_path, path))

    def wait(self) -> None:
        """Block until every file handed over is on disk; raise the first error."""
        try:
            for future in self._pending:
                future.result()
        finally:
            self._pending.clear()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _write_file(
    root: Path, rel: str, data: bytes | pa.Buffer | memoryview, sync: _Syncer
) -> _Written:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    view = memoryview(data)
    with open(path, "wb") as fh:
        fh.write(view)
    sync(path)
    return _Written(rel, fmt.sha256_hex(view), view.nbytes)


def _file_sha256(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file just written, read back through a memory map
    (the page cache, without a copy)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return fmt.sha256_hex(b""), 0
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return hashlib.sha256(view).hexdigest(), size


def _write_path(root: Path, rel: str, write: Callable[[Path], None], sync: _Syncer) -> _Written:
    """``write(path)`` makes the file; then it is hashed and handed to ``sync``.

    The writers (Arrow's Parquet writer, Polars' CSV writer) open the path themselves:
    through a Python file object each of their writes called back into Python, and
    waited for the GIL whenever the other exporter held it.
    """
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)
    sync(path)
    digest, size = _file_sha256(path)
    return _Written(rel, digest, size)


def _write_parquet(table: pa.Table, path: Path, repeating: Mapping[str, bool]) -> None:
    with pa.OSFile(str(path), "wb") as sink:
        pq.write_table(
            table,
            sink,
            compression="zstd",
            compression_level=PARQUET_ZSTD_LEVEL,
            write_statistics=True,
            **parquet_encoding_options(table.schema, _float_encodings(repeating)),
        )


def _is_cell_table(key: str, schema: pa.Schema) -> bool:
    """True for a metrics table with one row per cell (a ``cell`` column)."""
    return key.startswith("metrics/") and "cell" in schema.names


def _export_part(
    part: _Partition, pseudonyms: Pseudonymizer, root: Path, sync: _Syncer, cell_csv: bool
) -> _PartResult:
    table, as_dictionary = _read_part(part)
    # The CSV keeps the VIN columns as dictionaries (each pseudonym quoted once); the
    # Parquet file has the lake's plain strings.
    csv_table = pseudonyms.table(table)
    table = csv_table
    for i, field in enumerate(table.schema):
        if field.name in as_dictionary and pa.types.is_dictionary(field.type):
            plain = field.with_type(pa.string())
            table = table.set_column(i, plain, table.column(i).cast(pa.string()))
    # Sampled once per column: it picks the Parquet encoding and the CSV's text route.
    repeating = {
        f.name: repeats(table[f.name]) for f in table.schema if pa.types.is_floating(f.type)
    }
    out_key = pseudonyms.text(part.key)
    out_fleet = pseudonyms.text(part.fleet)
    base = f"{fmt.day_dir(part.day)}/{out_key}/fleet={out_fleet}"
    written = [
        _write_path(root, f"{base}.parquet", lambda p: _write_parquet(table, p, repeating), sync)
    ]
    if cell_csv or not _is_cell_table(part.key, table.schema):
        csv = _csv_table(csv_table)
        written.append(
            _write_path(root, f"{base}.csv", lambda p: write_csv_file(csv, p, repeating), sync)
        )
    return _PartResult(part, out_key, out_fleet, table.schema, table.num_rows, tuple(written))


def _float_encodings(repeating: Mapping[str, bool]) -> dict[str, str]:
    """BYTE_STREAM_SPLIT for the float columns whose values rarely repeat (full-precision
    measurements): a dictionary of nearly every value costs the writer more than it saves.
    Measured on a 96,000-row cell_day day of full-precision doubles: 23.0 ms and 3.5 MB
    with dictionaries, 9.7 ms and 2.5 MB split; columns of rounded values that repeat
    keep their dictionary (9.4 ms and 0.56 MB, against 14.2 ms and 2.2 MB split)."""
    return {name: "BYTE_STREAM_SPLIT" for name, repeat in repeating.items() if not repeat}


def _check_out(out: Path) -> None:
    if out.name.endswith(".tar"):
        if out.is_symlink():
            raise ReportError(f"{out} is a symbolic link; not overwriting")
        if out.exists() and not out.is_file():
            raise ReportError(f"{out} exists and is not a file")
        if out.exists() and out.stat().st_size > 0 and not _is_bundle_tar(out):
            raise ReportError(
                f"{out} is not an audit bundle (not a tar file holding a fleetbms "
                f"{fmt.MANIFEST_NAME}); not overwriting"
            )
        return
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise ReportError(f"{out} exists and is not a directory")
        if any(out.iterdir()) and not _is_bundle(out):
            raise ReportError(f"{out} is not empty and is not an audit bundle; not overwriting")


def _is_bundle(folder: Path) -> bool:
    """Does ``folder`` hold a fleetbms audit manifest (not just any manifest.json)?"""
    manifest = folder / fmt.MANIFEST_NAME
    if manifest.is_symlink() or not manifest.is_file():
        return False
    try:
        doc = json.loads(manifest.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("format") == fmt.FORMAT


def _is_bundle_tar(path: Path) -> bool:
    """Is ``path`` a tar file whose top folder holds a fleetbms audit manifest?

    As written by ``_tar_into``: ``NAME/manifest.json``. The members are read one at a
    time and the search stops at the manifest.
    """
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                parts = member.name.split("/")
                if len(parts) != 2 or parts[1] != fmt.MANIFEST_NAME or not member.isfile():
                    continue
                fh = tar.extractfile(member)
                doc = json.loads(fh.read()) if fh is not None else None
                return isinstance(doc, dict) and doc.get("format") == fmt.FORMAT
    except (OSError, EOFError, tarfile.TarError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return False


def _is_within(inner: Path, outer: Path) -> bool:
    inner_r, outer_r = inner.resolve(), outer.resolve()
    return inner_r == outer_r or outer_r in inner_r.parents


def _tar_into(src: Path, files: list[str], tar_path: Path, top: str, mtime: int) -> None:
    with open(tar_path, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel in files:
                info = tarfile.TarInfo(f"{top}/{rel}")
                info.size = (src / rel).stat().st_size
                info.mtime = mtime
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(src / rel, "rb") as fh:
                    tar.addfile(info, fh)
        raw.flush()
        os.fsync(raw.fileno())


def _install(tmp: Path, out: Path, files: list[str], date_to: date, sync: _Syncer) -> None:
    """Move the finished bundle in ``tmp`` to ``out`` (directory or ``.tar``)."""
    if not out.name.endswith(".tar"):
        # Every folder's entries durable before the rename publishes the bundle; among
        # themselves the folders need no order (none is visible before the rename).
        folders = {tmp}
        for rel in files:
            folders.update((tmp / rel).parents[: len(Path(rel).parts) - 1])
        for folder in sorted(folders, key=lambda p: -len(p.parts)):
            sync(folder)
    sync.wait()
    if out.name.endswith(".tar"):
        mtime = int(datetime.combine(date_to, datetime.max.time(), UTC).timestamp())
        tar_tmp = out.parent / f".{out.name}.{uuid.uuid4().hex}.tmp"
        try:
            _tar_into(tmp, files, tar_tmp, out.name[: -len(".tar")], mtime)
            os.replace(tar_tmp, out)
        finally:
            tar_tmp.unlink(missing_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
    elif out.exists():
        old = out.parent / f".{out.name}.{uuid.uuid4().hex}.old"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
    fsync_dir(out.parent)


_REVEAL_HEADER = "pseudonym,vin"


def _check_reveal(path: Path) -> None:
    """Refuse a reveal path that would replace anything but an earlier reveal file."""
    if path.is_symlink():
        raise ReportError(f"reveal file {path} is a symbolic link; not overwriting")
    if not path.exists():
        return
    if not path.is_file():
        raise ReportError(f"reveal file {path} exists and is not a file; not overwriting")
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_REVEAL_HEADER) + 1)
    except OSError as exc:
        raise ReportError(f"cannot read reveal file {path}: {exc.strerror}") from None
    if head and head != f"{_REVEAL_HEADER}\n".encode():
        raise ReportError(
            f"reveal file {path} exists and is not a pseudonym->VIN mapping; not overwriting"
        )


def _write_reveal(path: Path, mapping: Mapping[str, str]) -> None:
    lines = [_REVEAL_HEADER] + [f"{p},{mapping[p]}" for p in sorted(mapping)]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_secret_file(path, ("\n".join(lines) + "\n").encode("utf-8"), 0o600, replace=True)
    except OSError as exc:
        raise ReportError(f"cannot write reveal file {path}: {exc.strerror}") from None


def export_audit_bundle(
    lake_dir: Path,
    state_dir: Path,
    out: Path,
    *,
    date_from: date,
    date_to: date,
    fleet: str | None = None,
    signing_key: Path | None = None,
    reveal: Path | None = None,
    parameters: Mapping[str, Any] | None = None,
    workers: int = 2,
    cell_csv: bool = True,
) -> AuditExport:
    """Write a signed, pseudonymised audit bundle of the period's metrics and verdicts.

    Parameters
    ----------
    lake_dir : Path
        Root of the lake (``data/lake``).
    state_dir : Path
        State folder (``data/state``): keys in ``keys/``, anomaly models in ``models/``.
    out : Path
        Bundle directory to create or replace (only an existing bundle or an empty
        folder is replaced), or a path ending in ``.tar`` for a single tar file (only an
        existing bundle tar or an empty file is replaced).
    date_from, date_to : date
        The period, both days included (UTC event dates).
    fleet : str, optional
        Export only this fleet; default all fleets in the lake.
    signing_key : Path, optional
        Ed25519 private key (PEM); default ``state_dir/keys/signing.key``.
    reveal : Path, optional
        Also write the pseudonym -> VIN mapping to this CSV file (mode 0600). It must
        lie outside the bundle; only an earlier reveal file or an empty file is replaced.
    parameters : mapping, optional
        Configuration that produced the metrics, recorded in ``methodology.json``.
    workers : int
        Partitions exported in parallel.
    cell_csv : bool
        Also write the per-cell metrics tables (``cell_day``: a row per cell and day,
        about 90 % of a period's rows) as CSV; when false they are Parquet only.

    Returns
    -------
    AuditExport

    Raises
    ------
    ReportError
        Bad period or fleet, missing or unreadable key, no data for the period, an
        unreadable lake file, or an output path that must not be overwritten.
    """
    if date_from > date_to:
        raise ReportError(f"--from {date_from} is after --to {date_to}")
    if (date_to - date_from).days >= fmt.MAX_PERIOD_DAYS:
        raise ReportError(
            f"period {date_from}..{date_to} is longer than {fmt.MAX_PERIOD_DAYS} days"
        )
    if fleet is not None and not re.fullmatch(FLEET_PATTERN, fleet):
        raise ReportError(f"fleet {fleet!r} is not 1-64 characters of [A-Za-z0-9_-]")
    _check_out(out)
    if reveal is not None and _is_within(reveal, out):
        raise ReportError(f"reveal file {reveal} must be outside the bundle {out}")
    if reveal is not None:
        _check_reveal(reveal)
    keys_dir = state_dir / "keys"
    key_path = signing_key if signing_key is not None else keys_dir / SIGNING_KEY_NAME
    if signing_key is None and not key_path.exists():
        raise ReportError(f"no signing key at {key_path}; create one with: fleetbms keys generate")
    private_key = load_signing_key(key_path)
    signer = public_key_fingerprint(private_key.public_key())
    # One read: the bundle carries exactly the bytes whose chain was checked.
    erasure_log, erasure_chain = read_erasure_chain(state_dir)
    if erasure_chain.broken:
        raise ReportError(
            f"erasure log {state_dir / ERASURE_LOG_PATH} is broken at {erasure_chain.broken}; "
            "no bundle written"
        )

    parts = find_partitions(lake_dir, date_from, date_to, fleet)
    if not parts:
        which = f" of fleet {fleet}" if fleet else ""
        raise ReportError(
            f"no metrics or anomalies{which} between {date_from} and {date_to} "
            f"under {lake_dir}/metrics or {lake_dir}/anomalies"
        )
    # Polars (~0.2 s of imports, mostly holding the GIL) loads while the VIN pre-pass
    # waits on Parquet reads, not later while both workers format. A failure stays in
    # the future: ``write_csv`` imports Polars again where it needs it, and raises.
    with ThreadPoolExecutor(max_workers=1) as warm:
        warm.submit(preload)
        known = _known_vins(lake_dir, parts)
    pseudonyms = Pseudonymizer(load_or_create_pseudonym_key(keys_dir), known)

    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex}.tmp"
    sync = _Syncer(enabled=not out.name.endswith(".tar"))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = list(
                pool.map(lambda p: _export_part(p, pseudonyms, tmp, sync, cell_csv), parts)
            )
        export = _finish(
            tmp,
            results,
            pseudonyms,
            state_dir,
            date_from,
            date_to,
            parameters or {},
            private_key.sign,
            signer,
            sync,
            (erasure_log, erasure_chain),
        )
        files = sorted(export.files)
        _install(tmp, out, files, date_to, sync)
    except OSError as exc:
        # Polars' and Arrow's writers raise OSError without strerror or filename.
        where = exc.filename or out
        reason = exc.strerror or str(exc)
        raise ReportError(f"cannot write bundle {out}: {reason} ({where})") from None
    finally:
        sync.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if reveal is not None:
        _write_reveal(reveal, pseudonyms.mapping)
    return AuditExport(
        path=out,
        date_from=date_from,
        date_to=date_to,
        fleets=tuple(sorted({r.out_fleet for r in results})),
        days_with_data=len({r.part.day for r in results}),
        tables=tuple(sorted(export.tables)),
        files=len(files),
        rows=sum(r.rows for r in results),
        vehicles=len(pseudonyms.mapping),
        input_bytes=sum(f.stat().st_size for p in parts for f in p.files),
        output_bytes=sum(w.size for w in export.files.values()),
        chain_head=export.chain_head,
        manifest_sha256=export.manifest_sha256,
        signer=signer,
        erasures=erasure_chain.entries,
        erasure_head=erasure_chain.head,
    )


def _finish(
    root: Path,
    results: list[_PartResult],
    pseudonyms: Pseudonymizer,
    state_dir: Path,
    date_from: date,
    date_to: date,
    parameters: Mapping[str, Any],
    sign: Callable[[bytes], bytes],
    signer: str,
    sync: _Syncer,
    erasures: tuple[bytes, ErasureChain],
) -> _Finished:
    """Write day manifests (chained), dictionary, methodology, the erasure log, manifest
    and signature."""
    files: dict[str, _Written] = {}
    tables: dict[str, TableInfo] = {}
    by_day: dict[date, list[_PartResult]] = {}
    for r in results:
        by_day.setdefault(r.part.day, []).append(r)
        info = tables.setdefault(r.out_key, TableInfo(r.out_key))
        csv = any(w.path.endswith(".csv") for w in r.written)
        info.add(r.schema, r.rows, r.part.day.isoformat(), r.out_fleet, csv)
    prev = fmt.GENESIS
    for day in fmt.period_days(date_from, date_to):
        day_files: dict[str, Any] = {}
        for r in by_day.get(day, []):
            for w in r.written:
                files[w.path] = w
                day_files[w.path] = {"sha256": w.sha256, "bytes": w.size, "rows": r.rows}
        day_manifest = {
            "format": fmt.DAY_FORMAT,
            "format_version": fmt.FORMAT_VERSION,
            "date": day.isoformat(),
            "prev": prev,
            "files": day_files,
        }
        w = _write_file(root, fmt.day_manifest_path(day), fmt.canonical_json(day_manifest), sync)
        files[w.path] = w
        prev = w.sha256
    models_dir = state_dir / "models"
    for name, content in (
        (fmt.README_NAME, fmt.readme_bytes()),
        (fmt.DICTIONARY_NAME, fmt.pretty_json(data_dictionary(tables))),
        (fmt.METHODOLOGY_NAME, fmt.pretty_json(methodology(models_dir, pseudonyms, parameters))),
        (fmt.ERASURE_LOG_NAME, erasures[0]),
    ):
        if not content:
            continue  # no erasure yet: the manifest records 0 entries and no file
        w = _write_file(root, name, content, sync)
        files[w.path] = w
    manifest = {
        "format": fmt.FORMAT,
        "format_version": fmt.FORMAT_VERSION,
        "period": {"from": date_from.isoformat(), "to": date_to.isoformat()},
        "generated_at": fmt.generated_at(date_to),
        "fleets": sorted({r.out_fleet for r in results}),
        "tables": sorted(tables),
        "chain": {
            "rule": "days/D/manifest.json prev = sha256 of the previous day's manifest.json",
            "genesis": fmt.GENESIS,
            "days": len(fmt.period_days(date_from, date_to)),
            "head": prev,
        },
        "erasure_log": {
            **({"file": fmt.ERASURE_LOG_NAME} if erasures[0] else {}),
            "entries": erasures[1].entries,
            "legacy_entries": erasures[1].legacy_entries,
            "head": erasures[1].head,
            "genesis": fmt.GENESIS,
            "rule": "each line's prev = sha256 of the previous line's bytes (the first: "
            "genesis, or after lines without prev: sha256 of those lines); head = what the "
            "next line would link to",
        },
        "pseudonyms": {
            "method": "HMAC-SHA256",
            "key_id": pseudonyms.key_id,
            "format": f"{PSEUDONYM_PREFIX} + first {PSEUDONYM_HEX_DIGITS} hex digits",
        },
        "signature": {"algorithm": "Ed25519", "file": fmt.SIGNATURE_NAME, "public_key": signer},
        "files": {p: {"sha256": w.sha256, "bytes": w.size} for p, w in sorted(files.items())},
    }
    manifest_bytes = fmt.canonical_json(manifest)
    top = _write_file(root, fmt.MANIFEST_NAME, manifest_bytes, sync)
    sig = _write_file(root, fmt.SIGNATURE_NAME, sign(manifest_bytes), sync)
    all_files = {**files, top.path: top, sig.path: sig}
    return _Finished(all_files, tables, prev, top.sha256)
