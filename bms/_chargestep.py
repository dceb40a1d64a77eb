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
anchor is read, so it moves the anchor little, but not nothing (about a thirtieth of the
error, from the step's asymmetry). As the caller assumes the rated capacity, the pack's
own capacity is fitted too (the stretch that minimises the residual), then each cell's
(a fast-fading cell crosses the step over less charge than its neighbours).

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
# (soc0, sigma, rms, residual) per cell of one grid fit (_fit_stretched)
_StretchFit = tuple[FloatArray, FloatArray, FloatArray, FloatArray]

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
#: chooses it from e-folds of 0.9 to 10 % of capacity, a factor sqrt(2) apart (a factor
#: 2 left a fast, full flip's rate far enough off to move the anchor by 1.3 % SoC). [-]
HYSTERESIS_RATES: tuple[float, ...] = tuple(10.0 * math.sqrt(2.0) ** k for k in range(8))

_LOCATE_GRID_PCT = 1.0  # coarse grid that locates the step [%]
_WHOLE_WINDOW_HINT_PCT = 25.0  # a whole-window alignment within this of the BMS's SoC [%]
_GRID_PCT = 0.2  # grid of start SoCs, refined by a parabola [%]
_MAX_RESIDUAL_SHARE = 0.5  # fit rms / straight-line rms (a quarter of the residual)
_MIN_STEP_CHI2 = 25.0  # a partial window's step must lower chi^2 by this much (5 sigma)
# A cell's own smaller capacity must lower its chi^2 by this much (4 sigma for one more
# parameter: a cell 15 % weaker than its pack shows by about 4.5 sigma over a 35-94 %
# charge, and one that is not weaker gains at most a few noise variances). [-]
_MIN_CELL_STRETCH_CHI2 = 16.0
# Largest linear drift a charge begun inside the window may need (_drop_drifting): a
# third of the 3 mV per % of the step's upper half. [mV/%]
_MAX_DRIFT_MV_PER_PCT = 1.0
_MARGIN_PCT = 4.0  # plateau kept on either side of the window for the final fit [%]
_BIN_PCT = 0.25  # readings are averaged in bins of this much charge [% of C]
# Pack capacity fit (_pack_share), in SoC gain per Ah relative to the capacity assumed:
# a pack from 60 % (SoH down to 60 % of a rated capacity) to 143 % of it, a first step
# of 5 %, and a stop when the next step would be below 0.2 %. [-]
_PACK_GAIN_RANGE = (0.7, 1.67)
_PACK_GAIN_STEP = 0.05
_PACK_GAIN_TOL = 0.002
_PACK_GAIN_ITERATIONS = 10
#: How far below the window a charge may begin with its hysteresis flip still
#: visible in it: three e-folds of the slowest rate (5 % of the flip left). [%]
_FLIP_REACH_PCT = 300.0 / min(HYSTERESIS_RATES)
_PACK_Z0_MARGIN_PCT = 2.0  # start SoCs searched beyond the predicted ones [%]

#: Capacities, as shares of the pack's, at which each cell is fitted again
#: (``_cell_shares``): a fast-fading cell (down to 60 % of its neighbours) stretches the
#: step over less charge. Evenly spaced (the refinement between them assumes it). [-]
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
        is not where the charge has readings on both sides) or most cells' fits fail.

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
    # The hint bounds both. A charge far below the step (20-50 %) has a stretch of the
    # curve that a whole-window alignment could mistake for the step, 40-60 % off; the
    # whole window is a strong feature otherwise, so only such aliases are ruled out
    # (_WHOLE_WINDOW_HINT_PCT: a BMS's SoC drifting more than 10 % keeps its anchors).
    hint = wide = None
    if soc_hint_pct is not None and math.isfinite(soc_hint_pct):
        hint = (soc_hint_pct - soc_hint_tolerance_pct, soc_hint_pct + soc_hint_tolerance_pct)
        wide = (soc_hint_pct - _WHOLE_WINDOW_HINT_PCT, soc_hint_pct + _WHOLE_WINDOW_HINT_PCT)
    fit = _fit_charge(q, v, x_all, settle, capacity_ah, chemistry, max_rms_mv, None, wide)
    if fit is None and hint is not None:
        fit = _fit_charge(q, v, x_all, settle, capacity_ah, chemistry, max_rms_mv, hint, None)
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
    bounds: tuple[float, float] | None,
) -> StepFit | None:
    """``fit_charge_step`` for a charge across the whole window (``hint`` None) or one
    that starts inside it, above its lower margin and within ``hint`` (the lowest and
    highest start SoC the BMS allows) [%], with the hysteresis flip; the whole window's
    start SoC within ``bounds`` [%] (the BMS's wider hint), if given."""
    partial = hint is not None
    lo, hi = STEP_WINDOW_PCT[chemistry]
    if float(x_all[-1]) < hi - (STEP_LATEST_START_PCT[chemistry] if partial else lo):
        return None
    x, vb, counts, settle_b = _bins(x_all, v, settle)
    located = _locate(x, vb.mean(axis=1), counts, chemistry, settle_b, hint, bounds)
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
    soc0, sigma, rms, share, pack_share = found  # SoC of each cell at reading keep[0]
    ok = np.isfinite(soc0)
    nominal = ok & (share == pack_share)
    x_keep = x_all - x_all[keep[0]]
    mean_soc = float(np.mean(soc0[nominal if nominal.any() else ok])) + x_keep / pack_share
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


