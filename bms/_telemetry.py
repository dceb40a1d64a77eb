"""Stored telemetry table: Arrow schema, quality bits and a columnar builder.

One row per reading. Cell voltages are ``list<int16>`` millivolts, temperatures
``list<int16>`` tenths of a degree Celsius; per-reading scalars (min/max/argmin/argmax
of cell voltage, min/max/mean temperature) make scans cheap. Values that do not fit the
stored type (a 65535 sentinel in an int16 list) are stored as null and flagged: the
reading is kept, as the contract asks.
"""

from __future__ import annotations

import enum
from array import array
from datetime import UTC, date, datetime, timedelta

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from bms._contract import Reading


class Quality(enum.IntFlag):
    """Quality bits of a kept-but-flagged reading (column ``quality``)."""

    CELL_MV_RANGE = 1  # a cell voltage outside 1500..4500 mV
    TEMP_RANGE = 2  # a temperature outside -40..90 degC
    SOC_RANGE = 4  # pack SoC outside 0..100 %
    CELL_COUNT_CHANGED = 8  # number of cells differs from earlier readings of this VIN
    SENTINEL = 16  # a sentinel value (65535 mV, 6553.5 degC...) stands for "no value"
    UNREPRESENTABLE = 32  # a value outside the stored type, kept as null
    SOH_RANGE = 64  # BMS soh_pct outside 0..120 %


#: Plausible ranges (contract v1, "kept and flagged").
CELL_MV_MIN, CELL_MV_MAX = 1500, 4500
TEMP_C_MIN, TEMP_C_MAX = -40.0, 90.0
#: Values BMSs send for "not measured" (0xFFFF and friends).
SENTINEL_MV = (65535, 65534, 32767, -32768)
SENTINEL_TEMP_DC = (65535, 65534, 32767, -32768, 2550)  # in tenths of degC

