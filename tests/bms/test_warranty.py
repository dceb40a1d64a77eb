"""Warranty policies (TOML presets) and verdicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bms


def _fit(a: float, b: float, sigma: float = 0.3) -> bms.PowerFit:
    """A fitted SoH trend y = a + b t^0.75 from exact points with the given scatter."""
    t = np.linspace(0.05, 2.0, 60)
    rng = np.random.default_rng(1)
    y = a + b * t**0.75 + sigma * rng.standard_normal(t.size)
    return bms.fit_power_trend(
        t,
        y,
        np.full(t.size, sigma),
        exponent=0.75,
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


def test_bad_preset_name_lists_the_valid_ones() -> None:
    with pytest.raises(bms.WarrantyPolicyError) as err:
        bms.load_warranty_policy("oem-10y")
    assert str(err.value) == (
        "unknown warranty policy 'oem-10y'; valid presets: " + ", ".join(bms.warranty_presets())
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
    path.write_text('id = "x"\n[[threshold]]\nyears = 6\nkm = 1\n')
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
