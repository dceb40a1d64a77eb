"""Commands of the report stage."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