TELEMETRY_SCHEMA = pa.schema(
    [
        pa.field("vin", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("current_a", pa.float32(), nullable=False),
        pa.field("voltage_v", pa.float32(), nullable=False),
        pa.field("soc_pct", pa.float32(), nullable=False),
        pa.field("soh_pct", pa.float32()),
        pa.field("cycle_count", pa.int32(), nullable=False),
        pa.field("odometer_km", pa.float64(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("cell_mv", pa.list_(pa.int16()), nullable=False),
        pa.field("temp_dc", pa.list_(pa.int16()), nullable=False),
        pa.field("n_cells", pa.int16(), nullable=False),
        pa.field("cell_mv_min", pa.int16()),
        pa.field("cell_mv_max", pa.int16()),
        pa.field("cell_min_idx", pa.int16()),
        pa.field("cell_max_idx", pa.int16()),
        pa.field("temp_c_min", pa.float32()),
        pa.field("temp_c_max", pa.float32()),
        pa.field("temp_c_mean", pa.float32()),
        pa.field("quality", pa.int32(), nullable=False),
        pa.field("received_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("worker", pa.string(), nullable=False),
    ],
    metadata={
        b"fleetbms.table": b"telemetry",
        b"fleetbms.version": b"1",
        b"fleetbms.units": (
            b"cell_mv: mV; temp_dc: 0.1 degC; current_a: A (+ into battery); "
            b"voltage_v: V; soc_pct, soh_pct: %; odometer_km: km"
        ),
    },
)
#: Columns the writer takes from the builder's table to choose the partition.
PARTITION_COLUMNS = ("fleet",)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _uniform_length(offsets: npt.NDArray[np.int64]) -> int | None:
    """The common list length if every row has the same one (the usual case), else None."""
    lengths = np.diff(offsets)
    if len(lengths) and offsets[0] == 0 and (lengths == lengths[0]).all():
        return int(lengths[0])
    return None


def _any_per_row(
    mask: npt.NDArray[np.bool_], offsets: npt.NDArray[np.int64]
) -> npt.NDArray[np.bool_]:
    """Whether any element of each list segment is set."""
    n = len(offsets) - 1
    length = _uniform_length(offsets)
    if length:
        return np.asarray(mask.reshape(n, length).any(axis=1))
    csum = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    return np.asarray(csum[offsets[1:]] - csum[offsets[:-1]] > 0)


def _segment_stats(
    values: npt.NDArray[np.int16],
    valid: npt.NDArray[np.bool_],
    offsets: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.float64], ...]:
    """Per-row min, max, argmin, argmax and mean over list segments of valid values.

    Rows with no valid value get NaN. Equal-length rows (one pack size: the usual case)
    are a reshape; otherwise rows are grouped by length and gathered.
    """
    n = len(offsets) - 1
    out = [np.full(n, np.nan) for _ in range(5)]
    length = _uniform_length(offsets)
    if length:
        groups = [(np.arange(n), values.reshape(n, length), valid.reshape(n, length))]
    else:
        lengths = np.diff(offsets)
        groups = []
        for ln in np.unique(lengths):
            rows = np.nonzero(lengths == ln)[0]
            idx = offsets[rows][:, None] + np.arange(ln)[None, :]
            groups.append((rows, values[idx], valid[idx]))
    for rows, vals, ok in groups:
        if vals.shape[1] == 0:
            continue
        count = ok.sum(axis=1)
        has = count > 0
        lo = np.where(ok, vals, np.int16(32767))
        hi = np.where(ok, vals, np.int16(-32768))
        amin = lo.argmin(axis=1)
        amax = hi.argmax(axis=1)
        pick = np.arange(len(rows))
        total = np.where(ok, vals, np.int16(0)).sum(axis=1, dtype=np.int64)
        out[0][rows] = np.where(has, lo[pick, amin], np.nan)
        out[1][rows] = np.where(has, hi[pick, amax], np.nan)
        out[2][rows] = np.where(has, amin, np.nan)
        out[3][rows] = np.where(has, amax, np.nan)
        out[4][rows] = np.where(has, total / np.maximum(count, 1), np.nan)
    return tuple(out)


def _nullable(values: npt.NDArray[np.float64], typ: pa.DataType) -> pa.Array:
    mask = np.isnan(values)
    return pa.array(np.where(mask, 0, values).astype(typ.to_pandas_dtype()), type=typ, mask=mask)


def telemetry_table(
    *,
    fleet: npt.ArrayLike,
    vin: npt.ArrayLike,
    seq: npt.ArrayLike,
    ts_ms: npt.ArrayLike,
    current_a: npt.ArrayLike,
    voltage_v: npt.ArrayLike,
    soc_pct: npt.ArrayLike,
    soh_pct: npt.ArrayLike,
    cycle_count: npt.ArrayLike,
    odometer_km: npt.ArrayLike,
    mode: npt.ArrayLike,
    cell_mv: npt.ArrayLike,
    cell_offsets: npt.ArrayLike,
    temp_c: npt.ArrayLike,
    temp_offsets: npt.ArrayLike,
    received_at_ms: npt.ArrayLike,
    worker: str,
    extra_quality: npt.ArrayLike | None = None,
) -> pa.Table:
    """Build the stored telemetry table from flat columns (vectorised).

    Parameters
    ----------
    cell_mv : array of int
        All cell voltages of all rows, concatenated. [mV]
    cell_offsets : array of int
        ``len(rows) + 1`` offsets into ``cell_mv`` (Arrow list layout).
    temp_c, temp_offsets : arrays
        Temperatures, concatenated, and their offsets. [degC]
    soh_pct : array of float
        NaN where the BMS did not send one. [%]
    ts_ms, received_at_ms : arrays of int
        Milliseconds since the Unix epoch, UTC.
    extra_quality : array of int, optional
        Quality bits the caller knows (e.g. ``CELL_COUNT_CHANGED``), OR-ed in.

    Returns
    -------
    pyarrow.Table
        ``TELEMETRY_SCHEMA`` plus a leading ``fleet`` column that the lake writer
        turns into the partition.
    """
    cells = np.asarray(cell_mv, dtype=np.int64)
    c_off = np.asarray(cell_offsets, dtype=np.int64)
    temps = np.asarray(temp_c, dtype=np.float64)
    t_off = np.asarray(temp_offsets, dtype=np.int64)
    n = len(c_off) - 1
    soc = np.asarray(soc_pct, dtype=np.float64)
    soh = np.asarray(soh_pct, dtype=np.float64)

    # Sentinels are compared one by one: cheaper than np.isin for a handful of values.
    c_sentinel = np.zeros(len(cells), dtype=np.bool_)
    for value in SENTINEL_MV:
        c_sentinel |= cells == value
    c_fits = (cells >= -32768) & (cells <= 32767) & ~c_sentinel
    cells16 = np.where(c_fits, cells, 0).astype(np.int16)
    c_range = c_fits & ((cells16 < CELL_MV_MIN) | (cells16 > CELL_MV_MAX))
    with np.errstate(invalid="ignore", over="ignore"):
        t_dc = np.round(temps * 10.0)
    t_sentinel = np.zeros(len(t_dc), dtype=np.bool_)
    for value in SENTINEL_TEMP_DC:
        t_sentinel |= t_dc == value
    t_fits = np.isfinite(t_dc) & (t_dc >= -32768) & (t_dc <= 32767) & ~t_sentinel
    temps16 = np.where(t_fits, t_dc, 0).astype(np.int16)
    t_range = t_fits & ((temps < TEMP_C_MIN) | (temps > TEMP_C_MAX))

    def bit(rows: npt.NDArray[np.bool_], flag: Quality) -> npt.NDArray[np.int32]:
        return np.where(rows, np.int32(flag), np.int32(0))

    quality = np.zeros(n, dtype=np.int32)
    quality |= bit(_any_per_row(c_range, c_off), Quality.CELL_MV_RANGE)
    quality |= bit(_any_per_row(t_range, t_off), Quality.TEMP_RANGE)
    quality |= bit((soc < 0) | (soc > 100), Quality.SOC_RANGE)
    quality |= bit((soh < 0) | (soh > 120), Quality.SOH_RANGE)
    sentinel_row = _any_per_row(c_sentinel, c_off) | _any_per_row(t_sentinel, t_off)
    quality |= bit(sentinel_row, Quality.SENTINEL)
    unrep = _any_per_row(~c_fits & ~c_sentinel, c_off) | _any_per_row(~t_fits & ~t_sentinel, t_off)
    quality |= bit(unrep, Quality.UNREPRESENTABLE)
    if extra_quality is not None:
        quality |= np.asarray(extra_quality, dtype=np.int32)

    c_stats = _segment_stats(cells16, c_fits, c_off)
    t_stats = _segment_stats(temps16, t_fits, t_off)

    cell_values = pa.array(cells16, mask=~c_fits)
    temp_values = pa.array(temps16, mask=~t_fits)
    n_rows = np.full(n, 1)
    ts = np.asarray(ts_ms, dtype=np.int64) * n_rows
    received = np.asarray(received_at_ms, dtype=np.int64) * n_rows
    columns = {
        "fleet": pa.array(np.broadcast_to(np.asarray(fleet, dtype=object), n), pa.string()),
        "vin": pa.array(np.asarray(vin, dtype=object), pa.string()),
        "seq": pa.array(np.asarray(seq, dtype=np.int64)),
        "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
        "current_a": pa.array(np.asarray(current_a, dtype=np.float32)),
        "voltage_v": pa.array(np.asarray(voltage_v, dtype=np.float32)),
        "soc_pct": pa.array(soc.astype(np.float32)),
        "soh_pct": _nullable(soh, pa.float32()),
        "cycle_count": pa.array(np.asarray(cycle_count, dtype=np.int32)),
        "odometer_km": pa.array(np.asarray(odometer_km, dtype=np.float64)),
        "mode": pa.array(np.broadcast_to(np.asarray(mode, dtype=object), n), pa.string()),
        "cell_mv": pa.ListArray.from_arrays(pa.array(c_off.astype(np.int32)), cell_values),
        "temp_dc": pa.ListArray.from_arrays(pa.array(t_off.astype(np.int32)), temp_values),
        "n_cells": pa.array(np.diff(c_off).astype(np.int16)),
        "cell_mv_min": _nullable(c_stats[0], pa.int16()),
        "cell_mv_max": _nullable(c_stats[1], pa.int16()),
        "cell_min_idx": _nullable(c_stats[2], pa.int16()),
        "cell_max_idx": _nullable(c_stats[3], pa.int16()),
        "temp_c_min": _nullable(t_stats[0] / 10.0, pa.float32()),
        "temp_c_max": _nullable(t_stats[1] / 10.0, pa.float32()),
        "temp_c_mean": _nullable(t_stats[4] / 10.0, pa.float32()),
        "quality": pa.array(quality),
        "received_at": pa.array(received, pa.timestamp("ms", tz="UTC")),
        "worker": pa.array(np.broadcast_to(np.asarray(worker, dtype=object), n), pa.string()),
    }
    schema = pa.schema([pa.field("fleet", pa.string(), nullable=False), *TELEMETRY_SCHEMA])
    return pa.Table.from_pydict(columns, schema=schema)


class ReadingBuffer:
    """Accumulates validated readings column by column until they are written.

    Appending copies the values into flat typed arrays (no per-reading objects kept),
    so memory is a few bytes per cell value.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Drop everything buffered."""
        self._fleet: list[str] = []
        self._vin: list[str] = []
        self._seq = array("q")
        self._ts = array("q")
        self._cur = array("d")
        self._volt = array("d")
        self._soc = array("d")
        self._soh = array("d")
        self._cyc = array("q")
        self._odo = array("d")
        self._mode: list[str] = []
        self._cells = array("q")
        self._c_off = array("q", [0])
        self._temps = array("d")
        self._t_off = array("q", [0])
        self._recv = array("q")
        self._extra = array("i")

    def __len__(self) -> int:
        return len(self._seq)

    @property
    def n_values(self) -> int:
        """Number of cell and temperature values buffered (a memory measure)."""
        return len(self._cells) + len(self._temps)

    def append(
        self, reading: Reading, fleet: str, received_at_ms: int, extra_quality: int = 0
    ) -> None:
        """Add one validated reading."""
        pack = reading.pack
        self._fleet.append(fleet)
        self._vin.append(reading.vin)
        self._seq.append(reading.seq)
        self._ts.append((reading.ts - _EPOCH) // _MS)  # exact integer ms, no float rounding
        self._cur.append(pack.current_a)
        self._volt.append(pack.voltage_v)
        self._soc.append(pack.soc_pct)
        self._soh.append(np.nan if pack.soh_pct is None else pack.soh_pct)
        self._cyc.append(pack.cycle_count)
        self._odo.append(pack.odometer_km)
        self._mode.append(pack.mode)
        self._cells.extend(reading.cells.voltages_mv)
        self._c_off.append(len(self._cells))
        self._temps.extend(reading.cells.temps_c)
        self._t_off.append(len(self._temps))
        self._recv.append(received_at_ms)
        self._extra.append(extra_quality)

    def to_table(self, worker: str, start: int = 0, stop: int | None = None) -> pa.Table:
        """The buffered readings ``start:stop`` (default all) as a telemetry table (with
        the ``fleet`` column)."""
        stop = len(self) if stop is None else stop
        c_off = np.frombuffer(self._c_off, dtype=np.int64)[start : stop + 1]
        t_off = np.frombuffer(self._t_off, dtype=np.int64)[start : stop + 1]
        return telemetry_table(
            fleet=np.array(self._fleet[start:stop], dtype=object),
            vin=np.array(self._vin[start:stop], dtype=object),
            seq=np.frombuffer(self._seq, dtype=np.int64)[start:stop],
            ts_ms=np.frombuffer(self._ts, dtype=np.int64)[start:stop],
            current_a=np.frombuffer(self._cur, dtype=np.float64)[start:stop],
            voltage_v=np.frombuffer(self._volt, dtype=np.float64)[start:stop],
            soc_pct=np.frombuffer(self._soc, dtype=np.float64)[start:stop],
            soh_pct=np.frombuffer(self._soh, dtype=np.float64)[start:stop],
            cycle_count=np.frombuffer(self._cyc, dtype=np.int64)[start:stop],
            odometer_km=np.frombuffer(self._odo, dtype=np.float64)[start:stop],
            mode=np.array(self._mode[start:stop], dtype=object),
            cell_mv=np.frombuffer(self._cells, dtype=np.int64)[c_off[0] : c_off[-1]],
            cell_offsets=c_off - c_off[0],
            temp_c=np.frombuffer(self._temps, dtype=np.float64)[t_off[0] : t_off[-1]],
            temp_offsets=t_off - t_off[0],
            received_at_ms=np.frombuffer(self._recv, dtype=np.int64)[start:stop],
            worker=worker,
            extra_quality=np.frombuffer(self._extra, dtype=np.int32)[start:stop],
        )

    def identities(self, start: int, stop: int) -> list[tuple[str, str, int]]:
        """``(vin, fleet, seq)`` of the buffered readings ``start:stop``."""
        return list(
            zip(self._vin[start:stop], self._fleet[start:stop], self._seq[start:stop], strict=True)
        )


def readings_table(
    readings: list[tuple[Reading, str]], *, received_at_ms: int, worker: str
) -> pa.Table:
    """Telemetry table of ``(reading, fleet_id)`` pairs (convenience for small inputs)."""
    buf = ReadingBuffer()
    for reading, fleet in readings:
        buf.append(reading, fleet, received_at_ms)
    return buf.to_table(worker)


def event_date(ts_ms: int) -> date:
    """UTC calendar date of an event time in epoch milliseconds (the partition key)."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).date()
