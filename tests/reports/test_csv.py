"""The fleet CSV: columns with units, values equal to the lake's metrics."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import reports
from tests.reports import report_data as rd


@pytest.fixture(scope="module")
def csv_rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    data = tmp_path_factory.mktemp("csv")
    lake = rd.make_lake(data)
    (path,) = reports.fleet_report(lake, data / "reports", rd.DAY, rd.FLEET, formats="csv")
    assert path.name == "fleet-demo.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        return lake, list(csv.DictReader(fh))


def _table(lake: Path, name: str) -> dict[str, dict[str, object]]:
    path = lake / "metrics" / name / f"date={rd.DAY}" / f"fleet={rd.FLEET}" / "part.parquet"
    return {r["vin"]: r for r in pq.read_table(path).to_pylist()}


def _float(text: str) -> float:
    return math.nan if text == "" else float(text)


def _same(a: float, b: object) -> bool:
    b = math.nan if b is None else float(b)  # type: ignore[arg-type]
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_csv_header_is_the_documented_columns_with_units(csv_rows) -> None:
    _, rows = csv_rows
    assert tuple(rows[0]) == reports.CSV_COLUMNS
    for name in (
        "soh_pct",
        "soh_low_pct",
        "soh_high_pct",
        "projected_soh_at_warranty_end_pct",
        "odometer_km",
        "age_years",
        "soh_trend_pct_per_year",
        "resistance_growth_pct",
        "resistance_growth_low_pct",
        "resistance_growth_high_pct",
        "longest_gap_s",
    ):
        assert name in reports.CSV_COLUMNS


def test_csv_values_equal_the_metrics_at_full_precision(csv_rows) -> None:
    lake, rows = csv_rows
    soh = _table(lake, "vehicle_soh")
    war = _table(lake, "warranty")
    vd = _table(lake, "vehicle_day")
    assert [r["vin"] for r in rows] == list(rd.VEHICLES)  # most urgent first
    for r in rows:
        s, w = soh[r["vin"]], war[r["vin"]]
        assert _same(_float(r["soh_pct"]), s["soh_pct"])
        assert _same(_float(r["soh_low_pct"]), s["soh_low_pct"])
        assert _same(_float(r["soh_high_pct"]), s["soh_high_pct"])
        assert _same(_float(r["resistance_growth_pct"]), s["resistance_growth_pct"])
        assert _same(_float(r["resistance_growth_low_pct"]), s["resistance_growth_low_pct"])
        assert _same(_float(r["resistance_growth_high_pct"]), s["resistance_growth_high_pct"])
        assert _same(_float(r["projected_soh_at_warranty_end_pct"]), w["projected_soh_pct"])
        assert _same(_float(r["projected_soh_at_warranty_end_low_pct"]), w["projected_soh_low_pct"])
        assert _same(_float(r["warranty_end_age_years"]), w["coverage_end_years"])
        assert _same(_float(r["warranty_min_soh_pct"]), w["threshold_min_soh_pct"])
        assert _same(_float(r["odometer_km"]), vd[r["vin"]]["odometer_km"])
        assert _same(_float(r["age_years"]), s["age_years"])
        assert r["warranty_status"] == w["status"]
        assert r["warranty_policy"] == w["policy_id"] == "oem-8y-160k-70"
        assert r["in_service_date"] == rd.IN_SERVICE.isoformat()


def test_csv_counts_anomalies_and_gaps_per_vehicle(csv_rows) -> None:
    _, rows = csv_rows
    by_vin = {r["vin"]: r for r in rows}
    flagged = by_vin[rd.FLAGGED_VIN]
    assert (flagged["anomalies_new"], flagged["anomalies_open"]) == ("1", "1")
    assert flagged["anomaly_max_score"] == "0.81"
    gap = by_vin[rd.GAP_VIN]
    assert (gap["readings_expected"], gap["readings_missing"], gap["data_gaps"]) == (
        "144",
        "14",
        "2",
    )
    assert gap["longest_gap_s"] == "4200.0"
    # Missing values are empty fields, never "nan".
    none = by_vin["MAT612345NEX00004"]
    assert none["soh_pct"] == none["projected_soh_at_warranty_end_pct"] == ""
    assert none["warranty_status"] == "insufficient_data"
    assert all("nan" not in v for r in rows for v in r.values())


def test_csv_soh_trend_is_the_average_change_to_the_end_of_cover(csv_rows) -> None:
    """(projected SoH at the end of cover - SoH now) / (years of cover left)."""
    lake, rows = csv_rows
    soh = _table(lake, "vehicle_soh")
    war = _table(lake, "warranty")
    for r in rows:
        s, w = soh[r["vin"]], war[r["vin"]]
        if math.isnan(s["soh_pct"]):
            assert r["soh_trend_pct_per_year"] == ""
            continue
        expected = (w["projected_soh_pct"] - s["soh_pct"]) / (
            w["coverage_end_years"] - s["age_years"]
        )
        assert math.isclose(float(r["soh_trend_pct_per_year"]), expected, rel_tol=1e-12)
        assert float(r["soh_trend_pct_per_year"]) < 0


def test_csv_tells_a_silent_vehicle_from_a_complete_day(tmp_path: Path) -> None:
    """A vehicle with no reading stored on the date: reconciliation has no sequence
    numbers to count from (expected 0, missing 0 in its table). The CSV says silent,
    stored 0, and leaves expected, missing and gaps empty (unknown), as the PDF does;
    a day without missing readings is complete, one with missing readings has gaps."""
    data = tmp_path / "data"
    lake = rd.make_lake(data)
    silent = "MAT612345NEX00004"
    rd.patch_silent(lake, silent)
    (path,) = reports.fleet_report(lake, data / "reports", rd.DAY, rd.FLEET, formats="csv")
    with path.open(newline="", encoding="utf-8") as fh:
        by_vin = {r["vin"]: r for r in csv.DictReader(fh)}
    columns = ("data_status", "readings_expected", "readings_stored", "readings_missing")
    assert [by_vin[silent][c] for c in columns] == ["silent", "", "0", ""]
    assert (by_vin[silent]["data_gaps"], by_vin[silent]["longest_gap_s"]) == ("", "")
    assert [by_vin[rd.GAP_VIN][c] for c in columns] == ["gaps", "144", "130", "14"]
    assert [by_vin[rd.FLAGGED_VIN][c] for c in columns] == ["complete", "144", "144", "0"]
    assert by_vin[rd.FLAGGED_VIN]["data_gaps"] == "0"


def test_csv_data_status_is_empty_when_reconciliation_has_not_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lake = rd.make_lake(data)
    shutil.rmtree(lake / "metrics" / "reconciliation")
    (path,) = reports.fleet_report(lake, data / "reports", rd.DAY, rd.FLEET, formats="csv")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(rd.VEHICLES)
    for r in rows:
        assert r["data_status"] == r["readings_expected"] == r["readings_stored"] == ""
