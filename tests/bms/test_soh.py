"""Robust SoH trend fit, capacity and resistance science functions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose

import bms


def test_fit_recovers_a_power_law_despite_outliers() -> None:
    rng = np.random.default_rng(7)
    t = np.sort(rng.uniform(0.01, 2.0, 300))
    y = 101.0 - 3.0 * t**0.75 + 0.8 * rng.standard_normal(t.size)
    y[::25] -= 15.0  # one estimate in 25 is garbage (a bad rest point)
    fit = bms.fit_power_trend(
        t,
        y,
        np.full(t.size, 0.8),
        exponent=0.75,
        prior_mean=(100, -2),
        prior_sigma=(5, 4),
        b_sign=-1,
    )
    assert fit.a == pytest.approx(101.0, abs=0.3)
    assert fit.b == pytest.approx(-3.0, abs=0.4)


def test_fit_interval_covers_the_truth_about_90_percent_of_the_time() -> None:
    rng = np.random.default_rng(3)
    hits = 0
    trials = 300
    for _ in range(trials):
        t = np.sort(rng.uniform(0.01, 1.5, 40))
        y = 100.0 - 2.5 * t**0.5 + 1.0 * rng.standard_normal(t.size)
        fit = bms.fit_power_trend(
            t,
            y,
            np.full(t.size, 1.0),
            exponent=0.5,
            prior_mean=(100, -2),
            prior_sigma=(np.inf, np.inf),
        )
        _, lo, hi = fit.interval(1.5)
        hits += int(lo <= 100.0 - 2.5 * 1.5**0.5 <= hi)
    assert 0.85 <= hits / trials <= 0.95


def test_fit_without_data_returns_the_prior() -> None:
    fit = bms.fit_power_trend(
        [], [], [], exponent=0.75, prior_mean=(100, -2), prior_sigma=(5, 4), b_sign=-1
    )
    assert (fit.a, fit.b, fit.n) == (100.0, -2.0, 0)


def test_capacity_from_soc_window_scalar_and_array() -> None:
    assert_allclose(bms.capacity_ah_from_soc_window(47.5, 40.0, 90.0), 95.0)
    assert_allclose(
        bms.capacity_ah_from_soc_window([-50.0, 10.0, 5.0], [90.0, 50.0, 50.0], [40.0, 50.0, 40.0]),
        [100.0, np.nan, np.nan],
    )


def test_soc_sigma_is_small_on_nmc_and_huge_on_the_lfp_plateau() -> None:
    # 3 mV on NMC at 52.5 % (slope 9.8 mV/%); 5 mV on the LFP plateau (0.4 mV/%).
    assert_allclose(bms.soc_sigma_pct_from_ocv(52.5, "nmc"), 3 / 9.8, rtol=1e-6)
    assert bms.soc_sigma_pct_from_ocv(50.0, "lfp") > 5.0
    assert bms.soc_sigma_pct_from_ocv(99.0, "lfp") < 0.5


@given(st.sampled_from([-1, 1]), st.floats(0.0, 2.0), st.floats(0.009, 0.1))
def test_the_hysteresis_branch_after_a_move_lies_within_its_uncertainty(
    direction: int, moved_share: float, efold: float
) -> None:
    """Whatever the flip rate among those assumed (e-folds of 0.9-10 % of capacity), the
    OCV's true offset after ``moved_share`` lies within the offset +- its uncertainty,
    whether the cell came from the other branch or was already on this one."""
    half = 10.0
    offset, sigma = bms.hysteresis_offset_mv("lfp", direction, moved_share)
    from_other = direction * (1.0 - 2.0 * np.exp(-moved_share / efold)) * half
    for true in (from_other, direction * half):
        assert abs(true - offset) <= sigma + 1e-9
    assert abs(offset) <= half
    assert 0.0 <= sigma <= 2.0 * half


def test_the_hysteresis_branch_is_certain_only_after_a_long_move() -> None:
    # 1 % of capacity after a charge: anywhere near either branch; 50 %: flipped
    assert bms.hysteresis_offset_mv("lfp", -1, 0.01)[1] > 10.0
    assert bms.hysteresis_offset_mv("lfp", -1, 0.5) == pytest.approx((-10.0, 0.0), abs=0.2)
    assert bms.hysteresis_offset_mv("lfp", 1, None) == (10.0, 0.0)  # told it has flipped
    assert bms.hysteresis_offset_mv("lfp", 0, 0.5) == (0.0, 10.0)  # direction unknown
    assert bms.hysteresis_offset_mv("nmc", -1, 0.01) == (0.0, 0.0)  # no hysteresis


def test_readable_soc_bands_are_the_steep_parts_of_the_ocv_curve() -> None:
    # LFP at 10 mV: below the plateau and its top knee only; NMC at 3 mV: everywhere.
    assert bms.readable_soc_bands_pct("lfp", 3.0) == ((0.0, 26.0), (95.5, 100.0))
    assert bms.readable_soc_bands_pct("nmc", 3.0) == ((0.0, 100.0),)
    for lo, hi in bms.readable_soc_bands_pct("lfp", 3.0):
        assert bms.soc_sigma_pct_from_ocv(np.linspace(lo, hi, 9), "lfp").max() <= 3.0 + 0.3
    assert bms.soc_sigma_pct_from_ocv(60.0, "lfp") > 3.0


def test_missing_capacity_evidence_says_what_the_soc_range_lacked() -> None:
    def lacked(chem: str, lo: float, hi: float) -> str:
        return bms.missing_capacity_evidence(chem, lo, hi, max_sigma_pct=3.0, min_window_pct=7.0)

    # NMC reads everywhere: only a narrow range lacks
    assert lacked("nmc", 62.0, 66.0) == (
        "BMS SoC 62-66 %: a rest reads an NMC pack's SoC at any SoC (within 3 %) and an "
        "estimate needs two such points at least 7 % apart; two rests that far apart "
        "would give one"
    )
    # LFP on the plateau's top: neither two readable rests nor a charge across the step
    top = lacked("lfp", 84.0, 100.0)
    assert top.startswith("BMS SoC 84-100 %: a rest reads an LFP pack's SoC only at 0-26 %")
    assert "across the 64-88 % OCV step started at 76 % or below" in top
    assert top.endswith("a charge from 76 % or below to 96 % or more, then a rest, would give one")
    # a charge across the step but never to a readable SoC: the same advice
    assert lacked("lfp", 40.0, 95.0).endswith("would give one")
    # ranges that could have given one (down to the readable bottom; across the step
    # to full): the clause says the data had the range but not what passes the checks
    assert lacked("nmc", 20.0, 90.0) == (
        "BMS SoC 20-90 %, which could give an estimate, but none passed its checks (a rest "
        "long enough at a readable SoC, no data gap in the charge counted between two points)"
    )
    for lo, hi in ((10.0, 30.0), (70.0, 100.0)):
        assert lacked("lfp", lo, hi).endswith(
            "a clean fit of a charge across the OCV step, no data gap in the charge counted "
            "between two points)"
        ), (lo, hi)


def test_capacity_rel_sigma_follows_the_window_rule_of_science_md() -> None:
    # sigma_SoC 2 % at both ends over a 50 % window: sqrt(2) x 2 / 50 = 5.7 %.
    rel = bms.capacity_rel_sigma(
        soc_start_pct=40,
        soc_end_pct=90,
        soc_sigma_start_pct=2,
        soc_sigma_end_pct=2,
        offset_sigma_a=0.0,
        duration_h=0.0,
        capacity_ah=100,
        temp_c=25,
    )
    assert_allclose(rel, np.sqrt(2) * 2 / 50, rtol=1e-9)


def test_current_offset_is_the_median_at_rest() -> None:
    rng = np.random.default_rng(0)
    x = 0.1 + 0.05 * rng.standard_normal(400)
    x[:5] = 30.0  # wake-up spikes
    off, sigma = bms.current_offset_a(x)
    assert off == pytest.approx(0.1, abs=0.01)
    assert 0 < sigma < 0.01


def test_resistance_step_and_temperature_normalisation() -> None:
    assert_allclose(bms.resistance_mohm_from_step([-0.75, 0.3], [-50.0, 20.0]), [15.0, 15.0])
    # 17 kJ/mol: x1.44 at 10 degC (science.md 3: x1.4-1.45 for the Sony LFP).
    assert_allclose(bms.resistance_mohm_at_reference(14.38, 10.0), 10.0, rtol=0.001)


def _step_history(
    seed: int, step_mohm: float, n: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A resistance history: 10.5 mOhm new, t^0.75 ageing, 1 % noise, and a cell whose
    resistance jumps by ``step_mohm`` at 1.3 years."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.0, 2.0, n))
    y = 10.5 + 0.6 * t**0.75 + step_mohm * (t > 1.3) + 0.105 * rng.standard_normal(n)
    return t, y, np.full(n, 0.105)


def test_fit_step_trend_recovers_a_resistance_jump_and_its_time() -> None:
    t, y, sigma = _step_history(5, 4.0)
    step = bms.fit_step_trend(t, y, sigma, exponent=0.75)
    assert step is not None
    assert step.bic_drop > bms.STEP_MIN_BIC_DROP
    assert step.t_step_years == pytest.approx(1.3, abs=0.03)
    assert step.c == pytest.approx(4.0, abs=0.15)
    assert step.a == pytest.approx(10.5, abs=0.1)
    rise, sd = step.growth(2.0)
    assert rise == pytest.approx(0.6 * 2.0**0.75 + 4.0, abs=0.2)
    assert 0 < sd < 0.2
    before, _ = step.growth(1.0)  # before the step: ageing only
    assert before == pytest.approx(0.6, abs=0.15)


def test_fit_step_trend_finds_no_convincing_step_in_plain_ageing() -> None:
    drops = []
    for seed in range(40):
        t, y, sigma = _step_history(seed, 0.0)
        step = bms.fit_step_trend(t, y, sigma, exponent=0.75)
        drops.append(-np.inf if step is None else step.bic_drop)
    # Kass & Raftery's "very strong" threshold: chance alone rarely reaches it.
    assert np.mean(np.asarray(drops) > bms.STEP_MIN_BIC_DROP) <= 0.05


def test_fit_step_trend_needs_estimates_on_both_sides() -> None:
    t, y, sigma = _step_history(1, 4.0, n=15)
    assert bms.fit_step_trend(t, y, sigma, exponent=0.75) is None  # < 2 x min_side
    t, y, sigma = _step_history(1, 4.0)
    assert bms.fit_step_trend(t[::-1], y[::-1], sigma, exponent=0.75) is None  # unordered


def test_fit_with_clusters_does_not_trust_bursts_of_shared_error() -> None:
    """Five bursts of ten estimates, each burst sharing one error: as ten independent
    estimates per burst the interval is too narrow; grouped, it covers the truth about
    90 % of the time (the groups' mean residuals set the scale, five groups the dof)."""
    rng = np.random.default_rng(11)
    trials, hits_grouped, hits_plain = 300, 0, 0
    for _ in range(trials):
        days = np.concatenate([d + np.arange(10) / 10 for d in (5, 150, 300, 450, 600)])
        t = days / 365.25
        shared = np.repeat(1.0 * rng.standard_normal(5), 10)
        y = 100.0 - 3.0 * t**0.5 + shared + 0.3 * rng.standard_normal(t.size)
        sigma = np.full(t.size, 1.0)
        truth = 100.0 - 3.0 * 2.0**0.5
        for cluster in (np.floor(days / 7).astype(int), None):
            fit = bms.fit_power_trend(
                t,
                y,
                sigma,
                exponent=0.5,
                prior_mean=(100, -2),
                prior_sigma=(np.inf, np.inf),
                cluster=cluster,
            )
            _, lo, hi = fit.interval(2.0)
            hit = int(lo <= truth <= hi)
            if cluster is None:
                hits_plain += hit
            else:
                hits_grouped += hit
                assert fit.dof == 3.0
    assert hits_grouped / trials >= 0.85
    assert hits_plain / trials < 0.8  # why the groups matter


def test_a_shared_cluster_error_of_single_estimates_adds_to_each_variance() -> None:
    """Groups of one: the random effect is one more independent error, so the fit is
    the plain one with sigma_i^2 + tau^2 (the Sherman-Morrison weights are exact). At
    the residual scale 1 (no reweighting: the scale multiplies sigma_i, not tau)."""
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0.0, 3.0, 40))
    sigma = rng.uniform(0.5, 2.0, t.size)
    y = 100.0 - 2.5 * t**0.75 + sigma * rng.standard_normal(t.size)
    common = {"exponent": 0.75, "prior_mean": (100.0, -2.0), "prior_sigma": (5.0, 4.0)}
    shared = bms.fit_power_trend(
        t, y, sigma, cluster=np.arange(t.size), cluster_sigma=1.2, iterations=0, **common
    )
    plain = bms.fit_power_trend(
        t, y, np.hypot(sigma, 1.2), cluster=np.arange(t.size), iterations=0, **common
    )
    assert_allclose([shared.a, shared.b], [plain.a, plain.b], rtol=1e-9)
    assert_allclose(shared.cov, plain.cov, rtol=1e-9)


