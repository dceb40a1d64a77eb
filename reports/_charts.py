"""The charts of the reports, as matplotlib figures sized in points for an A5 page.

Each function takes plain numbers (from ``reports._inputs``) and returns a figure that
``reports._mplrender`` paints into the PDF as vector graphics. Every axis is labelled
with its unit. Call them inside ``chart_style()`` so the report's fonts and sizes apply.

Only imported by the report builders (it imports matplotlib).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import StepPatch
from matplotlib.ticker import MaxNLocator

from reports._inputs import TEMP_BANDS, FloatArray, VehicleData, VehicleRow
from reports._mplrender import CHART_RC, new_figure

VERDICT_COLOURS = {
    "claim_eligible": "#c0392b",
    "at_risk": "#e67e22",
    "ok": "#2e8b57",
    "insufficient_data": "#8c8c8c",
    "out_of_coverage": "#8c8c8c",
}
WARRANTY_COLOUR = "#c0392b"
SOH_COLOUR = "#1f5fa8"


@contextlib.contextmanager
def chart_style() -> Iterator[None]:
    """The report's matplotlib settings (fonts, sizes, spines)."""
    with mpl.rc_context(CHART_RC):
        yield


def _margins(
    fig: Figure, left: float = 44, bottom: float = 34, right: float = 10, top: float = 20
) -> None:
    """Subplot margins in points [pt]."""
    w, h = fig.bbox.width, fig.bbox.height
    fig.subplots_adjust(left=left / w, bottom=bottom / h, right=1 - right / w, top=1 - top / h)


def _fixed_labels(fig: Figure, ax: Axes, x_below: float = 20, y_left: float = 30) -> None:
    """Axis labels at fixed distances [pt] from the axes.

    Saves matplotlib measuring every tick label to place them (a third of a vehicle
    chart's drawing time); the margins leave room for tick labels of up to 4 digits.
    """
    box = ax.get_position()
    width_pt, height_pt = box.width * fig.bbox.width, box.height * fig.bbox.height
    ax.xaxis.set_label_coords(0.5, -x_below / height_pt)
    ax.yaxis.set_label_coords(-y_left / width_pt, 0.5)


def warranty_steps(thresholds: Sequence[tuple[float, float, float]]) -> list[tuple[float, float]]:
    """(limit, min SoH) pairs of a policy's thresholds, sorted by limit."""
    return sorted((limit, soh) for limit, _, soh in thresholds)


def soh_distribution(
    rows: Sequence[VehicleRow], min_soh_pcts: Sequence[float], width: float
) -> Figure:
    """Histogram of the fleet's SoH [%] with the warranty minimum(s)."""
    fig = new_figure(width, 150)
    ax = fig.add_subplot()
    soh = np.array([r.soh_pct for r in rows], dtype=np.float64)
    soh = soh[np.isfinite(soh)]
    lines = [m for m in sorted(set(min_soh_pcts)) if math.isfinite(m)]
    if soh.size:
        lo = math.floor(min(soh.min(), *(lines or [soh.min()])) - 1)
        hi = math.ceil(max(soh.max(), 100.0 if soh.max() > 97 else soh.max()) + 1)
        bins = np.arange(lo, hi + 1, 1.0 if hi - lo <= 40 else 2.0).tolist()
        ax.hist(soh, bins=bins, color=SOH_COLOUR, edgecolor="white", linewidth=0.5)
    else:
        ax.text(0.5, 0.5, "no SoH estimates yet", ha="center", va="center", transform=ax.transAxes)
    for m in lines:
        ax.axvline(m, color=WARRANTY_COLOUR, linestyle="--", linewidth=1.2)
        ax.annotate(
            f"warranty {m:g} %",
            (m, 1),
            xycoords=("data", "axes fraction"),
            xytext=(3, -10),
            textcoords="offset points",
            color=WARRANTY_COLOUR,
            fontsize=8,
        )
    ax.set_xlabel("state of health, SoH [%]")
    ax.set_ylabel("vehicles [count]")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _margins(fig)
    return fig


