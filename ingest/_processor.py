"""The ingest core shared by the MQTT worker and ``import``: decode, dedup, buffer, flush.

``Processor.add`` decodes one message (``bms.decode_message``: validation with reason
codes, batches reading by reading), drops ``(vin, seq)`` duplicates, sets
``CELL_COUNT_CHANGED`` and appends the readings to a columnar ``bms.ReadingBuffer``;
rejections go to the quarantine list. ``take`` swaps the buffers (a few microseconds
under the lock, so ``add`` may run on another thread) and ``write`` does everything slow,
outside the lock. ``write`` makes the batch durable in this order, each step done once
even when a later step fails and the flush is retried (a step that writes several
partitions, e.g. two dates of a flush over midnight, names its files by the batch's
``file_token``: retried after a later partition failed, it replaces the partitions
already written rather than adding copies):

1. telemetry table built and its files written (``bms.write_telemetry``; if either fails
with anything but ``OSError``, the messages that fail alone are quarantined and the rest
written, see ``Processor._build_table`` and ``Processor._isolate_write_failure``),
2. alerts evaluated (the messages whose readings make that fail alone are recorded in
quarantine, see ``Processor._evaluate_alerts``) and written, 3. quarantine file (a row
the writer refuses stored with its text escaped, one refused even so kept as a JSON
dump, ``Processor._write_quarantine``),
4. dirty-date markers, 5. seq ranges + watermarks committed and the state file written.

Only then may the caller acknowledge the messages, publish the alerts and the acks.

``ProcessorProcess`` runs a ``Processor`` in a child process for the MQTT worker: raw
payloads go in, ``FlushReport`` (acks and alerts to publish) comes out once durable.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bms import (
    MAX_BATCH_READINGS,
    ContractError,
    Decoded,
    Quality,
    ReadingBuffer,
    Rejection,
    atomic_write_bytes,
    decode_message,
    nested_too_deeply,
    parse_topic,
    write_telemetry,
)
from ingest._alerts import AlertEngine, AlertEvent, write_alerts
from ingest._errors import IngestError
from ingest._quarantine import QuarantineRow, dump_quarantine_row, escaped, write_quarantine
from ingest._state import SeqState

#: Rejections whose topic VIN and payload seq still identify a reading of that vehicle;
#: their seq counts as handled (stored in quarantine) for the ack watermark.
_SEQ_TRUSTED = frozenset(
    {
        "unknown_version",
        "missing_field",
        "wrong_type",
        "bad_value",
        "bad_ts",
        "ts_in_future",
        "bad_cells",
    }
)
_MS_PER_DAY = 86_400_000
#: Errors of the machine, not of a message (disk full, lake not writable, out of memory):
#: a flush step that raises one is never blamed on a message (nothing is quarantined for
#: it), even when it happens on one message's readings; the flush fails as it is
#: (``OSError``: retried later; ``MemoryError``: the worker stops).
_ENVIRONMENT: tuple[type[Exception], ...] = (OSError, MemoryError)


#: A sound reading (one sensor over every temperature limit, so that the alerts' event
#: path runs too), the control of a search for the message that makes a flush step fail.
_CONTROL_TOPIC = "fleet/control/C0NTR0L0000000000/bms"
_CONTROL_PAYLOAD = (
    b'{"v":1,"vin":"C0NTR0L0000000000","seq":0,"ts":"2026-01-01T00:00:00Z",'
    b'"pack":{"current_a":-20.0,"voltage_v":7.4,"soc_pct":55.0,"cycle_count":10,'
    b'"odometer_km":1000.0,"mode":"drive"},'
    b'"cells":{"voltages_mv":[3700,3701],"temps_c":[25.0,150.0]}}'
)


def _control_buffer() -> ReadingBuffer:
    """A buffer holding the control reading (see ``Processor._culprits``)."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    decoded = decode_message(_CONTROL_TOPIC, _CONTROL_PAYLOAD, now=now)
    buf = ReadingBuffer()
    for reading in decoded.readings:
        buf.append(reading, "control", 0)
    return buf


def _undecodable(topic: str, payload: bytes, exc: Exception) -> Decoded:
    """The rejection of a message whose decoding raised instead of rejecting it.

    ``decode_message`` rejects JSON nested too deeply itself (whole message or batch
    item); a ``RecursionError`` that still escapes it, or any other exception (a decoder
    bug), must not stop the ingest of the whole fleet either (the broker would redeliver
    the message after every restart): it is quarantined whole, raw bytes kept, reason
    ``not_json`` for the nesting (``decode_failed`` otherwise), the exception in the detail.
    """
    try:
        parsed = parse_topic(topic)
    except ContractError:
        parsed = None
    if isinstance(exc, RecursionError):
        err = nested_too_deeply(exc)
        rej = Rejection(err.reason, err.detail, payload)
    else:
        rej = Rejection("decode_failed", f"decoder raised {type(exc).__name__}: {exc}", payload)
    return Decoded(parsed, [], [rej])


