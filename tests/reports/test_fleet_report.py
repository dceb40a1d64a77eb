"""The fleet PDF read back: pages, metadata, charts, the figures against the lake."""

from __future__ import annotations

import csv
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pypdf import PdfReader

import bms
import reports
from tests.reports import report_data as rd
from tests.reports.pdf_tools import (
    chart_names,
    chart_ops,
    ink_fraction,
    pdf_text,
    render_page,
)


@pytest.fixture(scope="module")
def fleet_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    data = tmp_path_factory.mktemp("fleet")
    lake = rd.make_lake(data)
    paths = reports.fleet_report(lake, data / "reports", rd.DAY, rd.FLEET)
    return lake, data / "reports", paths


def _metrics(lake: Path, table: str) -> dict[str, dict[str, object]]:
    path = lake / "metrics" / table / f"date={rd.DAY}" / f"fleet={rd.FLEET}" / "part.parquet"
    return {r["vin"]: r for r in pq.read_table(path).to_pylist()}


def test_fleet_report_writes_pdf_and_csv_under_the_date(fleet_run) -> None:
    _, out, paths = fleet_run
    day_dir = out / f"date={rd.DAY}"
    assert paths == [day_dir / "fleet-demo.pdf", day_dir / "fleet-demo.csv"]
    assert sorted(p.name for p in day_dir.iterdir()) == ["fleet-demo.csv", "fleet-demo.pdf"]


def test_fleet_pdf_metadata_names_title_fleet_date_and_generator(fleet_run) -> None:
    pdf = fleet_run[2][0]
    meta = PdfReader(pdf).metadata
    assert meta is not None
    assert meta.title == f"Fleet demo battery health {rd.DAY}"
    assert meta.subject == f"fleet=demo date={rd.DAY}"
    assert meta.creator == "fleetbms 0.1.0"
    assert "fleet=demo" in meta["/Keywords"]


def test_fleet_pdf_cover_page_has_the_headline_figures(fleet_run) -> None:
    pdf = fleet_run[2][0]
    reader = PdfReader(pdf)
    assert len(reader.pages) >= 3
    cover = " ".join((reader.pages[0].extract_text() or "").split())
    # 4 vehicles, 1 claim-eligible, 1 at risk, 1 new anomaly, 1 vehicle with gaps.
    for figure in (
        "4 vehicles",
        "1 claim-eligible",
        "1 at warranty risk",
        "1 new anomalies",
        "1 vehicles with data gaps",
    ):
        assert figure in cover
    soh = sorted(v[1] for v in rd.VEHICLES.values() if not math.isnan(v[1]))
    assert f"{soh[len(soh) // 2]:.1f} % median SoH" in cover


def _report_with_soh_filled_in(
    fleet_run, tmp_path: Path, soh_pct: float, *, all_vehicles: bool = False
) -> Path:
    """The fleet PDF after giving the vehicles without a capacity estimate (or, with
    ``all_vehicles``, every vehicle, then as having none) ``soh_pct`` as their SoH: the
    fleet-typical value ``vehicle_soh`` carries for them."""
    lake = tmp_path / "lake"
    shutil.copytree(fleet_run[0], lake)
    path = lake / "metrics/vehicle_soh" / f"date={rd.DAY}" / f"fleet={rd.FLEET}" / "part.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    for r in rows:
        if all_vehicles:
            r["n_estimates"] = 0
        if r["n_estimates"] == 0:
            r["soh_pct"], r["soh_low_pct"], r["soh_high_pct"] = soh_pct, soh_pct - 5, soh_pct + 5
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    return reports.fleet_report(lake, tmp_path / "reports", rd.DAY, rd.FLEET, formats="pdf")[0]


def test_fleet_pdf_cover_counts_each_vehicle_once_with_or_without_an_estimate(
    fleet_run, tmp_path: Path
) -> None:
    """A vehicle without a capacity estimate still gets a SoH from the fleet's typical
    trend (vehicle_soh with n_estimates = 0): the cover must not count it both as one
    with a SoH estimate and as one without (12 vehicles read "12 with, 1 without")."""
    pdf = _report_with_soh_filled_in(fleet_run, tmp_path, 92.0)
    cover = " ".join((PdfReader(pdf).pages[0].extract_text() or "").split())
    assert "4 vehicles 3 with a SoH estimate, 1 without" in cover, cover


def _page_stream(pdf: Path, page: int = 0) -> bytes:
    return PdfReader(pdf).pages[page].get_contents().get_data()  # type: ignore[union-attr]


