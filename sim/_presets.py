"""Documented presets: chemistries, vehicle classes, climates and usage profiles.

Every number has a source or is marked *assumed* (a plausible engineering value chosen
for the simulator, not taken from a datasheet). ``shared/science.md`` is the reference
for the cited values.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChemistryParams:
    """Cell-level parameters of one chemistry (units in the names)."""

    name: str
    #: DC (10 s pulse) resistance times capacity at 25 degC, 50 % SoC. NMC: Samsung 94 Ah
    #: prismatic 0.819 mOhm (Collath et al. 2024, science.md 3) -> ~77 mOhm Ah, rounded
    #: up to 90 for a 10 s pulse; LFP: Sony 26650 47.8 mOhm x 3 Ah = 143 mOhm Ah, large
    #: prismatic cells are better (Lishen 202 Ah AC <= 0.2 mOhm): 110 assumed.
    r0_mohm_ah: float
    #: Polarisation (RC) resistance as a share of R0 and its time constant; chosen so a
    #: rest needs ~3 h to reach OCV within 1 mV (Theuerkauf & Swan 2022, science.md 1).
    r1_ratio: float
    tau1_s: float
    #: Half the charge/discharge OCV gap (LFP 17-30 mV gap in SimSES, science.md 1). [mV]
    hysteresis_mv: float
    #: Normal self-discharge, 1-2 %/month (Battery University BU-802b, rough). [%/day]
    self_discharge_pct_per_day: float
    #: Contract v1 hard limits for alerts (telemetry.md). [mV]
    cell_max_mv: int
    cell_min_mv: int
    #: Charge termination voltage of the BMS (science.md 4). [mV]
    charge_cutoff_mv: int


CHEMISTRY_PARAMS: dict[str, ChemistryParams] = {
    "nmc": ChemistryParams(
        name="nmc",
        r0_mohm_ah=90.0,
        r1_ratio=1.5,
        tau1_s=1800.0,
        hysteresis_mv=0.0,
        self_discharge_pct_per_day=0.05,
        cell_max_mv=4250,
        cell_min_mv=2800,
        charge_cutoff_mv=4200,
    ),
    "lfp": ChemistryParams(
        name="lfp",
        r0_mohm_ah=110.0,
        r1_ratio=1.5,
        tau1_s=2700.0,
        hysteresis_mv=10.0,
        self_discharge_pct_per_day=0.04,
        cell_max_mv=3650,
        cell_min_mv=2500,
        charge_cutoff_mv=3600,
    ),
}


@dataclass(frozen=True)
class VehicleClass:
    """A kind of vehicle: pack size, drive train, chargers, thermal system (assumed values
    typical of Indian-market EVs, e.g. 30-45 kWh compact cars, 2.5-3.5 kWh scooters)."""

    name: str
    n_cells: int  # series cells
    cell_ah: dict[str, float]  # rated cell (= pack) capacity per chemistry [Ah]
    cells_per_sensor: int  # one temperature sensor per this many cells
    interconnect_mohm: float  # busbars, contactors, fuse [mOhm]
    wh_per_km_city: float  # [Wh/km]
    wh_per_km_highway: float  # [Wh/km]
    speed_city_kmh: float  # mean speed while driving [km/h]
    speed_highway_kmh: float  # [km/h]
    peak_power_kw: float  # [kW]
    ac_charge_kw: float  # home/depot charger [kW]
    dc_charge_kw: float  # fast charger; 0 = none [kW]
    thermal_mass_j_per_k: float  # lumped pack heat capacity [J/K]
    passive_w_per_k: float  # conductance pack -> ambient [W/K]
    active_cooling_w_per_k: float  # liquid loop conductance to the setpoint; 0 = none [W/K]
    cooling_setpoint_c: float  # [degC]
    bleed_a: float  # passive balancing current [A]
    current_offset_sigma_a: float  # spread of current-sensor offsets [A]
    current_noise_a: float  # current-sensor noise [A]
    sends_soh: bool  # the BMS sends pack.soh_pct
    profiles: dict[str, float] = field(default_factory=dict)  # usage profile -> share
    # the registry's warranty policy (a bms preset id); "" = the fleet's default
    warranty_policy: str = ""


VEHICLE_CLASSES: dict[str, VehicleClass] = {
    "car": VehicleClass(
        name="car",
        n_cells=96,
        cell_ah={"nmc": 120.0, "lfp": 135.0},
        cells_per_sensor=12,
        interconnect_mohm=10.0,
        wh_per_km_city=130.0,
        wh_per_km_highway=160.0,
        speed_city_kmh=24.0,
        speed_highway_kmh=70.0,
        peak_power_kw=80.0,
        ac_charge_kw=7.2,
        dc_charge_kw=50.0,
        thermal_mass_j_per_k=3.0e5,
        passive_w_per_k=15.0,
        active_cooling_w_per_k=250.0,
        cooling_setpoint_c=30.0,
        bleed_a=0.1,
        current_offset_sigma_a=0.05,
        current_noise_a=0.1,
        sends_soh=True,
        profiles={"commuter": 0.6, "taxi": 0.25, "occasional": 0.15},
    ),
    "two_wheeler": VehicleClass(
        name="two_wheeler",
        n_cells=20,
        cell_ah={"nmc": 40.0, "lfp": 40.0},
        cells_per_sensor=10,
        interconnect_mohm=8.0,
        wh_per_km_city=30.0,
        wh_per_km_highway=38.0,
        speed_city_kmh=22.0,
        speed_highway_kmh=45.0,
        peak_power_kw=5.0,
        ac_charge_kw=0.9,
        dc_charge_kw=0.0,
        thermal_mass_j_per_k=2.5e4,
        passive_w_per_k=4.0,
        active_cooling_w_per_k=0.0,
        cooling_setpoint_c=30.0,
        bleed_a=0.05,
        current_offset_sigma_a=0.02,
        current_noise_a=0.03,
        sends_soh=False,
        profiles={"commuter": 0.5, "delivery": 0.5},
        # a scooter's battery cover, not a car's 160,000 km
        warranty_policy="oem-2w-8y-80k-70",
    ),
}


@dataclass(frozen=True)
class Climate:
    """Ambient temperature: annual mean, seasonal and diurnal sinusoids, daily weather.

    ``T(doy, h) = mean + seasonal*cos(2 pi (doy - peak_doy)/365) + weather(doy)
    + diurnal*cos(2 pi (h - 15)/24)``, warmest at 15:00 local time.
    """

    name: str
    annual_mean_c: float
    seasonal_amp_c: float
    peak_doy: int
    diurnal_amp_c: float
    weather_sigma_c: float  # day-to-day deviation (AR(1), 3-day memory) [degC]


CLIMATES: dict[str, Climate] = {
    # Hot inland Indian city (Nagpur/Delhi summer-like): afternoon highs ~31 degC in
    # January to ~45 degC in mid-May, nights 18-31 degC (IMD climate normals, rough).
    "hot": Climate("hot", 31.0, 7.0, 135, 7.0, 1.5),
    # Mild highland city (Bengaluru-like): highs 27-34 degC, nights 15-22 degC (rough).
    "mild": Climate("mild", 24.0, 3.0, 100, 5.5, 1.0),
}


@dataclass(frozen=True)
class UsageProfile:
    """How a vehicle is used (assumed, shaped after Geotab/ride-hailing fleet patterns)."""

    name: str
    pattern: str  # commute, shift, delivery, occasional
    daily_km: dict[str, float]  # vehicle class -> mean km on a working day [km]
    city_share: float  # share of km driven in the city [-]
    dc_share: float  # share of charging sessions on a DC fast charger [-]
    weekend_factor: float  # km on weekends relative to working days [-]
    charge_nightly_prob: float  # share of drivers who plug in every evening [-]


USAGE_PROFILES: dict[str, UsageProfile] = {
    "commuter": UsageProfile(
        "commuter", "commute", {"car": 40.0, "two_wheeler": 25.0}, 0.7, 0.05, 0.6, 0.3
    ),
    "taxi": UsageProfile("taxi", "shift", {"car": 170.0, "two_wheeler": 90.0}, 0.8, 0.5, 0.9, 0.9),
    "delivery": UsageProfile(
        "delivery", "delivery", {"car": 120.0, "two_wheeler": 70.0}, 0.95, 0.0, 0.8, 0.9
    ),
    "occasional": UsageProfile(
        "occasional", "occasional", {"car": 18.0, "two_wheeler": 10.0}, 0.6, 0.0, 1.2, 0.8
    ),
}

#: Fault kinds the simulator injects, with what they do.
FAULT_KINDS: dict[str, str] = {
    "soft_short": "internal soft short: a leak current (tens of mA) drains one cell at rest",
    "fast_fade": "one cell loses capacity much faster than its neighbours",
    "resistance_growth": "one cell's internal resistance grows several-fold",
    "temp_sensor": "a temperature sensor fails: stuck, sentinel values or erratic",
    "cooling_failure": "the pack's cooling degrades: it runs hot under load",
}
