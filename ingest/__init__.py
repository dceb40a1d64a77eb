"""MQTT subscriber and file importer: validated, deduplicated, durable Parquet."""

from ingest._alerts import (
    ALERT_SCHEMA,
    RULES,
    AlertEngine,
    AlertEvent,
    AlertProfile,
    thermal_rates_c_per_min,
    vehicles_from_registry,
)
from ingest._errors import IngestError
from ingest._files import ImportSummary, import_files
from ingest._mqtt import READING_TOPICS, IngestOptions, run_ingest
from ingest._processor import Counters, Processor
from ingest._quarantine import QUARANTINE_SCHEMA
from ingest._status import IngestStatus, QuarantineEntry, WorkerStatus, ingest_status

__all__ = [
    "ALERT_SCHEMA",
    "QUARANTINE_SCHEMA",
    "READING_TOPICS",
    "RULES",
    "AlertEngine",
    "AlertEvent",
    "AlertProfile",
    "Counters",
    "ImportSummary",
    "IngestError",
    "IngestOptions",
    "IngestStatus",
    "Processor",
    "QuarantineEntry",
    "WorkerStatus",
    "import_files",
    "ingest_status",
    "run_ingest",
    "thermal_rates_c_per_min",
    "vehicles_from_registry",
]
