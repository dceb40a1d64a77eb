r"""State-of-charge anchors from a constant-current charge that crosses a step of the
OCV curve (LFP), without a rest.

Pure functions on arrays (no files, no clock); ``bms._analytics`` selects the readings
and pairs the anchors with rest points like any other SoC point.

Why: on LFP the rested voltage tells the SoC only where the OCV curve is steep (below
~30 %, 70-82 % and above ~95 %, science.md 1), and a vehicle that always rests on the
plateau never gets a capacity estimate from rest points alone (science.md 6.3 suggests
full-charge events instead). While charging at a constant current :math:`I`, a cell's
voltage is

.. math:: v_k = OCV(z_k) + I R + R_1 x_k + M h_k

(the simulator's and Plett's equivalent circuit, Plett 2015 *Battery Management Systems
Vol. I* ch. 2): once the polarisation current :math:`x` has followed :math:`I` and the
hysteresis :math:`h` has reached its charge branch, everything but the OCV is a nearly
constant offset, so :math:`v` against the charge counted has the shape of the OCV curve
against SoC. Aligning the two over the 70-82 % step of the LFP curve (23 mV in the Sony
table) gives each cell's SoC at every reading, free of hysteresis and resistance: the
idea of differential-voltage analysis, where features of :math:`dV/dQ` sit at fixed
states of charge (Bloom et al. 2005, J. Power Sources 139, 295-303).

The alignment is a least-squares fit per cell of

.. math:: v_{kj} = OCV(z_{0j} + 100\,(q_k - q_0)/C) + b_{0j} + b_{1j}(q_k - q_0)

over a grid of start SoCs :math:`z_{0j}` (the linear term absorbs a slowly settling
polarisation and the small temperature drift of the OCV), refined by a parabola through
the best grid point and its neighbours; the fit's own uncertainty comes from the
curvature of the residual there. ``C`` is the capacity assumed for the stretch of the
charge axis: an error in it stretches the curve about the step's centre, where the
anchor is read, so it moves the anchor little.

Limits (why a systematic floor is added by the caller): the step's position in SoC is
that of the chemistry's OCV table; in a real cell it moves with how the electrodes' SoC
windows shift as the cell ages (loss of lithium inventory), by an amount the table does
not know.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bms._ocv import ocv_v_from_soc_pct

__all__ = ["STEP_WINDOW_PCT", "StepFit", "fit_charge_step"]

FloatArray = npt.NDArray[np.float64]

#: SoC range a charge must cover (both plateaus around the step) for its fit to count,
#: per chemistry that needs charge-step anchors. The LFP table (science.md 1) rises
#: 3.306 -> 3.334 V from 65 to 80 % and is nearly flat on either side. [%]
STEP_WINDOW_PCT: dict[str, tuple[float, float]] = {"lfp": (64.0, 88.0)}

#: SoC at which the anchor is read: the middle of the step, where an error in the
#: assumed capacity moves the alignment least. [%]
STEP_CENTRE_PCT: dict[str, float] = {"lfp": 76.0}

_LOCATE_GRID_PCT = 1.0  # coarse grid that locates the step [%]
_GRID_PCT = 0.2  # grid of start SoCs, refined by a parabola [%]
_MAX_RESIDUAL_SHARE = 0.5  # fit rms / straight-line rms (a quarter of the residual)
_MARGIN_PCT = 4.0  # plateau kept on either side of the window for the final fit [%]
_BIN_PCT = 0.25  # readings are averaged in bins of this much charge [% of C]


@dataclass(frozen=True, slots=True)
class StepFit:
    """Alignment of one charge with the OCV curve.

    Attributes
    ----------
    soc_pct : numpy.ndarray
        Each cell's SoC at the reference reading ``ref``; NaN for a cell whose fit
        failed (poor residual or an alignment at the edge of the grid). [%]
    sigma_pct : numpy.ndarray
        One-sigma uncertainty of ``soc_pct`` from the fit alone. [%]
    rms_mv : numpy.ndarray
        Root-mean-square residual of each cell's fit. [mV]
    ref : int
        Index of the reading the SoC refers to (the one nearest the step's centre).
    """

    soc_pct: FloatArray
    sigma_pct: FloatArray
    rms_mv: FloatArray
    ref: int


def fit_charge_step(
    q_ah: npt.ArrayLike,
    cell_mv: npt.ArrayLike,
    capacity_ah: float,
    chemistry: str,
    *,
    since_start_s: npt.ArrayLike | None = None,
    settle_tau_s: float = 3600.0,
    max_rms_mv: float = 3.0,
) -> StepFit | None:
    """Align a constant-current charge with the OCV curve's step; SoC per cell.

    Parameters
    ----------
    q_ah : array, shape (K,)
        Charge counted at each reading, increasing (any origin). [Ah]
    cell_mv : array, shape (K, J)
        Cell voltages at those readings, all at (nearly) the same charging current. [mV]
    capacity_ah : float
        Capacity assumed to turn charge into SoC (rated, or the latest estimate). [Ah]
    chemistry : str
        A key of ``STEP_WINDOW_PCT`` (``'lfp'``).
    since_start_s : array, shape (K,), optional
        Time since the charge began at each reading. [s] With it the fit also removes
        a polarisation still settling into the charging current, as
        :math:`b_2 e^{-t/\\tau}`; without it that settling biases the anchor high when
        the charge began shortly before the step.
    settle_tau_s : float
        :math:`\\tau` of that term: the time constant with which a cell relaxes to its
        OCV (science.md 6.2: 3 h of rest suffice, i.e. about three time constants). [s]
    max_rms_mv : float
        Cells whose fit leaves a larger root-mean-square residual fail. [mV]

    Returns
    -------
    StepFit or None
        None when the charge does not cover ``STEP_WINDOW_PCT`` (too short, or the step
        is not where the charge has readings on both sides) or no cell's fit succeeds.

    Notes
    -----
    Two steps. The mean cell is first aligned on a coarse grid, each candidate judged
    only on the readings within ``STEP_WINDOW_PCT`` +- 4 % of where it puts the step;
    each cell is then fitted finely on the readings of the best candidate's window. So
    a wrong assumed capacity (the stretch of the charge axis) or the steep ends of the
    curve far from the step cannot pull the alignment.
    """
    if chemistry not in STEP_WINDOW_PCT or capacity_ah <= 0:
        return None
    q = np.asarray(q_ah, dtype=np.float64)
    v = np.asarray(cell_mv, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] != q.size or q.size < 8:
        return None
    lo, hi = STEP_WINDOW_PCT[chemistry]
    x_all = 100.0 * (q - q[0]) / capacity_ah  # SoC gained since the first reading
    if float(x_all[-1]) < hi - lo or not np.all(np.diff(x_all) >= 0):
        return None
    settle = (
        None
        if since_start_s is None
        else np.exp(-np.asarray(since_start_s, dtype=np.float64) / settle_tau_s)
    )
    x, vb, counts, settle_b = _bins(x_all, v, settle)
    z0_guess = _locate(x, vb.mean(axis=1), counts, chemistry, settle_b)
    if z0_guess is None:
        return None
    soc_guess = x_all + z0_guess
    keep = np.flatnonzero((soc_guess >= lo - _MARGIN_PCT) & (soc_guess <= hi + _MARGIN_PCT))
    if keep.size < 8:
        return None
    found = _fit_window(
        q[keep],
        v[keep],
        None if settle is None else settle[keep],
        capacity_ah,
        chemistry,
        max_rms_mv,
    )
    if found is None:
        return None
    soc0, sigma, rms = found  # SoC of each cell at reading keep[0]
    ok = np.isfinite(soc0)
    x_keep = x_all - x_all[keep[0]]
    mean_soc = float(np.mean(soc0[ok])) + x_keep
    ref = int(np.argmin(np.abs(mean_soc - STEP_CENTRE_PCT[chemistry])))
    return StepFit(soc_pct=soc0 + x_keep[ref], sigma_pct=sigma, rms_mv=rms, ref=ref)


def _bins(
    x_all: FloatArray, v: FloatArray, settle: FloatArray | None
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray | None]:
    """Readings averaged in bins of ``_BIN_PCT`` charge: fewer rows, less noise, same
    shape. Returns bin SoC gains, bin mean voltages (B, J), readings per bin and the
    bin means of ``settle`` (None without)."""
    bins = np.floor(x_all / _BIN_PCT).astype(np.int64)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(bins)) + 1))
    counts = np.diff(np.concatenate((starts, [x_all.size]))).astype(np.float64)
    x = np.add.reduceat(x_all, starts) / counts
    vb = np.add.reduceat(v, starts, axis=0) / counts[:, None]
    settle_b = None if settle is None else np.add.reduceat(settle, starts) / counts
    return x, vb, counts, settle_b


def _nuisance(x: FloatArray, settle: FloatArray | None) -> FloatArray:
    """Columns of what the fit removes besides the OCV: offset, linear drift and, when
    known, the settling polarisation (B, 2 or 3)."""
    cols = [np.ones_like(x), x - x.mean()]
    if settle is not None and np.ptp(settle) > 1e-3:
        cols.append(settle - settle.mean())
    return np.stack(cols, axis=1)


def _locate(
    x: FloatArray, v_mv: FloatArray, w: FloatArray, chemistry: str, settle: FloatArray | None
) -> float | None:
    """Start SoC (at ``x = 0``) that best aligns the mean cell with the OCV curve,
    each candidate judged on its own window (``STEP_WINDOW_PCT`` +- ``_MARGIN_PCT``) on
    a ``_LOCATE_GRID_PCT`` grid; None if no candidate puts the window inside the data."""
    lo, hi = STEP_WINDOW_PCT[chemistry]
    first, last = hi - float(x[-1]), lo - float(x[0])
    if last < first:
        return None
    best, best_score = None, np.inf
    for z0 in np.arange(first, last + 1e-9, _LOCATE_GRID_PCT):
        soc = x + z0
        inside = (soc >= lo - _MARGIN_PCT) & (soc <= hi + _MARGIN_PCT)
        if inside.sum() < 8:
            continue
        xs, vs, ws = x[inside], v_mv[inside], np.sqrt(w[inside])
        curve = 1000.0 * ocv_v_from_soc_pct(soc[inside], chemistry)
        design = _nuisance(xs, None if settle is None else settle[inside]) * ws[:, None]
        coef, *_ = np.linalg.lstsq(design, (vs - curve) * ws, rcond=None)
        score = float(np.mean(((vs - curve) * ws - design @ coef) ** 2))
        if score < best_score:
            best, best_score = float(z0), score
    return best


def _fit_window(
    q: FloatArray,
    v: FloatArray,
    settle: FloatArray | None,
    capacity_ah: float,
    chemistry: str,
    max_rms_mv: float,
) -> tuple[FloatArray, FloatArray, FloatArray] | None:
    """Grid fit of each cell's start SoC (at ``q[0]``) over readings around the step:
    (soc0, sigma, rms) per cell, NaN where the fit fails; None if none succeeds."""
    lo, hi = STEP_WINDOW_PCT[chemistry]
    x_all = 100.0 * (q - q[0]) / capacity_ah
    span = float(x_all[-1])
    x, vb, w, settle_b = _bins(x_all, v, settle)
    if x.size < 8:
        return None
    # Start SoCs that put the window inside the charge, one grid step beyond each side
    # so that an alignment at the edge can be recognised and refused.
    first, last = max(hi - span - _GRID_PCT, 0.0), min(lo + _GRID_PCT, 100.0 - span)
    if last - first < 3 * _GRID_PCT:
        return None
    z0 = np.arange(first, last + 1e-9, _GRID_PCT)
    # Project out the nuisance columns (_nuisance) from the data and each candidate curve,
    # weighting each bin by its readings (a bin's mean has variance sigma^2 / count).
    sw = np.sqrt(w)
    basis = _nuisance(x, settle_b) * sw[:, None]
    qmat, _ = np.linalg.qr(basis)

    def project(a: FloatArray) -> FloatArray:
        aw = a * sw[:, None]
        out: FloatArray = aw - qmat @ (qmat.T @ aw)
        return out

    curves = 1000.0 * ocv_v_from_soc_pct(z0[:, None] + x[None, :], chemistry)  # (G, B)
    pc = project(curves.T)  # (B, G)
    pv = project(vb)  # (B, J)
    # residual(g, j) = |pv_j|^2 - 2 pv_j . pc_g + |pc_g|^2
    obj = np.sum(pc * pc, axis=0)[:, None] - 2.0 * (pc.T @ pv)  # (G, J)
    best = np.argmin(obj, axis=0)
    n_cells = vb.shape[1]
    dof = max(x.size - basis.shape[1] - 1, 1)
    null = np.sum(pv * pv, axis=0)
    rms = np.sqrt(np.maximum(null + obj[best, np.arange(n_cells)], 0.0) / dof)
    # The step must explain the voltage: against a straight line (offset and drift only)
    # the fit must leave at most a quarter of the residual, or the data may be a plateau.
    good = (
        (best > 0)
        & (best < z0.size - 1)
        & (rms <= max_rms_mv)
        & (rms <= _MAX_RESIDUAL_SHARE * np.sqrt(null / dof))
    )
    soc0 = np.full(n_cells, np.nan)
    sigma = np.full(n_cells, np.nan)
    for j in np.flatnonzero(good):
        g = int(best[j])
        ym, y0, yp = obj[g - 1, j], obj[g, j], obj[g + 1, j]
        curv = (ym - 2.0 * y0 + yp) / _GRID_PCT**2  # d2(residual)/dz0^2 [mV^2/%^2]
        if not curv > 0:
            continue
        shift = 0.5 * (ym - yp) / (ym - 2.0 * y0 + yp) * _GRID_PCT
        soc0[j] = z0[g] + float(np.clip(shift, -_GRID_PCT, _GRID_PCT))
        # Delta residual of one noise variance <-> one sigma (least squares).
        sigma[j] = float(np.sqrt(2.0 * max(rms[j], 0.3) ** 2 / curv))
    if not np.isfinite(soc0).any():
        return None
    return soc0, sigma, rms
