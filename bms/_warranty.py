"""Warranty policies as data (TOML) and each vehicle's verdict with its evidence.

A policy is a list of thresholds ``(years, km, min_soh_pct)``: the capacity-based SoH
must stay at or above ``min_soh_pct`` until the vehicle is ``years`` old or has driven
``km``, whichever comes first (UN GTR No. 22 and Euro 7 have two such thresholds,
OEM warranties usually one; science.md section 5). Optional usage limits name conditions
that may void cover (over-temperature events, DC fast-charge share, deep discharges).

Presets ship in ``bms/presets/*.toml``; ``load_warranty_policy`` takes a preset id or a
path. The verdict is a pure function of the policy, the SoH trend fit and the usage
totals.

Stale evidence: a trend whose newest capacity estimate is older than
``max_evidence_age_days`` may still say ``ok`` when the vehicle's observed use since then
bounds its ageing (``daily_ageing_stress``, ``usage_stress_ratio``): the semi-empirical
laws make fade a function of accumulated stress, not of calendar time alone, so a trend
measured under some use, read at the stress-equivalent age, bounds the SoH of a vehicle
used no harder since.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bms._ageing import (
    SCHMALSTIEG_CELL_AH,
    naumann_calendar_rates,
    naumann_cycle_rates,
    schmalstieg_calendar_rates,
    schmalstieg_cycle_rates,
)
from bms._errors import BmsError
from bms._ocv import ocv_v_from_soc_pct
from bms._soh import FADE_EXPONENT, PowerFit, t_quantile_95

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
class UseSinceEstimate:
    """A vehicle's observed use between its newest capacity estimate and the day judged.

    ``chemistry`` the key of ``FADE_EXPONENT`` the stresses were computed for (their
    units depend on it); ``days_observed`` days with telemetry [days]; ``stress_ratio``
    the ``usage_stress_ratio`` of the use since (upper bound) against the use before
    the estimate (lower bound) [-]; ``calendar_stress`` and ``cycle_stress`` the summed
    upper-bound ``daily_ageing_stress`` of the observed days [(relative fade)^(1/p)].

    Raises
    ------
    ValueError
        Unknown chemistry (the message names the valid ones).
    """

    chemistry: str
    days_observed: float
    stress_ratio: float
    calendar_stress: float
    cycle_stress: float

    def __post_init__(self) -> None:
        _calendar_exponent(self.chemistry)


@dataclass(frozen=True, slots=True)
class WarrantyVerdict:
    """A vehicle's warranty status with the figures that produced it.

    ``threshold`` is the binding threshold (the one that decided the status, or the
    next to expire); ``coverage_end_years``/``coverage_end_km`` where its cover ends for
    this vehicle (age and odometer, using its own km per day); ``projected_*`` the SoH
    trend at that point with its 90 % interval; ``usage_flags`` the usage conditions
    breached (cover may be void), each as ``name: value > limit``; ``cover_ended_by``
    the limit that ended the cover of an ``out_of_coverage`` verdict (``"odometer"`` or
    ``"age"``), else None.
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
    cover_ended_by: str | None = None


def warranty_presets() -> tuple[str, ...]:
    """Ids of the shipped policy presets, sorted."""
    files = resources.files("bms").joinpath("presets").iterdir()
    return tuple(sorted(p.name[:-5] for p in files if p.name.endswith(".toml")))


def warranty_policy_file(name_or_path: str | Path) -> Path | None:
    """The policy file ``load_warranty_policy`` reads for ``name_or_path``, or ``None``
    when it names a shipped preset (or nothing: neither a preset nor an existing file
    without ``.toml`` or ``/``). The file need not exist; a relative path is relative to
    the working directory.
    """
    text = str(name_or_path)
    as_file = text.endswith(".toml") or "/" in text or isinstance(name_or_path, Path)
    # a file in the working directory named without .toml is a file, not a preset
    if as_file or (text not in warranty_presets() and Path(text).is_file()):
        return Path(text)
    return None


def load_warranty_policy(name_or_path: str | Path) -> WarrantyPolicy:
    """A shipped preset by id, or a policy TOML file by path.

    Raises
    ------
    WarrantyPolicyError
        Unknown preset (the message lists the valid ones), unreadable file, or a
        malformed policy.
    """
    text = str(name_or_path)
    presets = warranty_presets()
    path = warranty_policy_file(name_or_path)
    if path is not None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise WarrantyPolicyError(f"cannot read policy file {path}: {exc.strerror}") from None
        try:
            # A byte-order mark (some Windows editors write one) is not part of the TOML.
            raw = data.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise WarrantyPolicyError(
                f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                "save the policy as UTF-8"
            ) from None
        return parse_warranty_policy(raw, source=str(path))
    if text not in presets:
        raise WarrantyPolicyError(
            f"unknown warranty policy {text!r} (no such preset or file); valid presets: "
            f"{', '.join(presets)}"
        )
    raw = resources.files("bms").joinpath("presets", f"{text}.toml").read_text("utf-8")
    return parse_warranty_policy(raw, source=f"preset {text}")


