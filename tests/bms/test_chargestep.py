"""SoC anchors from constant-current LFP charges across the OCV step (bms._chargestep)."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from bms import ocv_v_from_soc_pct
from bms._chargestep import STEP_LATEST_START_PCT, STEP_WINDOW_PCT, StepFit, fit_charge_step


def _charge(
    soc_start_pct: float,
    soc_end_pct: float,
    cell_ah: np.ndarray,
    *,
    offset_mv: float,
    readings: int = 240,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CC charge as a BMS reports it: charge counted [Ah], cell voltages quantised to
    1 mV with 0.7 mV noise, true SoC per reading and cell. The cells end together at
    ``soc_end_pct`` (a top-balanced pack); the mean cell starts at ``soc_start_pct``."""
    rng = np.random.default_rng(seed)
    mean_ah = float(np.mean(cell_ah))
    q_ah = np.linspace(0.0, (soc_end_pct - soc_start_pct) / 100.0 * mean_ah, readings)
    soc = soc_end_pct - 100.0 * (q_ah[-1] - q_ah[:, None]) / cell_ah[None, :]
    mv = 1000.0 * ocv_v_from_soc_pct(soc, "lfp") + offset_mv
    mv += 0.7 * rng.standard_normal(mv.shape)
    return q_ah, np.rint(mv), soc


def _across(
    soc_start: float, offset_mv: float, capacity_error: float, seed: int
) -> tuple[StepFit | None, np.ndarray]:
    """A charge across the step to 94 % by a pack of cells 2 % apart, fitted at a
    capacity ``capacity_error`` off the pack's; the fit and each cell's true SoC."""
    cell_ah = 120.0 * (1.0 + 0.02 * np.random.default_rng(seed).standard_normal(14))
    q_ah, mv, soc = _charge(soc_start, 94.0, cell_ah, offset_mv=offset_mv, seed=seed)
    return fit_charge_step(q_ah, mv, 120.0 * (1.0 + capacity_error), "lfp"), soc


def _spans_the_window(soc_start: float, capacity_error: float) -> bool:
    # Read at the capacity assumed, the charge must span the window (24 %) and a margin;
    # a charge that seems shorter may be refused (no anchor), never answered wrongly.
    return (94.0 - soc_start) / (1.0 + capacity_error) >= 28.0


@settings(max_examples=40, deadline=None)
@given(
    soc_start=st.floats(25.0, 60.0),
    offset_mv=st.floats(10.0, 80.0),
    # the capacity assumed from 15 % below the pack's to a third above it (the rated
    # capacity of a pack at 75 % SoH)
    capacity_error=st.floats(-0.15, 0.35),
    seed=st.integers(0, 1000),
)
# A pack 9 % weaker than assumed: at the capacity assumed, every anchor was 0.2-0.6 %
# high (the fit now finds the pack's capacity as well).
@example(soc_start=54.0, offset_mv=10.0, capacity_error=0.09375, seed=1)
def test_every_charge_across_the_step_is_anchored_near_each_cells_soc(
    soc_start: float, offset_mv: float, capacity_error: float, seed: int
) -> None:
    """Whatever the IR/hysteresis offset and however wrong the assumed capacity (within
    the SoH range a warranty cares about), every cell gets an anchor, never far from
    where it is (1.5 % SoC; the next test holds the 0.6 % of nearly all charges: a
    per-draw 0.6 % bound is a statistical claim that about 1 in 26,000 random charges
    misses, one cell at 0.61-0.72 %: in the one looked at, noise had a cell 3 % weaker
    than the pack refitted at 13 % weaker)."""
    assume(_spans_the_window(soc_start, capacity_error))
    fit, soc = _across(soc_start, offset_mv, capacity_error, seed)
    assert fit is not None
    assert np.all(np.isfinite(fit.soc_pct))
    err = fit.soc_pct - soc[fit.ref]
    assert np.max(np.abs(err)) < 1.5, err
    # The anchor is read near the step's centre, where capacity errors matter least.
    assert 70.0 <= float(np.mean(soc[fit.ref])) <= 82.0
    assert np.all(fit.sigma_pct > 0)
    assert np.all(fit.rms_mv < 2.0)


