"""CSV text of Arrow tables: byte for byte what ``pyarrow.csv.write_csv`` writes, faster.

An audit bundle's CSV files are Arrow's default dialect (RFC 4180, header of quoted
names, strings and binary in double quotes with ``"`` doubled, other values unquoted as
Arrow's cast to string gives them, a null as an empty field, ``\\n`` line ends). Most of
their cost is formatting doubles: Arrow gives each the shortest text that reads back to
the same double (double-conversion's Grisu3, with the decimal point for decimal
exponents -6 to 9 and ``1e+10`` style outside). Polars finds the same shortest digits
with Ryu [1]_, 2-6x faster, but lays some of them out differently (``100.0``, ``1e-6``,
``10000000000.0``, ``NaN``). ``write_csv`` takes Polars' text where the two layouts
agree (non-integral values from 1e-5 to 1e10, and the exponent forms below 1e-6 and from
1e16 up), Arrow's for every other value, and lets Polars join the fields into lines. A
float column whose every value lies where the layouts agree (full-precision
measurements) goes to Polars' writer as floats, which formats each straight into its
line (the same digits and layout as its cast to text, without a text column: about a
third less for such a column). A float column whose values repeat (readings at a fixed
resolution) is formatted once per distinct value; tables under ``_POLARS_MIN_ROWS`` rows
go through Arrow's writer. ``write_csv_file`` lets Polars open the file itself.

The bytes equal Arrow's writer's (``tests/reports/test_audit_csv.py`` checks edge values
and millions of random bit patterns, through both routes); if an installed Polars ever
formats differently, ``polars_matches_arrow`` (its text) or
``_polars_writes_floats_like_arrow`` (its writer) notices on first use, and the doubles
go through Arrow's text or through Polars' text instead.

References
----------
.. [1] U. Adams, "Ryu: fast float-to-string conversion", in Proc. 39th ACM SIGPLAN
   Conf. Programming Language Design and Implementation (PLDI), 2018, pp. 270-282.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "float_text",
    "polars_matches_arrow",
    "preload",
    "repeats",
    "write_csv",
    "write_csv_file",
]

#: Rows formatted at a time (bounds the memory of the text of one batch; a day of a
#: 1,000-vehicle fleet's per-cell table, 96,000 rows, is one batch).
BATCH_ROWS = 131_072
#: Below this many rows Arrow's writer is cheaper: Polars costs ~0.5 ms a call.
_POLARS_MIN_ROWS = 10_000
#: Values looked at to decide whether a float column repeats enough to format each
#: distinct value once (``repeats``).
_SAMPLE_ROWS = 8_192
#: Values per NumPy pass of the float layout checks: their temporaries stay at 64 KB,
#: which the allocator keeps and reuses. Over a whole 96,000-row column each
#: temporary took 768 KB straight from the OS and gave it back on release, and its
#: first touch cost more than the arithmetic (1.2 ms a column instead of 0.1-0.2 ms).
_BLOCK = 8_192


def _arrow_text(values: pa.Array) -> pa.Array:
    return pc.cast(values, pa.string())


def _polars_layout_is_arrows(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """True where Polars' text of a float equals Arrow's (see the module docstring).

    Thresholds in the values' own precision: a float32 just under 1e-6 can have the
    shortest float32 text ``1e-6``, which Arrow writes as ``0.000001``. Computed
    ``_BLOCK`` values at a time (see there).
    """
    one = values.dtype.type
    out = np.empty(len(values), dtype=bool)
    for start in range(0, len(values), _BLOCK):
        block = values[start : start + _BLOCK]
        mag = np.abs(block)
        with np.errstate(invalid="ignore"):
            decimal = (mag >= one(1e-5)) & (mag < one(1e10)) & (block != np.trunc(block))
            tiny = (mag > 0) & (mag < one(1e-6))
            huge = (mag >= one(1e16)) & (mag < np.inf)
        out[start : start + _BLOCK] = decimal | tiny | huge
    return out


def _all_plain_decimals(values: np.ndarray[Any, Any]) -> bool:
    """True when every value is non-integral, from 1e-5 to 1e10 in magnitude (the
    common case of ``_polars_layout_is_arrows``, in fewer passes); False on any NaN."""
    if not len(values):
        return False
    one = values.dtype.type
    for start in range(0, len(values), _BLOCK):
        block = values[start : start + _BLOCK]
        mag = np.abs(block)
        with np.errstate(invalid="ignore"):
            if not (mag.min() >= one(1e-5) and mag.max() < one(1e10)):
                return False
        if (np.trunc(block) == block).any():
            return False
    return True


def _polars_float_text(column: pa.Array, *, as_floats: bool = False) -> pl.Series:
    """Polars' text of a float column, Arrow's where the layouts differ; with
    ``as_floats``, the float column itself when they agree on every value (Polars' CSV
    writer then formats it with the digits and layout of its cast to text)."""
    import polars as pl  # heavy: imported on first use

    # Polars writes a float32 with the shortest float32 digits, as Arrow does.
    series = pl.from_arrow(column)
    assert isinstance(series, pl.Series)
    values = column.to_numpy(zero_copy_only=False)
    if as_floats and not column.null_count and _all_plain_decimals(values):
        return series
    other = ~_polars_layout_is_arrows(values)
    if column.null_count:
        other &= column.is_valid().to_numpy(zero_copy_only=False)
    idx = np.flatnonzero(other)
    if as_floats and not len(idx):
        return series
    text = series.cast(pl.String)
    if len(idx):
        arrow = pl.from_arrow(_arrow_text(column.take(pa.array(idx))))
        assert isinstance(arrow, pl.Series)
        text = text.scatter(idx, arrow)
    return text


def _probe_values(dtype: type[np.floating[Any]]) -> np.ndarray[Any, Any]:
    """Values whose text differs between the layouts, or sits at their thresholds."""
    finfo = np.finfo(dtype)
    low, high = np.floor(np.log10([finfo.smallest_subnormal, finfo.max])).astype(int)
    powers = np.array([f"1e{e}" for e in range(low, high + 1)]).astype(dtype)
    with np.errstate(over="ignore", under="ignore"):
        near = np.concatenate(
            [powers, np.nextafter(powers, dtype(0)), np.nextafter(powers, dtype(np.inf))]
        )
    special = np.array(
        [0.0, -0.0, 0.1, 2.5, 100.0, 1 / 3, 3700.12, np.nan, np.inf, -np.inf], dtype=dtype
    )
    extremes = np.array([finfo.max, finfo.smallest_subnormal, finfo.tiny], dtype=dtype)
    values = np.concatenate([near, special, extremes])
    return np.concatenate([values, -values])


@functools.cache
def polars_matches_arrow() -> bool:
    """True when the installed Polars and Arrow give the same text on probe values.

    Checked once per process, on powers of ten and their neighbours, the layout
    thresholds, zeros, infinities and NaN, in float64 and float32.
    """
    for dtype, typ in ((np.float64, pa.float64()), (np.float32, pa.float32())):
        column = pa.array(_probe_values(dtype), typ)
        if _polars_float_text(column).to_arrow().cast(pa.string()) != _arrow_text(column):
            return False
    return True


@functools.cache
def _polars_writes_floats_like_arrow() -> bool:
    """True when Polars' CSV writer gives a float column the text of Arrow's cast where
    the layouts agree (``_polars_layout_is_arrows``), checked on the probe values."""
    import polars as pl

    for dtype, typ in ((np.float64, pa.float64()), (np.float32, pa.float32())):
        values = _probe_values(dtype)
        column = pa.array(values[_polars_layout_is_arrows(values)], typ)
        sink = io.BytesIO()
        pl.DataFrame({"c": pl.from_arrow(column)}).write_csv(
            sink, include_header=False, line_terminator="\n", quote_style="never"
        )
        if sink.getvalue().decode("ascii").splitlines() != _arrow_text(column).to_pylist():
            return False
    return True


def preload() -> None:
    """Import Polars and run the layout checks now (e.g. on a spare thread)."""
    if polars_matches_arrow():
        _polars_writes_floats_like_arrow()


def float_text(column: pa.Array) -> pl.Series:
    """Text of a float32 or float64 array, as Arrow's cast to string gives it.

    Parameters
    ----------
    column : pyarrow.Array
        Float values (nulls allowed).

    Returns
    -------
    polars.Series
        String series, null where ``column`` is null.
    """
    import polars as pl

    if polars_matches_arrow():
        return _polars_float_text(column)
    text = pl.from_arrow(_arrow_text(column))
    assert isinstance(text, pl.Series)
    return text


def _is_quoted(typ: pa.DataType) -> bool:
    """Types Arrow's writer puts in quotes: strings and binary (and dictionaries of them)."""
    if pa.types.is_dictionary(typ):
        return _is_quoted(typ.value_type)
    return bool(
        pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or pa.types.is_binary(typ)
        or pa.types.is_large_binary(typ)
        or pa.types.is_fixed_size_binary(typ)
    )


