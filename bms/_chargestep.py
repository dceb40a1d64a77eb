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

A car that lives above 70 % SoC starts its charges inside the step, on the discharge
branch of the hysteresis, which flips to the charge branch over the first few % of the
charge (one-state model, Plett 2015 ch. 2) and rises like the step itself. Such a
charge (starting up to ``STEP_LATEST_START_PCT``) is fitted with the flip as one more
nuisance column, :math:`e^{-\gamma (q_k - q_0)/C}` with the rate :math:`\gamma` that suits
the mean cell best (``HYSTERESIS_RATES``), on the step's upper half and the plateau
above; as that is a weaker feature, only near where the BMS's own SoC says the charge
began.

Limits (why a systematic floor is added by the caller): the step's position in SoC is
that of the chemistry's OCV table; in a real cell it moves with how the electrodes' SoC
windows shift as the cell ages (loss of lithium inventory), by an amount the table does
not know.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bms._ocv import ocv_v_from_soc_pct

__all__ = [
    "HYSTERESIS_RATES",
    "STEP_LATEST_START_PCT",
    "STEP_WINDOW_PCT",
    "StepFit",
    "fit_charge_step",
]

FloatArray = npt.NDArray[np.float64]

#: SoC range a charge must cover (both plateaus around the step) for its fit to count,
#: per chemistry that needs charge-step anchors. The LFP table (science.md 1) rises
#: 3.306 -> 3.334 V from 65 to 80 % and is nearly flat on either side. [%]
STEP_WINDOW_PCT: dict[str, tuple[float, float]] = {"lfp": (64.0, 88.0)}

#: SoC at which the anchor is read: the middle of the step, where an error in the
#: assumed capacity moves the alignment least. [%]
STEP_CENTRE_PCT: dict[str, float] = {"lfp": 76.0}

#: Latest SoC at which a charge may start and still give an anchor: the step's upper
#: half (76-82 %, 3 mV per % in the Sony table) and the plateau above must lie in it. A
#: charge that starts inside the window is fitted with the hysteresis flip (below). [%]
STEP_LATEST_START_PCT: dict[str, float] = {"lfp": 76.0}

#: Rates of the hysteresis flip tried when a charge starts close to the step. In the
#: one-state hysteresis model (Plett 2015, *Battery Management Systems Vol. I*, ch. 2)
#: the hysteresis voltage moves from the discharge to the charge branch as
#: :math:`M (1 - (1 - h_0) e^{-\gamma \Delta q / C})`: a rise of up to the whole
#: 17-30 mV gap (science.md 1) over a few % of charge, as large as the step's 23 mV. The
#: rate is a property of the cell that the OCV tables do not give, so the mean cell
#: chooses it from e-folds of 1.25 to 10 % of capacity. [-]
HYSTERESIS_RATES: tuple[float, ...] = (10.0, 20.0, 40.0, 80.0)

_LOCATE_GRID_PCT = 1.0  # coarse grid that locates the step [%]
_GRID_PCT = 0.2  # grid of start SoCs, refined by a parabola [%]
_MAX_RESIDUAL_SHARE = 0.5  # fit rms / straight-line rms (a quarter of the residual)
_MIN_STEP_CHI2 = 25.0  # a partial window's step must lower chi^2 by this much (5 sigma)
_MARGIN_PCT = 4.0  # plateau kept on either side of the window for the final fit [%]
_BIN_PCT = 0.25  # readings are averaged in bins of this much charge [% of C]
_DOUBT_RMS_SHARE = 1.25  # a cell whose rms exceeds the median's this much is refitted