def test_nearly_every_charge_across_the_step_finds_each_cells_soc_within_0_6_pct() -> None:
    """1,500 random charges of the property above (a fixed seed): every cell of at least
    99.8 % of them is anchored within 0.6 % SoC of where it is (measured: 5 misses in
    131,885 charges, 0.004 %, each one cell at 0.61-0.72 %). Catches an anchor biased
    or scattered by a few tenths of a percent over a part of the offsets, capacity errors
    or starts that a handful of hypothesis draws would miss (no capacity refit: 68 of
    1,486 charges miss)."""
    rng = np.random.default_rng(20261207)
    n, tried, missed = 1500, 0, 0
    for _ in range(n):
        soc_start, capacity_error = rng.uniform(25.0, 60.0), rng.uniform(-0.15, 0.35)
        offset_mv, seed = rng.uniform(10.0, 80.0), int(rng.integers(0, 1001))
        if not _spans_the_window(soc_start, capacity_error):
            continue
        tried += 1
        fit, soc = _across(soc_start, offset_mv, capacity_error, seed)
        assert fit is not None
        missed += int(not np.max(np.abs(fit.soc_pct - soc[fit.ref])) < 0.6)
    assert tried > 0.95 * n, tried
    assert missed <= 0.002 * tried, missed


def test_a_wrong_assumed_capacity_does_not_bias_the_anchors() -> None:
    """The caller assumes the rated capacity, so on a pack at 80 % SoH it is a quarter
    too large: the pack's anchors must not all move one way (a bias of 0.5 % SoC at the
    step becomes a 1 % capacity error over a 50 % SoC window)."""
    for capacity_error in (-0.2, 0.1, 0.25):
        errs = []
        for seed in range(4):
            cell_ah = 120.0 * (1.0 + 0.02 * np.random.default_rng(seed).standard_normal(14))
            q_ah, mv, soc = _charge(40.0, 94.0, cell_ah, offset_mv=30.0, seed=seed)
            fit = fit_charge_step(q_ah, mv, float(np.mean(cell_ah)) * (1 + capacity_error), "lfp")
            assert fit is not None
            errs.append(fit.soc_pct - soc[fit.ref])
        assert abs(float(np.mean(errs))) < 0.1, (capacity_error, np.mean(errs))


def test_a_weak_cell_is_found_at_its_own_soc() -> None:
    """A cell with 15 % less capacity in a top-balanced pack is behind in SoC on the way
    up: its anchor says where it is (the weakest-cell capacity ratio is learnt from
    these differences)."""
    cell_ah = np.full(14, 120.0)
    cell_ah[5] = 102.0
    q_ah, mv, soc = _charge(35.0, 94.0, cell_ah, offset_mv=40.0)
    fit = fit_charge_step(q_ah, mv, 120.0, "lfp")
    assert fit is not None
    assert np.max(np.abs(fit.soc_pct - soc[fit.ref])) < 0.8
    assert np.median(fit.soc_pct) - fit.soc_pct[5] > 2.0


def test_a_fast_fading_cell_is_fitted_at_its_own_capacity() -> None:
    """A cell that has lost a fifth more than its neighbours (the accuracy fleet's LFP
    taxi 8 at seed 12: 78.8 % against ~95 %) crosses the step over a fifth less charge.
    At the pack's capacity its fit failed, and a charge without every cell's anchor
    gives no SoC point, so the pack's capacity estimates stopped while the cell faded
    (the vehicle was reported ``ok`` at 89 %). Refitted at its own, smaller capacity, its
    anchor is where it is, and its neighbours' anchors do not move."""
    for share, (start, end) in ((0.8, (40.0, 90.0)), (0.8, (30.0, 89.0)), (0.75, (45.0, 92.0))):
        cell_ah = np.full(14, 114.0)
        cell_ah[0] = 114.0 * share
        q_ah, mv, soc = _charge(start, end, cell_ah, offset_mv=40.0)
        fit = fit_charge_step(q_ah, mv, 120.0, "lfp")
        assert fit is not None
        assert np.all(np.isfinite(fit.soc_pct)), (share, start, end, fit.soc_pct)
        err = fit.soc_pct - soc[fit.ref]
        assert abs(float(err[0])) < 0.6, (share, start, end, err)
        assert np.max(np.abs(err[1:])) < 0.6, (share, start, end, err)


