r"""Semi-empirical ageing models: capacity fade and resistance growth of Li-ion cells.

Pure functions of stressors (time, temperature, state of charge or storage voltage,
charge throughput, depth of discharge, C-rate); no files, clock or randomness. Each model
returns a *relative* change (fraction of the fresh value) so it can be applied to cells
of any size. Sources and sanity figures: ``shared/science.md`` section 2.

- NMC/graphite: Schmalstieg et al. 2014 [1]_, calendar :math:`\propto t^{0.75}`, cycle
  capacity :math:`\propto \sqrt{Q}`, cycle resistance :math:`\propto Q`.
- LFP/graphite: Naumann et al. 2018 (calendar) [2]_ :math:`\propto \sqrt{t}` and 2020
  (cycle) [3]_ :math:`\propto \sqrt{FEC}`; resistance linear in time and in FEC.

Stressors change from day to day. ``step_power_law`` advances a power-law state under a
new rate with the *equivalent-time* rule: the state is mapped to the time the new rate
would have needed to reach it, then advanced by the step (the state-equation form used by
NREL BLAST-Lite [4]_). For a constant rate it reproduces the closed form exactly.

References
----------
.. [1] J. Schmalstieg, S. Käbitz, M. Ecker, D. U. Sauer, "A holistic aging model for
   Li(NiMnCo)O2 based 18650 lithium-ion batteries", J. Power Sources 257, 325-334, 2014,
   doi:10.1016/j.jpowsour.2014.02.012.
.. [2] M. Naumann, M. Schimpe, P. Keil, H. C. Hesse, A. Jossen, "Analysis and modeling
   of calendar aging of a commercial LiFePO4/graphite cell", J. Energy Storage 17,
   153-169, 2018, doi:10.1016/j.est.2018.01.019.
.. [3] M. Naumann, F. B. Spingler, A. Jossen, "Analysis and modeling of cycle aging of a
   commercial LiFePO4/graphite cell", J. Power Sources 451, 227666, 2020,
   doi:10.1016/j.jpowsour.2019.227666.
.. [4] P. Gasper, K. Smith et al., NREL BLAST-Lite (Battery Lifetime Analysis and
   Simulation Toolsuite), NREL SWR-22-69, github.com/NREL/BLAST-Lite.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: Molar gas constant. [J/(mol K)]
GAS_CONSTANT_J_PER_MOL_K = 8.314462618
#: 0 degC in kelvin. [K]
ZERO_C_K = 273.15
#: Reference temperature of the Naumann models and of resistance normalisation. [K]
T_REF_K = 298.15
#: Capacity of the Sanyo UR18650E cell of the Schmalstieg model, for scaling throughput. [Ah]
SCHMALSTIEG_CELL_AH = 2.05
#: Activation energy of DC resistance against temperature, from the Sony LFP table in
#: simses-lite (x1.4-1.45 from 25 to 10 degC, science.md section 3; derived). [J/mol]
RESISTANCE_EA_J_PER_MOL = 17_000.0


def _arr(x: npt.ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def _kelvin(temp_c: npt.ArrayLike) -> FloatArray:
    return _arr(temp_c) + ZERO_C_K


def arrhenius_factor(temp_c: npt.ArrayLike, ea_j_per_mol: float) -> FloatArray:
    r"""Arrhenius acceleration relative to 25 degC.

    Parameters
    ----------
    temp_c : float or array
        Temperature. [degC]
    ea_j_per_mol : float
        Activation energy. [J/mol]

    Returns
    -------
    numpy.ndarray
        :math:`\exp(-E_a/R \cdot (1/T - 1/T_{ref}))`, 1 at 25 degC. [-]
    """
    return np.exp(
        -ea_j_per_mol / GAS_CONSTANT_J_PER_MOL_K * (1.0 / _kelvin(temp_c) - 1.0 / T_REF_K)
    )


def resistance_temp_factor(temp_c: npt.ArrayLike) -> FloatArray:
    r"""DC resistance at ``temp_c`` relative to its value at 25 degC.

    Parameters
    ----------
    temp_c : float or array
        Cell temperature. [degC]

    Returns
    -------
    numpy.ndarray
        :math:`R(T)/R(25\,^\circ C) = \exp(E_a/R \cdot (1/T - 1/T_{ref}))` with
        :math:`E_a` = 17 kJ/mol: x1.44 at 10 degC, x0.75 at 40 degC. [-]

    Notes
    -----
    Fitted (derived) to the Sony US26650 LFP discharge resistance at 10/25/40 degC
    (69.4/47.8/38.4 mOhm) in simses-lite, ``shared/science.md`` section 3. Below 0 degC
    real cells rise faster; this is not modelled.
    """
    return 1.0 / arrhenius_factor(temp_c, RESISTANCE_EA_J_PER_MOL)


def step_power_law(
    loss: npt.ArrayLike, rate: npt.ArrayLike, step: npt.ArrayLike, exponent: float
) -> FloatArray:
    r"""Advance a power-law degradation state :math:`x = k \cdot s^z` by one step.

    Parameters
    ----------
    loss : float or array
        Current state (e.g. relative capacity loss). [-]
    rate : float or array
        Rate :math:`k` under this step's stressors, in units of ``loss`` per
        ``step`` unit to the power ``exponent``. Negative rates are treated as 0.
    step : float or array
        Size of the step in the model's driver (days, Ah, FEC...). [driver unit]
    exponent : float
        Power :math:`z` (0.75 for Schmalstieg calendar, 0.5 for square-root laws).

    Returns
    -------
    numpy.ndarray
        :math:`k\,((x/k)^{1/z} + \Delta s)^z`: the state after the step. Never below
        ``loss`` (degradation does not heal).

    Notes
    -----
    Equivalent-time (or equivalent-throughput) rule, as in the BLAST-Lite state
    equations [4]_. With a constant rate over several steps the result equals the closed
    form :math:`k\,(\sum \Delta s)^z`.
    """
    x = _arr(loss)
    k = np.maximum(_arr(rate), 0.0)
    ds = np.maximum(_arr(step), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        s_eq = np.where(
            k > 0, (np.maximum(x, 0.0) / np.where(k > 0, k, 1.0)) ** (1.0 / exponent), 0
        )
    out = np.where(k > 0, k * (s_eq + ds) ** exponent, x)
    return np.asarray(np.maximum(out, x), dtype=np.float64)


# --- NMC: Schmalstieg et al. 2014 ---------------------------------------------------


def schmalstieg_calendar_rates(
    voltage_v: npt.ArrayLike, temp_c: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    r"""Calendar ageing rates of the Schmalstieg NMC model.

    Parameters
    ----------
    voltage_v : float or array
        Storage (open-circuit) cell voltage. [V]
    temp_c : float or array
        Cell temperature. [degC]

    Returns
    -------
    alpha_cap, alpha_res : numpy.ndarray
        Capacity-loss and resistance-growth rates, relative per day^0.75. [1/d^0.75]

    Notes
    -----
    :math:`\alpha_{cap} = (7.543 V - 23.75)\cdot 10^6 \exp(-6976/T)` and
    :math:`\alpha_{res} = (5.270 V - 16.32)\cdot 10^5 \exp(-5986/T)`, T in K [1]_
    (parameters as replicated in BLAST-Lite ``nmc111_gr_Sanyo2Ah_2014``). Below about
    3.15 V (capacity) and 3.10 V (resistance) the linear voltage terms turn negative;
    they are clipped at zero.
    """
    v = _arr(voltage_v)
    t_k = _kelvin(temp_c)
    alpha_cap = np.maximum(7.543 * v - 23.75, 0.0) * 1e6 * np.exp(-6976.0 / t_k)
    alpha_res = np.maximum(5.270 * v - 16.32, 0.0) * 1e5 * np.exp(-5986.0 / t_k)
    return alpha_cap, alpha_res


def schmalstieg_cycle_rates(
    rms_voltage_v: npt.ArrayLike, dod_frac: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    r"""Cycle ageing rates of the Schmalstieg NMC model.

    Parameters
    ----------
    rms_voltage_v : float or array
        Root-mean-square cell voltage while cycling, :math:`\bar V`. [V]
    dod_frac : float or array
        Depth of discharge of the cycles, 0..1. [-]

    Returns
    -------
    beta_cap : numpy.ndarray
        Capacity loss per square root of charge throughput of the 2.05 Ah test cell.
        [1/Ah^0.5]
    beta_res : numpy.ndarray
        Resistance growth per Ah of throughput of the test cell (clipped at >= 0). [1/Ah]

    Notes
    -----
    :math:`\beta_{cap} = 7.348\cdot10^{-3}(\bar V - 3.667)^2 + 7.60\cdot10^{-4} +
    4.081\cdot10^{-3}\,DOD`, :math:`\beta_{res} = 2.153\cdot10^{-4}(\bar V - 3.725)^2
    - 1.521\cdot10^{-5} + 2.798\cdot10^{-4}\,DOD` [1]_. No temperature or C-rate term
    (fitted at 35 degC, 1C).
    """
    v = _arr(rms_voltage_v)
    dod = _arr(dod_frac)
    beta_cap = 7.348e-3 * (v - 3.667) ** 2 + 7.60e-4 + 4.081e-3 * dod
    beta_res = np.maximum(2.153e-4 * (v - 3.725) ** 2 - 1.521e-5 + 2.798e-4 * dod, 0.0)
    return beta_cap, beta_res


def schmalstieg_capacity_fade_frac(
    days: npt.ArrayLike,
    voltage_v: npt.ArrayLike,
    temp_c: npt.ArrayLike,
    throughput_ah: npt.ArrayLike = 0.0,
    rms_voltage_v: npt.ArrayLike = 3.7,
    dod_frac: npt.ArrayLike = 0.5,
) -> FloatArray:
    r"""Relative capacity loss of an NMC cell under constant stressors (Schmalstieg).

    Parameters
    ----------
    days : float or array
        Time since the cell was new. [d]
    voltage_v : float or array
        Storage cell voltage. [V]
    temp_c : float or array
        Cell temperature. [degC]
    throughput_ah : float or array, optional
        Charge throughput scaled to the 2.05 Ah test cell (charge + discharge). [Ah]
    rms_voltage_v, dod_frac : float or array, optional
        Cycling RMS voltage [V] and depth of discharge [-].

    Returns
    -------
    numpy.ndarray
        :math:`1 - C/C_0 = \alpha_{cap} t^{0.75} + \beta_{cap} Q^{0.5}` [1]_. [-]

    Examples
    --------
    3.8 V, 25 degC, one year of storage: about 0.028 (science.md sanity figure).
    """
    alpha_cap, _ = schmalstieg_calendar_rates(voltage_v, temp_c)
    beta_cap, _ = schmalstieg_cycle_rates(rms_voltage_v, dod_frac)
    return np.asarray(
        alpha_cap * np.maximum(_arr(days), 0.0) ** 0.75
        + beta_cap * np.maximum(_arr(throughput_ah), 0.0) ** 0.5,
        dtype=np.float64,
    )


def schmalstieg_resistance_growth_frac(
    days: npt.ArrayLike,
    voltage_v: npt.ArrayLike,
    temp_c: npt.ArrayLike,
    throughput_ah: npt.ArrayLike = 0.0,
    rms_voltage_v: npt.ArrayLike = 3.7,
    dod_frac: npt.ArrayLike = 0.5,
) -> FloatArray:
    r"""Relative resistance growth of an NMC cell under constant stressors (Schmalstieg).

    Returns
    -------
    numpy.ndarray
        :math:`R/R_0 - 1 = \alpha_{res} t^{0.75} + \beta_{res} Q` [1]_, same inputs as
        ``schmalstieg_capacity_fade_frac``. [-]
    """
    _, alpha_res = schmalstieg_calendar_rates(voltage_v, temp_c)
    _, beta_res = schmalstieg_cycle_rates(rms_voltage_v, dod_frac)
    return np.asarray(
        alpha_res * np.maximum(_arr(days), 0.0) ** 0.75
        + beta_res * np.maximum(_arr(throughput_ah), 0.0),
        dtype=np.float64,
    )


# --- LFP: Naumann et al. 2018 (calendar) and 2020 (cycle) ----------------------------

_NAUMANN_CAL_Q_KREF = 1.2571e-5  # 1/s^0.5
_NAUMANN_CAL_Q_EA = 17_126.0  # J/mol
_NAUMANN_CAL_R_KREF = 3.4194e-10  # 1/s
_NAUMANN_CAL_R_EA = 71_827.0  # J/mol
_SECONDS_PER_DAY = 86_400.0


def naumann_calendar_rates(
    soc_frac: npt.ArrayLike, temp_c: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    r"""Calendar ageing rates of the Naumann 2018 LFP model, per day.

    Parameters
    ----------
    soc_frac : float or array
        Storage state of charge, 0..1. [-]
    temp_c : float or array
        Cell temperature. [degC]

    Returns
    -------
    k_cap : numpy.ndarray
        Capacity-loss rate, relative per square root of a day. [1/d^0.5]
    k_res : numpy.ndarray
        Resistance-growth rate, relative per day (clipped at >= 0). [1/d]

    Notes
    -----
    Capacity: :math:`k = k_{ref} e^{-E_a/R(1/T - 1/T_{ref})}(2.8575 (SoC-0.5)^3 +
    0.60225)`, :math:`k_{ref}` = 1.2571e-5 s^-0.5, E_a = 17,126 J/mol [2]_ (simses-lite
    ``sony_lfp_calendar``). Resistance: :math:`k_{ref}` = 3.4194e-10 s^-1, E_a = 71,827
    J/mol, SoC term :math:`-3.3903 (SoC-0.5)^3 + 1.5604` (cubic, as BLAST-Lite
    ``lfp_gr_SonyMurata3Ah_2018``; simses-lite has a quadratic variant).
    """
    soc = _arr(soc_frac)
    k_q = (
        _NAUMANN_CAL_Q_KREF
        * arrhenius_factor(temp_c, _NAUMANN_CAL_Q_EA)
        * (2.8575 * (soc - 0.5) ** 3 + 0.60225)
    )
    k_r = (
        _NAUMANN_CAL_R_KREF
        * arrhenius_factor(temp_c, _NAUMANN_CAL_R_EA)
        * (-3.3903 * (soc - 0.5) ** 3 + 1.5604)
    )
    return (
        np.asarray(np.maximum(k_q, 0.0) * _SECONDS_PER_DAY**0.5, dtype=np.float64),
        np.asarray(np.maximum(k_r, 0.0) * _SECONDS_PER_DAY, dtype=np.float64),
    )


def naumann_cycle_rates(
    c_rate: npt.ArrayLike, dod_frac: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    r"""Cycle ageing rates of the Naumann 2020 LFP model.

    Parameters
    ----------
    c_rate : float or array
        Mean absolute C-rate while cycling. [1/h]
    dod_frac : float or array
        Depth of discharge, 0..1. [-]

    Returns
    -------
    k_cap : numpy.ndarray
        Capacity loss per square root of full equivalent cycles. [1/FEC^0.5]
    k_res : numpy.ndarray
        Resistance growth per full equivalent cycle (clipped at >= 0). [1/FEC]

    Notes
    -----
    In percent [3]_ (simses-lite ``sony_lfp_cyclic``, BLAST-Lite):
    :math:`Q_{loss} = (0.0630 C + 0.0971)(4.0253 (DOD-0.6)^3 + 1.0923)\sqrt{FEC}` and
    :math:`R_{inc} = (-0.0020 C + 0.0021)(6.8477 (DOD-0.5)^3 + 0.91882)\,FEC`; divided by
    100 here. No temperature term (cycled at 25 and 45 degC only).
    """
    c = _arr(c_rate)
    dod = _arr(dod_frac)
    k_q = (0.0630 * c + 0.0971) * (4.0253 * (dod - 0.6) ** 3 + 1.0923) / 100.0
    k_r = (-0.0020 * c + 0.0021) * (6.8477 * (dod - 0.5) ** 3 + 0.91882) / 100.0
    return (
        np.asarray(np.maximum(k_q, 0.0), dtype=np.float64),
        np.asarray(np.maximum(k_r, 0.0), dtype=np.float64),
    )


def naumann_capacity_loss_frac(
    days: npt.ArrayLike,
    soc_frac: npt.ArrayLike,
    temp_c: npt.ArrayLike,
    fec: npt.ArrayLike = 0.0,
    c_rate: npt.ArrayLike = 0.5,
    dod_frac: npt.ArrayLike = 0.6,
) -> FloatArray:
    r"""Relative capacity loss of an LFP cell under constant stressors (Naumann).

    Parameters
    ----------
    days : float or array
        Time since the cell was new. [d]
    soc_frac : float or array
        Storage state of charge, 0..1. [-]
    temp_c : float or array
        Cell temperature. [degC]
    fec : float or array, optional
        Full equivalent cycles. [-]
    c_rate, dod_frac : float or array, optional
        Cycling C-rate [1/h] and depth of discharge [-].

    Returns
    -------
    numpy.ndarray
        Calendar [2]_ plus cycle [3]_ loss, :math:`k_{cal}\sqrt{t} +
        k_{cyc}\sqrt{FEC}`. [-]

    Examples
    --------
    25 degC, 50 % SoC, one year of storage: about 0.043 (science.md sanity figure).
    """
    k_cal, _ = naumann_calendar_rates(soc_frac, temp_c)
    k_cyc, _ = naumann_cycle_rates(c_rate, dod_frac)
    return np.asarray(
        k_cal * np.maximum(_arr(days), 0.0) ** 0.5 + k_cyc * np.maximum(_arr(fec), 0.0) ** 0.5,
        dtype=np.float64,
    )


def naumann_resistance_growth_frac(
    days: npt.ArrayLike,
    soc_frac: npt.ArrayLike,
    temp_c: npt.ArrayLike,
    fec: npt.ArrayLike = 0.0,
    c_rate: npt.ArrayLike = 0.5,
    dod_frac: npt.ArrayLike = 0.6,
) -> FloatArray:
    r"""Relative resistance growth of an LFP cell under constant stressors (Naumann).

    Returns
    -------
    numpy.ndarray
        :math:`R/R_0 - 1 = k_{cal} t + k_{cyc} FEC` [2]_ [3]_, same inputs as
        ``naumann_capacity_loss_frac``. [-]
    """
    _, k_cal = naumann_calendar_rates(soc_frac, temp_c)
    _, k_cyc = naumann_cycle_rates(c_rate, dod_frac)
    return np.asarray(
        k_cal * np.maximum(_arr(days), 0.0) + k_cyc * np.maximum(_arr(fec), 0.0),
        dtype=np.float64,
    )