def test_a_burst_of_estimates_sharing_an_error_does_not_set_the_trend() -> None:
    """A vehicle's first week: eight estimates that share a rest point read 3 % high,
    then one estimate a week for two years on the true curve. As independent the burst
    pulls the SoH when new up and the fade steeper; with its error shared (1 % a week)
    it weighs like a couple of estimates and the projection stays near the truth."""
    rng = np.random.default_rng(5)
    burst = 2.0 + np.arange(8) / 4.0
    weekly = np.arange(3, 104) * 7.0 + 3.0
    days = np.concatenate([burst, weekly])
    t = days / 365.25
    truth = 100.0 - 4.0 * t**0.75
    y = truth + np.where(days < 7, 3.0, 0.0) + 0.8 * rng.standard_normal(t.size)
    sigma = np.where(days < 7, 1.5, 2.0)
    week = np.floor(days / 7.0).astype(int)
    common = {"exponent": 0.75, "prior_mean": (100.0, -2.0), "prior_sigma": (5.0, 4.0)}
    at_5y = 100.0 - 4.0 * 5.0**0.75
    plain = bms.fit_power_trend(t, y, sigma, cluster=week, **common)
    shared = bms.fit_power_trend(t, y, sigma, cluster=week, cluster_sigma=1.0, **common)
    assert abs(shared.interval(5.0)[0] - at_5y) < 0.5 * abs(plain.interval(5.0)[0] - at_5y)
    assert abs(shared.a - 100.0) < abs(plain.a - 100.0)


