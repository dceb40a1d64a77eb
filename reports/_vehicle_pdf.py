"""The vehicle PDF: SoH history and projection, cell heat map, exposure, charging,
anomalies with their explanation, and the evidence behind the warranty verdict.

Only imported by ``reports._vehicle_report`` (it imports reportlab and matplotlib).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
from reportlab.platypus import Flowable, Paragraph, Spacer

from reports._inputs import (
    Anomaly,
    ShownInterval,
    VehicleData,
    VehicleRow,
    resistance_growth_determined,
)
from reports._layout import (
    CLIPPED_NOTE,
    STYLES,
    TEXT_WIDTH,
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
    vehicle_class_label,
)
from reports._vcharts import cell_heatmap, charging, exposure, soh_history, soh_history_caption


def _sum(v: VehicleData, key: str) -> float:
    a = v.usage.get(key)
    return float(np.nansum(a)) if a is not None and a.size else math.nan


def _max(v: VehicleData, key: str) -> float:
    a = v.usage.get(key)
    return float(np.nanmax(a)) if a is not None and np.isfinite(a).any() else math.nan


def _pack_max_c(v: VehicleData) -> float:
    """The pack's hottest temperature of the window (metrics before analytics-22 lack
    it: the hottest sensor's)."""
    pack = _max(v, "pack_temp_c_max")
    return pack if math.isfinite(pack) else _max(v, "temp_c_max")


def _outlier_note(v: VehicleData) -> str:
    """Where one sensor read far above the others (not counted as the pack's
    temperature), its hottest reading, so the stored value is not hidden."""
    raw = _max(v, "temp_c_max")
    pack = _pack_max_c(v)
    if math.isfinite(raw) and math.isfinite(pack) and raw > pack:
        return f"; one sensor read up to {fmt(raw, 1)} degC, far above the others"
    return ""


_RULE_TEXT = re.compile(
    r"(?P<rule>[a-z_]+)(?: (?P<where>(?:sensor|cell) \d+))?: (?P<value>\S+)(?: (?P<unit>[^\s(]+))? "
    r"\(limit (?P<limit>\S+)\)"
)
_FEATURE_TEXT = re.compile(
    r"(?P<name>\w+)=(?P<value>\S+) ?(?P<unit>\S*) \(fleet normal (?P<range>\S+)\)"
)
_MODEL_TEXT = re.compile(r"model score (?P<score>\S+) > threshold (?P<threshold>\S+)")


def explanation_text(a: Anomaly) -> str:
    """An anomaly's explanation (the ``evidence`` of the anomalies table, clauses joined
    by ``; ``) as sentences: a rule's ``sensor_stuck sensor 0: 1 (limit 1)`` reads
    "Rule sensor_stuck fired on sensor 0 (measured 1, limit 1)." (no unit, or ``-`` in
    tables written before analytics-16); a
    feature's ``name=value unit (fleet normal lo..hi)`` is left out when the feature
    table below lists it; other clauses are kept as they are."""
    listed = {f.name for f in a.features}
    out = []
    for part in (p.strip() for p in a.explanation.split("; ")):
        if not part:
            continue
        if m := _RULE_TEXT.fullmatch(part):
            unit = "" if m["unit"] in ("-", "", None) else f" {m['unit']}"
            where = f" on {m['where']}" if m["where"] else ""
            out.append(
                f"Rule {m['rule']} fired{where} (measured {m['value']}{unit}, "
                f"limit {m['limit']}{unit})."
            )
        elif m := _FEATURE_TEXT.fullmatch(part):
            if m["name"] not in listed:
                unit = f" {m['unit']}" if m["unit"] not in ("-", "") else ""
                out.append(f"{m['name']} {m['value']}{unit} (fleet normal {m['range']}{unit}).")
        elif m := _MODEL_TEXT.fullmatch(part):
            out.append(f"Model score {m['score']} above its threshold {m['threshold']}.")
        else:
            out.append(part + ("" if part.endswith(".") else "."))
    return " ".join(out)


