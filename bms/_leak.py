r"""A cell's leak, told apart from its capacity by the pairs of rest points that measure both.

Pure functions on arrays (no files, no clock); ``bms._analytics`` feeds them each capacity
pair's cell SoC steps and carries the statistics from day to day.

Why: the pack's capacity is its weakest cell's, read as the mean cell's times each cell's
capacity ratio (``dsoc_mean / dsoc_i`` over the same charge). A cell drained by a soft
short (an internal leak of tens of mA, science.md 3) loses SoC between the two rest
points whatever the current did, so over a discharge its SoC step is larger and its
capacity looks smaller, by the leak times the pair's duration: a few per cent of a
window over the day or two an occasional driver's pairs span. The true capacity of such
a cell is unchanged until it fails, and the pack's SoH is its weakest cell's capacity
(a drained cell is recharged), so the leak must not be read as fade.

The two effects differ in what they scale with: a capacity ratio with the SoC step of
the mean cell (sign included: charges and discharges alike), a leak with the time
between the rest points (always a loss). For cell :math:`i` and pair :math:`k`,

.. math:: \Delta s_{ik} - \bar{\Delta s}_k = a_i\,\bar{\Delta s}_k - \lambda_i\,t_k

with :math:`a_i = 1/r_i - 1` (:math:`r_i` the capacity ratio) and :math:`\lambda_i` the
cell's leak beyond the mean cell's [% SoC/h]. Weighted least squares with exponential
forgetting (the recursive least-squares form, Ljung 1999, *System Identification*,
ch. 11) over the pairs estimates both: its normal equations are five sums per cell,
carried in the state. Charges and drives of a few hours and overnight pairs give the
two regressors different signs and ratios; where they still move together (only charges
of one rate, so the step is proportional to the time) the two cannot be told apart and
``leak_correction`` makes no correction.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "LEAK_FORGETTING",
    "LEAK_MAX_CORRELATION",
    "LEAK_MIN_Z",
    "leak_correction",
    "leak_estimate",
    "update_leak_sums",
]

FloatArray = npt.NDArray[np.float64]

#: Weight of the sums carried into each new pair (memory ~1/(1 - f) = 33 pairs: weeks
#: for a daily driver, as a soft short grows over 40-110 days in the simulator). [-]
LEAK_FORGETTING = 0.97
#: Prior one-sigma of the capacity term a and of the leak (ridge terms, so that the first
#: pairs give an answer): a cell within +-30 % of the mean, a leak within 5 %/day. [-], [%/h]
_PRIOR_SIGMA = (0.3, 0.2)
#: A leak is corrected only when its estimate is this many of its sigmas above zero ...
LEAK_MIN_Z = 3.0
#: ... and the two terms' estimates are correlated by less than this: near-collinear
#: regressors would trade a real capacity fade for a leak. [-]
LEAK_MAX_CORRELATION = 0.8
#: The five sums of the normal equations per cell, in this order.
_N_SUMS = 5


def update_leak_sums(
    sums: FloatArray | None,
    dsoc_pct: npt.ArrayLike,
    dsoc_sigma_pct: npt.ArrayLike,
    duration_h: float,
    *,
    forgetting: float = LEAK_FORGETTING,
) -> FloatArray:
    r"""Add one pair of rest points to each cell's normal equations.

    Parameters
    ----------
    sums : array of shape (n_cells, 5) or None
        The carried sums :math:`\sum w x^2, \sum w x t', \sum w t'^2, \sum w x y,
        \sum w t' y` with :math:`x = \bar{\Delta s}`, :math:`t' = -t`,
        :math:`y = \Delta s_i - \bar{\Delta s}`; None (or another cell count) starts
        afresh.
    dsoc_pct : array
        Each cell's SoC step over the pair. [%]
    dsoc_sigma_pct : array
        Its one-sigma uncertainty (the weight is its inverse square). [%]
    duration_h : float
        Time between the two rest points. [h]
    forgetting : float
        Weight of the old sums. [-]

    Returns
    -------
    array of shape (n_cells, 5)
        The new sums (the input is not modified).
    """
    dsoc = np.asarray(dsoc_pct, dtype=np.float64)
    sigma = np.asarray(dsoc_sigma_pct, dtype=np.float64)
    x = float(np.mean(dsoc))
    t = -float(duration_h)
    y = dsoc - x
    w = 1.0 / np.maximum(sigma, 1e-6) ** 2
    new = np.stack([w * x * x, w * x * t, w * t * t, w * x * y, w * t * y], axis=1)
    if sums is None or sums.shape != new.shape:
        return new
    out: FloatArray = forgetting * sums + new
    return out


def leak_estimate(sums: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Each cell's leak beyond the mean cell's, from ``update_leak_sums``.

    Returns
    -------
    tuple of arrays
        ``(leak, sigma, correlation)``: the leak [% SoC/h] (positive: drains faster than
        the mean cell), its one-sigma uncertainty [% SoC/h], and the correlation of its
        estimate with the capacity term's [-].
    """
    s = np.asarray(sums, dtype=np.float64).reshape(-1, _N_SUMS)
    a11 = s[:, 0] + 1.0 / _PRIOR_SIGMA[0] ** 2
    a12 = s[:, 1]
    a22 = s[:, 2] + 1.0 / _PRIOR_SIGMA[1] ** 2
    det = a11 * a22 - a12 * a12
    # theta = A^-1 b with b = (sum w x y, sum w t' y); the model's coefficient of t' = -t
    # is the leak itself (y = a x + leak * t')
    leak = (a11 * s[:, 4] - a12 * s[:, 3]) / det
    var_leak = a11 / det
    corr = -a12 / np.sqrt(a11 * a22)
    return leak, np.sqrt(var_leak), corr


def leak_correction(
    sums: FloatArray | None, duration_h: float
) -> tuple[FloatArray, FloatArray] | None:
    """SoC each cell lost to its leak over ``duration_h``, where the leak is told apart.

    Returns
    -------
    tuple of arrays or None
        ``(dsoc_pct, sigma_pct)`` to add to each cell's SoC step and to its uncertainty
        (in quadrature): zero for cells without a clear leak (``LEAK_MIN_Z``,
        ``LEAK_MAX_CORRELATION``); None without sums. [%]
    """
    if sums is None:
        return None
    leak, sigma, corr = leak_estimate(sums)
    clear = (leak > LEAK_MIN_Z * sigma) & (np.abs(corr) < LEAK_MAX_CORRELATION)
    dt = max(float(duration_h), 0.0)
    return np.where(clear, leak * dt, 0.0), np.where(clear, sigma * dt, 0.0)
