"""Vehicle PDFs read back, the nightly ``render_reports`` and the ``report`` commands."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from pypdf import PdfReader

import bms
import reports
from pipeline import cli
from tests.reports import report_data as rd
from tests.reports.pdf_tools import (
    chart_names,
    image_count,
    ink_fraction,
    pdf_text,
    render_page,
)

VEHICLE_CHARTS = ["soh_history", "cell_heatmap", "exposure", "charging"]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rd.make_lake(tmp_path_factory.mktemp("vehicle"))


@pytest.fixture(scope="module")
def flagged_pdf(lake: Path) -> Path:
    return reports.vehicle_report(lake, lake.parent / "reports", rd.FLAGGED_VIN, rd.DAY)


def test_vehicle_report_path_and_metadata(flagged_pdf: Path, lake: Path) -> None:
    assert flagged_pdf == (
        lake.parent / "reports" / f"date={rd.DAY}" / "vehicles" / f"{rd.FLAGGED_VIN}.pdf"
    )
    meta = PdfReader(flagged_pdf).metadata
    assert meta is not None
    assert meta.title == f"Vehicle {rd.FLAGGED_VIN} battery health {rd.DAY}"
    assert meta.subject == f"fleet=demo vin={rd.FLAGGED_VIN} date={rd.DAY}"
    assert meta.creator == "fleetbms 0.1.0"


def test_vehicle_pdf_has_every_chart_with_labelled_axes(flagged_pdf: Path) -> None:
    assert chart_names(flagged_pdf) == VEHICLE_CHARTS
    assert image_count(flagged_pdf) == 1  # the heat map; the rest is vector drawing
    text = pdf_text(flagged_pdf)
    for label in (
        "age [years]",
        "SoH [%]",
        "cell [index, 0-based]",
        "rest voltage - pack median [mV]",
        "date (UTC, month-day)",
        "time [h]",
        "pack hottest [degC]",
        "state of charge [%]",
        "charged [Ah]",
    ):
        assert label in text, label


def test_vehicle_heat_map_shows_the_drifting_cell_in_its_row(flagged_pdf: Path) -> None:
    """The cell whose rest voltage falls day by day is the blue row, at its index."""
    (image,) = PdfReader(flagged_pdf).pages[1].images
    rgb = np.asarray(image.image.convert("RGB"), dtype=np.float64)
    assert rgb.shape[:2] == (rd.N_CELLS, rd.N_DAYS)  # one pixel per cell and day
    rows_bottom_up = rgb[::-1]
    blue_minus_red = rows_bottom_up[:, -1, 2] - rows_bottom_up[:, -1, 0]
    assert int(np.argmax(blue_minus_red)) == rd.FLAGGED_CELL
    assert blue_minus_red[rd.FLAGGED_CELL] > 50  # deep blue (RdBu_r low end)


def test_vehicle_pdf_explains_the_anomaly_and_the_warranty_verdict(flagged_pdf: Path) -> None:
    text = " ".join(pdf_text(flagged_pdf).split())
    assert f"cell {rd.FLAGGED_CELL}: critical, new, flagged by model and rule, score 0.81" in text
    assert "self_discharge_z [sigma] -6.100 -2.000..2.000" in text
    assert "Rules: self_discharge" in text
    assert "cell 5 loses charge at rest" in text
    # Warranty evidence: the verdict, its reason and the figures behind it.
    assert "verdict ok reason test reason ok" in text
    assert "policy oem-8y-160k-70 OEM warranty 8 years / 160,000 km / 70 %" in text
    assert "SoH now [%] 93.10 (90 %: 91.60..94.60), 31 capacity estimates" in text
    assert "SoH at cover end [%] 85.70 (90 %: 82.70..88.70)" in text
    assert "dc fast share 0.250 (limit 0.8)" in text


def test_vehicle_pdf_shows_resistance_growth_with_its_interval(flagged_pdf: Path) -> None:
    text = " ".join(pdf_text(flagged_pdf).split())
    # FLAGGED_VIN is the third vehicle: growth 12.5 + 2, interval 10..15 (report_data).
    assert "resistance growth 14.5 % (90 % interval 10.0..15.0 %)" in text
    assert "resistance growth since in service 14.5 % (90 % interval 10.0..15.0 %)" in text


def test_vehicle_pdf_calls_a_growth_with_a_wide_interval_around_zero_undetermined(
    lake: Path, tmp_path: Path
) -> None:
    """-20..209 % (a flat resistance seen through few, noisy steps): no bare 94.3 %."""
    data = tmp_path / "data"
    shutil.copytree(lake.parent, data)
    rd.patch_rows(
        data / "lake",
        "vehicle_soh",
        rd.FLAGGED_VIN,
        resistance_growth_pct=94.28,
        resistance_growth_low_pct=-20.03,
        resistance_growth_high_pct=208.59,
    )
    pdf = reports.vehicle_report(data / "lake", tmp_path / "out", rd.FLAGGED_VIN, rd.DAY)
    text = " ".join(pdf_text(pdf).split())
    assert "resistance growth not yet determined (90 % interval -20.0..208.6 %)" in text
    assert "94.3" not in text
    # An interval as wide that excludes 0 is growth, shown with its interval.
    rd.patch_rows(
        data / "lake",
        "vehicle_soh",
        rd.FLAGGED_VIN,
        resistance_growth_pct=94.28,
        resistance_growth_low_pct=20.0,
        resistance_growth_high_pct=208.59,
    )
    pdf = reports.vehicle_report(data / "lake", tmp_path / "out", rd.FLAGGED_VIN, rd.DAY)
    text = " ".join(pdf_text(pdf).split())
    assert "resistance growth 94.3 % (90 % interval 20.0..208.6 %)" in text


def test_intervals_above_what_a_pack_can_hold_are_shown_clipped_and_marked(
    lake: Path, tmp_path: Path
) -> None:
    """SoH 94.7 (81.4..108.1), projected 92.8 (72.8..112.7): the pages show 81.4..100.0*
    and 72.8..100.0* (capacity does not grow with age) with a note; the evidence table
    and the CSV keep the fit's bounds."""
    data = tmp_path / "data"
    shutil.copytree(lake.parent, data)
    soh = {"soh_pct": 94.74, "soh_low_pct": 81.36, "soh_high_pct": 108.12}
    proj = {
        "projected_soh_pct": 92.75,
        "projected_soh_low_pct": 72.78,
        "projected_soh_high_pct": 112.73,
    }
    rd.patch_rows(data / "lake", "vehicle_soh", rd.FLAGGED_VIN, **soh, **proj)
    rd.patch_rows(data / "lake", "warranty", rd.FLAGGED_VIN, **soh, **proj)
    pdf = reports.vehicle_report(data / "lake", tmp_path / "out", rd.FLAGGED_VIN, rd.DAY)
    text = " ".join(pdf_text(pdf).split())
    assert "94.7 % state of health 90 %: 81.4..100.0* %" in text
    assert "90 %: 72.8..100.0* % at 8.0 years" in text
    assert "* bound clipped to what is physically possible" in text
    assert "SoH now [%] 94.74 (90 %: 81.36..100.00*; fit: 81.36..108.12)" in text
    assert "SoH at cover end [%] 92.75 (90 %: 72.78..100.00*; fit: 72.78..112.73)" in text
    assert "108.1 " not in text.replace("108.12", "")
    fleet_pdf, fleet_csv = reports.fleet_report(data / "lake", tmp_path / "out", rd.DAY, rd.FLEET)
    table = pdf_text(fleet_pdf)
    assert f"{rd.FLAGGED_VIN}" in table
    assert "94.7\n81.4..100.0*" in table
    assert "92.8\n72.8..100.0*" in table
    assert "* bound clipped" in table
    with fleet_csv.open(newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["vin"] == rd.FLAGGED_VIN)
    assert (row["soh_high_pct"], row["projected_soh_at_warranty_end_high_pct"]) == (
        "108.12",
        "112.73",
    )


