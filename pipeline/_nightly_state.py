"""State of the nightly batch: lock, input fingerprints, done records, dirty dates, run records.

Everything lives under ``data/state`` and is changed by atomic writes (temporary file,
fsync, rename, fsync of the directory), so a run killed at any moment leaves either the
old or the new version of each file:

```
state/nightly.lock                        fcntl lock of the running batch (pid inside)
state/nightly/done/<stage>/<key>.json     inputs digest + outputs of work already done
state/nightly/journal/*.json              compaction journal (see pipeline._compact)
state/dirty/YYYY-MM-DD                    late-data markers written by ingest
state/dirty/.YYYY-MM-DD.claimed           a marker taken over by a running batch
state/runs/<run id>.json                  one record per run
```

None of these files holds a VIN in clear except the per-partition compaction statistics
(Parquet, removed by ``fleetbms erase`` like any other lake file).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from bms import atomic_write_bytes

LOCK_FILE = "nightly.lock"


class LockedError(Exception):
    """Another process holds the nightly lock (exit code 75 on the command line).

    Attributes
    ----------
    path : Path
        The lock file.
    holder : str
        What the holder wrote into the lock file (pid, purpose, start time).
    """

    def __init__(self, path: Path, holder: str) -> None:
        who = holder.strip() or "another process"
        super().__init__(f"another nightly batch is running ({who}); lock {path}")
        self.path = path
        self.holder = holder


@contextmanager
def nightly_lock(state_dir: Path, *, purpose: str, timeout_s: float = 0.0) -> Iterator[Path]:
    """Hold the exclusive lock of the nightly batch (``state/nightly.lock``).

    An ``fcntl.flock`` belongs to the open file description, so the kernel drops it when
    the process dies, even by ``kill -9``: a killed run never leaves a stale lock. The
    file itself stays (removing it would race with a process that just opened it).

    Parameters
    ----------
    state_dir : Path
        ``data/state``.
    purpose : str
        Written into the lock file for the message of a run that finds it held.
    timeout_s : float
        Wait this long for the lock before giving up; 0 = fail at once. [s]

    Raises
    ------
    LockedError
        The lock is held by another process.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
                    raise LockedError(path, holder) from None
                time.sleep(0.1)
        since = datetime.now(UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {purpose}, since {since}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)


def write_json_atomic(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(text.encode(), path)


def read_json(path: Path) -> Any:
    """The JSON content of ``path``, or ``None`` if the file does not exist."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def file_fingerprint(paths: Iterable[Path], root: Path) -> list[list[Any]]:
    """``[relative path, size, mtime_ns]`` of each file, sorted; missing files are left out.

    Lake files are immutable once written (new data gets new names), so name, size and
    modification time identify a file's content without hashing gigabytes every night.
    """
    out: list[list[Any]] = []
    for p in paths:
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        out.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return sorted(out)


def digest(obj: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``obj``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class DoneStore:
    """Records of work already done, one JSON file per (stage, key).

    A record holds the digest of the inputs and the outputs (relative path and size). Work
    is up to date when the digest matches and every output still exists with its size, so
    a deleted or replaced output is recomputed.
    """

    state_dir: Path
    data_dir: Path

    def _path(self, stage: str, key: str) -> Path:
        return self.state_dir / "nightly" / "done" / stage / f"{key}.json"

    def is_done(self, stage: str, key: str, inputs_digest: str) -> bool:
        """Whether ``stage`` already did ``key`` for exactly these inputs."""
        rec = read_json(self._path(stage, key))
        if not isinstance(rec, dict) or rec.get("inputs") != inputs_digest:
            return False
        for rel, size in rec.get("outputs", []):
            try:
                if (self.data_dir / rel).stat().st_size != size:
                    return False
            except FileNotFoundError:
                return False
        return True

    def mark_done(self, stage: str, key: str, inputs_digest: str, outputs: Sequence[Path]) -> None:
        """Record that ``stage`` did ``key`` for these inputs, producing ``outputs``."""
        outs = [[p.relative_to(self.data_dir).as_posix(), p.stat().st_size] for p in outputs]
        record = {"inputs": inputs_digest, "outputs": sorted(outs)}
        write_json_atomic(record, self._path(stage, key))

    def record(self, stage: str, key: str) -> Mapping[str, Any] | None:
        """The stored record, if any."""
        rec = read_json(self._path(stage, key))
        return rec if isinstance(rec, dict) else None


def _dirty_dir(state_dir: Path) -> Path:
    return state_dir / "dirty"


def _parse_marker(name: str) -> date | None:
    stem = name
    if stem.startswith(".") and stem.endswith(".claimed"):
        stem = stem[1 : -len(".claimed")]
    try:
        return date.fromisoformat(stem)
    except ValueError:
        return None


def dirty_dates(state_dir: Path) -> list[date]:
    """Dates marked dirty by late data, including markers a killed run had claimed."""
    d = _dirty_dir(state_dir)
    if not d.is_dir():
        return []
    days = {_parse_marker(p.name) for p in d.iterdir()}
    return sorted(day for day in days if day is not None)


def claim_dirty(state_dir: Path, up_to: date) -> list[date]:
    """Take over the dirty markers of dates up to ``up_to`` (rename to ``.D.claimed``).

    A marker that ingest writes again while the batch runs is a new file and stays for
    the next run, so no late data is forgotten.
    """
    d = _dirty_dir(state_dir)
    claimed: list[date] = []
    for day in dirty_dates(state_dir):
        if day > up_to:
            continue
        marker = d / day.isoformat()
        if marker.exists():
            os.replace(marker, d / f".{day.isoformat()}.claimed")
        claimed.append(day)
    return claimed


def release_dirty(state_dir: Path, day: date, *, done: bool) -> None:
    """Drop a claimed marker (``done``) or give it back for a later run."""
    d = _dirty_dir(state_dir)
    claimed = d / f".{day.isoformat()}.claimed"
    if not claimed.exists():
        return
    if done:
        claimed.unlink()
    else:
        os.replace(claimed, d / day.isoformat())


def run_records(state_dir: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Run records, newest first."""
    runs = state_dir / "runs"
    if not runs.is_dir():
        return []
    paths = sorted(runs.glob("*.json"), reverse=True)
    out: list[dict[str, Any]] = []
    for p in paths[:limit]:
        rec = read_json(p)
        if isinstance(rec, dict):
            out.append(rec)
    return out


def new_run_id(now: datetime) -> str:
    """Sortable run id: UTC start time and process id."""
    return f"{now.strftime('%Y%m%dT%H%M%S')}Z-{os.getpid()}"


#: Test hook: ``FLEETBMS_TEST_PAUSE_AT=<point>`` makes a run stop at that point (writing
#: the point's name to ``FLEETBMS_TEST_PAUSE_FILE``) and wait to be killed, so tests can
#: ``kill -9`` it at a known place. Points: ``before:<stage>``, ``after:<stage>`` and the
#: ``<stage>:<step>`` names passed to ``pause_point`` inside stages.
PAUSE_ENV = "FLEETBMS_TEST_PAUSE_AT"
PAUSE_FILE_ENV = "FLEETBMS_TEST_PAUSE_FILE"


def pause_point(name: str) -> None:
    """Wait here forever if the test hook ``FLEETBMS_TEST_PAUSE_AT`` names this point."""
    if os.environ.get(PAUSE_ENV) != name:
        return
    flag = os.environ.get(PAUSE_FILE_ENV)
    if flag:
        atomic_write_bytes(name.encode(), Path(flag))
    while True:
        time.sleep(3600)