def _lenient_seqs(payload: bytes, vin: str | None = None) -> list[int]:
    """The seqs of a whole message that strict JSON refuses only for its non-standard
    numbers (``NaN``, ``Infinity``: what a vehicle's JSON library may write for a failed
    sensor), or that the decoder failed on (``decode_failed``). Sent again it reads the
    same, so once it is in quarantine its readings count as handled and the vehicle's ack
    moves past them; otherwise that vehicle's ack would stop there for good and its
    buffer grow. A truncated or otherwise broken message gets none: a resend may be
    whole. With ``vin``, only readings that name that VIN (or none) count."""
    try:
        doc = json.loads(payload)  # the standard library reads NaN and Infinity
    except (ValueError, RecursionError):
        return []
    items = doc.get("readings") if isinstance(doc, dict) and "readings" in doc else [doc]
    if not isinstance(items, list):
        return []
    return [
        item["seq"]
        for item in items
        if isinstance(item, dict)
        and type(item.get("seq")) is int
        and 0 <= item["seq"] < 2**63
        and (vin is None or item.get("vin", vin) == vin)
    ]


class _SeqOnly(msgspec.Struct):
    seq: int


_seq_decoder = msgspec.json.Decoder(_SeqOnly)


@dataclass
class Counters:
    """Running totals of one worker (logged and exported as metrics)."""

    messages: int = 0  # MQTT messages or import lines seen
    readings: int = 0  # readings accepted into the buffer (not duplicates)
    written: int = 0  # readings durably written
    duplicates: int = 0  # readings dropped as (vin, seq) duplicates
    quarantined: dict[str, int] = field(default_factory=dict)  # per reason
    quarantine_dumps: int = 0  # rows the Parquet writer refused even escaped: JSON dumps
    alerts: dict[str, int] = field(default_factory=dict)  # per rule and event
    acked: int = 0  # messages acknowledged to the broker
    flushes: int = 0
    flush_failures: int = 0
    lag_s: float = float("nan")  # receive time - newest event time of the last flush [s]
    buffer_rows: int = 0

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy."""
        return {
            "messages": self.messages,
            "readings": self.readings,
            "written": self.written,
            "duplicates": self.duplicates,
            "quarantined": dict(self.quarantined),
            "quarantined_total": sum(self.quarantined.values()),
            "quarantine_dumps": self.quarantine_dumps,
            "alerts": dict(self.alerts),
            "acked": self.acked,
            "flushes": self.flushes,
            "flush_failures": self.flush_failures,
            "lag_s": None if np.isnan(self.lag_s) else round(self.lag_s, 3),
            "buffer_rows": self.buffer_rows,
        }


@dataclass
class Batch:
    """Everything buffered between two flushes, plus the progress of its flush."""

    buffer: ReadingBuffer = field(default_factory=ReadingBuffer)
    quarantine: list[QuarantineRow] = field(default_factory=list)
    quarantine_bytes: int = 0
    rows: int = 0  # readings in ``buffer``
    covered: list[tuple[str, str, int]] = field(default_factory=list)  # (vin, fleet, seq)
    # each message that added readings: (first row, end row, topic, payload, received at
    # [ms], source), for _isolate_write_failure; kept, not looked at, unless a write fails
    messages: list[tuple[int, int, str, bytes, int, str]] = field(default_factory=list)
    tokens: list[Any] = field(default_factory=list)
    started: float = 0.0  # time.monotonic() of the first item
    # names this batch's telemetry, alert and quarantine files: a step that wrote some of
    # its partitions before failing replaces them when retried, instead of adding copies
    file_token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    # progress of the flush (a retry skips the steps already done)
    table: pa.Table | None = None
    telemetry_done: bool = False
    events: list[AlertEvent] | None = None
    alerts_done: bool = False
    quarantine_done: bool = False
    dirty_done: bool = False

    @property
    def empty(self) -> bool:
        return not self.tokens and not self.rows and not self.quarantine


@dataclass(frozen=True)
class FlushResult:
    """What a successful flush allows the caller to do."""

    tokens: list[Any]  # messages that may now be acknowledged
    acks: dict[str, tuple[str, int]]  # vin -> (fleet, durable_seq) that advanced
    events: list[AlertEvent]  # alerts to publish
    rows: int  # readings written
    files: int  # telemetry files written
    dirty: list[date]  # dates marked dirty


class Processor:
    """Decode, dedup, buffer and durably flush readings (see the module docstring).

    Parameters
    ----------
    lake_dir, state_dir : Path
        ``data/lake`` and ``data/state``.
    worker : str
        Worker id: file-name prefix, ``worker`` column, state file name.
    engine : AlertEngine, optional
        Live alert rules; ``None`` evaluates no alerts.
    max_payload_bytes : int
        Larger messages are quarantined (``payload_too_large``). [bytes]
    max_ranges : int
        Seq ranges remembered per VIN for dedup.
    """

    def __init__(
        self,
        *,
        lake_dir: Path,
        state_dir: Path,
        worker: str,
        engine: AlertEngine | None,
        max_payload_bytes: int = 16 * 2**20,
        max_ranges: int = 256,
        group: str = "",
    ) -> None:
        self.lake_dir = lake_dir
        self.state_dir = state_dir
        self.worker = worker
        self.engine = engine
        self.max_payload_bytes = max_payload_bytes
        self.lock = threading.Lock()
        self.state = SeqState.load(
            state_dir / "ingest" / f"{worker}.json", worker, max_ranges=max_ranges, group=group
        )
        if engine is not None:
            engine.active |= self.state.alerts_active
        self.counters = Counters()
        self._batch = Batch()
        self._now_t = 0.0
        self._now = datetime.now(UTC)

    # -- called by the receiving thread ------------------------------------------------
    def add(
        self,
        topic: str,
        payload: bytes,
        token: Any = None,
        source: str = "mqtt",
        received_at_ms: int | None = None,
    ) -> tuple[int, int]:
        """Decode one message and buffer its readings and rejections.

        ``received_at_ms`` is when the message arrived (default: now); the MQTT worker
        passes the time its network thread saw the message, decoding happens later.

        Returns
        -------
        rows, quarantine_bytes : int
            Readings and quarantined bytes now buffered (to decide on a flush).
        """
        if received_at_ms is None:
            t = time.time()
            recv_ms = int(t * 1000)
        else:
            t = received_at_ms / 1000.0
            recv_ms = received_at_ms
        if t - self._now_t > 1.0:  # the future check allows 24 h: a 1 s old "now" is exact enough
            self._now_t, self._now = t, datetime.fromtimestamp(t, UTC)
        covered: list[int] = []
        try:
            decoded = decode_message(
                topic, payload, now=self._now, max_payload_bytes=self.max_payload_bytes
            )
        except Exception as exc:  # one bad message must not stop the worker: quarantined
            decoded = _undecodable(topic, payload, exc)
            if decoded.topic is not None and not isinstance(exc, (RecursionError, *_ENVIRONMENT)):
                # decode_failed: sent again, a whole message fails again, so its seqs count
                # as handled once its row is durable (like any quarantined whole message);
                # not when it was the machine's error (a resend may decode)
                covered = _lenient_seqs(payload, decoded.topic.vin)
        with self.lock:
            batch = self._batch
            if not batch.tokens and not batch.quarantine and not batch.rows:
                batch.started = time.monotonic()
            self.counters.messages += 1
            if token is not None:
                batch.tokens.append(token)
            if decoded.readings:
                fleet = decoded.topic.fleet_id if decoded.topic else ""
                buf = batch.buffer
                added = 0
                for r in decoded.readings:
                    st = self.state.get(r.vin, fleet)
                    if st.seen(r.seq):
                        self.counters.duplicates += 1
                        continue
                    st.pending.add(r.seq)
                    n_cells = len(r.cells.voltages_mv)
                    flag = 0
                    if st.n_cells is not None and st.n_cells != n_cells:
                        flag = Quality.CELL_COUNT_CHANGED
                    st.n_cells = n_cells
                    buf.append(r, fleet, recv_ms, flag)
                    added += 1
                self.counters.readings += added
                if added:
                    batch.messages.append(
                        (batch.rows, batch.rows + added, topic, payload, recv_ms, source)
                    )
                batch.rows += added
            for rej in decoded.rejections:
                self._reject(batch, topic, rej, recv_ms, source, decoded.topic)
            if covered and decoded.topic is not None:
                batch.covered += [(decoded.topic.vin, decoded.topic.fleet_id, q) for q in covered]
            return batch.rows, batch.quarantine_bytes

    def buffered_rows(self) -> int:
        """Readings in the current (not yet swapped out) batch."""
        with self.lock:
            return self._batch.rows

    def reject(self, topic: str, rejection: Rejection, token: Any = None, source: str = "") -> None:
        """Quarantine a message rejected before decoding (e.g. a file line without a VIN)."""
        recv_ms = int(time.time() * 1000)
        with self.lock:
            batch = self._batch
            if batch.empty:
                batch.started = time.monotonic()
            self.counters.messages += 1
            if token is not None:
                batch.tokens.append(token)
            self._reject(batch, topic, rejection, recv_ms, source, None)

    def _reject(
        self,
        batch: Batch,
        topic: str,
        rej: Rejection,
        recv_ms: int,
        source: str,
        parsed: Any,
    ) -> None:
        batch.quarantine.append(
            QuarantineRow(topic, rej.raw, rej.reason, rej.detail, recv_ms, rej.index, source)
        )
        batch.quarantine_bytes += len(rej.raw)
        self.counters.quarantined[rej.reason] = self.counters.quarantined.get(rej.reason, 0) + 1
        if parsed is not None and rej.reason in _SEQ_TRUSTED:
            try:
                seq = _seq_decoder.decode(rej.raw).seq
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                return  # no seq, or nested too deeply to skip the fields before it
            if 0 <= seq < 2**63:
                batch.covered.append((parsed.vin, parsed.fleet_id, seq))
        elif parsed is not None and rej.reason == "not_json" and rej.index is None:
            batch.covered += [(parsed.vin, parsed.fleet_id, q) for q in _lenient_seqs(rej.raw)]

    # -- called by the flushing thread -------------------------------------------------
    def pending(self) -> tuple[int, int, int, float]:
        """Buffered readings, quarantined bytes, messages and age of the oldest [s]."""
        with self.lock:
            b = self._batch
            age = time.monotonic() - b.started if not b.empty else 0.0
            self.counters.buffer_rows = b.rows
            return b.rows, b.quarantine_bytes, len(b.tokens), age

    def take(self) -> Batch | None:
        """Swap out the current batch (``None`` when there is nothing to flush)."""
        with self.lock:
            if self._batch.empty:
                return None
            batch, self._batch = self._batch, Batch()
            return batch

    def write(self, batch: Batch) -> FlushResult:
        """Make ``batch`` durable (see the module docstring). Retry-safe.

        Raises
        ------
        OSError
            Disk full or lake not writable; call again later with the same batch.
        MemoryError
            Out of memory (never blamed on a message).
        Exception
            A step failed otherwise and no single message (or quarantine row) causes it,
            or a sound control reading fails too (``_culprits``).
        """
        if batch.table is None:
            batch.table = self._build_table(batch)
            batch.buffer.clear()
        files = 0
        if not batch.telemetry_done:
            try:
                files = len(
                    write_telemetry(
                        batch.table,
                        self.lake_dir,
                        file_prefix=self.worker,
                        file_token=batch.file_token,
                    )
                )
            except _ENVIRONMENT:
                raise
            except Exception as exc:  # maybe one poison message: see _isolate_write_failure
                batch.table, files = self._isolate_write_failure(batch, batch.table, exc)
            batch.telemetry_done = True
        table = batch.table
        if batch.events is None:
            batch.events = self._evaluate_alerts(batch, table)
        if not batch.alerts_done:
            write_alerts(batch.events, self.lake_dir, self.worker, batch.file_token)
            batch.alerts_done = True
        if not batch.quarantine_done:
            self._write_quarantine(batch)
            batch.quarantine_done = True
        ts_ms = np.asarray(pc.cast(table["ts"], pa.int64()).to_numpy(), dtype=np.int64)
        now = datetime.now(UTC)
        today_day = (now.date() - date(1970, 1, 1)).days
        late_days = [int(d) for d in np.unique(ts_ms // _MS_PER_DAY) if d < today_day]
        dirty = [date(1970, 1, 1) + timedelta(days=d) for d in late_days]
        if not batch.dirty_done:
            for day in dirty:
                # Rewritten every time (not "if missing"): the nightly batch deletes a
                # marker before it recomputes the date, so a new late file re-marks it.
                atomic_write_bytes(b"", self.state_dir / "dirty" / day.isoformat())
            batch.dirty_done = True
        acks = self._commit(batch, table)
        with self.lock:
            if self.engine is not None:
                self.state.alerts_active = set(self.engine.active)
            state_bytes = self.state.to_bytes()
        atomic_write_bytes(state_bytes, self.state.path)
        for vin, (_, seq) in acks.items():
            self.state.vins[vin].acked = seq
        rows = table.num_rows
        with self.lock:
            c = self.counters
            c.written += rows
            c.flushes += 1
            for e in batch.events:
                key = f"{e.rule}.{e.event}"
                c.alerts[key] = c.alerts.get(key, 0) + 1
            if rows:
                c.lag_s = now.timestamp() - float(ts_ms.max()) / 1000.0
        return FlushResult(batch.tokens, acks, batch.events, rows, files, dirty)

    @contextmanager
    def _trial_dir(self) -> Iterator[Path]:
        """``state/ingest/<worker>.trial/``: where ``_isolate_write_failure`` writes its
        trials (never the lake, nor the system temp dir: this worker's own state folder,
        on the disk the lake's writes need). Emptied before use (what a killed worker left)
        and removed afterwards, also on error."""
        path = self.state_dir / "ingest" / f"{self.worker}.trial"
        shutil.rmtree(path, ignore_errors=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def _culprits(
        n: int,
        trial: Callable[[int, int], object],
        exc: Exception,
        control: Callable[[], object],
    ) -> dict[int, Exception]:
        """The units ``0..n-1`` (messages, quarantine rows) for which ``trial(i, i + 1)``
        fails on its own, found by halves: ``trial(a, b)`` runs the failed step on units
        ``a..b-1`` and raises as the step did. An ``OSError`` or ``MemoryError`` of a
        trial is the environment's, not a unit's: it propagates, as does ``exc`` when no
        unit fails alone.

        When every unit fails alone, the step may fail for any input (a broken library, a
        bug): ``control()`` runs it on a sound unit (``_control_buffer``) and if that
        fails too, ``exc`` is raised and the worker stops, rather than quarantining every
        message. A lone poison message still is one (its control passes)."""
        failing: dict[int, Exception] = {}

        def search(a: int, b: int) -> None:
            try:
                trial(a, b)
            except _ENVIRONMENT:
                raise
            except Exception as err:
                if b - a == 1:
                    failing[a] = err
                    return
                mid = (a + b) // 2
                search(a, mid)
                search(mid, b)

        if n:
            search(0, n)
        if not failing:
            raise exc
        if len(failing) == n:
            try:
                control()
            except _ENVIRONMENT:
                raise
            except Exception:
                raise exc from None
        return failing

    def _build_table(self, batch: Batch) -> pa.Table:
        """The telemetry table of ``batch``'s readings, without the messages whose readings
        cannot be converted on their own.

        Converting the buffered readings to Arrow raising anything but an ``OSError`` or
        ``MemoryError`` would stop the worker on every restart, as a refused write would
        (``_isolate_write_failure``): the messages whose rows fail alone (``_culprits``:
        conversions of row ranges, nothing written) are quarantined whole
        (``write_failed``, the exception in the detail, their seqs handled) and the table
        is built from the others. ``exc`` is raised when no single message fails alone.
        """
        buf = batch.buffer
        try:
            return buf.to_table(self.worker)
        except _ENVIRONMENT:
            raise
        except Exception as exc:
            messages = batch.messages
            if not messages or messages[-1][1] != len(buf):
                raise

            def trial(a: int, b: int) -> None:
                buf.to_table(self.worker, messages[a][0], messages[b - 1][1])

            def control() -> None:
                _control_buffer().to_table(self.worker)

            failing = self._culprits(len(messages), trial, exc, control)
        good = [i for i in range(len(messages)) if i not in failing]
        parts = []
        first = 0
        for k, i in enumerate(good):  # one table per run of consecutive good messages
            if k + 1 == len(good) or good[k + 1] != i + 1:
                parts.append(buf.to_table(self.worker, messages[good[first]][0], messages[i][1]))
                first = k + 1
        table = pa.concat_tables(parts) if parts else buf.to_table(self.worker, 0, 0)
        for i, err in failing.items():
            start, end = messages[i][0], messages[i][1]
            detail = f"converting its readings to Arrow raised {type(err).__name__}: {err}"
            self._quarantine_message(batch, i, "write_failed", detail, buf.identities(start, end))
        self._drop_messages(batch, failing)
        return table

    def _isolate_write_failure(
        self, batch: Batch, table: pa.Table, exc: Exception
    ) -> tuple[pa.Table, int]:
        """Quarantine the messages whose readings fail to write on their own; write the rest.

        Writing ``table`` raised ``exc``, not an ``OSError`` or ``MemoryError``: a reading
        the contract let through but the writer refuses. Raised as is, it would stop the
        worker, and the broker (or the vehicle's buffer) would send the same message again
        after every restart: the ingest of the whole fleet stuck behind one message. So the
        batch is searched by halves (``_culprits``: a few writes to ``_trial_dir``, never the
        lake) for the messages that make the write fail alone. Each is quarantined whole
        (``write_failed``, the exception in the detail, raw bytes kept) and its seqs
        count for the ack like any quarantined whole message (sent again it fails again);
        the other readings are written, under the batch's ``file_token``: partitions the
        failed write stored before it failed are replaced, not stored twice.

        Returns
        -------
        table, files : pa.Table, int
            The readings written and the number of telemetry files.

        Raises
        ------
        Exception
            ``exc`` itself when no single message fails alone (the batch as a whole does,
            or the failure does not repeat), or when every one does and so does a sound
            control reading: the worker stops as it would without this. An ``OSError``
            of a trial write or of the final write (retry later).
        """
        messages = batch.messages
        if not messages or messages[-1][1] != table.num_rows:
            raise exc
        with self._trial_dir() as trial_dir:

            def trial(a: int, b: int) -> None:
                start, end = messages[a][0], messages[b - 1][1]
                write_telemetry(table.slice(start, end - start), trial_dir, file_prefix="trial")

            def control() -> None:
                sound = _control_buffer().to_table(self.worker)
                write_telemetry(sound, trial_dir, file_prefix="trial")

            failing = self._culprits(len(messages), trial, exc, control)
        keep = np.ones(table.num_rows, dtype=np.bool_)
        for i in failing:
            keep[messages[i][0] : messages[i][1]] = False
        good = table.filter(pa.array(keep))
        files = len(
            write_telemetry(
                good, self.lake_dir, file_prefix=self.worker, file_token=batch.file_token
            )
        )
        # only now: an OSError above leaves the batch as it was, for the retry
        for i, err in failing.items():
            start, end = messages[i][0], messages[i][1]
            part = table.slice(start, end - start)
            vins, fleets = part["vin"].to_pylist(), part["fleet"].to_pylist()
            ids = list(zip(vins, fleets, part["seq"].to_pylist(), strict=True))
            detail = f"writing its readings to Parquet raised {type(err).__name__}: {err}"
            self._quarantine_message(batch, i, "write_failed", detail, ids)
        self._drop_messages(batch, failing)
        return good, files

    def _evaluate_alerts(self, batch: Batch, table: pa.Table) -> list[AlertEvent]:
        """The live alerts of the stored readings ``table``, evaluated without the messages
        whose readings make the evaluation fail on their own.

        Such a failure (anything but an ``OSError`` or ``MemoryError``) would stop the
        worker after their readings were written, on every restart again. The messages whose
        rows fail alone (``_culprits``: trial evaluations that leave the engine as it was)
        are recorded in quarantine (``alert_failed``, the exception in the detail, raw bytes
        kept, for the operator: no live alert was evaluated on them); their readings stay
        stored and count for the ack as such. The alerts of the other readings are
        evaluated. ``exc`` is raised when no single message fails alone.
        """
        engine = self.engine
        if engine is None:
            return []
        try:
            return engine.evaluate(table)
        except _ENVIRONMENT:
            raise
        except Exception as exc:
            messages = batch.messages
            if not messages or messages[-1][1] != table.num_rows:
                raise

            def trial(a: int, b: int) -> None:
                start, end = messages[a][0], messages[b - 1][1]
                engine.evaluate(table.slice(start, end - start), commit=False)

            def control() -> None:
                engine.evaluate(_control_buffer().to_table(self.worker), commit=False)

            failing = self._culprits(len(messages), trial, exc, control)
        keep = np.ones(table.num_rows, dtype=np.bool_)
        for i in failing:
            keep[messages[i][0] : messages[i][1]] = False
        events = engine.evaluate(table.filter(pa.array(keep)))
        for i, err in failing.items():
            detail = (
                "readings stored, but evaluating the live alerts on them raised "
                f"{type(err).__name__}: {err}"
            )
            self._quarantine_message(batch, i, "alert_failed", detail, [])
        return events

    def _write_quarantine(self, batch: Batch) -> None:
        """Write ``batch.quarantine``; a row the writer refuses is stored with its text
        escaped, one refused even so kept as a JSON dump.

        Writing the quarantine raising anything but an ``OSError`` or ``MemoryError`` would
        stop the worker, again after every restart: what is refused is one rejected
        message's row (its text: a topic, a reason detail quoting the message). The rows
        that fail alone (``_culprits``: trial writes to ``_trial_dir``) are stored as
        ``escaped`` rows (text as ASCII escapes, the exception at the start of the detail;
        reason and raw bytes unchanged), the others as they are. An escaped row that a
        trial write refuses too is kept as a JSON dump (``dump_quarantine_row``: every
        field and the raw bytes, both exceptions in the detail; counted in
        ``Counters.quarantine_dumps`` and by ``fleetbms status``) rather than stop the
        worker: its message is acknowledged as any quarantined one. If no single row fails
        alone, every one does and a sound control row too, or the other rows then fail
        together, the error stops the worker. A receive date written before the failure
        (a flush over midnight has two) is replaced when written again (same
        ``file_token``), so ``fleetbms status`` counts its rows once; so are the dumps.
        ``batch.quarantine`` is left as it was: a retry escapes afresh (no second prefix).
        """
        rows = batch.quarantine
        token = batch.file_token
        try:
            write_quarantine(rows, self.lake_dir, self.worker, token)
            return
        except _ENVIRONMENT:
            raise
        except Exception as exc:
            stored = list(rows)
            dumps: dict[int, str] = {}
            with self._trial_dir() as trial_dir:

                def trial(a: int, b: int) -> None:
                    write_quarantine(rows[a:b], trial_dir, self.worker)

                def control() -> None:
                    sound = QuarantineRow(
                        _CONTROL_TOPIC, _CONTROL_PAYLOAD, "bad_topic", "", 0, None, "control"
                    )
                    write_quarantine([sound], trial_dir, self.worker)

                failing = self._culprits(len(rows), trial, exc, control)
                for i, err in failing.items():
                    why = f"writing it raised {type(err).__name__}: {err}"
                    stored[i] = escaped(rows[i], f"stored with its text escaped: {why}")
                    try:
                        write_quarantine([stored[i]], trial_dir, self.worker)
                    except _ENVIRONMENT:
                        raise
                    except Exception as again:
                        dumps[i] = (
                            f"kept as a JSON dump: {why}; with its text escaped, "
                            f"{type(again).__name__}: {again}"
                        )
        for i, why in dumps.items():
            dump_quarantine_row(rows[i], why, self.lake_dir, self.worker, f"{token}-{i}")
        kept = [r for i, r in enumerate(stored) if i not in dumps]
        write_quarantine(kept, self.lake_dir, self.worker, token)
        if dumps:
            with self.lock:
                self.counters.quarantine_dumps += len(dumps)

    def _quarantine_message(
        self,
        batch: Batch,
        i: int,
        reason: str,
        detail: str,
        covered: list[tuple[str, str, int]],
    ) -> None:
        """Quarantine message ``i`` of ``batch.messages`` whole; ``covered``: its
        ``(vin, fleet, seq)`` that count as handled for the ack (none if stored)."""
        _, _, topic, payload, recv_ms, source = batch.messages[i]
        with self.lock:
            batch.quarantine.append(
                QuarantineRow(topic, payload, reason, detail, recv_ms, None, source)
            )
            batch.quarantine_bytes += len(payload)
            q = self.counters.quarantined
            q[reason] = q.get(reason, 0) + 1
        batch.covered += covered

    @staticmethod
    def _drop_messages(batch: Batch, dropped: Iterable[int]) -> None:
        """Forget messages ``dropped`` of ``batch.messages`` whose rows left the table:
        the others' row ranges are renumbered to match it."""
        gone = set(dropped)
        kept = []
        row = 0
        for i, (start, end, topic, payload, recv_ms, source) in enumerate(batch.messages):
            if i not in gone:
                kept.append((row, row + end - start, topic, payload, recv_ms, source))
                row += end - start
        batch.messages = kept

    def _commit(self, batch: Batch, table: pa.Table) -> dict[str, tuple[str, int]]:
        """Move written and quarantined seqs into the durable ranges; advanced watermarks."""
        vins = np.asarray(table["vin"].to_numpy(zero_copy_only=False), dtype=object)
        seqs = np.asarray(table["seq"].to_numpy(), dtype=np.int64)
        fleets = table["fleet"].to_pylist() if table.num_rows else []
        if batch.covered:
            vins = np.concatenate([vins, np.array([c[0] for c in batch.covered], dtype=object)])
            seqs = np.concatenate([seqs, np.array([c[2] for c in batch.covered], dtype=np.int64)])
            fleets = [*fleets, *(c[1] for c in batch.covered)]
        acks: dict[str, tuple[str, int]] = {}
        if len(seqs) == 0:
            return acks
        peers = self.state.peer_ranges()
        order = np.argsort(vins, kind="stable")
        v_sorted = vins[order]
        starts = np.concatenate([[0], np.nonzero(v_sorted[1:] != v_sorted[:-1])[0] + 1])
        ends = np.concatenate([starts[1:], [len(order)]])
        with self.lock:
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                vin = str(v_sorted[a])
                st = self.state.get(vin, fleets[int(order[a])])
                st.add_durable(seqs[order[a:b]], self.state.max_ranges)
                mark = st.watermark(peers.get(vin))
                if mark is not None and (st.acked is None or mark > st.acked):
                    acks[vin] = (st.fleet, mark)
        return acks

    def refresh_group_acks(self) -> dict[str, tuple[str, int]]:
        """Watermarks advanced by peers of the shared-subscription group since the last flush.

        A peer's flush can complete a run this worker saw only partly, with no new message
        arriving here; without this the ack would wait for the next message. Returns the
        acks to publish (the state is saved first) and nothing without a group.
        """
        if not self.state.group:
            return {}
        peers = self.state.peer_ranges()
        acks: dict[str, tuple[str, int]] = {}
        with self.lock:
            for vin, st in self.state.vins.items():
                mark = st.watermark(peers.get(vin))
                if mark is not None and (st.acked is None or mark > st.acked):
                    acks[vin] = (st.fleet, mark)
            if not acks:
                return acks
            data = self.state.to_bytes()
        atomic_write_bytes(data, self.state.path)
        with self.lock:
            for vin, (_, seq) in acks.items():
                self.state.vins[vin].acked = seq
        return acks

    def save_state(self) -> None:
        """Write the state file now (e.g. at shutdown)."""
        with self.lock:
            data = self.state.to_bytes()
        atomic_write_bytes(data, self.state.path)


#: Largest number of readings one message can add (a full batch); used to bound memory.
MAX_READINGS_PER_MESSAGE = MAX_BATCH_READINGS


@dataclass(frozen=True)
class RawBatch:
    """Undecoded messages as the MQTT network thread received them (sent to the writer)."""

    topics: list[str]
    payloads: list[bytes]
    received_at_ms: list[int]


@dataclass(frozen=True)
class FlushReport:
    """A successful flush in the writer process, reduced to what the MQTT side needs."""

    acks: dict[str, tuple[str, int]]  # vin -> (fleet, durable_seq) that advanced
    alerts: list[tuple[str, bytes]]  # (topic, payload) to publish
    rows: int  # readings written


class WriterError(IngestError):
    """The writer process failed or died (e.g. killed); nothing more is acknowledged."""


class WriteFailedError(Exception):
    """A flush in the writer process failed with ``OSError``; ``retry()`` it later."""

    def __init__(self, error: str, rows: int) -> None:
        super().__init__(error)
        self.error = error
        self.rows = rows


def _writer_entry(fd: int, parent_pid: int) -> None:
    """Entry point of the writer process (see ``ProcessorProcess``)."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    try:
        cmd, kwargs = conn.recv()
    except (EOFError, OSError):
        return
    assert cmd == "init"
    _writer_main(conn, kwargs, parent_pid)


def _writer_main(conn: Any, kwargs: dict[str, Any], parent_pid: int) -> None:
    """Body of the writer process: a ``Processor`` driven by commands over ``conn``.

    This thread receives: ``chunk`` (raw messages: decoded into the current batch at
    once), ``flush`` (swap the batch out and queue it for writing), ``retry``,
    ``group_acks``, ``close``. A second thread writes the queued batches in order and
    sends the answers, so chunks keep being decoded while a batch is written.
    """
    import os
    import queue
    import signal
    import traceback

    from bms import topic_for

    # The parent decides when to stop (it flushes first); Ctrl-C reaches the whole
    # process group, so the writer ignores it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Arrow's default mimalloc pool keeps ~60 MB of freed pages after each batch is
    # written (measured on 32k readings of 96 cells); malloc hands them back.
    pa.set_memory_pool(pa.system_memory_pool())
    send_lock = threading.Lock()

    def send(msg: tuple[str, Any]) -> None:
        with send_lock:
            conn.send(msg)

    try:
        proc = Processor(**kwargs)
    except IngestError as exc:
        send(("init_error", str(exc)))
        return
    send(("ready", None))
    jobs: queue.Queue[tuple[str, Batch | None]] = queue.Queue()

    def write(batch: Batch) -> tuple[str, Any]:
        try:
            result = proc.write(batch)
        except OSError as exc:
            return "failed", (f"{type(exc).__name__}: {exc}", batch.rows, proc.counters)
        alerts = [
            (topic_for(e.fleet, e.vin, "alert"), e.payload(proc.worker)) for e in result.events
        ]
        return "flushed", (FlushReport(result.acks, alerts, result.rows), proc.counters)

    def writer() -> None:
        held: Batch | None = None
        while True:
            cmd, batch = jobs.get()
            try:
                if cmd == "flush":
                    held = batch
                    reply = ("flushed", (FlushReport({}, [], 0), proc.counters))
                elif cmd == "retry":
                    reply = ("flushed", (FlushReport({}, [], 0), proc.counters))
                elif cmd == "group_acks":
                    send(("acks", proc.refresh_group_acks()))
                    continue
                else:  # close
                    proc.save_state()
                    send(("closed", proc.counters))
                    return
                if held is not None:
                    reply = write(held)
                    if reply[0] == "flushed":
                        held = None
            except Exception:
                send(("error", traceback.format_exc()))
                return
            send(reply)

    thread = threading.Thread(target=writer, name="fleetbms-ingest-write", daemon=True)
    thread.start()
    while thread.is_alive():
        try:
            cmd, arg = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone: stop, acknowledging nothing
        if os.getppid() != parent_pid:
            return
        try:
            if cmd == "chunk":
                raw: RawBatch = arg
                for topic, payload, recv_ms in zip(
                    raw.topics, raw.payloads, raw.received_at_ms, strict=True
                ):
                    proc.add(topic, payload, True, received_at_ms=recv_ms)
            elif cmd == "flush":
                jobs.put(("flush", proc.take()))
            elif cmd in ("retry", "group_acks"):
                jobs.put((cmd, None))
            elif cmd == "close":
                jobs.put(("close", None))
                thread.join()
                return
            else:
                raise ValueError(f"unknown writer command {cmd!r}")
        except Exception:
            send(("error", traceback.format_exc()))
            return
        del arg


class ProcessorProcess:
    """A ``Processor`` in a child process, so decoding and writing do not share the GIL
    with the MQTT network thread.

    The network side streams raw messages in chunks (``send_chunk``, no answer), then
    asks for a flush (``start_flush``) and collects its result (``finish_flush``); the
    writer decodes every chunk as it arrives, and writes and fsyncs the batch of all
    chunks sent before the flush while it keeps decoding the next ones. Senders hold
    ``send_lock``. The writer ignores SIGINT/SIGTERM (the parent flushes and then closes
    it) and exits on its own when the parent dies, so nothing is acknowledged after a
    crash.

    Parameters
    ----------
    **kwargs
        ``Processor`` arguments (they are pickled: the alert engine must be picklable).

    Raises
    ------
    IngestError
        The state file cannot be read (raised by the writer on start).
    """

    def __init__(self, **kwargs: Any) -> None:
        import os
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        # A plain child interpreter (not multiprocessing's spawn: no resource-tracker
        # process, no re-import of the caller's __main__; not fork: the caller may run
        # threads already) speaking multiprocessing's framed pickles over a socketpair.
        ours, theirs = socket.socketpair()
        code = (
            f"import sys; sys.path[:0] = {sys.path!r}; "
            f"from ingest._processor import _writer_entry; "
            f"_writer_entry({theirs.fileno()}, {os.getpid()})"
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C goes to this process only: it flushes first
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self.lock = threading.Lock()  # guards counters
        self.send_lock = threading.Lock()  # one sender at a time, commands in order
        self.counters = Counters()
        self._send(("init", kwargs))
        kind, arg = self._recv()
        if kind == "init_error":
            self._join(10)
            raise IngestError(arg)

    def _join(self, timeout_s: float) -> None:
        import subprocess

        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    @property
    def pid(self) -> int:
        """Process id of the writer."""
        return self._proc.pid

    def check_alive(self) -> None:
        """Raise ``WriterError`` if the writer process has exited."""
        if self._proc.poll() is not None:
            raise WriterError(f"ingest writer process died (exit code {self._proc.returncode})")

    def _send(self, msg: tuple[str, Any]) -> None:
        try:
            self._conn.send(msg)
        except OSError:
            self._join(5)
            raise WriterError(
                f"ingest writer process died (exit code {self._proc.returncode})"
            ) from None

    def _recv(self) -> tuple[str, Any]:
        try:
            kind, arg = self._conn.recv()
        except (EOFError, OSError):
            self._join(5)
            raise WriterError(
                f"ingest writer process died (exit code {self._proc.returncode})"
            ) from None
        if kind == "error":
            self._join(5)
            raise WriterError(f"ingest writer process failed:\n{arg}")
        return kind, arg

    def _merge(self, child: Counters) -> None:
        # messages, acked and flush_failures are counted on the MQTT side
        with self.lock:
            c = self.counters
            c.readings, c.written, c.duplicates = child.readings, child.written, child.duplicates
            c.quarantined, c.alerts = dict(child.quarantined), dict(child.alerts)
            c.quarantine_dumps = child.quarantine_dumps
            c.flushes, c.lag_s = child.flushes, child.lag_s

    def send_chunk(self, raw: RawBatch) -> None:
        """Hand messages to the writer (hold ``send_lock``); they join the next flush."""
        self._send(("chunk", raw))

    def start_flush(self) -> None:
        """Ask for a flush of every chunk sent so far (hold ``send_lock``)."""
        self._send(("flush", None))

    def finish_flush(self) -> FlushReport:
        """Wait for the flush started last; its acks may then be published.

        Raises
        ------
        WriteFailedError
            Disk full or lake not writable: nothing of the batch may be acknowledged;
            call ``retry`` later (the writer keeps the batch).
        WriterError
            The writer process failed or died.
        """
        kind, arg = self._recv()
        if kind == "failed":
            error, rows, counters = arg
            self._merge(counters)
            raise WriteFailedError(error, rows)
        report: FlushReport = arg[0]
        self._merge(arg[1])
        return report

    def retry(self) -> FlushReport:
        """Write the batch of the last failed flush again (same errors as ``finish_flush``)."""
        with self.send_lock:
            self._send(("retry", None))
        return self.finish_flush()

    def refresh_group_acks(self) -> dict[str, tuple[str, int]]:
        """``Processor.refresh_group_acks`` in the writer (not while a flush is pending)."""
        with self.send_lock:
            self._send(("group_acks", None))
        kind, acks = self._recv()
        assert kind == "acks"
        return acks  # type: ignore[no-any-return]

    def close(self) -> None:
        """Save the state file and stop the writer (after the last flush)."""
        if self._proc.poll() is None:
            try:
                with self.send_lock:
                    self._send(("close", None))
                _, counters = self._recv()
                self._merge(counters)
            finally:
                self._join(30)
        self._conn.close()

    def kill(self) -> None:
        """Stop the writer without saving anything (the parent is failing)."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._conn.close()