def test_a_new_pack_above_100_keeps_its_soh_as_the_upper_bound(lake: Path, tmp_path: Path) -> None:
    """A 7-day-old pack at 100.2 % (82..118): shown 82.0..100.2*, not 118."""
    data = tmp_path / "data"
    shutil.copytree(lake.parent, data)
    soh = {"soh_pct": 100.2, "soh_low_pct": 82.0, "soh_high_pct": 118.4}
    rd.patch_rows(data / "lake", "vehicle_soh", rd.FLAGGED_VIN, **soh)
    rd.patch_rows(data / "lake", "warranty", rd.FLAGGED_VIN, **soh)
    pdf = reports.vehicle_report(data / "lake", tmp_path / "out", rd.FLAGGED_VIN, rd.DAY)
    text = " ".join(pdf_text(pdf).split())
    assert "100.2 % state of health 90 %: 82.0..100.2* %" in text
    # Only the evidence table names the fit's own bound.
    assert "SoH now [%] 100.20 (90 %: 82.00..100.20*; fit: 82.00..118.40)" in text
    assert text.count("118.4") == 1


def test_a_pack_never_measured_says_its_soh_is_the_fleets_typical_trend(
    lake: Path, tmp_path: Path
) -> None:
    """No capacity estimate of its own: the headline figure is the fleet's typical trend
    and its interval where the fleet's measured vehicles stand, and the page says so
    rather than showing it as the pack's measured 90 % interval."""
    data = tmp_path / "data"
    shutil.copytree(lake.parent, data)
    soh = {"n_estimates": 0, "soh_pct": 95.8, "soh_low_pct": 69.7, "soh_high_pct": 99.1}
    rd.patch_rows(data / "lake", "vehicle_soh", rd.FLAGGED_VIN, **soh)
    pdf = reports.vehicle_report(data / "lake", tmp_path / "out", rd.FLAGGED_VIN, rd.DAY)
    text = " ".join(pdf_text(pdf).split())
    assert (
        "95.8 % state of health not measured yet: the fleet's typical trend; where its "
        "measured vehicles stand: 69.7..99.1 %" in text
    )
    assert "90 %: 69.7..99.1 %" not in text


