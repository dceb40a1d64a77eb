"""The data dictionary and methodology record of an audit bundle.

The dictionary is built from the tables actually exported, so it follows the analytics
jobs as they change. For each column it takes, in order of preference:

1. Parquet field metadata written by the producing job: ``unit`` and ``description``
   (the way for a job to document its columns exactly);
2. this module's catalogue of the project's common column names (``COLUMN_MEANINGS``);
3. the unit suffix of the name (``soh_pct`` -> %, ``temp_c_max`` -> degC,
   ``drift_mv_per_day`` -> mV/d), the project's naming rule.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import json
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from reports._pseudonym import PSEUDONYM_HEX_DIGITS, PSEUDONYM_PREFIX, Pseudonymizer

#: Unit of a trailing name token (project convention: units in names).
UNIT_TOKENS: dict[str, str] = {
    "pct": "%",
    "mv": "mV",
    "v": "V",
    "a": "A",
    "ah": "Ah",
    "kwh": "kWh",
    "wh": "Wh",
    "kw": "kW",
    "w": "W",
    "mohm": "mOhm",
    "ohm": "Ohm",
    "c": "degC",
    "dc": "0.1 degC",
    "k": "K",
    "km": "km",
    "s": "s",
    "ms": "ms",
    "h": "h",
    "min": "min",
    "hours": "h",
    "minutes": "min",
    "seconds": "s",
    "day": "d",
    "days": "d",
    "yr": "a",
    "years": "a",
}
#: Statistic suffixes that keep the unit of what precedes them (``temp_c_max``).
_STAT_TOKENS = frozenset(
    {"min", "max", "mean", "median", "std", "sigma", "sd", "p05", "p50", "p95", "avg", "lo", "hi"}
)

_REF_TEMP = re.compile(r"\d+c")  # "_25c": value referred to 25 degC

#: What the pipeline's tables hold (tables not listed are described by their metadata).
TABLE_DESCRIPTIONS: dict[str, str] = {
    "metrics/vehicle_day": "One row per vehicle and day: usage, charging and thermal exposure.",
    "metrics/capacity": "Capacity estimates from charge counted between two rested OCV points.",
    "metrics/resistance": "Internal resistance estimates from voltage steps over current steps.",
    "metrics/cell_day": "One row per cell, vehicle and day: rest voltage and its drift.",
    "metrics/vehicle_soh": "State of health per vehicle from a robust fit, with uncertainty.",
    "metrics/warranty": "Warranty verdict per vehicle with policy, thresholds and projection.",
    "metrics/reconciliation": "Readings received, quarantined, deduplicated and stored.",
    "anomalies": "Anomaly flags with their evidence, score, threshold and model version.",
}

#: Meaning of column names the project uses across tables.
COLUMN_MEANINGS: dict[str, str] = {
    "vin": "vehicle pseudonym: psn_ + 24 hex digits of HMAC-SHA256(fleet key, VIN)",
    "date": "UTC event date the row describes",
    "fleet": "fleet id",
    "cell": "cell position in the pack, 0-based",
    "sensor": "temperature sensor position in the pack, 0-based",
    "soh_pct": "state of health: usable capacity as a share of rated capacity",
    "soh_pct_sigma": "one-sigma uncertainty of soh_pct",
    "bms_soh_pct": "the BMS's own state-of-health figure, recorded for comparison",
    "capacity_ah": "usable capacity",
    "rated_capacity_ah": "rated (nameplate) capacity from the registry",
    "resistance_mohm": "internal DC resistance",
    "soh_low_pct": "lower bound of the 90 % interval of soh_pct (the fit's, not clipped)",
    "soh_high_pct": (
        "upper bound of the 90 % interval of soh_pct (the fit's, not clipped: it can exceed "
        "100 % when few estimates are known)"
    ),
    "resistance_growth_pct": "growth of the pack's internal resistance since in service",
    "resistance_growth_low_pct": "lower bound of the 90 % interval of resistance_growth_pct",
    "resistance_growth_high_pct": "upper bound of the 90 % interval of resistance_growth_pct",
    "odometer_km": "vehicle odometer",
    "cycle_count": "BMS full-cycle counter",
    "verdict": "outcome of the check this row records",
    "status": "state of the item this row records",
    "reason": "why the verdict or status was given",
    "evidence": "readings, metrics and thresholds behind the verdict (JSON)",
    "policy": "warranty policy id",
    "score": "anomaly score (higher is more unusual)",
    "threshold": "threshold the score or value was compared with",
    "model_version": "version of the model that produced the row",
    "rule": "rule that fired",
    "ts": "UTC time of measurement",
    "seq": "the vehicle's reading sequence number",
    "chemistry": "cell chemistry (nmc, lfp)",
}


#: Meanings that differ by table (``(table key, column)``), looked up before
#: ``COLUMN_MEANINGS``: an anomaly's ``evidence`` is text, a warranty verdict's JSON.
TABLE_COLUMN_MEANINGS: dict[tuple[str, str], str] = {
    ("anomalies", "evidence"): (
        "readings, rules, model score and features behind the flag, as text: clauses "
        "joined by '; ' (not JSON)"
    ),
}


def unit_of(name: str) -> str | None:
    """Unit of a column from its name, or None when the name carries none.

    ``soh_pct`` -> ``%``; ``temp_c_max`` -> ``degC``; ``drift_mv_per_day`` -> ``mV/d``;
    ``resistance_mohm_25c`` -> ``mOhm`` (a reference-temperature qualifier is skipped);
    ``ah_charged`` -> ``Ah`` (a leading unit of two letters or more).
    """
    tokens = [t for t in name.lower().split("_") if t]
    if "per" in tokens[1:-1]:
        i = tokens.index("per", 1)
        left = unit_of("_".join(tokens[:i]))
        right = UNIT_TOKENS.get("_".join(tokens[i + 1 :]))
        if left and right:
            return f"{left}/{right}"
        if right and tokens[0] in ("n", "count"):
            return f"1/{right}"
        return None
    while len(tokens) > 1 and _REF_TEMP.fullmatch(tokens[-1]):
        tokens.pop()
    if "temp" not in tokens:
        # "dc" is 0.1 degC only in a temperature (``temp_dc``); elsewhere it is direct
        # current: ``ah_charged_dc`` is Ah, ``dc_fast_share`` a share without unit.
        if len(tokens) > 1 and tokens[-1] == "dc":
            tokens.pop()
        if tokens and tokens[0] == "dc":
            tokens = tokens[1:]
    while len(tokens) > 1 and tokens[-1] in _STAT_TOKENS and tokens[-2] in UNIT_TOKENS:
        tokens.pop()
    if tokens and tokens[-1] in UNIT_TOKENS and (len(tokens) > 1 or len(tokens[-1]) > 1):
        return UNIT_TOKENS[tokens[-1]]
    first = tokens[0] if tokens else ""
    if len(first) > 1 and first in UNIT_TOKENS and first not in _STAT_TOKENS:
        return UNIT_TOKENS[first]
    return None


def _meta(field_: pa.Field, key: str) -> str | None:
    meta = field_.metadata or {}
    raw = meta.get(key.encode()) or meta.get(f"fleetbms.{key}".encode())
    return raw.decode("utf-8", "replace") if raw else None


@dataclass
class TableInfo:
    """What the exporter learnt about one exported table."""

    key: str  # "metrics/<table>" or "anomalies"
    fields: dict[str, pa.Field] = field(default_factory=dict)
    description: str | None = None
    rows: int = 0
    days: set[str] = field(default_factory=set)
    fleets: set[str] = field(default_factory=set)
    csv: bool = True  # every file of the table has a CSV twin

    def add(self, schema: pa.Schema, rows: int, day: str, fleet: str, csv: bool = True) -> None:
        for f in schema:
            self.fields.setdefault(f.name, f)
        meta = schema.metadata or {}
        desc = meta.get(b"fleetbms.description") or meta.get(b"description")
        if desc and self.description is None:
            self.description = desc.decode("utf-8", "replace")
        self.rows += rows
        self.days.add(day)
        self.fleets.add(fleet)
        self.csv = self.csv and csv


def data_dictionary(tables: Mapping[str, TableInfo]) -> dict[str, Any]:
    """The ``dictionary.json`` document of the exported tables."""
    out: dict[str, Any] = {}
    for key in sorted(tables):
        info = tables[key]
        columns = []
        for name, f in info.fields.items():
            columns.append(
                {
                    "name": name,
                    "type": str(f.type),
                    "nullable": f.nullable,
                    "unit": _meta(f, "unit") or unit_of(name),
                    "meaning": _meta(f, "description")
                    or TABLE_COLUMN_MEANINGS.get((key, name))
                    or COLUMN_MEANINGS.get(name)
                    or "not documented by the producing job",
                }
            )
        out[key] = {
            "description": info.description or TABLE_DESCRIPTIONS.get(key, ""),
            "files": (
                f"days/*/{key}/fleet=*.parquet and .csv (same rows)"
                if info.csv
                else f"days/*/{key}/fleet=*.parquet (per-cell table exported without CSV)"
            ),
            "rows": info.rows,
            "days_with_data": len(info.days),
            "fleets": sorted(info.fleets),
            "columns": columns,
        }
    return {
        "tables": out,
        "conventions": {
            "units": "in column names (soh_pct: %, cell_mv: mV, temp_c: degC, capacity_ah: Ah)",
            "dates": "UTC event dates; timestamps are UTC",
            "current_sign": "positive into the battery (charging), negative out (VSS)",
            "vehicle_ids": (
                f"{PSEUDONYM_PREFIX} + {PSEUDONYM_HEX_DIGITS} hex digits of HMAC-SHA256 of "
                "the VIN with a key held by the fleet; stable within the fleet's key"
            ),
            "csv": "RFC 4180, UTF-8, header row, empty field = null, timestamps ISO 8601 Z",
            "parquet": "zstd-compressed; column types as listed",
        },
    }


#: Libraries whose versions decide results, recorded in ``methodology.json``.
LIBRARIES = (
    "cryptography",
    "duckdb",
    "msgspec",
    "numpy",
    "polars",
    "pyarrow",
    "scikit-learn",
)

METHODS: dict[str, str] = {
    "ingest": (
        "MQTT v5 QoS 1 readings validated against telemetry contract v1; duplicates "
        "(vin, seq) removed; rejects quarantined with their reason"
    ),
    "state_of_health": (
        "capacity from charge counted between rested open-circuit-voltage points "
        "(OCV-SoC curves: Chen et al. 2020 for NMC, Naumann 2018 for LFP), resistance "
        "from voltage over current steps, fitted robustly over time with an uncertainty"
    ),
    "warranty": "each vehicle checked against its warranty policy (presets or TOML terms)",
    "anomalies": "isolation forest over per-cell and per-vehicle features, plus hard rules",
    "pseudonymisation": (
        "every VIN in values, names, text and metadata replaced by HMAC-SHA256 pseudonyms "
        "(RFC 2104) with the fleet's key"
    ),
}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def sql_job_hashes() -> dict[str, str]:
    """``{file name: sha256 hex}`` of the SQL jobs shipped in ``bms/sql/``."""
    out: dict[str, str] = {}
    folder = importlib.resources.files("bms").joinpath("sql")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql") and entry.is_file():
            out[entry.name] = hashlib.sha256(entry.read_bytes()).hexdigest()
    return out


def model_records(models_dir: Path, pseudonyms: Pseudonymizer) -> list[dict[str, Any]]:
    """One record per file under ``models_dir``: name, SHA-256, size, JSON content.

    JSON files (model metadata) are included whole, with VINs replaced; other files
    (the fitted models) by their hash only.
    """
    if not models_dir.is_dir():
        return []
    records: list[dict[str, Any]] = []
    for path in sorted(p for p in models_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(models_dir).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # temporary files of an atomic write
        data = path.read_bytes()
        record: dict[str, Any] = {
            "file": pseudonyms.text(rel),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        }
        if path.suffix == ".json":
            try:
                record["metadata"] = pseudonyms.json_value(json.loads(data))
            except (UnicodeDecodeError, json.JSONDecodeError):
                record["metadata"] = None
        records.append(record)
    return records


def methodology(
    models_dir: Path, pseudonyms: Pseudonymizer, parameters: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``methodology.json`` document (everything in it is deterministic)."""
    return {
        "fleetbms_version": _version("fleetbms"),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "sql_jobs_sha256": sql_job_hashes(),
        "anomaly_models": model_records(models_dir, pseudonyms),
        "parameters": pseudonyms.json_value(dict(parameters)),
        "methods": METHODS,
    }
