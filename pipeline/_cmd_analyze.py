"""Commands of the analyze stage."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
