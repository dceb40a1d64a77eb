"""Audit bundle format, version 1: names, canonical JSON and the hash-chain rule.

The format is described for outside verifiers in ``docs/audit-bundle.md``; this module
is the single place that fixes it in code (the exporter and the verifier both use it).

Layout::

    manifest.json                 signed; canonical JSON (see ``canonical_json``)
    manifest.sig                  64-byte Ed25519 signature of manifest.json's bytes
    README.txt                    how to verify, in plain words
    dictionary.json               tables, columns, types, units, meaning
    methodology.json              versions, SQL job hashes, model metadata, parameters
    days/YYYY-MM-DD/manifest.json day manifest: the day's files and the chain link
    days/YYYY-MM-DD/metrics/<table>/fleet=<id>.parquet|.csv
    days/YYYY-MM-DD/anomalies/fleet=<id>.parquet|.csv
    erasure/log.jsonl             the fleet's erasure log as it was (``reports._erasure_log``)

Chain rule: the day manifests of every calendar day of the period, in date order, form a
chain; each holds ``prev``, the SHA-256 (hex) of the previous day's manifest file, the
first holds ``GENESIS``; ``manifest.json`` holds the head (SHA-256 of the last day's
manifest) and is signed, so the signature covers every day and its order.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, timedelta
from typing import Any

FORMAT = "fleetbms-audit-bundle"
DAY_FORMAT = "fleetbms-audit-day"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
README_NAME = "README.txt"
DICTIONARY_NAME = "dictionary.json"
METHODOLOGY_NAME = "methodology.json"
DAYS_DIR = "days"
#: Copy of ``state/erasure/log.jsonl`` (a hash chain of its own; head in the manifest).
ERASURE_LOG_NAME = "erasure/log.jsonl"
#: ``prev`` of the first day of a bundle.
GENESIS = "0" * 64
#: Longest period one bundle may cover [days] (guards against a mistyped year).
MAX_PERIOD_DAYS = 3660


def canonical_json(value: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, ASCII only, no NaN.

    For values made of strings, integers, lists and objects (all manifests are) this is
    the JSON Canonicalization Scheme of RFC 8785, so any JCS library reproduces it.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def pretty_json(value: Any) -> bytes:
    """Readable, deterministic JSON (sorted keys, 2-space indent, final newline)."""
    text = json.dumps(value, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False)
    return (text + "\n").encode("ascii")


def sha256_hex(data: bytes | memoryview) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def day_dir(day: date) -> str:
    """Bundle-relative folder of one day: ``days/YYYY-MM-DD``."""
    return f"{DAYS_DIR}/{day.isoformat()}"


def day_manifest_path(day: date) -> str:
    """Bundle-relative path of a day manifest."""
    return f"{day_dir(day)}/{MANIFEST_NAME}"


def period_days(date_from: date, date_to: date) -> list[date]:
    """Every calendar day from ``date_from`` to ``date_to``, both included."""
    return [date_from + timedelta(days=i) for i in range((date_to - date_from).days + 1)]


def generated_at(date_to: date) -> str:
    """The bundle's ``generated_at``: the end of the period (never the wall clock)."""
    return f"{date_to.isoformat()}T23:59:59Z"


README_TEXT = """\
fleetbms insurer audit bundle (format {format} version {version})

This folder holds battery-health metrics and verdicts of a vehicle fleet for one period,
one Parquet and one CSV file per table, fleet and day, under days/YYYY-MM-DD/.
Vehicle identification numbers are replaced by pseudonyms (psn_ + 24 hex digits,
HMAC-SHA256 with a key that stays with the fleet).

dictionary.json   every table and column: type, unit, meaning
methodology.json  software and library versions, SQL job hashes, model metadata
manifest.json     SHA-256 of every file, the period and the head of the day chain
manifest.sig      Ed25519 signature of the exact bytes of manifest.json
erasure/log.jsonl the fleet's erasure log at export (vehicle data erased on request:
                  when, how much, a keyed hash of the VIN); manifest.json holds its
                  entry count and head, so later bundles show it was not cut back

To verify with fleetbms:   fleetbms audit verify BUNDLE --public-key signing.pub
To verify with other tools (OpenSSL 3, jq, sha256sum):
  openssl pkeyutl -verify -pubin -inkey signing.pub -rawin \\
      -in manifest.json -sigfile manifest.sig
  jq -r '.files | to_entries[] | "\\(.value.sha256)  \\(.key)"' manifest.json | sha256sum -c
then walk days/*/manifest.json in date order: each "prev" is the SHA-256 of the previous
day's manifest.json (the first is 64 zeros) and manifest.json's chain.head is the
SHA-256 of the last one. The full rules are in docs/audit-bundle.md of fleetbms.
"""


def readme_bytes() -> bytes:
    """Content of ``README.txt``."""
    return README_TEXT.format(format=FORMAT, version=FORMAT_VERSION).encode("ascii")
