"""The vehicle report's charts, painted straight onto the reportlab canvas.

A vehicle PDF is rendered for every vehicle of a fleet each night, and building and
drawing matplotlib figures was two thirds of its cost (axes, tick and text objects,
layout, renderer calls per artist) for four small, fixed-layout charts. These charts
are drawn here with a handful of PDF path and text operators each: vector lines,
areas and text in Helvetica, the cell heat map as one image with one pixel per cell
and day. Axes, ticks and legends follow the look of the fleet report's matplotlib
charts (``reports._charts``); every axis is labelled with its unit. Colours of the
heat map come from matplotlib's ``RdBu_r`` colour map in 21 levels.

Only imported by ``reports._vehicle_pdf`` (it imports reportlab and matplotlib).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.platypus import Flowable

from reports._inputs import TEMP_BANDS, FloatArray, VehicleData

__all__ = ["cell_heatmap", "charging", "exposure", "soh_history"]

FONT = "Helvetica"
TICK_FONT_PT = 8.5
LABEL_FONT_PT = 9.0
LEGEND_FONT_PT = 7.5
TICK_LEN_PT = 3.5
TICK_PAD_PT = 3.5
#: Helvetica cap height as a share of the font size (AFM CapHeight 718/1000): centres
#: a label on its tick.
CAP = 0.718
INK = "#1a1a1a"
SOH_COLOUR = "#1f5fa8"
WARRANTY_COLOUR = "#c0392b"
PROJECTION_COLOUR = "#e67e22"
ESTIMATE_COLOUR = "#7f7f7f"
NO_DATA_COLOUR = "#dddddd"
_TEMP_COLOURS = ("#3b6fb6", "#7fa7d9", "#9ccc9c", "#f2c14e", "#e67e22", "#c0392b")
_SOC_BANDS = ("< 10", "10-90", "> 90")
_SOC_COLOURS = ("#c0392b", "#9ccc9c", "#e67e22")
#: Colour levels of the heat map: 21 steps of 1/10 of the scale each (easier to read
#: than a continuous ramp).
HEATMAP_LEVELS = 21

Paint = Callable[[Any], None]


def _rgb(colour: str) -> tuple[float, float, float]:
    h = colour.lstrip("#")
    return int(h[0:2], 16) / 255, int(h[2:4], 16) / 255, int(h[4:6], 16) / 255


class VectorChart(Flowable):  # type: ignore[misc]
    """A chart of a fixed size [pt], painted by ``paint(canvas)`` at the lower left."""

    def __init__(self, width: float, height: float, name: str, paint: Paint) -> None:
        super().__init__()
        self.width = width
        self.height = height
        self.name = name
        self.paint = paint

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        return self.width, self.height

    def draw(self) -> None:
        # Mark the chart in the content stream so tests (and people) can find it.
        self.canv._code.append(f"% chart: {self.name}")
        self.canv.saveState()
        self.paint(self.canv)
        self.canv.restoreState()


# ------------------------------------------------------------------------------ ticks


def nice_ticks(lo: float, hi: float, max_intervals: int = 6, integer: bool = False) -> FloatArray:
    """Round tick values in [lo, hi]: steps of 1, 2, 2.5 or 5 x 10^k, at most
    ``max_intervals`` of them (matplotlib's ``MaxNLocator`` rule, simplified)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.array([lo]) if math.isfinite(lo) else np.zeros(0)
    raw = (hi - lo) / max_intervals
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw * (1 - 1e-9))
    if integer:
        step = max(1.0, float(math.ceil(step)))
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return np.arange(first, last + 1, dtype=np.float64) * step


def tick_labels(ticks: FloatArray) -> list[str]:
    """Tick values with as many decimals as their step needs (``-0`` printed as 0)."""
    if ticks.size < 2:
        return [f"{t:g}" for t in ticks]
    step = float(ticks[1] - ticks[0])
    digits = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step / 10.0 ** math.floor(math.log10(step) + 1e-9), 6) == 2.5:
        digits += 1
    return [f"{0.0 if abs(t) < step * 1e-6 else t:.{digits}f}" for t in ticks]


def _padded(values: Sequence[FloatArray | float], margin: float = 0.05) -> tuple[float, float]:
    """Data range of the finite values, widened by ``margin`` of its span each side."""
    flat = np.concatenate([np.ravel(np.asarray(v, dtype=np.float64)) for v in values])
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 1.0
    lo, hi = float(flat.min()), float(flat.max())
    if hi == lo:
        return lo - 1.0, hi + 1.0
    pad = (hi - lo) * margin
    return lo - pad, hi + pad


