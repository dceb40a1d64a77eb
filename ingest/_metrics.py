"""Prometheus endpoint of an ingest worker (prometheus-client), read from its counters."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Protocol

from ingest._processor import Counters


class _HasCounters(Protocol):
    lock: threading.Lock
    counters: Counters


def start_metrics_server(port: int, processor: _HasCounters) -> Any:
    """Serve ``/metrics`` on ``port``; returns the server (``.shutdown()`` stops it).

    Metrics (all prefixed ``fleetbms_ingest_``): ``messages_total``, ``readings_total``,
    ``written_total``, ``duplicates_total``, ``quarantined_total{reason}``,
    ``alerts_total{rule,event}``, ``acked_total``, ``flushes_total``,
    ``flush_failures_total``, ``quarantine_dumps_total`` (rows the Parquet writer refused
    even escaped, kept as JSON dumps), ``lag_seconds``, ``buffer_rows``.
    """
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self) -> Iterator[Any]:
            with processor.lock:
                snap = processor.counters.snapshot()
            for name in (
                "messages",
                "readings",
                "written",
                "duplicates",
                "acked",
                "flushes",
                "flush_failures",
                "quarantine_dumps",
            ):
                yield CounterMetricFamily(f"fleetbms_ingest_{name}", name, value=snap[name])
            q = CounterMetricFamily(
                "fleetbms_ingest_quarantined", "rejected messages", labels=["reason"]
            )
            for reason, n in sorted(snap["quarantined"].items()):
                q.add_metric([reason], n)
            yield q
            a = CounterMetricFamily(
                "fleetbms_ingest_alerts", "live alerts", labels=["rule", "event"]
            )
            for key, n in sorted(snap["alerts"].items()):
                rule, _, event = key.partition(".")
                a.add_metric([rule, event], n)
            yield a
            lag = snap["lag_s"]
            yield GaugeMetricFamily(
                "fleetbms_ingest_lag_seconds",
                "receive time minus newest event time of the last flush",
                value=float("nan") if lag is None else lag,
            )
            yield GaugeMetricFamily(
                "fleetbms_ingest_buffer_rows",
                "readings in the last flushed buffer",
                value=snap["buffer_rows"],
            )

    registry = CollectorRegistry()
    registry.register(_Collector())
    server, _thread = start_http_server(port, registry=registry)
    return server