#: Capacities, as shares of the one assumed, at which a cell that fails (or fits
#: clearly worse than the pack) is fitted again: a fast-fading cell (down to 60 % of
#: its neighbours) stretches the step over less charge. [-]
CELL_CAPACITY_SHARES: tuple[float, ...] = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)


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
    soc_hint_pct: float | None = None,
    soc_hint_tolerance_pct: float = 10.0,
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
    soc_hint_pct : float, optional
        The BMS's own SoC at the first reading. [%] Only with it is a charge that starts
        inside the window (above its lower margin, up to ``STEP_LATEST_START_PCT``)
        fitted: the step's upper half with the hysteresis flip is a weaker feature, and
        a stretch of the curve elsewhere (20-35 %, also 2-3 mV per %) can mimic it. The
        hint only bounds where the fit looks: start SoCs within
        ``soc_hint_tolerance_pct`` of it (a coulomb-counted SoC drifts between resets at
        full charge, science.md 6.4; 10 % is generous).

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
    x_all = 100.0 * (q - q[0]) / capacity_ah  # SoC gained since the first reading
    if not np.all(np.diff(x_all) >= 0):
        return None
    settle = (
        None
        if since_start_s is None
        else np.exp(-np.asarray(since_start_s, dtype=np.float64) / settle_tau_s)
    )
    # A charge across the whole window first; one that starts inside it only if not.
    fit = _fit_charge(q, v, x_all, settle, capacity_ah, chemistry, max_rms_mv, None)
    if fit is None and soc_hint_pct is not None and math.isfinite(soc_hint_pct):
        hint = (soc_hint_pct - soc_hint_tolerance_pct, soc_hint_pct + soc_hint_tolerance_pct)
        fit = _fit_charge(q, v, x_all, settle, capacity_ah, chemistry, max_rms_mv, hint)
    return fit


def _fit_charge(
    q: FloatArray,
    v: FloatArray,
    x_all: FloatArray,
    settle: FloatArray | None,
    capacity_ah: float,
    chemistry: str,
    max_rms_mv: float,
    hint: tuple[float, float] | None,
) -> StepFit | None:
    """``fit_charge_step`` for a charge across the whole window (``hint`` None) or one
    that starts inside it, above its lower margin and within ``hint`` (the lowest and
    highest start SoC the BMS allows) [%], with the hysteresis flip."""
    partial = hint is not None
    lo, hi = STEP_WINDOW_PCT[chemistry]
    if float(x_all[-1]) < hi - (STEP_LATEST_START_PCT[chemistry] if partial else lo):
        return None
    x, vb, counts, settle_b = _bins(x_all, v, settle)
    located = _locate(x, vb.mean(axis=1), counts, chemistry, settle_b, hint)
    if located is None:
        return None
    z0_guess, rate = located
    soc_guess = x_all + z0_guess
    keep = np.flatnonzero((soc_guess >= lo - _MARGIN_PCT) & (soc_guess <= hi + _MARGIN_PCT))
    if keep.size < 8:
        return None
    extra = _nuisance_extra(x_all[keep], settle[keep] if settle is not None else None, rate)
    found = _fit_window(
        q[keep], v[keep], extra, capacity_ah, chemistry, max_rms_mv, partial=partial
    )
    if found is None:
        return None
    soc0, sigma, rms, share = found  # SoC of each cell at reading keep[0]
    ok = np.isfinite(soc0)
    nominal = ok & (share == 1.0)
    x_keep = x_all - x_all[keep[0]]
    mean_soc = float(np.mean(soc0[nominal if nominal.any() else ok])) + x_keep
    ref = int(np.argmin(np.abs(mean_soc - STEP_CENTRE_PCT[chemistry])))
    # each cell's SoC gain at its own capacity (a stretched cell gains more per Ah)
    return StepFit(soc_pct=soc0 + x_keep[ref] / share, sigma_pct=sigma, rms_mv=rms, ref=ref)


def _bins(
    x_all: FloatArray, v: FloatArray, extra: FloatArray | None
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray | None]:
    """Readings averaged in bins of ``_BIN_PCT`` charge: fewer rows, less noise, same
    shape. Returns bin SoC gains, bin mean voltages (B, J), readings per bin and the
    bin means of ``extra`` (K,) or (K, E) (None without)."""
    bins = np.floor(x_all / _BIN_PCT).astype(np.int64)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(bins)) + 1))
    counts = np.diff(np.concatenate((starts, [x_all.size]))).astype(np.float64)
    x = np.add.reduceat(x_all, starts) / counts
    vb = np.add.reduceat(v, starts, axis=0) / counts[:, None]
    if extra is None:
        return x, vb, counts, None
    eb = np.add.reduceat(extra, starts, axis=0)
    eb = eb / (counts[:, None] if eb.ndim == 2 else counts)
    return x, vb, counts, eb


