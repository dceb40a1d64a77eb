"""Read generated PDFs back: text, metadata, chart markers, images, a rendered page."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from PIL import Image
from pypdf import PdfReader


def pdf_text(path: Path) -> str:
    """All pages' text, lines joined with spaces (tables wrap their cells)."""
    reader = PdfReader(path)
    return "\n".join(page.extract_text() or "" for page in reader.pages)


def chart_names(path: Path) -> list[str]:
    """The ``% chart: NAME`` markers the report writes before each chart's drawing."""
    reader = PdfReader(path)
    names = []
    for page in reader.pages:
        data = page.get_contents().get_data().decode("latin-1")  # type: ignore[union-attr]
        names += [
            line.split(":", 1)[1].strip()
            for line in data.splitlines()
            if line.startswith("% chart:")
        ]
    return names


def chart_ops(path: Path) -> int:
    """Number of path-painting operators (stroke/fill) in all content streams."""
    reader = PdfReader(path)
    total = 0
    for page in reader.pages:
        data = page.get_contents().get_data().decode("latin-1")  # type: ignore[union-attr]
        total += sum(data.count(op) for op in (" S\n", " f\n", " B\n", " n\n"))
    return total


def image_count(path: Path) -> int:
    """Image XObjects placed on the pages."""
    reader = PdfReader(path)
    return sum(len(page.images) for page in reader.pages)


def render_page(path: Path, out_dir: Path, page: int = 1, dpi: int = 60) -> Path:
    """Render one page to PNG with poppler's pdftoppm; return the PNG."""
    prefix = out_dir / f"{path.stem}-p{page}"
    subprocess.run(
        [
            "pdftoppm",
            "-png",
            "-r",
            str(dpi),
            "-f",
            str(page),
            "-l",
            str(page),
            "-singlefile",
            str(path),
            str(prefix),
        ],
        check=True,
        capture_output=True,
    )
    return prefix.with_suffix(".png")


def ink_fraction(png: Path) -> float:
    """Share of pixels that are not near-white."""
    a = np.asarray(Image.open(png).convert("L"))
    return float((a < 200).mean())