# Ranges of a policy's numbers (``parse_warranty_policy``): a value outside is a slip,
# not the term of any warranty or regulation, and is refused rather than judged by.
#: Cover length [years]: more than 0, at most this. Warranties and durability rules run
#: 5-10 years (the presets); 50 years outlasts any vehicle, so more is months (96) or
#: days typed for years.
POLICY_MAX_YEARS = 50.0
#: Cover distance [km]: policies run 100,000-240,000 km; below 1,000 km is thousands
#: typed for km (160 for 160,000), above 10 million km (250 km a day for a century) no
#: vehicle drives.
POLICY_KM_RANGE = (1_000.0, 10_000_000.0)
#: Minimum SoH [% of rated capacity]: policies use 67-80 %. At most 1 it is a fraction
#: (0.7 for 70 %), below 10 % a dropped digit (7 for 70): no warranty waits for a pack to
#: lose 90 % of its capacity; above 100 % even a new pack would be below it.
POLICY_MIN_SOH_PCT_RANGE = (10.0, 100.0)
#: Usage counts (``max_over_temp_events``, ``max_deep_discharges``): 0 to this; more
#: events than a vehicle has readings in its life means no limit: omit the key.
POLICY_MAX_COUNT = 1_000_000_000


def _kind(value: object) -> str:
    """The TOML type of a parsed value, with its article (for messages)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _show(value: object) -> str:
    """A parsed value as TOML writes it, on one line and at most 40 characters."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        text = f"{value:.0f}" if abs(value) < 1e16 else repr(value)
    elif isinstance(value, float):
        text = repr(value)  # nan, inf, -inf, 0.7
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, list | dict):
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _key(key: str) -> str:
    """A TOML key for a message: bare if it can be, else quoted (and escaped)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def parse_warranty_policy(text: str, *, source: str = "<string>") -> WarrantyPolicy:
    """Parse a policy from TOML text (format: any file in ``bms/presets``; README).

    Raises
    ------
    WarrantyPolicyError
        Invalid TOML; a missing, unknown or mistyped key; a number not finite or outside
        its range (``POLICY_MAX_YEARS``, ``POLICY_KM_RANGE``, ``POLICY_MIN_SOH_PCT_RANGE``,
        ``max_dc_fast_share`` 0..1, counts 0..``POLICY_MAX_COUNT``); or thresholds that
        do not nest (each ending no sooner in years and km than the shorter ones, and
        asking for a lower SoH). The message is one line naming ``source`` and the key.
    """
    try:
        raw = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer too long to convert
        raise WarrantyPolicyError(f"{source}: not valid TOML: {exc}") from None

    def fail(message: str) -> WarrantyPolicyError:
        return WarrantyPolicyError(f"{source}: {message}")

    def need(table: dict[str, Any], key: str, typ: type, where: str) -> Any:
        if key not in table:
            raise fail(f"{where}{key} is missing")
        value = table[key]
        name = f"{where}{key} = {_show(value)} is {_kind(value)}"
        if typ is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise fail(f"{name}, must be a number")
            try:
                return float(value)
            except OverflowError:  # an integer beyond any float
                return math.inf if value > 0 else -math.inf
        if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise fail(f"{name}, must be a whole number")
        if typ is str and not isinstance(value, str):
            raise fail(f"{name}, must be a string")
        return value

    def number(
        table: dict[str, Any],
        key: str,
        where: str,
        bounds: tuple[float, float],
        *,
        above_low: bool = False,
        hint: Callable[[float], str] = lambda x: "",
    ) -> float:
        """``table[key]`` as a finite float within ``bounds`` (``above_low``: low excluded)."""
        x: float = need(table, key, float, where)
        low, high = bounds
        if math.isfinite(x) and (x > low if above_low else x >= low) and x <= high:
            return x
        value = table[key]
        finite = isinstance(value, int) or math.isfinite(value)
        why = "is out of range" if finite else "is not a finite number"
        must = f"must be {'>' if above_low else '>='} {_show(low)} and <= {_show(high)}"
        extra = hint(x)
        raise fail(f"{where}{key} = {_show(value)} {why} ({must}{'; ' + extra if extra else ''})")

    def count(table: dict[str, Any], key: str, where: str) -> int | None:
        """``table[key]`` as a whole number 0..``POLICY_MAX_COUNT``; None when absent."""
        if key not in table:
            return None
        n: int = need(table, key, int, where)
        if not 0 <= n <= POLICY_MAX_COUNT:
            extra = "; omit the key for no limit" if n > 0 else ""
            raise fail(
                f"{where}{key} = {_show(n)} is out of range "
                f"(must be >= 0 and <= {POLICY_MAX_COUNT}{extra})"
            )
        return n

    def only(table: dict[str, Any], valid: tuple[str, ...], where: str, section: str) -> None:
        """Refuse keys of ``table`` not in ``valid``, each with the closest valid one."""
        unknown = sorted(set(table) - set(valid))
        if not unknown:
            return
        named = []
        for key in unknown:
            close = difflib.get_close_matches(key, valid, n=1)
            named.append(f"{where}{_key(key)}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise fail(
            f"unknown key{'s' if len(named) > 1 else ''} {', '.join(named)}; "
            f"valid {section}: {', '.join(valid)}"
        )

    only(raw, ("id", "name", "source", "threshold", "usage"), "", "at the top")
    items = raw.get("threshold")
    if isinstance(items, dict):
        raise fail("threshold must be an array of tables: write [[threshold]], not [threshold]")
    if items is not None and not isinstance(items, list):
        raise fail(
            f"threshold = {_show(items)} is {_kind(items)}, must be an array of tables "
            "([[threshold]] with years, km, min_soh_pct)"
        )
    if not items:
        raise fail("needs at least one [[threshold]]")
    thresholds: list[tuple[int, WarrantyThreshold]] = []
    for i, item in enumerate(items):
        where = f"threshold[{i}]."
        if not isinstance(item, dict):
            raise fail(
                f"threshold[{i}] = {_show(item)} is {_kind(item)}, must be a table "
                "([[threshold]] with years, km, min_soh_pct)"
            )
        only(item, ("years", "km", "min_soh_pct"), where, "in [[threshold]]")
        th = WarrantyThreshold(
            years=number(
                item,
                "years",
                where,
                (0.0, POLICY_MAX_YEARS),
                above_low=True,
                hint=lambda x: "years, not months or days" if x > POLICY_MAX_YEARS else "",
            ),
            km=number(
                item,
                "km",
                where,
                POLICY_KM_RANGE,
                hint=lambda x: "km, e.g. 160000" if 0 < x < POLICY_KM_RANGE[0] else "",
            ),
            min_soh_pct=number(
                item,
                "min_soh_pct",
                where,
                POLICY_MIN_SOH_PCT_RANGE,
                hint=lambda x: "percent, e.g. 70 for 70 %" if 0 < x <= 1 else "",
            ),
        )
        thresholds.append((i, th))
    # The verdict takes them in order of (years, km) and the last as the end of cover
    # (``warranty_verdict``'s out_of_coverage, the SoH table's horizon): so each must end
    # no sooner than the one before in km too, and, capacity only fading, ask for less.
    thresholds.sort(key=lambda it: (it[1].years, it[1].km))
    for (i, a), (j, b) in itertools.pairwise(thresholds):
        limits = f"{_show(b.years)} y / {_show(b.km)} km"
        if (a.years, a.km) == (b.years, b.km):
            raise fail(
                f"threshold[{j}] has the same limits as threshold[{i}] ({limits}): "
                "give each pair of years and km once, with its min_soh_pct"
            )
        if b.km < a.km:
            raise fail(
                f"threshold[{j}] ({limits}) ends later than threshold[{i}] "
                f"({_show(a.years)} y / {_show(a.km)} km) in years but sooner in km: "
                "thresholds must nest, each ending no sooner than the shorter ones in both, "
                "as the longest one ends cover"
            )
        if b.min_soh_pct >= a.min_soh_pct:
            raise fail(
                f"threshold[{j}].min_soh_pct = {_show(b.min_soh_pct)} is not below "
                f"threshold[{i}].min_soh_pct = {_show(a.min_soh_pct)}, though its cover "
                f"({limits}) outlasts threshold[{i}]'s: capacity only fades, so "
                f"threshold[{i}] would never decide a verdict (values swapped?)"
            )
    usage_raw = raw.get("usage", {})
    if not isinstance(usage_raw, dict):
        raise fail(f"usage = {_show(usage_raw)} is {_kind(usage_raw)}, must be a table ([usage])")
    valid_usage = ("max_over_temp_events", "max_dc_fast_share", "max_deep_discharges")
    only(usage_raw, valid_usage, "usage.", "in [usage]")
    usage = UsageLimits(
        max_over_temp_events=count(usage_raw, "max_over_temp_events", "usage."),
        max_dc_fast_share=(
            number(
                usage_raw,
                "max_dc_fast_share",
                "usage.",
                (0.0, 1.0),
                hint=lambda x: "a share, e.g. 0.8 for 80 %" if 1 < x <= 100 else "",
            )
            if "max_dc_fast_share" in usage_raw
            else None
        ),
        max_deep_discharges=count(usage_raw, "max_deep_discharges", "usage."),
    )
    policy_id: str = need(raw, "id", str, "")
    if not policy_id.strip() or not policy_id.isprintable():
        # It names the policy in the lake's tables and on one-line listings.
        raise fail(f"id = {_show(policy_id)} must be a name: not blank, on one line")
    return WarrantyPolicy(
        id=policy_id,
        name=need(raw, "name", str, "") if "name" in raw else policy_id,
        source=need(raw, "source", str, "") if "source" in raw else "",
        thresholds=tuple(th for _, th in thresholds),
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
    whichever comes first. A km limit still ahead is projected with the vehicle's own
    km per day; a limit already passed is placed at the vehicle's average since in
    service (odometer over age: its recent km per day says little about years ago),
    and so is the odometer at an age limit already passed.
    """
    lifetime_km_per_day = odometer_km / (age_years * DAYS_PER_YEAR) if age_years > 0 else 0.0
    if odometer_km >= threshold.km:
        years_to_km = (
            age_years - (odometer_km - threshold.km) / lifetime_km_per_day / DAYS_PER_YEAR
            if lifetime_km_per_day > 0
            else age_years
        )
    elif km_per_day > 0:
        years_to_km = age_years + (threshold.km - odometer_km) / km_per_day / DAYS_PER_YEAR
    else:
        years_to_km = math.inf
    end_years = max(min(threshold.years, years_to_km), 0.0)
    if end_years < age_years:
        end_km = odometer_km - (age_years - end_years) * DAYS_PER_YEAR * lifetime_km_per_day
    else:
        end_km = odometer_km + (end_years - age_years) * DAYS_PER_YEAR * max(km_per_day, 0.0)
    return end_years, min(max(end_km, 0.0), threshold.km)


