"""Warranty policies as data (TOML) and each vehicle's verdict with its evidence.

A policy is a list of thresholds ``(years, km, min_soh_pct)``: the capacity-based SoH
must stay at or above ``min_soh_pct`` until the vehicle is ``years`` old or has driven
``km``, whichever comes first (UN GTR No. 22 and Euro 7 have two such thresholds,
OEM warranties usually one; science.md section 5). Optional usage limits name conditions
that may void cover (over-temperature events, DC fast-charge share, deep discharges).

Presets ship in ``bms/presets/*.toml``; ``load_warranty_policy`` takes a preset id or a
path. The verdict is a pure function of the policy, the SoH trend fit and the usage
totals.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bms._errors import BmsError
from bms._soh import PowerFit

#: Verdicts, from best to worst (``insufficient_data``: no capacity estimate yet).
WARRANTY_STATUSES = ("ok", "at_risk", "claim_eligible", "out_of_coverage", "insufficient_data")
DAYS_PER_YEAR = 365.25


class WarrantyPolicyError(BmsError):
    """A warranty policy is unknown, unreadable or malformed."""


@dataclass(frozen=True, slots=True)
class WarrantyThreshold:
    """SoH must stay >= ``min_soh_pct`` until ``years`` [years] or ``km`` [km]."""

    years: float
    km: float
    min_soh_pct: float


@dataclass(frozen=True, slots=True)
class UsageLimits:
    """Usage conditions that may void cover; ``None`` = not a condition.

    ``max_over_temp_events`` counts excursions above ``analytics.over_temp_c`` that the
    sensors' mean confirms (``vehicle_day.over_temp_events``),
    ``max_dc_fast_share`` is the share of charged Ah through DC fast charging [-],
    ``max_deep_discharges`` counts excursions below ``analytics.deep_discharge_soc_pct``.
    """

    max_over_temp_events: int | None = None
    max_dc_fast_share: float | None = None
    max_deep_discharges: int | None = None


@dataclass(frozen=True, slots=True)
class WarrantyPolicy:
    """A warranty or regulatory durability policy (see module docstring)."""

    id: str
    name: str
    source: str
    thresholds: tuple[WarrantyThreshold, ...]
    usage: UsageLimits = field(default_factory=UsageLimits)


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """A vehicle's usage since the start of its data (for the usage conditions)."""

    over_temp_events: int = 0
    dc_fast_share: float = 0.0  # of charged Ah [-]
    deep_discharges: int = 0


@dataclass(frozen=True, slots=True)
class WarrantyVerdict:
    """A vehicle's warranty status with the figures that produced it.

    ``threshold`` is the binding threshold (the one that decided the status, or the
    next to expire); ``coverage_end_years``/``coverage_end_km`` where its cover ends for
    this vehicle (age and odometer, using its own km per day); ``projected_*`` the SoH
    trend at that point with its 90 % interval; ``usage_flags`` the usage conditions
    breached (cover may be void), each as ``name: value > limit``.
    """

    status: str
    policy_id: str
    threshold: WarrantyThreshold | None
    coverage_end_years: float
    coverage_end_km: float
    projected_soh_pct: float
    projected_soh_low_pct: float
    projected_soh_high_pct: float
    reason: str
    usage_flags: tuple[str, ...]


def warranty_presets() -> tuple[str, ...]:
    """Ids of the shipped policy presets, sorted."""
    files = resources.files("bms").joinpath("presets").iterdir()
    return tuple(sorted(p.name[:-5] for p in files if p.name.endswith(".toml")))


def load_warranty_policy(name_or_path: str | Path) -> WarrantyPolicy:
    """A shipped preset by id, or a policy TOML file by path.

    Raises
    ------
    WarrantyPolicyError
        Unknown preset (the message lists the valid ones), unreadable file, or a
        malformed policy.
    """
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or isinstance(name_or_path, Path):
        path = Path(text)
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise WarrantyPolicyError(f"cannot read policy file {path}: {exc.strerror}") from None
        return parse_warranty_policy(raw, source=str(path))
    presets = warranty_presets()
    if text not in presets:
        raise WarrantyPolicyError(
            f"unknown warranty policy {text!r}; valid presets: {', '.join(presets)}"
        )
    raw = resources.files("bms").joinpath("presets", f"{text}.toml").read_text("utf-8")
    return parse_warranty_policy(raw, source=f"preset {text}")


