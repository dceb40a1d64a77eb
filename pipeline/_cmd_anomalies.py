"""Commands of the anomalies stage: ``anomalies`` (score) and ``anomalies train``."""

from __future__ import annotations

import dataclasses
from datetime import date

import click

import bms
from pipeline._config import Settings
from pipeline._params import ANY_DAY, NON_EMPTY, require_fleet, require_lake


def anomaly_params(settings: Settings) -> bms.AnomalyParams:
    """The library's parameters from the ``[anomaly]`` (and ``[analytics]``) settings."""
    names = {f.name for f in dataclasses.fields(bms.AnomalyParams)}
    values = {k: v for k, v in dataclasses.asdict(settings.anomaly).items() if k in names}
    features = bms.AnomalyFeatureParams(rest_c_rate=settings.analytics.rest_c_rate)
    return bms.AnomalyParams(**values, features=features)


def _line(s: bms.AnomalySummary) -> str:
    sources = ", ".join(f"{k} {v}" for k, v in s.by_source.items()) or "none"
    models = (
        "; ".join(
            f"model {m.version} {m.action}" + (f" ({m.reason})" if m.action != "loaded" else "")
            for m in s.models
        )
        or "no model yet (rules only)"
    )
    return (
        f"{s.day.isoformat()} fleets {','.join(s.fleets)}: {s.vehicles} vehicles, "
        f"{s.flagged} flagged ({s.new} new, {s.ongoing} ongoing), {s.cleared} cleared; "
        f"by source: {sources}; {models}; {s.seconds:.1f} s"
    )


@click.group("anomalies", invoke_without_command=True)
@click.option(
    "--date",
    "day",
    type=ANY_DAY,
    default=None,
    help="UTC date to score; default: every analysed date not yet scored, in order.",
)
@click.option("--fleet", type=NON_EMPTY, default=None, help="Only this fleet.")
@click.pass_context
def anomalies_group(ctx: click.Context, day: date | None, fleet: str | None) -> None:
    """Flag weak and failing cells: isolation forest plus physical rules.

    Writes lake/anomalies/date=D/fleet=F/part.parquet (vehicle, cell, score, severity,
    top features against the fleet's normal range, model version, status).

    Example: fleetbms anomalies --date 2026-11-24
    """
    if ctx.invoked_subcommand is not None:
        return
    settings: Settings = ctx.obj
    params = anomaly_params(settings)
    lake, state = require_lake(settings), settings.state_dir
    if fleet is not None:
        require_fleet(settings, fleet)
    if day is not None:
        summaries = [bms.score_anomalies(lake, state, day, params, fleet=fleet)]
    else:
        summaries = bms.score_pending_anomalies(lake, state, params, fleet=fleet)
        if not summaries:
            click.echo("all analysed dates are scored")
    for s in summaries:
        click.echo(_line(s))


@anomalies_group.command("train")
@click.option(
    "--date",
    "day",
    type=ANY_DAY,
    default=None,
    help="First date the new model scores (trained on the days before); "
    "default: the day after the last analysed date.",
)
@click.option("--fleet", type=NON_EMPTY, default=None, help="Only this fleet.")
@click.pass_obj
def train_command(settings: Settings, day: date | None, fleet: str | None) -> None:
    """Refit the isolation forest on the rolling window and save it in state/models.

    Example: fleetbms anomalies train --fleet demo
    """
    require_lake(settings)
    if fleet is not None:
        require_fleet(settings, fleet)
    infos = bms.train_anomaly_model(
        settings.lake_dir,
        settings.state_dir,
        day=day,
        fleet=fleet,
        params=anomaly_params(settings),
    )
    for m in infos:
        click.echo(
            f"model {m.version}: trained on {m.training_rows} rows "
            f"({m.training_start.isoformat()}..{m.training_end.isoformat()}), "
            f"scikit-learn {m.sklearn_version}, scores from {m.valid_from.isoformat()}"
        )


COMMANDS: list[click.Command] = [anomalies_group]