def _varies(c: FloatArray, inside: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Per row of ``inside`` (G, B): whether column ``c`` (B,) spans more than 1e-3
    over the bins that row keeps (a column that does not only duplicates the offset)."""
    top = np.where(inside, c[None, :], -np.inf).max(axis=1)
    bottom = np.where(inside, c[None, :], np.inf).min(axis=1)
    out: npt.NDArray[np.bool_] = (top - bottom) > 1e-3
    return out


def _locate(
    x: FloatArray,
    v_mv: FloatArray,
    w: FloatArray,
    chemistry: str,
    settle: FloatArray | None,
    hint: tuple[float, float] | None,
    bounds: tuple[float, float] | None = None,
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
    if bounds is not None:  # within the BMS's bounds
        first = max(first, bounds[0] - float(x[0]))
        last = min(last, bounds[1] - float(x[0]))
    if last < first:
        return None

    # Nuisance columns over all bins, once per rate; each candidate takes its window.
    flips = {r: _flip(x - float(x[0]), r) for r in HYSTERESIS_RATES}

    def scored(
        z0s: npt.ArrayLike, rates: tuple[float | None, ...]
    ) -> list[tuple[float, float, float | None]]:
        """(score, start SoC, rate) of each candidate: the mean square residual per
        bin of its window, inf where the window has too few bins. All candidates at
        once: each one's weighted normal equations over its window (weights zero
        outside) in the columns offset, drift, settling and flip (a column that hardly
        varies in the window is left out: identity there, coefficient 0)."""
        z0 = np.asarray(z0s, dtype=np.float64)
        if z0.size == 0:
            return []
        soc = x[None, :] + z0[:, None]  # (G, B)
        inside = (soc >= lo - _MARGIN_PCT) & (soc <= hi + _MARGIN_PCT)
        bins_in = np.count_nonzero(inside, axis=1)
        enough = bins_in >= 8
        ww = np.where(inside, w[None, :], 0.0)
        resid = np.where(inside, v_mv[None, :] - 1000.0 * ocv_v_from_soc_pct(soc, chemistry), 0.0)
        cols = [np.ones_like(x), x] + ([settle] if settle is not None else [])
        use = [np.ones(z0.size, dtype=bool)] * 2 + [_varies(c, inside) for c in cols[2:]]
        base = np.stack(cols)  # (K, B)
        gram = np.einsum("gb,kb,lb->gkl", ww, base, base)
        rhs = np.einsum("gb,kb,gb->gk", ww, base, resid)
        yy = np.einsum("gb,gb,gb->g", ww, resid, resid)
        k = base.shape[0]
        scores: dict[float | None, FloatArray] = {}
        for rate in rates:
            a = np.zeros((z0.size, k + 1, k + 1))
            r = np.zeros((z0.size, k + 1))
            a[:, :k, :k], r[:, :k] = gram, rhs
            keep = np.stack([*use, np.zeros(z0.size, dtype=bool)], axis=1)
            keep &= enough[:, None]  # too few bins: no fit (identity, never singular)
            if rate is not None:
                c = flips[rate]
                a[:, :k, k] = a[:, k, :k] = np.einsum("gb,kb,b->gk", ww, base, c)
                a[:, k, k] = ww @ (c * c)
                r[:, k] = (ww * resid) @ c
                keep[:, k] = _varies(c, inside)
            # a column left out: its row and column of the identity, its right side 0
            both = keep[:, :, None] & keep[:, None, :]
            a = np.where(both, a, np.eye(k + 1)[None, :, :])
            r = np.where(keep, r, 0.0)
            try:
                coef = np.linalg.solve(a, r[:, :, None])[:, :, 0]
                ok = np.ones(z0.size, dtype=bool)
            except np.linalg.LinAlgError:
                coef = np.zeros_like(r)
                ok = np.zeros(z0.size, dtype=bool)
                for g in range(z0.size):
                    try:
                        coef[g] = np.linalg.solve(a[g], r[g])
                        ok[g] = True
                    except np.linalg.LinAlgError:
                        pass
            fit = np.maximum(yy - np.einsum("gk,gk->g", r, coef), 0.0) / np.maximum(bins_in, 1)
            scores[rate] = np.where(ok & enough, fit, np.inf)
        out = [
            (float(scores[rate][g]), float(z0[g]), rate) for g in range(z0.size) for rate in rates
        ]
        return out

    grid = np.arange(first, last + 1e-9, _LOCATE_GRID_PCT)
    rates: tuple[float | None, ...] = HYSTERESIS_RATES if partial else (None,)
    best_score, z_best, r_best = min(
        scored(grid, rates), key=lambda c: c[0], default=(np.inf, 0.0, None)
    )
    if not partial and z_best + float(x[0]) > lo - _FLIP_REACH_PCT:
        # The charge began near enough the window for the flip to be still under way in
        # it: the rate refined around the first alignment (cheaper than every rate
        # everywhere). Left out, a slow flip is mistaken for a stretch of the step.
        # A flip is kept only where it clearly explains the voltage (its drop in chi^2
        # at least _MIN_STEP_CHI2 noise variances): one that is not there would only
        # trade off against the pack's capacity (_pack_share).
        near = grid[np.abs(grid - z_best) <= 3.0 * _LOCATE_GRID_PCT + 1e-9]
        flip_score, z_flip, r_flip = min(scored(near, HYSTERESIS_RATES), key=lambda c: c[0])
        bins = int(np.count_nonzero(w))
        if (best_score - flip_score) * bins >= _MIN_STEP_CHI2 * flip_score:
            best_score, z_best, r_best = flip_score, z_flip, r_flip
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
    if partial and best is not None and hint is not None:
        # The step must be told apart from a flip alone: starts above the latest one
        # (up to the hint's highest) put only the plateau above the step in the data, so
        # the flip must explain the rise there. If one of them fits nearly as well, a
        # charge begun on that plateau could be mistaken for one crossing the step.
        top = min(hint[1], 100.0 - float(x[-1])) - float(x[0])
        above = np.arange(last + _LOCATE_GRID_PCT, top + 1e-9, _LOCATE_GRID_PCT)
        alt = min((c[0] for c in scored(above, HYSTERESIS_RATES)), default=np.inf)
        bins = int(np.count_nonzero(w))
        if (alt - best_score) * bins < _MIN_STEP_CHI2 * best_score:
            return None
        # Nor may a start below the first one (down to the hint's lowest) fit clearly
        # better: a charge from the plateau below that ends inside the step (56 -> 80 %)
        # has no start in the range searched, and the flip and drift let one 16-20 %
        # higher read the step's lower half as its upper half and the plateau above (all
        # its anchors 20 % high, at ten to a hundred times the true start's residual).
        # Only clearly: such a start is judged on the part of the charge inside its own
        # window, often fewer bins, and a true start inside the window can leave a
        # stretch of the charge that one 10-20 % lower fits about as well.
        bottom = max(hint[0], 0.0) - float(x[0])
        below = np.arange(first - _LOCATE_GRID_PCT, bottom - 1e-9, -_LOCATE_GRID_PCT)
        alt = min((c[0] for c in scored(below, HYSTERESIS_RATES)), default=np.inf)
        if (best_score - alt) * bins >= _MIN_STEP_CHI2 * alt:
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
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, float] | None:
    """Grid fit of each cell's start SoC (at ``q[0]``) over readings around the step:
    (soc0, sigma, rms, capacity share) per cell, NaN where the fit fails, and the pack's
    capacity share; None if most cells fail.

    In a charge across the whole window the pack's capacity is fitted too
    (``_pack_share``): at the capacity assumed, an error in it biases every anchor by
    about a thirtieth of the error (a rated capacity on a pack at 80 % SoH: -0.5 % SoC,
    which a 50 % SoC window turns into a 1 % capacity error).

    Each cell is then fitted again with smaller capacities (``_cell_shares``): a fast
    fading cell crosses the step over less charge, and at the pack's capacity its fit
    fails or its anchor is biased towards the others' by a percent or more, hiding
    exactly the cell that sets the pack's capacity. Neither refit is made in a charge
    begun inside the window, where the stretch would trade off against the flip."""
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

    def stretched(f: float, z0_bounds: tuple[float, float] | None = None) -> _StretchFit | None:
        return _fit_stretched(
            x, pv, null, dof, project, f, chemistry, max_rms_mv, partial, z0_bounds
        )

    fit = stretched(1.0)
    if fit is not None and partial:
        fit = _drop_drifting(fit, x, vb, basis, sw, chemistry)
    # Every cell of a pack crosses the step; when most fail, the few that fit found an
    # alias of it (the OCV curve's 20-35 % stretch has a similar slope), not the step.
    if fit is None or 2 * int(np.isfinite(fit[0]).sum()) < n_cells:
        return None
    if partial:
        return fit[0], fit[1], fit[2], np.where(np.isfinite(fit[0]), 1.0, np.nan), 1.0
    # Refits for the pack's capacity look only near where the cells' alignment goes as
    # the charge axis stretches about the step's centre.
    centre = STEP_CENTRE_PCT[chemistry]
    z_lo, z_hi = float(np.nanmin(fit[0])), float(np.nanmax(fit[0]))

    def near(f: float) -> _StretchFit | None:
        g = 1.0 / f
        return stretched(
            f,
            (
                centre - (centre - z_lo) * g - _PACK_Z0_MARGIN_PCT,
                centre - (centre - z_hi) * g + _PACK_Z0_MARGIN_PCT,
            ),
        )

    pack_share, fit = _pack_share(near, fit)
    return (*_cell_shares(stretched, fit, pack_share), pack_share)


def _cell_shares(
    stretched: Callable[[float], _StretchFit | None], fit: _StretchFit, pack_share: float
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Each cell's fit at its own capacity: (soc0, sigma, rms, capacity share) per cell.

    Every cell is tried at ``CELL_CAPACITY_SHARES`` of the pack's capacity (a weak
    cell's residual at the pack's need not stand out); a smaller share is taken where
    it lowers the cell's residual by ``_MIN_CELL_STRETCH_CHI2`` noise variances, or
    where the cell fails at the pack's. A cell moved off the pack's share is then placed
    between the grid's shares by a parabola through its residuals at the three nearest,
    its start SoC interpolated likewise (the grid is 5 % apart; a cell 2.5 % off its
    grid share is read up to 0.7 % SoC wrong at the step's centre)."""
    soc0, sigma, rms, resid = fit
    ok = np.isfinite(soc0)
    noise = np.maximum(np.where(ok, rms, float(np.median(rms[ok]))), 0.3) ** 2
    grid = (1.0, *CELL_CAPACITY_SHARES)  # evenly spaced, relative to the pack's
    fits: list[_StretchFit | None] = [fit]
    chosen = np.zeros(soc0.size, dtype=np.int64)
    last_resid = resid
    for k, f in enumerate(CELL_CAPACITY_SHARES, start=1):
        other = stretched(f * pack_share)
        fits.append(other)
        if other is None:
            continue
        s0, sg, rm, rs = other
        # A cell's residual has one minimum over the share: once no cell improves on the
        # previous share (and none is still without a fit), smaller shares cannot help.
        searching = (rs < last_resid) | ~np.isfinite(soc0)
        last_resid = rs
        better = np.isfinite(s0) & (
            ~np.isfinite(soc0) | (rs <= resid - _MIN_CELL_STRETCH_CHI2 * noise)
        )
        soc0 = np.where(better, s0, soc0)
        sigma = np.where(better, sg, sigma)
        rms = np.where(better, rm, rms)
        resid = np.where(better, rs, resid)
        chosen = np.where(better, k, chosen)
        if not searching.any():
            break
    share = np.where(np.isfinite(soc0), pack_share * np.asarray(grid)[chosen], np.nan)
    step = grid[0] - grid[1]
    for j in np.flatnonzero(chosen > 0):
        k = int(chosen[j])
        lo_fit, hi_fit = fits[k - 1], fits[k + 1] if k + 1 < len(fits) else None
        if lo_fit is None or hi_fit is None:
            continue
        r0, r1, r2 = lo_fit[3][j], resid[j], hi_fit[3][j]  # at k-1, k, k+1
        second = r0 - 2.0 * r1 + r2
        if not second > 0:
            continue
        # offset towards smaller shares, in grid steps, and the neighbour on that side
        delta = float(np.clip(0.5 * (r0 - r2) / second, -0.5, 0.5))
        side = hi_fit if delta > 0 else lo_fit
        if not np.isfinite(side[0][j]):
            continue
        soc0[j] += abs(delta) * (side[0][j] - soc0[j])
        share[j] = pack_share * (grid[k] - delta * step)
    return soc0, sigma, rms, share