def parse_warranty_policy(text: str, *, source: str = "<string>") -> WarrantyPolicy:
    """Parse a policy from TOML text (format: any file in ``bms/presets``).

    Raises
    ------
    WarrantyPolicyError
        Invalid TOML, a missing or mistyped key, or a nonsensical threshold.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise WarrantyPolicyError(f"{source}: not valid TOML: {exc}") from None

    def need(table: dict[str, Any], key: str, typ: type, where: str) -> Any:
        if key not in table:
            raise WarrantyPolicyError(f"{source}: {where}{key} is missing")
        value = table[key]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise WarrantyPolicyError(f"{source}: {where}{key} = {value!r} is not {typ.__name__}")
        return value

    known = {"id", "name", "source", "threshold", "usage"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise WarrantyPolicyError(
            f"{source}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
        )
    items = raw.get("threshold")
    if not isinstance(items, list) or not items:
        raise WarrantyPolicyError(f"{source}: needs at least one [[threshold]]")
    thresholds = []
    for i, item in enumerate(items):
        where = f"threshold[{i}]."
        th = WarrantyThreshold(
            years=need(item, "years", float, where),
            km=need(item, "km", float, where),
            min_soh_pct=need(item, "min_soh_pct", float, where),
        )
        if th.years <= 0 or th.km <= 0 or not 0 < th.min_soh_pct <= 100:
            raise WarrantyPolicyError(f"{source}: {where[:-1]} {th} is out of range")
        thresholds.append(th)
    usage_raw = raw.get("usage", {})
    if not isinstance(usage_raw, dict):
        raise WarrantyPolicyError(f"{source}: [usage] must be a table")
    valid_usage = {"max_over_temp_events", "max_dc_fast_share", "max_deep_discharges"}
    bad = sorted(set(usage_raw) - valid_usage)
    if bad:
        raise WarrantyPolicyError(
            f"{source}: unknown usage key(s) {', '.join(bad)}; "
            f"valid: {', '.join(sorted(valid_usage))}"
        )
    usage = UsageLimits(
        max_over_temp_events=(
            need(usage_raw, "max_over_temp_events", int, "usage.")
            if "max_over_temp_events" in usage_raw
            else None
        ),
        max_dc_fast_share=(
            need(usage_raw, "max_dc_fast_share", float, "usage.")
            if "max_dc_fast_share" in usage_raw
            else None
        ),
        max_deep_discharges=(
            need(usage_raw, "max_deep_discharges", int, "usage.")
            if "max_deep_discharges" in usage_raw
            else None
        ),
    )
    return WarrantyPolicy(
        id=need(raw, "id", str, ""),
        name=str(raw.get("name", raw["id"])),
        source=str(raw.get("source", "")),
        thresholds=tuple(sorted(thresholds, key=lambda t: (t.years, t.km))),
        usage=usage,
    )


def usage_flags(policy: WarrantyPolicy, usage: UsageTotals) -> tuple[str, ...]:
    """Usage conditions of ``policy`` that ``usage`` breaches, as ``name: value > limit``."""
    lim = policy.usage
    flags = []
    if lim.max_over_temp_events is not None and usage.over_temp_events > lim.max_over_temp_events:
        flags.append(f"over_temp_events: {usage.over_temp_events} > {lim.max_over_temp_events}")
    if lim.max_dc_fast_share is not None and usage.dc_fast_share > lim.max_dc_fast_share:
        flags.append(f"dc_fast_share: {usage.dc_fast_share:.3f} > {lim.max_dc_fast_share:.3f}")
    if lim.max_deep_discharges is not None and usage.deep_discharges > lim.max_deep_discharges:
        flags.append(f"deep_discharges: {usage.deep_discharges} > {lim.max_deep_discharges}")
    return tuple(flags)


def coverage_end(
    threshold: WarrantyThreshold, *, age_years: float, odometer_km: float, km_per_day: float
) -> tuple[float, float]:
    """Age [years] and odometer [km] at which ``threshold``'s cover ends for a vehicle.

    Cover ends at ``threshold.years`` or when the odometer reaches ``threshold.km``,
    whichever comes first; the km date is projected with the vehicle's own km per day.
    """
    if odometer_km >= threshold.km:
        return age_years, odometer_km
    if km_per_day > 0:
        years_to_km = age_years + (threshold.km - odometer_km) / km_per_day / DAYS_PER_YEAR
    else:
        years_to_km = math.inf
    end_years = min(threshold.years, years_to_km)
    end_km = odometer_km + max(end_years - age_years, 0.0) * DAYS_PER_YEAR * max(km_per_day, 0.0)
    return end_years, min(end_km, threshold.km)


_RANK = {"ok": 0, "at_risk": 1, "claim_eligible": 2}


def warranty_verdict(
    policy: WarrantyPolicy,
    fit: PowerFit | None,
    *,
    age_years: float,
    odometer_km: float,
    km_per_day: float,
    usage: UsageTotals | None = None,
    evidence_age_days: float = 0.0,
    max_evidence_age_days: float = math.inf,
) -> WarrantyVerdict:
    """A vehicle's warranty status under ``policy``.

    Parameters
    ----------
    policy : WarrantyPolicy
    fit : PowerFit or None
        SoH trend of the vehicle [%] against age [years]; None = no capacity estimate.
    age_years : float
        Age on the evaluated date (since ``in_service_date``). [years]
    odometer_km : float
        Odometer on that date. [km]
    km_per_day : float
        The vehicle's own mean distance per day, to project the km limit. [km/day]
    usage : UsageTotals, optional
        Usage since the start of the data, checked against the policy's usage limits.
    evidence_age_days : float
        Age of the newest capacity estimate behind ``fit``. [days]
    max_evidence_age_days : float
        Older evidence cannot say ``ok`` or ``at_risk``: the trend would be a projection
        from the prior, not a measurement (``claim_eligible`` stands: capacity only
        fades). [days]

    Returns
    -------
    WarrantyVerdict
        Status per threshold still in cover: ``claim_eligible`` if the SoH now is below
        the minimum; ``at_risk`` if the 90 % interval now reaches below it, or the trend
        projected to the end of cover falls below it; else ``ok``. The worst over the
        thresholds in cover wins; ``out_of_coverage`` when every threshold has ended;
        ``insufficient_data`` without an estimate, or with only stale ones (above).
    """
    flags = usage_flags(policy, usage or UsageTotals())
    nan = math.nan
    in_cover = []
    for th in policy.thresholds:
        end_y, end_km = coverage_end(
            th, age_years=age_years, odometer_km=odometer_km, km_per_day=km_per_day
        )
        if age_years <= th.years and odometer_km <= th.km:
            in_cover.append((th, end_y, end_km))
    if not in_cover:
        last = policy.thresholds[-1]
        return WarrantyVerdict(
            "out_of_coverage",
            policy.id,
            last,
            min(last.years, age_years),
            min(last.km, odometer_km),
            nan,
            nan,
            nan,
            f"cover ended: age {age_years:.2f} y (limit {last.years:g} y), "
            f"odometer {odometer_km:.0f} km (limit {last.km:.0f} km)",
            flags,
        )
    if fit is None:
        th, end_y, end_km = in_cover[0]
        return WarrantyVerdict(
            "insufficient_data",
            policy.id,
            th,
            end_y,
            end_km,
            nan,
            nan,
            nan,
            "no capacity estimate yet",
            flags,
        )
    now, now_lo, _now_hi = (float(v) for v in fit.interval(age_years))
    best: WarrantyVerdict | None = None
    for th, end_y, end_km in in_cover:
        proj, proj_lo, proj_hi = (float(v) for v in fit.interval(end_y))
        if now < th.min_soh_pct:
            status = "claim_eligible"
            reason = f"soh_pct {now:.1f} < {th.min_soh_pct:g} within cover"
        elif now_lo < th.min_soh_pct:
            status = "at_risk"
            reason = f"soh_low_pct {now_lo:.1f} < {th.min_soh_pct:g} (90 % interval)"
        elif proj < th.min_soh_pct:
            status = "at_risk"
            reason = (
                f"projected soh_pct {proj:.1f} < {th.min_soh_pct:g} "
                f"at {end_y:.2f} y / {end_km:.0f} km"
            )
        else:
            status = "ok"
            reason = (
                f"projected soh_pct {proj:.1f} >= {th.min_soh_pct:g} "
                f"at {end_y:.2f} y / {end_km:.0f} km"
            )
        verdict = WarrantyVerdict(
            status, policy.id, th, end_y, end_km, proj, proj_lo, proj_hi, reason, flags
        )
        if best is None or _RANK[status] > _RANK[best.status]:
            best = verdict
    assert best is not None
    if evidence_age_days > max_evidence_age_days and best.status != "claim_eligible":
        return dataclasses.replace(
            best,
            status="insufficient_data",
            reason=(
                f"newest capacity estimate {evidence_age_days:.0f} days old "
                f"(limit {max_evidence_age_days:g}); the trend would say: {best.reason}"
            ),
        )
    return best
