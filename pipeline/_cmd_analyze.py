"""Commands of the analyze stage: ``analyze`` and ``warranty presets``."""

from __future__ import annotations

import dataclasses
from datetime import date

import click

import bms
from pipeline._config import Settings
from pipeline._params import NON_EMPTY, PAST_DAY, require_fleet, require_lake


def analytics_params(settings: Settings, *, policy: str | None = None) -> bms.AnalyticsParams:
    """The library's parameters from the ``[analytics]`` (and reports policy) settings."""
    cfg = settings.analytics
    fields = {f.name for f in dataclasses.fields(bms.AnalyticsParams)}
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k in fields}
    return bms.AnalyticsParams(
        **values,
        warranty_policy=settings.reports.warranty_policy,
        policy_override=policy or "",
    )


def _line(s: bms.AnalyticsSummary) -> str:
    verdicts = ", ".join(f"{k} {v}" for k, v in s.verdicts.items()) or "none"
    text = (
        f"{s.day.isoformat()} fleets {','.join(s.fleets)}: {s.vehicles} vehicles, "
        f"{s.readings} readings ({s.duplicates_dropped} duplicates dropped), "
        f"{s.capacity_estimates} capacity estimates, {s.resistance_steps} resistance steps; "
        f"warranty: {verdicts}; {s.seconds:.1f} s"
        + (f" for the {s.unit_days} dates computed together" if s.unit_days > 1 else "")
    )
    if s.unknown_vins:
        text += (
            f"; {len(s.unknown_vins)} VIN(s) not in the registry: {', '.join(s.unknown_vins[:5])}"
        )
    if s.stale_after:
        text += f"; now stale: {', '.join(d.isoformat() for d in s.stale_after)}"
    return text


@click.command("analyze")
@click.option(
    "--date",
    "day",
    type=PAST_DAY,
    default=None,
    help="UTC date to compute; default: every date with data and no current results.",
)
@click.option("--fleet", type=NON_EMPTY, default=None, help="Only this fleet.")
@click.option(
    "--policy",
    type=NON_EMPTY,
    default=None,
    help="Warranty policy for every vehicle: a preset id or a TOML file "
    "(default: the registry's, else reports.warranty_policy).",
)
@click.option("--status", "show_status", is_flag=True, help="Only list dates that need work.")
@click.pass_obj
def analyze_command(
    settings: Settings,
    day: date | None,
    fleet: str | None,
    policy: str | None,
    show_status: bool,
) -> None:
    """Compute the metrics tables (vehicle_day, capacity, resistance, cell_day,
    vehicle_soh, warranty) for one date, or catch up on every pending date in order.

    Example: fleetbms analyze --date 2026-11-24 --fleet demo
    """
    params = analytics_params(settings, policy=policy)
    lake = require_lake(settings)
    if fleet is not None:
        require_fleet(settings, fleet)
    state = settings.state_dir / "analytics"
    # a bad policy (the flag's or the configured default) fails before any work, and
    # with --status too: it is what the dates listed would be computed with
    bms.load_warranty_policy(policy or settings.reports.warranty_policy)
    if show_status:
        rows = bms.analytics_status(lake, fleet=fleet, params=params, state_root=state)
        pending = [r for r in rows if r.state != "current"]
        for r in pending:
            click.echo(f"{r.day.isoformat()} {r.fleet} {r.state}: {r.reason}")
        click.echo(f"{len(pending)} of {len(rows)} date(s) need computing")
        return
    if day is not None:
        summaries = [bms.run_analytics(lake, day, fleet=fleet, params=params, state_root=state)]
    else:
        summaries = bms.run_pending(lake, fleet=fleet, params=params, state_root=state)
        if not summaries:
            click.echo("all dates are up to date")
    for s in summaries:
        click.echo(_line(s))


@click.group("warranty")
def warranty_group() -> None:
    """Warranty policies."""


@warranty_group.command("presets")
def warranty_presets_command() -> None:
    """List the shipped warranty policy presets with their thresholds.

    Example: fleetbms warranty presets
    """
    for name in bms.warranty_presets():
        p = bms.load_warranty_policy(name)
        terms = "; ".join(
            f"{t.min_soh_pct:g} % at {t.years:g} y / {t.km:,.0f} km" for t in p.thresholds
        )
        click.echo(f"{p.id}: {p.name} ({terms})")


COMMANDS: list[click.Command] = [analyze_command, warranty_group]