def _drop_drifting(
    fit: _StretchFit,
    x: FloatArray,
    vb: FloatArray,
    basis: FloatArray,
    sw: FloatArray,
    chemistry: str,
) -> _StretchFit:
    """``fit`` with the cells whose linear drift term exceeds ``_MAX_DRIFT_MV_PER_PCT``
    failed (NaN). In a charge begun inside the window, the drift and the flip can
    together turn the step's lower half (a charge that ends near 76 %) into an alias
    of its upper half and the plateau above: the drift then has the step's own slope,
    where a real charge drifts by hundredths of a mV per %."""
    soc0 = fit[0]
    ok = np.flatnonzero(np.isfinite(soc0))
    if ok.size == 0:
        return fit
    curves = 1000.0 * ocv_v_from_soc_pct(soc0[ok][None, :] + x[:, None], chemistry)
    coef, *_ = np.linalg.lstsq(basis, (vb[:, ok] - curves) * sw[:, None], rcond=None)
    drifting = ok[np.abs(coef[1]) > _MAX_DRIFT_MV_PER_PCT]  # column 1: x - mean(x)
    if drifting.size == 0:
        return fit
    soc0, sigma = soc0.copy(), fit[1].copy()
    soc0[drifting] = np.nan
    sigma[drifting] = np.nan
    return soc0, sigma, fit[2], fit[3]


