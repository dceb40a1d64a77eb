"""The fleet report's charts, as matplotlib figures sized in points for an A5 page.

Each function takes plain numbers (from ``reports._inputs``) and returns a figure that
``reports._mplrender`` paints into the PDF as vector graphics. Every axis is labelled
with its unit. (The vehicle report's charts, drawn for every vehicle of a fleet, are
painted directly onto the page by ``reports._vcharts``.) Call them inside
``chart_style()`` so the report's fonts and sizes apply.

Only imported by the report builders (it imports matplotlib).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from reports._inputs import FloatArray, VehicleRow
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
    if lines:
        # Above the plot area, in the top margin, where no bar can reach: beside the
        # (lowest) line, running away from the nearer edge.
        left, right = ax.get_xlim()
        right_half = lines[0] > (left + right) / 2
        ax.annotate(
            f"warranty {' / '.join(f'{m:g}' for m in lines)} %",
            (lines[0], 1),
            xycoords=("data", "axes fraction"),
            xytext=(-3 if right_half else 3, 4),
            textcoords="offset points",
            ha="right" if right_half else "left",
            va="bottom",
            color=WARRANTY_COLOUR,
            fontsize=8,
            annotation_clip=False,
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
    # The intervals as the table shows them, clipped to what a pack can hold.
    lo = np.array([r.soh_shown.low for r in rows])
    hi = np.array([r.soh_shown.high for r in rows])
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


def finite(values: Sequence[float] | FloatArray) -> list[float]:
    """The finite values of a sequence."""
    return [float(x) for x in values if math.isfinite(x)]