def test_charges_that_miss_the_steps_upper_half_give_no_anchor() -> None:
    cell_ah = np.full(14, 120.0)
    lo, hi = STEP_WINDOW_PCT["lfp"]
    latest = STEP_LATEST_START_PCT["lfp"]
    for start, end in ((30.0, 70.0), (latest + 3.0, 97.0), (lo + 2.0, hi - 2.0), (45.0, 66.0)):
        q_ah, mv, _ = _charge(start, end, cell_ah, offset_mv=40.0)
        assert fit_charge_step(q_ah, mv, 120.0, "lfp") is None, (start, end)


def _inside(
    soc_start: float, rate: float, half_gap_mv: float, capacity_error: float, seed: int
) -> tuple[StepFit | None, np.ndarray]:
    """A charge to 96 % begun inside the step, on the discharge branch of the
    hysteresis, fitted with a BMS's SoC up to 8 % off; the fit and each cell's true SoC."""
    rng = np.random.default_rng(seed)
    cell_ah = 120.0 * (1.0 + 0.02 * rng.standard_normal(14))
    q_ah, mv, soc = _charge(soc_start, 96.0, cell_ah, offset_mv=30.0, readings=300, seed=seed)
    x_pct = 100.0 * q_ah / float(np.mean(cell_ah))
    flip_mv = half_gap_mv * (1.0 - 2.0 * np.exp(-rate * x_pct / 100.0))
    fit = fit_charge_step(
        q_ah,
        mv + np.rint(flip_mv)[:, None],
        120.0 * (1 + capacity_error),
        "lfp",
        soc_hint_pct=soc_start + rng.uniform(-8.0, 8.0),  # a drifting BMS SoC
    )
    return fit, soc


def _inside_error(fit: StepFit, soc: np.ndarray) -> tuple[float, float]:
    """Mean and largest error of the cells anchored (NaN: refused, allowed). [%]"""
    ok = np.isfinite(fit.soc_pct)
    err = fit.soc_pct[ok] - soc[fit.ref][ok]
    return abs(float(np.mean(err))), float(np.max(np.abs(err)))


@settings(max_examples=30, deadline=None)
@given(
    soc_start=st.floats(60.0, STEP_LATEST_START_PCT["lfp"] - 0.5),
    rate=st.floats(12.0, 100.0),
    half_gap_mv=st.floats(4.0, 15.0),
    capacity_error=st.floats(-0.1, 0.1),
    seed=st.integers(0, 1000),
)
def test_a_charge_begun_inside_the_step_is_aligned_through_the_hysteresis_flip(
    soc_start: float, rate: float, half_gap_mv: float, capacity_error: float, seed: int
) -> None:
    """A car that lives above 70 % SoC starts its charges inside the step, on the
    discharge branch of the hysteresis: while it charges, the OCV moves to the charge
    branch (one-state model, Plett 2015) by twice the half gap (science.md 1: a 17-30 mV
    gap in SimSES, 5-25 mV per ACCURE) over a few % of charge, which rises like the step
    itself. Whatever the flip's rate and size, an anchor is never far from where the
    cells are (mean 2.5 %, each 3 %: no alias, no runaway). The next test holds the
    1 % SoC (one sigma) the runner adds to the fit's own sigma for nearly all charges (a
    per-draw bound there is a statistical claim that about 1 in 21,000 random charges
    misses, by up to 0.16 %)."""
    fit, soc = _inside(soc_start, rate, half_gap_mv, capacity_error, seed)
    if fit is None:
        return  # refusing is allowed; a wrong anchor is not
    mean_err, max_err = _inside_error(fit, soc)
    assert mean_err < 2.5, (mean_err, max_err)
    assert max_err < 3.0, (mean_err, max_err)


