"""User mistakes on the command line: one ``Error:`` line, a failing exit code, no traceback,
and nothing written."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.pipeline.nightly_data import (
    FLEETBMS,
    cli_env,
    day_table,
    fleetbms,
    snapshot,
    write_flushes,
)
from tests.pipeline.test_nightly import RUN_DAY


def one_line_error(r, code: int) -> str:
    """The single ``Error:`` line of a failed run (asserting exit code and no traceback)."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("Error: ")
    return r.stderr.rstrip("\n")


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    write_flushes(day_table(RUN_DAY), d / "lake")
    return d


@pytest.mark.parametrize(
    "args",
    [
        ("analyze", "--date", "2999-01-01"),
        ("report", "fleet", "--date", "2999-01-01"),
        ("report", "vehicle", "MAT612345NEX00001", "--date", "2999-01-01"),
    ],
)
def test_a_future_date_is_a_usage_error(lake_dir: Path, args: tuple[str, ...]):
    before = snapshot(lake_dir)
    line = one_line_error(fleetbms(lake_dir, *args), 2)
    assert line.startswith("Error: Invalid value for '--date': 2999-01-01 is in the future ")
    assert snapshot(lake_dir) == before


@pytest.mark.parametrize(
    ("args", "value"),
    [
        (("analyze", "--date"), "2026-02-30"),
        (("anomalies", "--date"), "2026-13-01"),
        (("simulate", "--to-lake", "--start"), "26-11-01"),
        (("audit", "export", "--to", "2026-11-30", "--out", "b", "--from"), "2026-11"),
    ],
)
def test_an_invalid_date_says_what_is_expected(lake_dir: Path, args: tuple[str, ...], value: str):
    line = one_line_error(fleetbms(lake_dir, *args, value), 2)
    assert line.endswith(f": invalid date {value} (expected YYYY-MM-DD)")


@pytest.mark.parametrize(
    "args",
    [
        ("analyze",),
        ("analyze", "--status"),
        ("analyze", "--date", RUN_DAY.isoformat()),
        ("anomalies",),
        ("anomalies", "train"),
    ],
)
def test_a_data_dir_without_a_lake_is_an_error(tmp_path: Path, args: tuple[str, ...]):
    d = tmp_path / "nonexistent"
    line = one_line_error(fleetbms(d, *args), 1)
    assert line == (
        f"Error: no lake at {d / 'lake'}: nothing was ingested, imported or simulated into "
        f"{d} (wrong --data-dir?)"
    )
    assert not d.exists()


@pytest.mark.parametrize(
    "args",
    [
        ("analyze", "--fleet", "nope"),
        ("analyze", "--status", "--fleet", "nope"),
        ("anomalies", "--fleet", "nope"),
        ("anomalies", "train", "--fleet", "nope"),
    ],
)
def test_an_unknown_fleet_is_an_error_naming_the_known_ones(lake_dir: Path, args: tuple[str, ...]):
    write_flushes(day_table(RUN_DAY, fleet="buses"), lake_dir / "lake")
    before = snapshot(lake_dir)
    line = one_line_error(fleetbms(lake_dir, *args), 1)
    assert line == (
        f"Error: unknown fleet 'nope': no telemetry or registered vehicle of it under "
        f"{lake_dir / 'lake'}; known fleets: buses, demo"
    )
    assert snapshot(lake_dir) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("status", "--runs", "-1"), "Invalid value for '--runs': -1 is not in the range x>=0."),
        (
            ("report", "fleet", "--date", RUN_DAY.isoformat(), "--format", ""),
            "Invalid value for '--format': must not be empty (leave the option out for the "
            "default)",
        ),
        (
            ("analyze", "--policy", ""),
            "Invalid value for '--policy': must not be empty (leave the option out for the "
            "default)",
        ),
        (
            ("nightly", "--fleet", " "),
            "Invalid value for '--fleet': must not be empty (leave the option out for the default)",
        ),
        (("erase", "--vin", ""), "Invalid value for '--vin': must not be empty"),
        (
            ("ingest", "--client-id", ""),
            "Invalid value for '--client-id': must not be empty (leave the option out for "
            "the default)",
        ),
        (
            ("ingest", "--group", " "),
            "Invalid value for '--group': must not be empty (leave the option out for the default)",
        ),
        (("keys", "generate", "--out", ""), "Invalid value for '--out': must not be empty"),
        (
            ("audit", "verify", "", "--public-key", "signing.pub"),
            "Invalid value for 'BUNDLE': must not be empty",
        ),
        (
            ("audit", "verify", "bundle", "--public-key", ""),
            "Invalid value for '--public-key': must not be empty",
        ),
        (
            ("audit", "verify", "bundle", "--public-key", "signing.pub", "--earlier", ""),
            "Invalid value for '--earlier': must not be empty",
        ),
        (
            ("simulate", "--live", "--seed", "1", "--buffer-dir", ""),
            "Invalid value for '--buffer-dir': must not be empty",
        ),
        (("import", ""), "Invalid value for 'FILES...': must not be empty"),
        (
            ("simulate", "--live", "--seed", "1", "--client-id", ""),
            "Invalid value for '--client-id': must not be empty (leave the option out for "
            "the default)",
        ),
        (
            ("ingest", "--password-file", ""),
            "Invalid value for '--password-file': must not be empty",
        ),
        (("--config", "", "status"), "Invalid value for '--config': must not be empty"),
        (
            ("ingest", "--idle-exit", "-1"),
            "Invalid value for '--idle-exit': -1.0 is not in the range x>=0.",
        ),
        # 0 is not "no limit" (that is leaving the option out): it used to wait for the
        # first reading's time and stop without one
        (
            ("simulate", "--live", "--max-readings", "0"),
            "Invalid value for '--max-readings': 0 is not in the range x>=1.",
        ),
        (
            ("simulate", "--live", "--max-readings", "-5"),
            "Invalid value for '--max-readings': -5 is not in the range x>=1.",
        ),
        (
            ("simulate", "--live", "--duration-s", "-1"),
            "Invalid value for '--duration-s': -1.0 is not in the range x>=0.",
        ),
        (
            ("simulate", "--live", "--speed", "0"),
            "Invalid value for '--speed': 0.0 is not in the range x>0.",
        ),
    ],
)
def test_an_empty_or_negative_option_is_a_usage_error(
    lake_dir: Path, args: tuple[str, ...], message: str
):
    before = snapshot(lake_dir)
    assert one_line_error(fleetbms(lake_dir, *args), 2) == f"Error: {message}"
    assert snapshot(lake_dir) == before


