"""Shared command-line parameter types and checks of what a command is pointed at.

A date is ``YYYY-MM-DD`` (a UTC event date); commands that compute or purge from a date
refuse one after today, a usage error. An option whose absence means a default (--fleet,
--policy, --format) refuses an empty value, which used to mean that default silently.
A lake that does not exist and a fleet the lake does not know are one ``Error:`` line
each (``ValueError``, which the CLI turns into exit 1), raised before anything is written.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import click
import pyarrow.parquet as pq

from pipeline._config import Settings


def today_utc() -> date:
    """Today's date in UTC (the calendar of the lake's partitions)."""
    return datetime.now(UTC).date()


class Day(click.ParamType[date]):
    """A ``YYYY-MM-DD`` date; with ``past=True`` not after today (UTC)."""

    name = "YYYY-MM-DD"

    def __init__(self, *, past: bool = False) -> None:
        self.past = past

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> date:
        if isinstance(value, date):
            day = value
        else:
            try:
                day = datetime.strptime(str(value), "%Y-%m-%d").date()
            except ValueError:
                self.fail(f"invalid date {value} (expected YYYY-MM-DD)", param, ctx)
        if self.past and day > (today := today_utc()):
            self.fail(f"{day} is in the future (today is {today} UTC)", param, ctx)
        return day


class NonEmpty(click.ParamType[str]):
    """A string that must not be empty (an empty value is a mistake, not the default)."""

    name = "TEXT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not text.strip():
            optional = param is not None and not param.required
            hint = " (leave the option out for the default)" if optional else ""
            self.fail(f"must not be empty{hint}", param, ctx)
        return text


class DataDir(click.Path):
    """``--data-dir``: a path, never empty (``Path("")`` would be the current directory)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path is not a directory", param, ctx)
        return super().convert(value, param, ctx)


class NonEmptyPath(click.Path):
    """A file or folder path that must not be empty (``Path("")`` is the current folder)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("must not be empty", param, ctx)
        return super().convert(value, param, ctx)


class BrokerAddress(click.ParamType[str]):
    """``HOST:PORT`` of an MQTT broker (port 1..65535), checked before the command acts."""

    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from ingest import IngestError, IngestOptions

        text = str(value)
        try:
            IngestOptions(broker=text).host_port()
        except IngestError:
            self.fail(f"{text!r} is not HOST:PORT", param, ctx)
        return text


#: A date that may lie anywhere; a date to compute or report on (not after today).
ANY_DAY = Day()
PAST_DAY = Day(past=True)
#: A value of an option whose absence means the default.
NON_EMPTY = NonEmpty()


def require_lake(settings: Settings) -> Path:
    """The lake directory; ``ValueError`` if it does not exist."""
    lake = settings.lake_dir
    if not lake.is_dir():
        raise ValueError(
            f"no lake at {lake}: nothing was ingested, imported or simulated into "
            f"{settings.data_dir} (wrong --data-dir?)"
        )
    return lake


def known_fleets(settings: Settings) -> list[str]:
    """Fleets with telemetry in the lake or the archive, or vehicles in the registry."""
    fleets: set[str] = set()
    for base in (settings.lake_dir / "telemetry", settings.data_dir / "archive" / "telemetry"):
        fleets.update(p.name.removeprefix("fleet=") for p in base.glob("date=*/fleet=*"))
    registry = settings.lake_dir / "registry" / "vehicles.parquet"
    if registry.is_file() and "fleet" in pq.read_schema(registry).names:
        # Only the fleet column: the readers of the stages check the rest of the file.
        fleets.update(
            str(f) for f in pq.read_table(registry, columns=["fleet"])["fleet"].to_pylist()
        )
    return sorted(fleets)


def require_fleet(settings: Settings, fleet: str) -> None:
    """``ValueError`` naming the known fleets if the lake knows nothing of ``fleet``."""
    require_lake(settings)
    known = known_fleets(settings)
    if fleet not in known:
        where = settings.lake_dir
        if not known:
            raise ValueError(f"unknown fleet {fleet!r}: the lake at {where} holds no fleet yet")
        raise ValueError(
            f"unknown fleet {fleet!r}: no telemetry or registered vehicle of it under "
            f"{where}; known fleets: {', '.join(known)}"
        )
