"""The per-sensor day figures of ``sql/anomaly_sensor_day.sql`` on a hand-made day of
one vehicle: a stuck sensor, a sensor with gaps, one warming against its pack at rest;
the same figures from raw ingest files with duplicates as from one compacted file."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import bms
from bms._features import sensor_day

DAY = date(2026, 3, 2)
VIN = "FBMSENSOR00000001"
CADENCE_S = 300
N = 86_400 // CADENCE_S
HOURS = np.arange(N) * CADENCE_S / 3600.0
#: rest 0-8 h, driving 8-10 h at 50 A, rest 10-24 h
CURRENT_A = np.where((HOURS >= 8) & (HOURS < 10), -50.0, 0.0)
BASE_C = 26.0 + 1.5 * np.sin(2 * np.pi * HOURS / 24)
RISE_C_PER_H = 0.5  # sensor 4 warms against its pack in the second rest
GAPS = np.arange(N) % 7 == 3  # sensor 1 misses every 7th reading
SPIKE = 109  # sensor 3 reads 71.2 degC once, while driving (not in a rest fit)


def _temps_c() -> np.ndarray:
    temps = np.repeat(BASE_C[:, None], 5, axis=1)
    temps[:, 0] = 24.0  # stuck, below the others so the pack median stays BASE_C
    temps[GAPS, 1] = np.nan
    temps[:, 4] += RISE_C_PER_H * np.clip(HOURS - 10, 0, None)
    temps[SPIKE, 3] = 71.2
    return temps


def _table(
    seq: np.ndarray, received_delay_ms: int = 500, vin: str = VIN, offset_c: float = 0.0
) -> pa.Table:
    t0_ms = int(datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC).timestamp() * 1000)
    temps = _temps_c()[seq] + offset_c
    n = len(seq)
    ts_ms = t0_ms + seq * CADENCE_S * 1000
    return bms.telemetry_table(
        fleet="demo",
        vin=np.full(n, vin, dtype=object),
        seq=seq,
        ts_ms=ts_ms,
        current_a=CURRENT_A[seq],
        voltage_v=np.full(n, 52.0),
        soc_pct=np.full(n, 60.0),
        soh_pct=np.full(n, 97.0),
        cycle_count=np.full(n, 10),
        odometer_km=np.full(n, 1000.0),
        mode=np.where(CURRENT_A[seq] < 0, "drive", "idle").astype(object),
        cell_mv=np.full(n * 14, 3700),
        cell_offsets=np.arange(n + 1) * 14,
        temp_c=temps.ravel(),
        temp_offsets=np.arange(n + 1) * 5,
        received_at_ms=ts_ms + received_delay_ms,
        worker="w",
    )


def _sensor_day(lake: Path) -> pa.Table:
    registry = pa.table({"vin": [VIN], "capacity_ah": [100.0]})
    return sensor_day(
        lake,
        DAY,
        "demo",
        registry,
        rest_c_rate=0.02,
        default_capacity_ah=100.0,
        rest_min_s=3600.0,
        settle_s=1800.0,
    )


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, pa.Table]:
    root = tmp_path_factory.mktemp("sensor")
    raw, compacted = root / "raw" / "lake", root / "compacted" / "lake"
    seq = np.arange(N)
    for k in range(0, N, 40):  # small ingest files, then a replay of part of the day
        bms.write_telemetry(_table(seq[k : k + 40]), raw, file_prefix=f"w{k}")
    bms.write_telemetry(_table(seq[100:160], received_delay_ms=9000), raw, file_prefix="replay")
    (written,) = bms.write_telemetry(_table(seq), compacted, file_prefix="compacted")
    assert written.path.name.startswith(bms.COMPACTED_PREFIX)
    return _sensor_day(raw), _sensor_day(compacted)


def test_raw_files_with_duplicates_give_the_compacted_figures(
    figures: tuple[pa.Table, pa.Table],
) -> None:
    raw, compacted = figures
    assert raw.num_rows == 5
    assert raw.equals(compacted)


def test_counts_and_the_stuck_sensor(figures: tuple[pa.Table, pa.Table]) -> None:
    table = figures[0].to_pydict()
    assert table["sensor"] == [0, 1, 2, 3, 4]
    assert table["n_readings"] == [N] * 5
    assert table["n_valid"] == [N, N - int(GAPS.sum()), N, N, N]
    assert table["range_c"][0] == 0.0  # stuck
    assert table["max_c"][0] == 24.0  # ... at this value
    assert min(table["range_c"][1:]) >= 2.9  # the day's swing of 3 degC, quantised
    assert table["pack_range_c"][0] == pytest.approx(3.0, abs=0.1)
    assert table["dev_mean_c"][2] == pytest.approx(0.0, abs=0.05)


def test_jitter_steps_from_the_previous_valid_value(figures: tuple[pa.Table, pa.Table]) -> None:
    table = figures[0].to_pydict()
    temps_dc = np.round(_temps_c() * 10)
    for sensor in (1, 2):
        values = temps_dc[:, sensor]
        steps = np.diff(values[~np.isnan(values)])
        expected_c = float(np.sqrt(np.mean(steps**2)) / 10)
        assert table["jitter_c"][sensor] == pytest.approx(expected_c, rel=1e-12)
    # the gaps make sensor 1's steps longer than sensor 2's
    assert table["jitter_c"][1] > table["jitter_c"][2]


def test_hottest_reading_and_hottest_held_on_two_consecutive_readings(
    figures: tuple[pa.Table, pa.Table],
) -> None:
    """Sensor 3's one reading of 71.2 degC is its maximum, not what it held; a sensor
    with gaps holds a value over its consecutive valid readings."""
    table = figures[0].to_pydict()
    temps_dc = np.round(_temps_c() * 10)
    for sensor in range(5):
        values = temps_dc[:, sensor]
        valid = values[~np.isnan(values)]
        assert table["max_c"][sensor] == np.max(valid) / 10
        held = np.max(np.minimum(valid[1:], valid[:-1])) / 10
        assert table["held_max_c"][sensor] == pytest.approx(held, abs=1e-12), sensor
    assert table["max_c"][3] == 71.2
    assert table["held_max_c"][3] < 28.0


def test_rise_at_rest_against_the_pack(figures: tuple[pa.Table, pa.Table]) -> None:
    table = figures[0].to_pydict()
    assert table["rest_rise_c_per_h"][4] == pytest.approx(RISE_C_PER_H, abs=0.02)
    for sensor in (1, 2, 3):
        assert abs(table["rest_rise_c_per_h"][sensor]) < 0.02
    # the pack's own rise: the steepest over a rest of the daily sine (0.39 degC/h max)
    assert 0.1 < table["pack_rest_rise_c_per_h"][2] < 0.4


def test_a_compacted_file_of_several_vehicles_gives_each_its_own_figures(
    tmp_path: Path, figures: tuple[pa.Table, pa.Table]
) -> None:
    """A compacted partition is read in one pass in file order: a vehicle's first
    reading must not step from the previous vehicle's last, nor its first rest run join
    that vehicle's last one (both vehicles here end and start at rest)."""
    other = "FBMSENSOR00000002"
    raw, compacted = tmp_path / "raw" / "lake", tmp_path / "compacted" / "lake"
    seq = np.arange(N)
    for k in range(0, N, 60):
        for vin, offset_c in ((VIN, 0.0), (other, 20.0)):
            bms.write_telemetry(
                _table(seq[k : k + 60], vin=vin, offset_c=offset_c), raw, file_prefix=f"w{k}"
            )
    both = pa.concat_tables([_table(seq), _table(seq, vin=other, offset_c=20.0)])
    (written,) = bms.write_telemetry(both, compacted, file_prefix="compacted")
    assert written.path.name.startswith(bms.COMPACTED_PREFIX)
    from_raw, from_compacted = _sensor_day(raw), _sensor_day(compacted)
    assert from_raw.equals(from_compacted)
    rows = from_compacted.to_pydict()
    assert rows["vin"] == [VIN] * 5 + [other] * 5
    one = figures[1].to_pydict()
    for column in ("max_c", "held_max_c"):  # the other vehicle reads 20 degC warmer
        assert rows[column][5:] == pytest.approx([t + 20.0 for t in one[column]], rel=1e-12), column
    for column in ("n_readings", "jitter_c", "dev_mean_c", "range_c", "rest_rise_c_per_h"):
        assert rows[column][5:] == pytest.approx(one[column], rel=1e-9, abs=1e-12), column
