"""Fleet simulator grounded in battery physics, with ground truth for scoring.

Each vehicle is a series string of cells (NMC or LFP, 14-200 cells) with manufacturing
spread of capacity, resistance and self-discharge, an equivalent-circuit voltage model
(OCV + ohmic + RC polarisation + LFP hysteresis, R rising in the cold), a lumped thermal
model with optional liquid cooling, a BMS (coulomb-counting SoC with drift and
recalibration, a biased SoH estimate) and daily ageing from the semi-empirical models in
``bms`` (Schmalstieg 2014 for NMC, Naumann 2018/2020 for LFP). Usage follows profiles
(commuter, taxi, delivery, occasional) in a hot or mild climate; faults can be injected
(soft short, fast-fading cell, resistance growth, failed temperature sensor, cooling
failure) with a known cell and onset.

Public API
----------
``FleetSpec(vehicles=10, days=60, start=date(2026, 1, 1), fleet="demo", seed=0, ...)``
    What to simulate (validated; ``ValueError`` names the bad field).
``simulate_to_lake(spec, data_dir, *, overwrite=False, progress=None) -> SimSummary``
    Telemetry through ``bms.write_telemetry`` (one file per UTC date and fleet),
    ``lake/registry/vehicles.parquet`` and ``truth/{vehicle_day,faults}.parquet``.
``iter_readings(spec, *, vins=None) -> Iterator[bms.Reading]``
    The same readings as ``bms.Reading`` objects in time order, for publishers.
``run_live(spec, broker, *, buffer_dir, speed=1.0, start=None, duration_s=None,
max_readings=None, stop=None, ...) -> LiveSummary``
    Real-time (or ``speed`` times faster) MQTT v5 QoS 1 publishing with a per-vehicle
    ``StoreAndForwardBuffer`` replayed on ``.../bms/batch`` and trimmed by acks.
``FleetSimulator(spec)``
    Day-by-day stepping (``step(i) -> list[DayOutput]``) for tests and tools: each
    ``DayOutput`` carries the readings as arrays (``cell_mv`` is readings x cells) and
    the day's ground-truth row.

Ground truth schemas: ``VEHICLE_DAY_SCHEMA``, ``FAULTS_SCHEMA``; registry:
``REGISTRY_SCHEMA`` (``docs/lake.md``). Presets: ``VEHICLE_CLASSES``, ``CLIMATES``,
``USAGE_PROFILES``, ``FAULT_KINDS``.
"""

from sim._fleet import (
    FAULTS_SCHEMA,
    REGISTRY_SCHEMA,
    VEHICLE_DAY_SCHEMA,
    FleetSimulator,
    SimSummary,
    iter_readings,
    simulate_to_lake,
    telemetry_of,
)
from sim._live import LiveSummary, StoreAndForwardBuffer, run_live
from sim._presets import CLIMATES, FAULT_KINDS, USAGE_PROFILES, VEHICLE_CLASSES
from sim._spec import FaultSpec, FleetSpec, VehicleSpec, make_vin
from sim._vehicle import DayOutput

__all__ = [
    "CLIMATES",
    "FAULTS_SCHEMA",
    "FAULT_KINDS",
    "REGISTRY_SCHEMA",
    "USAGE_PROFILES",
    "VEHICLE_CLASSES",
    "VEHICLE_DAY_SCHEMA",
    "DayOutput",
    "FaultSpec",
    "FleetSimulator",
    "FleetSpec",
    "LiveSummary",
    "SimSummary",
    "StoreAndForwardBuffer",
    "VehicleSpec",
    "iter_readings",
    "make_vin",
    "run_live",
    "simulate_to_lake",
    "telemetry_of",
]
