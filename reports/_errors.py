"""Errors of the reports package.

ReportError      no metrics for the date, bad key file, bundle unreadable
"""

from __future__ import annotations


class ReportError(Exception):
    """Base error of ``reports``; the CLI turns it into a one-line message."""
