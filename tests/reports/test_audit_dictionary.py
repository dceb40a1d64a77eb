"""Data dictionary of audit bundles: units read off column names, metadata first."""

from __future__ import annotations

import pyarrow as pa
import pytest

from reports._dictionary import TableInfo, data_dictionary, unit_of


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