# ------------------------------------------------------------------------------- axes


class _Axes:
    """A data rectangle on the canvas: data -> points, and drawing in data units."""

    def __init__(
        self,
        canv: Any,
        box: tuple[float, float, float, float],
        xlim: tuple[float, float],
        ylim: tuple[float, float],
    ) -> None:
        self.c = canv
        self.x0, self.y0, self.w, self.h = box
        self.xlim, self.ylim = xlim, ylim
        self.sx = self.w / (xlim[1] - xlim[0])
        self.sy = self.h / (ylim[1] - ylim[0])

    def px(self, x: Any) -> Any:
        return self.x0 + (np.asarray(x, dtype=np.float64) - self.xlim[0]) * self.sx

    def py(self, y: Any) -> Any:
        return self.y0 + (np.asarray(y, dtype=np.float64) - self.ylim[0]) * self.sy

    # -- state ----------------------------------------------------------------------------
    def clip(self) -> None:
        """Clip what follows to the data rectangle (until ``unclip``)."""
        self.c.saveState()
        self.c._code.append(f"{self.x0:.2f} {self.y0:.2f} {self.w:.2f} {self.h:.2f} re W n")

    def unclip(self) -> None:
        self.c.restoreState()

    def note(self, message: str) -> None:
        """``message`` centred in the data rectangle (a chart without data says why)."""
        self.c.setFillColorRGB(*_rgb(INK))
        text(
            self.c,
            self.x0 + self.w / 2,
            self.y0 + self.h / 2 - CAP * LABEL_FONT_PT / 2,
            message,
            LABEL_FONT_PT,
            "centre",
        )

    def _stroke(self, colour: str, width: float, dash: Sequence[float] = ()) -> None:
        self.c.setStrokeColorRGB(*_rgb(colour))
        self.c.setLineWidth(width)
        self.c.setDash(list(dash) if dash else [], 0)

    # -- data -----------------------------------------------------------------------------
    def line(
        self,
        x: Any,
        y: Any,
        colour: str,
        width: float,
        dash: Sequence[float] = (),
    ) -> None:
        """A polyline, broken where x or y is not finite."""
        self._stroke(colour, width, dash)
        self.c.setLineCap(0)
        self.c.setLineJoin(1)
        self.c._code.append(_polyline(self.px(x), self.py(y)) + " S")

    def area(self, x: Any, low: Any, high: Any, colour: str, alpha: float) -> None:
        """The region between ``low`` and ``high`` over ``x`` (finite points only)."""
        x, low, high = (np.asarray(a, dtype=np.float64) for a in (x, low, high))
        ok = np.isfinite(x) & np.isfinite(low) & np.isfinite(high)
        if ok.sum() < 2:
            return
        xs = np.concatenate([x[ok], x[ok][::-1]])
        ys = np.concatenate([high[ok], low[ok][::-1]])
        self.fill(xs, ys, colour, alpha)

    def fill(self, x: Any, y: Any, colour: str, alpha: float = 1.0) -> None:
        """A closed polygon in data units."""
        self.c.saveState()
        self.c.setFillColorRGB(*_rgb(colour))
        if alpha < 1:
            self.c.setFillAlpha(alpha)
        self.c._code.append(_polyline(self.px(x), self.py(y)) + " h f")
        self.c.restoreState()

    def dots(self, x: Any, y: Any, colour: str, diameter_pt: float) -> None:
        """Filled circles at the finite points."""
        xs, ys = self.px(x), self.py(y)
        ok = np.isfinite(xs) & np.isfinite(ys)
        if not ok.any():
            return
        self.c.setFillColorRGB(*_rgb(colour))
        circle = _circle(diameter_pt / 2)
        self.c._code.append(
            "\n".join(
                f"q 1 0 0 1 {px:.2f} {py:.2f} cm {circle} f Q"
                for px, py in zip(xs[ok], ys[ok], strict=True)
            )
        )

    def hline(self, y: float, colour: str, width: float, dash: Sequence[float] = ()) -> None:
        self.line(self.xlim, [y, y], colour, width, dash)

    def vline(self, x: float, colour: str, width: float, dash: Sequence[float] = ()) -> None:
        self.line([x, x], self.ylim, colour, width, dash)

    # -- frame ----------------------------------------------------------------------------
    def frame(
        self,
        xticks: FloatArray,
        xlabels: Sequence[str],
        yticks: FloatArray,
        ylabels: Sequence[str],
        xlabel: str,
        ylabel: str,
        *,
        ylabel_left_pt: float = 30,
    ) -> None:
        """Left and bottom spines, outward ticks with labels, axis labels with units."""
        c = self.c
        x1, y1 = self.x0 + self.w, self.y0 + self.h
        c.setStrokeColorRGB(*_rgb(INK))
        c.setLineWidth(0.8)
        c.setDash([], 0)
        c.setLineCap(0)
        parts = [f"{self.x0:.2f} {y1:.2f} m {self.x0:.2f} {self.y0:.2f} l {x1:.2f} {self.y0:.2f} l"]
        xs = self.px(xticks)
        ys = self.py(yticks)
        in_x = (xs >= self.x0 - 0.01) & (xs <= x1 + 0.01)
        in_y = (ys >= self.y0 - 0.01) & (ys <= y1 + 0.01)
        parts += [
            f"{x:.2f} {self.y0:.2f} m {x:.2f} {self.y0 - TICK_LEN_PT:.2f} l" for x in xs[in_x]
        ]
        parts += [
            f"{self.x0:.2f} {y:.2f} m {self.x0 - TICK_LEN_PT:.2f} {y:.2f} l" for y in ys[in_y]
        ]
        c._code.append(" ".join(parts) + " S")
        c.setFillColorRGB(*_rgb(INK))
        base = self.y0 - TICK_LEN_PT - TICK_PAD_PT - CAP * TICK_FONT_PT
        for x, label in zip(xs[in_x], np.asarray(xlabels, dtype=object)[in_x], strict=True):
            text(c, float(x), base, label, TICK_FONT_PT, "centre")
        right = self.x0 - TICK_LEN_PT - TICK_PAD_PT
        for y, label in zip(ys[in_y], np.asarray(ylabels, dtype=object)[in_y], strict=True):
            text(c, right, float(y) - CAP * TICK_FONT_PT / 2, label, TICK_FONT_PT, "right")
        text(
            c,
            self.x0 + self.w / 2,
            self.y0 - 20 - CAP * LABEL_FONT_PT,
            xlabel,
            LABEL_FONT_PT,
            "centre",
        )
        vertical_text(c, self.x0 - ylabel_left_pt, self.y0 + self.h / 2, ylabel)

    def legend(
        self,
        entries: Sequence[tuple[str, Paint]],
        *,
        top: bool,
        columns: int = 1,
        below_at: float | None = None,
    ) -> None:
        """Legend without frame in the lower or upper left corner; ``entries`` are
        (label, paint a 20 x 7 pt sample with its lower left at the origin). With
        ``below_at``, under the axes instead, its first row's top at that height [pt]
        (outside the data, so it covers none)."""
        c = self.c
        row_pt, pad_pt, col_gap_pt = LEGEND_FONT_PT * 1.35, 4.0, 12.0
        rows = math.ceil(len(entries) / columns)
        widths = [stringWidth(label, FONT, LEGEND_FONT_PT) for label, _ in entries]
        col_w = [
            26 + max(widths[i] for i in range(k, len(entries), columns)) + col_gap_pt
            for k in range(min(columns, len(entries)))
        ]
        for i, (label, sample) in enumerate(entries):
            row, col = divmod(i, columns)
            x = self.x0 + pad_pt + sum(col_w[:col])
            if below_at is not None:
                y = below_at - (row + 1) * row_pt
            elif top:
                y = self.y0 + self.h - pad_pt - (row + 1) * row_pt
            else:
                y = self.y0 + pad_pt + (rows - 1 - row) * row_pt
            c.saveState()
            c.translate(x, y + 1)
            sample(c)
            c.restoreState()
            c.setFillColorRGB(*_rgb(INK))
            text(c, x + 26, y + 1.5, label, LEGEND_FONT_PT)


