"""A cell's leak told apart from its capacity (bms._leak)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bms._leak import LEAK_MIN_Z, leak_correction, leak_estimate, update_leak_sums

N_CELLS = 14


def _pairs(
    rng: np.random.Generator,
    n: int,
    *,
    ratio: np.ndarray,
    leak_pct_per_h: np.ndarray,
    charges_only: bool = False,
    sigma_pct: float = 0.3,
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Pairs of rest points as a daily driver makes them, in turn: a charge of 1-4 h, a
    drive of 2-6 h and a drive with a night parked (SoC steps of the mean cell of 10-48
    %); or charges only."""
    out = []
    for j in range(n):
        kind = 0 if charges_only else j % 3
        if kind == 0:  # a charge: the step grows with its duration
            hours = float(rng.uniform(1.0, 4.0))
            step = 12.0 * hours
        elif kind == 1:  # a drive
            hours = float(rng.uniform(2.0, 6.0))
            step = -float(rng.uniform(10.0, 40.0))
        else:  # a drive and a night parked
            hours = float(rng.uniform(14.0, 40.0))
            step = -float(rng.uniform(10.0, 40.0))
        dsoc = step / ratio - leak_pct_per_h * hours
        dsoc = dsoc + sigma_pct * rng.standard_normal(len(ratio))
        out.append((dsoc, np.full(len(ratio), sigma_pct), hours))
    return out


def _fit(pairs: list[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray | None:
    sums = None
    for dsoc, sigma, hours in pairs:
        sums = update_leak_sums(sums, dsoc, sigma, hours)
    return sums


def test_a_soft_short_is_read_as_a_leak_and_given_back() -> None:
    """Two months of a daily driver's pairs (60), 300 draws of the noise, the leaking cell
    and its leak (0.6-1.5 %/day, the simulator's soft shorts): the leak is found within 4
    of its sigmas and at least half of it given back; the other cells, which leak less
    than the mean cell, get nothing. (Over 40 pairs in random order a small leak was not
    always clear at 3 sigma: then nothing is given back, by design.)"""
    for seed in range(300):
        rng = np.random.default_rng(seed)
        cell = seed % N_CELLS
        leak = np.zeros(N_CELLS)
        leak[cell] = (0.6 + 0.9 * ((seed * 7919) % 1000) / 1000) / 24.0
        sums = _fit(_pairs(rng, 60, ratio=np.ones(N_CELLS), leak_pct_per_h=leak))
        assert sums is not None
        est, sigma, _ = leak_estimate(sums)
        # the leak beyond the mean cell's: 13/14 of it for the leaking cell
        assert abs(est[cell] - leak[cell] * 13 / 14) < 4 * sigma[cell], seed
        lost = leak_correction(sums, 30.0)
        assert lost is not None
        assert lost[0][cell] > 0.5 * leak[cell] * 30.0, seed
        assert np.all(np.delete(lost[0], cell) == 0.0), seed


def _faded(
    rng: np.random.Generator, cell: int, fade: float, *, charges_only: bool
) -> np.ndarray | None:
    """The leak sums of 40 pairs of a pack whose ``cell`` has lost ``fade`` of the
    others' capacity and leaks no more than they do."""
    ratio = np.ones(N_CELLS)
    ratio[cell] = 1.0 - fade
    pairs = _pairs(
        rng, 40, ratio=ratio, leak_pct_per_h=np.zeros(N_CELLS), charges_only=charges_only
    )
    return _fit(pairs)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    cell=st.integers(0, N_CELLS - 1),
    fade=st.floats(0.05, 0.3),
    charges_only=st.booleans(),
)
def test_a_faded_cell_is_never_given_back_capacity_as_a_leak(
    seed: int, cell: int, fade: float, charges_only: bool
) -> None:
    """A weak cell's larger SoC steps scale with the charge, not the time: with drives
    and nights the fit sees that (its leak estimate never six of its sigmas up; the
    next test holds how rarely it passes the three at which a leak is given back: a
    per-draw "never" is a statistical claim that about 1 in 23,000 random packs misses,
    at 3.0-3.5 sigma), and with charges only (the step grows with the time) it cannot
    tell, and says nothing."""
    sums = _faded(np.random.default_rng(seed), cell, fade, charges_only=charges_only)
    lost = leak_correction(sums, 40.0)
    assert sums is not None
    assert lost is not None
    est, sigma, _ = leak_estimate(sums)
    assert est[cell] < 2.0 * LEAK_MIN_Z * sigma[cell], (est[cell], sigma[cell])
    assert np.all(lost[0] >= 0.0)
    assert np.all(lost[1] >= 0.0)
    if charges_only:
        assert lost[0][cell] == 0.0


def test_a_faded_cell_is_given_back_a_leak_no_more_often_than_chance() -> None:
    """2,000 random faded cells with drives and nights (a fixed seed): the fade does not
    leak into the leak estimate (its mean within 0.1 of its sigma of zero; measured
    0.006 over 20,000), the sigma is not understated (the estimates' spread at most
    one sigma; measured 0.78: the forgetting makes it conservative), and a leak is given
    back to at most 0.135 % of them, a normal estimate's chance of passing 3 sigma
    (measured: 14 of 321,278 random draws of the property above, all among the ~160,000
    with drives, 0.009 %; 1 of 20,000 at another seed)."""
    rng = np.random.default_rng(20261207)
    n = 2000
    z = np.empty(n)
    given = 0
    for k in range(n):
        cell = int(rng.integers(0, N_CELLS))
        sums = _faded(rng, cell, float(rng.uniform(0.05, 0.3)), charges_only=False)
        assert sums is not None
        est, sigma, _ = leak_estimate(sums)
        z[k] = est[cell] / sigma[cell]
        lost = leak_correction(sums, 40.0)
        assert lost is not None
        given += int(lost[0][cell] > 0.0)
    assert abs(float(np.mean(z))) < 0.1, np.mean(z)
    assert float(np.std(z)) <= 1.0, np.std(z)
    assert given <= 0.00135 * n, given


def test_no_sums_no_correction_and_a_new_cell_count_starts_afresh() -> None:
    assert leak_correction(None, 10.0) is None
    sums = update_leak_sums(None, np.ones(4), np.full(4, 0.3), 2.0)
    again = update_leak_sums(sums, np.ones(6), np.full(6, 0.3), 2.0)
    assert again.shape == (6, 5)
