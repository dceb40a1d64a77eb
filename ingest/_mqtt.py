"""The MQTT ingest worker: paho-mqtt 2.x, MQTT v5, persistent session, manual acks.

Two processes, so that decoding and writing never compete with the network loop for the
GIL (paho's loop costs as much per message as decode + validation + buffering together).

* This process: paho's network loop (``loop_start``) only appends each message's topic,
  payload, receive time and ``(mid, qos, connection)`` token to an inbox (``on_message``,
  a few microseconds); the calling thread is the flusher. It swaps the inbox out under a
  lock, ships the raw payloads to the writer process and waits for its answer, then
  publishes alerts and retained acks and acknowledges every message of the batch (many
  PUBACKs per socket write, see ``_ack_all``).
* The writer process (``ProcessorProcess``) decodes, validates, dedups, writes and fsyncs
  the batch (``Processor``) and answers with the acks and alerts to publish. Nothing is
  acknowledged before that answer. It ignores SIGINT/SIGTERM (this process flushes,
  then closes it) and exits when this process dies.

Memory is bounded: a flush starts at ``flush_rows`` messages, half of
``receive_maximum`` or 8 MB of payload; when the inbox reaches ``2 * flush_rows``
messages or 16 MB while a flush is still running, ``on_message`` waits for it (TCP
back-pressure), and the broker never has more than ``receive_maximum`` unacknowledged
messages in flight to us.

Retained acks go out through a window of at most ``_ACK_WINDOW`` unconfirmed publishes;
beyond it only the newest watermark of each VIN waits, so paho's queue stays bounded
however long a backlog drain lasts.

Every mid is acknowledged at most once: each message remembers the connection it came on
(a generation counter bumped in ``on_connect``); messages of an earlier connection are
not acknowledged (the broker redelivers them on the resumed session, they are dropped as
duplicates and those copies are acknowledged). A flush that fails with ``OSError`` (disk
full, read-only lake) is retried with capped exponential backoff; nothing is acknowledged
meanwhile and one JSON log line says why.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bms import encode_ack, topic_for
from ingest._alerts import AlertEngine
from ingest._errors import IngestError
from ingest._processor import (
    Counters,
    FlushReport,
    ProcessorProcess,
    RawBatch,
    WriteFailedError,
    WriterError,
)
from ingest._state import WorkerLock

log = logging.getLogger("fleetbms.ingest")

#: Reading topics of contract v1.
READING_TOPICS = ("fleet/+/+/bms", "fleet/+/+/bms/batch")


def _connect_reason(host: str, port: int, timeout_s: float = 2.0) -> str:
    """Why a TCP connection to ``host:port`` fails now; when it does not, the TLS or MQTT
    handshake is what failed (or the broker has just come up)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return "the TCP connection works: the TLS or MQTT handshake failed"
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


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


#: Bytes of payload that trigger a flush; twice this stops receiving until a flush ends.
#: Decoding and writing a batch takes a few times its size in the writer process, so
#: this bounds the memory of both processes whatever the backlog (~10k readings of 96
#: cells per flush).
_FLUSH_BYTES = 8 * 2**20
#: Retained acks handed to paho and not yet confirmed by the broker, at most. Beyond it
#: the newest watermark per VIN waits in ``_Worker.ack_due``; paho's queue of QoS 1
#: publishes would otherwise grow during a long backlog drain (their PUBACKs queue behind
#: the backlog) until its 16-bit packet ids wrap and publishes fail.
_ACK_WINDOW = 4_096
#: PUBACKs written per socket packet when acknowledging a flushed batch.
_ACKS_PER_PACKET = 16_384
_PUBACK = 0x40  # MQTT control packet type 4, flags 0 (MQTT v5 spec 3.4)


def _ack_all(client: Any, mids: list[int]) -> None:
    """Acknowledge QoS 1 messages, many PUBACKs per socket write.

    ``client.ack`` queues one 4-byte packet and wakes the network loop per message, which
    costs the network thread about as much as receiving the message. A PUBACK with reason
    "success" and no properties is ``0x40 0x02 mid`` (MQTT v5 spec 3.4.2.1 allows leaving
    out the reason code), so a run of them is one byte string that paho's queue writes
    like any packet. Falls back to ``client.ack`` if paho lacks the queue (other version).
    """
    queue = getattr(client, "_packet_queue", None)
    if queue is None:
        for mid in mids:
            client.ack(mid, 1)
        return
    for i in range(0, len(mids), _ACKS_PER_PACKET):
        chunk = mids[i : i + _ACKS_PER_PACKET]
        blob = struct.pack(f"!{len(chunk)}I", *((_PUBACK << 24) | (2 << 16) | m for m in chunk))
        queue(_PUBACK, blob, 0, 0)


