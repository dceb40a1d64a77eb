"""The simulator's physics: OCV, relaxation, ageing trends, and every injected fault
showing where it should in the cell data (small packs, coarse cadence, one vehicle)."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

import bms
import sim

SMALL = {"cells": 14, "cadence_s": 60, "idle_cadence_s": 600, "fault_rate": 0.0}
DRIVE, IDLE = 0, 3


def _run(
    spec: sim.FleetSpec, faults: dict[int, list[sim.FaultSpec]] | None = None
) -> tuple[sim.FleetSimulator, list[list[sim.DayOutput]]]:
    fleet = sim.FleetSimulator(spec, faults=faults)
    return fleet, [outputs for _, outputs in fleet.run()]


@pytest.mark.parametrize("chemistry", ["nmc", "lfp"])
def test_ocv_rises_monotonically_with_soc(chemistry: str) -> None:
    soc = np.linspace(0, 100, 201)
    ocv = bms.ocv_v_from_soc_pct(soc, chemistry)
    assert np.all(np.diff(ocv) >= 0)
    assert ocv[-1] - ocv[0] > 1.0


def test_rest_voltage_relaxes_for_hours_after_driving() -> None:
    """RC polarisation: the rest voltage keeps moving for hours, then settles."""
    spec = sim.FleetSpec(vehicles=1, days=3, chemistry="nmc", seed=4, **SMALL)
    _, days = _run(spec)
    moves_early, moves_late = [], []
    for (out,) in days:
        mv = out.cell_mv.mean(axis=1)
        t_s = (out.ts_ms - out.ts_ms[0]) / 1000.0
        for k in np.flatnonzero((out.mode[:-1] == DRIVE) & (out.mode[1:] == IDLE)):
            rest = np.flatnonzero(
                (out.mode == IDLE) & (t_s > t_s[k]) & (t_s <= t_s[k] + 5.5 * 3600)
            )
            if len(rest) < 30 or np.any(out.mode[k + 1 : rest[-1] + 1] != IDLE):
                continue  # only rests of 5 h and more
            after = t_s[rest] - t_s[k + 1]
            v = np.interp([600, 3 * 3600, 5 * 3600], after, mv[rest])
            moves_early.append(abs(v[1] - v[0]))
            moves_late.append(abs(v[2] - v[1]))
    assert moves_early, "no long rest after a drive in the sample"
    # Between 10 min and 3 h the voltage recovers by several mV; afterwards by < 1.5 mV.
    assert min(moves_early) > 3.0, moves_early
    assert max(moves_late) < 1.5


def test_capacity_fades_and_resistance_grows_monotonically() -> None:
    spec = sim.FleetSpec(vehicles=1, days=40, seed=2, **SMALL)
    _, days = _run(spec)
    cap = np.array([d[0].truth["capacity_ah"] for d in days])
    res = np.array([d[0].truth["resistance_mohm"] for d in days])
    soh = np.array([d[0].truth["soh_pct"] for d in days])
    assert np.all(np.diff(cap) <= 1e-9)
    assert cap[-1] < cap[0]
    assert np.all(np.diff(res) >= -1e-9)
    assert res[-1] > res[0]
    rated = days[0][0].truth["rated_capacity_ah"]
    np.testing.assert_allclose(soh, cap / rated * 100.0, rtol=1e-12)


def test_hot_climate_ages_faster_than_mild() -> None:
    loss = {}
    for climate in ("hot", "mild"):
        spec = sim.FleetSpec(
            vehicles=2, days=30, seed=9, climate=climate, start=date(2026, 5, 1), **SMALL
        )
        _, days = _run(spec)
        loss[climate] = [days[0][i].truth["soh_pct"] - days[-1][i].truth["soh_pct"] for i in (0, 1)]
    assert all(h > m for h, m in zip(loss["hot"], loss["mild"], strict=True))


def _cell_deviation_mv(out: sim.DayOutput, cell: int) -> np.ndarray:
    others = np.delete(out.cell_mv, cell, axis=1).astype(float)
    return out.cell_mv[:, cell] - np.median(others, axis=1)


def test_soft_short_cell_drifts_below_its_neighbours_at_rest() -> None:
    spec = sim.FleetSpec(vehicles=1, days=45, seed=1, chemistry="nmc", **SMALL)
    leak = sim.FaultSpec("soft_short", cell=5, sensor=-1, onset_day=10, ramp_days=15, severity=0.1)
    fleet, days = _run(spec, {0: [leak]})
    rest_dev = []
    for (out,) in days:
        rest = out.mode == IDLE
        rest_dev.append(float(np.mean(_cell_deviation_mv(out, 5)[rest])))
    before, after = np.array(rest_dev[:10]), np.array(rest_dev[-5:])
    assert np.all(np.abs(before) < 5)
    assert np.all(after < -20)
    # The truth names the fault, its onset and when it crossed the spread limit.
    faults = fleet.faults_table().to_pylist()
    assert faults[0]["fault"] == "soft_short"
    assert faults[0]["cell"] == 5
    assert faults[0]["onset_date"] == date(2026, 1, 11)
    if faults[0]["limit_date"] is not None:
        assert faults[0]["limit_date"] > faults[0]["onset_date"]


@pytest.mark.parametrize("chemistry", ["nmc", "lfp"])
def test_a_cell_drained_by_its_short_stays_at_zero_volts(chemistry: str) -> None:
    """A leak of 2 A drains the cell within weeks; it then sits at about 0 V (read as a
    few mV either side), out of the contract's plausible range as a dead cell is, and
    does not keep falling: unbounded, a year's leak took a cell to -460 % SoC and -32 V,
    which wrapped to +32 V in the int16 cell voltages."""
    spec = sim.FleetSpec(vehicles=1, days=60, seed=3, chemistry=chemistry, **SMALL)
    leak = sim.FaultSpec("soft_short", cell=4, sensor=-1, onset_day=2, ramp_days=5, severity=2.0)
    _, days = _run(spec, {0: [leak]})
    cell = np.concatenate([out.cell_mv[:, 4] for (out,) in days]).astype(np.int64)
    others = np.concatenate([np.delete(out.cell_mv, 4, axis=1) for (out,) in days])
    assert cell.min() >= -50, cell.min()
    assert cell.max() <= 4_500, cell.max()
    rest = np.concatenate([out.mode == IDLE for (out,) in days])
    assert np.all(np.abs(cell[-500:][rest[-500:]]) < 50)  # dead, at rest
    assert others.min() > 1_500  # the others drive on


def test_fast_fading_cell_swings_wider_than_its_neighbours_and_sets_pack_capacity() -> None:
    """A cell with less capacity moves further in SoC for the same charge: after its
    fade it sits below its neighbours at the bottom of the day's discharge and above them
    at the top of the charge, and as the weakest cell it sets the pack's true capacity."""
    spec = sim.FleetSpec(vehicles=1, days=40, seed=2, chemistry="nmc", **SMALL)
    fade = sim.FaultSpec("fast_fade", cell=7, sensor=-1, onset_day=5, ramp_days=10, severity=0.2)
    _, days = _run(spec, {0: [fade]})

    def swing_mv(out: sim.DayOutput) -> float:
        dev = _cell_deviation_mv(out, 7)
        low, high = (
            out.soc_pct <= np.percentile(out.soc_pct, 5),
            out.soc_pct >= np.percentile(out.soc_pct, 95),
        )
        return float(np.mean(dev[high]) - np.mean(dev[low]))

    before = [swing_mv(d[0]) for d in days[:5]]
    after = [swing_mv(d[0]) for d in days[-5:]]
    assert max(abs(b) for b in before) < 5, before
    assert np.median(after) > 15, after  # days with little SoC swing show less
    assert days[-1][0].truth["weakest_cell"] == 7
    assert days[-1][0].truth["soh_pct"] < days[4][0].truth["soh_pct"] - 10