def _pack_share(
    stretched: Callable[[float], _StretchFit | None], nominal: _StretchFit
) -> tuple[float, _StretchFit]:
    """The pack's capacity as a share of the one assumed, and the fit at it: the share
    that minimises the residual summed over the cells that fit at the capacity assumed,
    found in the SoC gain per Ah (``1 / share``) within ``_PACK_GAIN_RANGE`` by walking
    downhill until the minimum is bracketed, then by successive parabolas. The step's
    shape fixes it: a wrong capacity stretches the step over too much or too little
    charge, and only the linear drift term, not the offset, can absorb part of that."""
    cells = np.isfinite(nominal[0])
    tried: dict[float, tuple[float, _StretchFit]] = {1.0: (float(nominal[3][cells].sum()), nominal)}

    def at(gain: float) -> float:
        gain = round(min(max(gain, _PACK_GAIN_RANGE[0]), _PACK_GAIN_RANGE[1]), 4)
        if gain not in tried:
            fit = stretched(1.0 / gain)
            # a stretch that loses cells is no better fit, whatever its residual
            if fit is None or int(np.isfinite(fit[0]).sum()) < int(cells.sum()):
                tried[gain] = (np.inf, nominal)
            else:
                tried[gain] = (float(fit[3][cells].sum()), fit)
        return gain

    for g in (1.0 - _PACK_GAIN_STEP, 1.0 + _PACK_GAIN_STEP):
        at(g)
    for _ in range(_PACK_GAIN_ITERATIONS):
        gains = sorted(tried)
        i = min(range(len(gains)), key=lambda k: tried[gains[k]][0])
        best = gains[i]
        if i in (0, len(gains) - 1):
            # not bracketed yet: walk on downhill, each step twice the span so far
            step = max(_PACK_GAIN_STEP, gains[-1] - gains[0])
            nxt = best + (step if i else -step)
        else:
            (g0, r0), (g1, r1), (g2, r2) = ((g, tried[g][0]) for g in gains[i - 1 : i + 2])
            if not (math.isfinite(r0) and math.isfinite(r2)):
                # a neighbour lost cells: halve the way towards it
                nxt = 0.5 * (g1 + (g0 if not math.isfinite(r0) else g2))
            else:  # vertex of the parabola through the three
                num = (g1 - g0) ** 2 * (r1 - r2) - (g1 - g2) ** 2 * (r1 - r0)
                den = (g1 - g0) * (r1 - r2) - (g1 - g2) * (r1 - r0)
                nxt = g1 - 0.5 * num / den if den != 0 else g1
                nxt = min(max(nxt, g0), g2)
        if abs(nxt - best) < _PACK_GAIN_TOL or at(nxt) in gains:
            break
    best = min(tried, key=lambda g: tried[g][0])
    return 1.0 / best, tried[best][1]


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
    z0_bounds: tuple[float, float] | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray] | None:
    """``_fit_window``'s grid fit with every cell's capacity ``share`` times the one
    assumed (its SoC gains ``x / share``): (soc0, sigma, rms, residual) per cell, NaN
    where the fit fails; None if no start SoC is possible. ``z0_bounds`` narrows the
    grid of start SoCs to where the cells are known to be (a cheaper refit). [%]"""
    lo, hi = STEP_WINDOW_PCT[chemistry]
    xs = x / share
    span = float(xs[-1])
    # Start SoCs that put the window inside the charge (its upper part only for a charge
    # that starts inside it: ``partial``), one grid step beyond each side so that an
    # alignment at the edge can be recognised and refused.
    latest = STEP_LATEST_START_PCT[chemistry] if partial else lo
    first, last = max(hi - span - _GRID_PCT, 0.0), min(latest + _GRID_PCT, 100.0 - span)
    if z0_bounds is not None:
        first, last = max(first, z0_bounds[0]), min(last, z0_bounds[1])
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
    j = np.flatnonzero(good)
    g = best[j]
    ym, y0, yp = obj[g - 1, j], obj[g, j], obj[g + 1, j]
    second = ym - 2.0 * y0 + yp
    curved = second > 0  # a parabola with a minimum
    j, g, ym, yp, second = j[curved], g[curved], ym[curved], yp[curved], second[curved]
    curv = second / _GRID_PCT**2  # d2(residual)/dz0^2 [mV^2/%^2]
    shift = 0.5 * (ym - yp) / second * _GRID_PCT
    soc0[j] = z0[g] + np.clip(shift, -_GRID_PCT, _GRID_PCT)
    # Delta residual of one noise variance <-> one sigma (least squares).
    sigma[j] = np.sqrt(2.0 * np.maximum(rms[j], 0.3) ** 2 / curv)
    return soc0, sigma, rms, resid