def _quote(values: pa.Array) -> pa.Array:
    typ = values.type
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        text = values
    else:  # binary: as UTF-8 text, like Arrow's writer (which rejects invalid UTF-8 too)
        large = pa.types.is_large_binary(typ)
        text = pc.cast(values, pa.large_string() if large else pa.string())
    quote = pa.scalar('"', text.type)
    escaped = pc.replace_substring(text, '"', '""')
    return pc.binary_join_element_wise(quote, escaped, quote, pa.scalar("", text.type))


def _field_text(column: pa.Array, repeating: bool | None = None) -> pl.Series:
    """One column's CSV fields, for Polars to write unquoted (nulls become empty).

    ``repeating``: whether a float column's values repeat (``repeats``), if known.
    """
    import polars as pl

    typ = column.type
    if _is_quoted(typ):
        if pa.types.is_dictionary(typ):
            # Each distinct value quoted once; Polars writes a categorical by its text.
            quoted = pa.DictionaryArray.from_arrays(column.indices, _quote(column.dictionary))
            series = pl.from_arrow(quoted)
        else:
            series = pl.from_arrow(_quote(column))
    elif pa.types.is_float64(typ) or pa.types.is_float32(typ):
        if not (repeats(column) if repeating is None else repeating):
            if polars_matches_arrow():
                # The column itself where Polars' writer formats it like Arrow: it writes
                # each double straight into the line, without a text column in between.
                as_floats = _polars_writes_floats_like_arrow()
                return _polars_float_text(column, as_floats=as_floats)
            return float_text(column)
        # Measurements at a fixed resolution repeat: each distinct value (by its bits,
        # so -0.0 stays apart from 0.0) formatted once.
        encoded = pc.dictionary_encode(column)
        text = float_text(encoded.dictionary).to_arrow()
        series = pl.from_arrow(pa.DictionaryArray.from_arrays(encoded.indices, text))
    elif pa.types.is_integer(typ):
        series = pl.from_arrow(column)  # plain decimal digits, as Arrow's
    elif pa.types.is_null(typ):
        series = pl.Series(values=[None] * len(column), dtype=pl.String)
    else:
        # Dates, booleans, decimals, times...: Arrow's own text of each distinct value.
        if pa.types.is_dictionary(typ):
            column = column.dictionary_decode()
        encoded = pc.dictionary_encode(column)
        text = pa.DictionaryArray.from_arrays(encoded.indices, _arrow_text(encoded.dictionary))
        series = pl.from_arrow(text)
    assert isinstance(series, pl.Series)
    return series


