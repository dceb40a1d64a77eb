"""What to simulate (``FleetSpec``) and the vehicles drawn from it.

Everything random is drawn from ``numpy.random.default_rng`` streams keyed by the seed
and the vehicle (and day) index, so a vehicle's history does not depend on how many
other vehicles are simulated next to it or in which order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from sim._presets import (
    CHEMISTRY_PARAMS,
    CLIMATES,
    FAULT_KINDS,
    USAGE_PROFILES,
    VEHICLE_CLASSES,
    ChemistryParams,
    Climate,
    UsageProfile,
    VehicleClass,
)

FloatArray = npt.NDArray[np.float64]

#: Fault kinds that sit in one cell (the others are pack- or sensor-level).
CELL_FAULTS = ("soft_short", "fast_fade", "resistance_growth")
_VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
_FLEET_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MIN_CELLS, MAX_CELLS = 14, 200

#: Cell-to-cell manufacturing spread (Wildfeuer & Lienkamp, science.md 3): sigma of
#: capacity 0.2-0.3 %, of impedance 0.7-3.8 %. Self-discharge spread assumed: pack
#: makers match cells by self-discharge rate, so +-10 % (lognormal sigma) is used.
CAPACITY_SIGMA_FRAC = 0.0025
RESISTANCE_SIGMA_FRAC = 0.02
SELF_DISCHARGE_SIGMA_LOG = 0.1
#: Spread of ageing between cells of a pack and between vehicles (BLAST-Lite
#: ``degradation_scalar``; assumed lognormal sigmas).
CELL_AGEING_SIGMA_LOG = 0.05
VEHICLE_AGEING_SIGMA_LOG = 0.12
#: Median degradation scalar of the fleet (BLAST-Lite ``degradation_scalar``). The lab
#: cells behind the models (Sanyo 2 Ah 18650, Sony 3 Ah 26650) applied to these usage
#: patterns lose 6-11 %/yr in year one; 0.5 brings a mild-climate commuter to ~3.5 % and a
#: hot-climate one to ~5.5 % in year one (~2-3.5 %/yr averaged over 8 years of a
#: t^0.5-0.75 law), in line with fleet data: 1.8-2.3 %/yr average, hot climate +0.4,
#: heavy DC use up to 3 %/yr (Geotab 2024-2026, science.md 5). Calibration, not physics.
DEFAULT_AGEING_SCALE = 0.5
#: Cells leave the factory with a little more than the rated capacity (assumed).
CAPACITY_MARGIN_FRAC = 0.01


@dataclass(frozen=True)
class FleetSpec:
    """What to simulate. All fields have defaults that make a small demo fleet.

    Attributes
    ----------
    vehicles : int
        Number of vehicles (>= 1).
    days : int
        Number of simulated local days (>= 1).
    start : datetime.date
        First simulated local day (fleet time zone).
    fleet : str
        Fleet id (topics, partitions): 1-64 of ``[A-Za-z0-9_-]``.
    seed : int
        Seed of every random draw; same spec -> same data.
    chemistry, climate, vehicle_class : str
        ``nmc``/``lfp``/``mixed``, ``hot``/``mild``/``mixed``, ``car``/``two_wheeler``/
        ``mixed``.
    cells : int or None
        Series cells per pack (14..200), overriding the vehicle class's.
    cadence_s : int
        Reading interval while driving or charging. [s]
    idle_cadence_s : int
        Reading interval while parked. [s]
    fault_rate : float
        Share of vehicles that develop one fault during the run, 0..1.
    fault_kinds : tuple of str
        Kinds of fault drawn from (keys of ``FAULT_KINDS``), all by default.
    ageing_scale : float
        Median degradation scalar of the fleet (``DEFAULT_AGEING_SCALE``); 1.0 runs the
        published lab-cell models as they are.
    max_age_days : int
        Vehicles enter the run already in service for 0..this many days (pre-aged). [d]
    timezone : str
        IANA zone of the fleet: daily routines follow its local time.
    """

    vehicles: int = 10
    days: int = 60
    start: date = date(2026, 1, 1)
    fleet: str = "demo"
    seed: int = 0
    chemistry: str = "mixed"
    climate: str = "mixed"
    vehicle_class: str = "car"
    cells: int | None = None
    cadence_s: int = 30
    idle_cadence_s: int = 600
    fault_rate: float = 0.2
    fault_kinds: tuple[str, ...] = tuple(FAULT_KINDS)
    ageing_scale: float = DEFAULT_AGEING_SCALE
    max_age_days: int = 0
    timezone: str = "Asia/Kolkata"

    def __post_init__(self) -> None:
        validate_spec(self)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def end(self) -> date:
        """Last simulated local day."""
        return self.start + timedelta(days=self.days - 1)


def _choice_error(what: str, value: str, valid: list[str]) -> ValueError:
    return ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def validate_spec(spec: FleetSpec) -> None:
    """Raise ``ValueError`` with one clear sentence if ``spec`` is unusable."""
    if spec.vehicles < 1:
        raise ValueError(f"vehicles must be at least 1, got {spec.vehicles}")
    if spec.days < 1:
        raise ValueError(f"days must be at least 1, got {spec.days}")
    if not _FLEET_RE.match(spec.fleet):
        raise ValueError(f"fleet id {spec.fleet!r} is not 1-64 characters of [A-Za-z0-9_-]")
    if spec.chemistry not in (*CHEMISTRY_PARAMS, "mixed"):
        raise _choice_error("chemistry", spec.chemistry, [*CHEMISTRY_PARAMS, "mixed"])
    if spec.climate not in (*CLIMATES, "mixed"):
        raise _choice_error("climate", spec.climate, [*CLIMATES, "mixed"])
    if spec.vehicle_class not in (*VEHICLE_CLASSES, "mixed"):
        raise _choice_error("vehicle class", spec.vehicle_class, [*VEHICLE_CLASSES, "mixed"])
    if spec.cells is not None and not MIN_CELLS <= spec.cells <= MAX_CELLS:
        raise ValueError(f"cells must be within {MIN_CELLS}..{MAX_CELLS}, got {spec.cells}")
    if not 1 <= spec.cadence_s <= 3600:
        raise ValueError(f"cadence must be within 1..3600 s, got {spec.cadence_s}")
    if not spec.cadence_s <= spec.idle_cadence_s <= 3600:
        raise ValueError(
            f"idle cadence must be within cadence ({spec.cadence_s} s)..3600 s, "
            f"got {spec.idle_cadence_s}"
        )
    if not 0.0 <= spec.fault_rate <= 1.0:
        raise ValueError(f"fault rate must be within 0..1, got {spec.fault_rate}")
    bad = [k for k in spec.fault_kinds if k not in FAULT_KINDS]
    if bad or not spec.fault_kinds:
        raise _choice_error("fault kind", ",".join(bad), list(FAULT_KINDS))
    if not 0.0 <= spec.ageing_scale <= 10.0:
        raise ValueError(f"ageing scale must be within 0..10, got {spec.ageing_scale}")
    if spec.max_age_days < 0:
        raise ValueError(f"max age must be >= 0 days, got {spec.max_age_days}")
    try:
        ZoneInfo(spec.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {spec.timezone!r}") from None


def make_vin(fleet: str, seed: int, index: int) -> str:
    """Deterministic 17-character VIN of vehicle ``index`` (ISO 3779 alphabet).

    ``FBM`` (world manufacturer id of this simulator) + 5 characters from a hash of
    fleet and seed + ``0`` (check digit position, unused) + ``T`` (model year) + ``S`` +
    a 6-digit serial (``index + 1``).
    """
    if not 0 <= index < 1_000_000:
        raise ValueError(f"vehicle index {index} outside 0..999999")
    digest = hashlib.sha256(f"{fleet}/{seed}".encode()).digest()
    vds = "".join(_VIN_ALPHABET[b % len(_VIN_ALPHABET)] for b in digest[:5])
    return f"FBM{vds}0TS{index + 1:06d}"


@dataclass(frozen=True)
class FaultSpec:
    """An injected fault: what, where, when it starts and how fast it grows.

    ``severity`` is the size reached ``ramp_days`` after onset (leak current [A] for
    ``soft_short``, extra capacity loss [-] for ``fast_fade``, resistance multiplier [-]
    for ``resistance_growth``, lost cooling share [-] for ``cooling_failure``, erratic
    noise [degC] for ``temp_sensor``). The fault grows as ``((d - onset)/ramp)^1.5``.
    """

    kind: str
    cell: int  # -1 for pack-level faults
    sensor: int  # -1 unless a temperature sensor fault
    onset_day: int  # index of the simulated day it starts
    ramp_days: float
    severity: float
    mode: str = ""  # temp_sensor: stuck, sentinel, erratic

    def growth(self, day_index: float) -> float:
        """Size of the fault on a day, 0 before onset, 1 at ``ramp_days`` and after."""
        x = (day_index - self.onset_day) / self.ramp_days
        return float(min(max(x, 0.0), 1.0) ** 1.5)


@dataclass(frozen=True)
class VehicleSpec:
    """One simulated vehicle: its fixed design, cell spreads, habits and faults."""

    index: int
    vin: str
    chemistry: ChemistryParams
    vclass: VehicleClass
    climate: Climate
    profile: UsageProfile
    n_cells: int
    n_temps: int
    rated_ah: float  # rated cell (= pack) capacity [Ah]
    age_days: int  # in service before the first simulated day [d]
    in_service_date: date
    cap0_ah: FloatArray  # fresh capacity per cell [Ah]
    r0_ohm: FloatArray  # fresh ohmic resistance per cell at 25 degC [Ohm]
    r1_ohm: FloatArray  # fresh polarisation resistance per cell at 25 degC [Ohm]
    leak_a: FloatArray  # normal self-discharge current per cell [A]
    ageing_scalar: FloatArray  # degradation scalar per cell (vehicle x cell) [-]
    sensor_offset_c: FloatArray  # per-sensor offset [degC]
    sensor_gain: FloatArray  # per-sensor share of the pack's rise above ambient [-]
    km_factor: float  # this driver's km relative to the profile [-]
    charge_threshold: float  # plugs in below this SoC [-]
    usual_target: float  # usual charge target [-]
    reserve: float  # seeks a fast charger below this SoC while driving [-]
    full_charge_weekday: int  # LFP: weekly charge to 100 % on this weekday (0 = Monday)
    charge_nightly: bool
    offpeak: bool  # starts home charging at 22:00
    current_offset_a: float  # current-sensor offset [A]
    soh_bias_pct: float  # bias of the BMS's SoH estimate [%]
    faults: tuple[FaultSpec, ...] = field(default=())

    @property
    def interconnect_ohm(self) -> float:
        return self.vclass.interconnect_mohm / 1000.0

    @property
    def has_active_cooling(self) -> bool:
        return self.vclass.active_cooling_w_per_k > 0


def scale_vehicle_class(vclass: VehicleClass, n_cells: int) -> VehicleClass:
    """The class with a pack of ``n_cells`` series cells of the same type.

    Energy, power, charger power, heat capacity and thermal conductances scale with
    the cell count, so C-rates, SoC swings and temperatures stay those of the class.
    """
    k = n_cells / vclass.n_cells
    return dataclasses.replace(
        vclass,
        n_cells=n_cells,
        interconnect_mohm=vclass.interconnect_mohm * k,
        wh_per_km_city=vclass.wh_per_km_city * k,
        wh_per_km_highway=vclass.wh_per_km_highway * k,
        peak_power_kw=vclass.peak_power_kw * k,
        ac_charge_kw=vclass.ac_charge_kw * k,
        dc_charge_kw=vclass.dc_charge_kw * k,
        thermal_mass_j_per_k=vclass.thermal_mass_j_per_k * k,
        passive_w_per_k=vclass.passive_w_per_k * k,
        active_cooling_w_per_k=vclass.active_cooling_w_per_k * k,
    )


def _pick(rng: np.random.Generator, shares: dict[str, float]) -> str:
    names = list(shares)
    p = np.array([shares[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _draw_fault(
    rng: np.random.Generator, spec: FleetSpec, n_cells: int, n_temps: int, rated_ah: float
) -> FaultSpec:
    kind = spec.fault_kinds[int(rng.integers(len(spec.fault_kinds)))]
    lo = max(1, int(spec.days * 0.15))
    hi = max(lo + 1, int(spec.days * 0.6))
    onset = int(rng.integers(lo, hi)) if spec.days > 2 else 0
    cell = int(rng.integers(n_cells))
    if kind == "soft_short":
        # A leak of 0.6-1.5 %/day of capacity (science.md 3: 37 mA ~ 1.5 %/day of 60 Ah).
        leak = rated_ah * float(rng.uniform(0.006, 0.015)) / 24.0
        return FaultSpec(kind, cell, -1, onset, float(rng.uniform(40, 110)), leak)
    if kind == "fast_fade":
        return FaultSpec(
            kind, cell, -1, onset, float(rng.uniform(80, 200)), float(rng.uniform(0.15, 0.3))
        )
    if kind == "resistance_growth":
        return FaultSpec(
            kind, cell, -1, onset, float(rng.uniform(60, 150)), float(rng.uniform(3.0, 6.0))
        )
    if kind == "cooling_failure":
        return FaultSpec(kind, -1, -1, onset, float(rng.uniform(20, 60)), 1.0)
    mode = ("stuck", "sentinel", "erratic")[int(rng.integers(3))]
    sensor = int(rng.integers(n_temps))
    return FaultSpec(
        kind, -1, sensor, onset, float(rng.uniform(30, 90)), float(rng.uniform(20, 35)), mode
    )


def build_vehicle(spec: FleetSpec, index: int) -> VehicleSpec:
    """Draw vehicle ``index`` of the fleet (independent of the other vehicles)."""
    rng = np.random.default_rng([spec.seed, 0, index])
    chem_name = spec.chemistry
    if chem_name == "mixed":
        chem_name = "nmc" if rng.random() < 0.6 else "lfp"
    climate_name = spec.climate
    if climate_name == "mixed":
        climate_name = "hot" if rng.random() < 0.5 else "mild"
    class_name = spec.vehicle_class
    if class_name == "mixed":
        class_name = "car" if rng.random() < 0.5 else "two_wheeler"
    chem = CHEMISTRY_PARAMS[chem_name]
    vclass = VEHICLE_CLASSES[class_name]
    profile = USAGE_PROFILES[_pick(rng, vclass.profiles)]
    n_cells = spec.cells if spec.cells is not None else vclass.n_cells
    if n_cells != vclass.n_cells:
        vclass = scale_vehicle_class(vclass, n_cells)
    n_temps = max(2, math.ceil(n_cells / vclass.cells_per_sensor))
    rated_ah = vclass.cell_ah[chem_name]
    age_days = int(rng.integers(0, spec.max_age_days + 1)) if spec.max_age_days else 0

    cap_scatter = CAPACITY_SIGMA_FRAC * rng.standard_normal(n_cells)
    cap0 = rated_ah * (1 + CAPACITY_MARGIN_FRAC + cap_scatter)
    r0_nominal = chem.r0_mohm_ah / rated_ah / 1000.0
    r_scatter = 1 + RESISTANCE_SIGMA_FRAC * rng.standard_normal(n_cells)
    r0 = r0_nominal * r_scatter
    r1 = chem.r1_ratio * r0_nominal * (1 + RESISTANCE_SIGMA_FRAC * rng.standard_normal(n_cells))
    leak = (
        rated_ah
        * chem.self_discharge_pct_per_day
        / 100.0
        / 24.0
        * rng.lognormal(0.0, SELF_DISCHARGE_SIGMA_LOG, n_cells)
    )
    vehicle_scalar = spec.ageing_scale * rng.lognormal(0.0, VEHICLE_AGEING_SIGMA_LOG)
    ageing = vehicle_scalar * rng.lognormal(0.0, CELL_AGEING_SIGMA_LOG, n_cells)

    if chem_name == "nmc":
        usual_target = float(rng.choice([0.8, 0.9, 1.0], p=[0.6, 0.25, 0.15]))
        threshold = float(rng.uniform(0.3, 0.55))
        reserve = float(rng.uniform(0.12, 0.2))
    else:
        usual_target = float(rng.choice([0.9, 1.0], p=[0.5, 0.5]))
        threshold = float(rng.uniform(0.18, 0.35))
        reserve = float(rng.uniform(0.07, 0.12))
    if profile.pattern == "occasional":
        usual_target = 1.0  # idles at high SoC
    faults: tuple[FaultSpec, ...] = ()
    if rng.random() < spec.fault_rate:
        faults = (_draw_fault(rng, spec, n_cells, n_temps, rated_ah),)
    return VehicleSpec(
        index=index,
        vin=make_vin(spec.fleet, spec.seed, index),
        chemistry=chem,
        vclass=vclass,
        climate=CLIMATES[climate_name],
        profile=profile,
        n_cells=n_cells,
        n_temps=n_temps,
        rated_ah=rated_ah,
        age_days=age_days,
        in_service_date=spec.start - timedelta(days=age_days),
        cap0_ah=cap0,
        r0_ohm=r0,
        r1_ohm=r1,
        leak_a=leak,
        ageing_scalar=ageing,
        sensor_offset_c=0.3 * rng.standard_normal(n_temps),
        sensor_gain=rng.uniform(0.9, 1.1, n_temps),
        km_factor=float(rng.lognormal(0.0, 0.25)),
        charge_threshold=threshold,
        usual_target=usual_target,
        reserve=reserve,
        full_charge_weekday=int(rng.integers(7)),
        charge_nightly=bool(rng.random() < profile.charge_nightly_prob),
        offpeak=bool(rng.random() < 0.5),
        current_offset_a=float(vclass.current_offset_sigma_a * rng.standard_normal()),
        soh_bias_pct=float(rng.normal(1.5, 1.5)),
        faults=faults,
    )


def build_fleet(spec: FleetSpec) -> list[VehicleSpec]:
    """All vehicles of the fleet, in VIN order."""
    return [build_vehicle(spec, i) for i in range(spec.vehicles)]
