"""Page layout shared by the fleet and vehicle PDFs (reportlab platypus).

Made to be read on a phone as well as printed: A5 portrait, one column, body text
10.5 pt, tables of at most six columns that fit the page width, charts as wide as the
text. Every document is built with ``invariant=1`` so the same inputs give the same
bytes (fixed creation date and document id), and carries title, subject (fleet, date),
author, creator (generator and version) and keywords in its metadata.

Only imported by the report builders (it imports reportlab).
"""

from __future__ import annotations

import functools
import importlib.metadata
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

from matplotlib.figure import Figure
from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A5
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.lib.utils import simpleSplit
from reportlab.platypus import (
    Flowable,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from reports._inputs import ShownInterval
from reports._mplrender import draw_figure

PAGE = A5
MARGIN = 12 * mm
TEXT_WIDTH = PAGE[0] - 2 * MARGIN

INK = colors.HexColor("#1a1a1a")
MUTED = colors.HexColor("#5c5c5c")
RULE = colors.HexColor("#c8c8c8")
#: Background of a warranty verdict cell.
VERDICT_COLOURS = {
    "claim_eligible": colors.HexColor("#f4b6b0"),
    "at_risk": colors.HexColor("#fde3a7"),
    "ok": colors.HexColor("#d5efd5"),
    "insufficient_data": colors.HexColor("#e6e6e6"),
    "out_of_coverage": colors.HexColor("#e6e6e6"),
}
VERDICT_LABELS = {
    "claim_eligible": "CLAIM",
    "at_risk": "AT RISK",
    "ok": "ok",
    "insufficient_data": "no data",
    "out_of_coverage": "expired",
}

STYLES = {
    "title": ParagraphStyle(
        "title", fontName="Helvetica-Bold", fontSize=17, leading=21, textColor=INK, spaceAfter=4
    ),
    "subtitle": ParagraphStyle(
        "subtitle", fontName="Helvetica", fontSize=11, leading=14, textColor=MUTED, spaceAfter=8
    ),
    "h1": ParagraphStyle(
        "h1",
        fontName="Helvetica-Bold",
        fontSize=13.5,
        leading=17,
        textColor=INK,
        spaceBefore=8,
        spaceAfter=4,
    ),
    "h2": ParagraphStyle(
        "h2",
        fontName="Helvetica-Bold",
        fontSize=11.5,
        leading=14,
        textColor=INK,
        spaceBefore=6,
        spaceAfter=2,
    ),
    "body": ParagraphStyle(
        "body", fontName="Helvetica", fontSize=10.5, leading=14, textColor=INK, alignment=TA_LEFT
    ),
    "small": ParagraphStyle(
        "small", fontName="Helvetica", fontSize=9, leading=11.5, textColor=MUTED
    ),
    "big": ParagraphStyle("big", fontName="Helvetica-Bold", fontSize=20, leading=23, textColor=INK),
    "caption": ParagraphStyle(
        "caption", fontName="Helvetica", fontSize=9, leading=11.5, textColor=MUTED
    ),
}


@functools.cache
def generator_version() -> str:
    """``fleetbms <version>`` of the installed package (read once per process: parsing
    the package metadata took ~2 ms, four times per PDF)."""
    try:
        return f"fleetbms {importlib.metadata.version('fleetbms')}"
    except importlib.metadata.PackageNotFoundError:
        return "fleetbms (not installed)"


def esc(text: object) -> str:
    """Text safe inside a Paragraph (reportlab's mini-markup)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def fmt(value: float, digits: int = 1, unit: str = "") -> str:
    """A number for the page: fixed decimals, ``n/a`` for a missing value."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def vehicle_class_label(vehicle_class: str) -> str:
    """A registry vehicle class as words: ``two_wheeler`` -> ``two-wheeler``."""
    return " ".join(vehicle_class.split()).replace("_", "-")


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 day``, ``2 days`` (``words`` for an irregular plural)."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def fmt_range(low: float, high: float, digits: int = 1) -> str:
    """An interval ``low..high`` or ``n/a``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "n/a"
    return f"{low:.{digits}f}..{high:.{digits}f}"


#: Marks a bound shown clipped (``fmt_interval``); ``CLIPPED_NOTE`` explains it.
CLIPPED_MARK = "*"
CLIPPED_NOTE = (
    "* bound clipped to what is physically possible: a SoH interval's upper bound at "
    "100 % (or at the SoH itself when that is above), a projection's at the current upper "
    "bound (capacity does not grow with age), lower bounds at 0 %. The CSV has the fit's "
    "raw bounds."
)


def fmt_interval(iv: ShownInterval, digits: int = 1) -> str:
    """A shown interval ``low..high`` with ``CLIPPED_MARK`` after a clipped bound, or
    ``n/a``."""
    if not (math.isfinite(iv.low) and math.isfinite(iv.high)):
        return "n/a"
    lo = f"{iv.low:.{digits}f}" + (CLIPPED_MARK if iv.low_clipped else "")
    hi = f"{iv.high:.{digits}f}" + (CLIPPED_MARK if iv.high_clipped else "")
    return f"{lo}..{hi}"


class ChartFlowable(Flowable):  # type: ignore[misc]
    """A matplotlib figure painted as vector graphics (see ``reports._mplrender``)."""

    def __init__(self, fig: Figure, name: str) -> None:
        super().__init__()
        self.fig = fig
        self.name = name
        self.width = fig.bbox.width
        self.height = fig.bbox.height

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        return self.width, self.height

    def draw(self) -> None:
        # Mark the chart in the content stream so tests (and people) can find it.
        self.canv._code.append(f"% chart: {self.name}")
        draw_figure(self.fig, self.canv)


def chart(fig: Figure | Flowable, name: str, caption: str, heading: str | None = None) -> Flowable:
    """A chart with its heading and caption, kept on one page.

    ``fig`` is a matplotlib figure, or a flowable that paints itself (and writes its
    own ``% chart: NAME`` marker), such as ``reports._vcharts.VectorChart``.
    """
    parts: list[Flowable] = [Paragraph(esc(heading), STYLES["h1"])] if heading else []
    body = fig if isinstance(fig, Flowable) else ChartFlowable(fig, name)
    parts += [body, Paragraph(esc(caption), STYLES["caption"]), Spacer(1, 6)]
    return KeepTogether(parts)


def headline_table(cells: Sequence[tuple[str, str, str]]) -> Table:
    """Big numbers in a two-column grid: (figure, label, note) per cell."""
    items = [
        [
            Paragraph(esc(big), STYLES["big"]),
            Paragraph(esc(label), STYLES["body"]),
            Paragraph(esc(note), STYLES["small"]),
        ]
        for big, label, note in cells
    ]
    rows = []
    for i in range(0, len(items), 2):
        pair = items[i : i + 2]
        if len(pair) == 1:
            pair.append([""])
        rows.append(pair)
    table = Table(rows, colWidths=[TEXT_WIDTH / 2] * 2)
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, 0), (-1, -1), 0.5, RULE),
                ("TOPPADDING", (0, 0), (-1, -1), 5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 6),
                ("LEFTPADDING", (0, 0), (-1, -1), 2),
            ]
        )
    )
    return table


#: Left and right padding of a data_table cell. [pt]
_CELL_PAD = 2


def data_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    widths: Sequence[float],
    *,
    font_size: float = 8.5,
    extra_style: Sequence[tuple[Any, ...]] = (),
) -> Table:
    """A table of plain strings (newlines allowed) with a repeated header row; a cell
    wider than its column is wrapped at spaces (a plain string is not, and ran over the
    page's edge: a long warranty reason)."""
    room = [w * TEXT_WIDTH - 2 * _CELL_PAD for w in widths]

    def wrap(row: Sequence[str], font: str) -> list[str]:
        return [
            "\n".join(
                line
                for part in str(cell).split("\n")
                for line in (simpleSplit(part, font, font_size, width) or [""])
            )
            for cell, width in zip(row, room, strict=False)
        ]

    table = Table(
        [wrap(header, "Helvetica-Bold"), *[wrap(r, "Helvetica") for r in rows]],
        colWidths=[w * TEXT_WIDTH for w in widths],
        repeatRows=1,
    )
    style: list[tuple[Any, ...]] = [
        ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", font_size, font_size + 2),
        ("FONT", (0, 1), (-1, -1), "Helvetica", font_size, font_size + 2),
        ("TEXTCOLOR", (0, 0), (-1, -1), INK),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LINEBELOW", (0, 0), (-1, 0), 0.8, INK),
        ("LINEBELOW", (0, 1), (-1, -1), 0.3, RULE),
        ("LEFTPADDING", (0, 0), (-1, -1), _CELL_PAD),
        ("RIGHTPADDING", (0, 0), (-1, -1), _CELL_PAD),
        ("TOPPADDING", (0, 0), (-1, -1), 2.5),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2.5),
        *extra_style,
    ]
    table.setStyle(TableStyle(style))
    return table


def build_pdf(
    story: list[Flowable],
    *,
    title: str,
    subject: str,
    keywords: Sequence[str],
    footer: str,
) -> bytes:
    """Lay out ``story`` on A5 pages; return the PDF bytes (deterministic)."""
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=PAGE,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN + 4 * mm,
        title=title,
        subject=subject,
        author=generator_version(),
        creator=generator_version(),
        producer=generator_version(),
        keywords=list(keywords),
        invariant=1,
        pageCompression=1,
    )

    def on_page(canv: Any, document: Any) -> None:
        canv.saveState()
        canv.setFont("Helvetica", 8)
        canv.setFillColor(MUTED)
        canv.drawString(MARGIN, MARGIN, footer)
        canv.drawRightString(PAGE[0] - MARGIN, MARGIN, f"page {document.page}")
        canv.restoreState()

    page_fn: Callable[[Any, Any], None] = on_page
    # Binary (Flate-only) streams: reportlab's ASCII85 step is pure Python, slow, and
    # makes the files 25 % larger. Restored after the build.
    use_a85 = rl_config.useA85
    rl_config.useA85 = 0
    try:
        doc.build(story, onFirstPage=page_fn, onLaterPages=page_fn)
    finally:
        rl_config.useA85 = use_a85
    return buf.getvalue()