_PDF_STRING_ESCAPES = str.maketrans({"\\": "\\\\", "(": "\\(", ")": "\\)"})


def text(
    canv: Any,
    x: float,
    y: float,
    s: str,
    size_pt: float,
    align: str = "left",
    vertical: bool = False,
) -> None:
    """Helvetica text at (x, y) [pt] in the current fill colour, as raw PDF text operators.

    ``align`` ``left``, ``centre`` or ``right`` of (x, y) along the baseline;
    ``vertical`` reads upwards (baseline at ``x``, glyphs to its left). Cheaper than
    ``canvas.drawString`` (reportlab's pure-Python text object escapes and re-measures
    every string), which matters for the ~60 labels of every vehicle report.
    """
    if align != "left":
        width = stringWidth(s, FONT, size_pt)
        shift = width / 2 if align == "centre" else width
    else:
        shift = 0.0
    font = canv._doc.getInternalFontName(FONT)
    # Helvetica in reportlab is WinAnsi-encoded: chart text is ASCII; others degrade to "?".
    body = s.encode("cp1252", "replace").decode("latin-1").translate(_PDF_STRING_ESCAPES)
    matrix = f"0 1 -1 0 {x:.2f} {y:.2f}" if vertical else f"1 0 0 1 {x:.2f} {y:.2f}"
    canv._code.append(f"BT {font} {size_pt:g} Tf {matrix} Tm {-shift:.2f} 0 Td ({body}) Tj ET")


