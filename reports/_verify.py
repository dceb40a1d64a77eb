"""Offline verification of audit bundles: files, day chain and Ed25519 signature.

Needs only the bundle (directory or ``.tar``) and the fleet's public key. Every problem
found is reported, not only the first, each naming the file or day concerned.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature

from reports import _bundle as fmt
from reports._erasure_log import ErasureChain, fold_erasure_log
from reports._errors import ReportError
from reports._keys import load_public_key, public_key_fingerprint

#: Files read into memory while hashing (manifests, the signature, the erasure log).
_KEEP_SUFFIXES = (fmt.MANIFEST_NAME, fmt.SIGNATURE_NAME, fmt.ERASURE_LOG_NAME)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a bundle.

    Attributes
    ----------
    kind : str
        ``changed``, ``added``, ``removed`` (files), ``chain`` (day chain),
        ``erasure`` (erasure log), ``signature`` or ``manifest`` (unreadable manifest).
    path : str
        Bundle-relative file or day folder concerned.
    detail : str
        What is wrong, in words.
    """

    kind: str
    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Verification:
    """Result of ``verify_audit_bundle``; ``ok`` when ``problems`` is empty."""

    bundle: Path
    problems: tuple[Problem, ...]
    date_from: str
    date_to: str
    fleets: tuple[str, ...]
    days: int
    files: int
    signer: str  # fingerprint of the given key when the signature is valid, else ""
    chain_head: str
    #: Entries and head of the erasure log, as the manifest records them; ``None`` and
    #: "" for a bundle exported before bundles carried the log.
    erasures: int | None = None
    erasure_head: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line describing the bundle (and the verdict)."""
        n = len(self.problems)
        verdict = "OK" if self.ok else f"FAILED ({n} problem{'s' if n > 1 else ''})"
        return (
            f"{verdict}: {self.bundle}: fleets {', '.join(self.fleets) or '-'}, "
            f"{self.date_from}..{self.date_to}, {self.days} day{'' if self.days == 1 else 's'}, "
            f"{self.files} file{'' if self.files == 1 else 's'}, "
            + (f"signed by {self.signer}" if self.signer else "signature NOT valid")
            + f", chain head {self.chain_head[:16]}"
            + (
                ""
                if self.erasures is None
                else f", erasure log {self.erasures} entr{'y' if self.erasures == 1 else 'ies'}"
            )
        )


@dataclass(frozen=True, slots=True)
class _Entry:
    sha256: str
    size: int
    content: bytes | None  # kept for manifests and the signature
    regular: bool = True
    note: str = ""  # why a non-regular entry is refused


def _unsafe(rel: str) -> bool:
    """Is ``rel`` not a plain bundle-relative path (absolute, ``..``, ``.`` or empty part)?

    Such a name can make an extractor write outside the bundle folder, or name the same
    file as another entry; the exporter never writes one.
    """
    return rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in rel.split("/"))


def _short(h: str) -> str:
    return h[:16] + "..."


def _hash_file(path: Path, keep: bool) -> _Entry:
    with open(path, "rb") as fh:
        if keep:
            data = fh.read()
            return _Entry(hashlib.sha256(data).hexdigest(), len(data), data)
        digest = hashlib.file_digest(fh, "sha256")
        return _Entry(digest.hexdigest(), fh.tell(), None)


def _keep(rel: str) -> bool:
    return rel.endswith(_KEEP_SUFFIXES)


def _walk(root: Path) -> Iterator[tuple[str, Path, bool]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames) + [d for d in dirnames if (base / d).is_symlink()]:
            path = base / name
            rel = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            yield rel, path, stat.S_ISREG(mode)


def _read_dir(root: Path) -> dict[str, _Entry]:
    items = list(_walk(root))
    regular = [(rel, p) for rel, p, reg in items if reg]
    with ThreadPoolExecutor(max_workers=2) as pool:
        hashed = pool.map(lambda rp: _hash_file(rp[1], _keep(rp[0])), regular)
        entries = dict(zip([rel for rel, _ in regular], hashed, strict=True))
    for rel, _p, reg in items:
        if not reg:
            entries[rel] = _Entry("", 0, None, regular=False)
    return entries


def _read_tar(path: Path) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
            safe = [m for m in members if not _unsafe(m.name.rstrip("/") if m.isdir() else m.name)]
            tops = {m.name.split("/", 1)[0] for m in safe}
            strip = len(tops) == 1 and all("/" in m.name or m.isdir() for m in safe)
            counts: dict[str, int] = {}
            for m in members:
                if m.isdir() and not _unsafe(m.name.rstrip("/")):
                    continue
                counts[m.name] = counts.get(m.name, 0) + 1
            for m in members:
                if m.isdir() and not _unsafe(m.name.rstrip("/")):
                    continue
                if _unsafe(m.name):
                    entries[m.name] = _Entry(
                        "", 0, None, False, "unsafe name in the tar (absolute, '..' or '.')"
                    )
                    continue
                rel = m.name.split("/", 1)[1] if strip and "/" in m.name else m.name
                if strip and "/" not in m.name:
                    continue
                if counts[m.name] > 1:
                    # Readers disagree on which copy counts (the first, the last, both).
                    entries[rel] = _Entry(
                        "", 0, None, False, f"the tar holds {counts[m.name]} members of this name"
                    )
                    continue
                if not m.isfile():
                    entries[rel] = _Entry("", 0, None, regular=False)
                    continue
                fh = tar.extractfile(m)
                if fh is None:  # pragma: no cover - isfile() members always have data
                    continue
                if _keep(rel):
                    data = fh.read()
                    entries[rel] = _Entry(hashlib.sha256(data).hexdigest(), len(data), data)
                else:
                    digest = hashlib.file_digest(fh, "sha256")  # type: ignore[arg-type]
                    entries[rel] = _Entry(digest.hexdigest(), m.size, None)
    except (tarfile.TarError, EOFError):
        raise ReportError(
            f"bundle {path} is neither a bundle folder nor a readable tar file"
        ) from None
    return entries


def _read_bundle(bundle: Path) -> dict[str, _Entry]:
    if bundle.is_dir():
        return _read_dir(bundle)
    if bundle.is_file():
        return _read_tar(bundle)
    if not bundle.exists():
        raise ReportError(f"bundle {bundle} does not exist")
    raise ReportError(f"bundle {bundle} is neither a directory nor a file")


def _obj(doc: Any, key: str) -> dict[str, Any]:
    """``doc[key]`` when both are JSON objects, else an empty object."""
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, dict) else {}


def _parse_json(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _check_signature(
    manifest_bytes: bytes, entries: dict[str, _Entry], manifest: Any, key_path: Path
) -> tuple[list[Problem], str]:
    public_key = load_public_key(key_path)
    given = public_key_fingerprint(public_key)
    claimed = given
    if isinstance(manifest, dict) and isinstance(manifest.get("signature"), dict):
        claimed = str(manifest["signature"].get("public_key", given))
    sig = entries.get(fmt.SIGNATURE_NAME)
    if sig is None or sig.content is None:
        return [Problem("signature", fmt.SIGNATURE_NAME, "missing: the bundle is not signed")], ""
    try:
        public_key.verify(sig.content, manifest_bytes)
    except InvalidSignature:
        if claimed != given:
            detail = (
                f"manifest.json is signed with another key ({claimed}), "
                f"not with the given public key ({given})"
            )
        else:
            detail = "does not match manifest.json: the manifest or the signature was changed"
        return [Problem("signature", fmt.SIGNATURE_NAME, detail)], ""
    return [], given


def _check_files(manifest_files: dict[str, Any], entries: dict[str, _Entry]) -> list[Problem]:
    problems = []
    for rel in sorted(set(manifest_files) | set(entries)):
        if rel in (fmt.MANIFEST_NAME, fmt.SIGNATURE_NAME):
            continue
        listed = manifest_files.get(rel)
        entry = entries.get(rel)
        if listed is not None and _unsafe(rel):
            detail = "listed with an unsafe path (absolute, '..', '.' or empty part)"
            problems.append(Problem("manifest", rel, detail))
        elif entry is None:
            problems.append(Problem("removed", rel, "listed in manifest.json, not in the bundle"))
        elif not entry.regular:
            detail = entry.note or "not a regular file (link or device)"
            problems.append(Problem("added", rel, detail))
        elif listed is None:
            problems.append(Problem("added", rel, "not listed in manifest.json"))
        elif not isinstance(listed, dict) or listed.get("sha256") != entry.sha256:
            want = listed.get("sha256", "?") if isinstance(listed, dict) else "?"
            problems.append(
                Problem(
                    "changed",
                    rel,
                    f"sha256 {_short(entry.sha256)} differs from the manifest's "
                    f"{_short(str(want))}",
                )
            )
    return problems


def _day_folders(entries: dict[str, _Entry]) -> set[str]:
    folders = set()
    for rel in entries:
        parts = rel.split("/")
        if len(parts) >= 3 and parts[0] == fmt.DAYS_DIR:
            folders.add(parts[1])
    return folders


def _check_chain(
    manifest: dict[str, Any],
    manifest_files: dict[str, Any],
    entries: dict[str, _Entry],
    days: list[date],
) -> list[Problem]:
    problems: list[Problem] = []
    period = {d.isoformat() for d in days}
    prev_hash: str | None = fmt.GENESIS
    prev_day = "(genesis)"
    for day in days:
        rel = fmt.day_manifest_path(day)
        folder = fmt.day_dir(day)
        entry = entries.get(rel)
        if entry is None or entry.content is None:
            problems.append(Problem("chain", folder, f"day {day} is missing (no {rel})"))
            prev_hash, prev_day = None, day.isoformat()
            continue
        doc = _parse_json(entry.content)
        if not isinstance(doc, dict) or doc.get("format") != fmt.DAY_FORMAT:
            problems.append(Problem("chain", rel, "not a readable day manifest"))
            prev_hash, prev_day = entry.sha256, day.isoformat()
            continue
        if doc.get("date") != day.isoformat():
            problems.append(
                Problem(
                    "chain",
                    rel,
                    f"dated {doc.get('date')} but stored as day {day} (back-dated or moved day)",
                )
            )
        if prev_hash is not None and doc.get("prev") != prev_hash:
            problems.append(
                Problem(
                    "chain",
                    rel,
                    f"does not link to day {prev_day}: prev {_short(str(doc.get('prev')))} != "
                    f"sha256 {_short(prev_hash)} of that day's manifest",
                )
            )
        day_files = _obj(doc, "files")
        listed_here = {p for p in manifest_files if p.startswith(folder + "/") and p != rel}
        for p in sorted(set(day_files) | listed_here):
            a, b = day_files.get(p), manifest_files.get(p)
            sha_a = a.get("sha256") if isinstance(a, dict) else None
            sha_b = b.get("sha256") if isinstance(b, dict) else None
            if sha_a != sha_b:
                problems.append(
                    Problem("chain", p, f"{rel} and manifest.json disagree about this file")
                )
        prev_hash, prev_day = entry.sha256, day.isoformat()
    head = _obj(manifest, "chain").get("head")
    if prev_hash is not None and head != prev_hash:
        problems.append(
            Problem(
                "chain",
                fmt.MANIFEST_NAME,
                f"chain head {_short(str(head))} != sha256 {_short(prev_hash)} "
                f"of the last day's manifest ({prev_day})",
            )
        )
    for folder_name in sorted(_day_folders(entries) - period):
        rel = f"{fmt.DAYS_DIR}/{folder_name}/{fmt.MANIFEST_NAME}"
        doc = _parse_json(entries[rel].content) if rel in entries else None
        dated = f", its manifest is dated {doc.get('date')}" if isinstance(doc, dict) else ""
        problems.append(
            Problem(
                "chain",
                f"{fmt.DAYS_DIR}/{folder_name}",
                f"day folder outside the period {min(period)}..{max(period)}{dated} "
                "(added or back-dated day)",
            )
        )
    return problems


def _check_erasure_log(
    manifest: dict[str, Any], entries: dict[str, _Entry]
) -> tuple[list[Problem], ErasureChain | None]:
    """The bundle's erasure log: an intact chain whose count and head the manifest holds."""
    recorded = _obj(manifest, "erasure_log")
    entry = entries.get(fmt.ERASURE_LOG_NAME)
    if entry is not None and entry.content is not None:
        data = entry.content
    elif entry is None and recorded.get("entries") == 0:
        data = b""  # an empty log is recorded, not carried
    else:
        if entry is None and fmt.ERASURE_LOG_NAME not in _obj(manifest, "files"):
            detail = (
                f"records {recorded.get('entries')} erasure log entries, but the bundle "
                f"has no {fmt.ERASURE_LOG_NAME}"
            )
            return [Problem("erasure", fmt.MANIFEST_NAME, detail)], None
        return [], None  # reported as a removed or added file
    chain = fold_erasure_log(data)
    if chain.broken:
        return [Problem("erasure", fmt.ERASURE_LOG_NAME, f"broken at {chain.broken}")], chain
    n, head = recorded.get("entries"), recorded.get("head")
    if n != chain.entries or head != chain.head:
        detail = (
            f"holds {chain.entries} entries with head {_short(chain.head)}, manifest.json "
            f"records {n} with head {_short(str(head))}"
        )
        return [Problem("erasure", fmt.ERASURE_LOG_NAME, detail)], chain
    return [], chain


