"""Issue 7's acceptance figures on a simulated fleet, against the simulator's injected
faults: at least 200 vehicles over a year, about 5 % of them with a fault and every
fault kind of the simulator present, 14-cell packs and a coarse cadence (as the issue
allows for tests; ``benchmarks/anomaly.py --quality`` repeats it at a finer cadence).

The whole pipeline runs: simulation into the lake, analytics, anomaly catch-up; the
figures come from ``lake/anomalies`` and ``truth/faults.parquet`` only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import bms
import sim
from tests.bms.anomaly_quality import DetectionFigures, detection_figures, quality_spec

#: The issue's minimum fleet, driving readings every 10 min and parked ones every hour.
SPEC = quality_spec(vehicles=200, days=365, seed=0, cadence_s=600, idle_cadence_s=3600)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DetectionFigures]:
    data = tmp_path_factory.mktemp("anomaly-quality") / "data"
    sim.simulate_to_lake(SPEC, data, workers=2)
    bms.run_pending(data / "lake", state_root=data / "state" / "analytics")
    bms.score_pending_anomalies(data / "lake", data / "state")
    figures = detection_figures(data, SPEC.vehicles, SPEC.days)
    print(figures.report())  # shown with -rP, and on failure
    return data, figures


def test_fleet_simulated_in_two_processes_is_the_serial_one(tmp_path: Path) -> None:
    """The acceptance fleet is simulated with ``workers=2``: same files as one process."""
    spec = quality_spec(vehicles=9, days=3, seed=0, cadence_s=600, idle_cadence_s=3600)
    contents = []
    for workers in (1, 2):
        data = tmp_path / f"w{workers}"
        summary = sim.simulate_to_lake(spec, data, workers=workers)
        # telemetry files are named with a random suffix: one per date, keyed by date
        files = {
            str(p.parent if "telemetry" in p.parts else p).removeprefix(str(data)): p.read_bytes()
            for p in data.rglob("*.parquet")
        }
        assert len(files) == spec.days + 4  # dates (UTC spans one more), registry, truth
        files["summary"] = repr(dataclasses.replace(summary, seconds=0.0)).encode()
        contents.append(files)
    assert contents[0] == contents[1]


def test_fleet_is_the_one_the_issue_asks_for(fleet: tuple[Path, DetectionFigures]) -> None:
    data, fig = fleet
    assert SPEC.vehicles >= 200
    assert SPEC.days >= 365
    assert set(fig.fault_kinds) == set(sim.FAULT_KINDS)
    assert 0.04 <= fig.faulty / SPEC.vehicles <= 0.07
    scored = sorted((data / "lake" / "anomalies").glob("date=*/fleet=acc/part.parquet"))
    vehicle_days = sorted((data / "lake" / "metrics" / "vehicle_day").glob("date=*/fleet=acc"))
    assert len(scored) == len(vehicle_days) >= SPEC.days
    faults = pq.read_table(data / "truth" / "faults.parquet")
    assert faults.num_rows == fig.faulty


def test_recall_at_vehicle_level(fleet: tuple[Path, DetectionFigures]) -> None:
    _, fig = fleet
    assert fig.recall >= 0.9, fig.report()


def test_precision_at_vehicle_level(fleet: tuple[Path, DetectionFigures]) -> None:
    _, fig = fleet
    assert fig.precision >= 0.8, fig.report()


def test_flags_of_cell_faults_name_the_faulty_cell(fleet: tuple[Path, DetectionFigures]) -> None:
    _, fig = fleet
    assert fig.cell_faults >= 3
    assert fig.right_cell_share >= 0.9, fig.report()


def test_median_lead_time_before_a_hard_limit(fleet: tuple[Path, DetectionFigures]) -> None:
    _, fig = fleet
    assert len(fig.leads_days) >= 3
    assert fig.median_lead_days >= 14, fig.report()


def test_healthy_vehicles_are_rarely_flagged(fleet: tuple[Path, DetectionFigures]) -> None:
    _, fig = fleet
    assert fig.healthy_per_1000 < 1.0, fig.report()