def vertical_text(canv: Any, x: float, y: float, s: str, size_pt: float = LABEL_FONT_PT) -> None:
    """``s`` centred on (x, y), reading upwards, baseline at ``x`` (glyphs to its left)."""
    text(canv, x, y, s, size_pt, "centre", vertical=True)


def _polyline(xs: FloatArray, ys: FloatArray) -> str:
    """PDF path operators of a polyline; a non-finite point starts a new piece."""
    parts: list[str] = []
    move = True
    for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
        if not (math.isfinite(x) and math.isfinite(y)):
            move = True
            continue
        parts.append(f"{x:.2f} {y:.2f} {'m' if move else 'l'}")
        move = False
    return " ".join(parts)


@cache
def _circle(r: float) -> str:
    """A circle of radius ``r`` [pt] around the origin: four Bezier arcs (k = 0.5523)."""
    k = 0.5523 * r
    return (
        f"{r:.2f} 0 m {r:.2f} {k:.2f} {k:.2f} {r:.2f} 0 {r:.2f} c "
        f"{-k:.2f} {r:.2f} {-r:.2f} {k:.2f} {-r:.2f} 0 c "
        f"{-r:.2f} {-k:.2f} {-k:.2f} {-r:.2f} 0 {-r:.2f} c "
        f"{k:.2f} {-r:.2f} {r:.2f} {-k:.2f} {r:.2f} 0 c"
    )


def _line_sample(colour: str, width: float, dash: Sequence[float] = ()) -> Paint:
    def paint(c: Any) -> None:
        c.setStrokeColorRGB(*_rgb(colour))
        c.setLineWidth(width)
        c.setDash(list(dash) if dash else [], 0)
        c._code.append("0 3.5 m 20 3.5 l S")

    return paint


def _dot_sample(colour: str, diameter_pt: float) -> Paint:
    def paint(c: Any) -> None:
        c.setFillColorRGB(*_rgb(colour))
        c._code.append(f"q 1 0 0 1 10 3.5 cm {_circle(diameter_pt / 2)} f Q")

    return paint


def _patch_sample(colour: str, alpha: float = 1.0, line: str | None = None) -> Paint:
    def paint(c: Any) -> None:
        c.setFillColorRGB(*_rgb(colour))
        if alpha < 1:
            c.setFillAlpha(alpha)
        c._code.append("0 0 20 7 re f")
        if line is not None:
            c.setFillAlpha(1)
            _line_sample(line, 1.4)(c)

    return paint


def _day_ticks(days: Sequence[str]) -> tuple[FloatArray, list[str]]:
    """At most 6 date ticks (month-day) on day indices."""
    step = max(1, math.ceil(len(days) / 6))
    idx = range(0, len(days), step)
    return np.array(idx, dtype=np.float64), [days[i][5:] for i in idx]


def _margins(
    width: float, height: float, left: float, bottom: float, right: float, top: float
) -> tuple[float, float, float, float]:
    return left, bottom, width - left - right, height - bottom - top


# ----------------------------------------------------------------------------- charts


_Projection = tuple[FloatArray, FloatArray, FloatArray, FloatArray]