def test_a_week_old_pack_reads_the_trend_its_projection_implies(lake: Path, tmp_path: Path) -> None:
    """7 days in service, 100.2 % now, 96.1 % projected at 3 years: the trend is the
    change to the end of cover per year, -1.38 %/yr (not the -14.8 %/yr of the fit's
    steep start)."""
    data = tmp_path / "data"
    shutil.copytree(lake.parent, data)
    age = 7 / 365.25
    now = {"age_years": age, "soh_pct": 100.2, "soh_low_pct": 99.0, "soh_high_pct": 100.9}
    rd.patch_rows(data / "lake", "vehicle_soh", rd.FLAGGED_VIN, **now, fade_exponent=0.5)
    rd.patch_rows(
        data / "lake",
        "warranty",
        rd.FLAGGED_VIN,
        **now,
        projected_soh_pct=96.1,
        projected_soh_low_pct=92.0,
        projected_soh_high_pct=99.5,
        coverage_end_years=3.0,
    )
    pdf = reports.vehicle_report(data / "lake", tmp_path / "out", rd.FLAGGED_VIN, rd.DAY)
    text = " ".join(pdf_text(pdf).split())
    expected = (96.1 - 100.2) / (3.0 - age)
    assert f"{expected:.2f} SoH trend to cover end [%/year]" in text
    assert f"{expected:.2f}" == "-1.38"


