"""DuckDB connections for the SQL jobs, configured in one place."""

from __future__ import annotations

import tempfile
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
