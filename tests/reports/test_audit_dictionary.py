"""Data dictionary of audit bundles: units read off column names, metadata first."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import bms
from pipeline import cli
from reports._dictionary import (
    COLUMNS,
    TABLE_DESCRIPTIONS,
    UNDOCUMENTED,
    TableInfo,
    data_dictionary,
    unit_of,
)
from tests.reports.test_fleet_report_pipeline import SIMULATE


@pytest.mark.parametrize(
    ("name", "unit"),
    [
        ("soh_pct", "%"),
        ("cell_mv", "mV"),
        ("temp_c_max", "degC"),
        ("drift_mv_per_day", "mV/d"),
        ("km_per_day", "km/d"),
        ("resistance_mohm_25c", "mOhm"),
        ("ah_charged", "Ah"),
        ("self_discharge_hours", "h"),
        ("delay_s", "s"),
        ("age_years", "a"),
        ("cell", None),
        ("n_cells", None),
        ("min_cell_share", None),  # "min" here is a statistic, not minutes
        ("a", None),  # a lone one-letter token is not read as a unit
        ("first_ts", None),
        ("temp_dc", "0.1 degC"),  # decidegrees, as telemetry sends temperatures
        ("temp_dc_max", "0.1 degC"),
        ("ah_charged_dc", "Ah"),  # charge by direct current, not a temperature
        ("dc_fast_share", None),  # a share of charged Ah, 0..1
    ],
)
def test_unit_of_reads_the_unit_suffix_of_a_column_name(name: str, unit: str | None) -> None:
    assert unit_of(name) == unit


def test_field_metadata_beats_the_catalogue_and_the_name() -> None:
    schema = pa.schema(
        [
            pa.field("soh_pct", pa.float64(), metadata={b"description": b"from the job"}),
            pa.field("x_pct", pa.float64(), metadata={b"unit": b"fraction"}),
            pa.field("mystery", pa.int32()),
        ],
        metadata={b"fleetbms.description": b"Job-described table."},
    )
    info = TableInfo("metrics/custom")
    info.add(schema, rows=5, day="2026-11-01", fleet="demo")
    info.add(schema, rows=7, day="2026-11-02", fleet="demo")
    doc = data_dictionary({"metrics/custom": info})["tables"]["metrics/custom"]
    assert doc["description"] == "Job-described table."
    assert (doc["rows"], doc["days_with_data"], doc["fleets"]) == (12, 2, ["demo"])
    columns = {c["name"]: c for c in doc["columns"]}
    assert columns["soh_pct"]["meaning"] == "from the job"
    assert columns["soh_pct"]["unit"] == "%"
    assert columns["x_pct"]["unit"] == "fraction"
    assert columns["mystery"]["meaning"] == "not documented by the producing job"
    assert columns["mystery"]["type"] == "int32"


def test_anomaly_evidence_is_documented_as_text_and_warranty_evidence_as_json() -> None:
    """The anomalies' ``evidence`` is clauses joined by "; " (``docs/lake.md``), the
    warranty's a JSON document: an insurer parsing the first as JSON would fail."""
    schema = pa.schema([pa.field("vin", pa.string()), pa.field("evidence", pa.string())])
    tables = {}
    for key in ("anomalies", "metrics/warranty"):
        tables[key] = TableInfo(key)
        tables[key].add(schema, rows=1, day="2026-11-01", fleet="demo")
    doc = data_dictionary(tables)["tables"]
    meaning = {k: {c["name"]: c["meaning"] for c in doc[k]["columns"]} for k in tables}
    assert "JSON" in meaning["metrics/warranty"]["evidence"]
    assert "(JSON)" not in meaning["anomalies"]["evidence"]
    assert "as text" in meaning["anomalies"]["evidence"]


# --- every exported column documented ---------------------------------------------------

#: The simulated fleet's last date: the nightly batch reconciles, analyses and scores
#: every date up to it (2026-11-13..24).
_LAST_DAY = "2026-11-24"


def _is_numeric(typ: pa.DataType) -> bool:
    """A number, or a list of numbers (``cell_resistance_mohm_25c``)."""
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        typ = typ.value_type
    return bool(pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ))