def _soh_projection(v: VehicleData) -> _Projection | None:
    """The projection ``soh_history`` draws (age, fit, low, high), or None when there is
    none to draw (no fit or interval, or cover has ended)."""
    r = v.row
    now, at_end = r.soh_shown, r.projected_shown
    end = r.warranty_end_age_years
    needed = (
        r.age_years,
        end,
        v.soh_new_pct,
        v.fade_pct_per_year_pow,
        v.fade_exponent,
        now.low,
        now.high,
        at_end.low,
        at_end.high,
    )
    if not (all(map(math.isfinite, needed)) and end > r.age_years):
        return None
    t = np.linspace(r.age_years, end, 40)
    mid = v.soh_new_pct - v.fade_pct_per_year_pow * t**v.fade_exponent
    # Interval half-widths interpolated between today's and the end's, in t**p.
    x0, x1 = r.age_years**v.fade_exponent, end**v.fade_exponent
    f = (t**v.fade_exponent - x0) / (x1 - x0) if x1 > x0 else np.zeros_like(t)
    end_soh = r.projected_soh_at_warranty_end_pct
    below = (r.soh_pct - now.low) * (1 - f) + (end_soh - at_end.low) * f
    above = (now.high - r.soh_pct) * (1 - f) + (at_end.high - end_soh) * f
    return (t, mid, np.maximum(mid - below, 0.0), np.minimum(mid + above, now.high))


def _cover_end_in_view(v: VehicleData, projected: bool) -> bool:
    """Whether ``soh_history`` marks the end of cover (dotted): when it is known and
    either a projection leads to it or it still lies ahead."""
    end = v.row.warranty_end_age_years
    return math.isfinite(end) and (projected or not (end < v.row.age_years))


def soh_history_caption(v: VehicleData) -> str:
    """The caption of ``soh_history``: what each colour shows, of what the chart draws."""
    r = v.row
    projected = _soh_projection(v) is not None
    parts = []
    if v.estimate_age_years.size:
        parts.append("Grey: individual capacity estimates.")
    if (np.isfinite(v.soh_pct) & np.isfinite(v.soh_age_years)).any():
        parts.append("Blue: the SoH fit of each day with its 90 % interval.")
    if projected:
        parts.append("Orange: projection to the end of warranty cover with its interval.")
    elif math.isfinite(r.warranty_end_age_years) and r.warranty_end_age_years <= r.age_years:
        parts.append("No projection: warranty cover has ended.")
    lines = []
    if math.isfinite(r.warranty_min_soh_pct):
        lines.append("red dashed: warranty minimum")
    if _cover_end_in_view(v, projected):
        lines.append("dotted: end of cover")
    if lines:
        text = "; ".join(lines) + "."
        parts.append(text[0].upper() + text[1:])
    return " ".join(parts)