def test_nearly_every_charge_begun_inside_the_step_is_anchored_within_the_runners_sigma() -> None:
    """1,500 random charges of the property above (a fixed seed): at least 99.8 % of the
    fits put the cells within 1.25 % SoC of where they are on average and each within
    1.75 % (measured: 8 misses in 169,322 charges, 0.005 %: a mean of 1.29-1.41 % or one
    cell at 1.78 %, all with the capacity assumed 6-10 % off, which the partial fit does
    not refit, the anchors biased its way), and at least 95 % of the charges give one
    (measured 98.7 %). Catches a bias or scatter past the runner's sigma over a part of
    the starts, flips or capacity errors that 30 hypothesis draws would miss (these
    anchors 0.5 % higher: 9 misses), and anchors lost (one flip rate instead of eight:
    1,101 fits)."""
    rng = np.random.default_rng(20261207)
    n, fitted, missed = 1500, 0, 0
    for _ in range(n):
        fit, soc = _inside(
            soc_start=rng.uniform(60.0, STEP_LATEST_START_PCT["lfp"] - 0.5),
            rate=rng.uniform(12.0, 100.0),
            half_gap_mv=rng.uniform(4.0, 15.0),
            capacity_error=rng.uniform(-0.1, 0.1),
            seed=int(rng.integers(0, 1001)),
        )
        if fit is None:
            continue
        fitted += 1
        mean_err, max_err = _inside_error(fit, soc)
        missed += int(not (mean_err < 1.25 and max_err < 1.75))
    assert fitted >= 0.95 * n, fitted
    assert missed <= 0.002 * fitted, missed


def test_most_charges_begun_inside_the_step_give_an_anchor() -> None:
    cell_ah = np.full(14, 120.0)
    found = 0
    starts = np.arange(62.0, STEP_LATEST_START_PCT["lfp"], 1.0)
    for i, start in enumerate(starts):
        q_ah, mv, _soc = _charge(float(start), 97.0, cell_ah, offset_mv=30.0, seed=i)
        x_pct = 100.0 * q_ah / 120.0
        flip = np.rint(10.0 * (1.0 - 2.0 * np.exp(-30.0 * x_pct / 100.0)))
        if start > STEP_WINDOW_PCT["lfp"][0]:  # inside the window: only with a hint
            assert fit_charge_step(q_ah, mv + flip[:, None], 120.0, "lfp") is None
        fit = fit_charge_step(q_ah, mv + flip[:, None], 120.0, "lfp", soc_hint_pct=start + 5.0)
        found += int(fit is not None and bool(np.all(np.isfinite(fit.soc_pct))))
    assert found >= 0.7 * starts.size


def test_no_anchor_for_nmc_or_unusable_input() -> None:
    cell_ah = np.full(14, 120.0)
    q_ah, mv, _ = _charge(35.0, 92.0, cell_ah, offset_mv=40.0)
    assert fit_charge_step(q_ah, mv, 120.0, "nmc") is None
    assert fit_charge_step(q_ah, mv, 0.0, "lfp") is None
    assert fit_charge_step(q_ah[:5], mv[:5], 120.0, "lfp") is None
    assert fit_charge_step(q_ah[::-1], mv[::-1], 120.0, "lfp") is None  # discharge order
    flat = np.full_like(mv, 3400.0)
    assert fit_charge_step(q_ah, flat, 120.0, "lfp") is None


def test_a_charge_begun_just_before_the_step_is_not_biased_by_settling_polarisation() -> None:
    """A polarisation still settling into the charging current (first-order, tau 30-90
    min) rises like the step itself (left in, the anchor lands up to ~1 % SoC high, 3 %
    of capacity on a 30 % window). Given the time since the charge began, the fit
    removes it; without, the hysteresis-flip column (an exponential in the charge, the
    same shape at a constant current) takes it up."""
    capacity_ah, current_a, dt_s = 130.0, 0.16 * 130.0, 120.0
    for tau_s in (1800.0, 2700.0, 5400.0):
        t_s = np.arange(0.0, 3.0 * 3600.0, dt_s)
        q_ah = current_a * t_s / 3600.0
        soc = 50.0 + 100.0 * q_ah / capacity_ah
        settling_mv = 1000.0 * 1.2e-3 * current_a * (1.0 - np.exp(-t_s / tau_s))
        mv = 1000.0 * ocv_v_from_soc_pct(soc, "lfp") + 18.0 + settling_mv
        noisy = np.rint(
            mv[:, None] + 0.7 * np.random.default_rng(3).standard_normal((t_s.size, 14))
        )
        for since_start_s in (t_s, None):
            fit = fit_charge_step(q_ah, noisy, capacity_ah, "lfp", since_start_s=since_start_s)
            assert fit is not None
            err = fit.soc_pct - soc[fit.ref]
            assert abs(float(np.mean(err))) < 0.2, tau_s
            assert np.max(np.abs(err)) < 0.6, tau_s