def _anomaly_block(a: Anomaly) -> list[Flowable]:
    source = {"model": "model", "rule": "rule", "both": "model and rule"}.get(a.source, a.source)
    head = (
        f"<b>{esc(a.where)}</b>: {esc(a.severity or 'n/a')}, {esc(a.status)}, "
        f"flagged by {esc(source or 'n/a')}, score {fmt(a.score, 2)} "
        f"(threshold {fmt(a.threshold, 2)}), first seen {esc(a.first_seen or 'n/a')}, "
        f"model {esc(a.model_version or 'n/a')}"
    )
    out: list[Flowable] = [Paragraph(head, STYLES["body"])]
    if a.rules:
        out.append(Paragraph(f"Rules: {esc(', '.join(a.rules))}", STYLES["small"]))
    explanation = explanation_text(a)
    if explanation:
        out.append(Paragraph(esc(explanation), STYLES["small"]))
    if a.features:
        out.append(
            data_table(
                ["feature [unit]", "value", "fleet normal range"],
                [
                    [
                        f"{f.name} [{f.unit}]" if f.unit else f.name,
                        fmt(f.value, 3),
                        fmt_range(f.normal_low, f.normal_high, 3),
                    ]
                    for f in a.features
                ],
                [0.52, 0.18, 0.3],
            )
        )
    out.append(Spacer(1, 4))
    return out


def resistance_growth_text(r: VehicleRow, digits: int = 1) -> str:
    """The resistance growth since in service with its 90 % interval, or "not yet
    determined" with the interval where that is too wide to mean anything
    (``reports._inputs.resistance_growth_determined``)."""
    lo, hi = r.resistance_growth_low_pct, r.resistance_growth_high_pct
    if not math.isfinite(r.resistance_growth_pct):
        return "n/a"
    interval = f"90 % interval {fmt_range(lo, hi, digits)} %"
    if not resistance_growth_determined(lo, hi):
        if math.isfinite(lo) and math.isfinite(hi):
            return f"not yet determined ({interval})"
        return f"not yet determined ({fmt(r.resistance_growth_pct, digits)} %, no interval)"
    return f"{fmt(r.resistance_growth_pct, digits)} % ({interval})"


def _headline_reason(reason: str) -> str:
    """A verdict's reason for the page's headline: its first clause and its last (what
    it rests on, and what it concludes or what would give an estimate); the whole
    reason is under "Warranty evidence"."""
    clauses = reason.split("; ")
    if len(clauses) <= 2:
        return reason
    return f"{clauses[0]}; ...; {clauses[-1]} (in full under Warranty evidence)"


def _expired(v: VehicleData) -> tuple[float, float, str] | None:
    """Where an ended cover ended (age [years], odometer [km]: the warranty table's end
    of cover, ``bms.coverage_end``) and the limit that ended it (the evidence's
    ``cover_ended_by``, as the verdict's reason names it), else None (also for tables
    written before analytics-17, which do not name the limit)."""
    r = v.row
    ended_by = v.evidence.get("cover_ended_by")
    if r.warranty_status != "out_of_coverage" or not r.warranty_end_age_years < r.age_years:
        return None
    if ended_by not in ("odometer", "age"):
        return None
    return r.warranty_end_age_years, r.warranty_end_odometer_km, ended_by