def _cover_ended_by(threshold: WarrantyThreshold, odometer_km: float, end_years: float) -> str:
    """The limit that ended a cover (``coverage_end`` put its end at ``end_years``):
    ``"odometer"`` if the odometer passed its limit before the age limit, else ``"age"``
    (also when both fall on one day)."""
    return "odometer" if odometer_km >= threshold.km and end_years < threshold.years else "age"


def _cover_ended_reason(
    threshold: WarrantyThreshold, age_years: float, odometer_km: float, end_years: float
) -> str:
    """Why a cover has ended: the limit reached first, when, and where the other stands."""
    years, km = threshold.years, threshold.km
    if _cover_ended_by(threshold, odometer_km, end_years) == "odometer":
        age_note = (
            f"within its {years:g} y limit"
            if age_years <= years
            else f"past its {years:g} y limit too"
        )
        return (
            f"cover ended: the odometer passed the {km:.0f} km limit at about "
            f"{end_years:.1f} years of age (odometer now {odometer_km:.0f} km; age "
            f"{age_years:.2f} y, {age_note})"
        )
    km_note = (
        f"within its {km:.0f} km limit" if odometer_km <= km else f"past its {km:.0f} km limit too"
    )
    return (
        f"cover ended: age {age_years:.2f} y passed the {years:g} y limit (odometer "
        f"{odometer_km:.0f} km, {km_note})"
    )