def test_recent_estimates_clearly_off_the_trend_move_it_others_do_not() -> None:
    """A pack whose weakest cell fades fast for three months, then ages as before: the
    power law overshoots the ramp and ends below the last month's estimates; moved to
    their level, the SoH now is the measured one. A pack ageing as the law says is
    left as fitted (its recent estimates agree within their noise)."""
    rng = np.random.default_rng(7)
    days = np.arange(2.0, 730.0, 2.0)
    t = days / 365.25
    gradual = 100.0 - 3.0 * t**0.75
    ramp = 25.0 * np.clip((days - 200.0) / 120.0, 0.0, 1.0)
    week = np.floor(days / 7.0).astype(int)
    common = {"exponent": 0.75, "prior_mean": (100.0, -2.0), "prior_sigma": (5.0, 4.0)}
    for truth, moves in ((gradual - ramp, True), (gradual, False)):
        y = truth + 0.8 * rng.standard_normal(t.size)
        sigma = np.full(t.size, 0.8)
        fit = bms.fit_power_trend(t, y, sigma, cluster=week, cluster_sigma=1.0, **common)
        now = float(t[-1])
        moved = bms.recent_level_shift(
            fit,
            t,
            y,
            sigma,
            window_years=30 / 365.25,
            cluster_years=7 / 365.25,
            cluster_sigma=1.0,
        )
        if moves:
            assert fit.interval(now)[0] < truth[-1] - 2.0  # the law misses the level now
            assert moved.shift > 2.0
            soh, lo, hi = moved.interval(now)
            assert abs(float(soh) - truth[-1]) < 1.0
            assert lo <= truth[-1] <= hi
            assert moved.a == fit.a  # the SoH when new is the fit's
            # Months without an estimate since: the newest estimates still set the level
            # (a window ending today dropped the shift a month after them, and the SoH
            # shown went back to the law with nothing new measured).
            old = t <= now - 90 / 365.25
            fit_old = bms.fit_power_trend(
                t[old], y[old], sigma[old], cluster=week[old], cluster_sigma=1.0, **common
            )
            kept = bms.recent_level_shift(
                fit_old,
                t[old],
                y[old],
                sigma[old],
                window_years=30 / 365.25,
                cluster_years=7 / 365.25,
                cluster_sigma=1.0,
            )
            last = float(t[old][-1])
            assert fit_old.interval(last)[0] < truth[old][-1] - 2.0
            assert abs(float(kept.interval(last)[0]) - truth[old][-1]) < 1.0
            assert kept.shift == pytest.approx(
                float(kept.interval(now)[0]) - float(fit_old.interval(now)[0])
            )
        else:
            assert moved is fit


