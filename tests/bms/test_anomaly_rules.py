"""Physical rules on hand-made feature rows: what each rule needs before it speaks."""

from __future__ import annotations

import pyarrow as pa

from bms import ANOMALY_FEATURES_SCHEMA as FEATURES_SCHEMA
from bms import RuleLimits
from bms._anomaly_rules import evaluate_rules  # the rules' pure core: not a public API


def _row(vin: str, chemistry: str, **values: object) -> dict[str, object]:
    base: dict[str, object] = {f.name: None for f in FEATURES_SCHEMA}
    base.update(vin=vin, chemistry=chemistry, has_cell_data=True, window_days=14, **values)
    return base


def _hits(rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
    features = pa.Table.from_pylist(rows, schema=FEATURES_SCHEMA)
    return [
        (h["vin"], h["rule"], h["cell"], h["severity"], h["threshold"])
        for h in evaluate_rules(features, RuleLimits()).to_pylist()
    ]


def test_spread_needs_a_real_soc_imbalance_not_a_steep_curve() -> None:
    """55 mV at rest is 5-6 % of SoC on the NMC curve, but 1.5 % at the top of the LFP
    curve (37 mV/%): a full LFP pack with a normal imbalance is not near the spread
    limit."""
    rows = [
        _row("A", "nmc", rest_dev_rel_mv=-55.0, rest_dev_cell=3, rest_dev_soc_pct=-5.5),
        _row("B", "lfp", rest_dev_rel_mv=55.0, rest_dev_cell=4, rest_dev_soc_pct=1.5),
        _row("C", "lfp", rest_dev_rel_mv=95.0, rest_dev_cell=4, rest_dev_soc_pct=2.6),
        # no readings at rest on the OCV curve: the mV share alone decides
        _row("D", "lfp", rest_dev_rel_mv=51.0, rest_dev_cell=9, rest_dev_soc_pct=None),
        _row("E", "nmc", rest_dev_rel_mv=45.0, rest_dev_cell=1, rest_dev_soc_pct=4.5),
    ]
    assert _hits(rows) == [
        ("A", "cell_spread", 3, "warning", 50.0),
        ("C", "cell_spread", 4, "critical", 50.0),
        ("D", "cell_spread", 9, "warning", 50.0),
    ]


def test_deviation_growth_needs_the_soc_offset_to_grow_too() -> None:
    """A fixed 3.5 % imbalance read at rest SoCs of 76-88 % swings between ~15 and ~35 mV
    on the NMC curve: a trend in mV alone is not a cell drifting away."""
    common = {
        "rest_dev_rel_mv": -30.0,
        "rest_dev_cell": 6,
        "rest_dev_trend_rel_mv_per_day": -2.5,
        "rest_dev_trend_cell": 6,
        "rest_dev_trend_z": 6.0,
    }
    rows = [
        _row("A", "nmc", rest_dev_soc_change_pct=-2.0, **common),  # drained 2 % in a week
        _row("B", "nmc", rest_dev_soc_change_pct=-0.2, **common),  # same imbalance
        _row("C", "nmc", rest_dev_soc_change_pct=1.0, **common),  # moving back
        _row("D", "nmc", rest_dev_soc_change_pct=None, **common),  # unknown: mV decides
    ]
    assert [(h[0], h[1], h[2]) for h in _hits(rows)] == [
        ("A", "deviation_growth", 6),
        ("D", "deviation_growth", 6),
    ]


def test_resistance_from_a_single_current_step_needs_twice_the_margin() -> None:
    common = {"resistance_z": 8.0, "resistance_cell": 7}
    rows = [
        _row("A", "nmc", resistance_rel_pct=35.7, resistance_steps=1.0, **common),
        _row("B", "nmc", resistance_rel_pct=35.7, resistance_steps=4.0, **common),
        _row("C", "nmc", resistance_rel_pct=249.0, resistance_steps=1.0, **common),
        _row("D", "nmc", resistance_rel_pct=35.7, resistance_steps=4.0, resistance_z=4.0),
    ]
    assert _hits(rows) == [
        ("B", "cell_resistance", 7, "warning", 30.0),
        ("C", "cell_resistance", 7, "critical", 60.0),
    ]


def test_cooling_rule_needs_an_hour_and_ten_sigmas_of_its_class() -> None:
    rows = [
        _row("A", "lfp", cooling_lag_h=1.6, cooling_lag_z=12.0),
        _row("B", "lfp", cooling_lag_h=2.4, cooling_lag_z=15.0),
        _row("C", "lfp", cooling_lag_h=1.6, cooling_lag_z=7.0),
        _row("D", "lfp", cooling_lag_h=0.6, cooling_lag_z=12.0),
    ]
    assert [(h[0], h[1], h[3]) for h in _hits(rows)] == [
        ("A", "cooling_slow", "warning"),
        ("B", "cooling_slow", "critical"),
    ]


def test_temp_high_needs_a_temperature_held_on_two_readings_of_a_sound_sensor() -> None:
    """A: an erratic sensor (3) reached 71.2 degC and held 62 on two noisy readings,
    the other sensors at most 36.1: no over-temperature; the erratic finding says what it
    read. B: one spike of a sensor not found erratic: a warning on that sensor, saying
    it was not held. C, E: held by a sound sensor (E: beside an erratic one): critical.
    D: no per-sensor figures (no telemetry): the day's hottest reading, as before."""
    erratic = {"sensor_jitter_excess_c": 8.0, "jitter_sensor": 3}
    quiet = {"sensor_jitter_excess_c": 0.2, "jitter_sensor": 0}
    rows = [
        _row(
            "A",
            "nmc",
            temp_c_max=71.2,
            temp_reading_max_c=71.2,
            temp_reading_sensor=3,
            temp_held_max_c=62.0,
            temp_held_other_c=36.1,
            **erratic,
        ),
        _row(
            "B",
            "nmc",
            temp_c_max=58.2,
            temp_reading_max_c=58.2,
            temp_reading_sensor=1,
            temp_held_max_c=36.0,
            temp_held_other_c=35.8,
            **quiet,
        ),
        _row(
            "C",
            "nmc",
            temp_c_max=58.5,
            temp_reading_max_c=58.5,
            temp_reading_sensor=2,
            temp_held_max_c=58.0,
            temp_held_other_c=58.0,
            **quiet,
        ),
        _row("D", "nmc", temp_c_max=58.0),
        _row(
            "E",
            "nmc",
            temp_c_max=75.0,
            temp_reading_max_c=75.0,
            temp_reading_sensor=3,
            temp_held_max_c=70.0,
            temp_held_other_c=57.5,
            **erratic,
        ),
    ]
    features = pa.Table.from_pylist(rows, schema=FEATURES_SCHEMA)
    hits = [
        (h["vin"], h["rule"], h["sensor"], h["severity"], h["value"], h["note"])
        for h in evaluate_rules(features, RuleLimits()).to_pylist()
    ]
    assert hits == [
        (
            "A",
            "sensor_erratic",
            3,
            "warning",
            8.0,
            "sensor 3 reached 71.2 degC, not counted as the pack's temperature "
            "(the other sensors held at most 36.1 degC)",
        ),
        (
            "B",
            "temp_high",
            1,
            "warning",
            58.2,
            "sensor 1 reached 58.2 degC in single readings only, not held on a second "
            "(the sensors held at most 36.0 degC)",
        ),
        ("C", "temp_high", -1, "critical", 58.0, None),
        ("D", "temp_high", -1, "critical", 58.0, None),
        ("E", "sensor_erratic", 3, "warning", 8.0, None),
        ("E", "temp_high", -1, "critical", 57.5, None),
    ]
