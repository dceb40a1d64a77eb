"""Anomaly detection against the simulator's injected faults (issue 7 acceptance).

One fleet of 200 vehicles over a year, about 5 % of them with one injected fault (every
kind of the simulator present), small packs (14 cells) and a coarse cadence (5 min
driving, 1 h parked) so the simulation, the analytics and the scoring of 365 dates run
once per session. Faulty vehicles are scored against ``truth/faults.parquet``; the
fleet's healthy vehicles give the false-alarm rate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from statistics import median

import pyarrow.parquet as pq
import pytest

import bms
import sim

SPEC = sim.FleetSpec(
    vehicles=200,
    days=365,
    start=date(2026, 1, 1),
    fleet="acc",
    seed=0,
    cells=14,
    cadence_s=300,
    idle_cadence_s=3600,
    fault_rate=0.05,
    vehicle_class="mixed",
)
CELL_FAULTS = ("soft_short", "fast_fade", "resistance_growth")


@dataclass(frozen=True)
class Outcome:
    faulty: dict[str, dict[str, object]]  # vin -> truth row
    first_flag: dict[str, tuple[date, int]]  # vin -> (first flag date on/after onset, cell)
    flagged_vins: set[str]
    false_vins: set[str]  # flagged vehicles without a fault (or only before its onset)
    healthy_flag_days: int
    healthy_vehicle_days: int
    rows: list[dict[str, object]]  # every row with status new or ongoing


@pytest.fixture(scope="session")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    kinds = Counter(f.kind for v in sim.FleetSimulator(SPEC).vehicles for f in v.faults)
    assert set(kinds) == set(sim.FAULT_KINDS), kinds  # the seed injects every kind
    data = tmp_path_factory.mktemp("fleet") / "data"
    sim.simulate_to_lake(SPEC, data)
    lake, state = data / "lake", data / "state"
    bms.run_pending(lake, state_root=state / "analytics")
    bms.score_pending_anomalies(lake, state)

    truth = {r["vin"]: r for r in pq.read_table(data / "truth" / "faults.parquet").to_pylist()}
    rows = bms.read_anomalies(lake).to_pylist()
    active = [r for r in rows if r["status"] != "cleared"]
    first: dict[str, tuple[date, int]] = {}
    flagged: set[str] = set()
    false_vins: set[str] = set()
    healthy_flag_days = 0
    for r in sorted(active, key=lambda r: (r["date"], r["vin"], r["cell"])):
        vin = r["vin"]
        flagged.add(vin)
        t = truth.get(vin)
        if t is None:
            healthy_flag_days += 1
            false_vins.add(vin)
        elif r["date"] >= t["onset_date"] - timedelta(days=1):
            first.setdefault(vin, (r["date"], r["cell"]))
    false_vins |= {v for v in flagged if v in truth and v not in first}
    healthy = SPEC.vehicles - len(truth)
    return Outcome(
        truth, first, flagged, false_vins, healthy_flag_days, healthy * SPEC.days, active
    )


def test_recall_and_precision_at_vehicle_level(outcome: Outcome) -> None:
    detected = set(outcome.first_flag)
    recall = len(detected) / len(outcome.faulty)
    precision = len(detected) / max(len(detected) + len(outcome.false_vins), 1)
    missed = {v: outcome.faulty[v]["fault"] for v in set(outcome.faulty) - detected}
    assert recall >= 0.9, f"recall {recall:.2f}; missed {missed}"
    assert precision >= 0.8, f"precision {precision:.2f}; false alarms on {outcome.false_vins}"


def test_cell_faults_name_the_right_cell(outcome: Outcome) -> None:
    detected = [v for v in outcome.first_flag if outcome.faulty[v]["fault"] in CELL_FAULTS]
    right = [v for v in detected if outcome.first_flag[v][1] == outcome.faulty[v]["cell"]]
    assert detected
    assert len(right) / len(detected) >= 0.9, {
        v: (outcome.faulty[v]["cell"], outcome.first_flag[v][1]) for v in detected
    }


def test_median_lead_time_before_the_hard_limit_is_two_weeks(outcome: Outcome) -> None:
    leads = {
        v: (t["limit_date"] - outcome.first_flag[v][0]).days
        for v, t in outcome.faulty.items()
        if t["limit_date"] is not None and v in outcome.first_flag
    }
    assert leads
    assert median(leads.values()) >= 14, leads


def test_healthy_vehicles_rarely_flagged(outcome: Outcome) -> None:
    rate = 1000 * outcome.healthy_flag_days / outcome.healthy_vehicle_days
    assert rate < 1.0, f"{rate:.2f} flags per 1,000 healthy vehicle-days"


def test_every_flag_explains_itself(outcome: Outcome) -> None:
    assert outcome.rows
    for r in outcome.rows:
        assert r["evidence"]
        assert r["source"] in ("model", "rule", "both")
        assert (r["source"] == "model") == (r["rules"] == [])
        if r["source"] != "rule":
            assert len(r["top_features"]) == 3
            assert all(f["normal_low"] <= f["normal_high"] for f in r["top_features"])
