"""The MQTT ingest worker: paho-mqtt 2.x, MQTT v5, persistent session, manual acks.

Threads: paho's network loop (``loop_start``) decodes each message in ``on_message``
(msgspec, microseconds) and appends it to the processor's columnar buffer; the calling
thread is the flusher. It swaps the buffer out under a lock held for microseconds, writes
it (Parquet, fsync) while the network thread keeps receiving into a fresh buffer, then
publishes alerts and retained acks and acknowledges every message of the batch with
``client.ack(mid, qos)``. Memory is bounded: when the fresh buffer reaches
``2 * flush_rows`` readings while a flush is still running, ``on_message`` waits for it
(TCP back-pressure), and the broker never has more than ``receive_maximum`` unacknowledged
messages in flight to us.

Every mid is acknowledged at most once: each message remembers the connection it came on
(a generation counter bumped in ``on_connect``); messages of an earlier connection are
not acknowledged (the broker redelivers them on the resumed session, they are dropped as
duplicates and those copies are acknowledged). A flush that fails with ``OSError`` (disk
full, read-only lake) is retried with capped exponential backoff; nothing is acknowledged
meanwhile and one JSON log line says why.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bms import encode_ack, topic_for
from ingest._alerts import AlertEngine
from ingest._errors import IngestError
from ingest._processor import Batch, Counters, FlushResult, Processor

log = logging.getLogger("fleetbms.ingest")

#: Reading topics of contract v1.
READING_TOPICS = ("fleet/+/+/bms", "fleet/+/+/bms/batch")


@dataclass(frozen=True)
class IngestOptions:
    """Settings of an ingest worker (mirrors ``pipeline`` ``IngestConfig``)."""

    broker: str = "127.0.0.1:1883"  # HOST:PORT
    client_id: str = "fleetbms-ingest"  # persistent-session identity and worker id
    group: str = ""  # shared-subscription group; empty = plain subscription
    username: str = ""
    password: str = ""
    tls_ca: str = ""  # CA bundle; empty = no TLS
    tls_cert: str = ""
    tls_key: str = ""
    flush_rows: int = 50_000  # readings per flush
    flush_age_s: float = 2.0  # oldest buffered message waits at most this long [s]
    receive_maximum: int = 65_535  # unacknowledged QoS 1 messages in flight to us
    session_expiry_s: int = 7 * 24 * 3600  # [s]
    max_payload_bytes: int = 16 * 2**20  # [bytes]
    dedup_window: int = 256  # seq ranges remembered per VIN
    log_interval_s: float = 10.0  # [s]
    metrics_port: int = 0  # 0 = no Prometheus endpoint
    reconnect_min_s: float = 1.0  # [s]
    reconnect_max_s: float = 60.0  # [s]
    idle_exit_s: float = 0.0  # exit after this long without messages; 0 = run forever [s]

    def host_port(self) -> tuple[str, int]:
        """``broker`` split into host and port.

        Raises
        ------
        IngestError
            Not ``HOST:PORT`` with a port in 1..65535.
        """
        host, sep, port = self.broker.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise IngestError(f"broker {self.broker!r} is not HOST:PORT")
        return host.strip("[]"), int(port)

    def topics(self) -> list[str]:
        """Subscriptions (``$share/GROUP/...`` with a group)."""
        if self.group:
            return [f"$share/{self.group}/{t}" for t in READING_TOPICS]
        return list(READING_TOPICS)

    def validate(self) -> None:
        """Raise ``IngestError`` on values that cannot work."""
        self.host_port()
        if not 1 <= self.receive_maximum <= 65_535:
            raise IngestError(f"receive_maximum must be 1..65535, got {self.receive_maximum}")
        if self.flush_rows < 1 or self.flush_age_s <= 0:
            raise IngestError("flush_rows must be >= 1 and flush_age_s > 0")
        if self.group and any(c in self.group for c in "/+#"):
            raise IngestError(f"group {self.group!r} must not contain '/', '+' or '#'")
        for name in ("tls_ca", "tls_cert", "tls_key"):
            value = getattr(self, name)
            if value and not Path(value).is_file():
                raise IngestError(f"{name} file {value} does not exist")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise IngestError("tls_cert and tls_key go together")


def log_event(event: str, **fields: Any) -> None:
    """One JSON log line."""
    log.info(json.dumps({"event": event, "ts": round(time.time(), 3), **fields}))


class _Worker:
    def __init__(self, options: IngestOptions, processor: Processor, stop: threading.Event) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        from paho.mqtt.subscribeoptions import SubscribeOptions

        self.options = options
        self.proc = processor
        self.stop = stop
        self.gen = 0
        self.ack_lock = threading.Lock()
        self.wake = threading.Condition()
        self.space = threading.Condition()
        self.fatal: BaseException | None = None
        self.last_activity = time.monotonic()
        self.flushing = False
        self.connected_once = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if options.username:
            client.username_pw_set(options.username, options.password or None)
        if options.tls_ca:
            try:
                client.tls_set(
                    ca_certs=options.tls_ca,
                    certfile=options.tls_cert or None,
                    keyfile=options.tls_key or None,
                )
            except (OSError, ValueError) as exc:
                raise IngestError(f"cannot use the TLS files: {exc}") from None
        client.reconnect_delay_set(
            max(1, round(options.reconnect_min_s)), max(1, round(options.reconnect_max_s))
        )
        client.max_queued_messages_set(0)
        client.on_connect = self.on_connect
        client.on_connect_fail = self.on_connect_fail
        client.on_disconnect = self.on_disconnect
        client.on_message = self.on_message
        client.on_subscribe = self.on_subscribe
        self.client = client
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = options.session_expiry_s
        props.ReceiveMaximum = options.receive_maximum
        self.connect_props = props
        self.sub_options = SubscribeOptions(qos=1)
        self.hard_cap = 2 * options.flush_rows

    # -- network thread ------------------------------------------------------------------
    def on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            log_event("connect_refused", reason=str(reason_code))
            return
        with self.ack_lock:
            self.gen += 1
        client.subscribe([(t, self.sub_options) for t in self.options.topics()])
        self.last_activity = time.monotonic()
        self.connected_once.set()
        log_event(
            "connected",
            broker=self.options.broker,
            session_present=bool(flags.session_present),
            topics=self.options.topics(),
        )

    def on_subscribe(
        self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log_event("subscribe_failed", reasons=failed, topics=self.options.topics())
        else:
            log_event("subscribed", topics=self.options.topics())

    def on_connect_fail(self, client: Any, userdata: Any) -> None:
        log_event("connect_failed", broker=self.options.broker, retry="with backoff")

    def on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if not self.stop.is_set():
            log_event("disconnected", reason=str(reason_code), retry="with backoff")

    def on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            rows, qbytes = self.proc.add(msg.topic, msg.payload, (msg.mid, msg.qos, self.gen))
        except Exception as exc:  # a bug: stop the worker, keep the traceback
            self.fatal = exc
            self.stop.set()
            with self.wake:
                self.wake.notify()
            return
        self.last_activity = time.monotonic()
        if rows >= self.options.flush_rows or qbytes >= 64 * 2**20:
            with self.wake:
                self.wake.notify()
            if rows >= self.hard_cap:
                with self.space:
                    while self.proc.buffered_rows() >= self.hard_cap and not self.stop.is_set():
                        self.space.wait(0.5)

    # -- flusher (calling thread) --------------------------------------------------------
    def flush(self) -> bool:
        """Write, publish and acknowledge one batch; False if given up (stopping)."""
        batch = self.proc.take()
        with self.space:
            self.space.notify_all()
        if batch is None:
            return True
        delay = 0.5
        while True:
            try:
                result = self.proc.write(batch)
                break
            except OSError as exc:
                self.proc.counters.flush_failures += 1
                log_event(
                    "flush_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    rows=batch.rows,
                    action="not acknowledging; retrying",
                    retry_in_s=delay,
                )
                if self.stop.wait(delay):
                    log_event("shutdown_unflushed", messages=len(batch.tokens))
                    return False
                delay = min(delay * 2, 30.0)
        if delay > 0.5:
            log_event("flush_recovered", rows=result.rows)
        self._publish(result)
        self._ack(batch, result)
        return True

    def _publish(self, result: FlushResult) -> None:
        worker = self.proc.worker
        for e in result.events:
            self.client.publish(topic_for(e.fleet, e.vin, "alert"), e.payload(worker), qos=1)
        self._publish_acks(result.acks)

    def _publish_acks(self, acks: dict[str, tuple[str, int]]) -> None:
        if not acks:
            return  # keep the last publishes: shutdown waits for them
        self.last_acks = [
            self.client.publish(
                topic_for(fleet, vin, "ack"), encode_ack(vin, seq), qos=1, retain=True
            )
            for vin, (fleet, seq) in acks.items()
        ]

    def _ack(self, batch: Batch, result: FlushResult) -> None:
        n = 0
        with self.ack_lock:
            gen = self.gen
            if self.client.is_connected():
                for mid, qos, g in result.tokens:
                    if g == gen and qos > 0:
                        self.client.ack(mid, qos)
                        n += 1
        with self.proc.lock:
            self.proc.counters.acked += n

    def run(self) -> Counters:
        opts = self.options
        host, port = opts.host_port()
        self.client.connect_async(
            host, port, keepalive=30, clean_start=False, properties=self.connect_props
        )
        self.client.loop_start()
        next_log = time.monotonic() + opts.log_interval_s
        next_peer_check = time.monotonic()
        try:
            while not self.stop.is_set():
                with self.wake:
                    self.wake.wait(min(0.05, opts.flush_age_s / 4))
                rows, qbytes, msgs, age = self.proc.pending()
                if (
                    rows >= opts.flush_rows
                    or qbytes >= 64 * 2**20
                    or (msgs and age >= opts.flush_age_s)
                ):
                    self.flush()
                now = time.monotonic()
                if opts.group and now >= next_peer_check:
                    next_peer_check = now + 1.0
                    self._publish_acks(self.proc.refresh_group_acks())
                if now >= next_log:
                    next_log = now + opts.log_interval_s
                    log_event("counters", **self.proc.counters.snapshot())
                if (
                    opts.idle_exit_s > 0
                    and self.connected_once.is_set()
                    and msgs == 0
                    and now - self.last_activity >= opts.idle_exit_s
                ):
                    log_event("idle_exit", idle_s=opts.idle_exit_s)
                    self.stop.set()
            if self.fatal is None:
                self.flush()
                for info in getattr(self, "last_acks", []):
                    info.wait_for_publish(timeout=2.0)
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            self.proc.save_state()
        if self.fatal is not None:
            raise self.fatal
        log_event("stopped", **self.proc.counters.snapshot())
        return self.proc.counters


def run_ingest(
    options: IngestOptions,
    *,
    lake_dir: Path,
    state_dir: Path,
    engine: AlertEngine | None,
    stop: threading.Event | None = None,
    handle_signals: bool = True,
) -> Counters:
    """Run an ingest worker until SIGTERM/SIGINT (or ``stop``), then flush and disconnect.

    Parameters
    ----------
    options : IngestOptions
        Broker, session, flush and dedup settings.
    lake_dir, state_dir : Path
        ``data/lake`` and ``data/state``.
    engine : AlertEngine, optional
        Live alert rules (``None``: no alerts).
    stop : threading.Event, optional
        Set it to stop the worker from another thread.
    handle_signals : bool
        Install SIGTERM/SIGINT handlers that stop cleanly (main thread only).

    Returns
    -------
    Counters
        Final totals.

    Raises
    ------
    IngestError
        Bad broker address, TLS files, group name or unreadable state.
    """
    options.validate()
    stop = stop or threading.Event()
    worker_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in options.client_id)
    processor = Processor(
        lake_dir=lake_dir,
        state_dir=state_dir,
        worker=worker_id,
        engine=engine,
        max_payload_bytes=options.max_payload_bytes,
        max_ranges=options.dedup_window,
        group=options.group,
    )
    worker = _Worker(options, processor, stop)
    server = None
    if options.metrics_port:
        from ingest._metrics import start_metrics_server

        server = start_metrics_server(options.metrics_port, processor)
    previous: dict[signal.Signals, Any] = {}
    if handle_signals:

        def _handler(signum: int, frame: FrameType | None) -> None:
            log_event("signal", signal=signal.Signals(signum).name, action="flush and stop")
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _handler)
    try:
        return worker.run()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if server is not None:
            server.shutdown()
