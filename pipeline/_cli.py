"""The ``fleetbms`` command line: global options, error handling, command registry.

Commands live in ``pipeline/_cmd_*.py``; each parses its flags, makes one library call
and prints. Library errors become one ``Error: ...`` line with exit 1, usage errors exit
2; ``--debug`` re-raises so a bug keeps its traceback.
"""

from __future__ import annotations

import re
import select
import sys
from pathlib import Path
from typing import Any

import click

from bms import BmsError
from ingest import IngestError
from pipeline import (
    _cmd_analyze,
    _cmd_anomalies,
    _cmd_ingest,
    _cmd_nightly,
    _cmd_report,
    _cmd_simulate,
)
from pipeline._config import ConfigError, Settings, load_settings, render_settings
from pipeline._params import DataDir, NonEmptyPath
from reports import ReportError

#: Errors a user can cause (bad input, missing data) or the machine's (``OSError``: a file
#: the user running fleetbms may not read or write, a full disk); anything else is a bug.
USER_ERRORS = (BmsError, IngestError, ReportError, ConfigError, ValueError, OSError)


def _message(exc: Exception) -> str:
    """One line: ``PATH: Permission denied`` for an ``OSError`` naming its file."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        where = str(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {exc.filename2}"
        return f"{where}: {exc.strerror}"
    if isinstance(exc, OSError):
        return re.sub(r"^\[Errno -?\d+\] ", "", str(exc))
    return str(exc)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            if ctx.params.get("debug") or (isinstance(exc, BrokenPipeError) and _stdout_closed()):
                raise
            raise click.ClickException(_message(exc)) from exc


def _stdout_closed() -> bool:
    """Whether standard output's reader went away (``fleetbms status | head -1``), as
    opposed to a broken socket (an MQTT broker): click then ends quietly, exit 1."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    # the write end of a pipe whose reader has gone polls as an error
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(event & select.POLLERR for _, event in poller.poll(0))


@click.group(cls=_Group)
@click.option(
    "--data-dir",
    type=DataDir(file_okay=False, path_type=Path),
    default=None,
    help="Root of lake and state [default: ./data, or FLEETBMS_DATA_DIR].",
)
@click.option(
    "--config",
    "config_file",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    default=None,
    help="TOML configuration file (overridden by FLEETBMS_SECTION__KEY and flags).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="fleetbms")
@click.pass_context
def cli(ctx: click.Context, data_dir: Path | None, config_file: Path | None, debug: bool) -> None:
    """Fleet battery-health telemetry pipeline.

    Example: fleetbms --data-dir ./data simulate --to-lake --vehicles 5 --days 30
    """
    try:
        ctx.obj = load_settings(config_file=config_file, data_dir=data_dir)
    except ConfigError as exc:
        if debug:
            raise
        raise click.ClickException(str(exc)) from exc


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@click.pass_obj
def config_show(settings: Settings) -> None:
    """Print the effective configuration as TOML, each value with its source.

    Example: FLEETBMS_INGEST__FLUSH_ROWS=1000 fleetbms config show
    """
    click.echo(render_settings(settings), nl=False)


for _module in (
    _cmd_simulate,
    _cmd_ingest,
    _cmd_analyze,
    _cmd_anomalies,
    _cmd_report,
    _cmd_nightly,
):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``fleetbms`` console script."""
    try:
        rv = cli.main(args=argv, prog_name="fleetbms", standalone_mode=False)
    except click.UsageError as exc:
        # One line, as for every user mistake (click's default adds a usage banner).
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
