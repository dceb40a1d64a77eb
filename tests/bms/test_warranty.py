"""Warranty policies (TOML presets) and verdicts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

import bms
from bms._soh import t_quantile_95
from bms._warranty import (
    CALENDAR_REF_TEMP_C,
    PACK_LIFE_FACTOR,
    calendar_arrhenius_k,
    calendar_stress_from_exposure,
    daily_ageing_stress,
    fade_since_bound_frac,
    silent_day_stress,
    usage_stress_ratio,
)


def _fit(a: float, b: float, sigma: float = 0.3, exponent: float = 0.75) -> bms.PowerFit:
    """A fitted SoH trend y = a + b t^exponent from exact points with the given scatter."""
    t = np.linspace(0.05, 2.0, 60)
    rng = np.random.default_rng(1)
    y = a + b * t**exponent + sigma * rng.standard_normal(t.size)
    return bms.fit_power_trend(
        t,
        y,
        np.full(t.size, sigma),
        exponent=exponent,
        prior_mean=(100, -2),
        prior_sigma=(5, 4),
        b_sign=-1,
    )


def test_presets_cover_oem_terms_gtr22_and_euro7() -> None:
    presets = bms.warranty_presets()
    assert {"oem-8y-160k-70", "un-gtr22", "euro7-m1", "euro7-n1"} <= set(presets)
    gtr = bms.load_warranty_policy("un-gtr22")
    assert [(t.years, t.km, t.min_soh_pct) for t in gtr.thresholds] == [
        (5.0, 100_000.0, 80.0),
        (8.0, 160_000.0, 70.0),
    ]
    euro7 = bms.load_warranty_policy("euro7-m1")
    assert [t.min_soh_pct for t in euro7.thresholds] == [80.0, 72.0]
    scooter = bms.load_warranty_policy("oem-2w-8y-80k-70")
    assert [(t.years, t.km, t.min_soh_pct) for t in scooter.thresholds] == [(8.0, 80_000.0, 70.0)]


def test_a_policy_file_named_without_toml_in_the_working_directory_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fleet-terms").write_text(
        'id = "fleet-terms"\n[[threshold]]\nyears = 6\nkm = 120000\nmin_soh_pct = 75\n'
    )
    monkeypatch.chdir(tmp_path)
    assert bms.load_warranty_policy("fleet-terms").id == "fleet-terms"
    # a preset's id still names the preset, whatever the directory holds
    (tmp_path / "oem-8y-160k-70").write_text("not toml")
    assert bms.load_warranty_policy("oem-8y-160k-70").id == "oem-8y-160k-70"


def test_bad_preset_name_lists_the_valid_ones() -> None:
    with pytest.raises(bms.WarrantyPolicyError) as err:
        bms.load_warranty_policy("oem-10y")
    assert str(err.value) == (
        "unknown warranty policy 'oem-10y' (no such preset or file); valid presets: "
        + ", ".join(bms.warranty_presets())
    )


def test_policy_file_is_parsed_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(
        'id = "fleet-6y"\n[[threshold]]\nyears = 6\nkm = 120000\nmin_soh_pct = 75\n'
        "[usage]\nmax_dc_fast_share = 0.5\n"
    )
    p = bms.load_warranty_policy(path)
    assert p.id == "fleet-6y"
    assert p.thresholds[0] == bms.WarrantyThreshold(6.0, 120_000.0, 75.0)
    assert p.usage.max_dc_fast_share == 0.5
    path.write_text('id = "x"\n[[threshold]]\nyears = 6\nkm = 120000\n')
    with pytest.raises(bms.WarrantyPolicyError, match=r"threshold\[0\].min_soh_pct is missing"):
        bms.load_warranty_policy(path)
    path.write_text('id = "x"\ncolour = 1\n[[threshold]]\nyears=1\nkm=1\nmin_soh_pct=70\n')
    with pytest.raises(bms.WarrantyPolicyError, match="unknown key"):
        bms.load_warranty_policy(path)


def test_verdicts_ok_at_risk_claim_and_out_of_coverage() -> None:
    policy = bms.load_warranty_policy("oem-8y-160k-70")
    healthy = _fit(100.0, -2.0)
    v = bms.warranty_verdict(policy, healthy, age_years=2, odometer_km=30_000, km_per_day=40)
    assert v.status == "ok"
    assert v.projected_soh_pct == pytest.approx(100 - 2 * 8**0.75, abs=0.5)
    fast = _fit(100.0, -8.0)  # 100 - 8 t^0.75: 86.5 at 2 y, 62 at 8 y
    v = bms.warranty_verdict(policy, fast, age_years=2, odometer_km=30_000, km_per_day=40)
    assert v.status == "at_risk"
    assert "projected" in v.reason
    # The km limit comes first for a vehicle driving 150 km a day.
    v = bms.warranty_verdict(policy, fast, age_years=2, odometer_km=30_000, km_per_day=150)
    assert v.coverage_end_km == 160_000
    assert v.coverage_end_years == pytest.approx(2 + 130_000 / 150 / 365.25)
    broken = _fit(100.0, -20.0)  # below 70 % at 2 y
    v = bms.warranty_verdict(policy, broken, age_years=2, odometer_km=30_000, km_per_day=40)
    assert v.status == "claim_eligible"
    v = bms.warranty_verdict(policy, broken, age_years=9, odometer_km=90_000, km_per_day=40)
    assert v.status == "out_of_coverage"
    v = bms.warranty_verdict(policy, None, age_years=1, odometer_km=9_000, km_per_day=40)
    assert v.status == "insufficient_data"


def test_an_ended_cover_says_which_limit_ended_it_and_when() -> None:
    """The end of an ended cover is where the first limit was passed (a past crossing at
    the vehicle's average km per day since in service), not today's age and odometer,
    and the reason names that limit only."""
    policy = bms.load_warranty_policy("oem-8y-160k-70")
    fit = _fit(100.0, -2.0)
    # 6 years, 403,715 km: 160,000 km was passed at 6 * 160000 / 403715 = 2.38 years.
    v = bms.warranty_verdict(policy, fit, age_years=6.0, odometer_km=403_715, km_per_day=180)
    assert v.status == "out_of_coverage"
    assert v.coverage_end_years == pytest.approx(6.0 * 160_000 / 403_715)
    assert v.coverage_end_km == 160_000
    assert v.cover_ended_by == "odometer"
    assert v.reason == (
        "cover ended: the odometer passed the 160000 km limit at about 2.4 years of age "
        "(odometer now 403715 km; age 6.00 y, within its 8 y limit)"
    )
    # 10 years, 100,000 km: the age limit, at about 80,000 km.
    v = bms.warranty_verdict(policy, fit, age_years=10.0, odometer_km=100_000, km_per_day=5)
    assert (v.coverage_end_years, v.coverage_end_km) == pytest.approx((8.0, 80_000.0))
    assert v.cover_ended_by == "age"
    assert v.reason == (
        "cover ended: age 10.00 y passed the 8 y limit (odometer 100000 km, within its "
        "160000 km limit)"
    )
    # 10 years, 180,000 km: 160,000 km only at 8.9 years, after the age limit.
    v = bms.warranty_verdict(policy, fit, age_years=10.0, odometer_km=180_000, km_per_day=50)
    assert (v.coverage_end_years, v.coverage_end_km) == pytest.approx((8.0, 144_000.0))
    assert v.reason.endswith("(odometer 180000 km, past its 160000 km limit too)")
    assert v.cover_ended_by == "age"
    # a vehicle still in cover has no ended-by limit
    assert (
        bms.warranty_verdict(policy, fit, age_years=2.0, odometer_km=20_000, km_per_day=30)
    ).cover_ended_by is None


def test_stale_evidence_says_insufficient_data_but_a_claim_stands() -> None:
    """A trend whose newest estimate is older than the limit is the prior's projection,
    not a measurement: it may not say ok (a cell may have failed since), while a
    SoH already measured below the threshold can only have fallen further."""
    policy = bms.load_warranty_policy("oem-8y-160k-70")
    healthy, broken = _fit(100.0, -2.0), _fit(100.0, -20.0)
    common = {"age_years": 2, "odometer_km": 30_000, "km_per_day": 40}
    fresh = bms.warranty_verdict(
        policy, healthy, evidence_age_days=30, max_evidence_age_days=180, **common
    )
    assert fresh.status == "ok"
    stale = bms.warranty_verdict(
        policy, healthy, evidence_age_days=400, max_evidence_age_days=180, **common
    )
    assert stale.status == "insufficient_data"
    assert stale.reason.startswith("newest capacity estimate 400 days old (limit 180)")
    assert "projected soh_pct" in stale.reason  # what the trend would say is kept
    claim = bms.warranty_verdict(
        policy, broken, evidence_age_days=400, max_evidence_age_days=180, **common
    )
    assert claim.status == "claim_eligible"


def test_daily_ageing_stress_adds_up_to_the_published_closed_forms() -> None:
    """A year of the same day summed and raised to the law's power is the closed form of
    Naumann 2018 (LFP, 4.3 % at 25 degC, 50 % SoC: science.md 2) and Schmalstieg 2014
    (NMC); the cycle term is the square of the rate times the cycles (sqrt law)."""
    day = {
        "band_hours": [24.0],
        "band_temp_c": [25.0],
        "soc_min_pct": 50.0,
        "soc_max_pct": 50.0,
        "throughput_ah": 0.0,
        "rated_capacity_ah": 100.0,
        "c_rate": 0.0,
        "bound": "upper",
    }
    cal, cyc = daily_ageing_stress("lfp", **day)
    assert cyc == 0.0
    assert_allclose((365 * cal) ** 0.5, bms.naumann_capacity_loss_frac(365, 0.5, 25.0), rtol=1e-9)
    assert_allclose((365 * cal) ** 0.5, 0.043, atol=0.001)
    cal, _ = daily_ageing_stress("nmc", **{**day, "soc_max_pct": 80.0})
    v80 = float(bms.ocv_v_from_soc_pct(80.0, "nmc"))
    assert_allclose(
        (365 * cal) ** 0.75, bms.schmalstieg_capacity_fade_frac(365, v80, 25.0), rtol=1e-9
    )
    # Split over two bands: each at its own rate; the hotter half weighs more.
    hot, _ = daily_ageing_stress(
        "lfp", **{**day, "band_hours": [12.0, 12.0], "band_temp_c": [25.0, 45.0]}
    )
    assert hot > daily_ageing_stress("lfp", **day)[0]
    # 200 EFC of LFP cycling at 0.5 C and 60 % depth: Naumann 2020 in closed form.
    _, cyc = daily_ageing_stress(
        "lfp",
        **{
            **day,
            "soc_min_pct": 20.0,
            "soc_max_pct": 80.0,
            "throughput_ah": 200 * 200.0,
            "c_rate": 0.5,
        },
    )
    assert_allclose(
        cyc**0.5,
        bms.naumann_capacity_loss_frac(0, 0.5, 25.0, fec=200, c_rate=0.5, dod_frac=0.6),
        rtol=1e-9,
    )
    with pytest.raises(ValueError, match="unknown chemistry 'lco'; valid: lfp, nmc"):
        daily_ageing_stress("lco", **day)
    with pytest.raises(ValueError, match="unknown bound 'worst'; valid: lower, upper"):
        daily_ageing_stress("lfp", **{**day, "bound": "worst"})


def _day(chemistry: str, temp_c: float, bound: str, soc_min_pct: float = 30.0) -> float:
    cal, _ = daily_ageing_stress(
        chemistry,
        band_hours=[24.0],
        band_temp_c=[temp_c],
        soc_min_pct=soc_min_pct,
        soc_max_pct=90.0,
        throughput_ah=0.0,
        rated_capacity_ah=100.0,
        c_rate=0.5,
        bound=bound,
    )
    return cal


@pytest.mark.parametrize("chemistry", ["lfp", "nmc"])
def test_stress_ratio_of_upper_since_over_lower_before_is_not_understated(
    chemistry: str,
) -> None:
    """Winter before the estimate (2 degC, band 0-15), summer since (33 degC, band 25-35),
    stored at 90 % SoC both times: the true calendar ratio (LFP 4.55, NMC 30.7) is
    understated by charging both periods their upper edges (2.53, 8.1), not by the
    upper bound since over the lower bound before (lower edge 0 degC, lowest SoC)."""
    true = _day(chemistry, 33.0, "upper") / _day(chemistry, 2.0, "upper")
    assert_allclose(true, {"lfp": 4.55, "nmc": 30.66}[chemistry], rtol=1e-3)
    both_upper = _day(chemistry, 35.0, "upper") / _day(chemistry, 15.0, "upper")
    assert both_upper < true
    ratio = usage_stress_ratio(
        (100 * _day(chemistry, 0.0, "lower"), 0.0),
        100,
        (50 * _day(chemistry, 35.0, "upper"), 0.0),
        50,
    )
    assert ratio >= true
    # The lower bound stores at the lowest SoC, the upper at the highest.
    assert _day(chemistry, 25.0, "lower", 30.0) < _day(chemistry, 25.0, "lower", 80.0)
    assert _day(chemistry, 25.0, "lower", 80.0) < _day(chemistry, 25.0, "upper", 80.0)


@pytest.mark.parametrize("chemistry", ["lfp", "nmc"])
def test_lower_bound_cycle_stress_cycles_the_range_once_and_the_rest_shallow(
    chemistry: str,
) -> None:
    """A day that crossed 20-80 % SoC with 3 equivalent cycles: at least 0.6 x capacity
    cycled 60 % deep; the lower bound lies between that alone and the upper bound."""
    common = {
        "band_hours": [24.0],
        "band_temp_c": [25.0],
        "soc_min_pct": 20.0,
        "soc_max_pct": 80.0,
        "rated_capacity_ah": 100.0,
        "c_rate": 0.0,
    }
    _, once = daily_ageing_stress(chemistry, throughput_ah=60.0, bound="lower", **common)
    _, low = daily_ageing_stress(chemistry, throughput_ah=600.0, bound="lower", **common)
    _, high = daily_ageing_stress(chemistry, throughput_ah=600.0, bound="upper", **common)
    assert 0 < once < low < high


@pytest.mark.parametrize("chemistry", ["lfp", "nmc"])
def test_calendar_exposure_is_the_law_read_by_the_hour_between_its_soc_edges(
    chemistry: str,
) -> None:
    """A day of hours at 5-40 degC, all at 60-70 % SoC, weighted by the Arrhenius term
    to 25 degC: the sum lies between the law at 60 % and at 70 % summed hour by hour,
    and so is far tighter than the temperature bands' edges (25-35 degC band: x2-3)."""
    temps_c = np.linspace(5.0, 40.0, 24)
    b_k = calendar_arrhenius_k(chemistry)
    ref_hours = np.exp(b_k * (1 / (CALENDAR_REF_TEMP_C + 273.15) - 1 / (temps_c + 273.15)))
    exposure = np.zeros(10)
    exposure[6] = ref_hours.sum()

    def by_hour(soc_pct: float) -> float:
        return sum(
            daily_ageing_stress(
                chemistry,
                band_hours=[1.0],
                band_temp_c=[t],
                soc_min_pct=soc_pct,
                soc_max_pct=soc_pct,
                throughput_ah=0.0,
                rated_capacity_ah=100.0,
                c_rate=0.0,
                bound="upper",
            )[0]
            for t in temps_c
        )

    upper = calendar_stress_from_exposure(chemistry, exposure, bound="upper")
    lower = calendar_stress_from_exposure(chemistry, exposure, bound="lower")
    assert_allclose(upper, by_hour(70.0), rtol=1e-9)
    assert_allclose(lower, by_hour(60.0), rtol=1e-9)
    assert lower < upper < 1.3 * lower
    with pytest.raises(ValueError, match="needs 10 SoC bins, got 3"):
        calendar_stress_from_exposure(chemistry, [1.0, 2.0, 3.0], bound="upper")
    with pytest.raises(ValueError, match="unknown bound 'worst'"):
        calendar_stress_from_exposure(chemistry, exposure, bound="worst")


def test_usage_stress_ratio_compares_mean_daily_stress() -> None:
    assert usage_stress_ratio((10.0, 2.0), 100, (5.0, 1.0), 50) == pytest.approx(1.0)
    assert usage_stress_ratio((10.0, 2.0), 100, (5.0, 3.0), 50) == pytest.approx(3.0)
    assert usage_stress_ratio((10.0, 2.0), 100, (0.0, 0.0), 0) == 0.0
    assert usage_stress_ratio((10.0, 0.0), 100, (5.0, 0.1), 50) == math.inf
    assert usage_stress_ratio((0.0, 0.0), 0, (5.0, 0.1), 50) == math.inf


def test_fade_since_bound_is_the_closed_form_and_the_worst_split() -> None:
    """From new, a period's bound is the closed-form fade; fade already accrued slows it;
    over every split of that fade between calendar and cycle, none exceeds the bound."""
    day = daily_ageing_stress(
        "nmc",
        band_hours=[24.0],
        band_temp_c=[25.0],
        soc_min_pct=30.0,
        soc_max_pct=80.0,
        throughput_ah=100.0,
        rated_capacity_ah=100.0,
        c_rate=0.5,
        bound="upper",
    )
    cal, cyc = 365 * day[0], 365 * day[1]
    with pytest.raises(ValueError, match="unknown chemistry 'nca'; valid: lfp, nmc"):
        fade_since_bound_frac(cal, cyc, 0.0, "nca")
    assert_allclose(fade_since_bound_frac(cal, 0.0, 0.0, "nmc"), cal**0.75, rtol=1e-12)
    assert_allclose(fade_since_bound_frac(0.0, cyc, 0.0, "nmc"), cyc**0.5, rtol=1e-12)
    bound = fade_since_bound_frac(cal, cyc, 0.05, "nmc")
    assert bound < fade_since_bound_frac(cal, cyc, 0.0, "nmc")
    for share in np.linspace(0.0, 1.0, 11):
        x_cal, x_cyc = 0.05 * share, 0.05 * (1 - share)
        split = (x_cal ** (4 / 3) + cal) ** 0.75 - x_cal + (x_cyc**2 + cyc) ** 0.5 - x_cyc
        assert split <= bound + 1e-12


def _use(
    days: float, ratio: float, calendar: float = 0.014, cycle: float = 0.0, chemistry: str = "nmc"
) -> bms.UseSinceEstimate:
    return bms.UseSinceEstimate(
        chemistry=chemistry,
        days_observed=days,
        stress_ratio=ratio,
        calendar_stress=calendar,
        cycle_stress=cycle,
    )


def test_use_since_estimate_names_the_valid_chemistries() -> None:
    with pytest.raises(ValueError, match="unknown chemistry 'LFP'; valid: lfp, nmc"):
        _use(10, 1.0, chemistry="LFP")


def test_stale_trend_says_ok_only_when_the_use_since_bounds_the_ageing() -> None:
    """Evidence 400 days old: a measured trend may say ok when the SoH today stays above
    the threshold after the worst lab-cell fade of the use since, and the trend read at
    the stress-equivalent age says ok; not with harder use, an unmeasured (prior) fade
    rate, or unknown or unobserved use."""
    policy = bms.load_warranty_policy("un-gtr22")
    healthy = _fit(100.0, -4.0)  # 100 - 4 t^0.75: 87 at 5 y, 81 at 8 y
    common = {
        "age_years": 2.5,
        "odometer_km": 40_000,
        "km_per_day": 40,
        "evidence_age_days": 400,
        "max_evidence_age_days": 180,
        "prior_fade_sigma": 4.0,
    }
    # 0.014: 400 days at 80 % SoC and 25 degC (Schmalstieg): <= 4.1 points of the lab
    # cell since, 5.9 of a pack (/ PACK_LIFE_FACTOR), and two silent days at 45 degC.
    v = bms.warranty_verdict(policy, healthy, use_since=_use(398, 0.8), **common)
    assert v.status == "ok"
    assert v.reason.startswith(
        "newest capacity estimate 400 days old (limit 180); use since 0.80 x as ageing"
    )
    now_lo = float(v.reason.split("soh_pct now >= ")[1].split(" ")[0])
    assert 87.5 < now_lo < 90.0
    # Each silent day is charged a day at 45 degC and full charge: 38 of them lower it.
    v = bms.warranty_verdict(policy, healthy, use_since=_use(362, 0.8), **common)
    fewer = float(v.reason.split("soh_pct now >= ")[1].split(" ")[0])
    assert now_lo - 4.0 < fewer < now_lo - 2.5
    # Stress enough for the lab-cell laws to allow 80 % today: no ok.
    v = bms.warranty_verdict(policy, healthy, use_since=_use(398, 0.8, 0.2), **common)
    assert v.status == "insufficient_data"
    assert "(>= 80 needed)" in v.reason
    # Three times as hard since the estimate: the trend at the stress-equivalent age
    # falls below 80 % before 5 y.
    v = bms.warranty_verdict(policy, healthy, use_since=_use(398, 3.0), **common)
    assert v.status == "insufficient_data"
    assert "trend at 3.00 x the time since: projected soh_pct" in v.reason
    v = bms.warranty_verdict(policy, healthy, **common)
    assert v.status == "insufficient_data"
    assert "use since unknown" in v.reason
    # A vehicle silent for most of the time since: its temperatures are unknown.
    v = bms.warranty_verdict(policy, healthy, use_since=_use(120, 0.8), **common)
    assert v.status == "insufficient_data"
    assert "use since observed on 120 of 400 days" in v.reason
    # A fade rate from a few estimates of the first days is the prior's.
    t = np.array([0.002, 0.004, 0.006])
    early = bms.fit_power_trend(
        t,
        100 - 4 * t**0.75,
        np.full(3, 1.0),
        exponent=0.75,
        prior_mean=(100, -2),
        prior_sigma=(5, 4),
        b_sign=-1,
    )
    v = bms.warranty_verdict(policy, early, use_since=_use(398, 0.5), **common)
    assert v.status == "insufficient_data"
    assert "fade rate not measured (prior)" in v.reason


def _silent_day_stress(chemistry: str) -> float:
    """A day at 45 degC and full charge, from the published closed forms."""
    if chemistry == "lfp":
        return float(bms.naumann_capacity_loss_frac(1.0, 1.0, 45.0)) ** 2
    v_full = float(bms.ocv_v_from_soc_pct(100.0, "nmc"))
    return float(bms.schmalstieg_capacity_fade_frac(1.0, v_full, 45.0)) ** (4 / 3)


@pytest.mark.parametrize("chemistry", ["lfp", "nmc"])
def test_stale_trend_says_ok_only_when_both_bounds_hold(chemistry: str) -> None:
    """Trends above 80 % today (so the stale path runs) over a grid of fade rates, stress
    ratios, calendar and cycle stress and silent days: ok implies the SoH today, the 90 %
    lower bound at the estimate less the pack's largest fade since, is >= 80, and the
    trend at the stress-equivalent age is above each threshold now and at the end of its
    cover, both recomputed here. Each condition alone turns some ok away."""
    policy = bms.load_warranty_policy("un-gtr22")
    p = bms.FADE_EXPONENT[chemistry]
    age, odo, km_day, evidence = 3.5, 50_000.0, 40.0, 500.0
    t_e = age - evidence / 365.25
    ends = [(80.0, 5.0), (70.0, 8.0)]  # 40 km/day reaches neither km limit first
    assert silent_day_stress(chemistry) == pytest.approx(_silent_day_stress(chemistry), 1e-9)
    seen: dict[tuple[bool, bool], set[str]] = {}
    for b in {"lfp": (-2.0, -4.0, -6.0, -8.0), "nmc": (-2.0, -3.5, -5.0, -6.5)}[chemistry]:
        fit = _fit(100.0, b, exponent=p)
        assert float(fit.predict(age)[0]) >= 80.0  # the normal path claims nothing
        sd_a, sd_b = math.sqrt(fit.cov[0]), math.sqrt(fit.cov[2])
        q = t_quantile_95(fit.dof)
        fresh = fit.a + q * sd_a
        x_before = max(-(fit.b + q * sd_b), 0.0) * t_e**p / fresh
        lo_e = float(fit.interval(t_e)[1])
        for ratio in (0.5, 1.0, 2.0, 4.0):
            for cal in (0.0, 0.003, 0.03, 0.3):
                for cyc in (0.0, 0.003, 0.03):
                    for observed in (evidence, 460.0):
                        v = bms.warranty_verdict(
                            policy,
                            fit,
                            age_years=age,
                            odometer_km=odo,
                            km_per_day=km_day,
                            evidence_age_days=evidence,
                            max_evidence_age_days=180,
                            use_since=_use(observed, ratio, cal, cyc, chemistry),
                            prior_fade_sigma=4.0,
                        )
                        silent = evidence - observed
                        cal_all = cal + silent * _silent_day_stress(chemistry)
                        cyc_all = cyc * evidence / observed
                        # the worst split of the fade before (science: fade_since_bound_frac)
                        fade = max(
                            (x_before ** (1 / p) + cal_all) ** p - x_before + cyc_all**0.5,
                            cal_all**p + (x_before**2 + cyc_all) ** 0.5 - x_before,
                        )
                        today = lo_e - fresh * fade / PACK_LIFE_FACTOR >= 80.0
                        rho = max(ratio, 1.0)
                        trend = all(
                            float(fit.predict(t_e + rho * (t - t_e))[0]) >= th
                            for th, t in [(80.0, age), *ends]
                        )
                        if v.status == "ok":
                            assert today, (b, ratio, cal, cyc, observed, v)
                            assert trend, (b, ratio, cal, cyc, observed, v)
                        seen.setdefault((today, trend), set()).add(v.status)
    assert "ok" in seen[(True, True)]
    assert seen[(True, False)] == {"insufficient_data"}
    assert seen[(False, True)] == {"insufficient_data"}


def test_gtr22_first_threshold_binds_early() -> None:
    policy = bms.load_warranty_policy("un-gtr22")
    fit = _fit(100.0, -9.0)  # 100 - 9 t^0.75: 78.6 at 3 y, below 80 within 5 y
    v = bms.warranty_verdict(policy, fit, age_years=3, odometer_km=40_000, km_per_day=40)
    assert v.status == "claim_eligible"
    assert v.threshold == bms.WarrantyThreshold(5.0, 100_000.0, 80.0)


def test_usage_conditions_that_may_void_cover_are_flagged() -> None:
    policy = bms.load_warranty_policy("oem-8y-160k-70")
    usage = bms.UsageTotals(over_temp_events=12, dc_fast_share=0.9, deep_discharges=3)
    v = bms.warranty_verdict(
        policy, _fit(100, -2), age_years=1, odometer_km=9_000, km_per_day=40, usage=usage
    )
    assert v.status == "ok"
    assert v.usage_flags == ("over_temp_events: 12 > 10", "dc_fast_share: 0.900 > 0.800")


def test_cli_warranty_presets_lists_every_preset() -> None:
    from click.testing import CliRunner

    from pipeline._cli import cli

    res = CliRunner().invoke(cli, ["warranty", "presets"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert [ln.split(":")[0] for ln in lines] == list(bms.warranty_presets())
    assert "un-gtr22: UN GTR No. 22 minimum performance (M1) (80 % at 5 y / 100,000 km; " in (
        res.output
    )
