"""The data dictionary and methodology record of an audit bundle.

The dictionary is built from the tables actually exported, so it follows the analytics
jobs as they change. For each column it takes, in order of preference:

1. Parquet field metadata written by the producing job: ``unit`` and ``description``
   (the way for a job to document its columns exactly);
2. this module's catalogue of every column of the tables the pipeline exports
   (``COLUMNS``: unit and meaning, in the wording of ``docs/lake.md``);
3. for a column it does not list: the project's common column names
   (``COLUMN_MEANINGS``) and the unit suffix of the name (``soh_pct`` -> %,
   ``temp_c_max`` -> degC, ``drift_mv_per_day`` -> mV/d), the project's naming rule.
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
    "metrics/capacity": (
        "One row per capacity estimate: charge counted between two points of known state of "
        "charge (rested open-circuit voltage or, for LFP, a constant-current charge step)."
    ),
    "metrics/resistance": (
        "Internal resistance per vehicle and day from voltage steps over current steps."
    ),
    "metrics/cell_day": (
        "One row per cell, vehicle and day: rest-voltage deviation, drift, sag, resistance."
    ),
    "metrics/vehicle_soh": "State of health per vehicle from a robust fit, with uncertainty.",
    "metrics/warranty": "Warranty verdict per vehicle with policy, thresholds and projection.",
    "metrics/reconciliation": (
        "One row per vehicle and day: readings expected from the sequence numbers against "
        "readings received, stored, duplicated, missing, quarantined and late."
    ),
    "metrics/reconciliation_gaps": (
        "One row per gap in a vehicle's sequence numbers on the day: the missing range and "
        "the readings around it."
    ),
    "anomalies": "Anomaly flags with their evidence, score, threshold and model version.",
}

#: Meaning of column names the project uses across tables, for a column of a table that
#: ``COLUMNS`` does not list (a table a later job adds, before it is catalogued).
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


#: Units of the catalogue besides physical ones: a number of things, and a number
#: without dimension (a share 0..1, a ratio, an index, a score).
COUNT = "count"
DIMENSIONLESS = "-"

_VIN = "vehicle pseudonym: psn_ + 24 hex digits of HMAC-SHA256(fleet key, VIN)"
_CHEMISTRY = "cell chemistry from the registry (nmc, lfp)"
_SOH_LOW = (
    "lower bound of the 90 % interval of soh_pct (the fit's, not clipped; estimates of one "
    "week count as one group sharing an error)"
)
_SOH_HIGH = (
    "upper bound of the 90 % interval of soh_pct (the fit's, not clipped: it can exceed "
    "100 % when few estimates are known)"
)
_BAND = (
    "hours the pack's hottest temperature was {band} that day (the hottest sensor, unless it "
    "reads more than analytics.over_temp_spread_c above the mean of the others, then that "
    "mean; three sensors at least)"
)

#: Unit and meaning of every column of the exported tables: ``{table key: {column: (unit,
#: meaning)}}``, in the order of the producing job's schema (``bms.METRICS_SCHEMAS``,
#: ``bms.ANOMALIES_SCHEMA``, the nightly's reconciliation schemas), the wording of
#: ``docs/lake.md``. Unit None: not a number (text, date, time, flag, list of text).
#: A column added to a job is added here too: ``tests/reports/test_audit_dictionary.py``
#: fails on an exported column without a meaning, or a numeric one without a unit.
COLUMNS: dict[str, dict[str, tuple[str | None, str]]] = {
    "metrics/vehicle_day": {
        "vin": (None, _VIN),
        "chemistry": (None, _CHEMISTRY),
        "n_readings": (COUNT, "readings of the day, duplicates of a (vin, seq) removed"),
        "duplicates_dropped": (
            COUNT,
            "rows of the day's telemetry dropped as duplicates of a (vin, seq) already counted",
        ),
        "flagged_readings": (
            COUNT,
            "readings with a quality flag set (quality != 0, bits of bms.Quality)",
        ),
        "first_ts": (None, "UTC time of the day's first reading"),
        "last_ts": (None, "UTC time of the day's last reading"),
        "covered_hours": (
            "h",
            "time covered by the intervals between readings ending that day: the first "
            "begins at the reading before, which may be the evening before, so a day "
            "reporting throughout holds 24 h plus up to one interval; gaps not counted",
        ),
        "gaps": (
            COUNT,
            "intervals between two readings longer than analytics.max_gap_s: data gaps, not "
            "counted in the day's times, charge and energy",
        ),
        "distance_km": (
            "km",
            "distance driven that day: the day's last odometer reading minus the one before "
            "the day (or the day's first), at least 0",
        ),
        "odometer_km": ("km", "vehicle odometer at the day's last reading"),
        "ah_charged": (
            "Ah",
            "charge into the battery that day, counted sample-and-hold, as measured "
            "(current-sensor offset included)",
        ),
        "ah_discharged": (
            "Ah",
            "charge out of the battery that day, counted sample-and-hold, as measured "
            "(current-sensor offset included)",
        ),
        "kwh_charged": ("kWh", "energy into the battery that day, as measured"),
        "kwh_discharged": ("kWh", "energy out of the battery that day, as measured"),
        "equivalent_full_cycles": (
            DIMENSIONLESS,
            "equivalent full cycles that day: (Ah charged + Ah discharged) / (2 x rated Ah)",
        ),
        "ah_charged_dc": ("Ah", "charge put in by DC fast charging that day"),
        "dc_fast_share": (
            DIMENSIONLESS,
            "share of the day's charged Ah put in by DC fast charging, 0..1 (empty: nothing "
            "charged)",
        ),
        "hours_soc_above_90": ("h", "hours at a state of charge above 90 % that day"),
        "hours_soc_below_10": ("h", "hours at a state of charge below 10 % that day"),
        "soc_min_pct": ("%", "lowest state of charge the BMS reported that day"),
        "soc_max_pct": ("%", "highest state of charge the BMS reported that day"),
        "hours_temp_below_0c": ("h", _BAND.format(band="below 0 degC")),
        "hours_temp_0_15c": ("h", _BAND.format(band="from 0 to 15 degC")),
        "hours_temp_15_25c": ("h", _BAND.format(band="from 15 to 25 degC")),
        "hours_temp_25_35c": ("h", _BAND.format(band="from 25 to 35 degC")),
        "hours_temp_35_45c": ("h", _BAND.format(band="from 35 to 45 degC")),
        "hours_temp_above_45c": ("h", _BAND.format(band="45 degC or above")),
        "temp_c_max": ("degC", "hottest reading of any temperature sensor that day, as stored"),
        "pack_temp_c_max": (
            "degC",
            "the pack's hottest temperature that day, as for the temperature bands",
        ),
        "temp_c_min": ("degC", "coldest reading of any temperature sensor that day"),
        "max_c_rate": (
            "1/h",
            "largest current of the day in either direction over the rated capacity (C-rate)",
        ),
        "max_charge_c_rate": ("1/h", "largest charging current of the day over the rated capacity"),
        "max_discharge_c_rate": (
            "1/h",
            "largest discharging current of the day over the rated capacity",
        ),
        "rest_periods": (COUNT, "rests of at least analytics.rest_min_s that ended that day"),
        "rest_hours": ("h", "hours at rest that day"),
        "over_temp_events": (
            COUNT,
            "over-temperature events that day: the hottest sensor crossing "
            "analytics.over_temp_c while the sensors' mean is within "
            "analytics.over_temp_spread_c of it (a single sensor far above the rest is not "
            "counted)",
        ),
        "deep_discharges": (
            COUNT,
            "deep discharges that day: a reading below analytics.deep_discharge_soc_pct "
            "state of charge after one at or above it",
        ),
        "rest_current_median_a": (
            "A",
            "median current measured at rest that day (current-sensor offset evidence)",
        ),
        "rest_current_mad_a": (
            "A",
            "median absolute deviation of the current measured at rest that day",
        ),
        "rest_readings": (COUNT, "readings at rest behind the two rest-current figures"),
        "bms_soh_pct": (
            "%",
            "the BMS's own state-of-health figure at the day's last reading, recorded for "
            "comparison only",
        ),
        "bms_cycle_count": (COUNT, "the BMS's cycle counter at the day's last reading"),
    },
    "metrics/capacity": {
        "vin": (None, _VIN),
        "chemistry": (None, _CHEMISTRY),
        "start_ts": (None, "UTC time of the estimate's first state-of-charge point"),
        "end_ts": (
            None,
            "UTC time of the estimate's second state-of-charge point (may lie on another day "
            "than the first)",
        ),
        "soc_start_pct": (
            "%",
            "state of charge at the first point: from the cells' rested open-circuit voltage "
            "(LFP hysteresis branch removed) or from a charge-step fit",
        ),
        "soc_end_pct": ("%", "state of charge at the second point, as soc_start_pct"),
        "ocv_start_v": (
            "V",
            "mean cell open-circuit voltage at the first point (the OCV curve's value at a "
            "charge-step point)",
        ),
        "ocv_end_v": ("V", "mean cell open-circuit voltage at the second point"),
        "rest_start_h": ("h", "length of the rest before the first point (0 at a charge step)"),
        "rest_end_h": ("h", "length of the rest before the second point (0 at a charge step)"),
        "start_anchor": (
            None,
            "what fixed the first point: rest (end of a rest of at least analytics.rest_min_s, "
            "or of analytics.rest_relax_min_s with its voltage relaxation extrapolated) or "
            "charge_step (an LFP constant-current charge across the 70-82 % step of its OCV "
            "curve)",
        ),
        "end_anchor": (None, "what fixed the second point, as start_anchor"),
        "charge_ah": (
            "Ah",
            "charge counted between the two points, current-sensor offset corrected, "
            "positive into the battery",
        ),
        "current_offset_a": ("A", "current-sensor offset removed from the charge counted"),
        "duration_h": ("h", "time between the two points"),
        "temp_c": (
            "degC",
            "pack temperature of the estimate: mean of the two points' (25 degC where unknown)",
        ),
        "capacity_ah": (
            "Ah",
            "usable capacity of the weakest cell: the mean cell's times the least smoothed "
            "capacity ratio of the cells, what a leak drained between the points given back",
        ),
        "rated_capacity_ah": ("Ah", "rated (nameplate) pack capacity from the registry"),
        "soh_pct": ("%", "state of health of this estimate: capacity_ah / rated_capacity_ah"),
        "rel_sigma": (
            DIMENSIONLESS,
            "relative one-sigma uncertainty of the estimate (SoC window, offset drift, "
            "temperature)",
        ),
        "weight": (DIMENSIONLESS, "weight of the estimate in the SoH trend fit: 1 / rel_sigma^2"),
        "bms_soh_pct": (
            "%",
            "the BMS's own state-of-health figure at the second point, for comparison only",
        ),
    },
    "metrics/resistance": {
        "vin": (None, _VIN),
        "chemistry": (None, _CHEMISTRY),
        "n_steps": (
            COUNT,
            "current steps out of rest behind the day's figures (20-100 % SoC, every cell "
            "resting above the OCV of 20 %)",
        ),
        "delay_s": ("s", "median time from a step's rested reading to its loaded reading"),
        "temp_c": (
            "degC",
            "median temperature over the steps (a step's: the median of its sensors, leaving "
            "out one that jumped more than 2 K or reads outside -40..90 degC)",
        ),
        "soc_pct": ("%", "median state of charge over the steps"),
        "resistance_mohm": (
            "mOhm",
            "pack internal DC resistance as measured: median over the steps of the voltage "
            "step over the current step",
        ),
        "resistance_mohm_25c": (
            "mOhm",
            "pack internal DC resistance at reference_temp_c: cells Arrhenius-normalised, "
            "interconnects as measured",
        ),
        "resistance_sigma_mohm": ("mOhm", "one-sigma uncertainty of resistance_mohm_25c"),
        "cells_mohm_25c": (
            "mOhm",
            "the cells' share of resistance_mohm_25c: sum of the cells' voltage steps over the "
            "current step, median over the steps",
        ),
        "cells_sigma_mohm": ("mOhm", "one-sigma uncertainty of cells_mohm_25c"),
        "interconnect_mohm": (
            "mOhm",
            "the interconnects' share: pack minus cells, mean over the steps (coarse, from the "
            "pack voltage)",
        ),
        "interconnect_sigma_mohm": ("mOhm", "one-sigma uncertainty of interconnect_mohm"),
        "reference_temp_c": (
            "degC",
            "temperature the _25c figures are referred to (analytics.reference_temp_c)",
        ),
        "cell_resistance_mohm_25c": (
            "mOhm",
            "each cell's resistance at reference_temp_c, list by cell position (0-based)",
        ),
    },
    "metrics/cell_day": {
        "vin": (None, _VIN),
        "cell": (DIMENSIONLESS, "cell position in the pack, 0-based"),
        "n_cells": (COUNT, "cells in series in the pack"),
        "rest_dev_mv": (
            "mV",
            "the cell's voltage minus the pack median at the ends of rests, mean over the day",
        ),
        "n_rest": (COUNT, "rest ends behind rest_dev_mv"),
        "self_discharge_mv_per_day": (
            "mV/d",
            "drift of the cell's rest deviation over rests, per day (negative: the cell loses "
            "charge faster than its pack)",
        ),
        "self_discharge_hours": ("h", "hours of rest over which that drift was measured"),
        "sag_mv": (
            "mV",
            "extra deviation under load: the cell's voltage minus the pack median under load, "
            "mean, minus rest_dev_mv",
        ),
        "n_load": (COUNT, "readings under load behind sag_mv"),
        "resistance_mohm": (
            "mOhm",
            "the cell's resistance: median over the day's current steps of its voltage step "
            "over the current step",
        ),
        "resistance_mohm_25c": (
            "mOhm",
            "the cell's resistance at 25 degC (Arrhenius-normalised)",
        ),
        "resistance_dev_pct": (
            "%",
            "the cell's resistance against the pack's median cell (median over the steps)",
        ),
        "n_steps": (COUNT, "current steps behind the cell's resistance"),
        "temp_dev_c": (
            "degC",
            "the cell's temperature sensor minus the mean of all sensors, mean over the day "
            "(cell i reads sensor floor(i x n_temps / n_cells))",
        ),
        "min_cell_share": (
            DIMENSIONLESS,
            "share of the day's readings in which the cell was the lowest, 0..1",
        ),
        "max_cell_share": (
            DIMENSIONLESS,
            "share of the day's readings in which the cell was the highest, 0..1",
        ),
    },
    "metrics/vehicle_soh": {
        "vin": (None, _VIN),
        "chemistry": (None, _CHEMISTRY),
        "has_data_today": (None, "true if the vehicle sent telemetry on the date"),
        "age_years": (
            "a",
            "age since the in-service date of the registry (else since the first reading)",
        ),
        "odometer_km": ("km", "newest odometer reading up to the date"),
        "km_per_day": (
            "km/d",
            "mean distance per day: odometer change over the span of the readings (14 days "
            "at least), else odometer over age",
        ),
        "n_estimates": (
            COUNT,
            "capacity estimates in the SoH trend fit (0: the fleet's typical trend for the "
            "chemistry is shown, and the warranty says insufficient_data)",
        ),
        "soh_pct": (
            "%",
            "state of health on the date: the robust trend of the capacity estimates "
            "(usable capacity as a share of rated capacity)",
        ),
        "soh_low_pct": ("%", _SOH_LOW),
        "soh_high_pct": ("%", _SOH_HIGH),
        "fade_exponent": (
            DIMENSIONLESS,
            "exponent p of the trend soh = new - k t^p + shift, t the age in years (0.75 NMC, "
            "0.5 LFP)",
        ),
        "soh_new_pct": ("%", "new: the trend's SoH at age 0"),
        "fade_pct_per_year_pow": ("%/a^p", "k: the trend's fade coefficient"),
        "fit_scale": (
            DIMENSIONLESS,
            "robust residual scale of the trend fit in units of the estimates' stated sigmas "
            "(1 = as stated)",
        ),
        "soh_shift_pct": (
            "%",
            "shift: 0 unless the estimates within analytics.soh_recent_days of the newest "
            "stand more than 3 sigma off the power law (as after a cell's fast fade), then "
            "their mean offset, added to the trend now and in its projection",
        ),
        "n_resistance_days": ("d", "days with a resistance estimate in the resistance trend"),
        "resistance_mohm_25c": (
            "mOhm",
            "pack internal DC resistance at 25 degC on the date, from the resistance trend",
        ),
        "resistance_growth_pct": (
            "%",
            "growth of the pack's internal resistance since in service: the cells' share "
            "trended with a power law (plus one upward step where that fits clearly better), "
            "the interconnects' share constant",
        ),
        "resistance_growth_low_pct": (
            "%",
            "lower bound of the 90 % interval of resistance_growth_pct",
        ),
        "resistance_growth_high_pct": (
            "%",
            "upper bound of the 90 % interval of resistance_growth_pct",
        ),
        "bms_soh_pct": (
            "%",
            "the BMS's own state-of-health figure at the newest reading, for comparison only",
        ),
        "policy_id": (None, "warranty policy applied (preset id or policy file id)"),
        "horizon_years": (
            "a",
            "age at which the cover of the policy's last threshold ends for this vehicle "
            "(its age limit, or its odometer limit reached at km_per_day, whichever first)",
        ),
        "horizon_km": ("km", "odometer at which that cover ends"),
        "projected_soh_pct": ("%", "the SoH trend projected to horizon_years"),
        "projected_soh_low_pct": (
            "%",
            "lower bound of the 90 % interval of projected_soh_pct",
        ),
        "projected_soh_high_pct": (
            "%",
            "upper bound of the 90 % interval of projected_soh_pct",
        ),
    },
    "metrics/warranty": {
        "vin": (None, _VIN),
        "policy_id": (None, "warranty policy applied (preset id or policy file id)"),
        "status": (
            None,
            "verdict: ok, at_risk, claim_eligible, out_of_coverage or insufficient_data (no "
            "capacity estimate, or the newest older than analytics.max_evidence_age_days, "
            "unless the use since bounds the ageing)",
        ),
        "reason": (
            None,
            "why the verdict was given; for insufficient_data also what the use since the "
            "newest estimate lacked and what use would give an estimate",
        ),
        "threshold_min_soh_pct": ("%", "minimum SoH of the binding threshold of the policy"),
        "threshold_years": ("a", "cover length of the binding threshold"),
        "threshold_km": ("km", "cover distance of the binding threshold"),
        "coverage_end_years": (
            "a",
            "age at which the binding threshold's cover ends for this vehicle (its age limit, "
            "or its odometer limit reached at km_per_day, whichever first)",
        ),
        "coverage_end_km": ("km", "odometer at which the binding threshold's cover ends"),
        "age_years": (
            "a",
            "age since the in-service date of the registry (else since the first reading)",
        ),
        "odometer_km": ("km", "newest odometer reading up to the date"),
        "km_per_day": ("km/d", "mean distance per day, as in vehicle_soh"),
        "soh_pct": ("%", "state of health on the date, as in vehicle_soh"),
        "soh_low_pct": ("%", _SOH_LOW),
        "soh_high_pct": ("%", _SOH_HIGH),
        "projected_soh_pct": (
            "%",
            "the SoH trend at the end of the binding threshold's cover; for an ok on stale "
            "evidence read at the stress-equivalent age, so it can differ from "
            "vehicle_soh.projected_soh_pct",
        ),
        "projected_soh_low_pct": (
            "%",
            "lower bound of the 90 % interval of projected_soh_pct",
        ),
        "projected_soh_high_pct": (
            "%",
            "upper bound of the 90 % interval of projected_soh_pct",
        ),
        "over_temp_events": (COUNT, "over-temperature events since the data began"),
        "dc_fast_share": (
            DIMENSIONLESS,
            "share of the charged Ah put in by DC fast charging since the data began, 0..1",
        ),
        "deep_discharges": (COUNT, "deep discharges since the data began"),
        "usage_flags": (None, "usage limits of the policy breached (list of limit names)"),
        "evidence": (
            None,
            "readings, metrics and thresholds behind the verdict (JSON: policy, threshold, "
            "cover_ended_by, fit, soh, use and SoC since the newest estimate, usage, dates; a "
            "non-finite figure is null)",
        ),
        "model_version": (None, "version of the analytics model that gave the verdict"),
    },
    "metrics/reconciliation": {
        "vin": (None, _VIN),
        "seq_first": (
            DIMENSIONLESS,
            "first sequence number stored on the day (empty for a registered vehicle that "
            "sent nothing)",
        ),
        "seq_last": (DIMENSIONLESS, "last sequence number stored on the day (empty: nothing sent)"),
        "ts_first": (None, "UTC time of the day's first stored reading (empty: nothing sent)"),
        "ts_last": (None, "UTC time of the day's last stored reading (empty: nothing sent)"),
        "readings_expected": (
            COUNT,
            "readings expected from the sequence numbers: seq_last - seq_first + 1 (0 for a "
            "vehicle that sent nothing: unknown, not none)",
        ),
        "readings_received": (COUNT, "readings received, duplicates included"),
        "readings_stored": (COUNT, "readings stored, one per (vin, seq)"),
        "duplicates_removed": (COUNT, "duplicate readings removed by compaction"),
        "readings_missing": (
            COUNT,
            "sequence numbers between seq_first and seq_last never received: "
            "readings_expected - readings_stored",
        ),
        "readings_quarantined": (
            COUNT,
            "quarantine rows (JSON dumps included) of the receive date whose topic names the "
            "vehicle",
        ),
        "readings_late": (
            COUNT,
            "readings received more than nightly.late_after_s after their own time",
        ),
        "readings_flagged": (COUNT, "readings with a quality flag set (quality != 0)"),
        "gap_count": (COUNT, "gaps in the sequence numbers (rows of reconciliation_gaps)"),
        "longest_gap_s": ("s", "longest time between the readings around a gap"),
    },
    "metrics/reconciliation_gaps": {
        "vin": (None, _VIN),
        "seq_from": (DIMENSIONLESS, "first missing sequence number of the gap"),
        "seq_to": (DIMENSIONLESS, "last missing sequence number of the gap (inclusive)"),
        "readings_missing": (COUNT, "readings missing in the gap: seq_to - seq_from + 1"),
        "ts_before": (None, "UTC time of the stored reading before the gap"),
        "ts_after": (None, "UTC time of the stored reading after the gap"),
        "gap_s": ("s", "time between the readings around the gap"),
    },
    "anomalies": {
        "vin": (None, _VIN),
        "cell": (DIMENSIONLESS, "cell the flag is about, 0-based; -1 = pack-level"),
        "sensor": (
            DIMENSIONLESS,
            "temperature sensor the flag is about, 0-based; -1 = none",
        ),
        "date": (None, "UTC event date the row describes"),
        "status": (
            None,
            "new the first day; ongoing while flagged, and until quiet on anomaly.clear_days "
            "days with the vehicle's data; cleared once, on the last of those days",
        ),
        "severity": (None, "warning, or critical (a rule's critical level)"),
        "source": (None, "what raised the flag: model, rule or both"),
        "score": (
            DIMENSIONLESS,
            "isolation-forest score s in (0, 1] of the vehicle-day, higher = more anomalous "
            "(Liu et al. 2008); empty before the first model",
        ),
        "threshold": (
            DIMENSIONLESS,
            "the model's score threshold: median + anomaly.threshold_sigmas robust sigmas of "
            "its training scores",
        ),
        "rules": (None, "ids of the physical rules that fired (bms._anomaly_rules.RULES)"),
        "top_features": (
            None,
            "the model features furthest from the fleet's normal range: feature, value, its "
            "unit, normal_low/normal_median/normal_high (0.5/50/99.5 % quantiles of the "
            "training rows) and distance (robust sigmas from the median)",
        ),
        "evidence": (
            None,
            "readings, rules, model score and features behind the flag, as text: clauses "
            "joined by '; ' (not JSON)",
        ),
        "model_version": (None, "model that scored the day: if-YYYYMMDD-<hash>, or rules-only"),
        "first_seen": (None, "date the flag was first raised"),
        "last_flagged": (None, "latest date the flag was raised (before it cleared)"),
    },
}


#: Meaning of a column that neither the producing job nor this module documents.
UNDOCUMENTED = "not documented by the producing job"


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
        catalogue = COLUMNS.get(key, {})
        for name, f in info.fields.items():
            known = catalogue.get(name)
            unit = known[0] if known is not None else unit_of(name)
            meaning = known[1] if known is not None else COLUMN_MEANINGS.get(name)
            columns.append(
                {
                    "name": name,
                    "type": str(f.type),
                    "nullable": f.nullable,
                    "unit": _meta(f, "unit") or unit,
                    "meaning": _meta(f, "description") or meaning or UNDOCUMENTED,
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
            "unit_values": (
                f"SI and battery units (a: year, d: day, 1/h: C-rate); {COUNT!r}: a number of "
                f"things; {DIMENSIONLESS!r}: a number without dimension (share 0..1, ratio, "
                "index, score); null: not a number (text, date, time, flag)"
            ),
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
