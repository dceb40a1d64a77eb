"""DuckDB connections for the SQL jobs, configured in one place."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def duckdb_connect(*, threads: int = 0, preserve_insertion_order: bool = False) -> Any:
    """A DuckDB connection in UTC that spills to the system temporary directory.

    DuckDB's default spill directory is ``.tmp`` in the current working directory: a
    big job run from a user's checkout would leave gigabytes there.

    Parameters
    ----------
    threads : int
        Worker threads; 0 = all cores.
    preserve_insertion_order : bool
        Keep row order where SQL does not say (costs memory on large scans).
    """
    import duckdb

    spill = Path(tempfile.gettempdir()) / "fleetbms-duckdb"
    con = duckdb.connect(
        config={
            "preserve_insertion_order": preserve_insertion_order,
            "temp_directory": str(spill),
        }
    )
    if threads > 0:
        con.execute(f"SET threads = {int(threads)}")
    con.execute("SET TimeZone = 'UTC'")
    return con


def set_double_variables(con: Any, values: Mapping[str, float]) -> None:
    """Set the SQL jobs' parameters as DOUBLE variables of connection ``con`` (variables,
    like temporary and registered tables, belong to one connection)."""
    for name, value in values.items():
        con.execute(f"SET VARIABLE {name} = {float(value)!r}::DOUBLE")


def vin_groups(counts: list[tuple[str, int]], max_rows: int) -> list[tuple[str, str]]:
    """Contiguous (first, last) VIN ranges of sorted ``(vin, rows)`` holding about
    ``max_rows`` readings each (a vehicle is never split): a job that works per vehicle
    runs group by group with its memory bounded by the group, not the fleet."""
    groups: list[tuple[str, str]] = []
    first: str | None = None
    rows = 0
    for vin, n in counts:
        if first is None:
            first = vin
        rows += n
        if rows >= max_rows:
            groups.append((first, vin))
            first, rows = None, 0
    if first is not None:
        groups.append((first, counts[-1][0]))
    return groups