def test_fleet_pdf_cover_soh_figures_are_of_the_vehicles_with_an_estimate(
    fleet_run, tmp_path: Path
) -> None:
    """The cover counts "3 with a SoH estimate, 1 without"; the median, the range and the
    histogram beside it must be of those 3, not include the fleet-typical SoH filled in
    for the one without (it moved the median and stretched the range to it)."""
    pdf = _report_with_soh_filled_in(fleet_run, tmp_path / "a", 40.0)
    cover = " ".join((PdfReader(pdf).pages[0].extract_text() or "").split())
    soh = sorted(v[1] for v in rd.VEHICLES.values() if not math.isnan(v[1]))
    assert len(soh) == 3
    assert "3 with a SoH estimate, 1 without" in cover, cover
    assert f"{soh[1]:.1f} % median SoH of the 3 with an estimate" in cover, cover
    assert f"range {soh[0]:.1f}..{soh[-1]:.1f} %" in cover, cover
    assert "40.0" not in cover
    assert "Vehicles with a SoH estimate per 1 % of SoH" in cover
    # the cover page, histogram included, is the same whatever value is filled in
    other = _report_with_soh_filled_in(fleet_run, tmp_path / "b", 99.5)
    assert _page_stream(pdf) == _page_stream(other)


def test_fleet_pdf_without_any_soh_estimate_renders_a_cover_without_figures(
    fleet_run, tmp_path: Path
) -> None:
    pdf = _report_with_soh_filled_in(fleet_run, tmp_path, 92.0, all_vehicles=True)
    reader = PdfReader(pdf)
    assert len(reader.pages) >= 3
    cover = " ".join((reader.pages[0].extract_text() or "").split())
    assert "4 vehicles 0 with a SoH estimate, 4 without" in cover, cover
    assert "median SoH no estimates yet" in cover, cover
    assert "no SoH estimates yet" in cover
    assert "92.0" not in cover


def test_fleet_pdf_table_figures_equal_the_metrics(fleet_run) -> None:
    lake, _, paths = fleet_run
    text = pdf_text(paths[0])
    soh = _metrics(lake, "vehicle_soh")
    war = _metrics(lake, "warranty")
    rows = re.findall(
        r"(MAT612345NEX\d{5})\n[\d.]+ y, [\d.]+k km\n(.*?)\n(.*?)\n(.*?)\n(.*?)\n"
        r"(.*?)\n(.*?)\n",
        text,
    )
    assert [r[0] for r in rows] == list(rd.VEHICLES)  # claim, at risk, ok... by urgency
    for vin, soh_txt, soh_range, trend, proj, proj_range, verdict in rows:
        s, w = soh[vin], war[vin]
        if math.isnan(s["soh_pct"]):
            assert (soh_txt, soh_range, proj) == ("n/a", "n/a", "n/a")
            assert verdict == "no data"
            continue
        assert soh_txt == f"{s['soh_pct']:.1f}"
        assert soh_range == f"{s['soh_low_pct']:.1f}..{s['soh_high_pct']:.1f}"
        assert proj == f"{w['projected_soh_pct']:.1f}"
        assert proj_range == (
            f"{w['projected_soh_low_pct']:.1f}..{w['projected_soh_high_pct']:.1f}"
        )
        assert verdict == {"claim_eligible": "CLAIM", "at_risk": "AT RISK", "ok": "ok"}[w["status"]]
        assert float(trend) < 0


def test_fleet_pdf_lists_anomalies_gaps_and_methodology(fleet_run) -> None:
    text = " ".join(pdf_text(fleet_run[2][0]).split())
    assert f"{rd.FLAGGED_VIN} cell {rd.FLAGGED_CELL} critical new 0.81 self_discharge_z" in text
    assert f"{rd.GAP_VIN} 144 130 14 2 70" in text  # expected, stored, missing, gaps, min
    assert "Methodology" in text
    assert "oem-8y-160k-70: OEM warranty 8 years / 160,000 km / 70 %" in text


def test_fleet_pdf_has_both_charts_with_labelled_axes(fleet_run) -> None:
    pdf = fleet_run[2][0]
    assert chart_names(pdf) == ["soh_distribution", "soh_vs_age_km"]
    assert chart_ops(pdf) > 50  # vector drawing, not an empty frame
    text = pdf_text(pdf)
    for label in (
        "state of health, SoH [%]",
        "vehicles [count]",
        "age [years]",
        "odometer [1000 km]",
        "SoH [%]",
    ):
        assert label in text


def test_fleet_pdf_rerun_is_byte_identical(fleet_run, tmp_path: Path) -> None:
    lake, _, paths = fleet_run
    again = reports.fleet_report(lake, tmp_path, rd.DAY, rd.FLEET)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


def test_fleet_pdf_first_page_renders_to_a_non_blank_image(fleet_run, tmp_path: Path) -> None:
    png = render_page(fleet_run[2][0], tmp_path, page=1)
    # Kept in the test's tmp dir for a person to look at.
    assert png.exists()
    assert 0.01 < ink_fraction(png) < 0.5