def test_a_cover_ended_by_its_odometer_limit_says_when_and_by_which_limit(
    lake: Path, tmp_path: Path
) -> None:
    """6.0 years, 403,715 km on an 8 y / 160,000 km cover: the warranty stage places its
    end at 160,000 km, about 6.0 * 160000 / 403715 = 2.38 years (bms.coverage_end); the
    pages say so, not 'n/a % at 6.0 years'."""
    data = tmp_path / "data"
    shutil.copytree(lake.parent, data)
    age, odo = 6.0041, 403715.43
    policy = bms.load_warranty_policy("oem-8y-160k-70")
    verdict = bms.warranty_verdict(policy, None, age_years=age, odometer_km=odo, km_per_day=180)
    end = verdict.coverage_end_years
    assert end == pytest.approx(age * 160_000 / odo)
    rd.patch_rows(data / "lake", "vehicle_soh", rd.FLAGGED_VIN, age_years=age, odometer_km=odo)
    rd.patch_rows(data / "lake", "vehicle_day", rd.FLAGGED_VIN, odometer_km=odo)
    warranty = bms.read_metrics(data / "lake", "warranty", [rd.DAY]).to_pylist()
    evidence = json.loads(next(r for r in warranty if r["vin"] == rd.FLAGGED_VIN)["evidence"])
    rd.patch_rows(
        data / "lake",
        "warranty",
        rd.FLAGGED_VIN,
        status="out_of_coverage",
        reason=verdict.reason,
        age_years=age,
        odometer_km=odo,
        coverage_end_years=end,
        coverage_end_km=verdict.coverage_end_km,
        projected_soh_pct=None,
        projected_soh_low_pct=None,
        projected_soh_high_pct=None,
        evidence=json.dumps({**evidence, "cover_ended_by": verdict.cover_ended_by}),
    )
    pdf = reports.vehicle_report(data / "lake", tmp_path / "out", rd.FLAGGED_VIN, rd.DAY)
    text = " ".join(pdf_text(pdf).split())
    assert (
        f"cover ended: the odometer passed the 160000 km limit at about {end:.1f} years of age "
        f"(odometer now {odo:.0f} km; age {age:.2f} y, within its 8 y limit)" in text
    )
    assert (
        f"ended warranty cover odometer limit reached at about {end:.1f} years / 160000 km" in text
    )
    assert f"cover ended at about {end:.2f} years / 160000 km (the odometer limit;" in text
    assert "SoH at cover end [%] n/a: cover has ended" in text
    assert "limit 8 y)" not in text  # the age limit did not end it
    assert "n/a % at" not in text
    fleet_csv = reports.fleet_report(
        data / "lake", tmp_path / "out", rd.DAY, rd.FLEET, formats="csv"
    )[0]
    with fleet_csv.open(newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["vin"] == rd.FLAGGED_VIN)
    assert math.isclose(float(row["warranty_end_age_years"]), end, rel_tol=1e-12)
    assert float(row["warranty_end_odometer_km"]) == 160_000.0
    assert row["warranty_reason"] == verdict.reason
    assert row["soh_trend_pct_per_year"] == ""  # no projection once cover has ended


def test_anomaly_explanations_read_as_sentences() -> None:
    from reports._inputs import Anomaly, Feature
    from reports._vehicle_pdf import explanation_text

    feature = Feature("temp_max_excess_c", 0.74, "degC", 0.0, 3.28)
    a = Anomaly(
        vin="V",
        cell=-1,
        sensor=0,
        score=0.39,
        threshold=0.7,
        severity="warning",
        status="ongoing",
        source="rule",
        rules=("sensor_stuck",),
        first_seen="2026-11-04",
        model_version="m",
        features=(feature,),
        explanation=(
            "model score 0.812 > threshold 0.6; sensor_stuck sensor 0: 1 - (limit 1); "
            "sensor_stuck sensor 1: 2 (limit 1); self_discharge cell 5: 6.1 mV/d (limit 5); "
            "temp_max_excess_c=0.74 degC (fleet normal 0..3.28); "
            "sag_z=-0.817 z (fleet normal -1.42..3.86); cell 5 loses charge at rest"
        ),
    )
    assert explanation_text(a) == (
        "Model score 0.812 above its threshold 0.6. "
        "Rule sensor_stuck fired on sensor 0 (measured 1, limit 1). "
        "Rule sensor_stuck fired on sensor 1 (measured 2, limit 1). "
        "Rule self_discharge fired on cell 5 (measured 6.1 mV/d, limit 5 mV/d). "
        "sag_z -0.817 z (fleet normal -1.42..3.86 z). "
        "cell 5 loses charge at rest."
    )


