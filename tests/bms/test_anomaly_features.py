"""Feature rows from hand-made inputs: whom a vehicle's temperatures are compared with."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pytest

from bms._features import FeatureParams, assemble_features, nearest

DAY = date(2026, 9, 11)
PARAMS = FeatureParams()

Excess = dict[str, tuple[float, float]]


def _vehicle_window(vehicles: dict[str, tuple[float, float, float]]) -> pa.Table:
    """42 days of ``metrics/vehicle_day`` rows: per vin (charge throughput [1/d], daily
    maximum before and after the ambient fell by 4 degC over the last two weeks)."""
    rows = []
    for v, (efc, tmax_before, tmax_after) in vehicles.items():
        for k in range(42):
            d = DAY - timedelta(days=k)
            recent = k < 14
            rows.append(
                {
                    "vin": v,
                    "chemistry": "nmc",
                    "temp_c_max": tmax_after if recent else tmax_before,
                    "temp_c_min": 24.0 if recent else 28.0,
                    "dc_fast_share": 0.0,
                    "hours_soc_above_90": 0.0,
                    "hours_temp_above_45c": 0.0,
                    "equivalent_full_cycles": efc + 0.001 * (k % 3),
                    "date": d,
                }
            )
    return pa.Table.from_pylist(rows)


def _temperatures(vehicles: dict[str, tuple[float, float, float]]) -> Excess:
    vins = sorted(vehicles)
    t = assemble_features(
        vins,
        dict.fromkeys(vins, "nmc"),
        pa.table({}),
        _vehicle_window(vehicles),
        pa.table({}),
        pa.table({}),
        DAY,
        PARAMS,
        vehicle_class=dict.fromkeys(vins, "car"),
    )
    return {
        r["vin"]: (r["temp_max_excess_c"], r["temp_rise_excess_c"])
        for r in t.select(["vin", "temp_max_excess_c", "temp_rise_excess_c"]).to_pylist()
    }


def test_hard_used_cars_are_compared_with_hard_used_cars() -> None:
    """The ambient falls by 4 degC: lightly used cars' daily maximum falls with it, that
    of cars driven hard under their cooling loop's setpoint does not. Compared with the
    whole fleet, every hard-used car would run 4 degC hotter than usual; compared with
    its own kind, only the one whose cooling failed (+3 degC) does."""
    vehicles = {f"light{i:02d}": (0.08 + 0.005 * i, 36.0, 32.0) for i in range(12)}
    vehicles |= {f"taxi{i:02d}": (0.5 + 0.02 * i, 40.0, 40.0) for i in range(11)}
    vehicles["taxi05"] = (0.6, 40.0, 43.0)
    excess = _temperatures(vehicles)
    for v, (tmax, rise) in excess.items():
        if v == "taxi05":
            assert tmax == pytest.approx(3.0)
            assert rise == pytest.approx(3.0)
        else:
            assert tmax == pytest.approx(0.0, abs=1e-9), v
            assert rise == pytest.approx(0.0, abs=1e-9), v


def test_nearest_are_the_smallest_distances_even_with_ties() -> None:
    values = np.array([-2.3, -1.6, -1.2, -1.2, 0.8, 0.8, 0.8, np.nan, 1.1, np.nan])
    got = nearest(values, 4)
    assert sorted(got[2].tolist()) == [0, 1, 2, 3]  # -2.3 (1.1 away), not an 0.8 (2.0)
    assert sorted(got[5].tolist()) == [4, 5, 6, 8]
    assert sorted(got[7].tolist()) == [7, 9]  # no value: the others without one
    assert len(nearest(values, 20)[0]) == 8  # no more than there are
