"""Shared command-line parameter types.

A date is ``YYYY-MM-DD`` (a UTC event date); commands that compute or purge from a date
refuse one after today, a usage error.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import click


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


#: A date that may lie anywhere; a date to compute or report on (not after today).
ANY_DAY = Day()
PAST_DAY = Day(past=True)
