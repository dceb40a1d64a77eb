"""Per-VIN sequence bookkeeping: dedup of ``(vin, seq)``, the ack watermark, durable state.

Each VIN keeps a short sorted list of disjoint, inclusive ``[lo, hi]`` ranges of the
``seq`` values that are durably stored (in the lake or in quarantine), plus the set of
seqs buffered but not yet written. A reading is a duplicate when its seq is in either.
Memory is bounded by ``max_ranges`` per VIN: a vehicle that sends seqs one by one in
order needs one range however long it runs. When a VIN has more ranges than that, the
oldest ranges below the watermark are forgotten first, then the highest ones; forgetting
only weakens dedup (a later copy is written again and removed by the nightly compaction),
it never drops a reading.

The ack watermark (``durable_seq`` of the retained ack) is the top of the range that
starts at the lowest seq ever stored for the VIN, or continues the last published
watermark; it never moves back. A reading below it that arrives later is stored but does
not move it.

Workers of one shared-subscription group each see only part of a vehicle's seqs, so a
worker alone would never see a contiguous run. Each worker therefore merges the durable
ranges its peers of the same group last saved (their state files beside its own, written
only after their Parquet files are durable) before computing the watermark.

State file (``data/state/ingest/<worker>.json``, written atomically after every flush)::

    {"v": 1, "worker": "fleetbms-ingest", "updated_at_ms": 1764000000000,
     "vins": {"MAT612345NEX00001": {"fleet": "demo", "ranges": [[0, 184467]],
              "acked": 184467, "n_cells": 96}},
     "alerts_active": [["MAT612345NEX00001", "over_temperature"]]}
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

from bms import atomic_write_bytes
from ingest._errors import IngestError

STATE_VERSION = 1


class _VinFile(msgspec.Struct):
    fleet: str
    ranges: list[tuple[int, int]]
    acked: int | None = None
    n_cells: int | None = None


class _StateFile(msgspec.Struct):
    v: int
    worker: str
    updated_at_ms: int
    vins: dict[str, _VinFile]
    alerts_active: list[tuple[str, str]] = []
    group: str = ""


@dataclass
class VinSeqs:
    """Seq bookkeeping of one VIN (see the module docstring)."""

    fleet: str
    lo: list[int] = field(default_factory=list)  # sorted starts of durable ranges
    hi: list[int] = field(default_factory=list)  # matching inclusive ends
    pending: set[int] = field(default_factory=set)  # buffered, not yet durable
    acked: int | None = None  # last published watermark
    n_cells: int | None = None  # cell count of the last reading (CELL_COUNT_CHANGED)

    def seen(self, seq: int) -> bool:
        """True when ``seq`` is durable or buffered (a duplicate)."""
        if seq in self.pending:
            return True
        i = bisect_right(self.lo, seq) - 1
        return i >= 0 and seq <= self.hi[i]

    def add_durable(self, seqs: npt.NDArray[np.int64], max_ranges: int) -> None:
        """Merge durably written seqs into the ranges and drop them from ``pending``."""
        if len(seqs) == 0:
            return
        u = np.unique(seqs)
        breaks = np.nonzero(np.diff(u) != 1)[0]
        starts = np.concatenate([[0], breaks + 1])
        ends = np.concatenate([breaks, [len(u) - 1]])
        runs = list(zip(u[starts].tolist(), u[ends].tolist(), strict=True))
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*zip(self.lo, self.hi, strict=True), *runs]):
            if merged and a <= merged[-1][1] + 1:
                if b > merged[-1][1]:
                    merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        if len(merged) > max_ranges:
            merged = self._bounded(merged, max_ranges)
        self.lo = [a for a, _ in merged]
        self.hi = [b for _, b in merged]
        if self.pending:
            self.pending.difference_update(u.tolist())

    def _bounded(self, ranges: list[tuple[int, int]], max_ranges: int) -> list[tuple[int, int]]:
        acked = self.acked if self.acked is not None else ranges[0][1]
        below = [r for r in ranges if r[1] < acked]
        rest = [r for r in ranges if r[1] >= acked]
        keep_below = max(0, max_ranges - len(rest))
        kept = below[len(below) - keep_below :] if keep_below else []
        return (kept + rest)[:max_ranges]

    def watermark(self, peer_ranges: list[tuple[int, int]] | None = None) -> int | None:
        """Highest seq such that every seq from the start up to it is durable.

        ``peer_ranges`` are durable ranges of the same VIN stored by other workers of the
        same shared-subscription group; they are merged in first.
        """
        lo, hi = self.lo, self.hi
        if peer_ranges:
            merged: list[tuple[int, int]] = []
            for a, b in sorted([*zip(lo, hi, strict=True), *peer_ranges]):
                if merged and a <= merged[-1][1] + 1:
                    merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
                else:
                    merged.append((a, b))
            lo, hi = [a for a, _ in merged], [b for _, b in merged]
        if not lo:
            return self.acked
        if self.acked is None:
            return hi[0]
        i = bisect_right(lo, self.acked + 1) - 1
        if i >= 0 and hi[i] > self.acked:
            return hi[i]
        return self.acked


class SeqState:
    """Seq bookkeeping of all VINs plus the live-alert state, loaded from and saved to disk."""

    def __init__(self, path: Path, worker: str, *, max_ranges: int = 256, group: str = "") -> None:
        if max_ranges < 1:
            raise ValueError(f"max_ranges must be >= 1, got {max_ranges}")
        self.path = path
        self.worker = worker
        self.group = group
        self.max_ranges = max_ranges
        self.vins: dict[str, VinSeqs] = {}
        self.alerts_active: set[tuple[str, str]] = set()
        self._peers: dict[Path, tuple[int, dict[str, list[tuple[int, int]]]]] = {}

    @classmethod
    def load(cls, path: Path, worker: str, *, max_ranges: int = 256, group: str = "") -> SeqState:
        """Read the state file if it exists (a fresh state otherwise).

        Raises
        ------
        IngestError
            The file exists but is not a readable state file.
        """
        state = cls(path, worker, max_ranges=max_ranges, group=group)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return state
        except OSError as exc:
            raise IngestError(f"cannot read ingest state {path}: {exc.strerror}") from None
        try:
            doc = msgspec.json.decode(raw, type=_StateFile)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise IngestError(f"ingest state {path} is corrupt: {exc}") from None
        if doc.v != STATE_VERSION:
            raise IngestError(f"ingest state {path} has version {doc.v}, expected 1")
        for vin, v in doc.vins.items():
            state.vins[vin] = VinSeqs(
                fleet=v.fleet,
                lo=[a for a, _ in v.ranges],
                hi=[b for _, b in v.ranges],
                acked=v.acked,
                n_cells=v.n_cells,
            )
        state.alerts_active = {(a, b) for a, b in doc.alerts_active}
        return state

    def get(self, vin: str, fleet: str) -> VinSeqs:
        """The bookkeeping of ``vin`` (created on first sight)."""
        s = self.vins.get(vin)
        if s is None:
            s = self.vins[vin] = VinSeqs(fleet)
        return s

    def to_bytes(self) -> bytes:
        """JSON of the durable part (ranges, acked watermark, cell count, active alerts)."""
        doc = _StateFile(
            v=STATE_VERSION,
            worker=self.worker,
            updated_at_ms=int(time.time() * 1000),
            vins={
                vin: _VinFile(s.fleet, list(zip(s.lo, s.hi, strict=True)), s.acked, s.n_cells)
                for vin, s in self.vins.items()
            },
            alerts_active=sorted(self.alerts_active),
            group=self.group,
        )
        return msgspec.json.encode(doc)

    def peer_ranges(self) -> dict[str, list[tuple[int, int]]]:
        """Durable ranges per VIN saved by the other workers of this worker's group.

        Empty without a group. Peer files are re-read only when their mtime changes; an
        unreadable or half-replaced peer file is skipped (its ranges only help).
        """
        if not self.group:
            return {}
        out: dict[str, list[tuple[int, int]]] = {}
        for peer in sorted(self.path.parent.glob("*.json")):
            if peer == self.path:
                continue
            try:
                mtime = peer.stat().st_mtime_ns
                cached = self._peers.get(peer)
                if cached is None or cached[0] != mtime:
                    doc = msgspec.json.decode(peer.read_bytes(), type=_StateFile)
                    ranges = (
                        {}
                        if doc.group != self.group
                        else {vin: list(v.ranges) for vin, v in doc.vins.items()}
                    )
                    cached = self._peers[peer] = (mtime, ranges)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                continue
            for vin, rs in cached[1].items():
                out.setdefault(vin, []).extend(rs)
        return out

    def save(self) -> None:
        """Write the state file atomically (temp file, fsync, rename, fsync dir)."""
        atomic_write_bytes(self.to_bytes(), self.path)


class WorkerLock:
    """Exclusive lock of one worker id on a data directory (``state/ingest/<worker>.lock``).

    Two workers with the same id share a state file and an MQTT session: each overwrote
    the other's dedup ranges, the broker handed the session back and forth (every
    takeover leaves a flush unacknowledged, so readings were written twice and acks
    stalled). The second one now stops at once. ``flock`` is released by the kernel when
    the process dies, so a ``kill -9`` leaves no stale lock.

    Raises
    ------
    IngestError
        Another process holds the lock, or the lock file cannot be created.
    """

    def __init__(self, state_dir: Path, worker: str) -> None:
        self.path = state_dir / "ingest" / f"{worker}.lock"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise IngestError(
                f"cannot create the worker lock {self.path}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise IngestError(
                f"another ingest or import with worker id {worker!r} is running on this data "
                f"directory (pid {holder}); give each worker its own --client-id"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        """Empty the file (``status``: not running) and unlock by closing it."""
        if self._fd is not None:
            # may fail on a read-only disk: status then checks the pid for life
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
