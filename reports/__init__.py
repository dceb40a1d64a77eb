"""Fleet and vehicle PDF/CSV reports, insurer audit bundles and their verifier."""

from reports._audit import AuditExport, export_audit_bundle
from reports._errors import ReportError
from reports._keys import (
    KeyPair,
    generate_signing_keys,
    load_or_create_pseudonym_key,
    public_key_fingerprint,
)
from reports._pseudonym import Pseudonymizer, pseudonym
from reports._verify import Problem, Verification, verify_audit_bundle

__all__ = [
    "AuditExport",
    "KeyPair",
    "Problem",
    "Pseudonymizer",
    "ReportError",
    "Verification",
    "export_audit_bundle",
    "generate_signing_keys",
    "load_or_create_pseudonym_key",
    "pseudonym",
    "public_key_fingerprint",
    "verify_audit_bundle",
]