def soh_vs_age_km(
    rows: Sequence[VehicleRow],
    thresholds: Sequence[tuple[float, float, float]],
    width: float,
) -> Figure:
    """SoH [%] with its 90 % interval against age [years] and odometer [1000 km].

    ``thresholds`` are the policies' (years, km, min SoH %); the warranty line is the
    minimum SoH, drawn up to the age and odometer limit of each threshold.
    """
    fig = new_figure(width, 330)
    ax_age = fig.add_subplot(2, 1, 1)
    ax_km = fig.add_subplot(2, 1, 2, sharey=ax_age)
    soh = np.array([r.soh_pct for r in rows])
    lo = np.array([r.soh_low_pct for r in rows])
    hi = np.array([r.soh_high_pct for r in rows])
    age = np.array([r.age_years for r in rows])
    km = np.array([r.odometer_km for r in rows]) / 1000.0
    ok = np.isfinite(soh)
    status = np.array([r.warranty_status for r in rows], dtype=object)
    for ax, x in ((ax_age, age), (ax_km, km)):
        for verdict, colour in VERDICT_COLOURS.items():
            m = ok & np.isfinite(x) & (status == verdict)
            if not m.any():
                continue
            # The intervals as one polyline broken by NaNs, then the points.
            xs = np.repeat(x[m], 3)
            ys = np.column_stack([lo[m], hi[m], np.full(m.sum(), np.nan)]).ravel()
            xs[2::3] = np.nan
            ax.plot(xs, ys, color=colour, linewidth=0.8, alpha=0.6)
            ax.plot(x[m], soh[m], "o", color=colour, markersize=3, markeredgewidth=0, zorder=3)
    for years, limit_km, min_soh in thresholds:
        ax_age.hlines(min_soh, 0, years, colors=WARRANTY_COLOUR, linestyles="--", linewidth=1.2)
        ax_age.vlines(years, min_soh - 3, min_soh + 3, colors=WARRANTY_COLOUR, linewidth=1.2)
        ax_km.hlines(
            min_soh, 0, limit_km / 1000.0, colors=WARRANTY_COLOUR, linestyles="--", linewidth=1.2
        )
        ax_km.vlines(
            limit_km / 1000.0, min_soh - 3, min_soh + 3, colors=WARRANTY_COLOUR, linewidth=1.2
        )
    ax_age.set_xlabel("age [years]")
    ax_km.set_xlabel("odometer [1000 km]")
    for ax in (ax_age, ax_km):
        ax.set_ylabel("SoH [%]")
        ax.set_xlim(left=0)
    if thresholds:
        ax_age.set_title(
            "dashed: warranty minimum SoH until the age / km limit",
            fontsize=8,
            loc="left",
            color="#5c5c5c",
        )
    _margins(fig, top=22)
    fig.subplots_adjust(hspace=0.45)
    return fig


#: Vehicle chart templates of this process, by (chart, size): figures, axes and tick
#: objects are built once and refilled for each vehicle (building an Axes and its ticks
#: is most of matplotlib's cost). A refilled figure draws exactly like a fresh one.
_TEMPLATES: dict[tuple[str, float, float], tuple[Figure, tuple[Axes, ...]]] = {}


def _template(
    kind: str, width: float, height: float, build: Callable[[Figure], tuple[Axes, ...]]
) -> tuple[Figure, tuple[Axes, ...]]:
    """A cached figure with its axes, emptied of data artists and ready to refill."""
    key = (kind, width, height)
    if key not in _TEMPLATES:
        fig = new_figure(width, height)
        _TEMPLATES[key] = (fig, build(fig))
    fig, axes = _TEMPLATES[key]
    for ax in axes:
        for artist in [*ax.lines, *ax.collections, *ax.patches, *ax.texts, *ax.artists]:
            artist.remove()
        ax.containers.clear()
        if ax.legend_ is not None:
            ax.legend_.remove()
        ax.relim()
        ax.set_autoscale_on(True)
        ax.set_prop_cycle(None)
    return fig, axes


def _soh_axes(fig: Figure) -> tuple[Axes, ...]:
    ax = fig.add_subplot()
    ax.set_xlabel("age [years]")
    ax.set_ylabel("SoH [%]")
    _margins(fig)
    _fixed_labels(fig, ax)
    return (ax,)


