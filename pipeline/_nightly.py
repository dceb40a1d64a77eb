"""The nightly batch: ordered stages over the dates that need work, under one lock.

A stage is a function ``(NightlyContext) -> StageResult`` registered in ``STAGES``, in
order. The runner takes the lock, finishes what a killed run left half done (compaction
journals), claims the dirty-date markers, decides the dates (the run date, dirty dates,
earlier dates within ``nightly.lookback_days`` whose telemetry changed, and the dates
since the fleet's last completed run whose telemetry was never compacted), then runs
the stages one after the other, writing the run record after each. A stage skips the
units of work whose inputs have not changed since it last did them (``DoneStore``: a
digest of input file names, sizes and modification times, plus the stage's parameters),
so a second run does no work and changes no output.

A stage that raises a user-level error (``ValueError``, ``BmsError``, ``IngestError``,
``ReportError``, ``OSError``) is recorded as failed and the later stages do not run;
any other exception is a bug and propagates with its traceback (the run record is still
marked failed). Exit codes: ``EXIT_OK`` 0, ``EXIT_FAILED`` 1, ``EXIT_USAGE`` 2,
``EXIT_GAPS`` 3 (completed, but the data has gaps), ``EXIT_NO_DATA`` 66 (completed, but the
lake holds no telemetry of the fleet for the run date: ingest down, or a wrong date; not a
success, unlike a few silent vehicles), ``EXIT_LOCKED`` 75 (another run holds the lock;
EX_TEMPFAIL of sysexits.h, "try again later"). A missing lake or a fleet the lake does not
know is a ``ValueError`` before the lock is taken: nothing is written.

Stages of the other packages call their libraries (``bms.run_analytics``,
``bms.score_pending_anomalies``, ``reports.render_reports``,
``reports.export_audit_bundle``). A stage whose library is missing from a build reports
``not available`` and does no work: it never claims success.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import bms
from bms import FLEET_PATTERN, BmsError, telemetry_dir
from ingest import IngestError
from pipeline._compact import STAGE as COMPACTION
from pipeline._compact import compact_partition, partition_key, recover_compactions
from pipeline._config import Settings
from pipeline._nightly_state import (
    DoneStore,
    claim_dirty,
    digest,
    dirty_dates,
    file_fingerprint,
    new_run_id,
    nightly_lock,
    pause_point,
    read_json,
    release_dirty,
    run_records,
    write_json_atomic,
)
from pipeline._params import require_fleet
from pipeline._reconcile import reconcile_partition, reconciliation_inputs, reconciliation_paths
from pipeline._retention import apply_retention, sweep_stale_temporaries
from reports import ReportError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_GAPS = 3
EXIT_NO_DATA = 66  # EX_NOINPUT of sysexits.h: no telemetry at all for the run date
EXIT_LOCKED = 75

#: Errors a stage may raise for bad data, configuration or environment (not bugs).
STAGE_ERRORS = (ValueError, BmsError, IngestError, ReportError, OSError)

#: Status words of a stage result.
DONE, UP_TO_DATE, NOT_AVAILABLE, NOT_CONFIGURED, SKIPPED, FAILED = (
    "done",
    "up to date",
    "not available",
    "not configured",
    "skipped",
    "failed",
)

Observer = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True)
class StageResult:
    """What a stage did.

    Attributes
    ----------
    status : str
        ``done`` (did work), ``up to date`` (inputs unchanged, nothing to do),
        ``not available`` (its library is not in this build), ``not configured``.
    counts : mapping of str to int
        Stage-specific counters (files, rows, vehicles...).
    inputs, outputs : tuple of str
        What was read (a partition with its file count and input digest) and the files
        written, relative to the data directory.
    message : str
        One line for people.
    data_gaps : bool
        The data this stage looked at has gaps (the run exits 3).
    """

    status: str
    counts: Mapping[str, int] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    message: str = ""
    data_gaps: bool = False


@dataclass(frozen=True)
class NightlyContext:
    """What a stage gets: the settings, the run's dates and fleet, and helpers.

    ``dates`` are the UTC event dates to (re)compute, oldest first; ``run_date`` is the
    date the run is for (the fleet's yesterday by default). ``done`` stores the input
    digests of work already done; ``progress(done, total)`` drives the progress bar.
    """

    settings: Settings
    run_id: str
    run_date: date
    dates: tuple[date, ...]
    fleet: str
    done: DoneStore
    progress: Callable[[int, int], None] = lambda _done, _total: None

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def lake_dir(self) -> Path:
        return self.settings.lake_dir

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    def rel(self, path: Path) -> str:
        """``path`` relative to the data directory (as recorded in run records)."""
        return path.relative_to(self.data_dir).as_posix()

    def unit_key(self, day: date) -> str:
        """Key of the (date, fleet) unit in done records."""
        return partition_key(day, self.fleet)


@dataclass(frozen=True)
class Stage:
    """A registered stage: its name (used in records and pause points) and function."""

    name: str
    run: Callable[[NightlyContext], StageResult]
    description: str


# --------------------------------------------------------------------------- stages


def _stage_compaction(ctx: NightlyContext) -> StageResult:
    cfg = ctx.settings.nightly
    counts = {
        "partitions": 0,
        "compacted": 0,
        "files_in": 0,
        "files_out": 0,
        "rows_out": 0,
        "duplicates": 0,
    }
    inputs: list[str] = []
    outputs: list[str] = []
    for i, day in enumerate(ctx.dates):
        r = compact_partition(
            ctx.data_dir,
            day,
            ctx.fleet,
            row_group_rows=cfg.row_group_rows,
            memory_rows=cfg.compact_memory_rows,
            file_rows=cfg.compact_file_rows,
            zstd_level=cfg.compact_zstd_level,
        )
        if r.status != "empty":
            counts["partitions"] += 1
            inputs.append(
                f"{ctx.rel(telemetry_dir(ctx.lake_dir, day, ctx.fleet))}: {r.input_files} files"
            )
        if r.outputs:
            counts["compacted"] += 1
            counts["files_in"] += r.input_files
            counts["files_out"] += len(r.outputs)
            counts["rows_out"] += r.rows_out
            counts["duplicates"] += r.duplicates_removed
            outputs.extend(ctx.rel(p) for p in r.outputs)
        ctx.progress(i + 1, len(ctx.dates))
    status = DONE if counts["compacted"] else UP_TO_DATE
    message = (
        f"{counts['compacted']} of {counts['partitions']} partitions compacted "
        f"({counts['files_in']} files -> {counts['files_out']}, "
        f"{counts['duplicates']} duplicates removed)"
    )
    return StageResult(status, counts, tuple(inputs), tuple(outputs), message)


def _reconciliation_totals(path: Path) -> tuple[int, int]:
    t = pq.read_table(path, columns=["readings_missing", "readings_stored"])
    missing = int(pc.sum(t["readings_missing"]).as_py() or 0)
    silent = int(pc.sum(pc.equal(t["readings_stored"], 0)).as_py() or 0)
    return missing, silent


def _stage_reconciliation(ctx: NightlyContext) -> StageResult:
    late_after_s = ctx.settings.nightly.late_after_s
    counts = {"partitions": 0, "reconciled": 0, "readings_missing": 0, "silent_vehicles": 0}
    inputs: list[str] = []
    outputs: list[str] = []
    no_data: list[str] = []
    for i, day in enumerate(ctx.dates):
        files = reconciliation_inputs(ctx.data_dir, day, ctx.fleet)
        if not any(telemetry_dir(ctx.lake_dir, day, ctx.fleet) in p.parents for p in files):
            no_data.append(day.isoformat())
            ctx.progress(i + 1, len(ctx.dates))
            continue
        counts["partitions"] += 1
        key = ctx.unit_key(day)
        fp = digest({"files": file_fingerprint(files, ctx.data_dir), "late_s": late_after_s})
        inputs.append(f"{key}: {len(files)} files, sha256 {fp[:16]}")
        per_vin, gaps = reconciliation_paths(ctx.lake_dir, day, ctx.fleet)
        if not ctx.done.is_done("reconciliation", key, fp):
            reconcile_partition(ctx.data_dir, day, ctx.fleet, late_after_s=late_after_s)
            ctx.done.mark_done("reconciliation", key, fp, [per_vin, gaps])
            counts["reconciled"] += 1
            outputs += [ctx.rel(per_vin), ctx.rel(gaps)]
        missing, silent = _reconciliation_totals(per_vin)
        counts["readings_missing"] += missing
        counts["silent_vehicles"] += silent
        ctx.progress(i + 1, len(ctx.dates))
    status = DONE if counts["reconciled"] else UP_TO_DATE
    message = (
        f"{counts['readings_missing']} readings missing, "
        f"{counts['silent_vehicles']} registered vehicles silent"
    )
    if no_data:
        message += f"; no telemetry for fleet {ctx.fleet} on {', '.join(no_data)}"
    gaps_found = bool(counts["readings_missing"] or counts["silent_vehicles"] or no_data)
    return StageResult(status, counts, tuple(inputs), tuple(outputs), message, gaps_found)


def _stage_analytics(ctx: NightlyContext) -> StageResult:
    """bms analytics for every date up to the run date whose results are missing or stale.

    The library keeps its own ledger (input files, parameters, previous day's state), so
    late data for an old date also recomputes every later date, in order (the SoH trend
    carries state from day to day). Dates that retention archives tonight are skipped.
    """
    from pipeline._cmd_analyze import analytics_params

    params = analytics_params(ctx.settings)
    # Dates retention moves to the archive tonight are not worth computing.
    oldest = ctx.run_date - timedelta(days=ctx.settings.retention.archive_after_days)
    counts = {
        "dates": 0,
        "vehicles": 0,
        "readings": 0,
        "capacity_estimates": 0,
        "resistance_steps": 0,
        "unknown_vins": 0,
    }
    outputs: list[str] = []
    verdicts: dict[str, int] = {}
    # One catch-up session computes consecutive dates together (same results as one by one).
    summaries = bms.run_pending(
        ctx.lake_dir,
        fleet=ctx.fleet,
        params=params,
        since=oldest,
        until=ctx.run_date,
        progress=ctx.progress,
    )
    days = [s.day for s in summaries]
    for s in summaries:
        counts["dates"] += 1
        counts["vehicles"] += s.vehicles
        counts["readings"] += s.readings
        counts["capacity_estimates"] += s.capacity_estimates
        counts["resistance_steps"] += s.resistance_steps
        counts["unknown_vins"] += len(s.unknown_vins)
        outputs += [ctx.rel(f) for f in s.files]
        if s.day == ctx.run_date:
            verdicts = dict(s.verdicts)
    if not days:
        return StageResult(UP_TO_DATE, counts, message="every date up to the run date is current")
    tally = ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())) or "none"
    message = (
        f"{len(days)} date(s) computed ({days[0]}..{days[-1]}); "
        f"warranty verdicts on {ctx.run_date}: {tally}"
    )
    inputs = tuple(f"lake/telemetry/date={d}/fleet={ctx.fleet}" for d in days)
    return StageResult(DONE, counts, inputs, tuple(outputs), message)


def _stage_anomalies(ctx: NightlyContext) -> StageResult:
    """bms anomaly scoring of every analysed date not scored yet (or changed), in order."""
    from pipeline._cmd_anomalies import anomaly_params

    params = anomaly_params(ctx.settings)
    summaries = bms.score_pending_anomalies(ctx.lake_dir, ctx.state_dir, params, fleet=ctx.fleet)
    if not summaries:
        return StageResult(UP_TO_DATE, message="every analysed date is scored")
    counts = {"dates": len(summaries), "new": 0, "ongoing": 0, "cleared": 0}
    outputs: list[str] = []
    for s in summaries:
        counts["new"] += s.new
        counts["ongoing"] += s.ongoing
        counts["cleared"] += s.cleared
        outputs += [ctx.rel(f) for f in s.files]
    last = summaries[-1]
    message = (
        f"{len(summaries)} date(s) scored ({summaries[0].day}..{last.day}); on {last.day}: "
        f"{last.flagged} flagged ({last.new} new, {last.ongoing} ongoing), {last.cleared} cleared"
    )
    inputs = tuple(f"lake/metrics/*/date={s.day}/fleet={ctx.fleet}" for s in summaries)
    return StageResult(DONE, counts, inputs, tuple(outputs), message)


#: Days of metrics a report looks back over (its trend charts).
REPORT_WINDOW_DAYS = 90


def _report_inputs(ctx: NightlyContext, day: date) -> list[Path]:
    """The lake files a (date, fleet) report reads: metrics, anomalies, registry."""
    first = day - timedelta(days=REPORT_WINDOW_DAYS)
    files: list[Path] = []
    for base in (ctx.lake_dir / "metrics", ctx.lake_dir / "anomalies"):
        for f in sorted(base.glob(f"**/date=*/fleet={ctx.fleet}/*.parquet")):
            part = f.parent.parent.name.removeprefix("date=")
            if first.isoformat() <= part <= day.isoformat():
                files.append(f)
    registry = ctx.lake_dir / "registry" / "vehicles.parquet"
    return [*files, *([registry] if registry.exists() else [])]


def _analysed(ctx: NightlyContext, day: date) -> bool:
    """Analytics wrote the date's SoH table (what every report starts from)."""
    part = f"date={day.isoformat()}/fleet={ctx.fleet}/part.parquet"
    return (ctx.lake_dir / "metrics" / "vehicle_soh" / part).exists()


def _stage_reports(ctx: NightlyContext) -> StageResult:
    """Fleet PDF/CSV and vehicle PDFs of newly flagged vehicles (``reports.render_reports``).

    For the run date, every date of the run, every earlier report date since the
    oldest date of the run whose inputs changed (late data recomputes the trends after
    it), and any report date whose fleet report is missing (erased); a date whose report
    inputs did not change is skipped.
    """
    from reports import render_reports

    cfg = ctx.settings.reports
    existing = {
        date.fromisoformat(p.name.removeprefix("date="))
        for p in ctx.settings.reports_dir.glob("date=*")
        if p.is_dir()
    }
    oldest = min(ctx.dates)
    # A date whose fleet report is gone (an erasure deletes every report naming the
    # vehicle, whatever its date) is written again, however old.
    formats = [f.strip().lower() for f in cfg.formats.split(",") if f.strip()]
    gone = {
        d
        for d in existing
        if d <= ctx.run_date
        and not all(
            (ctx.settings.reports_dir / f"date={d.isoformat()}" / f"fleet-{ctx.fleet}.{f}").exists()
            for f in formats
        )
    }
    days = sorted({*ctx.dates, *gone, *(d for d in existing if oldest <= d <= ctx.run_date)})
    counts = {"dates": 0, "rendered": 0, "files": 0}
    inputs: list[str] = []
    outputs: list[str] = []
    for i, day in enumerate(days):
        if not _analysed(ctx, day):
            ctx.progress(i + 1, len(days))
            continue  # no analytics output for that date: nothing to report on
        files = _report_inputs(ctx, day)
        counts["dates"] += 1
        key = ctx.unit_key(day)
        params = {"formats": cfg.formats, "window": REPORT_WINDOW_DAYS}
        fp = digest({"files": file_fingerprint(files, ctx.data_dir), "params": params})
        inputs.append(f"{key}: {len(files)} files, sha256 {fp[:16]}")
        if not ctx.done.is_done("reports", key, fp):
            written = render_reports(
                ctx.lake_dir,
                ctx.settings.reports_dir,
                day,
                ctx.fleet,
                formats=cfg.formats,
                workers=cfg.workers,
                window_days=REPORT_WINDOW_DAYS,
            )
            ctx.done.mark_done("reports", key, fp, written)
            counts["rendered"] += 1
            counts["files"] += len(written)
            outputs += [ctx.rel(w) for w in written]
        ctx.progress(i + 1, len(days))
    if not counts["dates"]:
        return StageResult(UP_TO_DATE, counts, message="no analytics output to report on")
    status = DONE if counts["rendered"] else UP_TO_DATE
    message = (
        f"{counts['rendered']} of {counts['dates']} report date(s) rendered, "
        f"{counts['files']} files in {ctx.rel(ctx.settings.reports_dir)}/"
    )
    return StageResult(status, counts, tuple(inputs), tuple(outputs), message)


def audit_bundle_path(settings: Settings, day: date, fleet: str) -> Path:
    """Where the nightly writes the audit bundle of a (date, fleet)."""
    return settings.reports_dir / f"date={day.isoformat()}" / f"audit-{fleet}"


def _stage_audit(ctx: NightlyContext) -> StageResult:
    """A signed, pseudonymised audit bundle per date of the run (``reports.audit_enabled``):
    the run date's, and those of the dates it caught up (missed nights) or recomputed
    (late data), each exported again only when its inputs changed."""
    if not ctx.settings.reports.audit_enabled:
        return StageResult(NOT_CONFIGURED, message="reports.audit_enabled is false")
    from reports import ERASURE_LOG_PATH, export_audit_bundle

    settings = ctx.settings
    parameters = {
        "analytics": dataclasses.asdict(settings.analytics),
        "anomaly": dataclasses.asdict(settings.anomaly),
        "warranty_policy": settings.reports.warranty_policy,
    }
    erasure_log = ctx.state_dir / ERASURE_LOG_PATH
    days = sorted({*ctx.dates, ctx.run_date})
    inputs: list[str] = []
    outputs: list[str] = []
    written: list[str] = []
    files_total = 0
    not_analysed: list[str] = []
    for i, day in enumerate(days):
        ctx.progress(i, len(days))
        if not _analysed(ctx, day):
            not_analysed.append(day.isoformat())
            continue
        files = [
            f
            for f in _report_inputs(ctx, day)
            if f.parent.parent.name == f"date={day}" or f.name == "vehicles.parquet"
        ]
        if erasure_log.exists():
            files.append(erasure_log)  # the bundle carries it: an erasure makes it stale
        key = ctx.unit_key(day)
        fp = digest({"files": file_fingerprint(files, ctx.data_dir), "params": parameters})
        out = audit_bundle_path(settings, day, ctx.fleet)
        inputs.append(f"{key}: {len(files)} files, sha256 {fp[:16]}")
        if ctx.done.is_done("audit", key, fp) and (out / "manifest.json").exists():
            continue
        result = export_audit_bundle(
            ctx.lake_dir,
            ctx.state_dir,
            out,
            date_from=day,
            date_to=day,
            fleet=ctx.fleet,
            parameters=parameters,
            workers=settings.reports.workers,
        )
        ctx.done.mark_done("audit", key, fp, [out / "manifest.json"])
        outputs.append(ctx.rel(result.path))
        written.append(f"{ctx.rel(result.path)}: {result.files} files, {result.vehicles} vehicles")
        files_total += result.files
    ctx.progress(len(days), len(days))
    if not_analysed and not inputs:
        return StageResult(
            UP_TO_DATE, message=f"no analytics output for {', '.join(not_analysed)}: no bundle"
        )
    if not written:
        current = audit_bundle_path(settings, ctx.run_date, ctx.fleet)
        return StageResult(
            UP_TO_DATE,
            {"bundles": 0},
            tuple(inputs),
            (),
            f"bundle {ctx.rel(current)} is current"
            if len(inputs) == 1
            else f"{len(inputs)} bundles are current",
        )
    message = "bundle " + "; bundle ".join(written)
    return StageResult(
        DONE,
        {"bundles": len(written), "files": files_total},
        tuple(inputs),
        tuple(outputs),
        message,
    )


def _stage_retention(ctx: NightlyContext) -> StageResult:
    cfg = ctx.settings.retention
    r = apply_retention(
        ctx.data_dir,
        ctx.run_date,
        archive_after_days=cfg.archive_after_days,
        purge_after_days=cfg.purge_after_days,
        zstd_level=cfg.archive_zstd_level,
        on_progress=ctx.progress,
    )
    # under the lock, after the start of the run finished what a killed run's journals
    # left: a temporary still there a day later has no writer
    stale = sweep_stale_temporaries(ctx.data_dir)
    counts = {
        "archived_partitions": r.archived_partitions,
        "archived_files": r.archived_files,
        "purged_partitions": r.purged_partitions,
        "purged_quarantine_alerts": r.purged_quarantine_alerts,
        "stale_temporaries": stale,
    }
    status = (
        DONE
        if r.archived_files or r.purged_partitions or r.purged_quarantine_alerts or stale
        else UP_TO_DATE
    )
    message = (
        f"archived {r.archived_partitions} partitions older than {r.archive_before}, "
        f"purged {r.purged_partitions} older than {r.purge_before} "
        f"and {r.purged_quarantine_alerts} of quarantine and alerts"
    )
    if stale:
        message += f"; removed {stale} temporary files of writers that died a day or more ago"
    inputs = (
        f"lake/telemetry/date<{r.archive_before}",
        f"archive/telemetry/date<{r.purge_before}",
        f"lake/quarantine/date<{r.purge_before}",
        f"lake/alerts/date<{r.purge_before}",
    )
    return StageResult(status, counts, inputs, (), message)


#: The nightly stages, in order (their names are ``NIGHTLY_STAGES`` of the config, which
#: checks ``nightly.skip_stages`` when it is loaded).
STAGES: tuple[Stage, ...] = (
    Stage(COMPACTION, _stage_compaction, "merge, deduplicate and sort small telemetry files"),
    Stage("reconciliation", _stage_reconciliation, "expected vs received readings, gaps"),
    Stage("analytics", _stage_analytics, "capacity, resistance, SoH trend, warranty"),
    Stage("anomalies", _stage_anomalies, "isolation-forest anomaly flags"),
    Stage("reports", _stage_reports, "fleet and vehicle PDF/CSV reports"),
    Stage("audit", _stage_audit, "signed audit bundle (when configured)"),
    Stage("retention", _stage_retention, "archive and purge old raw telemetry"),
)


# --------------------------------------------------------------------------- runner


def fleet_today(settings: Settings, now: datetime | None = None) -> date:
    """Today's date in the fleet's time zone.

    Raises
    ------
    ValueError
        ``fleet.timezone`` is not an IANA time zone.
    """
    try:
        tz = ZoneInfo(settings.fleet.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"fleet.timezone: {settings.fleet.timezone!r} is not an IANA time zone"
        ) from None
    return (now or datetime.now(UTC)).astimezone(tz).date()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("fleetbms", "pyarrow", "duckdb", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _compaction_current(settings: Settings, done: DoneStore, day: date, fleet: str) -> bool:
    """The (date, fleet) partition is compacted as it is now (or holds no telemetry)."""
    files = sorted(telemetry_dir(settings.lake_dir, day, fleet).glob("*.parquet"))
    fp = digest(file_fingerprint(files, settings.data_dir))
    return not files or done.is_done(COMPACTION, partition_key(day, fleet), fp)


def _changed_dates(done: DoneStore, settings: Settings, fleet: str, run_date: date) -> list[date]:
    """Dates within the lookback whose telemetry partition changed since compaction."""
    days = (run_date - timedelta(days=k) for k in range(1, settings.nightly.lookback_days + 1))
    return [d for d in days if not _compaction_current(settings, done, d, fleet)]


def _missed_dates(settings: Settings, done: DoneStore, fleet: str, run_date: date) -> list[date]:
    """Dates since the fleet's last completed run whose telemetry was never compacted:
    the nights cron missed (server down), however many, back to the archive horizon;
    and those after the fleet's first telemetry without any (ingest down too), which no
    run has reported yet: reconciliation names them, and the run exits 3 (gaps)."""
    last = max(
        (
            date.fromisoformat(r["run_date"])
            for r in run_records(settings.state_dir)
            if r.get("fleet") == fleet
            and r.get("exit_code") in (EXIT_OK, EXIT_GAPS, EXIT_NO_DATA)
            and r.get("run_date", "9999") < run_date.isoformat()
        ),
        default=None,
    )
    if last is None:
        return []  # first run: the lookback only
    oldest = max(
        last + timedelta(days=1), run_date - timedelta(days=settings.retention.archive_after_days)
    )
    days = (oldest + timedelta(days=k) for k in range((run_date - oldest).days))
    # a date before the fleet's first telemetry (a run before its vehicles reported at
    # all) is no night whose telemetry went missing
    first = _first_telemetry_date(settings, fleet)
    archive = settings.data_dir / "archive"
    return [
        d
        for d in days
        if not _compaction_current(settings, done, d, fleet)
        or (
            first is not None
            and d > first
            and not any(telemetry_dir(settings.lake_dir, d, fleet).glob("*.parquet"))
            # archived by a later run (retention): its telemetry was there
            and not any(telemetry_dir(archive, d, fleet).glob("*.parquet"))
        )
    ]


def _first_telemetry_date(settings: Settings, fleet: str) -> date | None:
    """The oldest date with a telemetry partition of ``fleet``, in the lake or archive."""
    dates = []
    for base in (settings.lake_dir / "telemetry", settings.data_dir / "archive" / "telemetry"):
        for part in base.glob(f"date=*/fleet={fleet}"):
            try:
                day = date.fromisoformat(part.parent.name.removeprefix("date="))
            except ValueError:
                continue  # not a partition of the layout
            if any(part.glob("*.parquet")):
                dates.append(day)
    return min(dates, default=None)


def _date_settled(settings: Settings, done: DoneStore, day: date) -> bool:
    """Every fleet's partition of ``day`` is compacted as it is now."""
    base = settings.lake_dir / "telemetry" / f"date={day.isoformat()}"
    fleets = [p.name.removeprefix("fleet=") for p in base.glob("fleet=*")] if base.is_dir() else []
    return all(_compaction_current(settings, done, day, f) for f in fleets)


def _emit(observer: Observer | None, event: str, **fields: Any) -> None:
    if observer is not None:
        observer({"event": event, **fields})


def run_nightly(
    settings: Settings,
    *,
    day: date | None = None,
    fleet: str | None = None,
    stages: tuple[Stage, ...] = STAGES,
    observer: Observer | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Run the nightly batch and return its run record (also in ``state/runs/``).

    Parameters
    ----------
    settings : Settings
        Effective configuration (data directory, fleet, section values).
    day : date, optional
        The run date; default: yesterday in ``fleet.timezone``, or yesterday in UTC when
        that is earlier (never a UTC date that has not ended).
    fleet : str, optional
        Fleet id; default ``fleet.id``.
    stages : tuple of Stage
        The stages to run, in order.
    observer : callable, optional
        Receives progress events (``run_start``, ``stage_start``, ``progress``,
        ``stage_end``, ``run_end``) as mappings.

    Returns
    -------
    dict
        The run record; ``exit_code`` is 0, 1, 3 or 66.

    Raises
    ------
    LockedError
        Another run holds the lock.
    ValueError
        Bad fleet id or time zone, ``day`` after today (UTC), no lake in the data
        directory, or a fleet without telemetry or registered vehicles in it.
    """
    fleet = fleet or settings.fleet.id
    if not re.fullmatch(FLEET_PATTERN, fleet):
        raise ValueError(f"fleet {fleet!r} is not 1-64 characters of [A-Za-z0-9_-]")
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    if day is not None and day > today:
        # Retention counts ages from the run date: a future one would purge recent data.
        raise ValueError(f"run date {day} is in the future (today is {today} UTC)")
    # the fleet's yesterday, unless that UTC date has not ended yet (a fleet ahead of UTC,
    # run before its midnight there: 00:00-05:30 in India): then the UTC yesterday
    run_date = day or min(fleet_today(settings, now), today) - timedelta(days=1)
    require_fleet(settings, fleet)
    state = settings.state_dir
    with nightly_lock(
        state,
        purpose=f"nightly {run_date} fleet {fleet}",
        timeout_s=settings.nightly.lock_timeout_s,
    ):
        started = datetime.now(UTC)
        run_id = new_run_id(started)
        record_path = state / "runs" / f"{run_id}.json"
        record: dict[str, Any] = {
            "run_id": run_id,
            "command": "nightly",
            "fleet": fleet,
            "run_date": run_date.isoformat(),
            "pid": os.getpid(),
            "started_at": started.isoformat(timespec="seconds"),
            "status": "running",
            "exit_code": None,
            "versions": _versions(),
            "stages": [],
        }
        write_json_atomic(record, record_path)
        finished = False
        try:
            done = DoneStore(state, settings.data_dir)
            record["recovered"] = recover_compactions(settings.data_dir)
            claimed = claim_dirty(state, run_date)
            changed = _changed_dates(done, settings, fleet, run_date)
            missed = _missed_dates(settings, done, fleet, run_date)
            # Dates a killed or failed run had taken on stay pending until a run completes
            # them (their compaction may be done while later stages are not).
            pending_path = state / "nightly" / f"pending-fleet={fleet}.json"
            pending = [date.fromisoformat(x) for x in read_json(pending_path) or []]
            dates = tuple(sorted({run_date, *claimed, *changed, *missed, *pending}))
            write_json_atomic([d.isoformat() for d in dates], pending_path)
            record["dates"] = [d.isoformat() for d in dates]
            record["dirty_dates"] = [d.isoformat() for d in claimed]
            write_json_atomic(record, record_path)
            _emit(observer, "run_start", run_id=run_id, fleet=fleet, dates=record["dates"])
            no_data = not any(telemetry_dir(settings.lake_dir, run_date, fleet).glob("*.parquet"))
            exit_code = _run_stages(
                settings,
                run_id,
                run_date,
                dates,
                fleet,
                done,
                stages,
                observer,
                record,
                record_path,
            )
            if exit_code != EXIT_FAILED:
                pending_path.unlink()
                if no_data:
                    exit_code = EXIT_NO_DATA
                    record["error"] = _no_data_message(settings, run_date, fleet)
            for d in claimed:
                release_dirty(
                    state, d, done=exit_code != EXIT_FAILED and _date_settled(settings, done, d)
                )
            record["exit_code"] = exit_code
            record["status"] = {
                EXIT_OK: "ok",
                EXIT_GAPS: "ok, data gaps",
                EXIT_NO_DATA: "no telemetry for the run date",
            }.get(exit_code, "failed")
            finished = True
        finally:
            if not finished:
                record["status"] = "failed"
                record["exit_code"] = EXIT_FAILED
            ended = datetime.now(UTC)
            record["finished_at"] = ended.isoformat(timespec="seconds")
            record["duration_s"] = round((ended - started).total_seconds(), 3)
            write_json_atomic(record, record_path)
            _emit(
                observer,
                "run_end",
                run_id=run_id,
                status=record["status"],
                exit_code=record["exit_code"],
            )
    return record


def _no_data_message(settings: Settings, run_date: date, fleet: str) -> str:
    """What an operator needs to see when the run date has no telemetry at all."""
    days = sorted(
        p.parent.name.removeprefix("date=")
        for p in (settings.lake_dir / "telemetry").glob(f"date=*/fleet={fleet}")
        if any(p.glob("*.parquet"))
    )
    span = f"its telemetry in the lake spans {days[0]}..{days[-1]}" if days else "it has none there"
    return (
        f"no telemetry for fleet {fleet} on {run_date} in {settings.lake_dir / 'telemetry'} "
        f"({span}); is ingest running, or is the date wrong?"
    )


def _run_stages(
    settings: Settings,
    run_id: str,
    run_date: date,
    dates: tuple[date, ...],
    fleet: str,
    done: DoneStore,
    stages: tuple[Stage, ...],
    observer: Observer | None,
    record: dict[str, Any],
    record_path: Path,
) -> int:
    gaps = False
    # as the config check reads it (``Choices(many=True)``): items trimmed, any case
    skip = {x.strip().lower() for x in settings.nightly.skip_stages.split(",") if x.strip()}
    unknown = skip - {st.name for st in stages}
    if unknown:
        names = ", ".join(st.name for st in stages)
        raise ValueError(
            f"nightly.skip_stages: unknown stage(s) {', '.join(sorted(unknown))}; stages: {names}"
        )
    for index, stage in enumerate(stages):
        if stage.name in skip:
            skipped: dict[str, Any] = {
                "name": stage.name,
                "status": SKIPPED,
                "duration_s": 0.0,
                "message": "listed in nightly.skip_stages",
            }
            record["stages"].append(skipped)
            _emit(
                observer,
                "stage_end",
                stage=stage.name,
                status=SKIPPED,
                duration_s=0.0,
                message=skipped["message"],
            )
            continue
        pause_point(f"before:{stage.name}")
        _emit(observer, "stage_start", stage=stage.name, index=index, total=len(stages))

        def progress(n: int, total: int, name: str = stage.name) -> None:
            _emit(observer, "progress", stage=name, done=n, total=total)

        ctx = NightlyContext(settings, run_id, run_date, dates, fleet, done, progress)
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"name": stage.name, "status": "running"}
        record["stages"].append(entry)
        try:
            result = stage.run(ctx)
        except STAGE_ERRORS as exc:
            entry.update(
                status=FAILED,
                duration_s=round(time.perf_counter() - t0, 3),
                message=f"{type(exc).__name__}: {exc}",
            )
            record["error"] = f"stage {stage.name} failed: {exc}"
            write_json_atomic(record, record_path)
            _emit(
                observer,
                "stage_end",
                stage=stage.name,
                status=FAILED,
                duration_s=entry["duration_s"],
                message=entry["message"],
            )
            return EXIT_FAILED
        entry.update(
            status=result.status,
            duration_s=round(time.perf_counter() - t0, 3),
            counts=dict(result.counts),
            inputs=list(result.inputs),
            outputs=list(result.outputs),
            message=result.message,
            data_gaps=result.data_gaps,
        )
        gaps = gaps or result.data_gaps
        write_json_atomic(record, record_path)
        _emit(
            observer,
            "stage_end",
            stage=stage.name,
            status=result.status,
            duration_s=entry["duration_s"],
            message=result.message,
            counts=dict(result.counts),
        )
        pause_point(f"after:{stage.name}")
    return EXIT_GAPS if gaps else EXIT_OK


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class NightlyStatus:
    """What ``fleetbms status`` shows.

    ``ingest_lag_s`` is the time since the newest ``received_at`` in the telemetry
    (``None`` without telemetry); ``open_anomalies`` is ``None`` while the anomaly table
    does not exist. ``data_dir_exists`` is false while nothing has run in the data
    directory (or it is the wrong one): then everything else is empty.
    """

    runs: list[dict[str, Any]]
    running: str | None
    dirty_dates: list[date]
    sizes_bytes: dict[str, int]
    newest_received_at: datetime | None
    ingest_lag_s: float | None
    open_anomalies: int | None
    data_dir_exists: bool


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += (Path(root) / f).stat().st_size
            except FileNotFoundError:
                continue
    return total


def _newest_received_at(lake: Path, probe_files: int = 16) -> datetime | None:
    """Newest ``received_at`` from the footers of the most recently written files."""
    files = list((lake / "telemetry").glob("date=*/fleet=*/*.parquet"))
    mtimes = []
    for f in files:
        try:
            mtimes.append((f.stat().st_mtime_ns, f))
        except FileNotFoundError:
            continue
    newest: datetime | None = None
    for _m, f in sorted(mtimes, reverse=True)[:probe_files]:
        try:
            meta = pq.ParquetFile(f).metadata
        except FileNotFoundError:
            continue
        col = meta.schema.to_arrow_schema().get_field_index("received_at")
        for i in range(meta.num_row_groups):
            st = meta.row_group(i).column(col).statistics
            if st is not None and st.has_min_max:
                value = st.max if isinstance(st.max, datetime) else None
                if value is not None:
                    value = value if value.tzinfo else value.replace(tzinfo=UTC)
                    newest = value if newest is None or value > newest else newest
    return newest


def _open_anomalies(lake: Path) -> int | None:
    """Flags with status ``new`` or ``ongoing`` on each fleet's latest scored date."""
    base = lake / "anomalies"
    if not base.is_dir():
        return None
    latest: dict[str, Path] = {}
    for f in sorted(base.glob("date=*/fleet=*/part.parquet")):
        latest[f.parent.name] = f  # dates sort as text, so the last one wins
    total = 0
    for f in latest.values():
        status = pq.read_table(f, columns=["status"])["status"]
        total += int(pc.sum(pc.is_in(status, pa.array(["new", "ongoing"]))).as_py() or 0)
    return total


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def nightly_status(
    settings: Settings, *, runs: int = 5, now: datetime | None = None
) -> NightlyStatus:
    """Last runs, dirty dates, sizes, ingest lag and open anomalies (reads only)."""
    # the newest record tells whether a run is in progress, however few are listed
    records = run_records(settings.state_dir, limit=max(runs, 1))
    running = None
    for rec in records:
        if rec.get("status") == "running":
            alive = _pid_alive(int(rec.get("pid", 0)))
            if alive:
                running = f"run {rec['run_id']} (pid {rec['pid']})"
            else:
                rec["status"] = "interrupted"
    records = records[:runs]
    sizes = {}
    # every part of the data directory (docs/lake.md), so the sizes add up to its size
    for name, path in (
        ("lake/telemetry", settings.lake_dir / "telemetry"),
        ("lake/metrics", settings.lake_dir / "metrics"),
        ("lake/quarantine", settings.lake_dir / "quarantine"),
        ("lake/alerts", settings.lake_dir / "alerts"),
        ("lake/anomalies", settings.lake_dir / "anomalies"),
        ("lake/anomaly_features", settings.lake_dir / "anomaly_features"),
        ("lake/registry", settings.lake_dir / "registry"),
        ("archive", settings.data_dir / "archive"),
        ("reports", settings.reports_dir),
        ("state", settings.state_dir),
        ("truth", settings.truth_dir),
        ("sim", settings.data_dir / "sim"),
    ):
        sizes[name] = _tree_bytes(path)
    newest = _newest_received_at(settings.lake_dir)
    now = now or datetime.now(UTC)
    lag = (now - newest).total_seconds() if newest is not None else None
    return NightlyStatus(
        records,
        running,
        dirty_dates(settings.state_dir),
        sizes,
        newest,
        lag,
        _open_anomalies(settings.lake_dir),
        settings.data_dir.is_dir(),
    )