def soh_history(v: VehicleData, width: float) -> VectorChart:
    """SoH [%] over age [years]: estimates, daily fit with interval, projection."""
    height = 136.0  # plus the legend's rows under the axes
    r = v.row
    m = np.isfinite(v.soh_pct) & np.isfinite(v.soh_age_years)
    # Each day's interval clipped as the tables show today's (reports._inputs.soh_ceiling).
    hist_low = np.maximum(v.soh_low_pct, 0.0)
    hist_high = np.minimum(v.soh_high_pct, np.maximum(100.0, v.soh_pct))
    at_end = r.projected_shown
    end = r.warranty_end_age_years
    proj = _soh_projection(v)
    min_soh = r.warranty_min_soh_pct
    xs: list[FloatArray | float] = [v.estimate_age_years, v.soh_age_years[m]]
    ys: list[FloatArray | float] = [
        v.estimate_soh_pct,
        hist_low[m],
        hist_high[m],
    ]
    if proj is not None:
        xs += [proj[0]]
        ys += [proj[2], proj[3], at_end.high]
    # The x axis spans the data and the projection (not service start to cover end,
    # into which 60 days of data were squeezed); the end of cover when it is in view.
    in_view = _cover_end_in_view(v, proj is not None)
    if in_view:
        xs.append(end)
    # The vehicle's age now is always in view: without any estimate the axis would
    # otherwise span only the end of cover (7..9 years for a pack of 2.5).
    xs.append(r.age_years)
    if math.isfinite(min_soh):
        ys.append(min_soh)
    empty = not (v.estimate_age_years.size or m.any() or proj is not None)
    if empty:
        ys.append(100.0)  # from the warranty minimum to a new pack, not 69..71 %
    x_lo, x_hi = _padded(xs, 0.04)
    xlim = (max(0.0, x_lo), x_hi) if x_hi > max(0.0, x_lo) else (0.0, 1.0)
    ylim = _padded(ys)
    # The legend goes under the axes in two columns: it covers no data or line.
    n_legend = sum(
        (
            bool(v.estimate_age_years.size),
            bool(m.any()),
            proj is not None,
            math.isfinite(min_soh),
        )
    )
    row_pt = LEGEND_FONT_PT * 1.35
    legend_h = math.ceil(n_legend / 2) * row_pt + 4
    bottom = 34 + legend_h
    height += legend_h

    def paint(c: Any) -> None:
        ax = _Axes(c, _margins(width, height, 44, bottom, 10, 12), xlim, ylim)
        legend: list[tuple[str, Paint]] = []
        ax.clip()
        if m.any():
            ax.area(v.soh_age_years[m], hist_low[m], hist_high[m], SOH_COLOUR, 0.2)
        if v.estimate_age_years.size:
            ax.dots(v.estimate_age_years, v.estimate_soh_pct, ESTIMATE_COLOUR, 2.5)
            legend.append(("capacity estimates", _dot_sample(ESTIMATE_COLOUR, 2.5)))
        if m.any():
            ax.line(v.soh_age_years[m], v.soh_pct[m], SOH_COLOUR, 1.4)
            legend.append(
                ("SoH fit of each day (90 % interval)", _patch_sample(SOH_COLOUR, 0.2, SOH_COLOUR))
            )
        if proj is not None:
            t, mid, lo, hi = proj
            ax.area(t, lo, hi, PROJECTION_COLOUR, 0.18)
            ax.line(t, mid, PROJECTION_COLOUR, 1.3, (4.8, 2.1))
            lo_end, hi_end = at_end.low, at_end.high
            ax.line([end, end], [lo_end, hi_end], PROJECTION_COLOUR, 1)
            ex = float(ax.px(end))
            caps = " ".join(
                f"{ex - 3:.2f} {float(ax.py(y)):.2f} m {ex + 3:.2f} {float(ax.py(y)):.2f} l"
                for y in (lo_end, hi_end)
            )
            c._code.append(caps + " S")
            ax.dots([end], [r.projected_soh_at_warranty_end_pct], PROJECTION_COLOUR, 4)
            legend.append(
                ("projection to warranty end", _line_sample(PROJECTION_COLOUR, 1.3, (4.8, 2.1)))
            )
        if math.isfinite(min_soh):
            ax.hline(min_soh, WARRANTY_COLOUR, 1.2, (4.4, 1.9))
            legend.append(
                (f"warranty minimum {min_soh:g} %", _line_sample(WARRANTY_COLOUR, 1.2, (4.4, 1.9)))
            )
        if in_view:
            ax.vline(end, WARRANTY_COLOUR, 1, (1, 1.65))
        if empty:
            ax.note("no capacity estimate yet")
        ax.unclip()
        xt, yt = nice_ticks(*xlim), nice_ticks(*ylim, max_intervals=5)
        ax.frame(xt, tick_labels(xt), yt, tick_labels(yt), "age [years]", "SoH [%]")
        ax.legend(legend, top=False, columns=2, below_at=ax.y0 - 34)

    return VectorChart(width, height, "soh_history", paint)


@cache
def _heatmap_colours() -> npt.NDArray[np.uint8]:
    """RGB [0-255] of the heat map's levels, low (blue) to high (red)."""
    import matplotlib as mpl

    rgba = mpl.colormaps["RdBu_r"].resampled(HEATMAP_LEVELS)(np.arange(HEATMAP_LEVELS))
    return np.round(np.asarray(rgba)[:, :3] * 255).astype(np.uint8)


def heatmap_rgb(dev_mv: FloatArray, lim_mv: float) -> npt.NDArray[np.uint8]:
    """RGB image [0-255] of ``dev_mv`` (cell x day) on the scale -lim..+lim, rows as
    given; missing values grey."""
    colours = _heatmap_colours()
    scaled = (np.nan_to_num(dev_mv) + lim_mv) / (2 * lim_mv)
    level = np.clip((scaled * HEATMAP_LEVELS).astype(np.int64), 0, HEATMAP_LEVELS - 1)
    rgb = colours[level]
    rgb[~np.isfinite(dev_mv)] = np.array(_rgb(NO_DATA_COLOUR)) * 255
    return rgb