def test_anomaly_explanations_read_the_stuck_and_spike_clauses() -> None:
    """The clauses bms adds after a rule's (a stuck sensor's value and since when, a
    temperature not held, an erratic sensor's reading) are kept as they are."""
    from reports._inputs import Anomaly
    from reports._vehicle_pdf import explanation_text

    a = Anomaly(
        vin="V",
        cell=-1,
        sensor=0,
        score=None,
        threshold=None,
        severity="warning",
        status="new",
        source="rule",
        rules=("sensor_erratic", "sensor_stuck", "temp_high"),
        first_seen="2026-02-19",
        model_version="rules-only",
        features=(),
        explanation=(
            "sensor_stuck sensor 0: 1 (limit 1); sensor 0 stuck at 24.0 degC since "
            "2026-02-15 (stuck all day on 4 days with its data); temp_high sensor 1: "
            "58.2 degC (limit 55); sensor 1 reached 58.2 degC in single readings only, not "
            "held on a second (the sensors held at most 27.5 degC); sensor_erratic sensor "
            "2: 4.1 degC (limit 1); sensor 2 reached 71.2 degC, not counted as the pack's "
            "temperature (the other sensors held at most 27.5 degC)"
        ),
    )
    assert explanation_text(a) == (
        "Rule sensor_stuck fired on sensor 0 (measured 1, limit 1). "
        "sensor 0 stuck at 24.0 degC since 2026-02-15 (stuck all day on 4 days with its "
        "data). Rule temp_high fired on sensor 1 (measured 58.2 degC, limit 55 degC). "
        "sensor 1 reached 58.2 degC in single readings only, not held on a second (the "
        "sensors held at most 27.5 degC). "
        "Rule sensor_erratic fired on sensor 2 (measured 4.1 degC, limit 1 degC). "
        "sensor 2 reached 71.2 degC, not counted as the pack's temperature (the other "
        "sensors held at most 27.5 degC)."
    )


def test_vehicle_pdf_writes_the_trend_fit_as_a_formula(flagged_pdf: Path) -> None:
    text = " ".join(pdf_text(flagged_pdf).split())
    b = (100.0 - 93.1) / rd._age(rd.DAY) ** 0.75
    assert f"trend fit SoH = 100.00 \u2212 {b:.3f} \u00d7 age^0.75, scale 1.00" in text
    assert "+ (-" not in text


def test_a_one_day_window_is_not_1_days(lake: Path, tmp_path: Path) -> None:
    pdf = reports.vehicle_report(lake, tmp_path, rd.FLAGGED_VIN, rd.DAY, window_days=1)
    text = " ".join(pdf_text(pdf).split())
    assert "1 days" not in text
    assert "Charge put in per day, today:" in text


def test_vehicle_pdf_page_renders_non_blank(flagged_pdf: Path, tmp_path: Path) -> None:
    for page in (1, 2):
        png = render_page(flagged_pdf, tmp_path, page=page)
        assert 0.01 < ink_fraction(png) < 0.6


def test_render_reports_adds_vehicle_reports_of_newly_flagged_only(
    lake: Path, tmp_path: Path
) -> None:
    paths = reports.render_reports(lake, tmp_path, rd.DAY, rd.FLEET, workers=2)
    day_dir = tmp_path / f"date={rd.DAY}"
    # New anomaly (FLAGGED_VIN) and at risk since today (GAP_VIN); the vehicle that has
    # been claim-eligible all along is in the fleet report, without a new vehicle report.
    assert paths == [
        day_dir / "fleet-demo.pdf",
        day_dir / "fleet-demo.csv",
        day_dir / "vehicles" / f"{rd.GAP_VIN}.pdf",
        day_dir / "vehicles" / f"{rd.FLAGGED_VIN}.pdf",
    ]
    assert reports.newly_flagged(lake, rd.DAY, rd.FLEET) == [rd.GAP_VIN, rd.FLAGGED_VIN]
    again = reports.render_reports(lake, tmp_path, rd.DAY, rd.FLEET, workers=1)
    assert again == paths
    assert sorted(p.name for p in (day_dir / "vehicles").iterdir()) == [
        f"{rd.GAP_VIN}.pdf",
        f"{rd.FLAGGED_VIN}.pdf",
    ]  # no temporaries left


