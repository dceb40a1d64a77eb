r"""Open-circuit voltage from a rest too short to have relaxed: the relaxation extrapolated.

Pure functions on arrays (no files, no clock); ``bms._analytics`` gives them the voltage
readings of a rest and turns the result into a SoC point like any other rest's.

Why: a rest is trusted as an OCV reading after 3 h (science.md 6.2), but some vehicles
only ever rest that long at one SoC (an occasional driver kept plugged in at full, whose
trips stop for an hour or two between legs), so no window between two SoC points ever
opens and their capacity is never measured. At zero current the equivalent circuit's
polarisation branch decays as a first-order lag (Plett 2015, *Battery Management Systems
Vol. I*, ch. 2), so a rest's terminal voltage is

.. math:: v(t) = u + a\,e^{-t/\tau}

with :math:`u` the OCV, :math:`a` the polarisation left when the current stopped and
:math:`\tau` the branch's time constant (tens of minutes); fitting it to the readings of
a rest of an hour or two and reading :math:`u` is the relaxation-model OCV estimate (Pei,
Wang, Lu and Zhu 2014, "Relaxation model of the open-circuit voltage for
state-of-charge estimation in lithium-ion batteries", J. Power Sources 255, 100-108).
Real cells relax with more than one time constant; a one-term fit then misses part of
the slowest, so the uncertainty returned is never below ``MODEL_SHARE`` of the
correction made (the extrapolation beyond the last reading), besides the fit's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["MODEL_SHARE", "TAU_GRID_S", "RelaxedOcv", "ocv_mv_from_relaxation"]

FloatArray = npt.NDArray[np.float64]

#: Time constants tried, 5 min to 2 h, 15 % apart; the best fit is refined by a parabola.
#: A fit at either end of the grid is refused: the relaxation is then too fast to see
#: (nothing left to correct, the last reading is the OCV) or too slow to extrapolate. [s]
TAU_GRID_S: tuple[float, ...] = tuple(float(t) for t in np.geomspace(300.0, 7200.0, 24))

#: Least share of the correction counted as its uncertainty (the slower time constants
#: a one-term model does not see; at a fifth of the first one's size after one hour, a
#: second term of a few hours' constant is a third of what is left). [-]
MODEL_SHARE = 0.35


@dataclass(frozen=True, slots=True)
class RelaxedOcv:
    """A rest's OCV, extrapolated.

    Attributes
    ----------
    ocv_mv : float
        Fitted :math:`u`. [mV]
    correction_mv : float
        ``ocv_mv`` less the last reading's voltage (the relaxation still to come). [mV]
    sigma_mv : float
        One-sigma uncertainty of ``ocv_mv``. [mV]
    tau_s : float
        Fitted time constant. [s]
    rms_mv : float
        Root-mean-square residual of the fit. [mV]
    """

    ocv_mv: float
    correction_mv: float
    sigma_mv: float
    tau_s: float
    rms_mv: float


def ocv_mv_from_relaxation(
    t_s: npt.ArrayLike,
    v_mv: npt.ArrayLike,
    *,
    noise_mv: float = 0.5,
    min_readings: int = 4,
    min_span_s: float = 1800.0,
) -> RelaxedOcv | None:
    r"""OCV of a cell (or the mean cell) from the voltages of a rest still relaxing.

    Parameters
    ----------
    t_s : array, shape (K,)
        Time of each reading since the current stopped, increasing. [s]
    v_mv : array, shape (K,)
        Terminal voltage at those times, at (nearly) zero current. [mV]
    noise_mv : float
        One-sigma noise of a reading (the floor of the fit's rms). [mV]
    min_readings, min_span_s : int, float
        Fewer readings, or readings spanning less time, give None: an exponential and
        its asymptote cannot be told apart from a line over a few points.

    Returns
    -------
    RelaxedOcv or None
        None when the readings are too few, the best time constant lies at an end of
        ``TAU_GRID_S``, or the fit leaves residuals above a few ``noise_mv`` (the
        voltage did something else than relax: a load, a temperature swing).

    Notes
    -----
    For each :math:`\tau` the model is linear in :math:`(u, a)`: least squares, the
    residual compared across the grid and refined by a parabola in :math:`\ln\tau`. The
    statistical sigma of :math:`u` is from the fit's covariance at the chosen
    :math:`\tau`, with half the range of :math:`u` over the :math:`\tau` whose residual
    lies within one noise variance of the best (a profile interval; at least a step of
    the grid either way) in quadrature;
    ``MODEL_SHARE`` of the correction is added in quadrature too.
    """
    t = np.asarray(t_s, dtype=np.float64)
    v = np.asarray(v_mv, dtype=np.float64)
    if t.ndim != 1 or t.shape != v.shape or t.size < min_readings:
        return None
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(v)) and np.all(np.diff(t) > 0)):
        return None
    if t[-1] - t[0] < min_span_s:
        return None
    taus = np.asarray(TAU_GRID_S)
    basis = np.exp(-t[None, :] / taus[:, None])  # (G, K)
    # Least squares of v = u + a * basis_g for every tau at once (2x2 normal equations).
    n = float(t.size)
    sb, sbb = basis.sum(axis=1), np.sum(basis * basis, axis=1)
    sv, sbv = float(v.sum()), basis @ v
    det = n * sbb - sb * sb
    ok = det > 1e-12 * n * n
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(ok, (sbb * sv - sb * sbv) / det, np.nan)
        a = np.where(ok, (n * sbv - sb * sv) / det, np.nan)
    resid = np.sum((v[None, :] - u[:, None] - a[:, None] * basis) ** 2, axis=1)
    resid = np.where(ok, resid, np.inf)
    g = int(np.argmin(resid))
    if g == 0 or g == taus.size - 1 or not np.isfinite(resid[g]):
        return None
    dof = max(t.size - 3, 1)
    rms = float(np.sqrt(resid[g] / dof))
    if rms > 3.0 * noise_mv:
        return None
    # parabola through the three residuals around the best, in ln(tau)
    r0, r1, r2 = float(resid[g - 1]), float(resid[g]), float(resid[g + 1])
    second = r0 - 2.0 * r1 + r2
    shift = 0.0 if second <= 0 else float(np.clip(0.5 * (r0 - r2) / second, -0.5, 0.5))
    side = g + 1 if shift > 0 else g - 1
    u_best = float(u[g] + abs(shift) * (u[side] - u[g]))
    tau = float(np.exp(np.log(taus[g]) + shift * np.log(taus[1] / taus[0])))
    # statistical sigma of u at fixed tau, and how far the taus the readings cannot tell
    # from the best move it: those whose residual is within one noise variance of the
    # best (chi-square up by 1, a one-sigma profile interval), at least the neighbours:
    # few readings over a short rest leave a wide range of taus.
    noise = max(rms, noise_mv)
    sigma_fit = float(np.sqrt(noise**2 * sbb[g] / det[g]))
    alike = np.flatnonzero(resid <= resid[g] + noise**2)
    sigma_tau = 0.5 * max(
        abs(float(u[g + 1] - u[g - 1])), float(np.max(u[alike]) - np.min(u[alike]))
    )
    correction = u_best - float(v[-1])
    sigma = float(np.sqrt(sigma_fit**2 + sigma_tau**2 + (MODEL_SHARE * correction) ** 2))
    return RelaxedOcv(
        ocv_mv=u_best, correction_mv=correction, sigma_mv=sigma, tau_s=tau, rms_mv=rms
    )
