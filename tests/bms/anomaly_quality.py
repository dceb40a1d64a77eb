"""Issue 7's detection figures on a simulated fleet against the simulator's truth:
shared by the acceptance test (``test_anomaly_quality.py``) and the benchmark
(``benchmarks/anomaly.py --quality``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from statistics import median

import pyarrow.parquet as pq

import bms
import sim

#: Fault kinds that sit in one cell: the flag must name the cell.
CELL_FAULT_KINDS = ("soft_short", "fast_fade", "resistance_growth")


def quality_spec(
    *,
    vehicles: int = 200,
    days: int = 365,
    seed: int = 0,
    cadence_s: int = 300,
    idle_cadence_s: int = 3600,
) -> sim.FleetSpec:
    """The scored fleet: both chemistries, hot and mild climate, cars and two-wheelers of
    every usage profile, 14-cell packs, ~5 % of vehicles with a fault (seed 0 of 200
    vehicles draws every fault kind of the simulator)."""
    return sim.FleetSpec(
        vehicles=vehicles,
        days=days,
        start=date(2026, 1, 1),
        fleet="acc",
        seed=seed,
        cells=14,
        cadence_s=cadence_s,
        idle_cadence_s=idle_cadence_s,
        fault_rate=0.05,
        vehicle_class="mixed",
    )


@dataclass(frozen=True)
class Missed:
    """A faulty vehicle without a flag on or after its fault's onset."""

    vin: str
    fault: str
    mode: str
    cell: int
    onset: date


@dataclass(frozen=True)
class DetectionFigures:
    """Vehicle-level detection against the truth (issue 7's acceptance figures)."""

    faulty: int  # vehicles with an injected fault
    detected: int  # ... flagged on or after the day before onset
    false_vehicles: int  # vehicles flagged without a fault (or only before its onset)
    cell_faults: int  # detected cell-level faults
    right_cell: int  # ... whose first flag names the faulty cell
    leads_days: tuple[int, ...]  # first flag to the truth's limit_date, where it has one
    healthy_flags: int  # flag rows (not cleared) on vehicles without a fault
    healthy_vehicle_days: int
    fault_kinds: tuple[str, ...]  # kinds injected
    missed: tuple[Missed, ...]

    @property
    def recall(self) -> float:
        return self.detected / max(self.faulty, 1)

    @property
    def precision(self) -> float:
        return self.detected / max(self.detected + self.false_vehicles, 1)

    @property
    def right_cell_share(self) -> float:
        return self.right_cell / max(self.cell_faults, 1)

    @property
    def median_lead_days(self) -> float:
        return float(median(self.leads_days)) if self.leads_days else float("nan")

    @property
    def healthy_per_1000(self) -> float:
        """Flags per 1,000 vehicle-days of vehicles without a fault."""
        return 1000.0 * self.healthy_flags / max(self.healthy_vehicle_days, 1)

    def report(self) -> str:
        def verdict(ok: bool) -> str:
            return "ok" if ok else "MISSED"

        lines = [
            f"recall    {self.recall:.2f} ({self.detected}/{self.faulty}) (goal >= 0.9): "
            f"{verdict(self.recall >= 0.9)}",
            f"precision {self.precision:.2f} ({self.false_vehicles} vehicles flagged without "
            f"a fault) (goal >= 0.8): {verdict(self.precision >= 0.8)}",
            f"right cell {self.right_cell}/{self.cell_faults} (goal >= 90 %): "
            f"{verdict(self.right_cell_share >= 0.9)}",
            f"median lead {self.median_lead_days} days over {len(self.leads_days)} faults "
            f"(goal >= 14): {verdict(self.median_lead_days >= 14)}",
            f"healthy: {self.healthy_per_1000:.2f} flags per 1,000 vehicle-days (goal < 1): "
            f"{verdict(self.healthy_per_1000 < 1)}",
        ]
        lines += [
            f"  missed {m.vin} {m.fault} {m.mode} cell {m.cell} onset {m.onset}"
            for m in self.missed
        ]
        return "\n".join(lines)


def detection_figures(data_dir: Path, vehicles: int, days: int) -> DetectionFigures:
    """Score the anomalies under ``data_dir/lake`` against ``data_dir/truth``.

    A flag counts as a detection only from the day before the fault's onset on (the
    onset is a whole simulated local day; flags are per UTC date); flags on a faulty
    vehicle before that count as false alarms, as do flags on healthy vehicles.
    """
    truth = {r["vin"]: r for r in pq.read_table(data_dir / "truth" / "faults.parquet").to_pylist()}
    rows = [
        r for r in bms.read_anomalies(data_dir / "lake").to_pylist() if r["status"] != "cleared"
    ]
    first: dict[str, tuple[date, int]] = {}
    false_vins: set[str] = set()
    healthy_flags = 0
    for r in sorted(rows, key=lambda r: (r["date"], r["vin"], r["cell"])):
        t = truth.get(r["vin"])
        if t is None:
            healthy_flags += 1
            false_vins.add(r["vin"])
        elif r["date"] >= t["onset_date"] - timedelta(days=1):
            first.setdefault(r["vin"], (r["date"], r["cell"]))
    false_vins |= {r["vin"] for r in rows if r["vin"] in truth and r["vin"] not in first}
    cell_faults = [v for v in first if truth[v]["fault"] in CELL_FAULT_KINDS]
    leads = sorted(
        (truth[v]["limit_date"] - first[v][0]).days for v in first if truth[v]["limit_date"]
    )
    missed = tuple(
        Missed(v, truth[v]["fault"], truth[v]["mode"], truth[v]["cell"], truth[v]["onset_date"])
        for v in sorted(set(truth) - set(first))
    )
    return DetectionFigures(
        faulty=len(truth),
        detected=len(first),
        false_vehicles=len(false_vins),
        cell_faults=len(cell_faults),
        right_cell=sum(1 for v in cell_faults if first[v][1] == truth[v]["cell"]),
        leads_days=tuple(leads),
        healthy_flags=healthy_flags,
        healthy_vehicle_days=(vehicles - len(truth)) * days,
        fault_kinds=tuple(sorted({str(t["fault"]) for t in truth.values()})),
        missed=missed,
    )
