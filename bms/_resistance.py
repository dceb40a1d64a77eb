"""Internal resistance from voltage steps over current steps, normalised to 25 degC.

Pure functions. The runner (``bms._analytics``) picks the steps: two consecutive
readings, the first at rest and the second under load (start of a drive or a charge),
so the delay is the reading interval and the SoC window is where the step happened.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: Molar gas constant [J/(mol K)].
GAS_CONSTANT_J_PER_MOL_K = 8.314462618
#: Activation energy of the DC resistance [J/mol]: 16-18 kJ/mol derived from the Sony
#: LFP resistance table at 10/25/40 degC (science.md section 3, x1.4 from 25 to 10 degC).
RESISTANCE_ACTIVATION_J_PER_MOL = 17_000.0


def resistance_mohm_from_step(delta_v: npt.ArrayLike, delta_a: npt.ArrayLike) -> FloatArray:
    r"""DC resistance from a voltage step over a current step.

    Parameters
    ----------
    delta_v : float or array
        Terminal voltage after the step minus before. [V]
    delta_a : float or array
        Current after minus before, positive into the battery. [A]

    Returns
    -------
    numpy.ndarray
        Resistance; NaN where the current did not change. [mOhm]

    Notes
    -----
    :math:`R = \Delta V / \Delta I` read at a fixed delay after the step (science.md 3);
    with the VSS sign (charging positive) both steps share a sign, so R > 0.
    """
    dv = np.asarray(delta_v, dtype=np.float64)
    di = np.asarray(delta_a, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out: FloatArray = np.where(di != 0, 1000.0 * dv / di, np.nan)
    return out


def resistance_temp_factor(
    temp_c: npt.ArrayLike,
    reference_temp_c: float = 25.0,
    activation_j_per_mol: float = RESISTANCE_ACTIVATION_J_PER_MOL,
) -> FloatArray:
    r"""Ratio R(T) / R(T_ref) of an Arrhenius-activated resistance.

    Parameters
    ----------
    temp_c : float or array
        Cell temperature during the step. [degC]
    reference_temp_c : float
        Reference temperature. [degC]
    activation_j_per_mol : float
        Activation energy. [J/mol]

    Returns
    -------
    numpy.ndarray
        Factor, > 1 below the reference temperature. [-]

    Notes
    -----
    :math:`R(T)/R(T_{ref}) = \exp\left(\frac{E_a}{R_g}\left(\frac{1}{T}
    - \frac{1}{T_{ref}}\right)\right)`; with 17 kJ/mol this is 1.44 at 10 degC, in line
    with the x1.4-1.45 of the Sony LFP table (science.md 3).
    """
    t_k = np.asarray(temp_c, dtype=np.float64) + 273.15
    t_ref_k = reference_temp_c + 273.15
    out: FloatArray = np.exp(
        activation_j_per_mol / GAS_CONSTANT_J_PER_MOL_K * (1 / t_k - 1 / t_ref_k)
    )
    return out


def resistance_mohm_at_reference(
    resistance_mohm: npt.ArrayLike,
    temp_c: npt.ArrayLike,
    reference_temp_c: float = 25.0,
    activation_j_per_mol: float = RESISTANCE_ACTIVATION_J_PER_MOL,
) -> FloatArray:
    """Resistance measured at ``temp_c`` expressed at the reference temperature.

    Parameters
    ----------
    resistance_mohm : float or array
        Measured resistance. [mOhm]
    temp_c : float or array
        Temperature of the measurement. [degC]
    reference_temp_c : float
        Reference temperature. [degC]
    activation_j_per_mol : float
        Activation energy (``resistance_temp_factor``). [J/mol]

    Returns
    -------
    numpy.ndarray
        Resistance at the reference temperature. [mOhm]
    """
    factor = resistance_temp_factor(temp_c, reference_temp_c, activation_j_per_mol)
    out: FloatArray = np.asarray(resistance_mohm, dtype=np.float64) / factor
    return out