def test_resistance_growth_cell_sags_more_under_load() -> None:
    spec = sim.FleetSpec(vehicles=1, days=30, seed=3, chemistry="nmc", **SMALL)
    bad = sim.FaultSpec(
        "resistance_growth", cell=2, sensor=-1, onset_day=5, ramp_days=10, severity=4.0
    )
    _, days = _run(spec, {0: [bad]})

    def sag_mohm(outs: list[list[sim.DayOutput]]) -> float:
        dev = np.concatenate([_cell_deviation_mv(d[0], 2) for d in outs])
        cur = np.concatenate([d[0].current_a for d in outs])
        heavy = cur < -0.2 * days[0][0].truth["rated_capacity_ah"]
        return float(np.polyfit(cur[heavy], dev[heavy], 1)[0])  # mV per A = mOhm

    r0_cell_mohm = 90.0 / days[0][0].truth["rated_capacity_ah"]
    assert abs(sag_mohm(days[:5])) < 0.2 * r0_cell_mohm
    assert sag_mohm(days[-5:]) > 2.0 * r0_cell_mohm  # three extra R0 at 25 degC


@pytest.mark.parametrize("mode", ["stuck", "sentinel", "erratic"])
def test_failed_temperature_sensor_shows_its_failure_mode(mode: str) -> None:
    spec = sim.FleetSpec(vehicles=1, days=12, seed=5, **SMALL)
    fault = sim.FaultSpec(
        "temp_sensor", cell=-1, sensor=1, onset_day=4, ramp_days=5, severity=30.0, mode=mode
    )
    _, days = _run(spec, {0: [fault]})
    before = np.concatenate([d[0].temp_c for d in days[:4]])
    after = np.concatenate([d[0].temp_c for d in days[-3:]])
    if mode == "stuck":
        assert np.ptp(before[:, 1]) > 1.0
        assert np.ptp(after[:, 1]) == 0.0
        assert np.ptp(after[:, 0]) > 1.0
    elif mode == "sentinel":
        assert not np.any(before == 255.0)
        assert np.mean(after[:, 1] == 255.0) > 0.9
        out = days[-1][0]
        table = sim.telemetry_of([out], "t")
        flagged = np.asarray(table["quality"]) & int(bms.Quality.SENTINEL)
        assert np.mean(flagged > 0) > 0.9
    else:
        spread_before = np.std(before[:, 1] - before[:, 0])
        spread_after = np.std(after[:, 1] - after[:, 0])
        assert spread_after > 10 * spread_before


def test_cooling_failure_makes_the_pack_run_hot_under_load() -> None:
    spec = sim.FleetSpec(
        vehicles=1, days=20, seed=6, climate="hot", start=date(2026, 5, 1), **SMALL
    )
    fault = sim.FaultSpec(
        "cooling_failure", cell=-1, sensor=-1, onset_day=5, ramp_days=5, severity=1
    )
    _, healthy = _run(spec)
    fleet, broken = _run(spec, {0: [fault]})
    hot_ok = max(d[0].temp_c.max() for d in healthy[-8:])
    hot_bad = max(d[0].temp_c.max() for d in broken[-8:])
    assert max(d[0].temp_c.max() for d in broken[:5]) == max(d[0].temp_c.max() for d in healthy[:5])
    assert hot_bad > hot_ok + 10
    if hot_bad > 60.5:
        assert fleet.faults_table()["limit"].to_pylist() == ["over_temperature"]