@pytest.fixture(scope="module")
def pipeline_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle exported from a real nightly run: simulate -> nightly (compaction,
    reconciliation, analytics, anomalies) -> audit export."""
    data = tmp_path_factory.mktemp("dictionary") / "data"
    base = ["--data-dir", str(data)]
    runner = CliRunner()
    for args in (
        [*SIMULATE, "--fault-rate", "0.5"],
        ["nightly", "--date", _LAST_DAY, "--fleet", "demo"],
        ["keys", "generate"],
        ["audit", "export", "--from", "2026-11-13", "--to", _LAST_DAY, "--out", str(data / "b")],
    ):
        res = runner.invoke(cli, [*base, *args])
        assert res.exit_code == 0, (args[0], res.output)
    return data / "b"


def test_every_exported_column_has_a_meaning_and_every_numeric_one_a_unit(
    pipeline_bundle: Path,
) -> None:
    """An insurer reads every column of a real bundle from its dictionary: a column a
    job adds later without a catalogue entry (``reports._dictionary.COLUMNS``) fails
    here, by table and name."""
    bundle = pipeline_bundle
    tables = json.loads((bundle / "dictionary.json").read_bytes())["tables"]
    # The bundle holds every table the catalogue describes (else this test checks less).
    assert set(COLUMNS) <= set(tables)
    types: dict[str, dict[str, pa.DataType]] = {}
    for path in sorted(bundle.glob("days/*/**/*.parquet")):
        key = path.parent.relative_to(bundle / "days" / path.relative_to(bundle).parts[1])
        schema = pq.read_schema(path)
        types.setdefault(key.as_posix(), {}).update({f.name: f.type for f in schema})
    assert set(types) == set(tables)
    undocumented, unitless = [], []
    for key, doc in sorted(tables.items()):
        assert doc["description"], key
        assert [c["name"] for c in doc["columns"]] == list(types[key]), key
        for column in doc["columns"]:
            name = f"{key}.{column['name']}"
            if not column["meaning"] or column["meaning"] == UNDOCUMENTED:
                undocumented.append(name)
            if _is_numeric(types[key][column["name"]]) and not column["unit"]:
                unitless.append(name)
    assert undocumented == []
    assert unitless == []
    columns = {key: {c["name"]: c for c in doc["columns"]} for key, doc in tables.items()}
    vehicle_day = columns["metrics/vehicle_day"]
    assert vehicle_day["max_c_rate"]["unit"] == "1/h"
    assert vehicle_day["equivalent_full_cycles"]["unit"] == "-"
    assert vehicle_day["over_temp_events"]["unit"] == "count"
    assert vehicle_day["n_readings"]["unit"] == "count"
    assert columns["metrics/warranty"]["coverage_end_km"]["unit"] == "km"
    assert columns["metrics/warranty"]["usage_flags"]["meaning"].startswith("usage limits")
    assert columns["anomalies"]["severity"]["meaning"] == (
        "warning, or critical (a rule's critical level)"
    )
    assert columns["anomalies"]["first_seen"]["meaning"] == "date the flag was first raised"


def _job_schemas() -> dict[str, pa.Schema]:
    from pipeline._reconcile import GAPS_SCHEMA, RECONCILIATION_SCHEMA

    return {
        **{f"metrics/{name}": schema for name, schema in bms.METRICS_SCHEMAS.items()},
        "metrics/reconciliation": RECONCILIATION_SCHEMA,
        "metrics/reconciliation_gaps": GAPS_SCHEMA,
        "anomalies": bms.ANOMALIES_SCHEMA,
    }


def test_the_catalogue_lists_exactly_the_columns_the_jobs_write() -> None:
    """Every column of every job schema that reaches a bundle, in the schema's order, and
    no column a job no longer writes; a unit for a number, none for text or dates."""
    schemas = _job_schemas()
    assert set(COLUMNS) == set(schemas) == set(TABLE_DESCRIPTIONS)
    for key, schema in schemas.items():
        assert list(COLUMNS[key]) == schema.names, key
        for f in schema:
            unit, meaning = COLUMNS[key][f.name]
            assert meaning, (key, f.name)
            assert (unit is not None) == _is_numeric(f.type), (key, f.name, unit)


def test_the_catalogues_units_agree_with_the_unit_suffix_of_the_names() -> None:
    """Units in names (``docs/lake.md``): where a name carries a unit, the catalogue
    gives that unit (a typo in either would mislead the reader)."""
    for key, columns in COLUMNS.items():
        for name, (unit, _) in columns.items():
            from_name = unit_of(name)
            if from_name is not None and unit is not None:
                assert unit == from_name, (key, name)
