"""Vectorised building blocks of the vehicle model: first-order lags, OCV, climate.

All functions are pure and work on whole arrays of one vehicle-day.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

import bms
from sim._presets import Climate

FloatArray = npt.NDArray[np.float64]

_MAX_DECAY_PER_BLOCK = 400.0  # e-folds; keeps exp() of the block well inside float64


def relax(u: FloatArray, a: FloatArray, x0: float) -> FloatArray:
    r"""Run the first-order recursion :math:`x_{k+1} = a_k x_k + (1 - a_k) u_k`.

    The closed form :math:`x_k = P_k (x_0 + \sum_{i<k} (1-a_i) u_i / P_{i+1})` with
    :math:`P_k = \prod_{i<k} a_i` is evaluated with cumulative sums, in blocks so that
    :math:`1/P` never overflows.

    Parameters
    ----------
    u : array, shape (n,)
        Input (target value) held over each step.
    a : array, shape (n,)
        Retention factor of each step, 0 < a <= 1 (``exp(-dt/tau)``).
    x0 : float
        State before the first step.

    Returns
    -------
    numpy.ndarray, shape (n + 1,)
        State before each step and, last, after the final step.
    """
    n = len(u)
    out = np.empty(n + 1)
    out[0] = x0
    if n == 0:
        return out
    decay = -np.log(np.clip(a, 1e-150, 1.0))
    cum = np.concatenate([[0.0], np.cumsum(decay)])
    start = 0
    while start < n:
        end = int(np.searchsorted(cum, cum[start] + _MAX_DECAY_PER_BLOCK, side="right")) - 1
        end = min(max(end, start + 1), n)
        c = cum[start : end + 1] - cum[start]
        w = (1.0 - a[start:end]) * u[start:end] * np.exp(c[1:])
        s = np.concatenate([[0.0], np.cumsum(w)])
        out[start : end + 1] = np.exp(-c) * (out[start] + s)
        start = end
    return out


#: Slope of the OCV curves below 0 % SoC, continuing the 0-5 % segment. [V per unit SoC]
_BELOW_EMPTY_SLOPE_V = {
    name: float(table[1] - table[0]) * 20.0 for name, table in bms.OCV_TABLES_V.items()
}
#: State of charge at which that slope reaches 0 V: a cell a short has drained this far
#: has nothing left to give (NMC -0.22, LFP -0.15). Unbounded, a year's leak took a cell
#: to -460 %, -32 V, wrapped to +32 V in the int16 cell voltages. [-]
EMPTY_CELL_SOC = {
    name: -float(table[0]) / _BELOW_EMPTY_SLOPE_V[name] for name, table in bms.OCV_TABLES_V.items()
}


def cell_ocv_v(soc_frac: npt.NDArray[np.floating], chemistry: str) -> FloatArray:
    """Open-circuit voltage of cells at state of charge ``soc_frac`` (0..1). [V]

    ``bms.ocv_v_from_soc_pct`` inside 0..100 %; below 0 % (an over-discharged cell, e.g.
    drained by a soft short) the 0-5 % slope continues, so the voltage keeps falling.
    """
    soc = np.asarray(soc_frac, dtype=np.float64)
    v = bms.ocv_v_from_soc_pct(soc * 100.0, chemistry)
    return np.asarray(v + np.minimum(soc, 0.0) * _BELOW_EMPTY_SLOPE_V[chemistry])


_OCV_F32 = {name: table.astype(np.float32) for name, table in bms.OCV_TABLES_V.items()}
_SLOPE_F32 = {name: np.diff(table) for name, table in _OCV_F32.items()}
_STEPS = len(next(iter(_OCV_F32.values()))) - 1  # 20 steps of 5 % SoC


def cell_ocv_v_f32(soc_frac: npt.NDArray[np.float32], chemistry: str) -> npt.NDArray[np.float32]:
    """``cell_ocv_v`` for large float32 arrays (readings x cells): same curve, faster.

    The tables are on a uniform 5 % grid, so the segment index is computed instead of
    searched; the result equals ``bms.ocv_v_from_soc_pct`` to float32 precision.
    """
    table, slope = _OCV_F32[chemistry], _SLOPE_F32[chemistry]
    x = soc_frac * np.float32(_STEPS)
    np.clip(x, 0.0, np.float32(_STEPS) - np.float32(1e-4), out=x)
    i = x.astype(np.int32)
    x -= i
    v = table[i]
    v += x * slope[i]
    below = soc_frac < 0
    if below.any():
        v += np.where(below, soc_frac, 0.0).astype(np.float32) * np.float32(
            _BELOW_EMPTY_SLOPE_V[chemistry]
        )
    return v


def weather_offsets_c(climate: Climate, seed: int, first_ordinal: int, n_days: int) -> FloatArray:
    """Day-to-day weather deviation of a city, ~3 day memory. [degC]

    A moving average of daily shocks drawn per calendar day (``date.toordinal()``), so
    a date has the same weather whatever the run's start.
    """
    memory = 12
    weights = np.exp(-np.arange(memory) / 3.0)
    weights *= climate.weather_sigma_c / np.sqrt(np.sum(weights**2))
    city = sum(climate.name.encode())
    eps = np.array(
        [
            np.random.default_rng([seed, 2, city, o]).standard_normal()
            for o in range(first_ordinal - memory + 1, first_ordinal + n_days)
        ]
    )
    return np.asarray(np.convolve(eps, weights, mode="valid"), dtype=np.float64)


def ambient_temp_c(
    climate: Climate, day_of_year: int, hour_local: FloatArray, weather_c: float
) -> FloatArray:
    """Ambient temperature at local hours of one day (see ``Climate``). [degC]"""
    seasonal = climate.seasonal_amp_c * np.cos(2 * np.pi * (day_of_year - climate.peak_doy) / 365)
    diurnal = climate.diurnal_amp_c * np.cos(2 * np.pi * (hour_local - 15.0) / 24.0)
    return np.asarray(climate.annual_mean_c + seasonal + weather_c + diurnal)