_READ_CHUNK = 256 * 1024  # [bytes] one recv() for many PUBLISH packets
_PACKETS_PER_READ = 2_000  # packets handled between two turns of writes and keepalive


@functools.cache
def _client_class() -> type:
    """paho ``Client`` reading the socket in large chunks.

    paho reads every packet with three ``recv`` calls (type byte, length, body) after its
    own ``select``; at thousands of messages per second those system calls and loop
    turns cost about a fifth of the network thread. Here ``_sock_recv`` serves them from
    one ``recv`` of up to 256 kB and ``loop_read`` handles every complete packet already
    buffered (letting queued writes and the keepalive run every 2000). ``_handle_publish``
    hands QoS 0/1 messages to ``on_publish_packet`` without paho's message object. All
    three are paho 2.x internals (``paho-mqtt<3`` is pinned); the read buffer belongs to
    one socket and is dropped when paho opens a new one.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.exception import MalformedPacket

    class _Client(mqtt.Client):
        _rbuf: bytes = b""
        _rpos: int = 0
        _rsock: object = None
        #: ``(topic, payload, mid, qos)`` callback for QoS 0/1 PUBLISH packets (MQTT v5)
        on_publish_packet: Callable[[str, bytes, int, int], None] | None = None

        def _handle_publish(self) -> Any:
            # paho builds a message object, parses its properties and matches topic
            # filters for every message: a third of its per-message cost. Reading
            # topic, packet id and payload straight from the packet (MQTT v5 spec 3.3.2)
            # skips that; QoS 2 and other protocol versions take paho's path.
            callback = self.on_publish_packet
            qos = (self._in_packet["command"] & 0x06) >> 1
            if callback is None or qos == 2 or self._protocol != mqtt.MQTTv5:
                return super()._handle_publish()
            packet = self._in_packet["packet"]
            end = 2 + int.from_bytes(packet[:2], "big")
            topic = packet[2:end].decode("utf-8", errors="replace")
            mid = 0
            if qos:
                mid = int.from_bytes(packet[end : end + 2], "big")
                end += 2
            props_len, shift = 0, 0  # Property Length: a variable byte integer (1.5.5)
            for _ in range(4):
                if end >= len(packet):
                    raise MalformedPacket("PUBLISH packet too short")
                byte = packet[end]
                end += 1
                props_len |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            else:
                raise MalformedPacket("bad property length in PUBLISH")
            end += props_len
            if end > len(packet):
                raise MalformedPacket("PUBLISH properties longer than the packet")
            callback(topic, bytes(memoryview(packet)[end:]), mid, qos)
            return mqtt.MQTT_ERR_SUCCESS

        def _sock_recv(self, bufsize: int) -> bytes:
            if self._rsock is not self._sock:  # reconnected: bytes of the old socket are stale
                self._rsock, self._rbuf, self._rpos = self._sock, b"", 0
            if self._rpos >= len(self._rbuf):
                data = super()._sock_recv(max(bufsize, _READ_CHUNK))
                if len(data) <= bufsize:
                    return data
                self._rbuf, self._rpos = data, 0
            start = self._rpos
            self._rpos = min(start + bufsize, len(self._rbuf))
            return self._rbuf[start : self._rpos]

        def loop_read(self, max_packets: int = 1) -> Any:
            rc = super().loop_read(max_packets)
            n = 1
            # Every complete packet already buffered is handled now: select() only sees
            # the socket, not this buffer. Queued writes (acks, publishes) and the
            # keepalive get their turn every _PACKETS_PER_READ packets.
            while (
                rc == mqtt.MQTT_ERR_SUCCESS
                and self._sock is not None
                and self._rsock is self._sock
                and self._rpos < len(self._rbuf)
            ):
                if n % _PACKETS_PER_READ == 0:
                    rc = self.loop_write() or self.loop_misc()
                    if rc or self._sock is None:
                        return rc
                rc = super().loop_read(max_packets)
                n += 1
            return rc

    return _Client


#: Messages (or payload bytes) the network thread collects before it ships them to the
#: writer process in one pickle.
_CHUNK_MSGS = 1_000
_CHUNK_BYTES = 2**20


class _Inbox:
    """Messages received but not yet shipped to the writer, undecoded."""

    __slots__ = ("nbytes", "payloads", "received_at_ms", "topics")

    def __init__(self) -> None:
        self.topics: list[str] = []
        self.payloads: list[bytes] = []
        self.received_at_ms: list[int] = []
        self.nbytes = 0

    def raw(self) -> RawBatch:
        return RawBatch(self.topics, self.payloads, self.received_at_ms)


class _Worker:
    def __init__(
        self, options: IngestOptions, processor: ProcessorProcess, stop: threading.Event
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        from paho.mqtt.subscribeoptions import SubscribeOptions

        self.options = options
        self.proc = processor
        self.counters = processor.counters
        self.stop = stop
        self.gen = 0
        # ``lock`` guards the inbox, the unflushed bookkeeping, gen and counters.messages;
        # whoever ships messages takes ``proc.send_lock`` first, so they reach the writer
        # in the order received and a flush covers exactly the tokens taken with it.
        self.lock = threading.Lock()
        self.inbox = _Inbox()
        self.tokens: list[tuple[int, int, int]] = []  # unflushed: (mid, qos, connection)
        self.unflushed_bytes = 0
        self.unflushed_since = 0.0  # time.monotonic() of the oldest unflushed message
        # retained acks, flusher thread only: waiting (vin -> (fleet, seq)), and those
        # handed to paho that the broker has not confirmed yet
        self.ack_due: dict[str, tuple[str, int]] = {}
        self.ack_infos: list[Any] = []
        self.no_conn = mqtt.MQTT_ERR_NO_CONN
        self.wake = threading.Condition()
        self.space = threading.Condition()
        self.last_activity = time.monotonic()
        self.connected_once = threading.Event()
        client = _client_class()(
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
        client.on_publish_packet = self.on_publish_packet
        client.on_subscribe = self.on_subscribe
        self.client = client
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = options.session_expiry_s
        props.ReceiveMaximum = options.receive_maximum
        self.connect_props = props
        self.sub_options = SubscribeOptions(qos=1)
        # At most receive_maximum messages are unacknowledged; flushing at half of it
        # lets the next batch arrive while the previous one is being written.
        self.flush_msgs = max(1, min(options.flush_rows, options.receive_maximum // 2))
        self.hard_cap = 2 * options.flush_rows

    # -- network thread ------------------------------------------------------------------
    def on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            log_event("connect_refused", reason=str(reason_code))
            return
        with self.lock:
            self.gen += 1
        # paho keeps 20 QoS 1 publishes in flight whatever the broker allows (its Receive
        # Maximum, MQTT v5 3.2.2.3.3, 65535 when absent), so retained acks would trickle
        # out 20 per round trip behind a backlog; and with a limit set, every PUBACK makes
        # paho scan its whole queue. When the broker allows twice our own window, paho's
        # limit is lifted (0), else it is the broker's. The public setter refuses while
        # connected; this callback runs before paho sends anything queued.
        receive_max = getattr(properties, "ReceiveMaximum", 65_535)
        if isinstance(getattr(client, "_max_inflight_messages", None), int):
            client._max_inflight_messages = 0 if receive_max >= 2 * _ACK_WINDOW else receive_max
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
        # paho does not pass the reason on: a TCP probe of the address names it
        # (unknown host, refused, unreachable), which the operator needs to act on
        log_event(
            "connect_failed",
            broker=self.options.broker,
            reason=_connect_reason(*self.options.host_port()),
            retry="with backoff",
        )

    def on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if not self.stop.is_set():
            log_event("disconnected", reason=str(reason_code), retry="with backoff")

    def on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.on_publish_packet(msg.topic, msg.payload, msg.mid, msg.qos)

    def on_publish_packet(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        # Only bookkeeping here: decoding happens in the writer process.
        now = time.monotonic()
        with self.lock:
            box = self.inbox
            if not self.tokens:
                self.unflushed_since = now
            box.topics.append(topic)
            box.payloads.append(payload)
            box.received_at_ms.append(int(time.time() * 1000))
            box.nbytes += len(payload)
            self.tokens.append((mid, qos, self.gen))
            self.unflushed_bytes += len(payload)
            self.counters.messages += 1
            n, nbytes = len(self.tokens), self.unflushed_bytes
            ship = len(box.payloads) >= _CHUNK_MSGS or box.nbytes >= _CHUNK_BYTES
        self.last_activity = now
        if ship:
            self._ship()
        if n >= self.flush_msgs or nbytes >= _FLUSH_BYTES:
            with self.wake:
                self.wake.notify()
            if n >= self.hard_cap or nbytes >= 2 * _FLUSH_BYTES:
                with self.space:
                    while self._full() and not self.stop.is_set():
                        self.space.wait(0.5)

    def _ship(self) -> None:
        """Send the inbox to the writer (network thread; the flusher ships the rest)."""
        try:
            with self.proc.send_lock:
                with self.lock:
                    box, self.inbox = self.inbox, _Inbox()
                if box.payloads:
                    self.proc.send_chunk(box.raw())
        except WriterError as exc:  # the flusher finds out too; stop receiving
            log_event("writer_failed", error=str(exc))
            self.stop.set()

    def _full(self) -> bool:
        with self.lock:
            return len(self.tokens) >= self.hard_cap or self.unflushed_bytes >= 2 * _FLUSH_BYTES

    def pending(self) -> tuple[int, int, float]:
        """Messages and payload bytes received since the last flush, age of the oldest [s]."""
        with self.lock:
            n = len(self.tokens)
            self.counters.buffer_rows = n
            age = (time.monotonic() - self.unflushed_since) if n else 0.0
            return n, self.unflushed_bytes, age

    # -- flusher (calling thread) --------------------------------------------------------
    def flush(self) -> bool:
        """Write, publish and acknowledge one batch; False if given up (stopping)."""
        with self.proc.send_lock:
            with self.lock:
                box, self.inbox = self.inbox, _Inbox()
                tokens, self.tokens = self.tokens, []
                self.unflushed_bytes = 0
            if box.payloads:
                self.proc.send_chunk(box.raw())
            del box
            if tokens:
                self.proc.start_flush()
        with self.space:
            self.space.notify_all()
        if not tokens:
            return True
        delay = 0.5
        try:
            report = self.proc.finish_flush()
        except WriteFailedError as exc:
            err: WriteFailedError | None = exc
        else:
            err = None
        while err is not None:
            with self.proc.lock:
                self.counters.flush_failures += 1
            log_event(
                "flush_failed",
                error=err.error,
                rows=err.rows,
                action="not acknowledging; retrying",
                retry_in_s=delay,
            )
            if self.stop.wait(delay):
                log_event("shutdown_unflushed", messages=len(tokens))
                return False
            delay = min(delay * 2, 30.0)
            try:
                report = self.proc.retry()
                err = None
            except WriteFailedError as exc:
                err = exc
        if delay > 0.5:
            log_event("flush_recovered", rows=report.rows)
        self._publish(report)
        self._ack(tokens)
        return True

    def _publish(self, report: FlushReport) -> None:
        for topic, payload in report.alerts:
            self.client.publish(topic, payload, qos=1)
        self._publish_acks(report.acks)

    def _publish_acks(self, acks: dict[str, tuple[str, int]]) -> None:
        """Queue retained acks (a newer watermark replaces a waiting one) and send some."""
        self.ack_due.update(acks)
        self._pump_acks()

    def _pump_acks(self) -> bool:
        """Publish waiting acks while fewer than ``_ACK_WINDOW`` are unconfirmed.

        Returns True when every ack is published and confirmed by the broker.
        """
        self.ack_infos = [i for i in self.ack_infos if not i.is_published()]
        while self.ack_due and len(self.ack_infos) < _ACK_WINDOW:
            vin, (fleet, seq) = next(iter(self.ack_due.items()))
            info = self.client.publish(
                topic_for(fleet, vin, "ack"), encode_ack(vin, seq), qos=1, retain=True
            )
            if info.rc == self.no_conn:
                # paho keeps it and sends it after reconnecting (is_published() of such
                # a message raises, so it is not counted in the window)
                del self.ack_due[vin]
                continue
            if info.rc != 0:  # paho refused it: try again later
                break
            del self.ack_due[vin]
            self.ack_infos.append(info)
        return not self.ack_due and not self.ack_infos

    def _ack(self, tokens: list[tuple[int, int, int]]) -> None:
        with self.lock:
            gen = self.gen
            # Messages of an earlier connection are not acknowledged: their mids belong
            # to that connection; the broker redelivers them (then dropped as duplicates).
            mids = [mid for mid, qos, g in tokens if g == gen and qos == 1]
            if self.client.is_connected():
                _ack_all(self.client, mids)
            else:
                mids = []
        with self.proc.lock:
            self.counters.acked += len(mids)

    def run(self) -> Counters:
        opts = self.options
        host, port = opts.host_port()
        self.client.connect_async(
            host, port, keepalive=30, clean_start=False, properties=self.connect_props
        )
        self.client.loop_start()
        next_log = time.monotonic() + opts.log_interval_s
        next_peer_check = time.monotonic()
        clean = False
        gave_up = False
        try:
            while not self.stop.is_set():
                with self.wake:
                    self.wake.wait(min(0.05, opts.flush_age_s / 4))
                self.proc.check_alive()  # killed (OOM, kill -9): stop, acknowledge nothing
                if self.ack_due:
                    self._pump_acks()
                msgs, nbytes, age = self.pending()
                if (
                    msgs >= self.flush_msgs
                    or nbytes >= _FLUSH_BYTES
                    or (msgs and age >= opts.flush_age_s)
                ):
                    gave_up = not self.flush()
                now = time.monotonic()
                if opts.group and now >= next_peer_check:
                    next_peer_check = now + 1.0
                    self._publish_acks(self.proc.refresh_group_acks())
                if now >= next_log:
                    next_log = now + opts.log_interval_s
                    log_event(
                        "counters",
                        **self._snapshot(),
                        acks_waiting=len(self.ack_due),
                        acks_unconfirmed=len(self.ack_infos),
                    )
                if (
                    opts.idle_exit_s > 0
                    and self.connected_once.is_set()
                    and msgs == 0
                    and now - self.last_activity >= opts.idle_exit_s
                ):
                    log_event("idle_exit", idle_s=opts.idle_exit_s)
                    self.stop.set()
            if not gave_up:
                # After a flush given up while stopping, the writer still holds that
                # batch: a last flush would replace it, and copies of its messages that
                # the broker redelivered meanwhile would be acknowledged as duplicates of
                # readings never written. Nothing more is acknowledged: the broker
                # redelivers the lot to the next run.
                self.flush()
            deadline = time.monotonic() + 2.0  # then the broker keeps what it confirmed
            while not self._pump_acks() and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.ack_due or self.ack_infos:
                log_event(
                    "acks_unconfirmed",
                    waiting=len(self.ack_due),
                    unconfirmed=len(self.ack_infos),
                    action="vehicles keep those readings buffered until a later ack",
                )
            clean = True
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            # paho closes its wake-up socket pair only when the client is collected
            # (eclipse-paho #627); ours is in a cycle with its callbacks, collected late,
            # its sockets first: each then warns of an unclosed socket. Closed now.
            self.client._reset_sockets()
            if clean:
                self.proc.close()  # saves the state file
            else:
                self.proc.kill()
        log_event("stopped", **self._snapshot())
        return self.counters

    def _snapshot(self) -> dict[str, Any]:
        with self.proc.lock:
            return self.counters.snapshot()


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
        Bad broker address, TLS files, group name or unreadable state; another worker
        with the same id runs on this data directory; the metrics port cannot be served.
    """
    options.validate()
    stop = stop or threading.Event()
    worker_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in options.client_id)
    lock = WorkerLock(state_dir, worker_id)
    try:
        return _run_locked(options, lake_dir, state_dir, worker_id, engine, stop, handle_signals)
    finally:
        lock.release()


def _run_locked(
    options: IngestOptions,
    lake_dir: Path,
    state_dir: Path,
    worker_id: str,
    engine: AlertEngine | None,
    stop: threading.Event,
    handle_signals: bool,
) -> Counters:
    processor = ProcessorProcess(
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

        try:
            server = start_metrics_server(options.metrics_port, processor)
        except OSError as exc:
            # Not connected yet: nothing received, the state file is saved unchanged.
            worker.client._reset_sockets()
            processor.close()
            raise IngestError(
                f"cannot serve metrics on port {options.metrics_port}: "
                f"{exc.strerror or exc} (--metrics-port, ingest.metrics_port)"
            ) from None
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