def _evidence_rows(v: VehicleData) -> list[list[str]]:
    r = v.row
    ev = v.evidence
    proj_low = r.projected_soh_at_warranty_end_low_pct
    proj_high = r.projected_soh_at_warranty_end_high_pct
    ended = _expired(v)
    rows = [
        ["verdict", VERDICT_LABELS.get(r.warranty_status, r.warranty_status)],
        ["reason", v.row.warranty_reason or "n/a"],
        ["policy", f"{r.warranty_policy}\n{(ev.get('policy') or {}).get('name', '')}".strip()],
        [
            "binding threshold",
            f"SoH >= {fmt(r.warranty_min_soh_pct, 0)} % until "
            f"{fmt(_num((ev.get('threshold') or {}).get('years')), 0)} years or "
            f"{fmt(_num((ev.get('threshold') or {}).get('km')), 0)} km",
        ],
        [
            "cover ends at",
            f"{fmt(r.warranty_end_age_years, 2)} years / {fmt(r.warranty_end_odometer_km, 0)} km",
        ]
        if ended is None
        else [
            "cover ended at",
            f"about {ended[0]:.2f} years / {ended[1]:.0f} km (the {ended[2]} limit; "
            "estimated at the vehicle's average km per day since in service)",
        ],
        ["age, odometer now", f"{fmt(r.age_years, 2)} years / {fmt(r.odometer_km, 0)} km"],
        [
            "SoH now [%]",
            f"{fmt(r.soh_pct, 2)} (90 %: {fmt_interval(r.soh_shown, 2)}"
            f"{_raw(r.soh_shown, r.soh_low_pct, r.soh_high_pct)}), "
            f"{r.n_capacity_estimates} capacity estimates",
        ],
        ["resistance growth since in service", resistance_growth_text(r)],
        [
            "SoH at cover end [%]",
            f"{fmt(r.projected_soh_at_warranty_end_pct, 2)} (90 %: "
            f"{fmt_interval(r.projected_shown, 2)}"
            f"{_raw(r.projected_shown, proj_low, proj_high)})"
            if ended is None
            else "n/a: cover has ended",
        ],
    ]
    fit = ev.get("fit")
    if isinstance(fit, dict):
        # the evidence's b multiplies age^p with its sign (negative: fade)
        trend = (
            f"SoH = {fmt(_num(fit.get('a')), 2)} {_signed(_num(fit.get('b')), 3)} "
            f"\u00d7 age^{fmt(_num(fit.get('exponent')), 2)}, "
            f"scale {fmt(_num(fit.get('scale')), 2)}"
        )
        shift = _num(fit.get("shift"))
        if math.isfinite(shift) and shift != 0.0:
            # the recent estimates stood clearly off the power law (bms.recent_level_shift)
            trend += (
                f" {_signed(shift, 2)} (\u00b1 {fmt(_num(fit.get('shift_sigma')), 2)}): the "
                "level of the recent estimates, clearly off the power law"
            )
        rows.append(["trend fit", trend])
    usage = ev.get("usage") or {}
    limits = ev.get("usage_limits") or {}
    for key, lim_key in (
        ("over_temp_events", "max_over_temp_events"),
        ("dc_fast_share", "max_dc_fast_share"),
        ("deep_discharges", "max_deep_discharges"),
    ):
        if key in usage:
            lim = limits.get(lim_key)
            rows.append(
                [
                    key.replace("_", " "),
                    # a share to 3 digits (it is a float of many), counts as they are
                    f"{fmt(_num(usage[key]), 3) if isinstance(usage[key], float) else usage[key]}"
                    f" (limit {lim if lim is not None else 'none'})",
                ]
            )
    rows.append(["usage flags", r.usage_flags or "none"])
    rows.append(["model", str(ev.get("model_version") or "n/a")])
    return rows


def _raw(shown: ShownInterval, low: float, high: float) -> str:
    """``; fit: low..high`` when a shown interval was clipped (the evidence keeps the
    fit's own bounds), else nothing."""
    return f"; fit: {fmt_range(low, high, 2)}" if shown.clipped else ""


