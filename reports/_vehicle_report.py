"""Vehicle reports, and the nightly entry point that writes all of a date's reports.

Output: ``<reports_dir>/date=YYYY-MM-DD/vehicles/<VIN>.pdf``, written atomically.
``render_reports`` reads each metrics table once for all the vehicles it reports on and
renders their PDFs in a process pool (one process per core by default), so a nightly
run over a large fleet uses the whole machine.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

from bms import atomic_write_bytes
from reports._fleet_report import FORMATS, check_formats, fleet_report, report_dir
from reports._inputs import VehicleData, fleet_of, load_vehicles, newly_flagged

#: Below this many vehicles the PDFs are rendered in the calling process (starting
#: worker processes costs more than it saves).
MIN_VEHICLES_FOR_POOL = 6


def vehicle_pdf_path(reports_dir: Path, day: date, vin: str) -> Path:
    """Where the report of ``vin`` on ``day`` goes."""
    return report_dir(reports_dir, day) / "vehicles" / f"{vin}.pdf"


def _render_one(data: VehicleData, reports_dir: Path) -> Path:
    from reports._vehicle_pdf import vehicle_pdf

    return atomic_write_bytes(
        vehicle_pdf(data), vehicle_pdf_path(reports_dir, data.day, data.row.vin)
    )


def _render_batch(batch: list[VehicleData], reports_dir: Path) -> list[Path]:
    return [_render_one(d, reports_dir) for d in batch]


def _warm_up() -> None:
    """Import the PDF builder (reportlab, matplotlib: ~1 s) in a pool worker."""
    import reports._vehicle_pdf  # noqa: F401


def render_vehicle_reports(
    lake_root: Path,
    reports_dir: Path,
    day: date,
    fleet: str,
    vins: Sequence[str],
    *,
    workers: int = 2,
    window_days: int = 90,
) -> list[Path]:
    """Write the vehicle reports of ``vins`` (one fleet) on ``day``, in parallel.

    Parameters
    ----------
    lake_root, reports_dir : Path
        Root of the lake and of the reports.
    day : date
        UTC date of the metrics.
    fleet : str
        Fleet of the vehicles.
    vins : sequence of str
        Vehicles to report on.
    workers : int
        Processes rendering PDFs; 1 = in this process.
    window_days : int
        Days of usage and cell data shown. [days]

    Returns
    -------
    list of Path
        The PDFs written, in VIN order.

    Raises
    ------
    ReportError
        No metrics for the date and fleet, or a VIN without metrics on that date.
    """
    if not vins:
        return []
    if workers <= 1 or len(set(vins)) < MIN_VEHICLES_FOR_POOL:
        data = load_vehicles(lake_root, day, fleet, vins, window_days=window_days)
        return _render_batch(data, reports_dir)
    # forkserver: no fork of a process that may hold DuckDB or BLAS threads.
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        # The workers start and import the PDF builder while this process reads the lake.
        for _ in range(workers):
            pool.submit(_warm_up)
        data = load_vehicles(lake_root, day, fleet, vins, window_days=window_days)
        # Chunks of a few vehicles keep the pickling overhead low and the cores busy.
        n_chunks = min(len(data), workers * 8)
        chunks = [data[i::n_chunks] for i in range(n_chunks)]
        done = list(pool.map(_render_batch, chunks, [reports_dir] * len(chunks)))
    return sorted((p for batch in done for p in batch), key=lambda p: p.name)


def vehicle_report(
    lake_root: Path,
    reports_dir: Path,
    vin: str,
    day: date,
    *,
    fleet: str | None = None,
    window_days: int = 90,
) -> Path:
    """Write the report of one vehicle on ``day``; return its path.

    Raises
    ------
    ReportError
        Unknown VIN, or no metrics for it on that date.
    """
    fleet = fleet or fleet_of(lake_root, vin, day)
    (path,) = render_vehicle_reports(
        lake_root, reports_dir, day, fleet, [vin], workers=1, window_days=window_days
    )
    return path


def render_reports(
    lake_root: Path,
    reports_dir: Path,
    day: date,
    fleet: str,
    *,
    formats: Sequence[str] | str = FORMATS,
    workers: int = 2,
    window_days: int = 90,
) -> list[Path]:
    """The nightly reports of one (date, fleet): the fleet report, and a vehicle report
    for every newly flagged vehicle (``reports.newly_flagged``).

    Returns
    -------
    list of Path
        Fleet PDF/CSV first, then the vehicle PDFs in VIN order. Rerunning replaces
        them with identical bytes.

    Raises
    ------
    ReportError
        Unknown format, or no metrics for that date and fleet.
    """
    wanted = check_formats(formats)
    written = fleet_report(lake_root, reports_dir, day, fleet, formats=wanted)
    if "pdf" in wanted:
        vins = newly_flagged(lake_root, day, fleet)
        written += render_vehicle_reports(
            lake_root, reports_dir, day, fleet, vins, workers=workers, window_days=window_days
        )
    return written
