"""Physical rules beside the model: what physics already defines needs no statistics.

Each rule reads the feature rows of one day (``bms._features``) and returns hits: which
vehicle, which cell or temperature sensor, the rule, the measured value, the threshold
and a severity. Thresholds are data (``RuleLimits``), with their sources:

- ``self_discharge``: a cell losing charge at rest faster than its pack by more than the
  limit. Normal self-discharge is 1-2 %/month (~0.05 %/day, Battery University BU-802b);
  a soft short of 100 Ohm drains ~1.5 %/day of a 60 Ah cell (science.md 3). On the NMC
  curve 1 %/day is ~8-10 mV/day, on the LFP plateau ~0.5 mV/day (science.md 1), hence the
  per-chemistry limits in mV/day (about 0.5 %/day of SoC on NMC, ten times normal: the
  rest-drift estimate of a healthy cell scatters by 1-3 mV/day even over a week, as
  measured on the simulated fleet).
- ``deviation_growth``: a cell's rest deviation from the pack median growing for the
  whole trend window (least-squares slope) while already well off the median, and its
  SoC offset from the pack growing too, by 0.5 % from the older to the recent week: at
  rest SoCs that change from day to day, the mV deviation of a fixed imbalance swings
  with the OCV slope (NMC: 9.6 mV/% at 80 %, 4.4 at 90 %, science.md 1) and fakes a
  trend (seen on a healthy simulated car resting at 76-88 %); a soft short drains
  ~1.5 % a day (100 Ohm on a 60 Ah cell, science.md 3; the simulator draws 0.6-1.5 %),
  8-20 times faster.
- ``cell_spread``: a cell's rest deviation beyond half the contract's 100 mV spread
  limit (telemetry.md), before the live alert would fire, when the deviation is
  also a real imbalance of the cell's state of charge: near full, the LFP curve rises
  ~37 mV per % SoC (science.md 1), so an imbalance of about 1 % shows as 40 mV there
  (a healthy simulated LFP car parked at 96-99 %, its cell 1.1 % off, was flagged for
  108 days); 2.5 % is ten times the manufacturing capacity spread (science.md 3), and a
  50 mV deviation is at least 2.5 % wherever the curve rises at most 20 mV per % (NMC
  above ~15 % SoC), so there the mV share decides as before.
- ``cell_resistance``: a cell's DC resistance (voltage step over current step) this far
  above its pack's median cell; manufacturing spread is 0.5-4 % (sigma, Wildfeuer &
  Lienkamp, science.md 3), so +30 % is beyond any healthy pack. A value from a single
  current step needs twice that: it rests on two readings of each cell (1 mV
  resolution, a few mV of noise), and on a 14 mV step 5 mV of error is already +36 %
  (seen on a healthy simulated car whose only step in a month set its median for a
  week).
- ``cell_capacity``: a cell swinging wider in SoC than its pack (its SoC offset from the
  pack growing with the pack's SoC, ``bms._features.swing_from_sums``): the slope is
  about the cell's capacity deficit. Manufacturing spread is 0.2-0.3 % (sigma,
  science.md 3), so 5 % is far beyond it; the fit can still go wild on a pack whose SoC
  hardly moved, hence also 10 robust sigmas out of its own pack, in both halves of the
  window (on two simulated 200-vehicle, 1-year fleets the worst healthy pack reached
  5 sigmas; over the whole window, without the halves, 10.4).
- ``temp_high``: the pack's hottest temperature within a margin below the contract's
  60 degC over-temperature limit (telemetry.md; cells are rated to 60 degC in
  discharge and 45-60 degC in charge, science.md 4), as held on two consecutive readings
  of one sensor, leaving out a sensor found erratic that day. A pack is a thermal mass:
  heat builds up and leaves over minutes to hours (a parked pack's time constant is
  hours, see ``cooling_slow``; the live ``thermal_rise`` alert already speaks at
  1 degC/min), and the hazards the limit keeps away from (SEI breakdown from ~80 degC,
  science.md 4) come from heat that stays, so a real approach to the limit shows on the
  next reading too (30 s driving, 10 min parked). A reading that the next one does not
  hold is a sensor or wiring glitch, not the pack: at most a warning (on that sensor,
  saying so), and none where the sensor is the erratic one, whose ``sensor_erratic``
  finding says what it read instead (design.md: implausible values are kept as
  evidence of a sensor fault). The live ``over_temperature`` alert still fires on any
  single reading above 60 degC. Without per-sensor figures (no telemetry), the day's
  hottest reading decides as before.
- ``cooling_slow``: the pack's daily temperature cycle lagging its peers' (same vehicle
  class) by an hour or more, median of 14 days (``bms._features.diurnal_lag``). A
  parked pack follows the ambient cycle as a first-order low-pass and lags it by
  atan(w tau) / w, tau = C / h (heat capacity over conductance to ambient, w = 2 pi /
  24 h): a two-wheeler pack of tau ~1.7 h lags 1.6 h; one whose conductance fell by 60 %
  (tau 4.3 h) lags 3.2 h. Healthy two-wheelers of three simulated 200-vehicle fleets
  stayed within 0.5 h of their peers (monthly medians); passively cooled two-wheelers
  with a cooling failure lagged 1.5-2.4 h, while their mean temperature rose by only
  1-1.5 degC, inside the healthy spread. Cars scatter by hours (charging and the liquid
  loop also move their parked temperature), hence also 10 robust sigmas of the class
  (on five simulated fleets healthy cars reached 7.0, healthy two-wheelers 4.1, failed
  cooling of two-wheelers 17-21).
- ``rest_temp_rise``: a sensor warming relative to its pack while no current flows
  (heat from inside the cell: internal short; telemetry.md ``thermal_rise`` is the live,
  1 degC/min version).
- ``sensor_invalid``, ``sensor_stuck``, ``sensor_erratic``: a temperature sensor sending
  sentinels / no values, the same value all day while its pack's temperature moves, or
  jumping between consecutive readings far more than its neighbours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

WARNING = "warning"
CRITICAL = "critical"

RULES: dict[str, str] = {
    "cell_capacity": "cell swinging wider in state of charge than its pack (capacity loss)",
    "cell_resistance": "cell resistance far above the pack's median cell",
    "cell_spread": "cell rest deviation from the pack median near the contract spread limit",
    "cooling_slow": "pack temperature lagging its peers' daily cycle (cooling degraded)",
    "deviation_growth": "cell rest deviation growing day after day",
    "rest_temp_rise": "sensor warming relative to its pack while at rest",
    "self_discharge": "cell self-discharging faster than its pack (soft short)",
    "sensor_erratic": "temperature sensor jumping between readings",
    "sensor_invalid": "temperature sensor sending no value or sentinels",
    "sensor_stuck": "temperature sensor stuck at one value",
    "temp_high": "pack temperature approaching the over-temperature limit",
}


@dataclass(frozen=True)
class RuleLimits:
    """Thresholds of the physical rules (see the module docstring for sources)."""

    self_discharge_nmc_mv_per_day: float = 5.0  # relative to the pack median [mV/day]
    self_discharge_lfp_mv_per_day: float = 2.0  # [mV/day]
    self_discharge_min_z: float = 6.0  # and this far out of its pack [-]
    deviation_trend_mv_per_day: float = 2.0  # slope of the rest deviation [mV/day]
    deviation_min_mv: float = 15.0  # ... with the cell already this far off [mV]
    min_window_days: int = 10  # trend rules need this many days of rest data [d]
    deviation_min_z: float = 4.0  # ... and this far out of its pack [-]
    deviation_min_soc_change_pct: float = 0.5  # ... its SoC offset grown this much [%]
    spread_limit_mv: float = 100.0  # contract cell_spread limit at rest [mV]
    spread_warning_share: float = 0.5  # warn at this share of the limit [-]
    spread_critical_share: float = 0.7  # critical at this share [-]
    spread_min_soc_pct: float = 2.5  # ... and the cell this far off its pack's SoC [%]
    resistance_rel_pct: float = 30.0  # cell resistance above the pack median [%]
    resistance_min_z: float = 5.0  # ... and this far out of its pack [-]
    resistance_single_step_factor: float = 2.0  # threshold x this from one step only [-]
    swing_rel_pct: float = 5.0  # cell's SoC swing beyond its pack's [% per 100 % SoC]
    swing_critical_pct: float = 20.0  # critical at this swing [% per 100 % SoC]
    swing_min_z: float = 10.0  # ... and this far out of its pack [-]
    temp_limit_c: float = 60.0  # contract over_temperature limit [degC]
    temp_warning_margin_c: float = 5.0  # warn this far below the limit [degC]
    temp_critical_margin_c: float = 3.0  # critical this far below [degC]
    cooling_lag_h: float = 1.0  # pack's daily cycle behind its peers' [h]
    cooling_lag_min_z: float = 10.0  # ... and this far out of its class [-]
    rest_rise_c_per_h: float = 2.0  # sensor rise relative to the pack at rest [degC/h]
    sensor_invalid_share: float = 0.05  # share of readings without a value [-]
    sensor_jitter_excess_c: float = 1.0  # RMS reading-to-reading jump above the pack's [degC]


RULE_HIT_SCHEMA = pa.schema(
    [
        ("vin", pa.string()),
        ("cell", pa.int16()),
        ("sensor", pa.int16()),
        ("rule", pa.string()),
        ("severity", pa.string()),
        ("value", pa.float64()),
        ("threshold", pa.float64()),
        ("unit", pa.string()),
        ("note", pa.string()),  # what else the evidence should say (none: nothing)
    ]
)


def _f(t: pa.Table, name: str) -> np.ndarray:
    return np.asarray(
        pc.cast(t[name], pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
    )


def _i(t: pa.Table, name: str) -> np.ndarray:
    return np.asarray(pc.fill_null(t[name], -1).to_numpy(zero_copy_only=False), dtype=np.int64)


def evaluate_rules(features: pa.Table, limits: RuleLimits) -> pa.Table:
    """Rule hits of one day's feature rows (``RULE_HIT_SCHEMA``), sorted by vin, rule."""
    rows: dict[str, list[object]] = {f.name: [] for f in RULE_HIT_SCHEMA}
    if features.num_rows == 0:
        return RULE_HIT_SCHEMA.empty_table()
    vin_col = features["vin"]
    is_lfp = np.asarray(
        pc.fill_null(pc.equal(features["chemistry"], "lfp"), False).to_numpy(zero_copy_only=False)
    )

    def add(
        mask: np.ndarray,
        rule: str,
        value: np.ndarray,
        threshold: np.ndarray | float,
        unit: str,
        cell: np.ndarray | None = None,
        sensor: np.ndarray | None = None,
        critical: np.ndarray | None = None,
        note: Callable[[int], str | None] | None = None,
    ) -> None:
        thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), mask.shape)
        for i in np.flatnonzero(mask):
            rows["note"].append(note(int(i)) if note is not None else None)
            rows["vin"].append(str(vin_col[int(i)].as_py()))
            rows["cell"].append(int(cell[i]) if cell is not None else -1)
            rows["sensor"].append(int(sensor[i]) if sensor is not None else -1)
            rows["rule"].append(rule)
            rows["severity"].append(CRITICAL if critical is not None and critical[i] else WARNING)
            rows["value"].append(float(value[i]))
            rows["threshold"].append(float(thr[i]))
            rows["unit"].append(unit)

    with np.errstate(invalid="ignore"):
        sd = _f(features, "self_discharge_rel_mv_per_day")
        sd_lim = np.where(
            is_lfp, limits.self_discharge_lfp_mv_per_day, limits.self_discharge_nmc_mv_per_day
        )
        sd_z = _f(features, "self_discharge_z")
        sd_cell = _i(features, "self_discharge_cell")
        # the drift must show as a falling rest deviation of the same cell over the trend
        # window, not only in the noisy per-rest estimate
        falling = (_f(features, "rest_dev_trend_rel_mv_per_day") <= -0.5 * sd_lim) & (
            _i(features, "rest_dev_trend_cell") == sd_cell
        )
        add(
            (sd <= -sd_lim)
            & (sd_z >= limits.self_discharge_min_z)
            & falling
            & (_f(features, "window_days") >= limits.min_window_days),
            "self_discharge",
            sd,
            -sd_lim,
            "mV/day",
            cell=sd_cell,
            critical=sd <= -3 * sd_lim,
        )

        window = _f(features, "window_days")
        tr = _f(features, "rest_dev_trend_rel_mv_per_day")
        dev = _f(features, "rest_dev_rel_mv")
        tr_cell = _i(features, "rest_dev_trend_cell")
        dev_cell = _i(features, "rest_dev_cell")
        # growing = moving away from the median (trend and deviation of the same sign),
        # in SoC as well as in mV (unknown SoC change: the mV trend decides)
        soc_change = _f(features, "rest_dev_soc_change_pct") * np.sign(tr)
        add(
            ~(soc_change < limits.deviation_min_soc_change_pct)
            & (np.abs(tr) >= limits.deviation_trend_mv_per_day)
            & (tr * dev > 0)
            & (window >= limits.min_window_days)
            & (_f(features, "rest_dev_trend_z") >= limits.deviation_min_z)
            & (np.abs(dev) >= limits.deviation_min_mv)
            & (tr_cell == dev_cell),
            "deviation_growth",
            tr,
            limits.deviation_trend_mv_per_day,
            "mV/day",
            cell=tr_cell,
        )

        warn_mv = limits.spread_warning_share * limits.spread_limit_mv
        # unknown SoC offset (no readings at rest on the OCV curve): the mV share decides
        soc_off = _f(features, "rest_dev_soc_pct")
        imbalanced = ~(np.abs(soc_off) < limits.spread_min_soc_pct)
        add(
            (np.abs(dev) >= warn_mv) & imbalanced,
            "cell_spread",
            dev,
            warn_mv,
            "mV",
            cell=dev_cell,
            critical=np.abs(dev) >= limits.spread_critical_share * limits.spread_limit_mv,
        )

        res = _f(features, "resistance_rel_pct")
        res_lim = np.where(
            _f(features, "resistance_steps") == 1,
            limits.resistance_single_step_factor * limits.resistance_rel_pct,
            limits.resistance_rel_pct,
        )
        add(
            (res >= res_lim) & (_f(features, "resistance_z") >= limits.resistance_min_z),
            "cell_resistance",
            res,
            res_lim,
            "%",
            cell=_i(features, "resistance_cell"),
            critical=res >= 100.0,
        )

        swing = _f(features, "swing_rel_pct")
        add(
            (swing >= limits.swing_rel_pct) & (_f(features, "swing_z") >= limits.swing_min_z),
            "cell_capacity",
            swing,
            limits.swing_rel_pct,
            "%",
            cell=_i(features, "swing_cell"),
            critical=swing >= limits.swing_critical_pct,
        )

        # temp_high judges the hottest temperature a sensor held on two consecutive
        # readings, leaving out a sensor found erratic today (its readings confirm
        # nothing); without per-sensor figures, the day's hottest reading as before
        warn_c = limits.temp_limit_c - limits.temp_warning_margin_c
        crit_c = limits.temp_limit_c - limits.temp_critical_margin_c
        jit = _f(features, "sensor_jitter_excess_c")
        jit_sensor = _i(features, "jitter_sensor")
        erratic = (jit >= limits.sensor_jitter_excess_c) & (jit_sensor >= 0)
        reading = _f(features, "temp_reading_max_c")
        hot_sensor = _i(features, "temp_reading_sensor")
        per_sensor = ~np.isnan(reading)
        held = np.where(erratic, _f(features, "temp_held_other_c"), _f(features, "temp_held_max_c"))
        tmax = np.where(per_sensor, held, _f(features, "temp_c_max"))
        add(tmax >= warn_c, "temp_high", tmax, warn_c, "degC", critical=tmax >= crit_c)
        # a hottest reading above the warning that no second reading held: at most a
        # warning, on its sensor; none where that sensor is the erratic one (the
        # sensor_erratic hit below carries it)
        spike = per_sensor & (reading >= warn_c) & ~(tmax >= warn_c)
        explained = erratic & (hot_sensor == jit_sensor)

        def held_text(i: int, who: str) -> str:
            if np.isnan(held[i]):
                return f"no reading of {who} held on a second"
            return f"{who} held at most {held[i]:.1f} degC"

        add(
            spike & ~explained,
            "temp_high",
            reading,
            warn_c,
            "degC",
            sensor=hot_sensor,
            note=lambda i: (
                f"sensor {hot_sensor[i]} reached {reading[i]:.1f} degC in single readings "
                f"only, not held on a second ({held_text(i, 'the sensors')})"
            ),
        )

        lag = _f(features, "cooling_lag_h")
        add(
            (lag >= limits.cooling_lag_h)
            & (_f(features, "cooling_lag_z") >= limits.cooling_lag_min_z),
            "cooling_slow",
            lag,
            limits.cooling_lag_h,
            "h",
            critical=lag >= 2 * limits.cooling_lag_h,
        )

        rise = _f(features, "rest_rise_c_per_h")
        add(
            rise >= limits.rest_rise_c_per_h,
            "rest_temp_rise",
            rise,
            limits.rest_rise_c_per_h,
            "degC/h",
            sensor=_i(features, "rest_rise_sensor"),
            critical=rise >= 3 * limits.rest_rise_c_per_h,
        )

        inv = _f(features, "sensor_invalid_share")
        add(
            inv >= limits.sensor_invalid_share,
            "sensor_invalid",
            inv,
            limits.sensor_invalid_share,
            "-",
            sensor=_i(features, "invalid_sensor"),
        )
        stuck = _f(features, "sensor_stuck")
        add(stuck >= 1.0, "sensor_stuck", stuck, 1.0, "-", sensor=_i(features, "stuck_sensor"))
        add(
            jit >= limits.sensor_jitter_excess_c,
            "sensor_erratic",
            jit,
            limits.sensor_jitter_excess_c,
            "degC",
            sensor=jit_sensor,
            note=lambda i: (
                f"sensor {jit_sensor[i]} reached {reading[i]:.1f} degC, not counted as the "
                f"pack's temperature ({held_text(i, 'the other sensors')})"
                if spike[i] and explained[i]
                else None
            ),
        )

    table = pa.table(rows, schema=RULE_HIT_SCHEMA)
    return table.sort_by([("vin", "ascending"), ("rule", "ascending"), ("cell", "ascending")])
