"""MQTT subscriber and file importer: validated, deduplicated, durable Parquet."""

from ingest._errors import IngestError

__all__ = ["IngestError"]
