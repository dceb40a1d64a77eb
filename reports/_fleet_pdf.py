"""The fleet PDF: headline figures, SoH charts, the per-vehicle table, anomalies, gaps.

Only imported by ``reports._fleet_report`` (it imports reportlab and matplotlib).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from reportlab.platypus import Flowable, PageBreak, Paragraph, Spacer

from reports._charts import chart_style, finite, soh_distribution, soh_vs_age_km
from reports._inputs import Anomaly, Feature, FleetData, GapRow, VehicleRow
from reports._layout import (
    CLIPPED_NOTE,
    STYLES,
    TEXT_WIDTH,
    VERDICT_COLOURS,
    VERDICT_LABELS,
    build_pdf,
    chart,
    data_table,
    esc,
    fmt,
    fmt_interval,
    fmt_range,
    generator_version,
    headline_table,
    plural,
)

METHODOLOGY = (
    "State of health (SoH) is the usable capacity as a share of the rated capacity. Each "
    "capacity estimate is the charge counted between two rested open-circuit-voltage points "
    "(Q = dq / (z_end - z_start), SoC read off the chemistry's OCV curve; G. L. Plett, "
    "Battery Management Systems Vol. I, 2015), accepted after at least 3 h of rest "
    "(Theuerkauf & Swan 2022), or after 1 h with the rest of the voltage relaxation "
    "extrapolated (first-order relaxation model, Pei et al. 2014) and its uncertainty "
    "added, and over a wide SoC window. The pack's capacity is its weakest cell's: each "
    "cell's capacity relative to the mean cell, after giving back what a leak (an internal "
    "soft short, told apart from capacity because it grows with time, not with the charge "
    "counted) drained between the two points.",
    "The SoH shown is a robust fit of all estimates of the last two years, "
    "SoH = a - b * age^p with p = 0.75 for NMC (Schmalstieg et al. 2014) and 0.5 for LFP "
    "(Naumann et al. 2018), weighted least squares with Huber reweighting; the interval is "
    "the two-sided 90 % interval of the fit including a systematic model error. The trend is "
    "the expected SoH change per year until warranty cover ends: the projected SoH at the "
    "end of cover minus the SoH now, over the years left (the average fade rate the "
    "projection implies; n/a once cover has ended).",
    "Projected SoH at warranty end: the fit evaluated where the vehicle's cover ends (age "
    "limit, or odometer limit reached at the vehicle's own km per day, whichever comes "
    "first). Verdicts: CLAIM = SoH now below the warranty minimum within cover; AT RISK = "
    "the lower 90 % bound now, or the projection at warranty end, is below the minimum; "
    "ok = neither; expired = out of cover; no data = no capacity estimate yet.",
    "Anomalies come from an isolation forest over per-cell features (rest-voltage deviation "
    "from the pack median, self-discharge, voltage sag, temperature deviation); each flag "
    "lists the features furthest outside their normal range. Data gaps compare the readings "
    "expected from the vehicles' sequence numbers with those stored.",
)


def _verdict_cell(status: str) -> str:
    return VERDICT_LABELS.get(status, status)


def _vehicle_table_rows(rows: tuple[VehicleRow, ...]) -> tuple[list[list[str]], list[Any]]:
    body = []
    style: list[Any] = []
    for i, r in enumerate(rows, start=1):
        body.append(
            [
                f"{r.vin}\n{fmt(r.age_years, 1)} y, {fmt(r.odometer_km / 1000, 1)}k km",
                f"{fmt(r.soh_pct)}\n{fmt_interval(r.soh_shown)}",
                fmt(r.soh_trend_pct_per_year, 2),
                f"{fmt(r.projected_soh_at_warranty_end_pct)}\n{fmt_interval(r.projected_shown)}",
                _verdict_cell(r.warranty_status),
                "n/a"
                if r.anomalies_open is None
                else f"{r.anomalies_open}"
                + (f"\n({r.anomalies_new} new)" if r.anomalies_new else ""),
            ]
        )
        colour = VERDICT_COLOURS.get(r.warranty_status)
        if colour is not None:
            style.append(("BACKGROUND", (4, i), (4, i), colour))
        if r.anomalies_open:
            style.append(("BACKGROUND", (5, i), (5, i), VERDICT_COLOURS["at_risk"]))
    return body, style


def _outside_normal(f: Feature) -> bool:
    return f.value < f.normal_low or f.value > f.normal_high  # False where NaN


def _anomaly_rows(anomalies: tuple[Anomaly, ...]) -> list[list[str]]:
    out = []
    for a in anomalies:
        # The features come ranked by robust distance from the median, so the first can
        # lie inside its normal (quantile) range: the column shows the first outside it.
        top = next((f for f in a.features if _outside_normal(f)), None) or (
            a.features[0] if a.features else None
        )
        why = (
            f"{top.name} {fmt(top.value, 2)}\n"
            f"(normal {fmt_range(top.normal_low, top.normal_high, 2)})"
            if top
            else (a.explanation or "")
        )
        out.append(
            [
                f"{a.vin}\n{a.where}",
                f"{a.severity or 'n/a'}\n{a.status}",
                fmt(a.score, 2),
                why,
            ]
        )
    return out


def _gap_cells(g: GapRow) -> list[str]:
    """A data-gap row; a vehicle with no reading stored is "silent", not "0 missing"
    (reconciliation counts what is missing between stored sequence numbers)."""
    if g.readings_stored == 0:
        expected = str(g.readings_expected) if g.readings_expected else "n/a"
        return [g.vin, expected, "0", "silent", "n/a", "whole day"]
    return [
        g.vin,
        str(g.readings_expected),
        str(g.readings_stored),
        str(g.readings_missing),
        str(g.gap_count),
        fmt(g.longest_gap_s / 60, 0),
    ]


def _thresholds(data: FleetData) -> list[tuple[float, float, float]]:
    """(years, km, min SoH %) of the fleet's policies (presets), else binding ones."""
    from bms import BmsError, load_warranty_policy

    out: set[tuple[float, float, float]] = set()
    for pid in data.policies:
        try:
            policy = load_warranty_policy(pid)
        except BmsError:
            continue
        out.update((t.years, t.km, t.min_soh_pct) for t in policy.thresholds)
    if not out:
        for r in data.rows:
            if math.isfinite(r.warranty_min_soh_pct):
                out.add((math.nan, math.nan, r.warranty_min_soh_pct))
        out = {t for t in out if all(map(math.isfinite, t))}
    return sorted(out)


