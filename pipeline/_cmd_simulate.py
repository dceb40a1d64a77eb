"""Commands of the simulate stage: ``simulate`` (to the lake, or live over MQTT)."""

from __future__ import annotations

import signal
import threading
from datetime import date, datetime, timedelta
from pathlib import Path
from types import FrameType
from zoneinfo import ZoneInfo

import click

from pipeline._config import Settings, with_overrides
from pipeline._params import ANY_DAY, NON_EMPTY, NonEmptyPath


def _split(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(p.strip() for p in value.split(",") if p.strip())


def _vins_with_history(settings: Settings, fleet: str, seed: int, vehicles: int) -> list[str]:
    """The simulated VINs whose history the lake may hold: those of the fleet's registry
    (a simulated history registers every vehicle), so the search for their last seqs
    stops at the newest dates instead of reading the whole history for a VIN it never
    had; all of them when the fleet has no registry rows (a history that came through
    ingest)."""
    from bms import read_registry
    from sim import make_vin

    vins = [make_vin(fleet, seed, i) for i in range(vehicles)]
    registered = set(read_registry(settings.lake_dir, fleet)["vin"].to_pylist())
    return [v for v in vins if v in registered] if registered else vins


@click.command("simulate")
@click.option("--to-lake", "to_lake", is_flag=True, help="Write history straight into the lake.")
@click.option("--live", is_flag=True, help="Publish readings over MQTT as they happen.")
@click.option("--vehicles", type=int, default=10, show_default=True, help="Fleet size.")
@click.option("--days", type=int, default=60, show_default=True, help="Simulated days.")
@click.option(
    "--start",
    type=ANY_DAY,
    default=None,
    help="First local day [default: DAYS days before today; --live: now].",
)
@click.option("--fleet", type=NON_EMPTY, default=None, help="Fleet id [fleet.id].")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same data.")
@click.option("--chemistry", default="mixed", show_default=True, help="nmc, lfp or mixed.")
@click.option("--climate", default="mixed", show_default=True, help="hot, mild or mixed.")
@click.option(
    "--vehicle-class", default="car", show_default=True, help="car, two_wheeler or mixed."
)
@click.option("--cells", type=int, default=None, help="Series cells per pack, 14..200.")
@click.option(
    "--cadence-s", type=int, default=30, show_default=True, help="Reading interval, driving."
)
@click.option(
    "--idle-cadence-s", type=int, default=600, show_default=True, help="Reading interval parked."
)
@click.option(
    "--fault-rate",
    type=float,
    default=0.2,
    show_default=True,
    help="Share of vehicles that develop a fault.",
)
@click.option("--faults", default=None, help="Fault kinds to draw from, comma-separated.")
@click.option("--ageing-scale", type=float, default=None, help="Fleet degradation scalar [0.5].")
@click.option(
    "--max-age-days",
    type=int,
    default=0,
    show_default=True,
    help="Vehicles start up to this many days in service (pre-aged).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="--to-lake: replace this fleet entirely (telemetry of every date, registry, truth).",
)
@click.option("--broker", default=None, help="--live: HOST:PORT [ingest.broker].")
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="--live: time factor.",
)
@click.option(
    "--duration-s", type=click.FloatRange(min=0), default=None, help="--live: stop after [s]."
)
@click.option(
    "--max-readings",
    type=click.IntRange(min=1),
    default=None,
    help="--live: stop after N readings [default: no limit].",
)
@click.option(
    "--buffer-dir",
    type=NonEmptyPath(file_okay=False, path_type=Path),
    default=None,
    help="--live: store-and-forward buffers [DATA_DIR/sim/buffer].",
)
@click.option(
    "--client-id", type=NON_EMPTY, default=None, help="--live: MQTT client id [sim-FLEET]."
)
@click.pass_obj
def simulate_command(
    settings: Settings,
    to_lake: bool,
    live: bool,
    vehicles: int,
    days: int,
    start: date | None,
    fleet: str | None,
    seed: int,
    chemistry: str,
    climate: str,
    vehicle_class: str,
    cells: int | None,
    cadence_s: int,
    idle_cadence_s: int,
    fault_rate: float,
    faults: str | None,
    ageing_scale: float | None,
    max_age_days: int,
    overwrite: bool,
    broker: str | None,
    speed: float,
    duration_s: float | None,
    max_readings: int | None,
    buffer_dir: Path | None,
    client_id: str | None,
) -> None:
    """Simulate a fleet's batteries (physics, ageing, faults) into the lake or over MQTT.

    --to-lake writes telemetry (one file per date), the vehicle registry and the ground
    truth (DATA_DIR/truth). --live publishes readings in real time (or --speed times
    faster) with a store-and-forward buffer per vehicle; stop it with Ctrl-C/SIGTERM,
    --duration-s or --max-readings.

    Example: fleetbms simulate --to-lake --vehicles 5 --days 30 --start 2026-01-01 --seed 7
    """
    from bms import last_seqs
    from sim import FleetSpec, run_live, simulate_to_lake

    if to_lake == live:
        raise click.UsageError("choose one of --to-lake or --live")
    settings = with_overrides(settings, {"fleet.id": fleet, "ingest.broker": broker})
    tz = ZoneInfo(settings.fleet.timezone)
    if start is not None:
        first = start
    elif live:
        first = datetime.now(tz).date()
    else:
        first = datetime.now(tz).date() - timedelta(days=max(days, 1))
    # Readings from the future break the lake's dates (a catch-up would analyse days to
    # come; ingest rejects a ts over 24 h ahead): a simulated history ends by yesterday,
    # as a day's readings run to its midnight (today's are still to come).
    today = datetime.now(tz).date()
    last = first + timedelta(days=max(days, 1) - 1)
    if to_lake and last >= today:
        raise click.UsageError(
            f"--start {first} with --days {days} ends on {last}, not before today ({today}, "
            f"{tz.key}): a history written to the lake cannot reach into the future"
        )
    if live and first > today:
        raise click.UsageError(
            f"--start {first} is after today ({today}, {tz.key}): live readings would be "
            "timestamped in the future"
        )
    kinds = _split(faults)
    spec_args: dict[str, object] = {
        "vehicles": vehicles,
        "days": days,
        "start": first,
        "fleet": settings.fleet.id,
        "seed": seed,
        "chemistry": chemistry,
        "climate": climate,
        "vehicle_class": vehicle_class,
        "cells": cells,
        "cadence_s": cadence_s,
        "idle_cadence_s": idle_cadence_s,
        "fault_rate": fault_rate,
        "max_age_days": max_age_days,
        "timezone": settings.fleet.timezone,
    }
    if kinds is not None:
        spec_args["fault_kinds"] = kinds
    if ageing_scale is not None:
        spec_args["ageing_scale"] = ageing_scale
    spec = FleetSpec(**spec_args)  # type: ignore[arg-type]

    if to_lake:
        summary = simulate_to_lake(spec, settings.data_dir, overwrite=overwrite)
        rate = summary.readings / max(summary.seconds, 1e-9)
        click.echo(
            f"simulated {summary.vehicles} vehicles x {summary.days} days "
            f"({summary.first_date}..{summary.last_date}, fleet {spec.fleet}): "
            f"{summary.readings:,} readings in {summary.files} files, "
            f"{summary.faults} injected faults, {summary.seconds:.1f} s ({rate:,.0f} readings/s)"
        )
        click.echo(f"lake: {settings.lake_dir}  truth: {settings.truth_dir}")
        return

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    start_dt = None
    if start is not None:
        start_dt = datetime(first.year, first.month, first.day, tzinfo=tz)
    try:
        live_summary = run_live(
            spec,
            settings.ingest.broker,
            buffer_dir=buffer_dir or settings.data_dir / "sim" / "buffer",
            speed=speed,
            start=start_dt,
            duration_s=duration_s,
            max_readings=max_readings,
            stop=stop,
            client_id=client_id,
            # a fleet with history in the lake (simulate --to-lake), or in the archive
            # once retention moved it there: each vehicle's seq continues after its last
            # stored reading, as a real vehicle's counter would
            durable_seqs=last_seqs(
                settings.lake_dir,
                spec.fleet,
                _vins_with_history(settings, spec.fleet, spec.seed, spec.vehicles),
                older=[settings.data_dir / "archive"],
            ),
        )
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    click.echo(
        f"generated {live_summary.generated:,} readings: {live_summary.published:,} published, "
        f"{live_summary.replayed:,} replayed in {live_summary.batches} batches, "
        f"{live_summary.pending:,} awaiting ack, {live_summary.reconnects} reconnects; "
        f"stopped by {live_summary.stopped_by}"
    )


COMMANDS: list[click.Command] = [simulate_command]