def _flip(x_since_start: FloatArray, rate: float) -> FloatArray:
    r"""Shape of the hysteresis flip, :math:`e^{-\gamma \Delta z}`, at ``x_since_start``
    % of capacity charged since the charge's first reading (``HYSTERESIS_RATES``)."""
    out: FloatArray = np.exp(-rate * x_since_start / 100.0)
    return out


def _nuisance_extra(
    x_since_start: FloatArray, settle: FloatArray | None, rate: float | None
) -> FloatArray | None:
    """The optional nuisance columns (K, E): settling polarisation and hysteresis flip."""
    cols = [
        c for c in (settle, None if rate is None else _flip(x_since_start, rate)) if c is not None
    ]
    return np.stack(cols, axis=1) if cols else None


def _nuisance(x: FloatArray, extra: FloatArray | None) -> FloatArray:
    """Columns of what the fit removes besides the OCV: offset, linear drift and, when
    given, the settling polarisation and the hysteresis flip (B, 2 to 4); a column that
    hardly varies over the readings is left out (it would only duplicate the offset)."""
    cols = [np.ones_like(x), x - x.mean()]
    if extra is not None:
        for c in np.atleast_2d(extra.T):
            if np.ptp(c) > 1e-3:
                cols.append(c - c.mean())
    return np.stack(cols, axis=1)


def _locate(
    x: FloatArray,
    v_mv: FloatArray,
    w: FloatArray,
    chemistry: str,
    settle: FloatArray | None,
    hint: tuple[float, float] | None,
) -> tuple[float, float | None] | None:
    """Start SoC (at ``x = 0``) that best aligns the mean cell with the OCV curve,
    each candidate judged on its own window (``STEP_WINDOW_PCT`` +- ``_MARGIN_PCT``) on
    a ``_LOCATE_GRID_PCT`` grid: start SoCs that put the whole window in the data, or
    (``hint``) from the window's lower margin to ``STEP_LATEST_START_PCT`` within the
    hint's bounds. A
    candidate whose charge begins within two margins of the window is fitted with the
    hysteresis rate (``HYSTERESIS_RATES``) that fits best (None otherwise: the flip is
    over before the window). None if no candidate has enough readings in its window."""
    lo, hi = STEP_WINDOW_PCT[chemistry]
    partial = hint is not None
    if hint is not None:
        # From the window's lower margin (a charge that began lower crossed the whole
        # window) to two grid steps beyond the latest start, and no further than a charge
        # ending at 100 % allows (the charge axis, at the capacity assumed, can only
        # understate the SoC gained by an aged cell). An alignment at either limit is
        # refused: it is pinned there, not found.
        first = max(hi - float(x[-1]), lo - _MARGIN_PCT, hint[0]) - float(x[0])
        last = min(
            STEP_LATEST_START_PCT[chemistry] + 2.0 * _LOCATE_GRID_PCT,
            100.0 - float(x[-1]),
            hint[1],
        ) - float(x[0])
    else:
        first, last = hi - float(x[-1]), lo - float(x[0])
    if last < first:
        return None

    # Nuisance columns over all bins, once per rate; each candidate takes its window.
    flips = {r: _flip(x - float(x[0]), r) for r in HYSTERESIS_RATES}

    def score(z0: float, rate: float | None) -> float:
        soc = x + z0
        inside = (soc >= lo - _MARGIN_PCT) & (soc <= hi + _MARGIN_PCT)
        if inside.sum() < 8:
            return np.inf
        ws = np.sqrt(w[inside])
        cols = [ws, x[inside] * ws]
        for c in (
            None if settle is None else settle[inside],
            None if rate is None else flips[rate][inside],
        ):
            if c is not None and np.ptp(c) > 1e-3:
                cols.append(c * ws)
        design = np.stack(cols, axis=1)
        y = (v_mv[inside] - 1000.0 * ocv_v_from_soc_pct(soc[inside], chemistry)) * ws
        # least squares through the normal equations (a handful of columns)
        gram = design.T @ design
        rhs = design.T @ y
        try:
            coef = np.linalg.solve(gram, rhs)
        except np.linalg.LinAlgError:
            return np.inf
        return max(float(y @ y - rhs @ coef), 0.0) / float(y.size)

    grid = np.arange(first, last + 1e-9, _LOCATE_GRID_PCT)
    rates: tuple[float | None, ...] = HYSTERESIS_RATES if partial else (None,)
    scored = [(score(float(z0), r), float(z0), r) for z0 in grid for r in rates]
    best_score, z_best, r_best = min(scored, key=lambda c: c[0], default=(np.inf, 0.0, None))
    if not partial and z_best + float(x[0]) > lo - 2.0 * _MARGIN_PCT:
        # The charge began near the window, so the flip is still under way in it: the
        # rate refined around the first alignment (cheaper than every rate everywhere).
        near = grid[np.abs(grid - z_best) <= 3.0 * _LOCATE_GRID_PCT + 1e-9]
        scored = [(score(float(z0), r), float(z0), r) for z0 in near for r in HYSTERESIS_RATES]
        best_score, z_best, r_best = min(
            [(best_score, z_best, r_best), *scored], key=lambda c: c[0]
        )
    best = None if not np.isfinite(best_score) else (z_best, r_best)
    if (
        partial
        and best is not None
        and (
            best[0] + float(x[0]) > STEP_LATEST_START_PCT[chemistry]
            or best[0] < first + 0.5 * _LOCATE_GRID_PCT
            or best[0] > last - 0.5 * _LOCATE_GRID_PCT
        )
    ):
        return None
    return best