def fleet_pdf(data: FleetData) -> bytes:
    """The fleet report as PDF bytes (deterministic for the same data)."""
    day = data.day.isoformat()
    rows = data.rows
    claim = data.count("claim_eligible")
    risk = data.count("at_risk")
    new_vins = {a.vin for a in data.anomalies if a.status == "new"}
    # A vehicle without a capacity estimate may still carry the fleet's typical trend as
    # its SoH (vehicle_soh with n_estimates = 0): it counts as one without an estimate,
    # and the median, the range and the histogram are of the vehicles with one.
    with_estimate = [r for r in rows if r.n_capacity_estimates > 0 and math.isfinite(r.soh_pct)]
    estimated = len(with_estimate)
    soh = finite([r.soh_pct for r in with_estimate])
    story: list[Flowable] = [
        Paragraph(f"Fleet {esc(data.fleet)}: battery health", STYLES["title"]),
        Paragraph(
            f"Report for {day} (UTC) &middot; {plural(len(rows), 'vehicle')}", STYLES["subtitle"]
        ),
    ]
    median = statistics.median(soh) if soh else math.nan
    cells = [
        (
            str(len(rows)),
            "vehicle" if len(rows) == 1 else "vehicles",
            f"{estimated} with a SoH estimate, {len(rows) - estimated} without",
        ),
        (
            fmt(median, 1, " %"),
            "median SoH",
            f"of the {estimated} with an estimate; range {fmt(min(soh), 1)}..{fmt(max(soh), 1)} %"
            if soh
            else "no estimates yet",
        ),
        (str(claim), "claim-eligible", "SoH below the warranty minimum: file a claim"),
        (
            str(risk),
            "at warranty risk",
            # bms.warranty_status: either one makes a vehicle at risk
            "90 % interval now, or projection at cover end, below the minimum",
        ),
        (
            # not 0 where nothing was counted: the note says why
            str(data.new_anomalies) if data.has_anomaly_table else "n/a",
            "new anomalies",
            f"in {plural(len(new_vins), 'vehicle')}; {len(data.anomalies)} open in total"
            if data.has_anomaly_table
            else "anomaly detection has not run for this date",
        ),
        (
            str(len(data.gaps)) if data.has_reconciliation else "n/a",
            "vehicles with data gaps",
            "readings missing on this date"
            if data.has_reconciliation
            else "reconciliation has not run for this date",
        ),
    ]
    story.append(headline_table(cells))
    story.append(Spacer(1, 4))
    thresholds = _thresholds(data)
    attention = [r for r in rows if r.warranty_status in ("claim_eligible", "at_risk")]
    attention_vins = {r.vin for r in attention}
    flagged = [r for r in rows if r.anomalies_new and r.vin not in attention_vins]
    with chart_style():
        story.append(
            chart(
                soh_distribution(with_estimate, [t[2] for t in thresholds], TEXT_WIDTH),
                "soh_distribution",
                "Vehicles with a SoH estimate per 1 % of SoH; dashed: the warranty minimum SoH.",
            )
        )
        story.append(PageBreak())
        if attention or flagged:
            story.append(Paragraph("Needs attention", STYLES["h1"]))
            for r in (attention + flagged)[:12]:
                what = (
                    _verdict_cell(r.warranty_status) if r.vin in attention_vins else "new anomaly"
                )
                story.append(
                    Paragraph(
                        f"<b>{esc(r.vin)}</b> {esc(what)}: SoH {fmt(r.soh_pct)} % "
                        f"({fmt_interval(r.soh_shown)}), "
                        f"{esc(r.warranty_reason or '')}",
                        STYLES["body"],
                    )
                )
            more = len(attention) + len(flagged) - 12
            if more > 0:
                story.append(Paragraph(f"... and {more} more in the table below.", STYLES["small"]))
        story.append(
            chart(
                soh_vs_age_km(rows, thresholds, TEXT_WIDTH),
                "soh_vs_age_km",
                "Each vehicle's SoH with its 90 % interval; colour = warranty verdict "
                "(red claim, orange at risk, green ok, grey other).",
                heading="SoH against age and distance",
            )
        )
    story.append(PageBreak())
    story.append(Paragraph("Vehicles", STYLES["h1"]))
    story.append(
        Paragraph(
            "Most urgent first. SoH and projection in % with the 90 % interval below; "
            "trend: expected SoH change per year until cover ends; anomalies open (new).",
            STYLES["small"],
        )
    )
    if any(r.soh_shown.clipped or r.projected_shown.clipped for r in rows):
        story.append(Paragraph(esc(CLIPPED_NOTE), STYLES["small"]))
    body, style = _vehicle_table_rows(rows)
    story.append(
        data_table(
            [
                "vehicle\nage, odometer",
                "SoH [%]\n90 % int.",
                "trend to\ncover end\n[%/yr]",
                "at warranty\nend [%]",
                "warranty",
                "anom-\nalies",
            ],
            body,
            [0.31, 0.15, 0.11, 0.17, 0.14, 0.12],
            extra_style=style,
        )
    )
    story.append(Paragraph("Anomalies", STYLES["h1"]))
    if not data.has_anomaly_table:
        story.append(Paragraph("Anomaly detection has not run for this date.", STYLES["body"]))
    elif not data.anomalies:
        story.append(Paragraph("No open anomalies.", STYLES["body"]))
    else:
        story.append(
            data_table(
                ["vehicle, where", "severity\nstatus", "score", "main feature (normal range)"],
                _anomaly_rows(data.anomalies),
                [0.33, 0.17, 0.1, 0.4],
            )
        )
    story.append(Paragraph("Data gaps", STYLES["h1"]))
    if not data.has_reconciliation:
        story.append(Paragraph("Reconciliation has not run for this date.", STYLES["body"]))
    elif not data.gaps:
        story.append(Paragraph("No readings missing.", STYLES["body"]))
    else:
        story.append(
            data_table(
                ["vehicle", "expected", "stored", "missing", "gaps", "longest [min]"],
                [_gap_cells(g) for g in data.gaps],
                [0.34, 0.14, 0.13, 0.13, 0.1, 0.16],
            )
        )
        if any(g.readings_stored == 0 for g in data.gaps):
            story.append(
                Paragraph(
                    "silent: no reading stored on this date; the expected count comes "
                    "from the sequence numbers of stored readings, so it is unknown.",
                    STYLES["small"],
                )
            )
    story.append(Paragraph("Methodology", STYLES["h1"]))
    for text in METHODOLOGY:
        story.append(Paragraph(esc(text), STYLES["small"]))
        story.append(Spacer(1, 3))
    policies = "; ".join(f"{pid}: {name}" for pid, name in sorted(data.policies.items()))
    story.append(Paragraph(f"Warranty policies: {esc(policies or 'n/a')}.", STYLES["small"]))
    versions = ", ".join(data.model_versions) or "n/a"
    story.append(
        Paragraph(
            f"Models: {esc(versions)}. Generated by {esc(generator_version())}.",
            STYLES["small"],
        )
    )
    return build_pdf(
        story,
        title=f"Fleet {data.fleet} battery health {day}",
        subject=f"fleet={data.fleet} date={day}",
        keywords=["fleetbms", "fleet report", f"fleet={data.fleet}", f"date={day}"],
        footer=f"fleet {data.fleet} - {day}",
    )
