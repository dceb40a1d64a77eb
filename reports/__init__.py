"""Fleet and vehicle PDF/CSV reports, insurer audit bundles and their verifier."""

from reports._errors import ReportError

__all__ = ["ReportError"]
