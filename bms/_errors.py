"""Errors of the battery domain.

BmsError
 +-- SchemaError      a stored table does not have the documented schema
 +-- ContractError    a message breaks the telemetry contract (carries a reason code)
"""

from __future__ import annotations


class BmsError(Exception):
    """Base error of the ``bms`` package; the CLI turns it into a one-line message."""


class SchemaError(BmsError):
    """A table or file does not match the documented lake schema."""


class ContractError(BmsError):
    """A message breaks telemetry contract v1.

    Attributes
    ----------
    reason : str
        Machine-readable reason code, one of ``REJECT_REASONS``.
    detail : str
        Human-readable explanation (field path, offending value).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
