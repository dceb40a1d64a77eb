"""Reports on real pipeline outputs: simulate -> analyze -> anomalies -> report."""

from __future__ import annotations

import csv
import math
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from pypdf import PdfReader

import reports
from pipeline import cli
from tests.reports.pdf_tools import chart_names, pdf_text

DAY = "2026-11-24"
#: A small fleet of twelve days ending on DAY (the audit dictionary's tests use it too).
SIMULATE = [
    "simulate",
    "--to-lake",
    "--vehicles",
    "4",
    "--days",
    "12",
    "--start",
    "2026-11-13",
    "--cells",
    "14",
    "--cadence-s",
    "300",
    "--idle-cadence-s",
    "1800",
    "--max-age-days",
    "800",
    "--seed",
    "2",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pipeline") / "data"
    runner = CliRunner()
    base = ["--data-dir", str(d)]
    for args in (
        SIMULATE,
        ["analyze"],
        ["anomalies"],
    ):
        res = runner.invoke(cli, [*base, *args])
        assert res.exit_code == 0, res.output
    return d


def _day_table(data_dir: Path, table: str) -> dict[str, dict[str, object]]:
    path = data_dir / "lake" / "metrics" / table / f"date={DAY}" / "fleet=demo" / "part.parquet"
    return {r["vin"]: r for r in pq.read_table(path).to_pylist()}


def _f(text: str) -> float:
    return math.nan if text == "" else float(text)


def _has(value: object) -> bool:
    return value is not None and not math.isnan(float(value))  # type: ignore[arg-type]


def _eq(a: float, b: object) -> bool:
    b = math.nan if b is None else float(b)  # type: ignore[arg-type]
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_fleet_report_on_pipeline_outputs_carries_the_metrics(data_dir: Path) -> None:
    res = CliRunner().invoke(
        cli, ["--data-dir", str(data_dir), "report", "fleet", "--date", DAY, "--flagged"]
    )
    assert res.exit_code == 0, res.output
    day_dir = data_dir / "reports" / f"date={DAY}"
    with (day_dir / "fleet-demo.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    soh = _day_table(data_dir, "vehicle_soh")
    war = _day_table(data_dir, "warranty")
    assert sorted(r["vin"] for r in rows) == sorted(soh) == sorted(war)
    assert len(rows) == 4
    text = pdf_text(day_dir / "fleet-demo.pdf")
    for r in rows:
        s, w = soh[r["vin"]], war[r["vin"]]
        assert _eq(_f(r["soh_pct"]), s["soh_pct"])
        assert _eq(_f(r["soh_low_pct"]), s["soh_low_pct"])
        assert _eq(_f(r["projected_soh_at_warranty_end_pct"]), w["projected_soh_pct"])
        assert _eq(_f(r["warranty_end_odometer_km"]), w["coverage_end_km"])
        assert r["warranty_status"] == w["status"]
        assert r["warranty_reason"] == w["reason"]
        # Reconciliation has not run (no nightly batch): empty, not zero.
        assert r["readings_missing"] == ""
        assert r["vin"] in text
        if _has(s["soh_pct"]):
            # The page shows the interval clipped at 100 % (or at the SoH when above),
            # marked "*"; the CSV keeps the fit's bounds (above).
            soh_pct, low, high = (float(s[k]) for k in ("soh_pct", "soh_low_pct", "soh_high_pct"))  # type: ignore[arg-type]
            ceiling = max(100.0, soh_pct)
            shown_high = f"{ceiling:.1f}*" if high > ceiling else f"{high:.1f}"
            assert f"{soh_pct:.1f}\n{low:.1f}..{shown_high}" in text
    cover = " ".join((PdfReader(day_dir / "fleet-demo.pdf").pages[0].extract_text()).split())
    assert "4 vehicles" in cover
    claims = sum(1 for w in war.values() if w["status"] == "claim_eligible")
    assert f"{claims} claim-eligible" in cover
    assert chart_names(day_dir / "fleet-demo.pdf") == ["soh_distribution", "soh_vs_age_km"]
    # Vehicle reports only for newly flagged vehicles.
    flagged = reports.newly_flagged(data_dir / "lake", date.fromisoformat(DAY), "demo")
    vehicles = day_dir / "vehicles"
    written = sorted(p.stem for p in vehicles.iterdir()) if vehicles.exists() else []
    assert written == flagged


def test_vehicle_report_on_pipeline_outputs(data_dir: Path) -> None:
    soh = _day_table(data_dir, "vehicle_soh")
    vin = max(soh, key=lambda v: soh[v]["n_estimates"])  # type: ignore[arg-type, return-value]
    res = CliRunner().invoke(
        cli, ["--data-dir", str(data_dir), "report", "vehicle", vin, "--date", DAY]
    )
    assert res.exit_code == 0, res.output
    pdf = data_dir / "reports" / f"date={DAY}" / "vehicles" / f"{vin}.pdf"
    assert chart_names(pdf) == ["soh_history", "cell_heatmap", "exposure", "charging"]
    text = " ".join(pdf_text(pdf).split())
    s = soh[vin]
    assert _has(s["soh_pct"])
    assert f"{s['soh_pct']:.1f} % state of health" in text
    assert f"SoH now [%] {s['soh_pct']:.2f}" in text
    war = _day_table(data_dir, "warranty")[vin]
    assert f"reason {war['reason']}" in text
    assert f"policy {war['policy_id']}" in text
