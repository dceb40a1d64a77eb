"""Commands of the nightly stage: ``nightly``, ``status`` and ``erase``.

Exit codes of ``nightly``: 0 ok, 1 failed, 2 usage error, 3 completed with data gaps,
66 completed but no telemetry for the run date (EX_NOINPUT), 75 another run holds the
lock (EX_TEMPFAIL: try again later).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

import click

from ingest import IngestStatus, ingest_status
from pipeline._config import Settings
from pipeline._nightly import EXIT_LOCKED, nightly_status, run_nightly
from pipeline._nightly_state import LockedError, nightly_lock
from pipeline._params import NON_EMPTY, PAST_DAY, BrokerAddress


class _JsonLog:
    """One JSON object per event and line on stdout (for cron and journald)."""

    def __call__(self, event: Mapping[str, Any]) -> None:
        click.echo(json.dumps(dict(event), sort_keys=True, default=str))

    def close(self) -> None:
        """Nothing to release."""


class _ProgressBars:
    """rich progress bars on stderr, one per stage."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description:<40}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._tasks: dict[str, Any] = {}
        self._progress.start()

    def __call__(self, event: Mapping[str, Any]) -> None:
        kind = event["event"]
        stage = str(event.get("stage", ""))
        if kind == "stage_start":
            self._tasks[stage] = self._progress.add_task(stage, total=None)
        elif kind == "progress":
            self._progress.update(self._tasks[stage], completed=event["done"], total=event["total"])
        elif kind == "stage_end":
            task = self._tasks[stage]
            total = self._progress.tasks[task].total or 1
            self._progress.update(
                task,
                description=f"{stage}: {event['status']}",
                total=total,
                completed=total,
            )

    def close(self) -> None:
        self._progress.stop()


def _summary(record: Mapping[str, Any]) -> str:
    lines = [f"nightly {record['run_date']} fleet {record['fleet']}: {record['status']}"]
    lines.append(f"  dates: {', '.join(record.get('dates', []))}")
    for st in record["stages"]:
        lines.append(
            f"  {st['name']:<15} {st['status']:<14} {st.get('duration_s', 0):>8.2f} s"
            f"  {st.get('message', '')}"
        )
    lines.append(f"  run record: state/runs/{record['run_id']}.json")
    return "\n".join(lines)