def test_fleet_report_without_metrics_for_the_date_raises(tmp_path: Path) -> None:
    lake = rd.make_lake(tmp_path, n_days=1)
    with pytest.raises(reports.ReportError, match=r"no metrics for fleet demo on 2026-01-01"):
        reports.fleet_report(lake, tmp_path / "reports", rd.DAY.replace(month=1, day=1), "demo")
    with pytest.raises(reports.ReportError, match=r"unknown report format xls"):
        reports.fleet_report(lake, tmp_path / "reports", rd.DAY, "demo", formats="pdf,xls")
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize(
    ("table", "stage"), [("metrics/warranty", "analyze"), ("anomalies", "anomalies")]
)
def test_a_damaged_stage_output_is_named_with_the_command_that_rewrites_it(
    fleet_run, tmp_path: Path, table: str, stage: str
) -> None:
    """A truncated or overwritten Parquet file (a full disk, a bad copy): one line that
    names the file and the command that computes the date again, not pyarrow's bare
    'Parquet magic bytes not found'; nothing written."""
    lake = tmp_path / "lake"
    shutil.copytree(fleet_run[0], lake)
    damaged = next((lake / table / f"date={rd.DAY}" / f"fleet={rd.FLEET}").glob("*.parquet"))
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(reports.ReportError) as err:
        reports.fleet_report(lake, tmp_path / "out", rd.DAY, rd.FLEET)
    message = str(err.value)
    assert message.startswith(f"cannot read {damaged} (")
    assert message.endswith(f"); `fleetbms {stage} --date {rd.DAY}` computes that date again")
    assert "\n" not in message
    assert not (tmp_path / "out").exists()
    if stage == "analyze":
        with pytest.raises(bms.BmsError, match=re.escape(f"cannot read {damaged} (")):
            bms.read_metrics(lake, "warranty")


def test_counts_of_stages_that_have_not_run_read_n_a_not_0(fleet_run, tmp_path: Path) -> None:
    """A date with analytics but no anomaly or reconciliation run: the headline says
    n/a (the note says why), the table's anomaly column n/a, the CSV empty fields."""
    lake = tmp_path / "lake"
    shutil.copytree(fleet_run[0], lake)
    shutil.rmtree(lake / "anomalies")
    shutil.rmtree(lake / "metrics" / "reconciliation")
    pdf, csv_path = reports.fleet_report(lake, tmp_path / "out", rd.DAY, rd.FLEET)
    cover = " ".join((PdfReader(pdf).pages[0].extract_text() or "").split())
    assert "n/a new anomalies anomaly detection has not run for this date" in cover
    assert "n/a vehicles with data gaps reconciliation has not run for this date" in cover
    assert "0 new anomalies" not in cover
    assert "0 vehicles with data gaps" not in cover
    text = pdf_text(pdf)
    rows = re.findall(
        r"(MAT612345NEX\d{5})\n.*?\n(?:ok|CLAIM|AT RISK|no data)\n(.*?)\n", text, re.S
    )
    assert sorted(vin for vin, _ in rows) == sorted(rd.VEHICLES)
    assert all(anomalies == "n/a" for _, anomalies in rows)
    with csv_path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            assert row["anomalies_new"] == row["anomalies_open"] == ""
            assert row["readings_missing"] == row["data_gaps"] == ""
    vehicle = reports.vehicle_report(lake, tmp_path / "out", rd.FLAGGED_VIN, rd.DAY)
    vtext = " ".join(pdf_text(vehicle).split())
    assert "n/a open anomalies anomaly detection has not run for this date" in vtext
    assert "Anomaly detection has not run for this date." in vtext


def test_an_anomalys_main_feature_is_one_outside_its_normal_range(
    fleet_run, tmp_path: Path
) -> None:
    """The analytics rank features by robust distance from the median, so the first can
    sit inside its normal range (drift_growth_z 4.83, normal 0.00..5.17, before drift_z
    8.05, normal -2.27..2.29, seen on a simulated fleet): the fleet table's "main feature
    (normal range)" is the first one outside it, not evidence against the flag."""
    lake = tmp_path / "lake"
    shutil.copytree(fleet_run[0], lake)
    path = lake / "anomalies" / f"date={rd.DAY}" / f"fleet={rd.FLEET}" / "part.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    inside = {
        "feature": "drift_growth_z",
        "value": 4.83,
        "unit": "-",
        "normal_low": 0.0,
        "normal_median": 0.0,
        "normal_high": 5.17,
        "distance": 9.0,
    }
    for row in rows:
        if row["vin"] == rd.FLAGGED_VIN:
            row["top_features"] = [inside, *row["top_features"]]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    pdf, _ = reports.fleet_report(lake, tmp_path / "out", rd.DAY, rd.FLEET)
    text = " ".join(pdf_text(pdf).split())
    assert (
        f"{rd.FLAGGED_VIN} cell {rd.FLAGGED_CELL} critical new 0.81 self_discharge_z -6.10 "
        "(normal -2.00..2.00)" in text
    )
    assert "drift_growth_z" not in text