def as_operator(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``fleetbms ARGS`` obeying file modes even as root (without the capabilities
    that let root read and write any file), as an operator's service user would."""
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    return subprocess.run(
        [*(prefix if os.geteuid() == 0 else []), FLEETBMS, *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def read_only_data_dir(lake_dir: Path) -> Iterator[Path]:
    """A data directory the user running fleetbms may read but not write (another user's)."""
    dirs = [lake_dir, *(p for p in lake_dir.rglob("*") if p.is_dir())]
    for d in dirs:
        d.chmod(0o555)
    try:
        yield lake_dir
    finally:
        for d in dirs:
            d.chmod(0o755)


@pytest.mark.parametrize(
    "args",
    [
        ("analyze", "--date", RUN_DAY.isoformat()),
        ("nightly", "--date", RUN_DAY.isoformat()),
        ("keys", "generate"),
        ("erase", "--vin", "MAT612345NEX00001"),
    ],
)
def test_a_data_dir_the_user_cannot_write_is_one_error_line(
    read_only_data_dir: Path, args: tuple[str, ...]
):
    before = snapshot(read_only_data_dir)
    line = one_line_error(as_operator("--data-dir", str(read_only_data_dir), *args), 1)
    assert f"{read_only_data_dir}/" in line
    assert line.endswith(": Permission denied"), line
    assert snapshot(read_only_data_dir) == before


def test_a_config_file_the_user_cannot_read_is_one_error_line(tmp_path: Path):
    private = tmp_path / "private"
    private.mkdir()
    config = private / "fleetbms.toml"
    config.write_text("[fleet]\nid = 'buses'\n")
    private.chmod(0)
    try:
        r = as_operator("--config", str(config), "config", "show")
    finally:
        private.chmod(0o755)
    line = one_line_error(r, 1)
    assert line == f"Error: cannot read config file {config}: Permission denied"


@pytest.mark.parametrize("mode", ["--to-lake", "--live"])
def test_a_simulation_reaching_into_the_future_is_a_usage_error(lake_dir: Path, mode: str):
    """A history in the lake ends by yesterday (a catch-up would analyse days to come),
    and live readings from the future would be rejected by ingest."""
    start = datetime.now(UTC).date() + timedelta(days=30)
    before = snapshot(lake_dir)
    args = ("simulate", mode, "--start", start.isoformat(), "--days", "5")
    line = one_line_error(fleetbms(lake_dir, *args), 2)
    if mode == "--to-lake":
        assert line.startswith(
            f"Error: --start {start} with --days 5 ends on {start + timedelta(days=4)}, "
            "not before today ("
        )
        assert line.endswith("a history written to the lake cannot reach into the future")
    else:
        assert line.startswith(f"Error: --start {start} is after today (")
        assert line.endswith("live readings would be timestamped in the future")
    assert snapshot(lake_dir) == before


def test_a_simulated_history_ending_today_is_a_usage_error(lake_dir: Path):
    """Today's readings run to tonight's midnight: a history ending today holds readings
    from the future (in a UTC date after today east of Greenwich, which a catch-up would
    analyse though `analyze --date` refuses it). It ends by yesterday; nothing is written."""
    tz = ZoneInfo("Asia/Kolkata")  # fleet.timezone's default
    before = snapshot(lake_dir)
    today = None
    while today != datetime.now(tz).date():  # again if midnight passed during the run
        today = datetime.now(tz).date()
        args = ("simulate", "--to-lake", "--fleet", "sim", "--start", today.isoformat())
        r = fleetbms(lake_dir, *args, "--days", "1")
    line = one_line_error(r, 2)
    assert line.startswith(
        f"Error: --start {today} with --days 1 ends on {today}, not before today ({today}, "
        "Asia/Kolkata)"
    )
    assert line.endswith("a history written to the lake cannot reach into the future")
    assert snapshot(lake_dir) == before
    yesterday = (today - timedelta(days=1)).isoformat()
    ok = fleetbms(lake_dir, *args[:4], "--start", yesterday, "--days", "1")
    assert ok.returncode == 0, ok.stderr


def test_a_reader_that_stops_reading_ends_the_command_quietly(lake_dir: Path):
    """``fleetbms status | head -1``: the reader goes away before the output is written;
    no "Error: Broken pipe" (click ends such a command quietly, exit 1)."""
    proc = subprocess.Popen(
        [FLEETBMS, "--data-dir", str(lake_dir), "status"],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # before the command has started to write
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (1, b"")