@click.command("nightly")
@click.option(
    "--date",
    "day",
    type=PAST_DAY,
    default=None,
    help="UTC event date to process, not after today [default: yesterday in fleet.timezone, "
    "or in UTC if earlier].",
)
@click.option("--fleet", type=NON_EMPTY, default=None, help="Fleet id [default: fleet.id].")
@click.pass_obj
def nightly_command(settings: Settings, day: date | None, fleet: str | None) -> int:
    """Run the nightly batch: compaction, reconciliation, analytics, anomalies,
    reports, audit bundle, retention; also every date marked dirty by late data.

    Safe to rerun: work whose inputs did not change is skipped. Progress bars on a
    terminal, JSON lines otherwise. Exit codes: 0 ok, 1 failed, 2 usage error,
    3 completed with data gaps, 66 completed but no telemetry for the run date,
    75 another run holds data/state/nightly.lock.

    Example: fleetbms --data-dir data nightly --date 2026-11-25 --fleet demo
    """
    observer: _JsonLog | _ProgressBars = _ProgressBars() if sys.stderr.isatty() else _JsonLog()
    try:
        record = run_nightly(settings, day=day, fleet=fleet, observer=observer)
    except LockedError as exc:
        observer.close()
        click.echo(f"Error: {exc}", err=True)
        return EXIT_LOCKED
    observer.close()
    if isinstance(observer, _ProgressBars):
        click.echo(_summary(record))
    if record.get("error"):
        click.echo(f"Error: {record['error']}", err=True)
    return int(record["exit_code"])


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@click.command("status")
@click.option(
    "--runs",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="How many recent runs to show.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@click.pass_obj
def status_command(settings: Settings, runs: int, as_json: bool) -> None:
    """Show the last nightly runs, dirty dates, lake size, ingest lag and open anomalies.

    A data directory that does not exist yet is said so (exit 0: nothing has run there).

    Example: fleetbms --data-dir data status --runs 3
    """
    st = nightly_status(settings, runs=runs)
    ing = ingest_status(settings.lake_dir, settings.state_dir)
    if as_json:
        obj = {
            "data_dir": str(settings.data_dir),
            "data_dir_exists": st.data_dir_exists,
            "runs": [
                {k: r.get(k) for k in ("run_id", "run_date", "fleet", "status", "exit_code")}
                for r in st.runs
            ],
            "running": st.running,
            "dirty_dates": [d.isoformat() for d in st.dirty_dates],
            "sizes_bytes": st.sizes_bytes,
            "newest_received_at": (
                st.newest_received_at.isoformat() if st.newest_received_at else None
            ),
            "ingest_lag_s": st.ingest_lag_s,
            "open_anomalies": st.open_anomalies,
            "ingest": _ingest_json(ing),
        }
        click.echo(json.dumps(obj, sort_keys=True, default=str))
        return
    if st.data_dir_exists:
        click.echo(f"data directory: {settings.data_dir}")
    else:
        click.echo(
            f"data directory: {settings.data_dir} does not exist yet: nothing has run there "
            "(wrong --data-dir or FLEETBMS_DATA_DIR?)"
        )
    click.echo(f"running: {st.running or 'no'}")
    click.echo("last runs:" if st.runs else "last runs: none")
    for r in st.runs:
        # a run in progress or killed has no exit code nor duration yet
        ended = (
            f" (exit {r['exit_code']})  {r.get('duration_s', '-')} s"
            if r.get("exit_code") is not None
            else ""
        )
        click.echo(
            f"  {r['run_id']}  date {r.get('run_date')}  fleet {r.get('fleet')}  "
            f"{r.get('status')}{ended}"
        )
    dirty = ", ".join(d.isoformat() for d in st.dirty_dates) or "none"
    click.echo(f"dirty dates: {dirty}")
    click.echo("sizes:")
    width = max(map(len, st.sizes_bytes), default=0)
    for name, n in st.sizes_bytes.items():
        click.echo(f"  {name:<{width}} {_size(n):>10}")
    if st.newest_received_at is None:
        click.echo("ingest lag: no telemetry")
    else:
        click.echo(
            f"ingest lag: {st.ingest_lag_s:.0f} s "
            f"(newest reading received {st.newest_received_at.isoformat()})"
        )
    _echo_ingest(ing)
    anomalies = "no anomaly table" if st.open_anomalies is None else str(st.open_anomalies)
    click.echo(f"open anomalies: {anomalies}")


def _ingest_json(ing: IngestStatus) -> dict[str, Any]:
    q = ing.newest_quarantined
    return {
        "workers": [
            {
                "worker": w.worker,
                "running_pid": w.running_pid,
                "last_saved": w.last_saved.isoformat() if w.last_saved else None,
                "vehicles": w.vehicles,
                "group": w.group,
            }
            for w in ing.workers
        ],
        "quarantined": ing.quarantined,
        "quarantined_total": sum(ing.quarantined.values()),
        "newest_quarantined": None
        if q is None
        else {
            "received_at": q.received_at.isoformat(),
            "reason": q.reason,
            "topic": q.topic,
            "detail": q.detail,
        },
        "unreadable_quarantine_files": ing.unreadable_files,
        "quarantine_dumps": ing.dumped,
    }


def _echo_ingest(ing: IngestStatus) -> None:
    click.echo("ingest workers:" if ing.workers else "ingest workers: none")
    now = datetime.now(UTC)
    for w in ing.workers:
        state = f"running (pid {w.running_pid})" if w.running_pid else "stopped"
        saved = (
            "never"
            if w.last_saved is None
            else (
                f"{w.last_saved.isoformat(timespec='seconds')} "
                f"({(now - w.last_saved).total_seconds():.0f} s ago)"
            )
        )
        group = f", group {w.group}" if w.group else ""
        vehicles = f"{w.vehicles} vehicle" + ("" if w.vehicles == 1 else "s")
        click.echo(f"  {w.worker:<16} {state}, {vehicles}{group}, last flush {saved}")
    total = sum(ing.quarantined.values())
    reasons = ", ".join(f"{k}={v}" for k, v in ing.quarantined.items())
    click.echo(f"quarantined: {total}" + (f" ({reasons})" if reasons else ""))
    q = ing.newest_quarantined
    if q is not None:
        click.echo(
            f"  newest {q.received_at.isoformat(timespec='seconds')} {q.reason} "
            f"on {q.topic}: {q.detail[:200]}"
        )
    if ing.dumped:
        click.echo(
            f"  {ing.dumped} kept as JSON dumps (the Parquet writer refused them): "
            "lake/quarantine/date=*/*.json"
        )
    if ing.unreadable_files:
        click.echo(f"  {ing.unreadable_files} quarantine file(s) could not be read")


@click.command("erase")
@click.option(
    "--vin", type=NON_EMPTY, required=True, help="The vehicle whose personal data is removed."
)
@click.option(
    "--broker",
    type=BrokerAddress(),
    default=None,
    help="Also delete the vehicle's retained acks on this MQTT broker (credentials and "
    "TLS from the [ingest] configuration).",
)
@click.pass_obj
def erase_command(settings: Settings, vin: str, broker: str | None) -> int:
    """Remove a vehicle's personal data from the lake, archive, state, truth and reports.

    Logs the erasure with a keyed hash of the VIN (never the VIN) in
    data/state/erasure/log.jsonl. Waits for no one: exits 75 while a nightly runs.
    Stop ingest of the vehicle first; with --broker its retained acks go too. Audit
    bundles and --reveal files kept outside DATA_DIR are not reached (see the README).

    Example: fleetbms --data-dir data erase --vin MAT612345NEX00001 --broker 127.0.0.1:1883
    """
    from pipeline._erase import BrokerError, clear_retained_acks, erase_vehicle

    try:
        with nightly_lock(settings.state_dir, purpose=f"erase {vin[:3]}...", timeout_s=0):
            r = erase_vehicle(
                settings.data_dir,
                vin,
                lake_zstd_level=settings.nightly.compact_zstd_level,
                archive_zstd_level=settings.retention.archive_zstd_level,
            )
    except LockedError as exc:
        click.echo(f"Error: {exc}", err=True)
        return EXIT_LOCKED
    if r.rows_removed or r.files_rewritten or r.files_deleted:
        click.echo(
            f"erased {vin}: {r.rows_removed} rows removed, {r.files_rewritten} files "
            f"rewritten, {r.files_deleted} deleted; logged as HMAC-SHA256 "
            f"{r.vin_hmac[:16]}... in {r.log}"
        )
    else:
        # still logged: the request was received and carried out
        click.echo(
            f"nothing in {settings.data_dir} held {vin}: nothing to erase; the request is "
            f"logged as HMAC-SHA256 {r.vin_hmac[:16]}... in {r.log}"
        )
    if r.bundles_exported:
        click.echo(
            f"reminder: audit bundles were exported from {settings.data_dir} (it holds "
            "state/keys/pseudonym.key): copies kept outside it still hold the vehicle under "
            "its pseudonym, and --reveal files map that to its VIN; erase cannot reach them: "
            "delete them, and have whoever received one do the same (README, erase)"
        )
    for path in r.unchecked:
        click.echo(
            f"Error: {path}: not readable as Parquet (being written, or damaged); it may "
            "still hold the VIN: remove it or let its writer finish, then erase again",
            err=True,
        )
    if broker is not None:
        ing = settings.ingest
        try:
            cleared = clear_retained_acks(
                vin,
                broker,
                username=ing.username,
                password=str(ing.password),
                tls_ca=ing.tls_ca,
                tls_cert=ing.tls_cert,
                tls_key=ing.tls_key,
            )
        except (BrokerError, OSError, ValueError) as exc:
            click.echo(f"Error: files erased, but the retained acks were not: {exc}", err=True)
            return 1
        click.echo(f"retained acks deleted on {broker}: {len(cleared)}")
    return 1 if r.unchecked else 0


COMMANDS: list[click.Command] = [nightly_command, status_command, erase_command]