def _fit_window(
    q: FloatArray,
    v: FloatArray,
    extra: FloatArray | None,
    capacity_ah: float,
    chemistry: str,
    max_rms_mv: float,
    *,
    partial: bool = False,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray] | None:
    """Grid fit of each cell's start SoC (at ``q[0]``) over readings around the step:
    (soc0, sigma, rms, capacity share) per cell, NaN where the fit fails; None if none
    succeeds.

    A cell that fails at ``capacity_ah``, or whose residual is clearly larger than the
    pack's, is fitted again with a smaller capacity (``CELL_CAPACITY_SHARES``): a fast
    fading cell crosses the step over less charge, and at the pack's capacity its fit
    fails or its anchor is biased towards the others' by a percent or more, hiding
    exactly the cell that sets the pack's capacity. The smaller capacity is taken only
    where it lowers the residual by ``_MIN_STEP_CHI2`` noise variances (5 sigma), and
    only in a charge across the whole window that most cells fit at ``capacity_ah``."""
    x_all = 100.0 * (q - q[0]) / capacity_ah
    x, vb, w, extra_b = _bins(x_all, v, extra)
    if x.size < 8:
        return None
    n_cells = vb.shape[1]
    # Project out the nuisance columns (_nuisance) from the data and each candidate curve,
    # weighting each bin by its readings (a bin's mean has variance sigma^2 / count).
    sw = np.sqrt(w)
    basis = _nuisance(x, extra_b) * sw[:, None]
    qmat, _ = np.linalg.qr(basis)

    def project(a: FloatArray) -> FloatArray:
        aw = a * sw[:, None]
        out: FloatArray = aw - qmat @ (qmat.T @ aw)
        return out

    pv = project(vb)  # (B, J)
    null = np.sum(pv * pv, axis=0)
    dof = max(x.size - basis.shape[1] - 1, 1)
    fit = _fit_stretched(x, pv, null, dof, project, 1.0, chemistry, max_rms_mv, partial)
    if fit is None:
        return None
    soc0, sigma, rms, resid = fit
    share = np.where(np.isfinite(soc0), 1.0, np.nan)
    ok = np.isfinite(soc0)
    typical = float(np.median(rms[ok])) if ok.any() else 0.0
    doubt = ~ok | (rms > _DOUBT_RMS_SHARE * max(typical, 0.3))
    # Only an outlying cell of a pack that fits is refitted: in a charge begun inside the
    # window the stretch would trade off against the hysteresis flip, and a pack that
    # mostly fails is not explained by one weak cell.
    if not partial and 2 * int(ok.sum()) >= n_cells and doubt.any():
        noise = np.maximum(np.where(ok, rms, typical), 0.3) ** 2
        for f in CELL_CAPACITY_SHARES:
            other = _fit_stretched(x, pv, null, dof, project, f, chemistry, max_rms_mv, partial)
            if other is None:
                continue
            s0, sg, rm, rs = other
            better = (
                doubt
                & np.isfinite(s0)
                & (~np.isfinite(soc0) | (rs <= resid - _MIN_STEP_CHI2 * noise))
            )
            soc0 = np.where(better, s0, soc0)
            sigma = np.where(better, sg, sigma)
            rms = np.where(better, rm, rms)
            resid = np.where(better, rs, resid)
            share = np.where(better, f, share)
    if not np.isfinite(soc0).any():
        return None
    return soc0, sigma, rms, share