def cell_heatmap(v: VehicleData, width: float) -> VectorChart:
    """Each cell's rest voltage minus its pack median [mV], cell x day."""
    n_cells = v.cell_rest_dev_mv.shape[0]
    height = 150 + min(n_cells, 200) * 0.6
    dev = v.cell_rest_dev_mv
    has_data = bool(dev.size and np.isfinite(dev).any())
    xlabel, ylabel = "date (UTC, month-day)", "cell [index, 0-based]"
    if not has_data:

        def paint_empty(c: Any) -> None:
            ax = _Axes(c, _margins(width, height, 44, 34, 8, 20), (0.0, 1.0), (0.0, 1.0))
            ticks = np.linspace(0, 1, 6)
            ax.frame(ticks, tick_labels(ticks), ticks, tick_labels(ticks), xlabel, ylabel)
            ax.note("no rest periods with cell data in the window")

        return VectorChart(width, height, "cell_heatmap", paint_empty)
    # Start at the first day with data (a young vehicle, a new lake).
    first = int(np.flatnonzero(np.isfinite(dev).any(axis=0))[0])
    dev, days = dev[:, first:], v.cell_days[first:]
    lim = max(5.0, float(np.nanpercentile(np.abs(dev), 99.5)))
    # A PDF image starts with its top row: the highest cell index.
    rgb = heatmap_rgb(dev, lim)[::-1]
    flagged = sorted({a.cell for a in v.anomalies if a.cell >= 0 and a.status != "cleared"})
    n_rows, n_cols = dev.shape

    def paint(c: Any) -> None:
        from PIL import Image
        from reportlab.lib.utils import ImageReader

        # Right of the axes: colour bar (8 pt), its tick labels and its label.
        bar_w, bar_gap, right = 8.0, 8.0, 8.0
        box_right = right + 12 + stringWidth("-00.0", FONT, TICK_FONT_PT) + 6 + bar_w + bar_gap
        ax = _Axes(
            c,
            _margins(width, height, 44, 34, box_right, 20),
            (-0.5, n_cols - 0.5),
            (-0.5, n_rows - 0.5),
        )
        image = ImageReader(Image.fromarray(np.ascontiguousarray(rgb), "RGB"))
        c.drawImage(image, ax.x0, ax.y0, ax.w, ax.h)
        if flagged:
            # Arrows (black triangles pointing left) at the right edge, on flagged cells.
            x = ax.x0 + ax.w
            c.setFillColorRGB(*_rgb("#000000"))
            c._code.append(
                " ".join(
                    f"{x - 2.5:.2f} {y:.2f} m {x + 2.5:.2f} {y + 2.5:.2f} l "
                    f"{x + 2.5:.2f} {y - 2.5:.2f} l h f"
                    for y in ax.py(flagged).tolist()
                )
            )
        xt, xl = _day_ticks(days)
        yt = nice_ticks(0, n_rows - 1, integer=True)
        ax.frame(xt, xl, yt, tick_labels(yt), "date (UTC, month-day)", "cell [index, 0-based]")
        # Colour bar: one rectangle per level, ticks on its right, label beside them.
        bx = ax.x0 + ax.w + bar_gap
        level_h = ax.h / HEATMAP_LEVELS
        for i, (red, green, blue) in enumerate(_heatmap_colours().tolist()):
            c.setFillColorRGB(red / 255, green / 255, blue / 255)
            c._code.append(
                f"{bx:.2f} {ax.y0 + i * level_h:.2f} {bar_w:.2f} {level_h + 0.05:.2f} re f"
            )
        bar = _Axes(c, (bx, ax.y0, bar_w, ax.h), (0.0, 1.0), (-lim, lim))
        bt = nice_ticks(-lim, lim, max_intervals=5)
        ys = bar.py(bt)
        c.setStrokeColorRGB(*_rgb(INK))
        c.setLineWidth(0.8)
        c.setDash([], 0)
        c._code.append(
            f"{bx:.2f} {ax.y0:.2f} {bar_w:.2f} {ax.h:.2f} re "
            + " ".join(
                f"{bx + bar_w:.2f} {y:.2f} m {bx + bar_w + TICK_LEN_PT:.2f} {y:.2f} l"
                for y in ys.tolist()
            )
            + " S"
        )
        c.setFillColorRGB(*_rgb(INK))
        label_x = bx + bar_w + TICK_LEN_PT + TICK_PAD_PT
        widest = 0.0
        for y, label in zip(ys.tolist(), tick_labels(bt), strict=True):
            text(c, label_x, y - CAP * TICK_FONT_PT / 2, label, TICK_FONT_PT)
            widest = max(widest, stringWidth(label, FONT, TICK_FONT_PT))
        vertical_text(
            c,
            label_x + widest + 4 + LABEL_FONT_PT,
            ax.y0 + ax.h / 2,
            "rest voltage - pack median [mV]",
        )

    return VectorChart(width, height, "cell_heatmap", paint)