#: A stale trend may say ``ok`` only if its fade rate was measured, not taken from the
#: prior: the fit's sigma of the fade coefficient at most this share of the prior's
#: (the estimates then carry at least 3x the prior's information on it). [-]
MEASURED_FADE_SIGMA_SHARE = 0.5
#: ... and the use since its newest estimate must have been observed (telemetry) on at
#: least this share of the days: a silent vehicle's temperature and SoC are unknown. [-]
MIN_OBSERVED_USE_SHARE = 0.9
#: A day without telemetry since the newest estimate is charged calendar ageing at this
#: temperature and full charge (the hottest band edge, as hours without data are). [degC]
SILENT_DAY_TEMP_C = 45.0
#: Pack life over cell life: BLAST-Lite's rule of thumb puts pack life 20-30 % below
#: cell life (imbalance, excluded from the cell laws; science.md 2). The lab-cell fade
#: since the estimate is divided by the low end, 0.7: for a power law in time with
#: exponent <= 1 that overstates the pack's faster fade, so the bound stays one. [-]
PACK_LIFE_FACTOR = 0.7


def _calendar_exponent(chemistry: str) -> float:
    """``FADE_EXPONENT[chemistry]``; an unknown key raises ValueError naming the valid ones."""
    try:
        return FADE_EXPONENT[chemistry]
    except KeyError:
        valid = ", ".join(sorted(FADE_EXPONENT))
        raise ValueError(f"unknown chemistry {chemistry!r}; valid: {valid}") from None