def test_a_flagged_vehicle_missing_from_the_registry_does_not_stop_the_reports(
    lake: Path, tmp_path: Path
) -> None:
    """A new anomaly on a VIN without SoH or warranty rows (not registered): the fleet
    report lists it and the other vehicles get their reports; it gets none."""
    data = tmp_path / "data"
    shutil.copytree(lake.parent, data)
    part = next((data / "lake" / "anomalies" / f"date={rd.DAY}").rglob("*.parquet"))
    anomalies = pq.read_table(part)
    stranger = anomalies.slice(0, 1).set_column(
        0, "vin", pa.array(["MAT612345NEX99999"], anomalies.schema.field("vin").type)
    )
    pq.write_table(pa.concat_tables([anomalies, stranger]), part)
    paths = reports.render_reports(data / "lake", tmp_path / "out", rd.DAY, rd.FLEET, workers=1)
    assert [p.name for p in paths] == [
        "fleet-demo.pdf",
        "fleet-demo.csv",
        f"{rd.GAP_VIN}.pdf",
        f"{rd.FLAGGED_VIN}.pdf",
    ]
    assert "MAT612345NEX99999" in pdf_text(paths[0])


def test_process_pool_gives_the_same_bytes_as_one_process(
    lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reports._vehicle_report as vr

    monkeypatch.setattr(vr, "MIN_VEHICLES_FOR_POOL", 1)
    vins = list(rd.VEHICLES)
    pooled = reports.render_vehicle_reports(lake, tmp_path / "a", rd.DAY, rd.FLEET, vins, workers=2)
    single = reports.render_vehicle_reports(lake, tmp_path / "b", rd.DAY, rd.FLEET, vins, workers=1)
    assert [p.name for p in pooled] == [f"{v}.pdf" for v in vins]
    assert [p.read_bytes() for p in pooled] == [p.read_bytes() for p in single]


def test_report_commands_write_and_print_paths(lake: Path) -> None:
    data_dir = lake.parent
    runner = CliRunner()
    res = runner.invoke(
        cli,
        ["--data-dir", str(data_dir), "report", "fleet", "--date", str(rd.DAY), "--format", "csv"],
    )
    assert res.exit_code == 0, res.output
    csv_path = data_dir / "reports" / f"date={rd.DAY}" / "fleet-demo.csv"
    assert res.output.startswith(f"wrote {csv_path} (")
    vin = "MAT612345NEX00004"
    res = runner.invoke(
        cli, ["--data-dir", str(data_dir), "report", "vehicle", vin, "--date", str(rd.DAY)]
    )
    assert res.exit_code == 0, res.output
    pdf = data_dir / "reports" / f"date={rd.DAY}" / "vehicles" / f"{vin}.pdf"
    assert res.output.startswith(f"wrote {pdf} (")
    # A vehicle without estimates still gets a report that says so.
    text = " ".join(pdf_text(pdf).split())
    assert "n/a state of health" in text
    assert "no data warranty" in text


def test_report_command_errors_are_one_line(lake: Path) -> None:
    base = ["--data-dir", str(lake.parent), "report"]
    runner = CliRunner()
    res = runner.invoke(cli, [*base, "vehicle", "WVWZZZ1JZXW000999", "--date", str(rd.DAY)])
    assert (res.exit_code, res.output) == (
        1,
        f"Error: unknown VIN WVWZZZ1JZXW000999: not in the registry and no metrics for it "
        f"on {rd.DAY}\n",
    )
    res = runner.invoke(cli, [*base, "vehicle", rd.FLAGGED_VIN, "--date", "2026-01-05"])
    assert (res.exit_code, res.output) == (
        1,
        f"Error: no metrics for fleet demo on 2026-01-05 under {lake}/metrics/vehicle_soh "
        "(run fleetbms analyze first)\n",
    )
    res = runner.invoke(cli, [*base, "fleet", "--date", "2026-01-05", "--fleet", "other"])
    assert (res.exit_code, res.output) == (
        1,
        f"Error: no metrics for fleet other on 2026-01-05 under {lake}/metrics/vehicle_soh "
        "(run fleetbms analyze first)\n",
    )
    res = runner.invoke(cli, [*base, "fleet", "--date", str(rd.DAY), "--format", "pdf,docx"])
    assert (res.exit_code, res.output) == (
        1,
        "Error: unknown report format docx; valid: pdf, csv\n",
    )
    for sub in ("fleet", "vehicle"):
        res = runner.invoke(cli, [*base, sub, "--help"])
        assert "Example: fleetbms report " in res.output


def test_readme_examples_of_report_commands_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    examples = [
        line.split()[1:] for line in readme.splitlines() if line.startswith("fleetbms report ")
    ]
    assert [e[:2] for e in examples] == [["report", "fleet"], ["report", "vehicle"]]
    monkeypatch.chdir(tmp_path)
    rd.make_lake(Path("data"))
    runner = CliRunner()
    for args in examples:
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
    out = Path("data/reports") / f"date={rd.DAY}"
    assert sorted(p.name for p in out.iterdir()) == ["fleet-demo.csv", "fleet-demo.pdf", "vehicles"]
    assert [p.name for p in (out / "vehicles").iterdir()] == [f"{rd.FLAGGED_VIN}.pdf"]


def test_soh_chart_stays_on_the_first_page_with_its_legend_under_the_axes(
    flagged_pdf: Path,
) -> None:
    first = PdfReader(flagged_pdf).pages[0]
    data = first.get_contents().get_data().decode("latin-1")  # type: ignore[union-attr]
    assert "% chart: soh_history" in data
    text = first.extract_text() or ""
    # The legend is drawn after the axis label, below it (text order follows drawing).
    assert text.index("age [years]") < text.index("capacity estimates")


def test_a_pack_without_any_soh_figure_says_so_and_charts_its_own_age(
    lake: Path, tmp_path: Path
) -> None:
    """No estimate and no fleet trend either (SoH NaN): the headline does not call the
    missing figure "the fleet's typical trend", and the SoH chart spans the vehicle's age
    (4 years) to the end of cover (8), saying why it is empty, rather than 7..9 years
    around the end of cover with nothing but the warranty line."""
    vin = "MAT612345NEX00004"
    assert rd.VEHICLES[vin][0] == "insufficient_data"
    pdf = reports.vehicle_report(lake, tmp_path / "out", vin, rd.DAY)
    page1 = PdfReader(pdf).pages[0].extract_text()
    text = " ".join(page1.split())
    assert "n/a state of health not measured yet: no capacity estimate" in text
    assert "typical trend" not in text
    assert "n/a %" not in text
    assert "no capacity estimate yet" in text
    chart = page1.split("State of health", 1)[1].split("age [years]", 1)[0]
    x_ticks = next(
        [float(t) for t in line.split()]
        for line in chart.splitlines()
        if len(line.split()) > 2 and all(t.replace(".", "").isdigit() for t in line.split())
    )
    age_years = rd._age(rd.DAY)
    assert min(x_ticks) <= age_years
    assert max(x_ticks) >= 8.0


def test_the_exposure_caption_gives_the_packs_hottest_and_names_an_outlying_sensor(
    lake: Path, tmp_path: Path
) -> None:
    """One sensor read 93.8 degC while the pack stood below 40: the caption's maximum is
    the pack's (as its hours per band), and the outlying reading is named, not hidden."""
    data = tmp_path / "data"
    shutil.copytree(lake.parent, data)
    pdf = reports.vehicle_report(data / "lake", tmp_path / "a", rd.FLAGGED_VIN, rd.DAY)
    text = " ".join(pdf_text(pdf).split())
    assert "one sensor read up to" not in text
    vd = bms.read_metrics(data / "lake", "vehicle_day")
    pack_max = max(r["pack_temp_c_max"] for r in vd.to_pylist() if r["vin"] == rd.FLAGGED_VIN)
    assert pack_max < 45.0
    rd.patch_rows(data / "lake", "vehicle_day", rd.FLAGGED_VIN, temp_c_max=93.8)
    pdf = reports.vehicle_report(data / "lake", tmp_path / "b", rd.FLAGGED_VIN, rd.DAY)
    text = " ".join(pdf_text(pdf).split())
    assert (
        f"(max {pack_max:.1f} degC; one sensor read up to 93.8 degC, far above the others)" in text
    )


def test_the_vehicle_class_is_printed_as_words(lake: Path, tmp_path: Path) -> None:
    """The registry's ``two_wheeler`` is a key, not words: the subtitle says two-wheeler."""
    data = tmp_path / "data"
    shutil.copytree(lake.parent, data)
    registry = data / "lake" / "registry" / "vehicles.parquet"
    table = pq.read_table(registry)
    rows = table.to_pylist()
    for row in rows:
        if row["vin"] == rd.FLAGGED_VIN:
            row["vehicle_class"] = "two_wheeler"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), registry)
    pdf = reports.vehicle_report(data / "lake", tmp_path / "out", rd.FLAGGED_VIN, rd.DAY)
    text = " ".join(pdf_text(pdf).split())
    assert f"fleet demo · {rd.DAY} (UTC) · two-wheeler, LFP, in service since" in text
    assert "two_wheeler" not in text


