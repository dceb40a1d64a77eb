"""Errors of the ingest package.

IngestError      broker unreachable, bad TLS files, unusable input file
"""

from __future__ import annotations


class IngestError(Exception):
    """Base error of ``ingest``; the CLI turns it into a one-line message."""
