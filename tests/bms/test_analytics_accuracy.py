"""Accuracy of the analytics against the simulator's ground truth (issue 6).

One fleet of 50 cars (NMC and LFP, hot and mild climate, commuters, taxis and occasional
drivers, one in four with an injected fault) is simulated for two years with small
packs (14 cells) and a coarse cadence, analysed once with ``bms.run_pending``, and the
last date is scored by ``tests.bms.test_analytics_truth.score_fleet`` (the benchmark
``benchmarks/accuracy.py`` runs the same scoring at full size).

Measured (analytics-15): SoH MAE 0.77 points, 90 % interval coverage 92 %, resistance
growth error 7.8 % of the mean true growth, warranty verdicts agree for 96 % of vehicles
(48 of 50). All four are asserted at their goal. Drawn with seed 12 the fleet scores MAE
0.66, coverage 94 %, growth error 7.3 %, agreement 94 % (LFP 32, truly claim-eligible,
says at_risk; LFP 22 and 30, with 3 and 13 estimates, say insufficient_data), and no
vehicle below its threshold is reported ``ok`` (LFP taxi 8, a fast-fading cell at
78.8 %, was, at 89.2 %, until the pack's capacity followed its weakest cell:
``tests/bms/test_analytics_weak_cell.py``).

Analytics-14 weighs a week's estimates as sharing a 1 % error in the trend fit
(``analytics.soh_cluster_sigma_pct``): here MAE 0.83 -> 0.85, seed 12 0.79 -> 0.80,
the other figures and every verdict unchanged; at full size it turned NMC 9's wrong
``at_risk`` into ``ok`` (``benchmarks/accuracy.py``).

Analytics-15 moves the trend to the level of the last 30 days' estimates where they
stand more than 3 sigma off it (``bms.recent_level_shift``): the fast-fading NMC 1 here
(55.9 -> 59.5 against a true 59.8) and NMC 46 at seed 12 (57.4 -> 64.1 against 64.4);
no other vehicle moved.

Since analytics-10: two NMC cars with a soft short (28 and 34 here, 19 and 40 at seed
12), parked for good from February and May 2025, said ``insufficient_data``. Their
verdict rests on how hard they have been used since their last estimate, and the
stress bound read each day's temperature at its band's edges (10-15 K apart, a factor
2-3 in the calendar rate at each edge): 2.1-5.3 x as ageing as before. The calendar
stress now integrates each reading's temperature through the laws' Arrhenius term
(``bms._warranty.calendar_stress_from_exposure``): 0.86 and 1.38 x. And the leak biased their
estimates low (28: 90.7 against a true 95.5): a leaking cell's SoC step grows with the
time between two rest points, a weak cell's with the charge counted, so the two are
now told apart (``bms._leak``) and the leak given back (28: 93.8).

Since analytics-11: a step's temperature leaves out a sensor that jumped since the
reading before it (``step_cells.sql``): of two sensors, one erratic (three cars of seed
12) moved the median, their mean, and their growth read 0 (seed 12's growth error
10.3 -> 7.3 %).

Before: occasional NMC drivers kept plugged in at full rest 3 h only there
and 1-2.5 h between the legs of a trip (NMC 26 here; 31, 37 and 38 at seed 12 had no
estimate in two years); a rest from 1 h now gives an OCV point with its relaxation
extrapolated (``bms._relax``), and those vehicles agree. LFP charge-step anchors were
read at the rated capacity, 0.2-0.5 % SoC high on aged packs; the pack's capacity is
now fitted with them (``bms._chargestep``), which took 0.1-0.5 points off the LFP
estimates' bias.

The two disagreements both say ``insufficient_data``, as a trend without recent
estimates may not say ``ok``. LFP 20 rests only at 98.5 %, the rest of its range is
plateau. A fast-fading LFP occasional driver (36, truly below its threshold) rests and
starts its charges at 83-99 %, above the step's upper half. NMC 9, driven a few times
a month, rests at ~99 % and after a trip at 91-95 %: windows of 7-10 %, measured since
the window floor is 7 %
(``AnalyticsParams.min_soc_window_pct``; it was 10 % and its estimates stopped in
September 2024).

LFP cars that live above 70 % SoC (13, 25, 27, 35) were the rest of the gap: their
charges start inside the 70-82 % OCV step, on the discharge branch of the hysteresis,
which flips to the charge branch while the step rises; ``bms._chargestep`` now fits the
flip with the step's upper half (near where the BMS's SoC says the charge began).
Resistance growth: a cell whose resistance jumps (9) is a step, not a power law
(``bms.fit_step_trend``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bms.test_analytics_truth import (
    FleetScore,
    accuracy_spec,
    score_fleet,
    simulate_and_analyse,
)

SPEC = accuracy_spec()


@pytest.fixture(scope="session")
def scored(tmp_path_factory: pytest.TempPathFactory) -> FleetScore:
    data_dir = tmp_path_factory.mktemp("accuracy") / "data"
    timing = simulate_and_analyse(SPEC, data_dir)
    assert timing.dates == SPEC.days + 1  # the first local day starts the UTC day before
    return score_fleet(data_dir, SPEC.fleet)


def _explain(score: FleetScore) -> str:
    return score.summary() + "\n" + score.table()


@pytest.mark.slow
def test_soh_mean_absolute_error_is_within_1_5_points(scored: FleetScore) -> None:
    assert len(scored.vehicles) == SPEC.vehicles
    assert {v.chemistry for v in scored.vehicles} == {"nmc", "lfp"}
    assert {v.climate for v in scored.vehicles} == {"hot", "mild"}
    assert scored.soh_mae_pct <= 1.5, _explain(scored)


@pytest.mark.slow
def test_true_soh_lies_in_the_90_percent_interval_for_85_percent_of_vehicles(
    scored: FleetScore,
) -> None:
    assert scored.soh_coverage >= 0.85, _explain(scored)


@pytest.mark.slow
def test_a_claim_is_judged_on_the_measured_soh(scored: FleetScore) -> None:
    """The SoH of a vehicle reported ``claim_eligible`` is its measured level, not a
    power law bent past it: the fast-fading NMC 1 taxi read 55.9 against a true 59.8
    before ``bms.recent_level_shift``."""
    claims = [v for v in scored.vehicles if v.status == "claim_eligible"]
    assert claims, _explain(scored)
    for v in claims:
        assert abs(v.soh_error_pct) <= 1.5, _explain(scored)
        assert v.soh_low_pct <= v.soh_true_pct <= v.soh_high_pct, _explain(scored)


@pytest.mark.slow
def test_pack_resistance_and_its_growth_track_the_truth(scored: FleetScore) -> None:
    assert all(v.r_mohm == v.r_mohm for v in scored.vehicles), "every vehicle gets a value"
    assert scored.resistance_rel_error <= 0.05, _explain(scored)
    assert scored.growth_rel_error <= 0.10, _explain(scored)


@pytest.mark.slow
def test_warranty_verdicts_agree_with_the_truth_or_say_the_evidence_is_missing(
    scored: FleetScore,
) -> None:
    assert scored.verdict_agreement >= 0.95, _explain(scored)
    wrong = [v for v in scored.vehicles if v.status not in (v.status_true, "insufficient_data")]
    assert len(wrong) <= 1, _explain(scored)


@pytest.mark.slow
def test_lfp_cars_without_readable_rests_get_estimates_from_charge_steps(
    scored: FleetScore,
) -> None:
    lfp = [v for v in scored.vehicles if v.chemistry == "lfp"]
    measured = [v for v in lfp if v.n_estimates >= 20]
    assert len(measured) >= 0.75 * len(lfp), _explain(scored)


@pytest.mark.slow
def test_warranty_never_says_ok_for_a_vehicle_below_its_threshold(
    scored: FleetScore,
) -> None:
    assert any(v.below_threshold for v in scored.vehicles), "the fleet must exercise it"
    assert scored.below_threshold_ok == (), _explain(scored)


def test_scoring_matches_metrics_and_truth_dates(tmp_path: Path) -> None:
    """The scorer compares UTC date D of the metrics with local date D of the truth."""
    from datetime import date

    import sim

    spec = accuracy_spec(vehicles=2, days=3, cadence_s=600, idle_cadence_s=900)
    assert spec.timezone == "Asia/Kolkata"
    timing = simulate_and_analyse(spec, tmp_path / "data")
    assert timing.dates == 4
    score = score_fleet(tmp_path / "data", spec.fleet)
    assert score.day == date(2024, 1, 3) == spec.end
    assert {v.vin for v in score.vehicles} == {
        sim.make_vin(spec.fleet, spec.seed, i) for i in (0, 1)
    }
