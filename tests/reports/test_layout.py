"""The PDF building blocks read back: a table cell longer than its column wraps."""

from __future__ import annotations

import io

from pypdf import PdfReader
from reportlab.pdfbase.pdfmetrics import stringWidth

from reports._layout import TEXT_WIDTH, build_pdf, data_table

REASON = (
    "newest capacity estimate 728 days old (limit 180); fade rate not measured (prior); "
    "since 2024-01-02: BMS SoC 84-100 %: a rest reads an LFP pack's SoC only at 0-26 % "
    "and 96-100 % (within 3 %) and an estimate needs two such points at least 7 % apart; "
    "a charge from 76 % or below to 96 % or more, then a rest, would give one"
)


def test_a_long_cell_wraps_inside_its_column_and_keeps_every_word() -> None:
    pdf = build_pdf(
        [data_table(["value"], [[REASON], ["short\nand two lines"]], [1.0], font_size=9)],
        title="t",
        subject="s",
        keywords=["k"],
        footer="f",
    )
    lines = [
        line.strip()
        for line in (PdfReader(io.BytesIO(pdf)).pages[0].extract_text() or "").splitlines()
    ]
    body = lines[lines.index("value") + 1 : lines.index("short")]
    assert len(body) >= 3  # wrapped, not one line running off the page
    assert " ".join(body) == REASON
    for line in body:
        assert stringWidth(line, "Helvetica", 9) <= TEXT_WIDTH - 4
    assert lines[lines.index("short") + 1] == "and two lines"


def test_the_vehicle_headline_keeps_a_long_reasons_first_and_last_clause() -> None:
    from reports._vehicle_pdf import _headline_reason

    assert _headline_reason("test reason ok") == "test reason ok"
    assert _headline_reason(REASON) == (
        "newest capacity estimate 728 days old (limit 180); ...; a charge from 76 % or "
        "below to 96 % or more, then a rest, would give one (in full under Warranty evidence)"
    )
