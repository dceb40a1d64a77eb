"""Live alert rules: sentinels, flagged values, hysteresis, thermal rise, chemistry profiles."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
from numpy.testing import assert_allclose

from bms import Quality, decode_reading, readings_table
from ingest import AlertEngine, AlertProfile, thermal_rates_c_per_min
from tests.ingest.helpers import NOW, VINS, encode, reading

NMC, LFP = VINS[0], VINS[1]


def _engine() -> AlertEngine:
    return AlertEngine(
        {"nmc": AlertProfile(), "lfp": AlertProfile(cell_max_mv=3650, cell_min_mv=2500)},
        default_chemistry="nmc",
        default_capacity_ah=100.0,
        vehicles={LFP: ("lfp", 50.0)},
    )


def _table(readings: list[dict[str, Any]]) -> Any:
    decoded = [(decode_reading(encode(r), now=NOW + timedelta(days=1)), "demo") for r in readings]
    return readings_table(decoded, received_at_ms=0, worker="t")


def _cells(mv: list[int], seq: int = 1, **kw: Any) -> dict[str, Any]:
    r = reading(NMC, seq, NOW + timedelta(seconds=10 * seq), **kw)
    r["cells"]["voltages_mv"] = mv
    return r


def test_a_65535_sentinel_alone_raises_no_overvoltage() -> None:
    mv = [3700] * 14
    mv[5] = 65535
    table = _table([_cells(mv)])
    assert table["quality"][0].as_py() & Quality.SENTINEL
    assert _engine().evaluate(table) == []


def test_a_flagged_but_real_high_cell_raises_overvoltage_with_its_quality() -> None:
    mv = [3700] * 14
    mv[3] = 4600  # outside the plausible range: kept, flagged, and alarming
    [event] = _engine().evaluate(_table([_cells(mv)]))
    assert (event.rule, event.event, event.index, event.value) == (
        "cell_overvoltage",
        "raised",
        3,
        4600,
    )
    assert event.threshold == 4250
    assert event.quality & Quality.CELL_MV_RANGE


def test_a_persisting_condition_gives_one_alert_and_one_clear_across_flushes() -> None:
    eng = _engine()
    hot = [reading(NMC, s, NOW + timedelta(seconds=10 * s), temp_c=70.0) for s in range(5)]
    assert [(e.event, e.seq) for e in eng.evaluate(_table(hot[:2]))] == [("raised", 0)]
    assert eng.evaluate(_table(hot[2:])) == []
    cool = [reading(NMC, 5, NOW + timedelta(seconds=50), temp_c=58.0)]  # inside margin: still on
    assert eng.evaluate(_table(cool)) == []
    cold = [reading(NMC, 6, NOW + timedelta(seconds=60), temp_c=40.0)]
    assert [(e.rule, e.event, e.seq) for e in eng.evaluate(_table(cold))] == [
        ("over_temperature", "cleared", 6)
    ]


def test_lfp_profile_from_the_registry_applies_its_own_limits() -> None:
    r_lfp = reading(LFP, 1, NOW, mv=3700)
    r_nmc = reading(NMC, 1, NOW, mv=3700)
    events = _engine().evaluate(_table([r_lfp, r_nmc]))
    assert [(e.vin, e.rule, e.chemistry, e.threshold) for e in events] == [
        (LFP, "cell_overvoltage", "lfp", 3650)
    ]


def test_cell_spread_only_counts_at_rest() -> None:
    mv = [3700] * 14
    mv[9] = 3550  # 150 mV below the others
    driving = _cells(mv, seq=1, current_a=-80.0)
    resting = _cells(mv, seq=2, current_a=1.0)  # C/20 of 100 Ah is 5 A
    events = _engine().evaluate(_table([driving, resting]))
    assert [(e.rule, e.seq, e.index, e.value) for e in events] == [("cell_spread", 2, 9, 150)]


def test_thermal_rise_at_rest_names_the_sensor() -> None:
    rows = []
    for s in range(8):
        r = reading(NMC, s, NOW + timedelta(seconds=30 * s), current_a=0.5)
        r["cells"]["temps_c"] = [25.0, 25.0 + 1.5 * s, 25.0, 25.0]  # 3 degC/min on sensor 1
        rows.append(r)
    events = _engine().evaluate(_table(rows))
    assert [(e.rule, e.event, e.seq, e.index) for e in events] == [("thermal_rise", "raised", 2, 1)]
    assert_allclose(events[0].value, 3.0, rtol=1e-6)
    assert events[0].unit == "degC/min"


def test_thermal_rates_against_a_hand_computed_case() -> None:
    group = np.array([0, 0, 0, 1])
    ts_ms = np.array([0, 30_000, 60_000, 60_000])
    temps = np.array([20.0, 21.0, 20.0, 21.5, 23.0, 21.0, 30.0])
    offsets = np.array([0, 2, 4, 6, 7])
    rate, sensor = thermal_rates_c_per_min(
        group, ts_ms, temps, offsets, window_ms=60_000, max_gap_ms=300_000
    )
    # row 2 against row 0 over 1 min: sensor 0 +3.0, sensor 1 +1.0 degC/min
    assert_allclose(rate[2], 3.0)
    assert sensor[2] == 0
    assert np.isnan(rate[[0, 1, 3]]).all()
