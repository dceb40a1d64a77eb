"""Live mode: publish simulated readings over MQTT v5 with vehicle-side store-and-forward.

Each vehicle keeps every reading in a disk buffer until the pipeline acknowledges it
(retained ``fleet/{fleet}/{vin}/ack`` with ``durable_seq``). While the broker is
reachable readings go out one by one on ``fleet/{fleet}/{vin}/bms`` (QoS 1); while it is
not they only go to the buffer. On every (re)connection the vehicle replays what it still
holds after ``durable_seq`` on ``.../bms/batch`` (at most 10,000 readings per message,
oldest first). Duplicates that this causes are expected: ``(vin, seq)`` identifies a
reading and the pipeline removes them. ``seq`` comes from the buffer's persisted counter,
so it keeps increasing by one across restarts.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

import bms
from sim._fleet import FleetSimulator, readings_of
from sim._spec import FleetSpec

_STATE = "state.json"
_reading_decoder = msgspec.json.Decoder(bms.Reading)


class _BufferState(msgspec.Struct):
    next_seq: int = 1
    durable_seq: int = 0


class StoreAndForwardBuffer:
    """A vehicle's disk buffer of readings not yet acknowledged by the pipeline.

    Layout: ``<root>/<vin>/seg-<first seq>.jsonl`` (one encoded reading per line) and
    ``state.json`` (``next_seq``, ``durable_seq``). Segments hold ``segment_readings``
    readings; a segment is deleted once every reading in it is acknowledged, so nothing
    after ``durable_seq`` is ever deleted.

    Parameters
    ----------
    root : Path
        Buffer directory of the fleet (``<data-dir>/sim/buffer`` by default).
    vin : str
        The vehicle.
    segment_readings : int
        Readings per segment file.
    """

    def __init__(self, root: Path, vin: str, *, segment_readings: int = 1000) -> None:
        if segment_readings < 1:
            raise ValueError(f"segment_readings must be >= 1, got {segment_readings}")
        self.dir = root / vin
        self.dir.mkdir(parents=True, exist_ok=True)
        self.vin = vin
        self.segment_readings = segment_readings
        state = _BufferState()
        path = self.dir / _STATE
        if path.exists():
            state = msgspec.json.decode(path.read_bytes(), type=_BufferState)
        self.durable_seq = state.durable_seq
        self.next_seq = state.next_seq
        self._open: Any = None
        self._open_count = 0
        segs = self.segments()
        if segs:
            last_seq = self._repair_last(segs[-1])
            self.next_seq = max(self.next_seq, last_seq + 1)

    def segments(self) -> list[Path]:
        """Segment files, oldest first."""
        return sorted(self.dir.glob("seg-*.jsonl"))

    @staticmethod
    def _first_seq(path: Path) -> int:
        return int(path.stem.split("-")[1])

    def _repair_last(self, path: Path) -> int:
        """Drop a torn last line (crash while appending); return the last seq held."""
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            with open(path, "r+b") as fh:
                fh.truncate(end)
        lines = data[:end].splitlines()
        if not lines:
            return self._first_seq(path) - 1
        return _reading_decoder.decode(lines[-1]).seq

    def append(self, reading: bms.Reading) -> bytes:
        """Store ``reading`` (its ``seq`` must be ``next_seq``); return its JSON bytes."""
        if reading.seq != self.next_seq:
            raise ValueError(f"{self.vin}: seq {reading.seq} != next seq {self.next_seq}")
        payload = bms.encode_reading(reading)
        if self._open is None or self._open_count >= self.segment_readings:
            self._roll()
        self._open.write(payload + b"\n")
        self._open_count += 1
        self.next_seq += 1
        return payload

    def _roll(self) -> None:
        if self._open is not None:
            self._open.flush()
            os.fsync(self._open.fileno())
            self._open.close()
        path = self.dir / f"seg-{self.next_seq:020d}.jsonl"
        self._open = open(path, "ab")  # noqa: SIM115 (kept open across appends)
        self._open_count = 0

    def sync(self) -> None:
        """Flush and fsync the open segment and persist the counters."""
        if self._open is not None:
            self._open.flush()
            os.fsync(self._open.fileno())
        self._save_state()

    def _save_state(self) -> None:
        state = _BufferState(next_seq=self.next_seq, durable_seq=self.durable_seq)
        bms.atomic_write_bytes(msgspec.json.encode(state), self.dir / _STATE)

    def close(self) -> None:
        """Sync and close the open segment."""
        self.sync()
        if self._open is not None:
            self._open.close()
            self._open = None

    def acknowledge(self, durable_seq: int) -> int:
        """The pipeline holds every reading up to ``durable_seq``: drop those segments.

        A ``durable_seq`` at or above ``next_seq`` (the buffer was lost, or the pipeline
        knows this VIN from elsewhere) moves ``next_seq`` past it so seqs stay unique.

        Returns
        -------
        int
            Number of segment files deleted.
        """
        if durable_seq <= self.durable_seq:
            return 0
        self.durable_seq = durable_seq
        if durable_seq >= self.next_seq:
            self.next_seq = durable_seq + 1
        segs = self.segments()
        deleted = 0
        for i, seg in enumerate(segs):
            last = self._first_seq(segs[i + 1]) - 1 if i + 1 < len(segs) else self.next_seq - 1
            if last > durable_seq:
                break
            if i + 1 == len(segs) and self._open is not None:
                self._open.close()
                self._open = None
            seg.unlink()
            deleted += 1
        if deleted:
            bms.fsync_dir(self.dir)
        self._save_state()
        return deleted

    def pending(self) -> Iterator[bytes]:
        """Encoded readings after ``durable_seq``, oldest first."""
        if self._open is not None:
            self._open.flush()
        for seg in self.segments():
            for line in seg.read_bytes().splitlines():
                if not line:
                    continue
                if _reading_decoder.decode(line).seq > self.durable_seq:
                    yield line

    def buffered_seqs(self) -> list[int]:
        """Seqs of every reading still on disk (acknowledged or not), in order."""
        if self._open is not None:
            self._open.flush()
        return [
            _reading_decoder.decode(line).seq
            for seg in self.segments()
            for line in seg.read_bytes().splitlines()
            if line
        ]


@dataclass(frozen=True)
class LiveSummary:
    """What ``run_live`` did."""

    published: int  # readings sent one by one on .../bms
    replayed: int  # readings re-sent in batches on .../bms/batch
    batches: int
    generated: int  # readings produced (all are in the buffer until acknowledged)
    pending: int  # readings still waiting for an ack at the end
    reconnects: int
    stopped_by: str  # duration, readings, signal, end


def parse_broker(address: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); raises ``ValueError``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"broker address {address!r} is not HOST:PORT")
    return host, int(port)


def _merged_rows(sim: FleetSimulator, start_ms: int) -> Iterator[tuple[int, int, Any, int]]:
    """(ts_ms, vehicle index, day output, row) of every reading at or after ``start_ms``."""

    def rows_of(i: int, out: Any) -> Iterator[tuple[int, int, Any, int]]:
        first = int(np.searchsorted(out.ts_ms, start_ms))
        for k in range(first, len(out)):
            yield int(out.ts_ms[k]), i, out, k

    for _, outputs in sim.run():
        heads = [rows_of(i, out) for i, out in enumerate(outputs)]
        yield from heapq.merge(*heads, key=lambda x: (x[0], x[1]))


class _Link:
    """The paho client and what its callbacks tell the main thread."""

    def __init__(self, spec: FleetSpec, vins: list[str], client_id: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.connected = threading.Event()
        self.reconnected = threading.Event()
        self.acks: queue.Queue[tuple[str, int]] = queue.Queue()
        self.connects = 0
        self._ack_topics = {bms.topic_for(spec.fleet, vin, "ack"): vin for vin in vins}
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(1000)
        client.reconnect_delay_set(min_delay=1, max_delay=4)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        self._props.SessionExpiryInterval = 3600
        self.client = client

    def start(self, host: str, port: int) -> None:
        self.client.connect_async(
            host, port, keepalive=15, clean_start=False, properties=self._props
        )
        self.client.loop_start()

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            return
        client.subscribe([(topic, 1) for topic in self._ack_topics])
        self.connects += 1
        self.connected.set()
        self.reconnected.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self.connected.clear()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        vin = self._ack_topics.get(message.topic)
        if vin is None:
            return
        try:
            ack = bms.decode_ack(message.payload)
        except bms.ContractError:
            return
        if ack.vin == vin:
            self.acks.put((vin, ack.durable_seq))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # paho closes its wake-up socket pair only when the client is collected
        # (eclipse-paho #627), late for a client in a cycle with its callbacks
        self.client._reset_sockets()


def run_live(
    spec: FleetSpec,
    broker: str,
    *,
    buffer_dir: Path,
    speed: float = 1.0,
    start: datetime | None = None,
    duration_s: float | None = None,
    max_readings: int | None = None,
    stop: threading.Event | None = None,
    client_id: str | None = None,
    durable_seqs: Mapping[str, int] | None = None,
    segment_readings: int = 1000,
    drain_s: float = 5.0,
) -> LiveSummary:
    """Publish the simulated fleet's readings as they happen, with store-and-forward.

    Parameters
    ----------
    spec : FleetSpec
        The fleet; ``spec.start`` is replaced by the local date of ``start``.
    broker : str
        ``HOST:PORT`` of the MQTT broker.
    buffer_dir : Path
        Root of the vehicles' store-and-forward buffers (one folder per VIN).
    speed : float
        Simulated seconds per wall-clock second (1 = real time). Timestamps run ahead
        of the clock when > 1.
    start : datetime, optional
        Simulated time of the first reading (timezone-aware); default now.
    duration_s : float, optional
        Stop after this many wall-clock seconds.
    max_readings : int, optional
        Stop after generating this many readings (all vehicles together).
    stop : threading.Event, optional
        Set it (e.g. from a SIGTERM handler) to stop cleanly.
    client_id : str, optional
        MQTT client id (persistent session); default ``sim-{fleet}``.
    durable_seqs : Mapping[str, int], optional
        The highest seq the pipeline already holds per VIN (e.g. a history written
        straight into the lake, ``bms.last_seqs``): each vehicle's readings continue
        after it, as a vehicle's persisted counter would, so no ``(vin, seq)`` repeats.
    segment_readings : int
        Readings per buffer segment file (the granularity of deletion after an ack).
    drain_s : float
        At the end, wait up to this long for the broker to confirm what was sent.

    Returns
    -------
    LiveSummary

    Raises
    ------
    ValueError
        Bad broker address, speed or bounds.
    """
    host, port = parse_broker(broker)
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    if duration_s is not None and duration_s < 0:
        raise ValueError(f"duration must be >= 0 s, got {duration_s}")
    if max_readings is not None and max_readings < 0:
        raise ValueError(f"max readings must be >= 0, got {max_readings}")
    start = start or datetime.now(UTC).replace(microsecond=0)
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    spec = dataclasses.replace(spec, start=start.astimezone(spec.tz).date())
    stop = stop or threading.Event()
    sim = FleetSimulator(spec)
    vins = [v.vin for v in sim.vehicles]
    buffers = {
        vin: StoreAndForwardBuffer(buffer_dir, vin, segment_readings=segment_readings)
        for vin in vins
    }
    for vin, seq in (durable_seqs or {}).items():
        if vin in buffers:
            buffers[vin].acknowledge(seq)
    link = _Link(spec, vins, client_id or f"sim-{spec.fleet}")
    link.start(host, port)

    published = replayed = batches = generated = 0
    infos: deque[Any] = deque()
    stopped_by = "end"
    start_ms = int(start.timestamp() * 1000)
    t0 = time.monotonic()
    last_sync = t0

    def service() -> None:
        nonlocal replayed, batches
        while True:
            try:
                vin, durable = link.acks.get_nowait()
            except queue.Empty:
                break
            buffers[vin].acknowledge(durable)
        if link.reconnected.is_set() and link.connected.is_set():
            link.reconnected.clear()
            for vin, buf in buffers.items():
                topic = bms.topic_for(spec.fleet, vin, "batch")
                chunk: list[bytes] = []
                for line in buf.pending():
                    chunk.append(line)
                    if len(chunk) == bms.MAX_BATCH_READINGS:
                        infos.append(link.client.publish(topic, _batch(chunk), qos=1))
                        replayed += len(chunk)
                        batches += 1
                        chunk = []
                if chunk:
                    infos.append(link.client.publish(topic, _batch(chunk), qos=1))
                    replayed += len(chunk)
                    batches += 1
        while infos and _settled(infos[0]):
            infos.popleft()

    try:
        for ts_ms, i, out, k in _merged_rows(sim, start_ms):
            # stop at once, not when the next reading falls due (minutes away when parked)
            if max_readings is not None and generated >= max_readings:
                stopped_by = "readings"
                break
            due = t0 + (ts_ms - start_ms) / 1000.0 / speed
            while True:
                service()
                now = time.monotonic()
                if duration_s is not None and now - t0 >= duration_s:
                    stopped_by = "duration"
                    break
                if now >= due:
                    break
                if stop.wait(min(due - now, 0.05)):
                    stopped_by = "signal"
                    break
            if stopped_by != "end":
                break
            if stop.is_set():
                stopped_by = "signal"
                break
            buf = buffers[vins[i]]
            reading = next(readings_of(out, [k]))
            reading = msgspec.structs.replace(reading, seq=buf.next_seq)
            payload = buf.append(reading)
            generated += 1
            if link.connected.is_set() and not link.reconnected.is_set():
                topic = bms.topic_for(spec.fleet, vins[i], "bms")
                infos.append(link.client.publish(topic, payload, qos=1))
                published += 1
            if time.monotonic() - last_sync > 1.0:
                for b in buffers.values():
                    b.sync()
                last_sync = time.monotonic()
        if stopped_by == "end" and max_readings is not None and generated >= max_readings:
            stopped_by = "readings"  # the simulation ended with the last reading asked for
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            service()
            if not infos and link.connected.is_set() and not link.reconnected.is_set():
                break
            time.sleep(0.05)
        service()
    finally:
        link.stop()
        for b in buffers.values():
            b.close()
    pending = sum(max(0, b.next_seq - 1 - b.durable_seq) for b in buffers.values())
    return LiveSummary(
        published=published,
        replayed=replayed,
        batches=batches,
        generated=generated,
        pending=pending,
        reconnects=max(0, link.connects - 1),
        stopped_by=stopped_by,
    )


def _settled(info: Any) -> bool:
    """A publish that no longer needs watching: confirmed by the broker, or refused by the
    client (not connected: the link dropped between our check and the publish; queue
    full). A refused reading is still in its vehicle's buffer, unacknowledged, and goes
    out again with the replay after the reconnect. paho's ``is_published`` raises for a
    refused publish, which used to end the whole simulation on a broker outage."""
    from paho.mqtt.enums import MQTTErrorCode

    if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
        return True
    return bool(info.is_published())


def _batch(lines: list[bytes]) -> bytes:
    """Batch payload of encoded readings (``bms.encode_batch`` of the decoded readings)."""
    return bms.encode_batch([_reading_decoder.decode(line) for line in lines])
