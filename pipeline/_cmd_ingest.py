"""Commands of the ingest stage: ``ingest`` (MQTT worker) and ``import`` (JSON-lines files)."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import click

from ingest import (
    AlertEngine,
    AlertProfile,
    IngestError,
    IngestOptions,
    import_files,
    run_ingest,
    vehicles_from_registry,
)
from pipeline._config import AlertsConfig, Settings, with_overrides
from pipeline._params import NON_EMPTY, NonEmptyPath


def _engine(settings: Settings) -> AlertEngine:
    alerts: AlertsConfig = settings.alerts
    profiles = {
        "nmc": AlertProfile(**dataclasses.asdict(alerts.nmc)),
        "lfp": AlertProfile(**dataclasses.asdict(alerts.lfp)),
    }
    return AlertEngine(
        profiles,
        default_chemistry=alerts.default_chemistry,
        default_capacity_ah=alerts.capacity_ah,
        vehicles=vehicles_from_registry(settings.lake_dir),
        thermal_window_s=alerts.thermal_window_s,
    )


def _log_to_stderr() -> None:
    logger = logging.getLogger("fleetbms.ingest")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


@click.command("ingest")
@click.option("--broker", default=None, help="HOST:PORT of the MQTT broker [ingest.broker].")
@click.option("--tls-ca", default=None, help="CA bundle; enables TLS.")
@click.option("--tls-cert", default=None, help="Client certificate (with --tls-key).")
@click.option("--tls-key", default=None, help="Client private key.")
@click.option("--username", default=None, help="MQTT user name.")
@click.option(
    "--password-file",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the MQTT password (first line).",
)
@click.option(
    "--group", type=NON_EMPTY, default=None, help="Shared-subscription group ($share/NAME/...)."
)
@click.option("--client-id", type=NON_EMPTY, default=None, help="Session identity and worker id.")
@click.option("--flush-rows", type=int, default=None, help="Readings per flush.")
@click.option("--flush-age", type=float, default=None, help="Max wait of a buffered message [s].")
@click.option("--metrics-port", type=int, default=None, help="Prometheus /metrics port; 0 = off.")
@click.option("--log-interval", type=float, default=None, help="Counter log line every [s].")
@click.option(
    "--idle-exit",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Exit after this many seconds without messages (drain a backlog); 0 = run on.",
)
@click.pass_obj
def ingest_command(
    settings: Settings,
    broker: str | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    username: str | None,
    password_file: Path | None,
    group: str | None,
    client_id: str | None,
    flush_rows: int | None,
    flush_age: float | None,
    metrics_port: int | None,
    log_interval: float | None,
    idle_exit: float,
) -> None:
    """Subscribe to the fleet's BMS topics and land every reading durably in the lake.

    Runs until SIGTERM or Ctrl-C, then flushes, acknowledges and disconnects. Logs one
    JSON line of counters every --log-interval seconds on stderr.

    Example: fleetbms ingest --broker 127.0.0.1:1883 --group workers --metrics-port 9108
    """
    password = None
    if password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            raise IngestError(f"cannot read password file {password_file}: {exc}") from None
    settings = with_overrides(
        settings,
        {
            "ingest.broker": broker,
            "ingest.tls_ca": tls_ca,
            "ingest.tls_cert": tls_cert,
            "ingest.tls_key": tls_key,
            "ingest.username": username,
            "ingest.password": password,
            "ingest.group": group,
            "ingest.client_id": client_id,
            "ingest.flush_rows": flush_rows,
            "ingest.flush_age_s": flush_age,
            "ingest.metrics_port": metrics_port,
            "ingest.log_interval_s": log_interval,
        },
    )
    options = IngestOptions(**dataclasses.asdict(settings.ingest), idle_exit_s=idle_exit)
    _log_to_stderr()
    counters = run_ingest(
        options,
        lake_dir=settings.lake_dir,
        state_dir=settings.state_dir,
        engine=_engine(settings),
    )
    click.echo(
        f"ingest stopped: {counters.written} readings written, "
        f"{counters.duplicates} duplicates, {sum(counters.quarantined.values())} quarantined"
    )


@click.command("import")
@click.argument("files", nargs=-1, required=True, type=NonEmptyPath(dir_okay=False, path_type=Path))
@click.option("--fleet", type=NON_EMPTY, default=None, help="Fleet id of the readings [fleet.id].")
@click.pass_obj
def import_command(settings: Settings, files: tuple[Path, ...], fleet: str | None) -> None:
    """Import JSON-lines files (readings or batches, plain or gzip) into the lake.

    Same validation, quarantine, dedup and writer as the live ingest; importing the same
    file twice writes its readings once.

    Example: fleetbms import gateway-dump.jsonl.gz --fleet demo
    """
    summary = import_files(
        list(files),
        fleet=fleet or settings.fleet.id,
        lake_dir=settings.lake_dir,
        state_dir=settings.state_dir,
        engine=_engine(settings),
        flush_rows=settings.ingest.flush_rows,
        max_payload_bytes=settings.ingest.max_payload_bytes,
        max_ranges=settings.ingest.dedup_window,
    )
    c = summary.counters
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(c.quarantined.items()))
    click.echo(
        f"imported {summary.lines} lines from {summary.files} file(s): {c.written} readings "
        f"written, {c.duplicates} duplicates, {sum(c.quarantined.values())} quarantined"
        + (f" ({reasons})" if reasons else "")
    )


COMMANDS: list[click.Command] = [ingest_command, import_command]
