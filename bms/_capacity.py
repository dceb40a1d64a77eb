"""Capacity from charge counted between two rested open-circuit-voltage points.

Pure functions on numbers and arrays (no files, no clock). The runner
(``bms._analytics``) finds the rest points and the charge in between; these functions
turn them into a capacity and its uncertainty.

Method (``shared/science.md`` section 6): the state of charge at the end of a rest of at
least 3 h is read off the chemistry's OCV curve (Theuerkauf & Swan 2022, 3 h rest is
enough for NMC532 and LFP); the charge counted in between, corrected for the current
sensor's offset, divided by the SoC difference is the usable capacity. The relative error
is about sqrt(2) * sigma_SoC / delta_SoC, so only wide windows (>= 40-50 %) are used, and on
LFP only points where the OCV curve is steep (near the ends of its plateau).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from bms._chargestep import (
    HYSTERESIS_RATES,
    STEP_CENTRE_PCT,
    STEP_LATEST_START_PCT,
    STEP_WINDOW_PCT,
)
from bms._ocv import ocv_v_from_soc_pct, soc_pct_from_ocv_v

FloatArray = npt.NDArray[np.float64]

#: Rest-voltage uncertainty per chemistry [mV]: measurement and incomplete relaxation for
#: NMC (rough, a few mV). For LFP the hysteresis branch is removed
#: (``rest_soc_pct_from_cell_mv``: the direction of the current before the rest says
#: which branch the OCV sits on), what remains is how far the true half gap is from the
#: 10 mV assumed: the SimSES Sony LFP model's 17-30 mV gap and ACCURE's 5-25 mV
#: (science.md section 1) put the half gap within about 10 +- 5 mV. With this sigma
#: only the steep parts of the LFP curve pass ``max_soc_sigma_pct`` (below ~30 % SoC,
#: 75-80 % and above ~95 %); the plateau (0.5-1.6 mV per %) never does.
REST_VOLTAGE_SIGMA_MV: dict[str, float] = {"nmc": 3.0, "lfp": 10.0}

#: Half the charge/discharge OCV gap [mV]: LFP 17-30 mV gap in the SimSES Sony LFP model,
#: 5-25 mV after long rests (ACCURE), science.md section 1; NMC hysteresis is negligible.
OCV_HYSTERESIS_HALF_MV: dict[str, float] = {"nmc": 0.0, "lfp": 10.0}

#: Capacity measured away from 25 degC differs; rough 0.3 % per K as a sigma term
#: (rough: typical Li-ion capacity-temperature sensitivity near room temperature).
CAPACITY_TEMP_SIGMA_PCT_PER_K = 0.3

#: Self-discharge that the current sensor does not see, as a sigma term: 1-2 % per month
#: for a healthy cell (Battery University BU-802b, science.md 3), i.e. ~0.05 %/day of
#: capacity, counted as its own size. [% of capacity per day]
SELF_DISCHARGE_SIGMA_PCT_PER_DAY = 0.05


def _arr(x: npt.ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def capacity_ah_from_soc_window(
    charge_ah: npt.ArrayLike, soc_start_pct: npt.ArrayLike, soc_end_pct: npt.ArrayLike
) -> FloatArray:
    r"""Usable capacity from charge counted between two points of known SoC.

    Parameters
    ----------
    charge_ah : float or array
        Charge counted from the first point to the second, positive into the battery,
        already corrected for the current-sensor offset. [Ah]
    soc_start_pct, soc_end_pct : float or array
        State of charge at the two rest points, read off the OCV curve. [%]

    Returns
    -------
    numpy.ndarray
        Capacity; NaN where the SoC did not move or moved against the charge. [Ah]

    Notes
    -----
    :math:`Q = \Delta q / ((z_{end} - z_{start}) / 100)` (coulomb counting between two
    OCV-anchored points, Plett 2015, *Battery Management Systems Vol. I*, ch. 3).
    """
    dq = _arr(charge_ah)
    dz = (_arr(soc_end_pct) - _arr(soc_start_pct)) / 100.0
    with np.errstate(divide="ignore", invalid="ignore"):
        q = dq / dz
    out: FloatArray = np.where((dz != 0) & (q > 0), q, np.nan)
    return out


def soc_sigma_pct_from_ocv(
    soc_pct: npt.ArrayLike, chemistry: str, voltage_sigma_mv: float | None = None
) -> FloatArray:
    """Uncertainty of a SoC read off the OCV curve, from the local curve slope.

    Parameters
    ----------
    soc_pct : float or array
        SoC read off the curve. [%]
    chemistry : str
        ``'nmc'`` or ``'lfp'``.
    voltage_sigma_mv : float, optional
        Rest-voltage uncertainty; default ``REST_VOLTAGE_SIGMA_MV[chemistry]``. [mV]

    Returns
    -------
    numpy.ndarray
        One-sigma SoC uncertainty. [%]

    Notes
    -----
    :math:`\\sigma_z \\approx \\sigma_V / (dV_{oc}/dz)`, evaluated as half the SoC span
    of :math:`V_{oc}(z) \\pm \\sigma_V` on the curve (exact across its knees); on the LFP
    plateau (0.5 mV/%) a 10 mV sigma is 20 % SoC, which is why only its steep ends are
    usable (science.md 1, 6).
    """
    sigma_mv = REST_VOLTAGE_SIGMA_MV[chemistry] if voltage_sigma_mv is None else voltage_sigma_mv
    soc = np.clip(_arr(soc_pct), 0.0, 100.0)
    ocv_v = ocv_v_from_soc_pct(soc, chemistry)
    # Half the SoC span that a +-sigma voltage error maps to: exact across the knees.
    hi = soc_pct_from_ocv_v(ocv_v + sigma_mv / 1000.0, chemistry)
    lo = soc_pct_from_ocv_v(ocv_v - sigma_mv / 1000.0, chemistry)
    out: FloatArray = np.maximum((hi - lo) / 2.0, 1e-3)
    return out


def capacity_rel_sigma(
    *,
    soc_start_pct: npt.ArrayLike,
    soc_end_pct: npt.ArrayLike,
    soc_sigma_start_pct: npt.ArrayLike,
    soc_sigma_end_pct: npt.ArrayLike,
    offset_sigma_a: npt.ArrayLike,
    duration_h: npt.ArrayLike,
    capacity_ah: npt.ArrayLike,
    temp_c: npt.ArrayLike,
) -> FloatArray:
    r"""Relative one-sigma uncertainty of a rest-point capacity estimate.

    Parameters
    ----------
    soc_start_pct, soc_end_pct : float or array
        SoC at the two rest points. [%]
    soc_sigma_start_pct, soc_sigma_end_pct : float or array
        Their uncertainties (``soc_sigma_pct_from_ocv``). [%]
    offset_sigma_a : float or array
        Uncertainty of the current-sensor offset after correction. [A]
    duration_h : float or array
        Time between the two points (the offset error integrates over it). [h]
    capacity_ah : float or array
        Capacity (rated or estimated) to express the offset error relative to. [Ah]
    temp_c : float or array
        Mean temperature of the two rest points. [degC]

    Returns
    -------
    numpy.ndarray
        Relative uncertainty (0.02 = 2 %). [-]

    Notes
    -----
    Independent terms added in quadrature (science.md 6.1, 6.4), each a charge error
    over the charge of the window :math:`Q \Delta z`:
    :math:`(\sigma_Q/Q)^2 = (\sigma_{z1}^2 + \sigma_{z2}^2)/\Delta z^2
    + (\sigma_I t / (Q \Delta z))^2 + (s_{sd} t / \Delta z)^2 + (k_T |T - 25|)^2`
    with :math:`s_{sd}` the unseen self-discharge (``SELF_DISCHARGE_SIGMA_PCT_PER_DAY``).
    """
    dz = np.maximum(np.abs(_arr(soc_end_pct) - _arr(soc_start_pct)), 1e-9)
    soc_term = np.hypot(_arr(soc_sigma_start_pct), _arr(soc_sigma_end_pct)) / dz
    offset_term = _arr(offset_sigma_a) * _arr(duration_h) / (_arr(capacity_ah) * dz / 100.0)
    leak_term = SELF_DISCHARGE_SIGMA_PCT_PER_DAY * _arr(duration_h) / 24.0 / dz
    temp_term = CAPACITY_TEMP_SIGMA_PCT_PER_K / 100.0 * np.abs(_arr(temp_c) - 25.0)
    out: FloatArray = np.sqrt(soc_term**2 + offset_term**2 + leak_term**2 + temp_term**2)
    return out


def current_offset_a(rest_current_a: npt.ArrayLike) -> tuple[float, float]:
    """Current-sensor offset and its uncertainty from readings at rest.

    Parameters
    ----------
    rest_current_a : array
        Measured current while the pack is known to rest (true current about zero). [A]

    Returns
    -------
    tuple of float
        ``(offset_a, sigma_a)``: the median (robust to the odd wake-up reading) and its
        standard error, 1.2533 * 1.4826 * MAD / sqrt(n); ``(0.0, inf)`` without readings.
        [A]

    Notes
    -----
    science.md 6.4: an offset integrates (0.1 A over 10 h = 1 Ah), so it is measured at
    zero-current periods and subtracted.
    """
    x = _arr(rest_current_a)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 0.0, float("inf")
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med))) * 1.4826
    return med, 1.2533 * mad / np.sqrt(x.size)


#: Hysteresis flips assumed: the branch moves by 1 - 1/e per this share of capacity
#: charged or discharged, slowest and typical (the rates ``bms._chargestep`` tries,
#: e-folds of 0.9-10 % of capacity, and their geometric middle, 3 %; the one-state
#: model of Plett 2015 ch. 2). [-]
HYSTERESIS_SLOWEST_EFOLD = 1.0 / min(HYSTERESIS_RATES)
HYSTERESIS_TYPICAL_EFOLD = 1.0 / math.sqrt(min(HYSTERESIS_RATES) * max(HYSTERESIS_RATES))


def hysteresis_offset_mv(
    chemistry: str, direction: int, moved_share: float | None = None
) -> tuple[float, float]:
    r"""Where the rested OCV sits against the mean curve, from the current before the rest.

    Parameters
    ----------
    chemistry : str
        ``'nmc'`` or ``'lfp'``.
    direction : int
        Sign of the current before the rest: +1 after charging, -1 after discharging,
        0 unknown.
    moved_share : float, optional
        Charge moved in that direction since the current last ran the other way, as a
        share of capacity; None: long enough for the branch to have flipped.

    Returns
    -------
    tuple of float
        Offset of the OCV from the mean curve and its uncertainty from the branch. [mV]

    Notes
    -----
    One-state hysteresis (Plett 2015, *Battery Management Systems Vol. I*, ch. 2): the
    state :math:`h` moves towards the sign :math:`d` of the current, by
    :math:`1 - e^{-\Delta q / (e C)}` of the way per charge :math:`\Delta q` (e-fold share
    :math:`e`), and the OCV sits :math:`h` half gaps (``OCV_HYSTERESIS_HALF_MV``) off the
    mean curve. From the other branch, after a share :math:`s` moved,
    :math:`h = d (1 - 2 e^{-s / e})`: taken at the typical flip
    (``HYSTERESIS_TYPICAL_EFOLD``); the uncertainty reaches the slowest flip
    (``HYSTERESIS_SLOWEST_EFOLD``) and :math:`d` (flipped already, or never on the other
    branch). A short drive after a charge (1 % of capacity) leaves an LFP cell near its
    charge branch: read as the discharge branch, a rest at 87 % on the plateau read 95 %,
    where the curve is steep enough to give a sigma of 0.3 %, and a simulated taxi got
    capacity estimates of 15 % SoH from such rests. Direction unknown: anywhere within
    half a gap.
    """
    half = OCV_HYSTERESIS_HALF_MV[chemistry]
    if direction == 0:
        return 0.0, half
    if moved_share is None:
        return direction * half, 0.0
    s = max(moved_share, 0.0)
    typical = 1.0 - 2.0 * math.exp(-s / HYSTERESIS_TYPICAL_EFOLD)
    slowest = 1.0 - 2.0 * math.exp(-s / HYSTERESIS_SLOWEST_EFOLD)
    return direction * typical * half, max(typical - slowest, 1.0 - typical) * half


def rest_soc_pct_from_cell_mv(
    cell_mv: npt.ArrayLike, chemistry: str, direction: int = 0, moved_share: float | None = None
) -> FloatArray:
    """State of charge of each cell from its voltage at the end of a rest.

    Parameters
    ----------
    cell_mv : array
        Rested cell voltages. [mV]
    chemistry : str
        ``'nmc'`` or ``'lfp'``.
    direction : int
        Sign of the current before the rest: +1 after charging, -1 after discharging,
        0 unknown. The OCV then sits on the upper or lower hysteresis branch, up to half
        the gap (``OCV_HYSTERESIS_HALF_MV``) away from the mean curve, which is removed
        (``hysteresis_offset_mv``, whose uncertainty the caller adds).
    moved_share : float, optional
        Charge moved in that direction before the rest, as a share of capacity
        (``hysteresis_offset_mv``); None: the branch had flipped.

    Returns
    -------
    numpy.ndarray
        SoC per cell, 0..100. [%]
    """
    offset_mv, _ = hysteresis_offset_mv(chemistry, direction, moved_share)
    ocv_v = (_arr(cell_mv) - offset_mv) / 1000.0
    out: FloatArray = soc_pct_from_ocv_v(ocv_v, chemistry)
    return out


#: Readable SoC bands closer than this are reported as one (``readable_soc_bands_pct``). [%]
_BAND_GAP_PCT = 1.0


def readable_soc_bands_pct(
    chemistry: str, max_sigma_pct: float, voltage_sigma_mv: float | None = None
) -> tuple[tuple[float, float], ...]:
    """SoC bands where a rest's voltage reads the SoC within ``max_sigma_pct``.

    Parameters
    ----------
    chemistry : str
        ``'nmc'`` or ``'lfp'``.
    max_sigma_pct : float
        Largest SoC uncertainty a rest point may have to be used. [%]
    voltage_sigma_mv : float, optional
        Rest-voltage uncertainty; default ``REST_VOLTAGE_SIGMA_MV[chemistry]``. [mV]

    Returns
    -------
    tuple of (float, float)
        ``(low, high)`` SoC bands, ascending, on a 0.5 % grid (``soc_sigma_pct_from_ocv``
        at each point); bands less than ``_BAND_GAP_PCT`` apart are one (the LFP table's
        10-15 % segment misses 3 % by a hair near 13.5 %, between readable points). [%]
    """
    grid = np.linspace(0.0, 100.0, 201)
    ok = soc_sigma_pct_from_ocv(grid, chemistry, voltage_sigma_mv) <= max_sigma_pct
    edges = np.flatnonzero(np.diff(np.concatenate(([0], ok.astype(np.int8), [0]))))
    bands: list[tuple[float, float]] = []
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        lo, hi = float(grid[a]), float(grid[b - 1])
        if bands and lo - bands[-1][1] <= _BAND_GAP_PCT:
            bands[-1] = (bands[-1][0], hi)
        else:
            bands.append((lo, hi))
    return tuple(bands)


def missing_capacity_evidence(
    chemistry: str,
    soc_min_pct: float,
    soc_max_pct: float,
    *,
    max_sigma_pct: float,
    min_window_pct: float,
) -> str:
    """What a vehicle's SoC range lacked for a capacity estimate, and what would give one.

    Parameters
    ----------
    chemistry : str
        ``'nmc'`` or ``'lfp'``.
    soc_min_pct, soc_max_pct : float
        Lowest and highest SoC the BMS reported over the period in question. [%]
    max_sigma_pct : float
        Largest SoC uncertainty of a usable rest point (``readable_soc_bands_pct``). [%]
    min_window_pct : float
        Smallest SoC difference between the two points of an estimate. [%]

    Returns
    -------
    str
        One clause for a fleet manager: the range, whether it could have given an
        estimate at all (two rest points in the readable bands ``min_window_pct`` apart,
        or, for LFP, a constant-current charge across the OCV step,
        ``bms._chargestep``, paired with such a rest), and if not, the use that would.
    """
    lo, hi = sorted((float(soc_min_pct), float(soc_max_pct)))
    bands = readable_soc_bands_pct(chemistry, max_sigma_pct)
    seen = [(max(a, lo), min(b, hi)) for a, b in bands if max(a, lo) <= min(b, hi)]
    pair = bool(seen) and max(b for _, b in seen) - min(a for a, _ in seen) >= min_window_pct
    step = STEP_WINDOW_PCT.get(chemistry)
    start = STEP_LATEST_START_PCT.get(chemistry, 0.0)
    centre = STEP_CENTRE_PCT.get(chemistry, 0.0)
    anchor = (
        step is not None
        and lo <= start
        and hi >= step[1]
        and any(abs(x - centre) >= min_window_pct for band in seen for x in band)
    )
    span = f"BMS SoC {lo:.0f}-{hi:.0f} %"
    if pair or anchor:
        checks = "a rest long enough at a readable SoC"
        if step is not None:
            checks += ", a clean fit of a charge across the OCV step"
        return (
            f"{span}, which could give an estimate, but none passed its checks ({checks}, "
            "no data gap in the charge counted between two points)"
        )
    where = (
        "at any SoC"
        if bands == ((0.0, 100.0),)
        else "only at " + " and ".join(f"{a:.0f}-{b:.0f} %" for a, b in bands)
    )
    need = (
        f"{span}: a rest reads an {chemistry.upper()} pack's SoC {where} "
        f"(within {max_sigma_pct:g} %) and an estimate needs two such points at least "
        f"{min_window_pct:g} % apart"
    )
    if step is None:
        return f"{need}; two rests that far apart would give one"
    # the rest after the charge pairs with its anchor: the first readable SoC above it
    full = min((a for a, _ in bands if a >= step[1]), default=100.0)
    return (
        f"{need}, or a constant-current charge across the {step[0]:.0f}-{step[1]:.0f} % "
        f"OCV step started at {start:.0f} % or below; a charge from {start:.0f} % or "
        f"below to {math.ceil(full):.0f} % or more, then a rest, would give one"
    )
