"""``make demo``: a small fleet end to end, from an empty data directory, in a few minutes.

1. an MQTT broker: a private Mosquitto (from PATH) on a free port with its files in
   ``DATA/broker``, so that two demos, or a demo beside a production ingest, never share
   topics or MQTT sessions; the configured broker only where mosquitto is not installed;
2. history: ``fleetbms simulate --to-lake`` (a fleet with a registry and ground truth);
3. live traffic: ``fleetbms ingest`` subscribed while the fleet publishes a few minutes of
   readings through the broker (``fleetbms simulate --live``);
4. ``fleetbms nightly`` for yesterday, then ``fleetbms status``;
5. where the outputs are: PDFs, CSVs, audit bundle, metrics, the run record.

Every step runs the real command as a subprocess, as a user would. The fleet is pre-aged
(vehicles up to six years in service) and some develop faults, so the reports show a
spread of battery health, warranty verdicts and anomalies rather than a row of new packs.

Usage: python -m pipeline.demo --data-dir data [--vehicles 12] [--days 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from pipeline._config import load_settings

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


def _mosquitto() -> str | None:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return exe if Path(exe).exists() else None


def start_broker(data_dir: Path, exe: str) -> tuple[str, subprocess.Popen[bytes]]:
    """A private Mosquitto (``exe``) with persistence in ``DATA/broker`` on a free local
    port."""
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="fleetbms end-to-end demo")
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--vehicles", type=int, default=12)
    ap.add_argument("--days", type=int, default=60)
    args = ap.parse_args(argv)
    data = args.data_dir
    data.mkdir(parents=True, exist_ok=True)
    settings = load_settings(data_dir=data)
    dd = ["--data-dir", str(data)]
    yesterday = datetime.now(UTC).date() - timedelta(days=1)

    _say("1. MQTT broker")
    broker_proc = None
    broker = settings.ingest.broker
    # The demo's fleet, topics and ingest client id are fixed: on a shared broker a
    # second demo (or a production ingest of a fleet named alike) would take the other's
    # messages and MQTT session, so it brings its own broker where it can.
    exe = _mosquitto()
    if exe is not None:
        broker, broker_proc = start_broker(data, exe)
        print(f"started a private mosquitto at {broker} (files in {data / 'broker'})")
    elif _reachable(broker):
        print(f"mosquitto is not installed: using the configured broker at {broker}")
    else:
        raise SystemExit(f"demo: mosquitto is not installed and no broker answers at {broker}")
    try:
        _say("2. fleet history into the lake")
        fleet = [*dd, "simulate", "--vehicles", str(args.vehicles), "--seed", "7"]
        fleet += ["--max-age-days", "2200", "--fault-rate", "0.25"]
        # --overwrite: a demo run again on the same data directory replaces the fleet's
        # history (telemetry, registry, truth) instead of being refused.
        _run([*fleet, "--to-lake", "--days", str(args.days), "--cadence-s", "60", "--overwrite"])

        _say("3. live traffic through the broker into `fleetbms ingest`")
        ingest = subprocess.Popen(
            [FLEETBMS, *dd, "ingest", "--broker", broker, "--idle-exit", "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(2.0)  # let it connect and subscribe (its session then keeps messages)
        # 20 s of wall time at 30x: ten minutes of driving, parked and charging.
        _run([*fleet, "--live", "--broker", broker, "--speed", "30", "--duration-s", "20"])
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

    day_dir = data / "reports" / f"date={yesterday.isoformat()}"
    if not list(day_dir.glob("vehicles/*.pdf")):
        # Nobody newly flagged tonight: show the workshop report of the most urgent vehicle
        # (the fleet CSV lists vehicles most urgent first).
        rows = next(iter(sorted(day_dir.glob("fleet-*.csv"))), None)
        lines = rows.read_text().splitlines() if rows else []
        if len(lines) > 1:
            vin = lines[1].split(",", 1)[0]
            _say(f"4b. the vehicle report of the most urgent vehicle, {vin}")
            _run([*dd, "report", "vehicle", vin, "--date", yesterday.isoformat()])

    _say("5. outputs")
    found = False
    for pattern, what in (
        (f"{day_dir.name}/*.pdf", "fleet PDF report"),
        (f"{day_dir.name}/*.csv", "fleet CSV report"),
        (f"{day_dir.name}/vehicles/*.pdf", "vehicle PDF reports"),
        (f"{day_dir.name}/audit-*", "signed audit bundle"),
    ):
        paths = sorted((data / "reports").glob(pattern))
        found = found or bool(paths)
        print(f"{what}: " + (", ".join(str(p) for p in paths[:3]) if paths else "none"))
    bundles = sorted(day_dir.glob("audit-*"))
    key = settings.state_dir / "keys" / "signing.pub"
    if bundles and key.is_file():
        # the whole command: verify needs the public key, which the bundle does not hold
        print(f"verify it: fleetbms {' '.join(dd)} audit verify {bundles[0]} --public-key {key}")
    for pattern, what in (
        ("lake/metrics/*", "metrics tables"),
        ("state/runs/*.json", "run records"),
    ):
        paths = sorted(data.glob(pattern))
        print(f"{what}: " + (f"{len(paths)} in {paths[-1].parent}" if paths else "none"))
    flags = sorted((data / "lake" / "anomalies").glob("date=*/fleet=*/*.parquet"))
    if flags:
        # the newest date's flags (each date's file holds the flags open or cleared then)
        newest = flags[-1]
        n = pq.read_metadata(newest).num_rows
        print(f"anomaly flags: {n} on the newest date, {newest}")
    else:
        print("anomaly flags: none")
    if not found:
        raise SystemExit("demo: the nightly batch wrote nothing")


if __name__ == "__main__":
    main()
