"""Open-circuit voltage against state of charge, per chemistry.

Tables at about 25 degC, every 5 % SoC (``shared/science.md`` section 1):

- ``nmc``: NMC811/graphite-SiOx, derived from the LG M50 electrode OCP fits of
  Chen et al. 2020, J. Electrochem. Soc. 167, 080534 (full cell = U_pos - U_neg).
- ``lfp``: LFP/graphite pseudo-OCV of the Sony/Murata US26650FTC1 measured at TUM
  (Naumann, PhD thesis, TU Munich 2018).

Between points the curve is linear. The LFP plateau is almost flat (about 0.5 mV per %
SoC between 45 and 65 %) so ``soc_pct_from_ocv_v`` is only trustworthy near its ends;
``ocv_slope_mv_per_pct`` lets callers judge that.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_SOC_PCT = np.arange(0.0, 100.1, 5.0)

#: OCV [V] at 0, 5, ..., 100 % SoC for each chemistry key.
OCV_TABLES_V: dict[str, npt.NDArray[np.float64]] = {
    "nmc": np.array(
        [
            2.498,
            3.073,
            3.258,
            3.396,
            3.449,
            3.494,
            3.548,
            3.597,
            3.634,
            3.668,
            3.708,
            3.757,
            3.809,
            3.862,
            3.924,
            3.971,
            4.022,
            4.070,
            4.094,
            4.116,
            4.193,
        ]
    ),
    "lfp": np.array(
        [
            2.286,
            3.065,
            3.197,
            3.212,
            3.234,
            3.255,
            3.270,
            3.283,
            3.292,
            3.297,
            3.299,
            3.301,
            3.303,
            3.306,
            3.311,
            3.319,
            3.334,
            3.340,
            3.342,
            3.345,
            3.530,
        ]
    ),
}
CHEMISTRIES = tuple(OCV_TABLES_V)


def _table(chemistry: str) -> npt.NDArray[np.float64]:
    try:
        return OCV_TABLES_V[chemistry]
    except KeyError:
        valid = ", ".join(CHEMISTRIES)
        raise ValueError(f"unknown chemistry {chemistry!r}; valid: {valid}") from None


def ocv_v_from_soc_pct(soc_pct: npt.ArrayLike, chemistry: str) -> npt.NDArray[np.float64]:
    """Cell open-circuit voltage at a state of charge.

    Parameters
    ----------
    soc_pct : float or array
        State of charge, clipped to 0..100. [%]
    chemistry : str
        Key of ``OCV_TABLES_V`` (``'nmc'`` or ``'lfp'``).

    Returns
    -------
    numpy.ndarray
        Open-circuit voltage. [V]
    """
    return np.interp(
        np.clip(np.asarray(soc_pct, dtype=np.float64), 0, 100), _SOC_PCT, _table(chemistry)
    )


def soc_pct_from_ocv_v(ocv_v: npt.ArrayLike, chemistry: str) -> npt.NDArray[np.float64]:
    """State of charge read off the OCV curve (inverse of ``ocv_v_from_soc_pct``).

    Parameters
    ----------
    ocv_v : float or array
        Rested cell voltage. [V]
    chemistry : str
        Key of ``OCV_TABLES_V``.

    Returns
    -------
    numpy.ndarray
        State of charge, 0..100 (clipped at the table ends). [%]
    """
    out: npt.NDArray[np.float64] = np.interp(
        np.asarray(ocv_v, dtype=np.float64), _table(chemistry), _SOC_PCT
    )
    return out


def ocv_slope_mv_per_pct(soc_pct: npt.ArrayLike, chemistry: str) -> npt.NDArray[np.float64]:
    """Local slope of the OCV curve, dOCV/dSoC. [mV/%]

    A small slope means a small voltage error moves the SoC read-out a lot: at 0.5 mV/%
    (LFP plateau) a 10 mV hysteresis is 20 % SoC.
    """
    table = _table(chemistry)
    slopes = np.diff(table) * 1000.0 / 5.0
    idx = np.clip((np.asarray(soc_pct, dtype=np.float64) // 5).astype(int), 0, len(slopes) - 1)
    out: npt.NDArray[np.float64] = slopes[idx]
    return out