def _fit_stretched(
    x: FloatArray,
    pv: FloatArray,
    null: FloatArray,
    dof: int,
    project: Callable[[FloatArray], FloatArray],
    share: float,
    chemistry: str,
    max_rms_mv: float,
    partial: bool,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray] | None:
    """``_fit_window``'s grid fit with every cell's capacity ``share`` times the one
    assumed (its SoC gains ``x / share``): (soc0, sigma, rms, residual) per cell, NaN
    where the fit fails; None if no start SoC is possible."""
    lo, hi = STEP_WINDOW_PCT[chemistry]
    xs = x / share
    span = float(xs[-1])
    # Start SoCs that put the window inside the charge (its upper part only for a charge
    # that starts inside it: ``partial``), one grid step beyond each side so that an
    # alignment at the edge can be recognised and refused.
    latest = STEP_LATEST_START_PCT[chemistry] if partial else lo
    first, last = max(hi - span - _GRID_PCT, 0.0), min(latest + _GRID_PCT, 100.0 - span)
    if last - first < 3 * _GRID_PCT:
        return None
    z0 = np.arange(first, last + 1e-9, _GRID_PCT)
    curves = 1000.0 * ocv_v_from_soc_pct(z0[:, None] + xs[None, :], chemistry)  # (G, B)
    pc = project(curves.T)  # (B, G)
    # residual(g, j) = |pv_j|^2 - 2 pv_j . pc_g + |pc_g|^2
    obj = np.sum(pc * pc, axis=0)[:, None] - 2.0 * (pc.T @ pv)  # (G, J)
    best = np.argmin(obj, axis=0)
    n_cells = pv.shape[1]
    resid = np.maximum(null + obj[best, np.arange(n_cells)], 0.0)
    rms = np.sqrt(resid / dof)
    # The step must explain the voltage: against a straight line (offset and drift only)
    # the fit must leave at most a quarter of the residual, or the data may be a plateau.
    gain = -obj[best, np.arange(n_cells)]  # residual removed by the step [mV^2]
    explains = (
        # after the hysteresis flip is removed, the step's upper half is a small share of
        # the residual, but over many readings still a clear one (F-test-like)
        gain >= _MIN_STEP_CHI2 * np.maximum(rms, 0.3) ** 2
        if partial
        else rms <= _MAX_RESIDUAL_SHARE * np.sqrt(null / dof)
    )
    good = (best > 0) & (best < z0.size - 1) & (rms <= max_rms_mv) & explains
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
    return soc0, sigma, rms, resid