def test_a_vehicle_never_measured_gets_the_fleets_spread_faults_included() -> None:
    """The interval shown for a vehicle without a capacity estimate is where the fleet's
    measured vehicles stand (smallest to largest offset from the typical trend), not the
    typical vehicles' spread: in a fleet where one vehicle in four has a fading cell
    (offsets 10-30 points down), one more vehicle falls inside it 90 % of the time for
    19 measured ones (Wilks), while the robust spread of the typical ones (1.4826 MAD,
    as the trend's own interval) covers far less."""
    from bms._analytics import _population_offsets

    rng = np.random.default_rng(3)

    def fleet(n: int) -> np.ndarray:
        faulty = rng.random(n) < 0.25
        return np.where(faulty, -rng.uniform(10.0, 30.0, n), rng.normal(0.0, 1.0, n))

    hits = robust_hits = 0
    trials = 4000
    for _ in range(trials):
        measured, new = fleet(19), float(fleet(1)[0])
        lo, hi = _population_offsets(measured)
        hits += lo <= new <= hi
        mad = 1.4826 * float(np.median(np.abs(measured - np.median(measured))))
        robust_hits += abs(new - float(np.median(measured))) <= 1.645 * mad
    assert 0.87 <= hits / trials <= 0.93
    assert robust_hits / trials < 0.8
    assert _population_offsets(np.array([1.0, 2.0])) == (0.0, 2.0)  # holds the trend