def _calendar_rate(
    chemistry: str, soc_pct: npt.ArrayLike, temp_c: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Capacity-loss rate of the chemistry's calendar law at storage SoC and temperature:
    Naumann 2018 (LFP) at the SoC, Schmalstieg 2014 (NMC) at its OCV. [1/d^p]"""
    soc = np.asarray(soc_pct, dtype=np.float64)
    if chemistry == "lfp":
        k_cal, _ = naumann_calendar_rates(soc / 100.0, temp_c)
    else:
        k_cal, _ = schmalstieg_calendar_rates(ocv_v_from_soc_pct(soc, chemistry), temp_c)
    return np.asarray(k_cal, dtype=np.float64)


def daily_ageing_stress(
    chemistry: str,
    *,
    band_hours: npt.ArrayLike,
    band_temp_c: npt.ArrayLike,
    soc_min_pct: float,
    soc_max_pct: float,
    throughput_ah: float,
    rated_capacity_ah: float,
    c_rate: float,
    bound: str,
) -> tuple[float, float]:
    r"""How far one day advances calendar and cycle fade, in units that add up.

    Parameters
    ----------
    chemistry : str
        ``'nmc'`` or ``'lfp'``.
    band_hours : array
        Hours of the day in each temperature band (the caller assigns hours without
        data). [h]
    band_temp_c : array
        Temperature charged to each band: its upper edge for ``bound='upper'``, its
        lower edge for ``'lower'``. [degC]
    soc_min_pct, soc_max_pct : float
        Lowest and highest SoC of the day. [%]
    throughput_ah : float
        Charge in plus charge out. [Ah]
    rated_capacity_ah : float
        Rated capacity, to scale throughput to cycles. [Ah]
    c_rate : float
        Current over the rated capacity: the day's highest for ``'upper'``, a lower
        bound (0 if none is known) for ``'lower'``. [1/h]
    bound : str
        ``'upper'``: the stress is at most this (for the use since an estimate);
        ``'lower'``: at least this (for the use before it, the denominator of
        ``usage_stress_ratio``).

    Returns
    -------
    tuple of float
        ``(calendar, cycle)``: :math:`\sum_b (h_b/24)\,k_{cal}(z, T_b)^{1/p}` and
        :math:`\sum_j k_{cyc,j}^2 \Delta s_j`. [(relative fade)^(1/p)]

    Raises
    ------
    ValueError
        Unknown chemistry or bound (the message names the valid ones).

    Notes
    -----
    A power-law fade :math:`x = k s^p` advanced day by day with the equivalent-time rule
    (the BLAST-Lite state equations, ``bms.step_power_law``) obeys
    :math:`d(x^{1/p})/ds = k^{1/p}`: under a rate that changes from day to day,
    :math:`x^{1/p}` is the sum of the days' :math:`k^{1/p}\Delta s`, so these per-day
    figures add up over any period. Every rate below rises with temperature, storage
    SoC, depth and (Naumann) C-rate, so the bounds take those at their ends:

    - upper: storage at the day's highest SoC, all throughput cycled at the day's SoC
      range as depth, the RMS voltage (Schmalstieg) at whichever end of that range lies
      further from 3.667 V (the model's minimum);
    - lower: storage at the day's lowest SoC; the day crossed its SoC range at least
      once, so that much throughput (range x capacity) cycles at the range as depth, the
      rest at depth 0.01; the RMS voltage at the point of the range nearest 3.667 V.

    Calendar: Schmalstieg et al. 2014 (NMC, :math:`p` = 0.75, storage voltage from the
    OCV table) and Naumann et al. 2018 (LFP, :math:`p` = 0.5). Cycle (:math:`p` = 0.5):
    Schmalstieg :math:`\sqrt{Q}`, Q the throughput scaled to the 2.05 Ah test cell;
    Naumann 2020 :math:`\sqrt{FEC}` (science.md section 2, ``bms._ageing``). The cycle
    laws have no temperature term (Schmalstieg cycled at 35 degC, Naumann at 25 and 45).
    """
    p_cal = _calendar_exponent(chemistry)
    if bound not in ("upper", "lower"):
        raise ValueError(f"unknown bound {bound!r}; valid: lower, upper")
    hours = np.asarray(band_hours, dtype=np.float64)
    temp_c = np.asarray(band_temp_c, dtype=np.float64)
    share = hours / 24.0
    z_max = min(max(soc_max_pct, 0.0), 100.0) / 100.0
    z_min = min(min(max(soc_min_pct, 0.0), 100.0) / 100.0, z_max)
    z_store = z_max if bound == "upper" else z_min
    dod = max(z_max - z_min, 0.01)
    throughput = max(throughput_ah, 0.0)
    # (depth, throughput [Ah]) pieces of the day's cycling
    if bound == "upper":
        pieces = [(dod, throughput)]
    else:
        deep_ah = min((z_max - z_min) * rated_capacity_ah, throughput)
        pieces = [(dod, deep_ah), (0.01, throughput - deep_ah)]
    c = max(c_rate, 0.0)
    k_cal = _calendar_rate(chemistry, np.full(temp_c.shape, 100.0 * z_store), temp_c)
    calendar = float(np.sum(share * k_cal ** (1.0 / p_cal)))
    if chemistry == "lfp":
        cycle = 0.0
        for depth, ah in pieces:
            k_cyc, _ = naumann_cycle_rates(c, depth)
            cycle += float(k_cyc) ** 2 * ah / (2.0 * rated_capacity_ah)
        return calendar, cycle
    v_hi = float(ocv_v_from_soc_pct(100.0 * z_max, "nmc"))
    v_lo = float(ocv_v_from_soc_pct(100.0 * z_min, "nmc"))
    if bound == "upper":
        v_rms = max(v_hi, v_lo, key=lambda v: abs(v - 3.667))
    else:
        v_rms = min(max(3.667, v_lo), v_hi)
    cycle = 0.0
    for depth, ah in pieces:
        b_cap, _ = schmalstieg_cycle_rates(v_rms, depth)
        cycle += float(b_cap) ** 2 * ah * SCHMALSTIEG_CELL_AH / rated_capacity_ah
    return calendar, cycle


def silent_day_stress(chemistry: str) -> float:
    """Upper-bound calendar ``daily_ageing_stress`` of a day without telemetry: 24 h at
    ``SILENT_DAY_TEMP_C`` and full charge. [(relative fade)^(1/p)]"""
    calendar, _ = daily_ageing_stress(
        chemistry,
        band_hours=[24.0],
        band_temp_c=[SILENT_DAY_TEMP_C],
        soc_min_pct=100.0,
        soc_max_pct=100.0,
        throughput_ah=0.0,
        rated_capacity_ah=1.0,
        c_rate=0.0,
        bound="upper",
    )
    return calendar


#: Reference temperature of the Arrhenius-weighted hours (``calendar_arrhenius_k``). [degC]
CALENDAR_REF_TEMP_C = 25.0
#: SoC bins of the calendar exposure (``calendar_stress_from_exposure``), deciles. [%]
CALENDAR_SOC_BINS_PCT = tuple(float(z) for z in range(0, 101, 10))


def calendar_arrhenius_k(chemistry: str) -> float:
    r"""Temperature constant :math:`B` of the calendar stress of ``daily_ageing_stress``.

    Both calendar laws are a SoC (voltage) term times an Arrhenius term, so the summed
    quantity :math:`k_{cal}(z, T)^{1/p}` is :math:`k_{cal}(z, T_0)^{1/p}
    e^{B (1/T_0 - 1/T)}`: an hour at :math:`T` counts as :math:`e^{B(1/T_0 - 1/T)}` hours
    at :math:`T_0` = ``CALENDAR_REF_TEMP_C``. Read off the laws themselves (Schmalstieg
    :math:`B = 6976/0.75` K, Naumann :math:`E_a/(R\,0.5)`), so it cannot drift from them.
    [K]
    """
    p_cal = _calendar_exponent(chemistry)
    t1, t2 = 15.0, 35.0
    k1, k2 = (float(_calendar_rate(chemistry, 50.0, t)) for t in (t1, t2))
    inv1, inv2 = 1.0 / (t1 + 273.15), 1.0 / (t2 + 273.15)
    return math.log(k2 / k1) / (inv1 - inv2) / p_cal


def calendar_stress_from_exposure(chemistry: str, ref_hours: npt.ArrayLike, *, bound: str) -> float:
    r"""Calendar ``daily_ageing_stress`` of hours whose temperature and SoC were read.

    Parameters
    ----------
    chemistry : str
        ``'nmc'`` or ``'lfp'``.
    ref_hours : array
        For each SoC bin of ``CALENDAR_SOC_BINS_PCT`` (0-10 %, ..., 90-100 %), the hours
        spent in it, each weighted by :math:`e^{B(1/T_0 - 1/T)}` at its temperature
        (``calendar_arrhenius_k``): hours at ``CALENDAR_REF_TEMP_C`` of equal calendar
        ageing. [h]
    bound : str
        ``'upper'``: each bin at its upper SoC edge; ``'lower'``: at its lower edge.

    Returns
    -------
    float
        :math:`\sum_b (h_b/24)\,k_{cal}(z_b, T_0)^{1/p}`, in the units of
        ``daily_ageing_stress``. [(relative fade)^(1/p)]

    Notes
    -----
    The temperature is integrated reading by reading, so neither bound is loosened by
    temperature bands (10-15 K wide, a factor of 2-3 in the rate at each edge); what is
    left between the bounds is the SoC bin's width (both laws rise with SoC).
    """
    p_cal = _calendar_exponent(chemistry)
    if bound not in ("upper", "lower"):
        raise ValueError(f"unknown bound {bound!r}; valid: lower, upper")
    hours = np.asarray(ref_hours, dtype=np.float64)
    edges = np.asarray(CALENDAR_SOC_BINS_PCT)
    soc_pct = edges[1:] if bound == "upper" else edges[:-1]
    if hours.shape != soc_pct.shape:
        raise ValueError(f"ref_hours needs {soc_pct.size} SoC bins, got {hours.size}")
    k_cal = _calendar_rate(chemistry, soc_pct, np.full(soc_pct.shape, CALENDAR_REF_TEMP_C))
    return float(np.sum(hours / 24.0 * k_cal ** (1.0 / p_cal)))


def usage_stress_ratio(
    before: tuple[float, float], before_days: float, since: tuple[float, float], since_days: float
) -> float:
    """How much harder a vehicle has been used since its newest capacity estimate.

    Parameters
    ----------
    before : tuple of float
        Summed lower-bound ``daily_ageing_stress`` (calendar, cycle) of the days up to
        the estimate (a lower bound, so that the ratio is an upper bound).
    before_days : float
        Number of those days. [days]
    since : tuple of float
        The summed upper-bound stress of the days after it.
    since_days : float
        Number of those days. [days]

    Returns
    -------
    float
        The larger of the two mechanisms' ratios of mean daily stress, since over
        before (1 = used as before); ``inf`` when a mechanism had no stress before but
        has some since, or nothing is known before. [-]
    """
    if since_days <= 0:
        return 0.0
    if before_days <= 0:
        return math.inf
    ratio = 0.0
    for b, s in zip(before, since, strict=True):
        mean_b, mean_s = b / before_days, s / since_days
        if mean_s <= 0:
            continue
        ratio = max(ratio, mean_s / mean_b if mean_b > 0 else math.inf)
    return ratio


def fade_since_bound_frac(
    calendar_stress: float, cycle_stress: float, fade_before_frac: float, chemistry: str
) -> float:
    r"""Upper bound on the relative capacity fade accrued over a period of known stress.

    Parameters
    ----------
    calendar_stress, cycle_stress : float
        Summed upper-bound ``daily_ageing_stress`` of the period.
        [(relative fade)^(1/p)]
    fade_before_frac : float
        Fade already accrued before the period, at least (a lower bound; 0 if unknown):
        power-law fade slows as it accrues. [-]
    chemistry : str
        ``'nmc'`` or ``'lfp'`` (calendar exponent ``FADE_EXPONENT``; cycle 0.5).

    Returns
    -------
    float
        Fade of the period relative to the fresh capacity, of the lab cell (the caller
        scales to a pack: ``PACK_LIFE_FACTOR``). [-]

    Raises
    ------
    ValueError
        Unknown chemistry (the message names the valid ones).

    Notes
    -----
    Each mechanism advances as :math:`x_1 = (x_0^{1/p} + S)^p` (``daily_ageing_stress``);
    its increment :math:`(x_0^{1/p} + S)^p - x_0` falls with :math:`x_0` and is convex
    in it, so over every split of the fade before between calendar and cycle the largest
    total increment lies at one end: all of it calendar, or all of it cycle.
    """
    p_cal = _calendar_exponent(chemistry)
    x0 = max(fade_before_frac, 0.0)

    def step(x: float, stress: float, p: float) -> float:
        return float((x ** (1.0 / p) + max(stress, 0.0)) ** p - x)

    return max(
        step(x0, calendar_stress, p_cal) + step(0.0, cycle_stress, 0.5),
        step(0.0, calendar_stress, p_cal) + step(x0, cycle_stress, 0.5),
    )


_RANK = {"ok": 0, "at_risk": 1, "claim_eligible": 2}


def _judge(
    policy: WarrantyPolicy,
    fit: PowerFit,
    in_cover: list[tuple[WarrantyThreshold, float, float]],
    flags: tuple[str, ...],
    now_years: float,
    trend_years: Callable[[float], float],
) -> WarrantyVerdict:
    """The worst status over the thresholds in cover, reading the trend at
    ``trend_years(t)`` for age ``t`` (the identity, or a stress-equivalent age)."""
    now, now_lo, _now_hi = (float(v) for v in fit.interval(trend_years(now_years)))
    best: WarrantyVerdict | None = None
    for th, end_y, end_km in in_cover:
        proj, proj_lo, proj_hi = (float(v) for v in fit.interval(trend_years(end_y)))
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
    return best


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
    use_since: UseSinceEstimate | None = None,
    prior_fade_sigma: float = math.inf,
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
        Older evidence cannot say ``ok`` or ``at_risk`` from the trend alone: it would be
        an extrapolation, not a measurement (``claim_eligible`` stands: capacity only
        fades). [days]
    use_since : UseSinceEstimate, optional
        The use observed since the newest estimate (with its chemistry); None = unknown.
    prior_fade_sigma : float
        Prior sigma of the fit's fade coefficient (``MEASURED_FADE_SIGMA_SHARE``).
        [% per year**exponent]

    Returns
    -------
    WarrantyVerdict
        Status per threshold still in cover: ``claim_eligible`` if the SoH now is below
        the minimum; ``at_risk`` if the 90 % interval now reaches below it, or the trend
        projected to the end of cover falls below it; else ``ok``. The worst over the
        thresholds in cover wins; ``out_of_coverage`` when every threshold has ended;
        ``insufficient_data`` without an estimate, or with only stale ones, unless the
        use since bounds the ageing (below).

    Notes
    -----
    Stale evidence says ``ok`` only if the fade rate was measured (its sigma at most
    ``MEASURED_FADE_SIGMA_SHARE`` of the prior's), the use since the newest estimate was
    observed on ``MIN_OBSERVED_USE_SHARE`` of the days, and two bounds hold:

    - today: the 90 % lower bound of the trend at the newest estimate, less the largest
      fade the published lab-cell laws allow for the use since at its worst stressors
      (``fade_since_bound_frac``; each day without telemetry charged
      ``silent_day_stress`` and the observed days' mean cycling) divided by
      ``PACK_LIFE_FACTOR`` (the laws exclude cell imbalance), is above every threshold
      in cover. Under car use (15-35 degC, SoC 30-90 %, 0.3 equivalent cycles a day at
      1C) those cells lose 6.2-8.8 % (LFP) and 11.5-18.4 % (NMC, mostly Schmalstieg's
      cycle term) in their first year: 3-5 x and 5-10 x the 1.8-2.3 %/yr of fleet data
      (science.md 5); the cycle laws have no temperature term;
    - to the end of cover: the trend read at the stress-equivalent age says ``ok``. With
      :math:`t_e` the age at the newest estimate and :math:`\\rho = \\max(1,
      stress\\_ratio)`, age :math:`t` maps to :math:`t_e + \\rho (t - t_e)` (the use
      assumed to go on as since): fade grows with accumulated stress, so a vehicle used
      :math:`\\rho` times as hard ages at most as the trend does over :math:`\\rho`
      times the time. The ratio compares the use since at its upper-bound stress with
      the use before at its lower-bound stress (``daily_ageing_stress``), so it is not
      understated. The ``projected_*`` figures of such an ``ok`` are the trend's at the
      stress-equivalent age, not at the age.

    Both bound ageing, not defects: a cell failing since is not seen.
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
        end_y, end_km = coverage_end(
            last, age_years=age_years, odometer_km=odometer_km, km_per_day=km_per_day
        )
        return WarrantyVerdict(
            "out_of_coverage",
            policy.id,
            last,
            end_y,
            end_km,
            nan,
            nan,
            nan,
            _cover_ended_reason(last, age_years, odometer_km, end_y),
            flags,
            _cover_ended_by(last, odometer_km, end_y),
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
    best = _judge(policy, fit, in_cover, flags, age_years, lambda t: t)
    if evidence_age_days <= max_evidence_age_days or best.status == "claim_eligible":
        return best
    stale = (
        f"newest capacity estimate {evidence_age_days:.0f} days old "
        f"(limit {max_evidence_age_days:g})"
    )
    sd_b = math.sqrt(max(fit.cov[2], 0.0))
    measured = sd_b <= MEASURED_FADE_SIGMA_SHARE * prior_fade_sigma
    days = 0.0 if use_since is None else use_since.days_observed
    observed = days >= MIN_OBSERVED_USE_SHARE * (evidence_age_days - 1.0)
    if not measured:
        why = "fade rate not measured (prior)"
    elif use_since is None or not math.isfinite(use_since.stress_ratio):
        why = "use since unknown"
    elif not observed:
        why = f"use since observed on {days:.0f} of {evidence_age_days:.0f} days"
    else:
        t_e = age_years - evidence_age_days / DAYS_PER_YEAR
        _, lo_e, _ = (float(v) for v in fit.interval(t_e))
        # Fade measured up to the estimate, at least (one-sided 95 % on the fade rate),
        # and the fresh capacity, at most, that a fraction of fade is taken from.
        q = t_quantile_95(fit.dof)
        fade_before = max(-(fit.b + q * sd_b), 0.0) * max(t_e, 0.0) ** fit.exponent
        fresh = fit.a + q * math.sqrt(max(fit.cov[0], 0.0))
        # Days without telemetry (at most 1 - MIN_OBSERVED_USE_SHARE of them): calendar
        # ageing at its worst; cycling at the observed days' mean, as nothing bounds a
        # silent day's driving.
        silent = max(evidence_age_days - use_since.days_observed, 0.0)
        calendar = use_since.calendar_stress + silent * silent_day_stress(use_since.chemistry)
        cycle = use_since.cycle_stress * (1.0 + silent / max(use_since.days_observed, 1.0))
        since = fade_since_bound_frac(calendar, cycle, fade_before / fresh, use_since.chemistry)
        now_lo = lo_e - fresh * since / PACK_LIFE_FACTOR
        minimum = max(th.min_soh_pct for th, _, _ in in_cover)
        rho = max(use_since.stress_ratio, 1.0)
        bounded = _judge(policy, fit, in_cover, flags, age_years, lambda t: t_e + rho * (t - t_e))
        use = (
            f"use since {use_since.stress_ratio:.2f} x as ageing as before, "
            f"soh_pct now >= {now_lo:.1f} at the lab-cell ageing laws' worst"
        )
        if now_lo >= minimum and bounded.status == "ok":
            return dataclasses.replace(
                bounded,
                reason=f"{stale}; {use}; trend at {rho:.2f} x the time since: {bounded.reason}",
            )
        why = f"{use} (>= {minimum:g} needed); trend at {rho:.2f} x the time since: " + (
            bounded.reason
        )
    return dataclasses.replace(
        best,
        status="insufficient_data",
        reason=f"{stale}; {why}; the trend would say: {best.reason}",
    )
