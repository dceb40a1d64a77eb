"""Wiring: command line, configuration and nightly orchestration (imports all packages)."""

from pipeline._cli import cli, main
from pipeline._config import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "cli", "load_settings", "main"]
