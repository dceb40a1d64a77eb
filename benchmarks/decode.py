"""Decode + validate throughput of 96-cell readings against plain ``json.loads``.

Both run on the same payloads in the same process, so the ratio is stable on a noisy
machine. Goal (issue 4): the project's decoder, which also validates every field, is at
least 2x faster than ``json.loads`` alone.

Usage: python benchmarks/decode.py [--messages N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from datetime import UTC, datetime, timedelta

import bms


def make_payloads(n: int, cells: int = 96, sensors: int = 16) -> list[bytes]:
    rng = random.Random(1)
    start = datetime(2026, 11, 24, tzinfo=UTC)
    out = []
    for i in range(n):
        reading = {
            "v": 1,
            "vin": "MAT612345NEX00001",
            "seq": i,
            "ts": (start + timedelta(seconds=i)).isoformat(timespec="milliseconds"),
            "pack": {
                "current_a": round(rng.uniform(-150, 50), 1),
                "voltage_v": 355.2,
                "soc_pct": 63.4,
                "soh_pct": 94.1,
                "cycle_count": 812,
                "odometer_km": 48210.4,
                "mode": "drive",
            },
            "cells": {
                "voltages_mv": [rng.randint(3690, 3710) for _ in range(cells)],
                "temps_c": [round(rng.uniform(30, 32), 1) for _ in range(sensors)],
            },
        }
        out.append(json.dumps(reading).encode())
    return out


def best_rate(fn, payloads: list[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(payloads)
        best = min(best, time.perf_counter() - t0)
    return len(payloads) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    payloads = make_payloads(args.messages)
    topic = "fleet/demo/MAT612345NEX00001/bms"
    now = datetime(2026, 11, 25, tzinfo=UTC)

    def baseline(ps: list[bytes]) -> None:
        for p in ps:
            json.loads(p)

    def ours(ps: list[bytes]) -> None:
        for p in ps:
            d = bms.decode_message(topic, p, now=now)
            assert d.readings

    base = best_rate(baseline, payloads, args.repeat)
    rate = best_rate(ours, payloads, args.repeat)
    print(f"json.loads only:              {base:12,.0f} msgs/s")
    print(f"fleetbms decode + validate:   {rate:12,.0f} msgs/s")
    print(f"ratio (ours / json.loads):    {rate / base:12.2f}  (goal >= 2.0)")


if __name__ == "__main__":
    main()