def _signed(value: float, digits: int) -> str:
    """``+ 1.23`` or ``\u2212 1.23`` (a minus sign, not a hyphen), ``+ n/a``: a term of a
    formula after the one before it."""
    if math.isfinite(value) and value < 0:
        return f"\u2212 {fmt(-value, digits)}"
    return f"+ {fmt(value, digits)}"


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def vehicle_pdf(v: VehicleData) -> bytes:
    """One vehicle's report as PDF bytes (deterministic for the same data)."""
    r = v.row
    day = v.day.isoformat()
    about = ", ".join(
        x
        for x in (
            vehicle_class_label(r.vehicle_class),
            r.chemistry.upper(),
            f"in service since {r.in_service_date}" if r.in_service_date else "",
        )
        if x
    )
    story: list[Flowable] = [
        Paragraph(f"Vehicle {esc(r.vin)}", STYLES["title"]),
        Paragraph(
            f"fleet {esc(v.fleet)} &middot; {day} (UTC) &middot; {esc(about)}", STYLES["subtitle"]
        ),
    ]
    verdict = VERDICT_LABELS.get(r.warranty_status, r.warranty_status)
    ended = _expired(v)
    story.append(
        headline_table(
            [
                (
                    fmt(r.soh_pct, 1, " %"),
                    "state of health",
                    f"90 %: {fmt_interval(r.soh_shown)} %"
                    if r.n_capacity_estimates
                    else f"not measured yet: the fleet's typical trend; where its measured "
                    f"vehicles stand: {fmt_interval(r.soh_shown)} %"
                    if math.isfinite(r.soh_pct)
                    # no figure at all: nothing is shown, so there is no trend to name
                    else "not measured yet: no capacity estimate",
                ),
                (verdict, "warranty", _headline_reason(v.row.warranty_reason or "")),
                (
                    fmt(r.projected_soh_at_warranty_end_pct, 1, " %"),
                    "SoH at warranty end",
                    f"90 %: {fmt_interval(r.projected_shown)} % at "
                    f"{fmt(r.warranty_end_age_years, 1)} years"
                    if math.isfinite(r.projected_soh_at_warranty_end_pct)
                    else f"no projection; cover ends at {fmt(r.warranty_end_age_years, 1)} years",
                )
                if ended is None
                else (
                    "ended",
                    "warranty cover",
                    f"{ended[2]} limit reached at about {ended[0]:.1f} years / {ended[1]:.0f} km",
                ),
                (
                    "n/a" if r.anomalies_open is None else str(r.anomalies_open),
                    "open anomalies",
                    "anomaly detection has not run for this date"
                    if r.anomalies_open is None
                    else (f"{r.anomalies_new} new today" if r.anomalies_open else "none"),
                ),
                (
                    fmt(r.soh_trend_pct_per_year, 2),
                    "SoH trend to cover end [%/year]",
                    f"resistance growth {resistance_growth_text(r)}",
                ),
                (
                    fmt(r.odometer_km / 1000, 1, "k km"),
                    "odometer",
                    f"age {fmt(r.age_years, 2)} years",
                ),
            ]
        )
    )
    if r.soh_shown.clipped or r.projected_shown.clipped:
        story.append(Paragraph(esc(CLIPPED_NOTE), STYLES["small"]))
    win = "today" if v.window_days == 1 else f"last {plural(v.window_days, 'day')}"
    story.append(
        chart(
            soh_history(v, TEXT_WIDTH),
            "soh_history",
            soh_history_caption(v),
            heading="State of health",
        )
    )
    story.append(
        chart(
            cell_heatmap(v, TEXT_WIDTH),
            "cell_heatmap",
            f"Each cell's voltage at rest minus the pack median, {win}. A cell drifting "
            "blue (low) day after day discharges faster than its neighbours; grey: no "
            "rest reading that day. Arrows mark cells with an anomaly flag.",
            heading="Cell voltage balance",
        )
    )
    story.append(
        chart(
            exposure(v, TEXT_WIDTH),
            "exposure",
            f"Hours per band of the pack's hottest temperature and of the state of "
            f"charge, {win} (max {fmt(_pack_max_c(v), 1)} degC{_outlier_note(v)}).",
            heading="Temperature and state-of-charge exposure",
        )
    )
    charged = _sum(v, "ah_charged")
    dc = _sum(v, "ah_charged_dc")
    share = dc / charged if charged and math.isfinite(charged) and charged > 0 else math.nan
    story.append(
        chart(
            charging(v, TEXT_WIDTH),
            "charging",
            f"Charge put in per day, {win}: {fmt(charged, 0)} Ah in total, DC fast "
            f"{fmt(100 * share, 1)} %, {fmt(_sum(v, 'equivalent_full_cycles'), 1)} "
            "equivalent full cycles, max charge C-rate "
            f"{fmt(_max(v, 'max_charge_c_rate'), 2)}.",
            heading="Charging behaviour",
        )
    )
    story.append(Paragraph("Anomalies", STYLES["h1"]))
    if r.anomalies_open is None:
        story.append(Paragraph("Anomaly detection has not run for this date.", STYLES["body"]))
    elif not v.anomalies:
        story.append(Paragraph("No anomaly flagged on this date.", STYLES["body"]))
    for a in v.anomalies:
        story.extend(_anomaly_block(a))
    story.append(Paragraph("Warranty evidence", STYLES["h1"]))
    story.append(data_table(["item", "value"], _evidence_rows(v), [0.3, 0.7], font_size=9))
    story.append(Spacer(1, 6))
    story.append(Paragraph(f"Generated by {esc(generator_version())}.", STYLES["small"]))
    return build_pdf(
        story,
        title=f"Vehicle {r.vin} battery health {day}",
        subject=f"fleet={v.fleet} vin={r.vin} date={day}",
        keywords=["fleetbms", "vehicle report", f"fleet={v.fleet}", f"vin={r.vin}", f"date={day}"],
        footer=f"{r.vin} - fleet {v.fleet} - {day}",
    )