def soh_history(v: VehicleData, width: float) -> Figure:
    """SoH [%] over age [years]: estimates, daily fit with interval, projection."""
    fig, (ax,) = _template("soh_history", width, 180, _soh_axes)
    r = v.row
    if v.estimate_age_years.size:
        ax.plot(
            v.estimate_age_years,
            v.estimate_soh_pct,
            "o",
            markersize=2.5,
            markeredgewidth=0,
            color="#7f7f7f",
            label="capacity estimates",
            zorder=2,
        )
    m = np.isfinite(v.soh_pct) & np.isfinite(v.soh_age_years)
    if m.any():
        ax.fill_between(
            v.soh_age_years[m],
            v.soh_low_pct[m],
            v.soh_high_pct[m],
            color=SOH_COLOUR,
            alpha=0.2,
            linewidth=0,
        )
        ax.plot(
            v.soh_age_years[m],
            v.soh_pct[m],
            color=SOH_COLOUR,
            linewidth=1.4,
            label="SoH fit of each day (90 % interval)",
        )
    end = r.warranty_end_age_years
    needed = (
        r.age_years,
        end,
        v.soh_new_pct,
        v.fade_pct_per_year_pow,
        v.fade_exponent,
        r.soh_low_pct,
        r.projected_soh_at_warranty_end_low_pct,
    )
    if all(map(math.isfinite, needed)) and end > r.age_years:
        t = np.linspace(r.age_years, end, 40)
        proj = v.soh_new_pct - v.fade_pct_per_year_pow * t**v.fade_exponent
        # Interval half-widths interpolated between today's and the end's, in t**p.
        x0, x1 = r.age_years**v.fade_exponent, end**v.fade_exponent
        f = (t**v.fade_exponent - x0) / (x1 - x0) if x1 > x0 else np.zeros_like(t)
        end_soh = r.projected_soh_at_warranty_end_pct
        end_lo = r.projected_soh_at_warranty_end_low_pct
        end_hi = r.projected_soh_at_warranty_end_high_pct
        below = (r.soh_pct - r.soh_low_pct) * (1 - f) + (end_soh - end_lo) * f
        above = (r.soh_high_pct - r.soh_pct) * (1 - f) + (end_hi - end_soh) * f
        ax.fill_between(t, proj - below, proj + above, color="#e67e22", alpha=0.18, linewidth=0)
        ax.plot(
            t,
            proj,
            color="#e67e22",
            linestyle="--",
            linewidth=1.3,
            label="projection to warranty end",
        )
        ax.plot(
            [end, end], [end_lo, end_hi], color="#e67e22", linewidth=1, marker="_", markersize=6
        )
        ax.plot([end], [end_soh], "o", color="#e67e22", markersize=4)
    if math.isfinite(r.warranty_min_soh_pct):
        ax.axhline(
            r.warranty_min_soh_pct,
            color=WARRANTY_COLOUR,
            linestyle="--",
            linewidth=1.2,
            label=f"warranty minimum {r.warranty_min_soh_pct:g} %",
        )
    if math.isfinite(end):
        ax.axvline(end, color=WARRANTY_COLOUR, linestyle=":", linewidth=1)
    ax.autoscale_view()
    ax.set_xlim(left=0)
    ax.legend(loc="lower left", frameon=False, fontsize=7.5)
    return fig


def _day_ticks(ax: Axes, days: Sequence[str]) -> None:
    n = len(days)
    step = max(1, math.ceil(n / 6))
    idx = list(range(0, n, step))
    ax.set_xticks(idx, [days[i][5:] for i in idx])


def _heatmap_axes(fig: Figure) -> tuple[Axes, ...]:
    ax = fig.add_subplot()
    # 21 levels of 1/10 of the scale each: easier to read than a continuous ramp.
    cmap = mpl.colormaps["RdBu_r"].resampled(21).with_extremes(bad="#dddddd")
    im = ax.imshow(
        np.zeros((2, 2)),
        aspect="auto",
        cmap=cmap,
        interpolation="none",
        origin="lower",
    )
    cb = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    cb.set_label("rest voltage - pack median [mV]")
    ax.set_xlabel("date (UTC, month-day)")
    ax.set_ylabel("cell [index, 0-based]")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _margins(fig, right=8)
    _fixed_labels(fig, ax)
    return (ax,)


