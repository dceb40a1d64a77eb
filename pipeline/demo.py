"""``make demo``: a small fleet end to end, from an empty data directory, in a few minutes.

1. an MQTT broker: the configured one if it answers, else a private Mosquitto (from PATH)
   on a free port with its files in ``DATA/broker``;
2. history: ``fleetbms simulate --to-lake`` (a fleet with a registry and ground truth);
3. live traffic: ``fleetbms ingest`` subscribed while the fleet publishes a few minutes of
   readings through the broker (``fleetbms simulate --live``);
4. ``fleetbms nightly`` for yesterday, then ``fleetbms status``;
5. where the outputs are: PDFs, CSVs, audit bundle, metrics, the run record.

Every step runs the real command as a subprocess, as a user would. Until the simulator
is part of the build, steps 2 and 3 fall back to ``placeholder`` data (flat readings, no
battery physics) written through the same lake writer and the same MQTT ingest, and say
so.

Usage: python -m pipeline.demo --data-dir data [--vehicles 8] [--days 14]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

import bms
from pipeline._cli import cli
from pipeline._config import Settings, load_settings

FLEETBMS = str(Path(sys.executable).with_name("fleetbms"))


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _run(
    args: list[str],
    *,
    ok: tuple[int, ...] = (0,),
    capture: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``fleetbms ARGS``; ``capture=False`` lets it draw on the terminal."""
    shown = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    print(f"$ {shown + ' ' if shown else ''}fleetbms " + " ".join(args), flush=True)
    full_env = {**os.environ, **(env or {})}
    r = subprocess.run(
        [FLEETBMS, *args], text=True, capture_output=capture, check=False, env=full_env
    )
    if r.stdout and r.stdout.strip():
        print(r.stdout.rstrip())
    if r.returncode not in ok:
        print((r.stderr or "").rstrip(), file=sys.stderr)
        raise SystemExit(
            f"demo: `fleetbms {args[2] if len(args) > 2 else ''}` exited {r.returncode}"
        )
    return r


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(data_dir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """A private Mosquitto with persistence in ``DATA/broker`` on a free local port."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise SystemExit("demo: no MQTT broker answers and mosquitto is not installed")
    work = (data_dir / "broker").resolve()
    work.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {work}/\nlog_dest file {work}/mosquitto.log\n"
    )
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while not _reachable(address):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"demo: mosquitto did not start (see {work}/mosquitto.log)")
        time.sleep(0.05)
    return address, proc


def _placeholder_day(vins: list[str], day: date, seq0: int, cadence_s: int) -> pa.Table:
    """Flat, physics-free readings for one UTC day (only until the simulator lands)."""
    rng = np.random.default_rng(day.toordinal())
    steps = 86_400 // cadence_s
    n = steps * len(vins)
    k = np.tile(np.arange(steps), len(vins))
    start_ms = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    cells, temps = 14, 4
    return bms.telemetry_table(
        fleet="demo",
        vin=np.repeat(np.array(vins, dtype=object), steps),
        seq=seq0 + k,
        ts_ms=start_ms + k * cadence_s * 1000,
        current_a=rng.normal(-10, 15, n),
        voltage_v=np.full(n, 51.8),
        soc_pct=np.clip(60 + rng.normal(0, 10, n), 0, 100),
        soh_pct=np.full(n, 95.0),
        cycle_count=np.full(n, 200),
        odometer_km=np.full(n, 12_000.0),
        mode="drive",
        cell_mv=3700 + rng.integers(-5, 6, n * cells),
        cell_offsets=np.arange(n + 1) * cells,
        temp_c=np.round(28 + rng.normal(0, 1, n * temps), 1),
        temp_offsets=np.arange(n + 1) * temps,
        received_at_ms=start_ms + k * cadence_s * 1000 + 900,
        worker="demo-placeholder",
    )


def placeholder_history(settings: Settings, vehicles: int, days: int, last: date) -> list[str]:
    vins = [f"MAT612345NEX{i:05d}" for i in range(1, vehicles + 1)]
    cadence_s = 300
    for k in range(days):
        day = last - timedelta(days=days - 1 - k)
        table = _placeholder_day(vins, day, k * (86_400 // cadence_s), cadence_s)
        bms.write_telemetry(table, settings.lake_dir, file_prefix="demo-history")
    return vins


def placeholder_live(broker: str, vins: list[str], readings: int) -> None:
    """Publish ``readings`` current readings per vehicle, QoS 1, through ``broker``."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, _, port = broker.rpartition(":")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(host, int(port))
    client.loop_start()
    now = datetime.now(UTC).replace(microsecond=0)
    infos = []
    for i, vin in enumerate(vins):
        for k in range(readings):
            ts = now - timedelta(seconds=10 * (readings - k))
            payload = {
                "v": 1,
                "vin": vin,
                "seq": 10**9 + k,
                "ts": ts.isoformat().replace("+00:00", "Z"),
                "pack": {
                    "current_a": -12.0,
                    "voltage_v": 51.8,
                    "soc_pct": 55.0 + i,
                    "cycle_count": 200,
                    "odometer_km": 12_000.0,
                    "mode": "drive",
                },
                "cells": {"voltages_mv": [3700] * 14, "temps_c": [28.0] * 4},
            }
            infos.append(
                client.publish(bms.topic_for("demo", vin, "bms"), json.dumps(payload), qos=1)
            )
    for info in infos:
        info.wait_for_publish(timeout=30)
    client.loop_stop()
    client.disconnect()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="fleetbms end-to-end demo")
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--vehicles", type=int, default=8)
    ap.add_argument("--days", type=int, default=14)
    args = ap.parse_args(argv)
    data = args.data_dir
    data.mkdir(parents=True, exist_ok=True)
    settings = load_settings(data_dir=data)
    dd = ["--data-dir", str(data)]
    have_sim = "simulate" in cli.commands and "--to-lake" in _help("simulate")
    yesterday = datetime.now(UTC).date() - timedelta(days=1)

    _say("1. MQTT broker")
    broker_proc = None
    broker = settings.ingest.broker
    if _reachable(broker):
        print(f"using the broker at {broker}")
    else:
        broker, broker_proc = start_broker(data)
        print(f"started mosquitto at {broker} (files in {data / 'broker'})")
    try:
        _say("2. fleet history into the lake")
        if have_sim:
            _run(
                [
                    *dd,
                    "simulate",
                    "--to-lake",
                    "--vehicles",
                    str(args.vehicles),
                    "--days",
                    str(args.days),
                ]
            )
            vins: list[str] = []
        else:
            print(
                "the simulator is not in this build yet: writing PLACEHOLDER readings "
                "(flat values, no battery physics) with bms.write_telemetry"
            )
            vins = placeholder_history(settings, args.vehicles, args.days, yesterday)
            print(f"{args.vehicles} vehicles x {args.days} days up to {yesterday}")

        _say("3. live traffic through the broker into `fleetbms ingest`")
        ingest = subprocess.Popen(
            [FLEETBMS, *dd, "ingest", "--broker", broker, "--idle-exit", "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(2.0)  # let it connect and subscribe (its session then keeps messages)
        if have_sim:
            live = ["--broker", broker, "--vehicles", str(args.vehicles)]
            # 20 s of wall time at 30x: ten minutes of driving, parked and charging.
            _run([*dd, "simulate", "--live", *live, "--speed", "30", "--duration-s", "20"])
        else:
            placeholder_live(broker, vins, readings=30)
        out, _ = ingest.communicate(timeout=300)
        print(out.strip().splitlines()[-1] if out.strip() else "(ingest printed nothing)")
        if ingest.returncode != 0:
            raise SystemExit(f"demo: fleetbms ingest exited {ingest.returncode}:\n{out}")

        _say("4. the nightly batch (with the signed audit bundle switched on)")
        if not (settings.state_dir / "keys" / "signing.key").exists():
            _run([*dd, "keys", "generate"])
        r = _run(
            [*dd, "nightly", "--date", yesterday.isoformat()],
            ok=(0, 3),
            capture=False,
            env={"FLEETBMS_REPORTS__AUDIT_ENABLED": "true"},
        )
        print(
            f"exit code {r.returncode}"
            + (" (completed, data has gaps)" if r.returncode == 3 else "")
        )
        _run([*dd, "status"])
    finally:
        if broker_proc is not None:
            broker_proc.terminate()
            broker_proc.wait(timeout=30)

    _say("5. outputs")
    found = False
    day_dir = data / "reports" / f"date={yesterday.isoformat()}"
    for pattern, what in (
        (f"{day_dir.name}/*.pdf", "fleet PDF report"),
        (f"{day_dir.name}/*.csv", "fleet CSV report"),
        (f"{day_dir.name}/vehicles/*.pdf", "vehicle PDF reports (newly flagged vehicles)"),
        (f"{day_dir.name}/audit-*", "signed audit bundle (verify: fleetbms audit verify)"),
    ):
        paths = sorted((data / "reports").glob(pattern))
        found = found or bool(paths)
        print(f"{what}: " + (", ".join(str(p) for p in paths[:3]) if paths else "none"))
    for pattern, what in (
        ("lake/metrics/*", "metrics tables"),
        ("lake/anomalies", "anomaly flags"),
        ("state/runs/*.json", "run records"),
    ):
        paths = sorted(data.glob(pattern))
        print(f"{what}: " + (f"{len(paths)} in {paths[-1].parent}" if paths else "none"))
    if not found:
        raise SystemExit("demo: the nightly batch wrote nothing")


def _help(command: str) -> str:
    r = subprocess.run([FLEETBMS, command, "--help"], text=True, capture_output=True, check=False)
    return r.stdout


if __name__ == "__main__":
    main()
