"""Robust trend of state of health and resistance over a vehicle's life.

Pure numpy. The model follows the semi-empirical ageing laws (science.md section 2):
calendar fade grows like t^0.75 for NMC (Schmalstieg et al. 2014) and t^0.5 for LFP
(Naumann et al. 2018), throughput fade like sqrt(Q), so

    y(t) = a + b * t**p          (t in years since the vehicle entered service)

with ``a`` the value when new and ``b`` the ageing rate; fade therefore slows with age and
is not extrapolated linearly (science.md 6.6). The fit is weighted least squares with the
estimates' quality weights, made outlier-resistant by iteratively reweighting with
Huber's psi (IRLS; Huber 1964, Ann. Math. Stat. 35, 73-101; Holland & Welsch 1977,
Commun. Stat. 6, 813-827), with a weak Gaussian prior on (a, b) so that a short history
projects like a typical fleet (Geotab 2024: 1.8-2.3 %/yr) instead of wildly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: Default ageing exponent per chemistry: NMC calendar t^0.75 (Schmalstieg 2014),
#: LFP calendar t^0.5 (Naumann 2018).
FADE_EXPONENT: dict[str, float] = {"nmc": 0.75, "lfp": 0.5}
#: Resistance growth exponent: t^0.75 calendar (Schmalstieg 2014) for NMC, linear in
#: time/throughput for LFP (Naumann 2018, 2020).
RESISTANCE_EXPONENT: dict[str, float] = {"nmc": 0.75, "lfp": 1.0}
#: Huber tuning constant (95 % efficiency under normal errors).
HUBER_C = 1.345
#: One-sided 95 % normal quantile: a two-sided 90 % interval.
Z_90 = 1.6448536269514722
#: Sigmas by which the recent estimates must stand off a trend to move it
#: (``recent_level_shift``): in the simulated accuracy fleets (three draws, 150 cars,
#: weighed by the scale of the estimates before the window) only packs with a
#: fast-fading cell stood off by more than 2 sigma (2.3-7.8); no other beyond 1.5. [-]
RECENT_SHIFT_Z = 3.0


@dataclass(frozen=True, slots=True)
class PowerFit:
    """Fit of ``y = a + b * t**exponent`` with its covariance.

    Attributes
    ----------
    a, b : float
        Value when new and ageing coefficient (units of y, per year**exponent).
    cov : tuple of float
        Covariance ``(var_a, cov_ab, var_b)``.
    exponent : float
        Power of time. [-]
    scale : float
        Robust residual scale in units of the inputs' sigmas (1 = as stated). [-]
    n : int
        Number of estimates used.
    dof : float
        Degrees of freedom for the t-quantile of intervals.
    systematic_sigma : float
        Sigma added in quadrature to every prediction (model error). [units of y]
    shift, shift_sigma : float
        Level the recent estimates stand off the power law, added to every prediction
        with its sigma (``recent_level_shift``: a fault's fade is not a power law); 0
        when they agree with it. [units of y]
    shift_x : float
        Where the shift was measured: the recent estimates' mean ``t**exponent``, weighed
        as their mean residual. A shifted trend's level is theirs, so its uncertainty is
        theirs (``shift_sigma``) and the fade's from there, not the power law's level
        (which the fault made uncertain). [years**exponent]
    """

    a: float
    b: float
    cov: tuple[float, float, float]
    exponent: float
    scale: float
    n: int
    dof: float
    systematic_sigma: float
    shift: float = 0.0
    shift_sigma: float = 0.0
    shift_x: float = 0.0

    def predict(self, t_years: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Value and its one-sigma uncertainty at ``t_years`` (years since in service)."""
        t = np.maximum(np.asarray(t_years, dtype=np.float64), 0.0)
        x = t**self.exponent
        y = self.a + self.shift + self.b * x
        var_a, cov_ab, var_b = self.cov
        if self.shift_sigma > 0:
            # a + shift + b x = (the recent estimates' level) + b (x - shift_x): the
            # law's level cancels (its covariance with the recent level is neglected)
            dx = x - self.shift_x
            var = dx * dx * var_b + self.systematic_sigma**2 + self.shift_sigma**2
        else:
            var = var_a + 2 * x * cov_ab + x * x * var_b + self.systematic_sigma**2
        return np.asarray(y, dtype=np.float64), np.sqrt(np.maximum(var, 0.0))

    def interval(self, t_years: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Value with the lower and upper bound of its two-sided 90 % interval."""
        y, sd = self.predict(t_years)
        q = t_quantile_95(self.dof)
        return y, y - q * sd, y + q * sd


def t_quantile_95(dof: float) -> float:
    """One-sided 95 % quantile of Student's t (Cornish-Fisher expansion, exact to 1e-3
    for dof >= 3; Abramowitz & Stegun 26.7.5)."""
    if not math.isfinite(dof) or dof > 1e6:
        return Z_90
    nu = max(dof, 1.0)
    z = Z_90
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / nu + g2 / nu**2 + g3 / nu**3


def _usable_points(
    t_years: npt.ArrayLike, y: npt.ArrayLike, sigma: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The points a trend fit uses (every value finite, ``sigma`` > 0): their mask, and
    their ages (negative ages clipped to 0), values and sigmas."""
    t = np.asarray(t_years, dtype=np.float64)
    yv = np.asarray(y, dtype=np.float64)
    sg = np.asarray(sigma, dtype=np.float64)
    ok = np.isfinite(t) & np.isfinite(yv) & np.isfinite(sg) & (sg > 0)
    return ok, np.maximum(t[ok], 0.0), yv[ok], sg[ok]


def fit_power_trend(
    t_years: npt.ArrayLike,
    y: npt.ArrayLike,
    sigma: npt.ArrayLike,
    *,
    exponent: float,
    prior_mean: tuple[float, float],
    prior_sigma: tuple[float, float],
    b_sign: int = 0,
    systematic_sigma: float = 0.0,
    huber_c: float = HUBER_C,
    iterations: int = 30,
    cluster: npt.ArrayLike | None = None,
    cluster_sigma: float = 0.0,
) -> PowerFit:
    r"""Robust weighted fit of ``y = a + b * t**exponent``.

    Parameters
    ----------
    t_years : array
        Age at each estimate. [years]
    y : array
        Estimates (e.g. capacity SoH). [unit of y, e.g. %]
    sigma : array
        One-sigma uncertainty of each estimate (its quality weight is 1/sigma^2).
        [unit of y]
    exponent : float
        Power of time (``FADE_EXPONENT``). [-]
    prior_mean, prior_sigma : tuple of float
        Gaussian prior on ``(a, b)``; ``inf`` sigma = no prior on that parameter.
    b_sign : int
        -1 forces ``b <= 0`` (capacity only fades), +1 ``b >= 0``, 0 free.
    systematic_sigma : float
        Model error added to every prediction's variance. [unit of y]
    huber_c : float
        Huber threshold in standardised residuals.
    iterations : int
        IRLS iterations (stops early when the weights settle).
    cluster : array of int, optional
        Group of each estimate (e.g. its week). Estimates of one group share their
        conditions (season, temperature, the same few rest points) and so part of their
        error: the scale is then taken from the groups' mean residuals and the degrees
        of freedom from the number of groups (cluster-robust, as in Liang & Zeger 1986,
        Biometrika 73, 13-22), so a handful of bursts of estimates does not claim the
        precision of as many independent ones.
    cluster_sigma : float
        With ``cluster``, the standard deviation :math:`\tau` of the error a group's
        estimates share (a random effect per group, Laird & Ware 1982, Biometrics 38,
        963-974): the fit is then generalised least squares with each group's errors
        correlated, so a burst of estimates that share their rest points weighs like a
        few independent ones, not like as many (a group of total weight :math:`W_g`
        counts :math:`W_g / (1 + \tau^2 W_g)`). [unit of y]

    Returns
    -------
    PowerFit

    Notes
    -----
    Minimises :math:`\sum_i \rho_c(r_i / (s \sigma_i)) + \frac12 (\theta-\mu)^T
    \Lambda (\theta-\mu)` by IRLS with Huber weights
    :math:`h_i = \min(1, c / |u_i|)`; the scale :math:`s` is the weighted RMS of the
    standardised residuals, pooled with one pseudo-observation at 1 so that a couple of
    estimates do not claim a tiny error. Covariance:
    :math:`(X^T V^{-1} X + \Lambda)^{-1}`, with :math:`V` the diagonal
    :math:`s^2 \sigma_i^2 / h_i`, plus :math:`\tau^2` within each group when
    ``cluster_sigma`` is given (inverted group by group: Sherman-Morrison).
    """
    ok, t, yv, sg = _usable_points(t_years, y, sigma)
    n = int(t.size)
    groups = None
    n_groups = n
    if cluster is not None:
        _, groups = np.unique(np.asarray(cluster)[ok], return_inverse=True)
        n_groups = int(groups.max()) + 1 if n else 0
    x = np.column_stack([np.ones(n), t**exponent])
    w = 1.0 / sg**2
    mu = np.asarray(prior_mean, dtype=np.float64)
    psd = np.asarray(prior_sigma, dtype=np.float64)
    lam = np.diag(np.where(np.isfinite(psd), 1.0 / np.where(np.isfinite(psd), psd, 1.0) ** 2, 0.0))
    h = np.ones(n)
    scale = 1.0
    theta = mu.copy()
    cov = np.linalg.pinv(lam) if n == 0 else np.eye(2)
    tau = cluster_sigma if groups is not None else 0.0
    shared = None if groups is None or tau <= 0 else (groups, n_groups, tau)
    for _ in range(iterations):
        theta, cov = _solve(x, yv, w * h / scale**2, lam, mu, b_sign, shared)
        r = yv - x @ theta
        u = r * np.sqrt(w)
        new_scale = _scale(u, w, h, groups, n_groups, tau)
        new_h = np.minimum(1.0, huber_c * new_scale / np.maximum(np.abs(u), 1e-12))
        done = (
            float(np.max(np.abs(new_h - h), initial=0.0)) <= 1e-6 and abs(new_scale - scale) < 1e-9
        )
        h, scale = new_h, new_scale
        if done:
            break
    theta, cov = _solve(x, yv, w * h / scale**2, lam, mu, b_sign, shared)
    return PowerFit(
        a=float(theta[0]),
        b=float(theta[1]),
        cov=(float(cov[0, 0]), float(cov[0, 1]), float(cov[1, 1])),
        exponent=exponent,
        scale=scale,
        n=n,
        dof=float(max(n_groups - 2, 1)),
        systematic_sigma=systematic_sigma,
    )


def recent_level_shift(
    fit: PowerFit,
    t_years: npt.ArrayLike,
    y: npt.ArrayLike,
    sigma: npt.ArrayLike,
    *,
    window_years: float,
    cluster_years: float,
    cluster_sigma: float,
    z: float = RECENT_SHIFT_Z,
    scale: float | Callable[[], float] | None = None,
) -> PowerFit:
    r"""``fit`` moved to the level of the recent estimates where they clearly stand off it.

    A power law is the shape of gradual ageing. A fault, such as a cell whose capacity
    falls fast for a few months and then ages as before, is a ramp the law cannot bend
    to: fitted anyway, the law overshoots it and its value now lies below what the
    recent estimates measure (3-7 points in the simulated fleets), which would
    understate a warranty claim's SoH. So the newest estimates, those within
    ``window_years`` of the newest one, are compared with the trend (the newest
    measurements, however old: a window ending today would drop the shift a month
    after the last estimate, and the SoH shown would jump back to the law without any
    new measurement): their mean residual :math:`\bar r`, each group of
    ``cluster_years`` weighted by :math:`1 / (1 / W_g + \tau^2)` (its estimates' weights
    :math:`W_g` at the fit's scale, the shared error ``cluster_sigma``), with sigma
    :math:`\sigma_{\bar r} = (\sum_g 1 / (1 / W_g + \tau^2))^{-1/2}`.

    Parameters
    ----------
    fit : PowerFit
        The trend of the estimates below.
    t_years, y, sigma : array
        The estimates' ages [years], values and one-sigma uncertainties [units of y].
    window_years : float
        How far back from the newest estimate the recent estimates go. [years]
    cluster_years : float
        Length of the groups that share an error. [years]
    cluster_sigma : float
        The error a group shares (``fit_power_trend``'s ``cluster_sigma``). [units of y]
    z : float
        A shift counts when :math:`|\bar r| > z\,\sigma_{\bar r}`.
    scale : float or callable, optional
        Residual scale the recent estimates' sigmas are multiplied by (default: the
        fit's); a callable is called only where the recent estimates could stand off
        (it may fit a trend). The fit's own scale counts the recent estimates' misfit
        too: a fault's fade, fitted as a power law, inflates it and so hides itself; the
        scale of the estimates before the window says how far this vehicle's estimates
        usually stray.

    Returns
    -------
    PowerFit
        ``fit`` with ``shift`` = :math:`\bar r`, ``shift_sigma`` =
        :math:`\sigma_{\bar r}` and ``shift_x`` (the same mean of ``t**exponent``),
        or ``fit`` itself (fewer than three recent estimates, no clear shift, or one
        the median of the recent residuals does not show as clearly).
    """
    _, t, yv, sg = _usable_points(t_years, y, sigma)
    if t.size < 3:
        return fit
    recent = t >= float(t.max()) - window_years
    if int(recent.sum()) < 3:
        return fit
    t, yv, sg = t[recent], yv[recent], sg[recent]
    r = yv - fit.predict(t)[0]
    _, groups = np.unique(np.floor(t / cluster_years).astype(np.int64), return_inverse=True)
    # Most of the recent estimates must stand off, not a couple of wild ones with small
    # sigmas (a charge-step alias read SoH 15-18 % +- 1 among fourteen at 93-97 % +- 5,
    # and their mean moved a sound pack to 77 %): their median residual too, by count
    # (weighted, those two outweighed the fourteen). Whatever the scale, the shift's
    # sigma exceeds cluster_sigma / sqrt(groups): below that, no scale is needed.
    r_med = float(np.median(r))
    if abs(r_med) <= z * cluster_sigma / math.sqrt(int(groups.max()) + 1):
        return fit
    sg = sg * (fit.scale if scale is None else scale() if callable(scale) else scale)
    w = 1.0 / sg**2
    w_g = np.bincount(groups, weights=w)
    r_g = np.bincount(groups, weights=w * r) / w_g
    v_g = 1.0 / w_g + cluster_sigma**2
    sd = math.sqrt(1.0 / float(np.sum(1.0 / v_g)))
    shift = float(np.sum(r_g / v_g)) * sd * sd
    if abs(shift) <= z * sd or r_med * shift <= 0 or abs(r_med) <= z * sd:
        return fit
    x_g = np.bincount(groups, weights=w * t**fit.exponent) / w_g
    shift_x = float(np.sum(x_g / v_g)) * sd * sd
    return dataclasses.replace(fit, shift=shift, shift_sigma=sd, shift_x=shift_x)


def _scale(
    u: FloatArray,
    w: FloatArray,
    h: FloatArray,
    groups: npt.NDArray[np.intp] | None,
    k: int,
    tau: float = 0.0,
) -> float:
    """Robust residual scale from standardised residuals ``u`` (Huber weights ``h``),
    pooled with one pseudo-observation at 1; with ``groups`` (``k`` of them), from each
    group's weighted mean residual standardised by its total weight: under independent
    errors the same in expectation, larger when a group's errors are shared. With a
    shared error ``tau`` in the model, each group's mean residual is standardised by
    its sigma under that model at scale 1, :math:`\\sqrt{1 / W_g + \\tau^2}` (the
    scale multiplies the estimates' own sigmas, not ``tau``)."""
    if groups is None:
        return math.sqrt((1.0 + float(np.sum(h * u * u))) / (1.0 + max(u.size - 2, 0)))
    hw = h * w
    sum_w = np.bincount(groups, weights=hw, minlength=k)
    sum_r = np.bincount(groups, weights=hw * u / np.sqrt(w), minlength=k)
    keep = sum_w > 0
    if tau > 0:
        sw = sum_w[keep]
        u_group = sum_r[keep] / sw / np.sqrt(1.0 / sw + tau * tau)
    else:
        u_group = sum_r[keep] / np.sqrt(sum_w[keep])  # mean residual x sqrt(its weight)
    # Each group's residual counts once (its Huber weight is already in sum_w).
    return math.sqrt((1.0 + float(np.sum(u_group**2))) / (1.0 + max(int(keep.sum()) - 2, 0)))


def _solve(
    x: FloatArray,
    y: FloatArray,
    w: FloatArray,
    lam: FloatArray,
    mu: FloatArray,
    b_sign: int,
    shared: tuple[npt.NDArray[np.intp], int, float] | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Penalised weighted least squares; with a sign constraint on b, b = 0 if violated.
    ``shared`` = (group of each point, number of groups, tau): generalised least
    squares with covariance ``diag(1 / w) + tau**2`` within each group, whose inverse is
    ``diag(w) - c_g (w 1)(w 1)^T`` with ``c_g = tau**2 / (1 + tau**2 W_g)``
    (Sherman-Morrison), so the normal equations lose ``c_g s_g s_g^T`` per group, with
    ``s_g`` the group's weighted sums of the columns."""
    a_mat = (x.T * w) @ x + lam
    rhs = (x.T * w) @ y + lam @ mu
    if shared is not None:
        groups, k, tau = shared
        sums = np.column_stack(
            [np.bincount(groups, weights=w * col, minlength=k) for col in x.T]
        )  # s_g, one row per group
        c = tau * tau / (1.0 + tau * tau * sums[:, 0])  # sums[:, 0] = W_g (x's first column is 1)
        a_mat = a_mat - (sums.T * c) @ sums
        rhs = rhs - (sums.T * c) @ np.bincount(groups, weights=w * y, minlength=k)
    det = a_mat[0, 0] * a_mat[1, 1] - a_mat[0, 1] * a_mat[1, 0]
    if abs(det) > 1e-12 * max(abs(a_mat[0, 0] * a_mat[1, 1]), 1e-300):
        # 2 x 2: the closed-form inverse (much cheaper than an SVD per iteration).
        cov = np.array([[a_mat[1, 1], -a_mat[0, 1]], [-a_mat[1, 0], a_mat[0, 0]]]) / det
    else:
        cov = np.linalg.pinv(a_mat)
    theta = cov @ rhs
    if b_sign and theta[1] * b_sign < 0:
        # Constrained optimum on the boundary b = 0: refit a alone.
        a_only = a_mat[0, 0]
        theta = np.array([rhs[0] / a_only if a_only > 0 else mu[0], 0.0])
        cov = np.array([[1.0 / a_only if a_only > 0 else np.inf, 0.0], [0.0, cov[1, 1]]])
    return np.asarray(theta, dtype=np.float64), np.asarray(cov, dtype=np.float64)


def soh_pct_from_capacity_ah(
    capacity_ah: npt.ArrayLike, rated_capacity_ah: npt.ArrayLike
) -> FloatArray:
    """Capacity-based state of health.

    Parameters
    ----------
    capacity_ah : float or array
        Measured usable capacity. [Ah]
    rated_capacity_ah : float or array
        Rated (nameplate) capacity. [Ah]

    Returns
    -------
    numpy.ndarray
        :math:`SoH = 100 \\, Q / Q_{rated}`. [%]
    """
    out: FloatArray = (
        100.0
        * np.asarray(capacity_ah, dtype=np.float64)
        / np.asarray(rated_capacity_ah, dtype=np.float64)
    )
    return out


#: A step in a trend is accepted when it lowers the Bayesian information criterion by
#: more than this: "very strong" evidence on the scale of Kass & Raftery 1995
#: (J. Am. Stat. Assoc. 90, 773-795, section 3.2: 2 ln B > 10).
STEP_MIN_BIC_DROP = 10.0


@dataclass(frozen=True, slots=True)
class StepTrend:
    """Fit of ``y = a + b * t**exponent + c * [t > t_step_years]`` (``fit_step_trend``).

    Attributes
    ----------
    a, b, c : float
        Value when new, ageing coefficient and the step's height (units of y).
    t_step_years : float
        Age at which the step happened (midway between the readings either side). [years]
    cov : tuple of float
        Covariance of ``(a, b, c)``, row by row (9 values).
    exponent : float
        Power of time. [-]
    bic_drop : float
        How much the step lowers the Bayesian information criterion against the same
        trend without a step (positive = better). [-]
    """

    a: float
    b: float
    c: float
    t_step_years: float
    cov: tuple[float, ...]
    exponent: float
    bic_drop: float

    def growth(self, t_years: float) -> tuple[float, float]:
        """Rise since new at ``t_years`` (``b t**p`` plus the step once past it) and its
        one-sigma uncertainty. [units of y]"""
        x = max(t_years, 0.0) ** self.exponent
        h = 1.0 if t_years > self.t_step_years else 0.0
        cv = np.asarray(self.cov).reshape(3, 3)
        g = np.array([0.0, x, h])
        return self.b * x + self.c * h, float(np.sqrt(max(float(g @ cv @ g), 0.0)))


def fit_step_trend(
    t_years: npt.ArrayLike,
    y: npt.ArrayLike,
    sigma: npt.ArrayLike,
    *,
    exponent: float,
    min_side: int = 8,
) -> StepTrend | None:
    r"""The best single upward step added to a power-law trend (a change point).

    Gradual ageing follows the semi-empirical laws (``y = a + b t^p``); a fault such as
    a cell whose resistance jumps (a failing weld or tab contact) is a step the power law
    cannot bend to: fitted anyway, it pulls the value when new down and misplaces the
    value now, so the growth comes out wrong both ends. This fits
    :math:`y = a + b t^p + c\,H(t - t_s)` for every split of the (time-ordered) data with
    at least ``min_side`` estimates either side, by weighted least squares.

    Parameters
    ----------
    t_years : array
        Age at each estimate, ascending. [years]
    y : array
        Estimates, e.g. resistance. [unit of y]
    sigma : array
        Their one-sigma uncertainties (weights 1/sigma^2). [unit of y]
    exponent : float
        Power of time (``RESISTANCE_EXPONENT``). [-]
    min_side : int
        Estimates needed before and after the step.

    Returns
    -------
    StepTrend or None
        The split with the smallest residual among those with ``b >= 0`` and ``c > 0``
        (resistance only grows), with its ``bic_drop``; None when no split qualifies.
        Callers use it only when ``bic_drop > STEP_MIN_BIC_DROP``.

    Notes
    -----
    All splits are solved at once from cumulative sums of the normal equations.
    :math:`\Delta BIC = n \ln(SSR_0 / SSR_1) - 2 \ln n` (two more parameters: the
    step's height and time; Schwarz 1978, Ann. Stat. 6, 461-464), with :math:`SSR_0`
    the weighted residual of the trend without a step (``b >= 0``). Covariance:
    :math:`(X^T W X)^{-1} SSR_1 / (n - 3)`.
    """
    _, t, yv, sg = _usable_points(t_years, y, sigma)
    n = int(t.size)
    if n < 2 * min_side or np.any(np.diff(t) < 0):
        return None
    x = t**exponent
    w = 1.0 / sg**2
    sums = np.stack([w, w * x, w * x * x, w * yv, w * x * yv])  # (5, n)
    tot = sums.sum(axis=1)
    # Sums over the estimates after each split k (data k.. n-1), k = min_side..n-min_side.
    after = np.cumsum(sums[:, ::-1], axis=1)[:, ::-1]
    ks = np.arange(min_side, n - min_side + 1)
    ks = ks[t[ks] > t[ks - 1]]  # a step needs time between its two sides
    if ks.size == 0:
        return None
    sw, swx, swxx, swy, swxy = tot
    hw, hwx, _, hwy, _ = after[:, ks]
    mats = np.empty((ks.size, 3, 3))
    mats[:, 0, 0], mats[:, 0, 1], mats[:, 0, 2] = sw, swx, hw
    mats[:, 1, 0], mats[:, 1, 1], mats[:, 1, 2] = swx, swxx, hwx
    mats[:, 2, 0], mats[:, 2, 1], mats[:, 2, 2] = hw, hwx, hw
    rhs = np.stack([np.full(ks.size, swy), np.full(ks.size, swxy), hwy], axis=1)
    det = np.linalg.det(mats)
    good = np.abs(det) > 1e-12 * np.abs(mats[:, 0, 0] * mats[:, 1, 1] * mats[:, 2, 2])
    if not good.any():
        return None
    ks, mats, rhs = ks[good], mats[good], rhs[good]
    theta = np.linalg.solve(mats, rhs[:, :, None])[:, :, 0]
    swyy = float(np.sum(w * yv * yv))
    ssr = swyy - np.sum(theta * rhs, axis=1)
    valid = (theta[:, 1] >= 0) & (theta[:, 2] > 0)
    if not valid.any():
        return None
    i = int(np.flatnonzero(valid)[np.argmin(ssr[valid])])
    ssr1 = max(float(ssr[i]), 1e-300)
    ssr0 = _ssr_without_step(sw, swx, swxx, swy, swxy, swyy)
    k = int(ks[i])
    cov = np.linalg.inv(mats[i]) * ssr1 / max(n - 3, 1)
    return StepTrend(
        a=float(theta[i, 0]),
        b=float(theta[i, 1]),
        c=float(theta[i, 2]),
        t_step_years=float((t[k - 1] + t[k]) / 2.0),
        cov=tuple(float(v) for v in cov.ravel()),
        exponent=exponent,
        bic_drop=n * math.log(max(ssr0, 1e-300) / ssr1) - 2.0 * math.log(n),
    )


def _ssr_without_step(
    sw: float, swx: float, swxx: float, swy: float, swxy: float, swyy: float
) -> float:
    """Weighted residual of ``a + b x`` with ``b >= 0`` from its sums (a alone if the
    free optimum has ``b < 0``)."""
    det = sw * swxx - swx * swx
    if det > 1e-12 * sw * swxx:
        a = (swxx * swy - swx * swxy) / det
        b = (sw * swxy - swx * swy) / det
        if b >= 0:
            return float(swyy - a * swy - b * swxy)
    return float(swyy - swy * swy / sw)
