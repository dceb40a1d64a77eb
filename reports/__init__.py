"""Fleet and vehicle PDF/CSV reports, insurer audit bundles and their verifier."""

from reports._audit import AuditExport, export_audit_bundle
from reports._erasure_log import (
    ERASURE_LOG_PATH,
    ErasureChain,
    append_erasure_entry,
    fold_erasure_log,
    read_erasure_chain,
)
from reports._errors import ReportError
from reports._fleet_report import fleet_report
from reports._inputs import CSV_COLUMNS, newly_flagged
from reports._keys import (
    PSEUDONYM_KEY_NAME,
    KeyPair,
    generate_signing_keys,
    load_or_create_pseudonym_key,
    public_key_fingerprint,
)
from reports._pseudonym import Pseudonymizer, pseudonym
from reports._vehicle_report import render_reports, render_vehicle_reports, vehicle_report
from reports._verify import Problem, Verification, verify_audit_bundle

__all__ = [
    "CSV_COLUMNS",
    "ERASURE_LOG_PATH",
    "PSEUDONYM_KEY_NAME",
    "AuditExport",
    "ErasureChain",
    "KeyPair",
    "Problem",
    "Pseudonymizer",
    "ReportError",
    "Verification",
    "append_erasure_entry",
    "export_audit_bundle",
    "fleet_report",
    "fold_erasure_log",
    "generate_signing_keys",
    "load_or_create_pseudonym_key",
    "newly_flagged",
    "pseudonym",
    "public_key_fingerprint",
    "read_erasure_chain",
    "render_reports",
    "render_vehicle_reports",
    "vehicle_report",
    "verify_audit_bundle",
]