def test_a_fade_hidden_by_its_own_misfit_is_judged_by_the_scatter_before_it() -> None:
    """The 21 capacity estimates of an LFP pack with a fast-fading cell (seed 12's LFP 32,
    charge-step to rest, sigmas 3.5-8.8 %), truly 75.5 % on 2025-12-30: bursts at 101-105,
    95-97 and 95.5-98.5 %, then five at 75-76 %. Fitted as a power law, the ramp inflates
    the fit's scale (4.6) so much that the five stand only 2.8 of its sigmas off, and the
    SoH read 88.2 (74.6-101.9): ``at_risk`` for a pack below 80 % within cover. Judged by
    the scale of the estimates before them (those agree with a law), they stand far off
    (7.8 sigma) and set the level."""
    days = [1, 2, 3, 3, 4, 318, 319, 320, 321, 321, 322, 443, 444, 445, 446, 447]
    days += [666, 667, 668, 669, 670]
    soh = [100.72, 102.91, 103.28, 102.98, 104.9, 95.22, 96.72, 96.58, 96.53, 95.72, 97.29]
    soh += [95.47, 96.58, 96.67, 96.36, 98.41, 75.83, 76.14, 75.66, 74.96, 75.21]
    sigma = [5.01, 5.28, 5.44, 6.43, 5.69, 6.19, 6.25, 6.32, 6.33, 8.81, 6.5]
    sigma += [6.35, 6.46, 6.45, 6.76, 7.19, 3.45, 3.45, 3.46, 3.5, 3.76]
    t = (np.asarray(days, dtype=np.float64) + 0.5) / 365.25
    y, sg = np.asarray(soh), np.asarray(sigma)
    kw = {"systematic_sigma_pct": 0.4, "cluster_days": 7.0, "cluster_sigma_pct": 1.0}
    shift_kw = {"window_years": 30 / 365.25, "cluster_years": 7 / 365.25, "cluster_sigma": 1.0}
    fit = bms.fit_vehicle_soh(t, y, sg, "lfp", **kw)
    now, truth = 729.5 / 365.25, 75.51
    assert bms.recent_level_shift(fit, t, y, sg, **shift_kw) is fit  # hidden at its scale
    before = t < t.max() - 30 / 365.25
    older = bms.fit_vehicle_soh(t[before], y[before], sg[before], "lfp", **kw)
    assert older.scale < fit.scale / 2
    moved = bms.recent_level_shift(fit, t, y, sg, **shift_kw, scale=older.scale)
    soh_now, lo, hi = (float(v) for v in moved.interval(now))
    assert abs(soh_now - truth) < 1.5
    assert lo <= truth <= hi
    # The interval is the recent estimates' level and the fade since, not the law's own
    # level, which the fault made uncertain (it spanned 60.7-89.7).
    assert hi - lo < 15.0, (lo, hi)


