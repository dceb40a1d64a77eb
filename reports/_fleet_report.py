"""The fleet report: one PDF and one CSV per (date, fleet).

Output: ``<reports_dir>/date=YYYY-MM-DD/fleet-<id>.pdf`` and ``fleet-<id>.csv``, each
written atomically (temporary file, fsync, rename). The CSV carries the numbers of the
PDF's vehicle table at full precision, one row per vehicle, units in the column names
(``reports.CSV_COLUMNS``); empty field = no value. ``data_status`` says how complete
the date's data is (``complete``, ``gaps``, ``silent``: nothing stored, its expected and
missing counts empty; empty before reconciliation has run). Same inputs, same bytes.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import astuple
from datetime import date
from pathlib import Path

from bms import atomic_write_bytes
from reports._errors import ReportError
from reports._inputs import CSV_COLUMNS, FleetData, load_fleet

FORMATS = ("pdf", "csv")


def check_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    """Parse ``"pdf,csv"`` or a sequence; raise ReportError naming the valid ones."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out = tuple(dict.fromkeys(f.strip().lower() for f in items if f.strip()))
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise ReportError(
            f"unknown report format {', '.join(bad) or repr('')}; valid: {', '.join(FORMATS)}"
        )
    return out


def report_dir(reports_dir: Path, day: date) -> Path:
    """Folder of one date's reports: ``<reports_dir>/date=YYYY-MM-DD``."""
    return reports_dir / f"date={day.isoformat()}"


def _csv_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return str(value)


def fleet_csv(data: FleetData) -> bytes:
    """The fleet table as CSV (RFC 4180, UTF-8, ``\\n`` line ends), full precision."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in data.rows:
        writer.writerow([_csv_value(v) for v in astuple(row)])
    return buf.getvalue().encode("utf-8")


def fleet_report(
    lake_root: Path,
    reports_dir: Path,
    day: date,
    fleet: str,
    *,
    formats: Sequence[str] | str = FORMATS,
) -> list[Path]:
    """Write the fleet report of ``fleet`` on ``day``.

    Parameters
    ----------
    lake_root : Path
        Root of the lake (``data/lake``).
    reports_dir : Path
        Root of the reports (``data/reports``).
    day : date
        UTC date of the metrics.
    fleet : str
        Fleet id.
    formats : sequence of str or str
        ``pdf``, ``csv`` or both (``"pdf,csv"``).

    Returns
    -------
    list of Path
        The files written (``fleet-<id>.pdf``, ``fleet-<id>.csv``).

    Raises
    ------
    ReportError
        Unknown format, or no metrics for that date and fleet.
    """
    wanted = check_formats(formats)
    data = load_fleet(lake_root, day, fleet)
    out_dir = report_dir(reports_dir, day)
    written = []
    if "pdf" in wanted:
        from reports._fleet_pdf import fleet_pdf

        written.append(atomic_write_bytes(fleet_pdf(data), out_dir / f"fleet-{fleet}.pdf"))
    if "csv" in wanted:
        written.append(atomic_write_bytes(fleet_csv(data), out_dir / f"fleet-{fleet}.csv"))
    return written
