"""Feature rows from hand-made inputs: whom a vehicle's temperatures are compared with,
and how a cell's drift from its pack is read."""

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


def _pack(vin: str, worst: int, trend_mv_per_day: float, dev_mv: tuple[float, float]) -> list[dict]:
    """Cell-window rows of a 14-cell pack: cell ``worst`` off its pack by ``dev_mv``
    (older, recent week) with that trend, the others scattered around the median."""
    rng = np.random.default_rng(len(vin) + worst)
    rows = []
    for c in range(14):
        off = c == worst
        rows.append(
            {
                "vin": vin,
                "cell": c,
                "n_cells": 14,
                "has_today": True,
                "rest_days": 14,
                "rest_dev_mv": dev_mv[1] if off else float(rng.normal(0, 1.0)),
                "rest_dev_early_mv": dev_mv[0] if off else float(rng.normal(0, 1.0)),
                "rest_dev_trend_mv_per_day": trend_mv_per_day if off else float(rng.normal(0, 0.1)),
            }
        )
    return rows


def _offsets(vin: str, cell: int, early_pct: float, recent_pct: float) -> list[dict]:
    """Swing rows: each cell's SoC offset from its pack in the older and recent half."""
    rng = np.random.default_rng(len(vin) + cell)
    rows = []
    for c in range(14):
        noise = float(rng.normal(0, 0.1))
        e, r = (early_pct, recent_pct) if c == cell else (noise, noise + float(rng.normal(0, 0.03)))
        rows.append(
            {
                "vin": vin,
                "cell": c,
                "swing_pct": 0.0,
                "swing_early_pct": 0.0,
                "soc_offset_pct": r,
                "soc_offset_early_pct": e,
            }
        )
    return rows


def test_a_cell_drifting_is_read_in_soc_where_the_ocv_curve_gives_it() -> None:
    """A: an LFP cell 0.8 % off its pack all month, whose rest deviation went from 10 to
    29 mV because the pack rested where the curve is steeper: no drift. B: an LFP cell
    draining (a soft short), -0.3 to -3 % in a week while its mV hardly moves on the
    plateau: drift. C: no SoC offsets (no rest on a readable part of the curve): the mV
    view decides."""
    cells = pa.Table.from_pylist(
        _pack("A", 12, 1.4, (10.0, 29.0))
        + _pack("B", 3, -0.3, (-2.0, -4.0))
        + _pack("C", 5, 1.4, (10.0, 29.0))
    )
    swing = pa.Table.from_pylist(_offsets("A", 12, 0.78, 0.80) + _offsets("B", 3, -0.3, -3.0))
    vins = ["A", "B", "C"]
    t = assemble_features(
        vins,
        dict.fromkeys(vins, "lfp"),
        cells,
        _vehicle_window({v: (0.1, 30.0, 30.0) for v in vins}),
        pa.table({}),
        pa.table({}),
        DAY,
        PARAMS,
        swing,
    )
    row = {r["vin"]: r for r in t.to_pylist()}
    # the mV view sees A's and C's cell run away, not B's
    assert row["A"]["rest_dev_trend_z"] > 5
    assert row["A"]["spread_growth_z"] > 5
    assert row["C"]["rest_dev_trend_z"] > 5
    assert row["B"]["rest_dev_trend_z"] < 5
    # the SoC view: A's cell sits still, B's runs away
    assert row["A"]["drift_z"] < 2
    assert row["A"]["drift_growth_z"] < 1
    assert row["B"]["drift_z"] > 10
    assert row["B"]["drift_growth_z"] > 5
    assert row["B"]["soc_drift_cell"] == 3
    assert row["B"]["soc_drift_rel_pct"] == pytest.approx(-2.7, abs=0.1)
    # no offsets: the mV view, as before
    assert row["C"]["soc_drift_z"] is None
    assert row["C"]["soc_spread_growth_z"] is None
    assert row["C"]["drift_z"] == row["C"]["rest_dev_trend_z"]
    assert row["C"]["drift_growth_z"] == row["C"]["spread_growth_z"]
