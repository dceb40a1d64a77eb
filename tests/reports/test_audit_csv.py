"""Bundle CSV text (reports._csv): the bytes of Arrow's CSV writer, for every value."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pytest

from reports._csv import (
    BATCH_ROWS,
    _field_text,
    _polars_layout_is_arrows,
    _polars_writes_floats_like_arrow,
    float_text,
    polars_matches_arrow,
    repeats,
    write_csv,
    write_csv_file,
)


def _arrow_csv(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pcsv.write_csv(table, sink)
    return sink.getvalue()


def _ours(table: pa.Table, repeating: dict[str, bool] | None = None) -> bytes:
    sink = io.BytesIO()
    write_csv(table, sink, repeating)
    return sink.getvalue()


def _assert_same_text(values: np.ndarray, typ: pa.DataType) -> None:
    column = pa.array(values, typ)
    want = pc.cast(column, pa.string())
    got = float_text(column).to_arrow().cast(pa.string())
    differ = pc.invert(pc.equal(got, want))
    bad = pc.indices_nonzero(pc.fill_null(differ, True))[:5].to_pylist()
    assert not bad, [(values[i], got[i].as_py(), want[i].as_py()) for i in bad]


def test_installed_polars_formats_floats_like_arrow() -> None:
    # Else the export silently takes the slow path; this keeps the fast one tested.
    assert polars_matches_arrow()


def test_installed_polars_writes_float_columns_like_arrow() -> None:
    # Else full-precision columns silently go through text; this keeps the direct route tested.
    assert _polars_writes_floats_like_arrow()


@pytest.mark.parametrize(("dtype", "typ"), [(np.float64, pa.float64()), (np.float32, pa.float32())])
def test_float_text_equals_arrows_at_powers_of_ten_and_their_neighbours(
    dtype: type[np.floating], typ: pa.DataType
) -> None:
    finfo = np.finfo(dtype)
    low, high = (-45, 38) if dtype is np.float32 else (-323, 308)
    powers = np.array([f"1e{e}" for e in range(low, high + 1)]).astype(dtype)
    with np.errstate(over="ignore", under="ignore"):
        values = np.concatenate(
            [powers, np.nextafter(powers, dtype(0)), np.nextafter(powers, dtype(np.inf))]
        )
    values = np.concatenate([values, [0.0, np.nan, np.inf, finfo.max, finfo.tiny]])
    _assert_same_text(np.concatenate([values, -values]).astype(dtype), typ)


@pytest.mark.parametrize(("bits", "typ"), [(np.uint64, pa.float64()), (np.uint32, pa.float32())])
def test_float_text_equals_arrows_on_a_million_random_bit_patterns(
    bits: type[np.unsignedinteger], typ: pa.DataType
) -> None:
    rng = np.random.default_rng(20261206)
    raw = rng.integers(0, np.iinfo(bits).max, 1_000_000, dtype=bits, endpoint=True)
    _assert_same_text(raw.view(np.float64 if bits is np.uint64 else np.float32), typ)


def test_float_text_equals_arrows_on_measurements_of_every_magnitude() -> None:
    rng = np.random.default_rng(7)
    n = 1_000_000
    full = rng.uniform(-1, 1, n) * 10.0 ** rng.integers(-12, 20, n)
    scale = 10.0 ** rng.integers(0, 8, n)
    rounded = np.round(rng.normal(0, 1, n) * 10.0 ** rng.integers(-7, 14, n) * scale) / scale
    integral = np.round(rng.uniform(-1e6, 1e6, n))
    _assert_same_text(np.concatenate([full, rounded, integral]), pa.float64())


def test_float_text_keeps_nulls() -> None:
    text = float_text(pa.array([1.5, None, float("nan"), None, 100.0]))
    assert text.to_list() == ["1.5", None, "nan", None, "100"]


def _every_type_table(n: int) -> pa.Table:
    rng = np.random.default_rng(3)
    strings = ["plain", 'with "quotes"', "comma, inside", "line\nbreak", "", None, "ünï"]
    floats = rng.normal(0, 1, n) * 10.0 ** rng.integers(-8, 17, n)
    floats[::97] = np.nan
    mask = np.zeros(n, dtype=bool)
    mask[::13] = True
    return pa.table(
        {
            "vin": pa.array([strings[i % len(strings)] for i in range(n)], pa.string()),
            "big": pa.array([strings[i % 3] for i in range(n)], pa.large_string()),
            "psn": pa.array([f"psn_{i % 50:024x}" for i in range(n)]).dictionary_encode(),
            "raw": pa.array([b'ab"c', None, b""] * (n // 3) + [b"x"] * (n % 3), pa.binary()),
            "cell": pa.array(np.arange(n) % 96, pa.int16()),
            "n_u64": pa.array(rng.integers(0, 2**63, n), pa.uint64()),
            "n_i8": pa.array(rng.integers(-128, 128, n), pa.int8(), mask=mask),
            "ok": pa.array(rng.integers(0, 2, n).astype(bool), mask=mask),
            "date": pa.array([date(2026, 1, 1 + i % 28) for i in range(n)], pa.date32()),
            "ts": pa.array(
                [datetime(2026, 1, 1, 12, i % 60, 5, 250_000) for i in range(n)],
                pa.timestamp("ms"),
            ),
            "at": pa.array([time(1, 2, i % 60) for i in range(n)], pa.time32("s")),
            "price": pa.array(
                [Decimal("1.50"), None, Decimal("-0.01")] * (n // 3) + [None] * (n % 3),
                pa.decimal128(6, 2),
            ),
            "soh_pct": pa.array(floats, mask=mask),
            "temp_c": pa.array(floats.astype(np.float32)),
            "nothing": pa.nulls(n),
            'odd "name", too': pa.array(np.linspace(0, 1, n)),
        }
    )


def test_write_csv_writes_the_bytes_of_arrows_writer_for_every_column_type() -> None:
    table = _every_type_table(BATCH_ROWS + 1_001)  # two batches
    assert _ours(table) == _arrow_csv(table)


def test_write_csv_of_chunked_and_empty_tables_matches_arrow() -> None:
    table = _every_type_table(25_000)
    chunked = pa.concat_tables([table.slice(0, 12_000), table.slice(12_000)])
    assert _ours(chunked) == _arrow_csv(table)
    assert _ours(table.slice(0, 0)) == _arrow_csv(table.slice(0, 0))


def test_write_csv_of_repeating_measurements_matches_arrow() -> None:
    # Few distinct values: each formatted once; -0.0, 0.0 and NaNs must stay apart.
    rng = np.random.default_rng(11)
    n = 20_000
    levels = np.array([-0.0, 0.0, np.nan, -np.nan, 3700.0, 3700.12, 1e-7, 2.5e12, -1.5])
    rest_mv = levels[rng.integers(0, len(levels), n)]
    mask = np.zeros(n, dtype=bool)
    mask[::7] = True
    table = pa.table(
        {
            "rest_mv": pa.array(rest_mv, mask=mask),
            "temp_c": pa.array(np.round(rng.normal(30, 5, n), 1).astype(np.float32)),
            "drift_mv_per_day": pa.array(np.round(rng.normal(0, 0.2, n), 3)),
        }
    )
    assert _ours(table) == _arrow_csv(table)


def _repeats_by_count_distinct(column: pa.Array | pa.ChunkedArray) -> bool:
    sample = column.slice(0, 8_192)
    return len(sample) >= 1_000 and pc.count_distinct(sample).as_py() * 2 <= len(sample)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_repeats_counts_distinct_values_as_arrows_count_distinct(dtype: type) -> None:
    # Distinct by bits (-0.0 apart from 0.0, NaN payloads apart), nulls not counted; at
    # the threshold, in chunks, and below the minimum sample.
    rng = np.random.default_rng(13)
    bits = np.array([np.nan], dtype=dtype).view(f"u{np.dtype(dtype).itemsize}")
    payload_nan = (bits | 1).view(dtype)
    special = np.array([-0.0, 0.0, np.nan, -np.nan, np.inf, -np.inf], dtype=dtype)
    special = np.concatenate([special, payload_nan])
    for n_distinct in (1, 7, 500, 2_045, 2_046, 2_047, 4_096, 4_097, 9_000):
        pool = np.concatenate([special, rng.normal(0, 1e3, n_distinct).astype(dtype)])
        for n in (999, 1_000, 4_093, 8_192, 20_000):
            values = pool[rng.integers(0, len(pool), n)]
            mask = rng.random(n) < 0.1
            for column in (
                pa.array(values),
                pa.array(values, mask=mask),
                pa.chunked_array([pa.array(values[: n // 3]), pa.array(values[n // 3 :])]),
            ):
                assert repeats(column) == _repeats_by_count_distinct(column), (n_distinct, n)
    # Exactly half distinct repeats; one more does not (float16 holds too few integers).
    if dtype is not np.float16:
        half = np.arange(4_096).astype(dtype)
        assert repeats(pa.array(np.concatenate([half, half])))
        assert not repeats(pa.array(np.concatenate([half, half[:-1], [dtype(-1)]])))


def test_write_csv_of_full_precision_measurements_matches_arrow() -> None:
    # Columns whose every value Polars' writer lays out like Arrow go to it as floats (no
    # text column); one value it writes otherwise (0.0, |x| < 1e-5, NaN) sends its column
    # through text.
    rng = np.random.default_rng(12)
    n = 30_000
    mask = np.zeros(n, dtype=bool)
    mask[::11] = True
    rest_mv = 3700 + rng.normal(0, 3, n)
    drift = rng.normal(0, 0.2, n)
    drift[[5, 20_000]] = [0.0, 3.5e-6]
    with_nan = rng.normal(0, 1, n)
    with_nan[-1] = np.nan
    columns = {
        "rest_mv": pa.array(rest_mv),
        "rest_mv_nulls": pa.array(rest_mv, mask=mask),
        "temp_c": pa.array(rng.uniform(5, 60, n).astype(np.float32)),
        "tiny": pa.array(rng.uniform(-1, 1, n) * 1e-9),
        "huge": pa.array(rng.uniform(1, 9, n) * 10.0 ** rng.integers(16, 300, n)),
        "drift": pa.array(drift),
        "with_nan": pa.array(with_nan),
    }
    table = pa.table(columns)
    direct = {name: _field_text(column).dtype.is_float() for name, column in columns.items()}
    assert direct == {
        "rest_mv": True,
        "rest_mv_nulls": True,
        "temp_c": True,
        "tiny": True,
        "huge": True,
        "drift": False,
        "with_nan": False,
    }
    assert _ours(table) == _arrow_csv(table)


@pytest.mark.parametrize(("bits", "typ"), [(np.uint64, pa.float64()), (np.uint32, pa.float32())])
def test_write_csv_of_floats_given_as_floats_matches_arrow_on_random_bit_patterns(
    bits: type[np.unsignedinteger], typ: pa.DataType
) -> None:
    rng = np.random.default_rng(20261207)
    raw = rng.integers(0, np.iinfo(bits).max, 600_000, dtype=bits, endpoint=True)
    values = raw.view(np.float64 if bits is np.uint64 else np.float32)
    scale = 10.0 ** rng.integers(-5, 10, 600_000)
    measured = (rng.uniform(-1, 1, 600_000) * scale).astype(values.dtype)
    values = np.concatenate([values, measured])
    values = values[_polars_layout_is_arrows(values)]
    table = pa.table({"x": pa.array(values, typ)})
    assert isinstance(_field_text(table["x"].chunks[0]), pl.Series)
    assert _field_text(table["x"].chunks[0]).dtype.is_float()
    assert _ours(table) == _arrow_csv(table)


def test_write_csv_takes_any_repeating_hint_and_writes_the_same_bytes() -> None:
    rng = np.random.default_rng(13)
    n = 20_000
    table = pa.table(
        {
            "full": pa.array(rng.normal(3700, 3, n)),
            "rounded": pa.array(np.round(rng.normal(0, 0.2, n), 2)),
        }
    )
    want = _arrow_csv(table)
    for full in (True, False):
        for rounded in (True, False):
            assert _ours(table, {"full": full, "rounded": rounded}) == want
    assert _ours(table, {"other": True}) == want


@pytest.mark.parametrize(
    "make",
    [
        lambda: _every_type_table(25_000),  # one batch: Polars writes the file, header too
        lambda: _every_type_table(BATCH_ROWS + 5),  # two batches: through write_csv
        lambda: _every_type_table(500),  # small: Arrow's writer
        lambda: pa.concat_tables([_every_type_table(9_000), _every_type_table(9_000)]),
        lambda: pa.table([pa.array(np.arange(20_000) * 0.5)] * 2, names=["x", "x"]),
        lambda: _every_type_table(BATCH_ROWS).slice(0, 0),
    ],
    ids=["one-batch", "two-batches", "small", "two-chunks", "same-names", "empty"],
)
def test_write_csv_file_writes_the_bytes_of_arrows_writer(
    make: Callable[[], pa.Table], tmp_path: Path
) -> None:
    table = make()
    write_csv_file(table, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_bytes() == _arrow_csv(table)


def test_write_csv_file_writes_where_it_is_told_even_under_a_folder_named_tilde(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "~").mkdir()
    table = _every_type_table(25_000)
    write_csv_file(table, Path("~/t.csv"))
    assert (tmp_path / "~" / "t.csv").read_bytes() == _arrow_csv(table)
    assert not (home / "t.csv").exists()