def test_the_soh_caption_names_the_projection_only_when_one_is_drawn(
    flagged_pdf: Path, lake: Path, tmp_path: Path
) -> None:
    """Cover ended (age past the end of cover): the chart draws no projection, so its
    caption names no orange projection and says why there is none."""
    text = " ".join(pdf_text(flagged_pdf).split())
    assert (
        "Grey: individual capacity estimates. Blue: the SoH fit of each day with its 90 % "
        "interval. Orange: projection to the end of warranty cover with its interval. "
        "Red dashed: warranty minimum; dotted: end of cover." in text
    )
    data = tmp_path / "data"
    shutil.copytree(lake.parent, data)
    soh = bms.read_metrics(data / "lake", "vehicle_soh", [rd.DAY]).to_pylist()
    age = float(next(r["age_years"] for r in soh if r["vin"] == rd.FLAGGED_VIN))
    rd.patch_rows(
        data / "lake",
        "warranty",
        rd.FLAGGED_VIN,
        status="out_of_coverage",
        coverage_end_years=age - 1.0,
        projected_soh_pct=None,
        projected_soh_low_pct=None,
        projected_soh_high_pct=None,
    )
    pdf = reports.vehicle_report(data / "lake", tmp_path / "out", rd.FLAGGED_VIN, rd.DAY)
    text = " ".join(pdf_text(pdf).split())
    assert (
        "Grey: individual capacity estimates. Blue: the SoH fit of each day with its 90 % "
        "interval. No projection: warranty cover has ended. Red dashed: warranty minimum." in text
    )
    assert "Orange" not in text
    assert "projection to warranty end" not in text  # nor in the chart's legend