def repeats(column: pa.Array | pa.ChunkedArray) -> bool:
    """True when the first ``_SAMPLE_ROWS`` values hold at most half as many distinct.

    Distinct as Arrow's ``count_distinct`` counts them: non-null values by their bits
    (its hash table hashes the bits, so -0.0 and 0.0 or two NaN payloads are apart).
    Doubles and float32 are counted by sorting their bits with NumPy: 0.1 ms for 8,192
    doubles, against 0.4 ms for ``count_distinct``, whose hash table grows from small
    for values that rarely repeat. Half floats, which Arrow counts otherwise, go to
    ``count_distinct``.
    """
    sample = column.slice(0, _SAMPLE_ROWS)
    if len(sample) < 1_000:
        return False
    if not (pa.types.is_float64(sample.type) or pa.types.is_float32(sample.type)):
        return bool(pc.count_distinct(sample).as_py() * 2 <= len(sample))
    valid = sample.drop_null() if sample.null_count else sample
    values = valid.to_numpy(zero_copy_only=False)
    # Sorted, not ``np.unique``: NumPy 2.3+ counts integers through a hash table, 10x
    # slower here than its vectorised sort.
    bits = np.sort(values.view(f"u{values.dtype.itemsize}"))
    distinct = int(np.count_nonzero(bits[1:] != bits[:-1])) + (len(bits) > 0)
    return distinct * 2 <= len(sample)