@settings(max_examples=60, deadline=None)
@given(
    soc_start=st.floats(20.0, 85.0),
    span=st.floats(10.0, 75.0),
    rate=st.floats(12.0, 100.0),
    half_gap_mv=st.floats(0.0, 15.0),
    hint_error_pct=st.floats(-8.0, 8.0),
    seed=st.integers(0, 1000),
)
# A charge from 20 to 49 %, far below the step: a whole-window alignment read a stretch
# of it as the step and anchored it at 76 % (the BMS's 20 % was not consulted).
@example(soc_start=20.0, span=29.0, rate=39.0, half_gap_mv=4.53125, hint_error_pct=0.0, seed=1)
# Charges from the plateau below into the step (56 -> 80 %, too short for the whole
# window) with a BMS's SoC 7-8 % high: the partial fit, whose starts (64-74 %) cannot
# hold the true one, read the step's lower half as its upper half and put every anchor
# 19-20 % high (1 in 126,000 random draws).
@example(soc_start=56.7, span=23.1, rate=34.6, half_gap_mv=13.3, hint_error_pct=6.9, seed=530)
@example(soc_start=55.6, span=25.1, rate=83.0, half_gap_mv=10.0, hint_error_pct=7.9, seed=237)
def test_no_charge_gives_a_wrong_anchor(
    soc_start: float,
    span: float,
    rate: float,
    half_gap_mv: float,
    hint_error_pct: float,
    seed: int,
) -> None:
    """Wherever a charge starts and ends, an anchor it gives is never far from where the
    cells are (3 % SoC; an alias is 16-60 % off): a charge that misses the step (or its
    upper half) gives none rather than an alias. The next test holds the 1.5 % of
    nearly all anchors (a per-draw 1.5 % bound is a statistical claim that about 1 in
    118,000 random charges misses, by 0.02 %: one begun 0.7 % past the latest start,
    with a 30 mV gap and the BMS's SoC 6 % low)."""
    worst = _worst_error(soc_start, span, rate, half_gap_mv, hint_error_pct, seed)
    assert worst is None or worst < 3.0, (soc_start, span, worst)


def _worst_error(
    soc_start: float, span: float, rate: float, half_gap_mv: float, hint_error_pct: float, seed: int
) -> float | None:
    """A charge from anywhere, with a flip and a BMS's SoC ``hint_error_pct`` off: the
    largest error of its anchors [%], None if it gives none."""
    cell_ah = np.full(14, 120.0)
    end = min(soc_start + span, 99.0)
    q_ah, mv, soc = _charge(soc_start, end, cell_ah, offset_mv=30.0, seed=seed)
    flip_mv = half_gap_mv * (1.0 - 2.0 * np.exp(-rate * q_ah / 120.0))
    fit = fit_charge_step(
        q_ah,
        mv + np.rint(flip_mv)[:, None],
        120.0,
        "lfp",
        soc_hint_pct=soc_start + hint_error_pct,
    )
    if fit is None:
        return None
    ok = np.isfinite(fit.soc_pct)
    return float(np.max(np.abs(fit.soc_pct[ok] - soc[fit.ref][ok])))


def test_nearly_every_anchor_from_any_charge_is_within_1_5_pct() -> None:
    """2,000 random charges of the property above (a fixed seed): at least 99.9 % of the
    anchors given lie within 1.5 % SoC of the cells (measured: 1 miss in 117,643
    charges, by 0.02 %), and a charge gives one about as often as the step allows (at
    least 40 %; measured 46 %). Catches a family of aliases or of biased anchors over
    a part of the starts, ends, flips or BMS errors (without the partial fit's check
    of starts above the latest: a miss)."""
    rng = np.random.default_rng(20261207)
    n, fitted, missed = 2000, 0, 0
    for _ in range(n):
        worst = _worst_error(
            soc_start=rng.uniform(20.0, 85.0),
            span=rng.uniform(10.0, 75.0),
            rate=rng.uniform(12.0, 100.0),
            half_gap_mv=rng.uniform(0.0, 15.0),
            hint_error_pct=rng.uniform(-8.0, 8.0),
            seed=int(rng.integers(0, 1001)),
        )
        if worst is None:
            continue
        fitted += 1
        missed += int(not worst < 1.5)
    assert fitted >= 0.4 * n, fitted
    assert missed <= 0.001 * fitted, missed