def test_a_vehicle_silent_all_day_is_listed_as_silent_not_as_0_missing(
    fleet_run, tmp_path: Path
) -> None:
    """No reading stored on the date: reconciliation has no sequence numbers to count
    from (expected 0, missing 0). The data-gap table says silent, not "0 missing" beside
    the headline that counts it as a vehicle with data gaps."""
    lake = tmp_path / "lake"
    shutil.copytree(fleet_run[0], lake)
    silent = "MAT612345NEX00004"
    rd.patch_silent(lake, silent)
    pdf, _ = reports.fleet_report(lake, tmp_path / "out", rd.DAY, rd.FLEET)
    text = " ".join(pdf_text(pdf).split())
    assert "2 vehicles with data gaps" in text
    assert f"{silent} n/a 0 silent n/a whole day" in text
    assert f"{silent} 0 0 0 0" not in text
    assert "silent: no reading stored on this date" in text


def test_a_fleet_of_one_vehicle_reads_1_vehicle_not_1_vehicles(fleet_run, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(fleet_run[0], lake)
    for table in ("vehicle_soh", "warranty"):
        path = lake / "metrics" / table / f"date={rd.DAY}" / f"fleet={rd.FLEET}" / "part.parquet"
        t = pq.read_table(path)
        pq.write_table(t.filter(pa.compute.equal(t["vin"], rd.FLAGGED_VIN)), path)
    pdf, _ = reports.fleet_report(lake, tmp_path / "out", rd.DAY, rd.FLEET)
    cover = " ".join((PdfReader(pdf).pages[0].extract_text() or "").split())
    assert f"Report for {rd.DAY} (UTC) · 1 vehicle " in cover
    assert "1 new anomalies in 1 vehicle;" in cover
    assert "1 vehicle 1 with a SoH estimate, 0 without" in cover


def test_the_at_risk_headline_names_both_ways_a_vehicle_gets_there(fleet_run) -> None:
    """At risk is the 90 % interval now reaching below the minimum, or the projection at
    cover end below it (``bms.warranty_status``): the cover's note named only the
    projection, leaving a vehicle at risk by its interval now unexplained."""
    w = _metrics(fleet_run[0], "warranty")[rd.GAP_VIN]
    assert w["status"] == "at_risk"
    cover = " ".join((PdfReader(fleet_run[2][0]).pages[0].extract_text() or "").split())
    assert (
        "1 at warranty risk 90 % interval now, or projection at cover end, below the minimum"
        in cover
    )


def _text_box(pdf: Path, needle: str, page: int = 0) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the line of text starting with ``needle`` on ``page`` [pt],
    from the PDF's text and transformation matrices and Helvetica's metrics."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    found: list[tuple[float, float, float, float]] = []

    def visit(text: str, cm: list[float], tm: list[float], font: object, size: float) -> None:
        if text.startswith(needle):
            x = cm[0] * tm[4] + cm[2] * tm[5] + cm[4]
            y = cm[1] * tm[4] + cm[3] * tm[5] + cm[5]
            scale = math.hypot(tm[0], tm[1]) * math.hypot(cm[0], cm[1])
            height = size * scale
            width = stringWidth(text.strip(), "Helvetica", height)
            found.append((x, y - 0.2 * height, x + width, y + 0.75 * height))

    PdfReader(pdf).pages[page].extract_text(visitor_text=visit)
    assert len(found) == 1, found
    return found[0]


def test_the_histograms_warranty_label_sits_on_no_bar(fleet_run, tmp_path: Path) -> None:
    """The "warranty 70 %" label of the SoH histogram is drawn where no bar is: the page
    rendered, no pixel of the bars' blue lies in the label's box (with a bar at 74-75 %
    reaching the top of the plot, beside the 70 % line)."""
    from PIL import Image

    pdf = fleet_run[2][0]
    x0, y0, x1, y1 = _text_box(pdf, "warranty 70 %")
    dpi = 144
    png = render_page(pdf, tmp_path, page=1, dpi=dpi)
    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    height_pt = float(PdfReader(pdf).pages[0].mediabox.height)

    def px(v: float) -> int:
        return round(v * dpi / 72)

    box = image[px(height_pt - y1) : px(height_pt - y0), px(x0) : px(x1)]
    assert box.size
    bar_blue = np.array([0x1F, 0x5F, 0xA8])
    assert int((np.abs(box - bar_blue).sum(axis=2) < 60).sum()) == 0
    # The label is drawn (red text) in that box.
    assert int((np.abs(box - np.array([0xC0, 0x39, 0x2B])).sum(axis=2) < 120).sum()) > 0