def _header(names: list[str]) -> bytes:
    return (",".join('"' + n.replace('"', '""') + '"' for n in names) + "\n").encode("utf-8")


def write_csv(
    table: pa.Table,
    sink: IO[bytes] | io.RawIOBase,
    repeating: Mapping[str, bool] | None = None,
) -> None:
    """Write ``table`` to ``sink`` as CSV: the bytes of ``pyarrow.csv.write_csv``.

    Parameters
    ----------
    table : pyarrow.Table
        Columns of any type Arrow's CSV writer accepts (nested types must be turned
        into text first).
    sink : binary file
        Binary file object (Arrow's writer, used for small tables, checks ``closed``).
    repeating : mapping of str to bool, optional
        ``repeats`` of float columns, by name, where the caller already knows it (it
        only picks how the text is made: the bytes are the same either way); the
        others are sampled per batch.
    """
    if table.num_columns == 0:
        raise ValueError("a CSV file needs at least one column")
    if table.num_rows < _POLARS_MIN_ROWS:
        pcsv.write_csv(table, sink)  # the same bytes
        return
    sink.write(_header(table.column_names))
    for batch in table.to_batches(max_chunksize=BATCH_ROWS):
        if batch.num_rows == 0:
            continue
        # Positional names: Polars needs unique ones, and the header is written above.
        _frame(batch, [f"c{i}" for i in range(batch.num_columns)], repeating).write_csv(
            cast("IO[bytes]", sink), include_header=False, **_POLARS_DIALECT
        )


#: Arrow's dialect in Polars' writer: fields are made unquoted text (``_field_text``).
_POLARS_DIALECT: dict[str, Any] = {
    "separator": ",",
    "line_terminator": "\n",
    "quote_style": "never",
    "null_value": "",
}


def _frame(
    batch: pa.RecordBatch, names: list[str], repeating: Mapping[str, bool] | None
) -> pl.DataFrame:
    import polars as pl

    known = repeating or {}
    return pl.DataFrame(
        {
            name: _field_text(column, known.get(field))
            for name, field, column in zip(names, batch.schema.names, batch.columns, strict=True)
        }
    )


def write_csv_file(
    table: pa.Table, path: Path, repeating: Mapping[str, bool] | None = None
) -> None:
    """Write ``table`` to a new file ``path``: the bytes of ``write_csv``.

    A table of one batch (``BATCH_ROWS``) with distinct column names is written by
    Polars' writer to the path itself, header included (the names given as their
    quoted header text): no Python call for each chunk it writes, so no wait for the
    GIL or copy into a Python ``bytes`` on the way. Other tables go through
    ``write_csv``. Parameters as ``write_csv``'s.
    """
    names = table.column_names
    if (
        table.num_columns == 0
        or not _POLARS_MIN_ROWS <= table.num_rows <= BATCH_ROWS
        or len(set(names)) != len(names)
    ):
        with open(path, "wb") as sink:
            write_csv(table, sink, repeating)
        return
    batch = table.combine_chunks().to_batches()[0]
    header = [_header([name]).decode("utf-8")[:-1] for name in names]
    # Absolute: Polars expands a leading ``~`` of the path it is given.
    _frame(batch, header, repeating).write_csv(
        str(path.absolute()), include_header=True, **_POLARS_DIALECT
    )
