"""Scoring the analytics against the simulator's ground truth.

Shared by ``tests/bms/test_analytics_accuracy.py`` (small packs, coarse cadence) and
``benchmarks/accuracy.py`` (full size): both simulate a fleet with ``sim``, run
``bms.run_pending`` on it and score the last computed date with ``score_fleet``.

Matching dates: ``truth/vehicle_day.parquet`` holds the state at the end of each
*local* date of the fleet (Asia/Kolkata, UTC+5:30), the metrics are per *UTC* date and
describe the state at the end of that UTC day. Local date D ends at D 18:30 UTC, so the
metrics of UTC date D are compared with the truth of local date D (5.5 h earlier; the
truth of local date D + 1 would be 18.5 h later). The last UTC partition of a run is
that of the last local date (it ends at 18:30 UTC, when the simulation stops).

Definitions (per vehicle, on the last date):

- SoH error: ``vehicle_soh.soh_pct`` minus the true ``soh_pct`` (weakest cell over
  rated); covered when the truth lies in ``[soh_low_pct, soh_high_pct]`` (90 %).
- Resistance: ``vehicle_soh.resistance_mohm_25c`` against the true pack resistance
  (ohmic, 25 degC, 50 % SoC, with interconnects); growth ``resistance_growth_pct``
  against ``100 (R_true(D) / R_true(first day) - 1)`` (the vehicles enter service on
  the first simulated day). The fleet figure is the mean absolute growth error
  relative to the mean true growth.
- Warranty: the status of ``metrics/warranty`` against ``bms.warranty_verdict`` of the
  same policy applied to the *true* SoH history (fitted with the same power law,
  0.05 % sigma, no model error), true odometer and true km per day; a vehicle whose
  true SoH is below a threshold still in cover is ``claim_eligible`` (the policy's
  definition), even where the power law, bent by a fast-fading cell's ramp, ends above
  it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

import bms
import sim

#: Warranty policy of the accuracy fleet: two thresholds (80 % at 5 y / 100,000 km and
#: 70 % at 8 y / 160,000 km), so a fast-fading pack crosses one within the run.
ACCURACY_POLICY = "un-gtr22"


def accuracy_spec(
    *,
    vehicles: int = 50,
    days: int = 730,
    cells: int | None = 14,
    cadence_s: int = 120,
    idle_cadence_s: int = 900,
    seed: int = 11,
    fleet: str = "acc",
) -> sim.FleetSpec:
    """The scored fleet: both chemistries, hot and mild climate, every usage profile of
    cars, one vehicle in four with a fault (fast-fading cell, soft short, resistance
    growth, cooling failure or failed sensor), new on 2024-01-01."""
    return sim.FleetSpec(
        vehicles=vehicles,
        days=days,
        start=date(2024, 1, 1),
        fleet=fleet,
        seed=seed,
        chemistry="mixed",
        climate="mixed",
        vehicle_class="car",
        cells=cells,
        cadence_s=cadence_s,
        idle_cadence_s=idle_cadence_s,
        fault_rate=0.25,
    )


def accuracy_params(**overrides: Any) -> bms.AnalyticsParams:
    """Analytics parameters of the scored runs (defaults, the accuracy policy)."""
    return bms.AnalyticsParams(warranty_policy=ACCURACY_POLICY, **overrides)


@dataclass(frozen=True)
class Timing:
    """Seconds spent simulating and analysing."""

    simulate_s: float
    analyse_s: float
    dates: int


def simulate_and_analyse(
    spec: sim.FleetSpec, data_dir: Path, params: bms.AnalyticsParams | None = None
) -> Timing:
    """Simulate ``spec`` into ``data_dir`` and run every pending date."""
    t0 = time.perf_counter()
    sim.simulate_to_lake(spec, data_dir)
    t1 = time.perf_counter()
    done = bms.run_pending(data_dir / "lake", params=params or accuracy_params())
    return Timing(t1 - t0, time.perf_counter() - t1, len(done))


@dataclass(frozen=True)
class VehicleScore:
    vin: str
    chemistry: str
    climate: str
    profile: str
    fault: str
    soh_true_pct: float
    soh_pct: float
    soh_low_pct: float
    soh_high_pct: float
    n_estimates: int
    r_true_mohm: float
    r_mohm: float
    growth_true_pct: float
    growth_pct: float
    status_true: str
    status: str
    below_threshold: bool

    @property
    def soh_error_pct(self) -> float:
        return self.soh_pct - self.soh_true_pct

    @property
    def covered(self) -> bool:
        return self.soh_low_pct <= self.soh_true_pct <= self.soh_high_pct


@dataclass(frozen=True)
class FleetScore:
    """Accuracy of one analysed fleet on its last date (see module docstring)."""

    day: date
    vehicles: tuple[VehicleScore, ...] = field(repr=False)

    def _vals(self, name: str) -> np.ndarray:
        return np.array([getattr(v, name) for v in self.vehicles], dtype=np.float64)

    @property
    def soh_mae_pct(self) -> float:
        err = np.abs(self._vals("soh_error_pct"))
        return float(np.mean(np.where(np.isfinite(err), err, 100.0)))

    @property
    def soh_coverage(self) -> float:
        return float(np.mean([v.covered for v in self.vehicles]))

    @property
    def resistance_rel_error(self) -> float:
        rel = np.abs(self._vals("r_mohm") / self._vals("r_true_mohm") - 1)
        return float(np.mean(np.where(np.isfinite(rel), rel, 1.0)))

    @property
    def growth_mae_pct(self) -> float:
        err = np.abs(self._vals("growth_pct") - self._vals("growth_true_pct"))
        return float(np.mean(np.where(np.isfinite(err), err, 100.0)))

    @property
    def growth_rel_error(self) -> float:
        return self.growth_mae_pct / float(np.mean(self._vals("growth_true_pct")))

    @property
    def verdict_agreement(self) -> float:
        return float(np.mean([v.status == v.status_true for v in self.vehicles]))

    @property
    def below_threshold_ok(self) -> tuple[str, ...]:
        """Vehicles whose true SoH is below a threshold in cover but reported ``ok``."""
        return tuple(v.vin for v in self.vehicles if v.below_threshold and v.status == "ok")

    def summary(self) -> str:
        """The figures, one per line (printed by the benchmark and on test failure)."""
        n_below = sum(v.below_threshold for v in self.vehicles)
        statuses: dict[str, int] = {}
        for v in self.vehicles:
            statuses[v.status_true] = statuses.get(v.status_true, 0) + 1
        return "\n".join(
            [
                f"date {self.day}, {len(self.vehicles)} vehicles",
                f"SoH MAE {self.soh_mae_pct:.2f} points (goal <= 1.5), "
                f"max {np.nanmax(np.abs(self._vals('soh_error_pct'))):.2f}",
                f"SoH 90 % interval coverage {100 * self.soh_coverage:.0f} % (goal >= 85 %)",
                f"resistance error {100 * self.resistance_rel_error:.1f} % of the true value",
                f"resistance growth MAE {self.growth_mae_pct:.2f} points = "
                f"{100 * self.growth_rel_error:.1f} % of the mean true growth "
                f"{np.mean(self._vals('growth_true_pct')):.2f} % (goal <= 10 %)",
                f"warranty verdicts agree {100 * self.verdict_agreement:.0f} % (goal >= 95 %); "
                f"true statuses {dict(sorted(statuses.items()))}; "
                f"{n_below} below a threshold, reported ok: {len(self.below_threshold_ok)}",
            ]
        )

    def table(self) -> str:
        """One line per vehicle, worst SoH error first (for diagnosis)."""
        rows = sorted(self.vehicles, key=lambda v: -abs(v.soh_error_pct))
        lines = [
            "vin               chem clim prof       fault              soh_true  est   "
            "low   high  n   r_true r_est g_true g_est status_true/status"
        ]
        for v in rows:
            lines.append(
                f"{v.vin} {v.chemistry:4} {v.climate:4} {v.profile:10} {v.fault:18} "
                f"{v.soh_true_pct:6.2f} {v.soh_pct:6.2f} {v.soh_low_pct:6.2f} "
                f"{v.soh_high_pct:6.2f} {v.n_estimates:3d} {v.r_true_mohm:6.2f} "
                f"{v.r_mohm:6.2f} {v.growth_true_pct:6.2f} {v.growth_pct:6.2f} "
                f"{v.status_true}/{v.status}"
            )
        return "\n".join(lines)


def _age_years(day_end: datetime, in_service: date) -> float:
    start = datetime(in_service.year, in_service.month, in_service.day, tzinfo=UTC)
    return (day_end - start).total_seconds() / 86_400 / 365.25


def _nan(x: Any) -> float:
    return math.nan if x is None else float(x)


def score_fleet(data_dir: Path, fleet: str, policy: str = ACCURACY_POLICY) -> FleetScore:
    """Score the last date with metrics against the truth of the same date."""
    lake = data_dir / "lake"
    truth = pq.read_table(data_dir / "truth" / "vehicle_day.parquet")
    truth = truth.filter(pc.equal(truth["fleet"], fleet))
    faults = pq.read_table(data_dir / "truth" / "faults.parquet")
    fault_of = {
        v: f
        for v, f, fl in zip(
            faults["vin"].to_pylist(),
            faults["fault"].to_pylist(),
            faults["fleet"].to_pylist(),
            strict=True,
        )
        if fl == fleet
    }
    soh = bms.read_metrics(lake, "vehicle_soh")
    soh = soh.filter(pc.equal(soh["fleet"], fleet))
    day = max(soh["date"].to_pylist())
    soh = soh.filter(pc.equal(soh["date"], day))
    war = bms.read_metrics(lake, "warranty", [day])
    status_of = dict(zip(war["vin"].to_pylist(), war["status"].to_pylist(), strict=True))
    reg = {r["vin"]: r for r in bms.read_registry(lake, fleet).to_pylist()}
    pol = bms.load_warranty_policy(policy)
    day_end = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() + 86_400
    by_vin: dict[str, dict[str, np.ndarray]] = {}
    cols = ["date", "soh_pct", "resistance_mohm", "odometer_km", "climate", "usage_profile"]
    t_sorted = truth.sort_by([("vin", "ascending"), ("date", "ascending")])
    vins = np.asarray(t_sorted["vin"].to_pylist())
    for name in cols:
        values = np.asarray(t_sorted[name].to_pylist(), dtype=object)
        for vin in np.unique(vins):
            by_vin.setdefault(str(vin), {})[name] = values[vins == vin]
    out = []
    for row in soh.to_pylist():
        vin = row["vin"]
        tv = by_vin[vin]
        dates = list(tv["date"])
        k = dates.index(day) if day in dates else len(dates) - 1
        info = reg[vin]
        in_service = info["in_service_date"]
        # Truth of local date D is the state at D+1 00:00 local = D 18:30 UTC.
        t_truth = np.array(
            [
                _age_years(datetime(d.year, d.month, d.day, 18, 30, tzinfo=UTC), in_service)
                for d in dates[: k + 1]
            ]
        )
        soh_true = np.asarray(tv["soh_pct"][: k + 1], dtype=np.float64)
        r_true = np.asarray(tv["resistance_mohm"], dtype=np.float64)
        odo = np.asarray(tv["odometer_km"][: k + 1], dtype=np.float64)
        age = _age_years(datetime.fromtimestamp(day_end, tz=UTC), in_service)
        span_d = max(k, 1)
        km_per_day = float(odo[k] - odo[0]) / span_d
        true_fit = bms.fit_vehicle_soh(
            t_truth,
            soh_true,
            np.full(t_truth.size, 0.05),
            info["chemistry"],
            systematic_sigma_pct=0.0,
        )
        verdict = bms.warranty_verdict(
            pol, true_fit, age_years=age, odometer_km=float(odo[k]), km_per_day=km_per_day
        )
        below = any(
            soh_true[k] < th.min_soh_pct
            for th in pol.thresholds
            if age <= th.years and odo[k] <= th.km
        )
        out.append(
            VehicleScore(
                vin=vin,
                chemistry=info["chemistry"],
                climate=str(tv["climate"][0]),
                profile=str(tv["usage_profile"][0]),
                fault=fault_of.get(vin, ""),
                soh_true_pct=float(soh_true[k]),
                soh_pct=_nan(row["soh_pct"]),
                soh_low_pct=_nan(row["soh_low_pct"]),
                soh_high_pct=_nan(row["soh_high_pct"]),
                n_estimates=int(row["n_estimates"]),
                r_true_mohm=float(r_true[k]),
                r_mohm=_nan(row["resistance_mohm_25c"]),
                growth_true_pct=100.0 * (float(r_true[k]) / float(r_true[0]) - 1.0),
                growth_pct=_nan(row["resistance_growth_pct"]),
                # the policy's own definition: below a threshold in cover is a claim,
                # whatever a power law through a fault's ramp says about the level now
                status_true="claim_eligible" if below else verdict.status,
                status=str(status_of.get(vin)),
                below_threshold=bool(below),
            )
        )
    return FleetScore(day=day, vehicles=tuple(out))