def cell_heatmap(v: VehicleData, width: float) -> Figure:
    """Each cell's rest voltage minus its pack median [mV], cell x day."""
    n_cells = v.cell_rest_dev_mv.shape[0]
    height = 150 + min(n_cells, 200) * 0.6
    dev = v.cell_rest_dev_mv
    if not (dev.size and np.isfinite(dev).any()):
        fig = new_figure(width, height)
        ax = fig.add_subplot()
        ax.text(
            0.5,
            0.5,
            "no rest periods with cell data in the window",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_xlabel("date (UTC, month-day)")
        ax.set_ylabel("cell [index, 0-based]")
        _margins(fig, right=8)
        return fig
    fig, (ax,) = _template("cell_heatmap", width, height, _heatmap_axes)
    # Start at the first day with data (a young vehicle, a new lake).
    first = int(np.flatnonzero(np.isfinite(dev).any(axis=0))[0])
    dev, days = dev[:, first:], v.cell_days[first:]
    lim = max(5.0, float(np.nanpercentile(np.abs(dev), 99.5)))
    (im,) = ax.images
    im.set_data(np.ma.masked_invalid(dev))
    im.set_extent((-0.5, dev.shape[1] - 0.5, -0.5, dev.shape[0] - 0.5))
    im.set_clim(-lim, lim)
    flagged = sorted({a.cell for a in v.anomalies if a.cell >= 0 and a.status != "cleared"})
    if flagged:
        ax.plot(
            [dev.shape[1] - 0.5] * len(flagged),
            flagged,
            "<",
            markersize=5,
            color="black",
            clip_on=False,
            zorder=4,
        )
    _day_ticks(ax, days)
    ax.set_xlim(-0.5, dev.shape[1] - 0.5)
    ax.set_ylim(-0.5, dev.shape[0] - 0.5)
    return fig


_TEMP_COLOURS = ("#3b6fb6", "#7fa7d9", "#9ccc9c", "#f2c14e", "#e67e22", "#c0392b")
_SOC_BANDS = ("< 10", "10-90", "> 90")


def _exposure_axes(fig: Figure) -> tuple[Axes, ...]:
    ax_t = fig.add_subplot(1, 2, 1)
    ax_s = fig.add_subplot(1, 2, 2)
    ax_t.set_yticks(range(len(TEMP_BANDS)), [label for _, label in TEMP_BANDS])
    ax_t.set_xlabel("time [h]")
    ax_t.set_ylabel("hottest sensor [degC]")
    ax_s.set_yticks(range(len(_SOC_BANDS)), _SOC_BANDS)
    ax_s.set_xlabel("time [h]")
    ax_s.set_ylabel("state of charge [%]")
    _margins(fig, left=52, top=12)
    fig.subplots_adjust(wspace=0.75)
    _fixed_labels(fig, ax_t, y_left=38)
    _fixed_labels(fig, ax_s, y_left=38)
    return ax_t, ax_s


def exposure(v: VehicleData, width: float) -> Figure:
    """Hours per temperature band [degC] and per SoC band [%] over the window."""
    fig, (ax_t, ax_s) = _template("exposure", width, 150, _exposure_axes)
    temp_h = [float(np.nansum(v.usage.get(col, np.zeros(0)))) for col, _ in TEMP_BANDS]
    ax_t.barh(range(len(TEMP_BANDS)), temp_h, color=_TEMP_COLOURS)
    above = float(np.nansum(v.usage.get("hours_soc_above_90", np.zeros(0))))
    below = float(np.nansum(v.usage.get("hours_soc_below_10", np.zeros(0))))
    covered = float(np.nansum(v.usage.get("covered_hours", np.zeros(0))))
    middle = max(covered - above - below, 0.0)
    ax_s.barh(range(3), [below, middle, above], color=["#c0392b", "#9ccc9c", "#e67e22"])
    for ax in (ax_t, ax_s):
        ax.autoscale_view()
    return fig


def _charging_axes(fig: Figure) -> tuple[Axes, ...]:
    ax = fig.add_subplot()
    ax.set_xlabel("date (UTC, month-day)")
    ax.set_ylabel("charged [Ah]")
    _margins(fig, top=10)
    _fixed_labels(fig, ax)
    return (ax,)


def charging(v: VehicleData, width: float) -> Figure:
    """Charge put in per day [Ah], AC and DC fast charging."""
    fig, (ax,) = _template("charging", width, 160, _charging_axes)
    n = len(v.usage_days)
    if n:
        total = np.nan_to_num(v.usage["ah_charged"])
        dc = np.nan_to_num(v.usage["ah_charged_dc"])
        ac = np.maximum(total - dc, 0.0)
        # One filled step outline per series (not one rectangle per day: fast, small).
        edges = np.arange(n + 1) - 0.5
        # Added as plain artists: the limits are set below, not from the outlines.
        ax.add_artist(StepPatch(ac, edges, fill=True, color="#3b6fb6", label="AC"))
        ax.add_artist(
            # baseline may be an array (matplotlib docs); the stub says float only.
            StepPatch(
                ac + dc,
                edges,
                baseline=ac,  # type: ignore[arg-type]
                fill=True,
                color="#e67e22",
                label="DC fast",
            )
        )
        ax.legend(handles=list(ax.artists), loc="upper left", frameon=False, fontsize=7.5, ncols=2)
        _day_ticks(ax, v.usage_days)
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_ylim(0, max(float((ac + dc).max()), 1.0) * 1.3)
    else:
        ax.set_xticks([])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    return fig


def finite(values: Sequence[float] | FloatArray) -> list[float]:
    """The finite values of a sequence."""
    return [float(x) for x in values if math.isfinite(x)]
