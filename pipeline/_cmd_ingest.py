"""Commands of the ingest stage."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