def _check_against_earlier(
    earlier: Path, public_key: Path, chain: ErasureChain | None
) -> list[Problem]:
    """Does this bundle's erasure log start with the entries of an earlier bundle's?"""
    prior = verify_audit_bundle(earlier, public_key)
    if not prior.ok:
        n = len(prior.problems)
        raise ReportError(
            f"earlier bundle {earlier} does not verify ({n} problem{'s' if n > 1 else ''}): "
            "check it on its own first"
        )
    if prior.erasures is None:
        raise ReportError(
            f"earlier bundle {earlier} carries no erasure log (exported before bundles did): "
            "nothing to compare"
        )
    k = prior.erasures
    if chain is None:
        detail = f"carries no erasure log, the earlier bundle {earlier} does ({k} entries)"
        return [Problem("erasure", fmt.MANIFEST_NAME, detail)]
    if chain.broken:
        return []  # reported already; its entries cannot be compared
    if chain.entries < k:
        detail = (
            f"holds {chain.entries} entries, fewer than the {k} of the earlier bundle "
            f"{earlier}: the log was cut back"
        )
        return [Problem("erasure", fmt.ERASURE_LOG_NAME, detail)]
    if chain.heads[k] != prior.erasure_head:
        detail = (
            f"its first {k} entries hash to {_short(chain.heads[k])}, not to the head "
            f"{_short(prior.erasure_head)} of the earlier bundle {earlier}: entries were "
            "removed, edited or replaced since"
        )
        return [Problem("erasure", fmt.ERASURE_LOG_NAME, detail)]
    return []


