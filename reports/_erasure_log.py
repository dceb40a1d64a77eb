"""The erasure log ``state/erasure/log.jsonl`` as a hash chain.

``fleetbms erase`` appends one JSON object per line (what was erased, when, the keyed
hash of the VIN, never the VIN). Every line written since the log became a chain holds
``prev``, the SHA-256 (hex) of the exact bytes of the previous line (without its
newline). Those lines are canonical JSON (``reports._bundle.canonical_json``, RFC 8785),
so the bytes hashed are the previous entry's canonical bytes. The first line of a log
links to ``GENESIS`` (64 zeros).

A log begun before the chain holds entries without ``prev``. They stay as they were
written (an erasure record is evidence: it is never rewritten) and are the chain's
start: the first chained entry links to the SHA-256 of all of them, i.e. of the bytes
of the file before it, newlines included, so removing or editing any of them breaks
that link. An entry without ``prev`` after a chained one is a break.

Folding the lines gives the head: GENESIS for an empty log, the SHA-256 of the old
entries for a log of old entries only, else the SHA-256 of the last line. The chain
shows a line removed, edited or inserted before the last one; the last lines removed
(a truncated log) or the last one edited show only against a head recorded earlier.
That is what audit bundles carry: the log itself and, in the signed ``manifest.json``,
its entry count and head, so a verifier holding an earlier bundle can check that the
log of the later one starts with the same entries (``verify_audit_bundle(earlier=)``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bms import atomic_write_bytes
from reports._bundle import GENESIS, canonical_json
from reports._errors import ReportError

#: Where the log lives, relative to the state folder (``data/state``).
ERASURE_LOG_PATH = Path("erasure") / "log.jsonl"


@dataclass(frozen=True, slots=True)
class ErasureChain:
    """The erasure log, folded.

    Attributes
    ----------
    entries : int
        Lines of the log (erasures recorded).
    legacy_entries : int
        Lines written before the chain (without ``prev``), at the start of the log.
    heads : tuple of str
        ``heads[k]`` is the head after the first ``k`` lines (``heads[0]`` = GENESIS),
        up to the last line that could be read; ``heads[-1]`` is the head of the log.
    broken : str
        Empty when the chain is intact, else ``line N: what is wrong`` (1-based).
    """

    entries: int
    legacy_entries: int
    heads: tuple[str, ...]
    broken: str = ""

    @property
    def head(self) -> str:
        """SHA-256 (hex) the next entry links to."""
        return self.heads[-1]


def fold_erasure_log(data: bytes) -> ErasureChain:
    """Check the chain of a log's bytes and compute its head (see the module docstring)."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
        cut_short = False
    else:
        cut_short = True  # also a non-empty log without a final newline
    heads = [GENESIS]
    legacy = hashlib.sha256()
    n_legacy = 0

    def broken(n: int, why: str) -> ErasureChain:
        return ErasureChain(len(lines), n_legacy, tuple(heads), f"line {n}: {why}")

    for n, line in enumerate(lines, start=1):
        if n == len(lines) and cut_short:
            return broken(n, "cut short (no end of line): a write did not finish, or it was cut")
        try:
            entry = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            entry = None
        if not isinstance(entry, dict):
            return broken(n, "not a JSON object")
        if "prev" not in entry:
            if n_legacy < n - 1:
                why = "an entry without a 'prev' link after linked entries (inserted or edited)"
                return broken(n, why)
            legacy.update(line + b"\n")
            n_legacy += 1
            heads.append(legacy.hexdigest())
            continue
        if line != canonical_json(entry):
            return broken(n, "not in canonical JSON form (edited)")
        if entry["prev"] != heads[-1]:
            if n == 1:
                of = "the genesis value"
            elif n_legacy == n - 1:
                of = f"the {n_legacy} entries before it, written before the chain"
            else:
                of = f"line {n - 1}"
            return broken(
                n,
                f"prev {str(entry['prev'])[:16]}... is not the SHA-256 {heads[-1][:16]}... of "
                f"{of}: an entry before it was removed, edited or inserted, or this one was "
                "edited",
            )
        heads.append(hashlib.sha256(line).hexdigest())
    return ErasureChain(len(lines), n_legacy, tuple(heads))


def read_erasure_chain(state_dir: Path) -> tuple[bytes, ErasureChain]:
    """The bytes of ``state_dir/erasure/log.jsonl`` (empty if there is none), folded."""
    path = state_dir / ERASURE_LOG_PATH
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    except OSError as exc:
        raise ReportError(f"cannot read erasure log {path}: {exc.strerror}") from None
    return data, fold_erasure_log(data)


def append_erasure_entry(state_dir: Path, entry: Mapping[str, Any]) -> ErasureChain:
    """Link ``entry`` to the head of the log and append it (the whole log replaced
    atomically: a reader or a crash sees the old or the new log, never half a line).

    The caller holds the lock that serialises erasures (the nightly lock).

    Raises
    ------
    ReportError
        The chain is broken: nothing is appended.
    ValueError
        ``entry`` already holds ``prev``.
    """
    if "prev" in entry:
        raise ValueError("an erasure log entry gets its 'prev' link here, not from the caller")
    path = state_dir / ERASURE_LOG_PATH
    data, chain = read_erasure_chain(state_dir)
    if chain.broken:
        raise ReportError(f"erasure log {path} is broken at {chain.broken}; nothing appended")
    line = canonical_json({**entry, "prev": chain.head})
    new = data + line + b"\n"
    atomic_write_bytes(new, path)
    return fold_erasure_log(new)
