"""Draw matplotlib figures as native vector graphics on a reportlab canvas.

Charts are made with matplotlib (layout, ticks, colour maps) and painted straight into
the PDF page by this small renderer: lines, areas and text become PDF path and text
operators (vector, sharp at any zoom, a few kB per chart), images (the cell heat map)
become one image XObject with one pixel per data cell. Text is set in Helvetica, one of
the PDF base fonts, and measured with reportlab's own font metrics so matplotlib's
layout matches what is painted. Figures must be created with ``dpi=72`` (one pixel =
one point); ``new_figure`` does that.

Only imported by the report builders (it imports reportlab and matplotlib).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from matplotlib.backend_bases import FigureCanvasBase, GraphicsContextBase, RendererBase
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.path import Path as MplPath
from matplotlib.text import Text
from matplotlib.transforms import Affine2DBase, Transform
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase.pdfmetrics import getFont, stringWidth

#: matplotlib settings of every chart: base-14 fonts only (no embedding), no mathtext,
#: ASCII minus (U+2212 is not in the PDF standard encoding).
CHART_RC: Any = {
    "axes.unicode_minus": False,
    "text.parse_math": False,
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.labelsize": 9.0,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "legend.fontsize": 8.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "path.simplify": True,
}

_CAP = {"butt": 0, "round": 1, "projecting": 2}
_JOIN = {"miter": 0, "round": 1, "bevel": 2}


def _font_name(prop: FontProperties) -> str:
    weight = prop.get_weight()
    bold = weight == "bold" or (isinstance(weight, int) and weight >= 600)
    return "Helvetica-Bold" if bold else "Helvetica"


class _PathCode:
    """A path already in PDF operators, for ``canvas.drawPath``/``clipPath``."""

    __slots__ = ("code",)

    def __init__(self, code: str) -> None:
        self.code = code

    def getCode(self) -> str:  # noqa: N802 (reportlab's protocol)
        return self.code


def path_code(path: MplPath, transform: Transform | None) -> str:
    """PDF path operators (m, l, c, h) of a matplotlib path, coordinates in points.

    Quadratic Bezier segments become cubic ones (control points 2/3 of the way).
    """
    parts: list[str] = []
    lx = ly = 0.0
    for verts, code in path.iter_segments(transform, remove_nans=True, simplify=None):
        if code == MplPath.LINETO:
            lx, ly = verts[0], verts[1]
            parts.append(f"{lx:.2f} {ly:.2f} l")
        elif code == MplPath.MOVETO:
            lx, ly = verts[0], verts[1]
            parts.append(f"{lx:.2f} {ly:.2f} m")
        elif code == MplPath.CURVE4:
            x1, y1, x2, y2, lx, ly = verts
            parts.append(f"{x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} {lx:.2f} {ly:.2f} c")
        elif code == MplPath.CURVE3:
            qx, qy, ex, ey = verts
            c1x, c1y = lx + 2 / 3 * (qx - lx), ly + 2 / 3 * (qy - ly)
            c2x, c2y = ex + 2 / 3 * (qx - ex), ey + 2 / 3 * (qy - ey)
            lx, ly = ex, ey
            parts.append(f"{c1x:.2f} {c1y:.2f} {c2x:.2f} {c2y:.2f} {ex:.2f} {ey:.2f} c")
        elif code == MplPath.CLOSEPOLY:
            parts.append("h")
    return " ".join(parts)


class _ChartCanvas(FigureCanvasBase):
    """A canvas whose text measurements use the renderer below (Helvetica metrics)."""

    def __init__(self, figure: Figure) -> None:
        super().__init__(figure)
        self._renderer: ReportlabRenderer | None = None

    def get_renderer(self) -> ReportlabRenderer:
        if self._renderer is None:
            self._renderer = ReportlabRenderer(
                None, self.figure.bbox.width, self.figure.bbox.height
            )
        return self._renderer


class ReportlabRenderer(RendererBase):
    """A matplotlib renderer painting on a reportlab canvas at the current origin."""

    def __init__(self, canv: Any, width: float, height: float) -> None:
        super().__init__()
        self.canv = canv
        self.width = width
        self.height = height

    # -- geometry -------------------------------------------------------------------------
    def flipy(self) -> bool:
        return False

    def get_canvas_width_height(self) -> tuple[float, float]:
        return self.width, self.height

    def points_to_pixels(self, points: Any) -> Any:
        return points

    def option_image_nocomposite(self) -> bool:
        return True

    def option_scale_image(self) -> bool:
        return True

    def get_text_width_height_descent(
        self, s: str, prop: FontProperties, ismath: bool | str
    ) -> tuple[float, float, float]:
        name = _font_name(prop)
        size = prop.get_size_in_points()
        face = getFont(name).face
        width = stringWidth(s, name, size)
        descent = -face.descent * size / 1000.0
        height = face.ascent * size / 1000.0 + descent
        return width, height, descent

    # -- state ----------------------------------------------------------------------------
    def _clip(self, gc: GraphicsContextBase) -> None:
        rect = gc.get_clip_rectangle()
        if rect is not None:
            x0, y0, w, h = rect.bounds
            self.canv.clipPath(_PathCode(f"{x0:.2f} {y0:.2f} {w:.2f} {h:.2f} re"), stroke=0, fill=0)
        # Already transformed: (Path, affine), despite the stub's TransformedPath.
        clip_path, clip_trans = gc.get_clip_path()
        if clip_path is not None:
            p = self._path(cast(MplPath, clip_path), clip_trans)
            self.canv.clipPath(p, stroke=0, fill=0)

    def _stroke_style(self, gc: GraphicsContextBase) -> None:
        rgba = gc.get_rgb()
        alpha = gc.get_alpha() if gc.get_forced_alpha() else rgba[3]
        self.canv.setStrokeColorRGB(rgba[0], rgba[1], rgba[2], alpha=alpha)
        self.canv.setLineWidth(gc.get_linewidth())
        self.canv.setLineCap(_CAP.get(gc.get_capstyle(), 0))
        self.canv.setLineJoin(_JOIN.get(gc.get_joinstyle(), 0))
        offset, dashes = gc.get_dashes()
        if dashes:
            self.canv.setDash([float(d) for d in np.ravel(dashes)], float(offset or 0))

    def _path(self, path: MplPath, transform: Transform | None) -> _PathCode:
        return _PathCode(path_code(path, transform))

    # -- drawing --------------------------------------------------------------------------
    def draw_path(
        self,
        gc: GraphicsContextBase,
        path: MplPath,
        transform: Transform,
        rgbFace: Any = None,  # noqa: N803 (matplotlib's name)
    ) -> None:
        stroke = gc.get_linewidth() > 0 and gc.get_rgb()[3] > 0
        fill = rgbFace is not None
        if not (stroke or fill):
            return
        c = self.canv
        c.saveState()
        self._clip(gc)
        if fill:
            alpha = gc.get_alpha() if gc.get_forced_alpha() else 1.0
            if len(rgbFace) > 3 and not gc.get_forced_alpha():
                alpha = rgbFace[3]
            c.setFillColorRGB(rgbFace[0], rgbFace[1], rgbFace[2], alpha=alpha)
        if stroke:
            self._stroke_style(gc)
        c.drawPath(self._path(path, transform), stroke=int(stroke), fill=int(fill))
        c.restoreState()

    def draw_markers(
        self,
        gc: GraphicsContextBase,
        marker_path: MplPath,
        marker_trans: Transform,
        path: MplPath,
        trans: Transform,
        rgbFace: Any = None,  # noqa: N803 (matplotlib's name)
    ) -> None:
        # One marker outline, placed at every vertex with a translation (PDF "cm").
        stroke = gc.get_linewidth() > 0 and gc.get_rgb()[3] > 0
        fill = rgbFace is not None
        if not (stroke or fill):
            return
        verts = trans.transform(path.vertices)
        verts = verts[np.isfinite(verts).all(axis=1)]
        if verts.size == 0:
            return
        c = self.canv
        c.saveState()
        self._clip(gc)
        if fill:
            alpha = gc.get_alpha() if gc.get_forced_alpha() else 1.0
            if len(rgbFace) > 3 and not gc.get_forced_alpha():
                alpha = rgbFace[3]
            c.setFillColorRGB(rgbFace[0], rgbFace[1], rgbFace[2], alpha=alpha)
        if stroke:
            self._stroke_style(gc)
        op = {(True, True): "B", (True, False): "S", (False, True): "f"}[(stroke, fill)]
        outline = path_code(marker_path, marker_trans)
        c._code.append(
            "\n".join(f"q 1 0 0 1 {x:.2f} {y:.2f} cm {outline} {op} Q" for x, y in verts)
        )
        c.restoreState()

    def draw_image(
        self,
        gc: GraphicsContextBase,
        x: float,
        y: float,
        im: Any,
        transform: Affine2DBase | None = None,
    ) -> None:
        from PIL import Image

        h, w = im.shape[:2]
        if w == 0 or h == 0:
            return
        rgb = np.asarray(im)[:, :, :3]
        if transform is not None:
            # matplotlib maps row 0 of a transformed image to y = 0 of the unit square;
            # a PDF image puts its first row at y = 1.
            rgb = rgb[::-1]
        image = ImageReader(Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB"))
        c = self.canv
        c.saveState()
        self._clip(gc)
        if transform is None:
            c.drawImage(image, x, y, w, h)
        else:
            a, b, cc, d, e, f = transform.frozen().to_values()
            c.transform(1, 0, 0, 1, x, y)
            c.transform(a, b, cc, d, e, f)
            c.drawImage(image, 0, 0, 1, 1)
        c.restoreState()

    def draw_text(
        self,
        gc: GraphicsContextBase,
        x: float,
        y: float,
        s: str,
        prop: FontProperties,
        angle: float,
        ismath: bool | str = False,
        mtext: Text | None = None,
    ) -> None:
        c = self.canv
        c.saveState()
        self._clip(gc)
        rgba = gc.get_rgb()
        c.setFillColorRGB(rgba[0], rgba[1], rgba[2], alpha=gc.get_alpha())
        c.setFont(_font_name(prop), prop.get_size_in_points())
        c.translate(x, y)
        if angle:
            c.rotate(angle)
        c.drawString(0, 0, s)
        c.restoreState()


def new_figure(width_pt: float, height_pt: float) -> Figure:
    """A figure of the given size in points [pt] that ``draw_figure`` can paint."""
    fig = Figure(figsize=(width_pt / 72.0, height_pt / 72.0), dpi=72)
    _ChartCanvas(fig)
    return fig


def draw_figure(fig: Figure, canv: Any) -> None:
    """Paint ``fig`` on reportlab canvas ``canv`` with its lower left at the origin."""
    import matplotlib as mpl

    renderer = ReportlabRenderer(canv, fig.bbox.width, fig.bbox.height)
    with mpl.rc_context(CHART_RC):
        fig.draw(renderer)