def verify_audit_bundle(
    bundle: Path, public_key: Path, *, earlier: Path | None = None
) -> Verification:
    """Check an audit bundle offline against the fleet's public key.

    Checks, and reports every failure of: the Ed25519 signature of ``manifest.json``;
    the SHA-256 of every file against the manifest (changed, added, removed files); the
    chain of day manifests (missing, moved or back-dated days, broken links, the head);
    the chain of the erasure log and its count and head in the manifest; with
    ``earlier``, that the erasure log starts with every entry of the earlier bundle's.

    Parameters
    ----------
    bundle : Path
        Bundle directory or ``.tar`` file.
    public_key : Path
        Ed25519 public key, PEM or raw 32 bytes (``signing.pub``).
    earlier : Path, optional
        A bundle of the same fleet exported before this one (verified with the same
        key): its erasure log must be the start of this bundle's (none cut back).

    Returns
    -------
    Verification
        ``ok`` is true only when no problem was found.

    Raises
    ------
    ReportError
        The bundle or key path does not exist or cannot be read, the bundle has no
        ``manifest.json`` at all, or ``earlier`` does not verify or carries no erasure log.
    """
    load_public_key(public_key)  # a bad key path is a user error, before any hashing
    entries = _read_bundle(bundle)
    top = entries.get(fmt.MANIFEST_NAME)
    if top is None or top.content is None:
        raise ReportError(f"{bundle} is not an audit bundle: it has no {fmt.MANIFEST_NAME}")
    manifest = _parse_json(top.content)
    problems, signer = _check_signature(top.content, entries, manifest, public_key)
    if not isinstance(manifest, dict) or manifest.get("format") != fmt.FORMAT:
        problems.append(Problem("manifest", fmt.MANIFEST_NAME, "not a fleetbms audit manifest"))
        return Verification(bundle, tuple(problems), "?", "?", (), 0, len(entries), signer, "")
    files = _obj(manifest, "files")
    problems += _check_files(files, entries)
    period = _obj(manifest, "period")
    days: list[date] = []
    try:
        days = fmt.period_days(
            date.fromisoformat(str(period.get("from"))), date.fromisoformat(str(period.get("to")))
        )
    except ValueError:
        problems.append(Problem("manifest", fmt.MANIFEST_NAME, "period is not two ISO dates"))
    if len(days) > fmt.MAX_PERIOD_DAYS:
        problems.append(Problem("manifest", fmt.MANIFEST_NAME, "period is implausibly long"))
        days = []
    if days:
        problems += _check_chain(manifest, files, entries, days)
    erasures: ErasureChain | None = None
    recorded = _obj(manifest, "erasure_log") if "erasure_log" in manifest else None
    if recorded is not None:
        found, erasures = _check_erasure_log(manifest, entries)
        problems += found
    if earlier is not None:
        problems += _check_against_earlier(earlier, public_key, erasures)
    n_erasures = recorded.get("entries") if recorded is not None else None
    chain = _obj(manifest, "chain")
    fleets = manifest.get("fleets")
    if not isinstance(fleets, list):
        fleets = []
    return Verification(
        bundle=bundle,
        problems=tuple(problems),
        date_from=str(period.get("from")),
        date_to=str(period.get("to")),
        fleets=tuple(str(f) for f in fleets),
        days=len(days),
        files=len(entries),
        signer=signer,
        chain_head=str(chain.get("head", "")),
        erasures=n_erasures if isinstance(n_erasures, int) else None,
        erasure_head=str(recorded.get("head", "")) if recorded is not None else "",
    )
