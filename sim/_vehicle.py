r"""One vehicle, one day: usage plan, pack electro-thermal model, BMS, ageing step.

The day is planned segment by segment (parked, driving, AC or DC charging) in local time;
inside a segment every reading is computed with numpy at once.

Cell model (equivalent circuit, Plett 2015 ch. 2): for cell *j* at reading *k*

.. math::
    v_{kj} = OCV(z_{kj}) + i_k R_{0,j} f_T(T_k) f_z(z_{kj}) + R_{1,j} f_T(T_k)\,x_k
             + M h_k + \varepsilon

with :math:`z` the cell's state of charge (charge counted against its own capacity, less
self-discharge and balancing), :math:`x` the current through the polarisation branch (a
first-order lag of :math:`i` with time constant :math:`\tau_1`, so a rested cell reaches
its OCV only after a few hours), :math:`h` the LFP hysteresis state (one-state model,
Plett), :math:`f_T` the Arrhenius resistance factor (``bms.resistance_temp_factor``),
:math:`f_z` a rise of resistance below 15 % SoC and :math:`\varepsilon` ~ 0.7 mV noise
before 1 mV quantisation. The pack is one lumped thermal mass heated by :math:`i^2 R`,
cooled to ambient and, when driving or charging and present, by a liquid loop.

Ageing is stepped once per day with that day's stressors (``bms`` Schmalstieg and
Naumann models), scaled per cell by a degradation scalar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import numpy.typing as npt

import bms
from sim._physics import EMPTY_CELL_SOC, ambient_temp_c, cell_ocv_v, cell_ocv_v_f32, relax
from sim._spec import VehicleSpec

FloatArray = npt.NDArray[np.float64]

MODE_NAMES = ("drive", "ac_charge", "dc_charge", "idle")
DRIVE, AC, DC, IDLE = 0, 1, 2, 3

#: Temperature the contract calls over-temperature (telemetry.md). [degC]
OVER_TEMPERATURE_C = 60.0
#: Cell spread limit at rest (telemetry.md). [mV]
SPREAD_LIMIT_MV = 100
#: A sensor's "no value" code the simulator sends for a failed sensor: 0x09F6 tenths
#: = 255.0 degC, one of the sentinels the stored schema recognises.
SENTINEL_TEMP_C = 255.0
#: Hysteresis rate constant of the one-state model (Plett 2015): the state moves by
#: 1 - 1/e per 1/30 of capacity charged. [-]
HYSTERESIS_GAMMA = 30.0
#: BMS recalibrates SoC from OCV after this long at rest. [s]
BMS_REST_RECAL_S = 2 * 3600
#: Coolant temperature above ambient when the chiller has failed and the loop carries
#: motor and inverter heat (assumed). [K]
DRIVETRAIN_RISE_C = 25.0
#: CV phase ends when the current falls below this C-rate. [1/h]
CHARGE_TERMINATION_C = 0.05


@dataclass
class ChargeCarry:
    """A charging session still running at midnight."""

    mode: int
    power_kw: float
    target: float


@dataclass
class VehicleState:
    """Everything that carries over from one day to the next."""

    soc: FloatArray  # true cell states of charge [-]
    q_cal: FloatArray  # calendar capacity loss per cell [-]
    q_cyc: FloatArray  # cycle capacity loss per cell [-]
    r_cal: FloatArray  # calendar resistance growth per cell [-]
    r_cyc: FloatArray  # cycle resistance growth per cell [-]
    temp_c: float  # pack temperature [degC]
    soc_bms_pct: float
    soh_bms_pct: float
    odometer_km: float
    discharged_ah: float  # cumulative discharge the BMS counted [Ah]
    throughput_ah: float  # true cumulative charge + discharge [Ah]
    x_rc: float = 0.0  # polarisation branch current [A]
    hyst: float = 0.0  # hysteresis state, -1..1 [-]
    next_seq: int = 1
    rest_s: float = 0.0  # parked this long at the end of the previous day [s]
    carry: ChargeCarry | None = None
    stuck_temp_c: float | None = None
    limit_dates: dict[int, tuple[date, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class DayContext:
    """Where a vehicle-day sits in time."""

    index: int  # day index in the run (0 = first simulated day)
    local_date: date
    start_utc_ms: int  # local midnight in UTC epoch milliseconds
    length_s: int  # 86400 except on DST changes
    weather_c: float  # the city's weather deviation that day [degC]


@dataclass
class DayOutput:
    """Readings of one vehicle-day, column by column, and its ground-truth row."""

    vin: str
    seq: npt.NDArray[np.int64]
    ts_ms: npt.NDArray[np.int64]
    current_a: npt.NDArray[np.float32]
    voltage_v: npt.NDArray[np.float32]
    soc_pct: npt.NDArray[np.float32]
    soh_pct: npt.NDArray[np.float32]
    cycle_count: npt.NDArray[np.int32]
    odometer_km: npt.NDArray[np.float64]
    mode: npt.NDArray[np.int8]
    cell_mv: npt.NDArray[np.int16]  # (n, n_cells)
    temp_c: npt.NDArray[np.float32]  # (n, n_temps)
    truth: dict[str, object]

    def __len__(self) -> int:
        return len(self.seq)


# --- vehicle condition ---------------------------------------------------------------


def _fault_growths(v: VehicleSpec, day: float) -> dict[str, tuple[int, float]]:
    return {f.kind: (i, f.growth(day)) for i, f in enumerate(v.faults)}


def cell_capacity_ah(v: VehicleSpec, s: VehicleState, day: float) -> FloatArray:
    """Present capacity of each cell, including an injected fast fade. [Ah]"""
    loss = s.q_cal + s.q_cyc
    for f in v.faults:
        if f.kind == "fast_fade":
            loss = loss.copy()
            loss[f.cell] += f.severity * f.growth(day)
    return np.asarray(v.cap0_ah * np.clip(1.0 - loss, 0.05, None))


def cell_resistance_ohm(
    v: VehicleSpec, s: VehicleState, day: float
) -> tuple[FloatArray, FloatArray]:
    """Ohmic and polarisation resistance of each cell at 25 degC, 50 % SoC. [Ohm]"""
    growth = 1.0 + s.r_cal + s.r_cyc
    r0 = v.r0_ohm * growth
    for f in v.faults:
        if f.kind == "resistance_growth":
            r0 = r0.copy()
            r0[f.cell] *= 1.0 + (f.severity - 1.0) * f.growth(day)
    return np.asarray(r0), np.asarray(v.r1_ohm * growth)


def cell_leak_a(v: VehicleSpec, day: float) -> FloatArray:
    """Self-discharge current of each cell, including a soft short. [A]"""
    leak = v.leak_a.copy()
    for f in v.faults:
        if f.kind == "soft_short":
            leak[f.cell] += f.severity * f.growth(day)
    return leak


def pack_resistance_mohm(v: VehicleSpec, s: VehicleState, day: float) -> float:
    """True pack DC (ohmic) resistance at 25 degC, 50 % SoC, with interconnects. [mOhm]"""
    r0, _ = cell_resistance_ohm(v, s, day)
    return float((r0.sum() + v.interconnect_ohm) * 1000.0)


def initial_state(v: VehicleSpec, start_ambient_c: float, rng: np.random.Generator) -> VehicleState:
    """State on the first simulated day, pre-aged by ``v.age_days`` of typical use.

    Pre-ageing applies the closed-form models once with the vehicle's average stressors
    (storage at 65 % SoC, climate mean + 2 degC, its usual daily throughput).
    """
    n = v.n_cells
    zeros = np.zeros(n)
    q_cal, q_cyc, r_cal, r_cyc = zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy()
    if v.age_days > 0:
        days = float(v.age_days)
        temp = v.climate.annual_mean_c + 2.0
        km_day = v.profile.daily_km[v.vclass.name] * v.km_factor
        wh_km = 0.5 * (v.vclass.wh_per_km_city + v.vclass.wh_per_km_highway)
        v_nom = v.n_cells * float(cell_ocv_v(np.array([0.6]), v.chemistry.name)[0])
        thr_ah = 2.0 * km_day * wh_km / v_nom * days
        scal = v.ageing_scalar
        if v.chemistry.name == "nmc":
            v_store = float(cell_ocv_v(np.array([0.65]), "nmc")[0])
            q_ref = thr_ah * bms.SCHMALSTIEG_CELL_AH / v.rated_ah
            a_cap, a_res = bms.schmalstieg_calendar_rates(v_store, temp)
            b_cap, b_res = bms.schmalstieg_cycle_rates(3.75, 0.3)
            q_cal = scal * a_cap * days**0.75
            r_cal = scal * a_res * days**0.75
            q_cyc = scal * b_cap * q_ref**0.5
            r_cyc = scal * b_res * q_ref
        else:
            fec = thr_ah / (2.0 * v.rated_ah)
            k_cal, kr_cal = bms.naumann_calendar_rates(0.65, temp)
            k_cyc, kr_cyc = bms.naumann_cycle_rates(0.3, 0.3)
            q_cal = scal * k_cal * days**0.5
            r_cal = scal * kr_cal * days
            q_cyc = scal * k_cyc * fec**0.5
            r_cyc = scal * kr_cyc * fec
    soc0 = float(rng.uniform(0.5, 0.8))
    state = VehicleState(
        soc=np.clip(soc0 + 0.003 * rng.standard_normal(n), 0.0, 1.0),
        q_cal=np.asarray(q_cal, dtype=np.float64),
        q_cyc=np.asarray(q_cyc, dtype=np.float64),
        r_cal=np.asarray(r_cal, dtype=np.float64),
        r_cyc=np.asarray(r_cyc, dtype=np.float64),
        temp_c=start_ambient_c,
        soc_bms_pct=soc0 * 100.0,
        soh_bms_pct=0.0,
        odometer_km=0.0,
        discharged_ah=0.0,
        throughput_ah=0.0,
        rest_s=6 * 3600.0,
    )
    if v.age_days > 0:
        km_day = v.profile.daily_km[v.vclass.name] * v.km_factor
        state.odometer_km = round(km_day * v.age_days, 1)
        wh_km = 0.5 * (v.vclass.wh_per_km_city + v.vclass.wh_per_km_highway)
        v_nom = v.n_cells * 3.6
        state.discharged_ah = km_day * wh_km / v_nom * v.age_days
        state.throughput_ah = 2.0 * state.discharged_ah
    soh = true_soh_pct(v, state, 0.0)
    state.soh_bms_pct = round(min(soh + v.soh_bias_pct, 100.0), 1)
    return state


def true_soh_pct(v: VehicleSpec, s: VehicleState, day: float) -> float:
    """True SoH: capacity of the weakest cell over the rated capacity. [%]"""
    return float(cell_capacity_ah(v, s, day).min() / v.rated_ah * 100.0)


# --- the day plan --------------------------------------------------------------------


@dataclass
class _Segment:
    mode: int
    t0: float
    t: FloatArray  # sample times, s after local midnight
    dt: FloatArray  # duration each sample's current is held [s]
    current_a: FloatArray  # true current, + into the battery [A]
    soc_start: FloatArray  # cell SoC at t0
    drain_a: FloatArray  # per-cell leak + balancing current during the segment [A]
    odo_km: FloatArray  # odometer at each sample
    full_charge: bool = False  # a charge that reached a target >= 97 %

    @property
    def t1(self) -> float:
        return float(self.t[0] + self.dt.sum()) if len(self.t) else self.t0


class _Planner:
    """Builds a day's segments while tracking every cell's state of charge."""

    def __init__(
        self,
        v: VehicleSpec,
        state: VehicleState,
        ctx: DayContext,
        rng: np.random.Generator,
        cadence_s: int,
        idle_cadence_s: int,
    ) -> None:
        day = ctx.index + 0.5
        self.v = v
        self.rng = rng
        self.ctx = ctx
        self.cadence_s = cadence_s
        self.idle_cadence_s = idle_cadence_s
        self.cap = cell_capacity_ah(v, state, day)
        self.leak = cell_leak_a(v, day)
        self.soc = state.soc.copy()
        self.odo = state.odometer_km
        self.t = 0.0
        self.segments: list[_Segment] = []
        self.carry: ChargeCarry | None = None
        self.km = 0.0
        self.sessions = {AC: 0, DC: 0}
        self.dc_allowed = v.vclass.dc_charge_kw > 0

    @property
    def end(self) -> float:
        return float(self.ctx.length_s)

    def _times(self, t0: float, t1: float, cadence: float) -> tuple[FloatArray, FloatArray]:
        n = max(1, math.ceil((t1 - t0) / cadence - 1e-9))
        t = t0 + np.arange(n, dtype=np.float64) * cadence
        dt = np.diff(np.append(t, t1)).astype(np.float64)
        return t, dt

    def _push(
        self,
        mode: int,
        t: FloatArray,
        dt: FloatArray,
        current: FloatArray,
        odo: FloatArray,
        drain: FloatArray | None = None,
        full: bool = False,
    ) -> None:
        drain_a = self.leak if drain is None else self.leak + drain
        seg = _Segment(mode, float(t[0]), t, dt, current, self.soc.copy(), drain_a, odo, full)
        self.segments.append(seg)
        dur = float(dt.sum())
        self.soc = np.maximum(
            self.soc + (float(np.dot(current, dt)) - drain_a * dur) / 3600.0 / self.cap,
            EMPTY_CELL_SOC[self.v.chemistry.name],
        )
        self.t = float(t[0]) + dur

    def idle(self, until: float) -> None:
        until = min(until, self.end)
        if until - self.t < 1.0:
            return
        t, dt = self._times(self.t, until, self.idle_cadence_s)
        self._push(IDLE, t, dt, np.zeros(len(t)), np.full(len(t), self.odo))

    def pack_ocv_v(self) -> float:
        mean = float(self.soc.mean())
        return self.v.n_cells * float(cell_ocv_v(np.array([mean]), self.v.chemistry.name)[0])

    def drive(self, km: float, city_share: float) -> None:
        """Drive ``km``; stop at the reserve for a DC charge (or end the trip early)."""
        vc = self.v.vclass
        wh_km = city_share * vc.wh_per_km_city + (1 - city_share) * vc.wh_per_km_highway
        while km > 0.05 and self.t < self.end - 60:
            v_pack = self.pack_ocv_v()
            ah_per_km = wh_km / v_pack
            avail_ah = float(np.min((self.soc - self.v.reserve) * self.cap))
            leg = min(km, max(avail_ah, 0.0) / ah_per_km)
            if leg >= 0.5:
                leg = self._drive_leg(leg, city_share, wh_km, v_pack)
                km -= leg
            if km > 0.05:
                if not self.dc_allowed or self.t > self.end - 1800:
                    return
                before = len(self.segments)
                self.charge(DC, vc.dc_charge_kw, 0.8)
                if len(self.segments) == before or self.carry is not None:
                    return

    def _drive_leg(self, km: float, city: float, wh_km: float, v_pack: float) -> float:
        vc = self.v.vclass
        speed = 1.0 / (city / vc.speed_city_kmh + (1 - city) / vc.speed_highway_kmh)
        dur = max(round(km / speed * 3600.0), 60)
        if self.t + dur > self.end:
            dur = int(self.end - self.t)
            km = dur / 3600.0 * speed
            if dur < 60:
                return 0.0
        t, dt = self._times(self.t, self.t + dur, self.cadence_s)
        n = len(t)
        phi = 0.7
        eps = self.rng.standard_normal(n) * math.sqrt(1 - phi**2) / (1 - phi)
        z = relax(eps, np.full(n, phi), float(self.rng.standard_normal()))[:-1]
        m = 1.0 + (0.45 + 0.5 * city) * z
        m[self.rng.random(n) < 0.12 * city] = 0.0  # stopped in traffic
        mean_m = float(np.dot(m, dt)) / dur
        m = m / mean_m if mean_m > 0.3 else np.ones(n)
        p_avg_w = wh_km * km * 3600.0 / dur
        p_w = np.clip(m * p_avg_w, -0.4 * vc.peak_power_kw * 1e3, vc.peak_power_kw * 1e3)
        current = -p_w / v_pack
        odo = self.odo + km * (t - t[0]) / dur
        self._push(DRIVE, t, dt, current, odo)
        self.odo += km
        self.km += km
        return km

    def charge(self, mode: int, power_kw: float, target: float) -> None:
        """Charge until the leading cell reaches ``target`` or the current tapers out."""
        if self.t >= self.end - 1:
            self.carry = ChargeCarry(mode, power_kw, target)
            return
        v = self.v
        need = (target - self.soc) * self.cap
        lead = int(np.argmin(need))
        if need[lead] <= 0.002 * v.rated_ah:
            return
        s0, c_lead = float(self.soc[lead]), float(self.cap[lead])
        v_pack = v.n_cells * (3.7 if v.chemistry.name == "nmc" else 3.3)
        c_max = 1.5 if mode == DC else 0.5
        i_cc = min(power_kw * 1e3 / v_pack, c_max * v.rated_ah)
        s_taper = min(target, 0.75 if mode == DC else 0.95)
        d1 = max(0.0, (s_taper - s0)) * c_lead * 3600.0 / i_cc
        k = i_cc / ((1.0 - s_taper) * c_lead * 3600.0)
        s_from = max(s0, s_taper)
        i_start = i_cc * (1.0 - s_from) / (1.0 - s_taper)
        d2 = 0.0
        if target > s_taper and s_from < target:
            i_term = CHARGE_TERMINATION_C * v.rated_ah
            t_target = math.log((1.0 - s_from) / (1.0 - target)) / k if target < 1 else math.inf
            t_term = math.log(i_start / i_term) / k if i_start > i_term else 0.0
            d2 = min(t_target, t_term)
        dur = max(round(d1 + d2), 60)
        t_end = self.t + dur
        truncated = t_end > self.end
        if truncated:
            t_end = self.end
            self.carry = ChargeCarry(mode, power_kw, target)
        t, dt = self._times(self.t, t_end, self.cadence_s)
        rel = t - t[0]
        current = np.where(rel < d1, i_cc, i_start * np.exp(-k * np.maximum(rel - d1, 0.0)))
        current = current * (1.0 + 0.002 * self.rng.standard_normal(len(t)))
        # Passive balancing while charging: bleed the cells that will end above the
        # lowest one (most BMSs balance on voltage during the charge).
        end_soc = self.soc + float(np.dot(current, dt)) / 3600.0 / self.cap
        bleed = np.where(end_soc - end_soc.min() > 0.001, v.vclass.bleed_a, 0.0)
        full = (not truncated) and target >= 0.97
        self._push(mode, t, dt, current, np.full(len(t), self.odo), bleed, full)
        self.sessions[mode] += 1


def _hour(rng: np.random.Generator, mean_h: float, sigma_h: float) -> float:
    return float(np.clip(mean_h + sigma_h * rng.standard_normal(), 0.5, 23.0)) * 3600.0


def _plan_day(p: _Planner, v: VehicleSpec, state: VehicleState) -> None:
    """The usage of one day: trips, parking, home and fast charging."""
    rng = p.rng
    weekday = p.ctx.local_date.weekday()
    weekend = weekday >= 5
    prof = v.profile
    if state.carry is not None:
        p.charge(state.carry.mode, state.carry.power_kw, state.carry.target)
    km = prof.daily_km[v.vclass.name] * v.km_factor * float(rng.lognormal(0.0, 0.3))
    if weekend:
        km *= prof.weekend_factor
    trips: list[tuple[float, float]] = []  # (departure [s], km)
    if prof.pattern == "commute":
        if not weekend:
            trips = [(_hour(rng, 8.0, 0.5), km / 2), (_hour(rng, 17.75, 0.75), km / 2)]
            if rng.random() < 0.25:
                trips.append((_hour(rng, 20.0, 0.5), 0.15 * km))
        elif rng.random() < 0.6:
            trips = [(_hour(rng, 11.0, 1.5), 0.6 * km), (_hour(rng, 16.5, 1.5), 0.4 * km)]
    elif prof.pattern == "shift":
        if not (weekend and rng.random() < 0.3):
            c = prof.city_share
            speed = 1.0 / (c / v.vclass.speed_city_kmh + (1 - c) / v.vclass.speed_highway_kmh)
            blocks = max(1, math.ceil(km / speed / 1.5))
            t = _hour(rng, 7.0, 0.5)
            for _ in range(blocks):
                trips.append((t, km / blocks))
                t += (km / blocks / speed + float(rng.uniform(0.3, 0.8))) * 3600.0
    elif prof.pattern == "delivery":
        if not (weekend and rng.random() < 0.3):
            n_stops = max(2, int(km / 6.0))
            starts = np.sort(
                np.concatenate(
                    [
                        rng.uniform(9.0, 12.5, n_stops // 2),
                        rng.uniform(15.0, 19.5, n_stops - n_stops // 2),
                    ]
                )
            )
            trips = [(float(h) * 3600.0, km / n_stops) for h in starts]
    elif rng.random() < 0.45:  # occasional
        out = _hour(rng, 11.0, 2.0)
        trips = [(out, km / 2), (out + float(rng.uniform(1.0, 3.0)) * 3600.0, km / 2)]

    for depart, trip_km in trips:
        if depart > p.t:
            p.idle(depart)
        if p.t >= p.end - 600:
            break
        p.drive(trip_km, prof.city_share)

    # Evening: plug in at home (or stop at a fast charger on the way).
    mean_soc = float(p.soc.mean())
    full_day = v.chemistry.name == "lfp" and weekday == v.full_charge_weekday
    need = mean_soc < v.charge_threshold or v.charge_nightly or full_day or rng.random() < 0.05
    if need and p.carry is None and p.t < p.end - 1800:
        target = 1.0 if full_day else v.usual_target
        if v.chemistry.name == "nmc" and rng.random() < 0.1:
            target = 1.0
        if trips and p.dc_allowed and rng.random() < prof.dc_share and not full_day:
            p.charge(DC, v.vclass.dc_charge_kw, 0.8)
            p.drive(3.0, 1.0)
        else:
            arrive = p.t
            start = (
                max(arrive + 600.0, 22 * 3600.0)
                if v.offpeak
                else arrive + float(rng.uniform(0.2, 1.5)) * 3600.0
            )
            p.idle(start)
            if p.t < p.end:
                p.charge(AC, v.vclass.ac_charge_kw, target)
            else:
                p.carry = ChargeCarry(AC, v.vclass.ac_charge_kw, target)
    p.idle(p.end)


# --- one vehicle-day -----------------------------------------------------------------


def _fault_index(v: VehicleSpec, kind: str) -> int | None:
    for i, f in enumerate(v.faults):
        if f.kind == kind:
            return i
    return None


def simulate_day(
    v: VehicleSpec,
    state: VehicleState,
    ctx: DayContext,
    *,
    seed: int,
    cadence_s: int,
    idle_cadence_s: int,
    noise_pool: npt.NDArray[np.float32] | None = None,
) -> DayOutput:
    """Simulate one local day of vehicle ``v``; updates ``state`` in place.

    Returns the day's readings (``seq`` continues from ``state.next_seq``) and its
    ground-truth row.
    """
    rng = np.random.default_rng([seed, 1, v.index, ctx.index])
    day = ctx.index + 0.5
    chem = v.chemistry.name
    r0, r1 = cell_resistance_ohm(v, state, day)
    planner = _Planner(v, state, ctx, rng, cadence_s, idle_cadence_s)
    _plan_day(planner, v, state)
    segs = planner.segments

    t = np.concatenate([s.t for s in segs])
    dt = np.concatenate([s.dt for s in segs])
    cur = np.concatenate([s.current_a for s in segs])
    mode = np.concatenate([np.full(len(s.t), s.mode, dtype=np.int8) for s in segs])
    odo = np.concatenate([s.odo_km for s in segs])
    n, m = len(t), v.n_cells
    cap = planner.cap

    # Cell states of charge, segment by segment (shape n x m).
    f32 = np.float32
    soc = np.empty((n, m), dtype=f32)
    inv_cap = (1.0 / cap).astype(f32)
    row = 0
    for s in segs:
        k = len(s.t)
        q_ah = np.concatenate([[0.0], np.cumsum(s.current_a * s.dt)[:-1]]) / 3600.0
        el_h = (s.t - s.t0) / 3600.0
        block = soc[row : row + k]
        np.multiply(q_ah.astype(f32)[:, None], inv_cap[None, :], out=block)
        block -= el_h.astype(f32)[:, None] * (s.drain_a / cap).astype(f32)[None, :]
        block += s.soc_start.astype(f32)[None, :]
        np.maximum(block, f32(EMPTY_CELL_SOC[chem]), out=block)
        row += k

    # Thermal model: lumped mass, i^2 R heating, passive and active cooling.
    vc = v.vclass
    cool_i = _fault_index(v, "cooling_failure")
    lost = v.faults[cool_i].growth(day) if cool_i is not None else 0.0
    h_p = vc.passive_w_per_k * (1.0 - 0.6 * lost)
    h_a = vc.active_cooling_w_per_k
    doy = ctx.local_date.timetuple().tm_yday
    t_amb = ambient_temp_c(v.climate, doy, t / 3600.0, ctx.weather_c)
    r_pack_25 = float(r0.sum() + r1.sum())
    active = (mode != IDLE) & (h_a > 0)
    # A failing chiller leaves the loop at the drivetrain's temperature, which then
    # heats the pack instead of cooling it.
    t_cool = vc.cooling_setpoint_c + lost * (t_amb + DRIVETRAIN_RISE_C - vc.cooling_setpoint_c)
    temp_for_r = t_amb
    temp = np.empty(n + 1)
    for _ in range(2):
        p_w = cur**2 * (r_pack_25 * bms.resistance_temp_factor(temp_for_r) + v.interconnect_ohm)
        t_eq_passive = t_amb + p_w / h_p
        use = active & ((t_eq_passive > t_cool) | (lost > 0))
        h = h_p + np.where(use, h_a, 0.0)
        t_eq = np.where(use, (h_p * t_amb + h_a * t_cool + p_w) / h, t_eq_passive)
        temp = relax(t_eq, np.exp(-dt * h / vc.thermal_mass_j_per_k), state.temp_c)
        temp_for_r = temp[:-1]
    temp_k = temp[:-1]
    f_t = bms.resistance_temp_factor(temp_k)

    # Polarisation and hysteresis states (shared by the series string).
    x = relax(cur, np.exp(-dt / v.chemistry.tau1_s), state.x_rc)
    hyst = np.zeros(n + 1)
    if v.chemistry.hysteresis_mv > 0:
        a_h = np.exp(-HYSTERESIS_GAMMA * np.abs(cur) * dt / 3600.0 / v.rated_ah)
        hyst = relax(np.sign(cur), a_h, state.hyst)

    # Cell voltages.
    cell_v = cell_ocv_v_f32(soc, chem)
    ohmic = (cur * f_t).astype(f32)[:, None] * r0.astype(f32)[None, :]
    low = soc < 0.15
    if low.any():
        ohmic *= 1.0 + 0.5 * np.where(low, ((0.15 - soc) / 0.15) ** 2, 0.0).astype(f32)
    cell_v += ohmic
    cell_v += (x[:-1] * f_t).astype(f32)[:, None] * r1.astype(f32)[None, :]
    if v.chemistry.hysteresis_mv > 0:
        cell_v += (v.chemistry.hysteresis_mv / 1000.0 * hyst[:-1]).astype(f32)[:, None]
    scaled = cell_v * f32(1000.0)
    scaled += _noise_mv(rng, noise_pool, n * m).reshape(n, m)
    cell_mv = np.rint(scaled).astype(np.int16)
    pack_v = (
        cell_v.sum(axis=1, dtype=np.float64)
        + cur * v.interconnect_ohm
        + 0.05 * rng.standard_normal(n)
    )

    # Temperature sensors and their faults.
    rise = (temp_k - t_amb)[:, None]
    temps = (
        t_amb[:, None]
        + rise * v.sensor_gain[None, :]
        + v.sensor_offset_c[None, :]
        + 0.1 * rng.standard_normal((n, v.n_temps))
    )
    sens_i = _fault_index(v, "temp_sensor")
    if sens_i is not None and ctx.index >= v.faults[sens_i].onset_day:
        f = v.faults[sens_i]
        g = f.growth(day)
        if f.mode == "stuck":
            if state.stuck_temp_c is None:
                state.stuck_temp_c = float(np.round(temps[0, f.sensor], 1))
            temps[:, f.sensor] = state.stuck_temp_c
        elif f.mode == "sentinel":
            hit = rng.random(n) < 0.02 + 0.98 * g
            temps[hit, f.sensor] = SENTINEL_TEMP_C
        else:
            sigma = 1.0 + f.severity * g
            temps[:, f.sensor] += sigma * rng.standard_normal(n)

    # Current sensor and BMS estimates.
    cur_meas = cur + v.current_offset_a + vc.current_noise_a * rng.standard_normal(n)
    c_bms = v.rated_ah * state.soh_bms_pct / 100.0
    soc_bms = np.empty(n)
    level = state.soc_bms_pct
    rest = state.rest_s
    row = 0
    prev_full = False
    for s in segs:
        k = len(s.t)
        if prev_full:
            level = 100.0
        elif s.mode != IDLE and rest >= BMS_REST_RECAL_S and row > 0:
            level = _bms_rest_soc(level, cell_mv[row - 1], chem)
        if s.mode != IDLE:
            rest = 0.0
        q = np.concatenate([[0.0], np.cumsum(cur_meas[row : row + k] * s.dt)]) / 3600.0
        soc_bms[row : row + k] = level + q[:-1] / c_bms * 100.0
        level = float(level + q[-1] / c_bms * 100.0)
        if s.mode == IDLE:
            rest += float(s.dt.sum())
        prev_full = s.full_charge
        row += k
    if prev_full:
        level = 100.0
    soc_bms = np.clip(soc_bms, 0.0, 100.0)
    discharged = (
        state.discharged_ah
        + np.concatenate([[0.0], np.cumsum(np.maximum(-cur_meas, 0.0) * dt)[:-1]]) / 3600.0
    )
    cycles = np.floor(discharged / v.rated_ah).astype(np.int32)
    soh_col = np.full(n, state.soh_bms_pct if vc.sends_soh else np.nan, dtype=np.float32)

    seq = state.next_seq + np.arange(n, dtype=np.int64)
    ts_ms = ctx.start_utc_ms + np.rint(t * 1000.0).astype(np.int64)

    # Hard-limit crossings (contract v1 defaults) for the truth and fault lead times.
    at_rest = np.abs(cur) < v.rated_ah / 20.0
    mx = cell_mv.max(axis=1)
    mn = cell_mv.min(axis=1)
    spread_bad = at_rest & ((mx.astype(np.int32) - mn) > SPREAD_LIMIT_MV)
    volt_bad = (mx > v.chemistry.cell_max_mv) | (mn < v.chemistry.cell_min_mv)
    valid_t = np.where(temps == SENTINEL_TEMP_C, -np.inf, temps)
    hot_bad = valid_t.max(axis=1) > OVER_TEMPERATURE_C
    limit_rows = int(np.count_nonzero(spread_bad | volt_bad | hot_bad))
    _record_fault_limits(v, state, ctx, cell_mv, at_rest, spread_bad, valid_t)

    # Ageing step with today's stressors.
    dt_total = float(dt.sum())
    mean_soc = soc.mean(axis=1, dtype=np.float64)
    thr_ah = float(np.dot(np.abs(cur), dt)) / 3600.0
    dod = float(max(mean_soc.max() - mean_soc.min(), 0.01))
    days = dt_total / 86400.0
    scal = v.ageing_scalar
    abs_i = np.abs(cur)
    if chem == "nmc":
        v_ocv = cell_ocv_v(mean_soc, "nmc")
        a_cap, a_res = bms.schmalstieg_calendar_rates(v_ocv, temp_k)
        a_cap_d = float(np.dot(a_cap, dt)) / dt_total
        a_res_d = float(np.dot(a_res, dt)) / dt_total
        w = abs_i * dt
        v_rms = float(np.sqrt(np.dot(v_ocv**2, w) / w.sum())) if w.sum() > 0 else 3.7
        b_cap, b_res = bms.schmalstieg_cycle_rates(v_rms, dod)
        q_ref = thr_ah * bms.SCHMALSTIEG_CELL_AH / v.rated_ah
        state.q_cal = bms.step_power_law(state.q_cal, a_cap_d * scal, days, 0.75)
        state.r_cal = bms.step_power_law(state.r_cal, a_res_d * scal, days, 0.75)
        state.q_cyc = bms.step_power_law(state.q_cyc, float(b_cap) * scal, q_ref, 0.5)
        state.r_cyc = state.r_cyc + float(b_res) * q_ref * scal
    else:
        k_cap, k_res = bms.naumann_calendar_rates(mean_soc, temp_k)
        k_cap_d = float(np.dot(k_cap, dt)) / dt_total
        k_res_d = float(np.dot(k_res, dt)) / dt_total
        moving = abs_i > 0.01 * v.rated_ah
        c_rate = (
            float(np.dot(abs_i[moving], dt[moving]) / dt[moving].sum()) / v.rated_ah
            if moving.any()
            else 0.0
        )
        fec = thr_ah / (2.0 * v.rated_ah)
        kq_cyc, kr_cyc = bms.naumann_cycle_rates(c_rate, dod)
        state.q_cal = bms.step_power_law(state.q_cal, k_cap_d * scal, days, 0.5)
        state.r_cal = state.r_cal + k_res_d * days * scal
        state.q_cyc = bms.step_power_law(state.q_cyc, float(kq_cyc) * scal, fec, 0.5)
        state.r_cyc = state.r_cyc + float(kr_cyc) * fec * scal

    # Carry the state over to tomorrow.
    state.soc = planner.soc
    state.temp_c = float(temp[-1])
    state.x_rc = float(x[-1])
    state.hyst = float(hyst[-1])
    state.soc_bms_pct = float(np.clip(level, 0.0, 100.0))
    state.odometer_km = planner.odo
    state.discharged_ah = float(discharged[-1] + max(-cur_meas[-1], 0.0) * dt[-1] / 3600.0)
    state.throughput_ah += thr_ah
    state.next_seq += n
    state.carry = planner.carry
    state.rest_s = rest if segs[-1].mode == IDLE else 0.0
    soh_true = true_soh_pct(v, state, day + 0.5)
    if any(s.full_charge for s in segs):
        # The BMS re-learns capacity at full charges, towards the truth plus its bias.
        state.soh_bms_pct = round(
            state.soh_bms_pct + 0.5 * (min(soh_true + v.soh_bias_pct, 100.0) - state.soh_bms_pct),
            1,
        )

    cap_end = cell_capacity_ah(v, state, day + 0.5)
    truth: dict[str, object] = {
        "vin": v.vin,
        "date": ctx.local_date,
        "chemistry": chem,
        "vehicle_class": vc.name,
        "climate": v.climate.name,
        "usage_profile": v.profile.name,
        "rated_capacity_ah": v.rated_ah,
        "capacity_ah": float(cap_end.min()),
        "soh_pct": soh_true,
        "resistance_mohm": pack_resistance_mohm(v, state, day + 0.5),
        "odometer_km": round(planner.odo, 1),
        "km": round(planner.km, 2),
        "throughput_ah": thr_ah,
        "efc": state.throughput_ah / (2.0 * v.rated_ah),
        "weakest_cell": int(cap_end.argmin()),
        "calendar_fade_pct": float(np.mean(state.q_cal) * 100.0),
        "cycle_fade_pct": float(np.mean(state.q_cyc) * 100.0),
        "ambient_mean_c": float(np.dot(t_amb, dt) / dt_total),
        "pack_temp_mean_c": float(np.dot(temp_k, dt) / dt_total),
        "pack_temp_max_c": float(temp.max()),
        "soc_min_pct": float(mean_soc.min() * 100.0),
        "soc_max_pct": float(mean_soc.max() * 100.0),
        "ac_sessions": planner.sessions[AC],
        "dc_sessions": planner.sessions[DC],
        "bms_soh_pct": state.soh_bms_pct,
        "readings": n,
        "limit_readings": limit_rows,
    }
    return DayOutput(
        vin=v.vin,
        seq=seq,
        ts_ms=ts_ms,
        current_a=np.round(cur_meas, 2).astype(np.float32),
        voltage_v=np.round(pack_v, 1).astype(np.float32),
        soc_pct=np.round(soc_bms, 1).astype(np.float32),
        soh_pct=soh_col,
        cycle_count=cycles,
        odometer_km=np.round(odo, 2),
        mode=mode,
        cell_mv=cell_mv,
        temp_c=np.round(temps, 1).astype(np.float32),
        truth=truth,
    )


#: Cell-voltage measurement noise before 1 mV quantisation (assumed). [mV]
CELL_NOISE_MV = 0.7


def noise_pool_mv(seed: int, size: int = 1 << 22) -> npt.NDArray[np.float32]:
    """A pool of cell-voltage noise, drawn once per run (``CELL_NOISE_MV`` sigma). [mV]"""
    rng = np.random.default_rng([seed, 4])
    return rng.standard_normal(size, dtype=np.float32) * np.float32(CELL_NOISE_MV)


def _noise_mv(
    rng: np.random.Generator, pool: npt.NDArray[np.float32] | None, size: int
) -> npt.NDArray[np.float32]:
    """``size`` noise values: a slice of the pool at a random offset (fast), or fresh."""
    if pool is None or size > len(pool):
        return rng.standard_normal(size, dtype=np.float32) * np.float32(CELL_NOISE_MV)
    start = int(rng.integers(0, len(pool) - size + 1))
    return pool[start : start + size]


def _bms_rest_soc(level: float, rested_mv: npt.NDArray[np.int16], chemistry: str) -> float:
    """BMS SoC after a rest: read off the OCV where the curve is steep enough."""
    ocv_v = float(np.mean(rested_mv)) / 1000.0
    soc = float(bms.soc_pct_from_ocv_v(ocv_v, chemistry))
    if chemistry == "lfp" and 10.0 <= soc <= 98.0:
        return level  # flat plateau + hysteresis: OCV says nothing (science.md 6)
    return soc


def _record_fault_limits(
    v: VehicleSpec,
    state: VehicleState,
    ctx: DayContext,
    cell_mv: npt.NDArray[np.int16],
    at_rest: npt.NDArray[np.bool_],
    spread_bad: npt.NDArray[np.bool_],
    temps: FloatArray,
) -> None:
    """Note the first day each active fault crosses a contract hard limit."""
    for i, f in enumerate(v.faults):
        if i in state.limit_dates or ctx.index < f.onset_day:
            continue
        limit = ""
        if f.cell >= 0:
            col = cell_mv[:, f.cell]
            if np.any(col < v.chemistry.cell_min_mv):
                limit = "cell_undervoltage"
            elif np.any(col > v.chemistry.cell_max_mv):
                limit = "cell_overvoltage"
            else:
                ext = (cell_mv.argmin(axis=1) == f.cell) | (cell_mv.argmax(axis=1) == f.cell)
                if np.any(spread_bad & ext):
                    limit = "cell_spread"
        elif f.kind == "cooling_failure":
            if np.any(temps.max(axis=1) > OVER_TEMPERATURE_C):
                limit = "over_temperature"
        elif (
            f.kind == "temp_sensor"
            and f.mode == "erratic"
            and np.any(temps[:, f.sensor] > OVER_TEMPERATURE_C)
        ):
            limit = "over_temperature"
        if limit:
            state.limit_dates[i] = (ctx.local_date, limit)