def test_two_wild_estimates_with_small_sigmas_do_not_move_a_sound_trend() -> None:
    """Seed 15's LFP 14 (a sound pack, truly 95.5 %): among its last month's sixteen
    estimates, fourteen at 92-97 % (sigmas 4.6-5.9 %; here on a slow law) and two at
    15.5 and 17.8 % with sigmas of 1.1 and 1.0 % (a charge-step alias on a cell of high
    resistance). Their
    weighted mean stood far off the trend, and the SoH shown became 77 %: a claim. The
    median of the recent residuals says the recent estimates mostly agree with the
    trend, so it stays; five estimates that all stand off (LFP 32 above) still move it."""
    rng = np.random.default_rng(15)
    days = np.sort(rng.uniform(0, 700, 280))
    t = days / 365.25
    y = 100.0 - 2.0 * t**0.5 + 1.5 * rng.standard_normal(t.size)
    sg = np.full(t.size, 5.0)
    recent_t = (700.0 + np.arange(16) + 0.5) / 365.25
    recent_y = 100.0 - 2.0 * recent_t**0.5 + 1.5 * rng.standard_normal(16)
    recent_sg = np.full(16, 5.0)
    recent_y[[3, 5]] = (17.82, 15.51)
    recent_sg[[3, 5]] = (1.01, 1.14)
    t, y, sg = np.r_[t, recent_t], np.r_[y, recent_y], np.r_[sg, recent_sg]
    kw = {"systematic_sigma_pct": 0.4, "cluster_days": 7.0, "cluster_sigma_pct": 1.0}
    fit = bms.fit_vehicle_soh(t, y, sg, "lfp", **kw)
    moved = bms.recent_level_shift(
        fit, t, y, sg, window_years=30 / 365.25, cluster_years=7 / 365.25, cluster_sigma=1.0
    )
    assert moved is fit
    now = 716 / 365.25
    assert abs(float(moved.interval(now)[0]) - (100.0 - 2.0 * now**0.5)) < 1.0
