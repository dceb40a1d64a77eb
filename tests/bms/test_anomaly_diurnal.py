"""The cooling feature: a parked pack's lag behind its peers' daily temperature cycle.

A lumped pack of time constant tau = C / h follows a sinusoidal ambient as a first-order
low-pass: its steady response peaks atan(w tau) / w later, with amplitude divided by
sqrt(1 + (w tau)^2) (w = 2 pi / 24 h)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from bms._features import DIURNAL_SUMS, diurnal_lag, diurnal_peak_hour

W_PER_H = 2 * math.pi / 24.0


def _sums(hours: np.ndarray, temp_c: np.ndarray) -> dict[str, float]:
    """``DIURNAL_SUMS`` as the SQL job makes them (cos, sin in 1/10,000; T in 0.05 degC)."""
    c = np.round(1e4 * np.cos(W_PER_H * hours))
    s = np.round(1e4 * np.sin(W_PER_H * hours))
    t = np.round(20 * temp_c)
    return dict(
        zip(
            DIURNAL_SUMS,
            (
                len(t),
                c.sum(),
                s.sum(),
                (c * c).sum(),
                (s * s).sum(),
                (c * s).sum(),
                t.sum(),
                (t * c).sum(),
                (t * s).sum(),
            ),
            strict=True,
        )
    )


def _pack(hours: np.ndarray, tau_h: float, peak_h: float = 15.0) -> np.ndarray:
    """Steady response of a pack of time constant ``tau_h`` to 25 +- 6 degC ambient."""
    wt = W_PER_H * tau_h
    return 25.0 + 6.0 / math.hypot(1.0, wt) * np.cos(W_PER_H * (hours - peak_h) - math.atan(wt))


@pytest.mark.parametrize("tau_h", [1.7, 4.3])
def test_peak_and_amplitude_of_a_first_order_pack(tau_h: float) -> None:
    hours = np.arange(0.0, 24.0, 1.0)
    peak, amp = diurnal_peak_hour(
        {k: np.array([v]) for k, v in _sums(hours, _pack(hours, tau_h)).items()}
    )
    assert peak[0] == pytest.approx(15.0 + math.atan(W_PER_H * tau_h) / W_PER_H, abs=0.05)
    assert amp[0] == pytest.approx(6.0 / math.hypot(1.0, W_PER_H * tau_h), abs=0.05)


def test_no_phase_from_too_few_readings_or_too_little_of_the_day() -> None:
    night = np.arange(20.0, 24.0, 0.25)  # 16 readings over 4 hours
    short = np.arange(0.0, 24.0, 2.0)  # 12 readings over the day
    peak, _ = diurnal_peak_hour(
        {
            k: np.array([a, b])
            for k, a, b in zip(
                DIURNAL_SUMS,
                _sums(night, _pack(night, 1.7)).values(),
                _sums(short, _pack(short, 1.7)).values(),
                strict=True,
            )
        }
    )
    assert np.isnan(peak).all()


def test_lag_behind_peers_names_the_slow_pack_and_not_scattered_cars() -> None:
    """Eight two-wheelers (tau 1.7 h, one at 4.3 h: its conductance fell by 60 %) and
    eight cars whose parked temperature peaks anywhere within +-3 h."""
    hours = np.arange(0.0, 24.0, 1.0)
    rng = np.random.default_rng(3)
    classes = {f"TW{i}": "two_wheeler" for i in range(8)} | {f"CAR{i}": "car" for i in range(8)}
    days = []
    for _day in range(10):
        rows = []
        for v in classes:
            if v.startswith("TW"):
                temp = _pack(hours, 4.3 if v == "TW0" else 1.7) + rng.normal(0, 0.05, 24)
            else:
                temp = _pack(hours, 5.6, peak_h=15.0 + rng.uniform(-3, 3))
            rows.append({"vin": v, **_sums(hours, temp)})
        days.append(pa.Table.from_pylist(rows))
    lag_h, lag_z = diurnal_lag(days, classes, min_days=7)
    expected = (math.atan(W_PER_H * 4.3) - math.atan(W_PER_H * 1.7)) / W_PER_H  # 1.6 h
    assert lag_h["TW0"] == pytest.approx(expected, abs=0.25)
    assert lag_z["TW0"] > 10.0
    assert max(abs(lag_h[f"TW{i}"]) for i in range(1, 8)) < 0.3
    assert max(lag_z[f"CAR{i}"] for i in range(8)) < 10.0
    assert diurnal_lag(days[:6], classes, min_days=7) == ({}, {})  # too few days