def exposure(v: VehicleData, width: float) -> VectorChart:
    """Hours per temperature band [degC] and per SoC band [%] over the window."""
    height = 150.0
    temp_h = [float(np.nansum(v.usage.get(col, np.zeros(0)))) for col, _ in TEMP_BANDS]
    above = float(np.nansum(v.usage.get("hours_soc_above_90", np.zeros(0))))
    below = float(np.nansum(v.usage.get("hours_soc_below_10", np.zeros(0))))
    covered = float(np.nansum(v.usage.get("covered_hours", np.zeros(0))))
    soc_h = [below, max(covered - above - below, 0.0), above]
    left, right, bottom, top = 52.0, 10.0, 34.0, 12.0
    # Two panels with a gap of 0.75 panel widths between them.
    panel_w = (width - left - right) / 2.75

    def panel(
        c: Any,
        x0: float,
        hours: list[float],
        bands: Sequence[str],
        colours: Sequence[str],
        ylabel: str,
    ) -> None:
        n = len(bands)
        top_h = max(hours) if hours and max(hours) > 0 else 1.0
        xlim = (0.0, top_h * 1.05)
        ax = _Axes(c, (x0, bottom, panel_w, height - bottom - top), xlim, (-0.6, n - 0.4))
        for i, (h, colour) in enumerate(zip(hours, colours, strict=True)):
            if h > 0:
                ax.fill([0, h, h, 0], [i - 0.4, i - 0.4, i + 0.4, i + 0.4], colour)
        xt = nice_ticks(*xlim, max_intervals=4)
        ax.frame(
            xt,
            tick_labels(xt),
            np.arange(n, dtype=np.float64),
            list(bands),
            "time [h]",
            ylabel,
            ylabel_left_pt=38,
        )

    def paint(c: Any) -> None:
        panel(c, left, temp_h, [b for _, b in TEMP_BANDS], _TEMP_COLOURS, "pack hottest [degC]")
        panel(c, left + 1.75 * panel_w, soc_h, _SOC_BANDS, _SOC_COLOURS, "state of charge [%]")

    return VectorChart(width, height, "exposure", paint)


def _steps(values: FloatArray, base: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Outline of bars of width 1 centred on 0..n-1 from ``base`` up to ``values``."""
    n = values.size
    edges = np.arange(n + 1) - 0.5
    top_x = np.repeat(edges, 2)[1:-1]
    xs = np.concatenate([top_x, top_x[::-1]])
    ys = np.concatenate([np.repeat(values, 2), np.repeat(base, 2)[::-1]])
    return xs, ys


def charging(v: VehicleData, width: float) -> VectorChart:
    """Charge put in per day [Ah], AC and DC fast charging."""
    height = 160.0
    n = len(v.usage_days)
    box = _margins(width, height, 44, 34, 10, 10)
    xlabel, ylabel = "date (UTC, month-day)", "charged [Ah]"
    if not n:

        def paint_empty(c: Any) -> None:
            ax = _Axes(c, box, (0.0, 1.0), (0.0, 1.0))
            yt = nice_ticks(0.0, 1.0)
            ax.frame(np.zeros(0), [], yt, tick_labels(yt), xlabel, ylabel)

        return VectorChart(width, height, "charging", paint_empty)
    total = np.nan_to_num(v.usage["ah_charged"])
    dc = np.nan_to_num(v.usage["ah_charged_dc"])
    ac = np.maximum(total - dc, 0.0)
    ylim = (0.0, max(float((ac + dc).max()), 1.0) * 1.3)
    xlim = (-0.5, n - 0.5)

    def paint(c: Any) -> None:
        ax = _Axes(c, box, xlim, ylim)
        # One filled step outline per series (not one rectangle per day: fast, small).
        ax.fill(*_steps(ac, np.zeros(n)), "#3b6fb6")
        ax.fill(*_steps(ac + dc, ac), "#e67e22")
        xt, xl = _day_ticks(v.usage_days)
        yt = nice_ticks(*ylim, max_intervals=5)
        ax.frame(xt, xl, yt, tick_labels(yt), xlabel, ylabel)
        ax.legend(
            [("AC", _patch_sample("#3b6fb6")), ("DC fast", _patch_sample("#e67e22"))],
            top=True,
            columns=2,
        )

    return VectorChart(width, height, "charging", paint)