@pytest.mark.parametrize("days_before", [45, 100])
def test_fleet_and_vehicle_reports_show_the_newest_odometer_reading(
    lake: Path, tmp_path: Path, days_before: int
) -> None:
    """A vehicle whose newest odometer reading is ``days_before`` days old (its later
    vehicle_day rows carry none, and vehicle_soh a different figure): both reports show
    that reading. The fleet report looked back 31 days and the vehicle report 90, so a
    reading 45 days old gave each report another odometer."""
    data = tmp_path / "data"
    shutil.copytree(lake.parent, data)
    vd = data / "lake" / "metrics" / "vehicle_day"
    for part in sorted(vd.glob(f"date=*/fleet={rd.FLEET}/part.parquet")):
        day = date.fromisoformat(part.parent.parent.name.removeprefix("date="))
        rd.patch_rows(data / "lake", "vehicle_day", rd.FLAGGED_VIN, day, odometer_km=None)
    old_day = rd.DAY - timedelta(days=days_before)
    old = vd / f"date={old_day}" / f"fleet={rd.FLEET}" / "part.parquet"
    old.parent.mkdir(parents=True)
    row = {"vin": rd.FLAGGED_VIN, "chemistry": "lfp", "odometer_km": 12_345.6}
    pq.write_table(pa.Table.from_pylist([row], schema=bms.METRICS_SCHEMAS["vehicle_day"]), old)
    rd.patch_rows(data / "lake", "vehicle_soh", rd.FLAGGED_VIN, odometer_km=99_999.0)
    pdf, csv_path = reports.fleet_report(data / "lake", tmp_path / "out", rd.DAY, rd.FLEET)
    with csv_path.open(newline="") as fh:
        row_csv = next(r for r in csv.DictReader(fh) if r["vin"] == rd.FLAGGED_VIN)
    assert row_csv["odometer_km"] == "12345.6"
    assert re.search(rf"{rd.FLAGGED_VIN}\n[0-9.]+ y, 12\.3k km\n", pdf_text(pdf))
    vehicle = reports.vehicle_report(data / "lake", tmp_path / "out", rd.FLAGGED_VIN, rd.DAY)
    vehicle_text = " ".join(pdf_text(vehicle).split())
    assert "12.3k km odometer" in vehicle_text
