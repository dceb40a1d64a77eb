"""The fleet, day by day: to the lake (vectorised, one file per date and fleet), to
``bms.Reading`` objects, and the ground truth and registry files."""

from __future__ import annotations

import dataclasses
import itertools
import queue
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import bms
from sim._physics import ambient_temp_c, weather_offsets_c
from sim._presets import FAULT_KINDS
from sim._spec import CELL_FAULTS, FaultSpec, FleetSpec, VehicleSpec, build_fleet
from sim._vehicle import (
    MODE_NAMES,
    DayContext,
    DayOutput,
    VehicleState,
    initial_state,
    noise_pool_mv,
    simulate_day,
)

_MS_PER_DAY = 86_400_000
#: Simulated delay between a reading's measurement and its arrival at ingest. [ms]
RECEIVE_DELAY_MS = 1500
#: ``worker`` column of simulated telemetry.
WORKER = "sim"

REGISTRY_SCHEMA = pa.schema(
    [
        pa.field("vin", pa.string(), nullable=False),
        pa.field("fleet", pa.string(), nullable=False),
        pa.field("chemistry", pa.string(), nullable=False),
        pa.field("capacity_ah", pa.float64(), nullable=False),
        pa.field("n_cells", pa.int16(), nullable=False),
        pa.field("n_temps", pa.int16(), nullable=False),
        pa.field("vehicle_class", pa.string(), nullable=False),
        pa.field("in_service_date", pa.date32(), nullable=False),
        pa.field("warranty_policy", pa.string(), nullable=False),
    ],
    metadata={b"fleetbms.table": b"registry", b"fleetbms.version": b"1"},
)

VEHICLE_DAY_SCHEMA = pa.schema(
    [
        pa.field("fleet", pa.string(), nullable=False),
        pa.field("vin", pa.string(), nullable=False),
        pa.field("date", pa.date32(), nullable=False),
        pa.field("chemistry", pa.string(), nullable=False),
        pa.field("vehicle_class", pa.string(), nullable=False),
        pa.field("climate", pa.string(), nullable=False),
        pa.field("usage_profile", pa.string(), nullable=False),
        pa.field("rated_capacity_ah", pa.float64(), nullable=False),
        pa.field("capacity_ah", pa.float64(), nullable=False),
        pa.field("soh_pct", pa.float64(), nullable=False),
        pa.field("resistance_mohm", pa.float64(), nullable=False),
        pa.field("odometer_km", pa.float64(), nullable=False),
        pa.field("km", pa.float64(), nullable=False),
        pa.field("throughput_ah", pa.float64(), nullable=False),
        pa.field("efc", pa.float64(), nullable=False),
        pa.field("weakest_cell", pa.int16(), nullable=False),
        pa.field("calendar_fade_pct", pa.float64(), nullable=False),
        pa.field("cycle_fade_pct", pa.float64(), nullable=False),
        pa.field("ambient_mean_c", pa.float64(), nullable=False),
        pa.field("pack_temp_mean_c", pa.float64(), nullable=False),
        pa.field("pack_temp_max_c", pa.float64(), nullable=False),
        pa.field("soc_min_pct", pa.float64(), nullable=False),
        pa.field("soc_max_pct", pa.float64(), nullable=False),
        pa.field("ac_sessions", pa.int16(), nullable=False),
        pa.field("dc_sessions", pa.int16(), nullable=False),
        pa.field("bms_soh_pct", pa.float64(), nullable=False),
        pa.field("readings", pa.int32(), nullable=False),
        pa.field("limit_readings", pa.int32(), nullable=False),
    ],
    metadata={
        b"fleetbms.table": b"truth.vehicle_day",
        b"fleetbms.units": (
            b"date: local date of the fleet time zone, state at the end of that day; "
            b"capacity_ah: weakest cell [Ah]; soh_pct: capacity_ah / rated [%]; "
            b"resistance_mohm: pack ohmic DC resistance at 25 degC, 50 % SoC incl. "
            b"interconnects [mOhm]; throughput_ah: charge + discharge that day [Ah]; "
            b"efc: cumulative full equivalent cycles in the run; limit_readings: readings "
            b"crossing a contract v1 hard limit"
        ),
    },
)

FAULTS_SCHEMA = pa.schema(
    [
        pa.field("fleet", pa.string(), nullable=False),
        pa.field("vin", pa.string(), nullable=False),
        pa.field("cell", pa.int16(), nullable=False),
        pa.field("sensor", pa.int16(), nullable=False),
        pa.field("fault", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("onset_date", pa.date32(), nullable=False),
        pa.field("ramp_days", pa.float64(), nullable=False),
        pa.field("severity", pa.float64(), nullable=False),
        pa.field("limit_date", pa.date32()),
        pa.field("limit", pa.string()),
    ],
    metadata={
        b"fleetbms.table": b"truth.faults",
        b"fleetbms.units": (
            b"cell: 0-based cell index, -1 = pack-level; sensor: 0-based temperature "
            b"sensor, -1 = none; severity at onset + ramp_days: soft_short leak [A], "
            b"fast_fade extra capacity loss [-], resistance_growth R multiplier [-], "
            b"cooling_failure lost cooling share [-], temp_sensor noise [degC]; "
            b"limit_date: first local date the fault crossed a contract hard limit "
            b"(null = not within the run); limit: which one"
        ),
    },
)


@dataclass(frozen=True)
class SimSummary:
    """What ``simulate_to_lake`` wrote."""

    vehicles: int
    days: int
    readings: int
    files: int
    faults: int
    first_date: date
    last_date: date
    seconds: float


class FleetSimulator:
    """Steps every vehicle of a ``FleetSpec`` one local day at a time.

    Parameters
    ----------
    spec : FleetSpec
        The fleet.
    faults : mapping of vehicle index to FaultSpecs, optional
        Replace the drawn faults of these vehicles (to inject a known fault).

    Examples
    --------
    >>> sim = FleetSimulator(FleetSpec(vehicles=2, days=1))
    >>> ctx, outputs = next(sim.run())
    """

    def __init__(
        self, spec: FleetSpec, *, faults: Mapping[int, Sequence[FaultSpec]] | None = None
    ) -> None:
        self.spec = spec
        self.vehicles: list[VehicleSpec] = build_fleet(spec)
        for index, chosen in (faults or {}).items():
            v = self.vehicles[index]
            for f in chosen:
                _check_fault(f, v)
            self.vehicles[index] = dataclasses.replace(v, faults=tuple(chosen))
        self._tz = spec.tz
        first = spec.start.toordinal()
        self._weather = {
            name: weather_offsets_c(v.climate, spec.seed, first, spec.days)
            for name, v in {v.climate.name: v for v in self.vehicles}.items()
        }
        self._noise = noise_pool_mv(spec.seed)
        self.states: list[VehicleState] = []
        for v in self.vehicles:
            weather = float(self._weather[v.climate.name][0])
            doy = spec.start.timetuple().tm_yday
            amb = float(ambient_temp_c(v.climate, doy, np.array([0.0]), weather)[0])
            rng = np.random.default_rng([spec.seed, 3, v.index])
            self.states.append(initial_state(v, amb, rng))

    def context(self, index: int, climate: str | None = None) -> DayContext:
        """Time frame of simulated day ``index`` (weather of ``climate`` if given)."""
        local = self.spec.start + timedelta(days=index)
        start = datetime(local.year, local.month, local.day, tzinfo=self._tz)
        nxt = local + timedelta(days=1)
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=self._tz)
        weather = float(self._weather[climate][index]) if climate else 0.0
        return DayContext(
            index=index,
            local_date=local,
            start_utc_ms=int(start.timestamp() * 1000),
            length_s=int((end - start).total_seconds()),
            weather_c=weather,
        )

    def step(self, index: int) -> list[DayOutput]:
        """Simulate day ``index`` for every vehicle (call with 0, 1, 2... in order)."""
        outputs = []
        for v, state in zip(self.vehicles, self.states, strict=True):
            ctx = self.context(index, v.climate.name)
            outputs.append(
                simulate_day(
                    v,
                    state,
                    ctx,
                    seed=self.spec.seed,
                    cadence_s=self.spec.cadence_s,
                    idle_cadence_s=self.spec.idle_cadence_s,
                    noise_pool=self._noise,
                )
            )
        return outputs

    def run(self) -> Iterator[tuple[DayContext, list[DayOutput]]]:
        """Every simulated day in order with all vehicles' outputs."""
        for i in range(self.spec.days):
            yield self.context(i), self.step(i)

    def registry_table(self) -> pa.Table:
        """The fleet's vehicle registry (``docs/lake.md``)."""
        vs = self.vehicles
        return pa.table(
            {
                "vin": [v.vin for v in vs],
                "fleet": [self.spec.fleet] * len(vs),
                "chemistry": [v.chemistry.name for v in vs],
                "capacity_ah": [v.rated_ah for v in vs],
                "n_cells": [v.n_cells for v in vs],
                "n_temps": [v.n_temps for v in vs],
                "vehicle_class": [v.vclass.name for v in vs],
                "in_service_date": [v.in_service_date for v in vs],
                "warranty_policy": [v.vclass.warranty_policy for v in vs],
            },
            schema=REGISTRY_SCHEMA,
        )

    def faults_table(self) -> pa.Table:
        """Injected faults with onset and (so far) the first hard-limit date."""
        rows: list[dict[str, object]] = []
        for v, state in zip(self.vehicles, self.states, strict=True):
            for i, f in enumerate(v.faults):
                limit = state.limit_dates.get(i)
                rows.append(
                    {
                        "fleet": self.spec.fleet,
                        "vin": v.vin,
                        "cell": f.cell,
                        "sensor": f.sensor,
                        "fault": f.kind,
                        "mode": f.mode,
                        "onset_date": self.spec.start + timedelta(days=f.onset_day),
                        "ramp_days": f.ramp_days,
                        "severity": f.severity,
                        "limit_date": limit[0] if limit else None,
                        "limit": limit[1] if limit else None,
                    }
                )
        return pa.Table.from_pylist(rows, schema=FAULTS_SCHEMA)


def _check_fault(f: FaultSpec, v: VehicleSpec) -> None:
    if f.kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {f.kind!r}; valid: {', '.join(FAULT_KINDS)}")
    if f.cell >= v.n_cells or (f.kind in CELL_FAULTS) != (f.cell >= 0):
        raise ValueError(f"{f.kind}: cell {f.cell} does not fit a {v.n_cells}-cell pack")
    if f.sensor >= v.n_temps or (f.kind == "temp_sensor") != (f.sensor >= 0):
        raise ValueError(f"{f.kind}: sensor {f.sensor} does not fit {v.n_temps} sensors")
    if f.ramp_days <= 0:
        raise ValueError(f"{f.kind}: ramp_days must be > 0, got {f.ramp_days}")


def _outputs_table(pieces: list[tuple[DayOutput, slice]], fleet: str) -> pa.Table:
    """Telemetry table (``bms.telemetry_table``) of row ranges of vehicle-day outputs."""
    lengths = np.array([len(o.seq[s]) for o, s in pieces], dtype=np.int64)
    n_cells = np.array([o.cell_mv.shape[1] for o, _ in pieces], dtype=np.int64)
    n_temps = np.array([o.temp_c.shape[1] for o, _ in pieces], dtype=np.int64)

    def cat(name: str) -> npt.NDArray[np.generic]:
        return np.concatenate([getattr(o, name)[s] for o, s in pieces])

    ts_ms = cat("ts_ms")
    cell_off = np.concatenate([[0], np.cumsum(np.repeat(n_cells, lengths))])
    temp_off = np.concatenate([[0], np.cumsum(np.repeat(n_temps, lengths))])
    modes = np.array(MODE_NAMES, dtype=object)
    return bms.telemetry_table(
        fleet=fleet,
        vin=np.repeat(np.array([o.vin for o, _ in pieces], dtype=object), lengths),
        seq=cat("seq"),
        ts_ms=ts_ms,
        current_a=cat("current_a"),
        voltage_v=cat("voltage_v"),
        soc_pct=cat("soc_pct"),
        soh_pct=cat("soh_pct"),
        cycle_count=cat("cycle_count"),
        odometer_km=cat("odometer_km"),
        mode=modes[cat("mode")],
        cell_mv=np.concatenate([o.cell_mv[s].ravel() for o, s in pieces]),
        cell_offsets=cell_off,
        temp_c=np.concatenate([o.temp_c[s].ravel() for o, s in pieces]),
        temp_offsets=temp_off,
        received_at_ms=ts_ms + RECEIVE_DELAY_MS,
        worker=WORKER,
    )


def telemetry_of(outputs: Iterable[DayOutput], fleet: str) -> pa.Table:
    """Telemetry table (``bms.telemetry_table``) of whole vehicle-day outputs, as
    ``simulate_to_lake`` writes them (for tests that put a simulated day in a lake)."""
    return _outputs_table([(o, slice(None)) for o in outputs], fleet)


def _utc_day(ts_ms: int) -> date:
    return date.fromordinal(date(1970, 1, 1).toordinal() + ts_ms // _MS_PER_DAY)


def _other_fleets_rows(path: Path, schema: pa.Schema, fleet: str) -> pa.Table | None:
    """The rows of ``path`` (a file shared between fleets) that are not ``fleet``'s, as
    ``schema``; None if there is no file. ValueError if it cannot hold these rows."""
    if not path.exists():
        return None
    old = pq.read_table(path)
    if old.column_names != schema.names:
        raise ValueError(
            f"{path} has the columns {', '.join(old.column_names)}, not those this version "
            f"writes ({', '.join(schema.names)}); move it aside to simulate into this data "
            "directory"
        )
    keep = old.filter(pc.invert(pc.fill_null(pc.equal(old["fleet"], fleet), False)))
    try:
        return keep.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
        raise ValueError(f"{path}: the other fleets' rows do not fit the schema: {exc}") from None


def _replace_fleet_rows(path: Path, table: pa.Table, fleet: str) -> None:
    """Write ``table`` (this fleet's rows) to ``path`` in place of all of this fleet's
    rows there; other fleets' rows are kept (the registry and truth files are shared)."""
    keep = _other_fleets_rows(path, table.schema, fleet)
    if keep is not None:
        table = pa.concat_tables([keep, table]).replace_schema_metadata(table.schema.metadata)
    bms.write_parquet_atomic(table, path)


def _fleet_partitions(data_dir: Path, fleet: str) -> list[Path]:
    """This fleet's telemetry partitions of every date, in the lake and the archive."""
    return sorted(
        part
        for base in (data_dir / "lake" / "telemetry", data_dir / "archive" / "telemetry")
        for part in base.glob(f"date=*/fleet={fleet}")
        if part.is_dir()
    )


def _fleet_row_files(data_dir: Path) -> tuple[tuple[Path, pa.Schema], ...]:
    """The files shared between fleets that a run writes this fleet's rows into."""
    truth = data_dir / "truth"
    return (
        (data_dir / "lake" / "registry" / "vehicles.parquet", REGISTRY_SCHEMA),
        (truth / "vehicle_day.parquet", VEHICLE_DAY_SCHEMA),
        (truth / "faults.parquet", FAULTS_SCHEMA),
    )


def _has_fleet_rows(path: Path, schema: pa.Schema, fleet: str) -> bool:
    keep = _other_fleets_rows(path, schema, fleet)  # checks the file can be rewritten
    return keep is not None and keep.num_rows < pq.ParquetFile(path).metadata.num_rows


def _check_target(spec: FleetSpec, data_dir: Path, overwrite: bool) -> list[Path]:
    """This fleet's telemetry partitions already there (lake and archive, every date).

    A simulation is one fleet's whole history: a fleet with telemetry, registry or truth
    rows is refused unless ``overwrite`` (then the caller deletes all of it)."""
    parts = _fleet_partitions(data_dir, spec.fleet)
    with_rows = [
        p for p, schema in _fleet_row_files(data_dir) if _has_fleet_rows(p, schema, spec.fleet)
    ]
    if (parts or with_rows) and not overwrite:
        found = []
        if parts:
            days = sorted(p.parent.name.removeprefix("date=") for p in parts)
            found.append(f"telemetry of {len(parts)} UTC date(s), {days[0]}..{days[-1]}")
        if with_rows:
            found.append("rows in " + ", ".join(str(p) for p in with_rows))
        raise ValueError(
            f"fleet {spec.fleet!r} already has data in {data_dir} ({'; '.join(found)}); "
            "a simulation writes a fleet's whole history: use --fleet to simulate another "
            "fleet, or --overwrite to replace all of this fleet's data"
        )
    return parts


def _part_worker(spec: FleetSpec, part: int, parts: int, out: Any) -> None:
    """Child process of ``simulate_to_lake(workers=parts)``: step the vehicles whose
    index is ``part`` modulo ``parts`` and put each day's outputs on ``out``, then
    their fault limit dates. A vehicle's readings do not depend on the other vehicles
    (``sim._spec``), so the parts together are the whole fleet's."""
    try:
        sim = FleetSimulator(spec)
        sim.vehicles = sim.vehicles[part::parts]
        sim.states = sim.states[part::parts]
        for _ctx, outputs in sim.run():
            out.put(outputs)
        out.put({v.index: s.limit_dates for v, s in zip(sim.vehicles, sim.states, strict=True)})
    except BaseException as exc:  # the parent re-raises it
        out.put(exc)
        raise


def _parallel_run(
    sim: FleetSimulator, workers: int
) -> Iterator[tuple[DayContext, list[DayOutput]]]:
    """``sim.run()`` with the vehicles stepped in ``workers`` child processes: the same
    days and outputs in the same order; the children's fault limit dates are copied
    into ``sim.states`` at the end."""
    import multiprocessing

    mp = multiprocessing.get_context("spawn")
    queues = [mp.Queue(maxsize=8) for _ in range(workers)]
    procs = [
        mp.Process(target=_part_worker, args=(sim.spec, k, workers, q), daemon=True)
        for k, q in enumerate(queues)
    ]
    for proc in procs:
        proc.start()

    def get(k: int) -> Any:
        while True:
            try:
                item = queues[k].get(timeout=1.0)
                break
            except queue.Empty:
                if not procs[k].is_alive() and queues[k].empty():
                    raise RuntimeError(
                        f"simulation worker {k} exited with code {procs[k].exitcode}"
                    ) from None
        if isinstance(item, BaseException):
            raise RuntimeError(f"simulation worker {k} failed: {item!r}") from item
        return item

    try:
        for i in range(sim.spec.days):
            parts = [get(k) for k in range(workers)]
            outputs: list[DayOutput] = [None] * len(sim.vehicles)  # type: ignore[list-item]
            for k, part in enumerate(parts):
                outputs[k::workers] = part
            yield sim.context(i), outputs
        for k in range(workers):
            for index, limits in get(k).items():
                sim.states[index].limit_dates = limits
        for proc in procs:
            proc.join()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()


def _simulate_days(
    sim: FleetSimulator,
    spec: FleetSpec,
    pending: dict[int, list[tuple[DayOutput, slice]]],
    truth_rows: list[dict[str, object]],
    flush: Callable[[int | None], None],
    progress: Callable[[date, int], None] | None,
    workers: int = 1,
) -> None:
    """Step every day, queue each output's rows under their UTC date, flush finished dates."""
    readings = 0
    steps = sim.run() if workers <= 1 else _parallel_run(sim, workers)
    for ctx, outputs in steps:
        for out in outputs:
            truth_rows.append({"fleet": spec.fleet, **out.truth})
            readings += len(out)
            days = out.ts_ms // _MS_PER_DAY
            cuts = np.flatnonzero(np.diff(days)) + 1
            bounds = [0, *cuts.tolist(), len(days)]
            for a, b in itertools.pairwise(bounds):
                pending.setdefault(int(days[a]), []).append((out, slice(a, b)))
        sim_end_ms = ctx.start_utc_ms + ctx.length_s * 1000
        flush(sim_end_ms // _MS_PER_DAY)
        if progress is not None:
            progress(ctx.local_date, readings)


def simulate_to_lake(
    spec: FleetSpec,
    data_dir: Path,
    *,
    overwrite: bool = False,
    progress: Callable[[date, int], None] | None = None,
    workers: int = 1,
) -> SimSummary:
    """Simulate the fleet and write telemetry, registry and ground truth.

    Parameters
    ----------
    spec : FleetSpec
        What to simulate.
    data_dir : Path
        Data directory: telemetry goes to ``lake/telemetry`` through
        ``bms.write_telemetry`` (one file per UTC date and fleet), the registry to
        ``lake/registry/vehicles.parquet`` and the truth to ``truth/``.
    overwrite : bool
        Replace the fleet entirely: delete all of its telemetry partitions (lake and
        archive, every date) and its rows in the registry and the truth files first.
        Without it a fleet that has any of these is refused. Other fleets' data and rows
        are kept.
    progress : callable, optional
        Called after each simulated day with its date and the readings so far.
    workers : int
        Child processes that step the vehicles side by side (1: none). The files are the
        same whatever the number: each vehicle's readings depend on that vehicle alone,
        and this process writes them in the same order.

    Returns
    -------
    SimSummary

    Raises
    ------
    ValueError
        The fleet already has telemetry, registry or truth rows and ``overwrite`` is
        false; or a registry or truth file has another schema.
    OSError
        The data directory is not writable.
    """
    t_start = time.perf_counter()
    lake = data_dir / "lake"
    sim = FleetSimulator(spec)
    registry_path, vehicle_day_path, faults_path = (p for p, _ in _fleet_row_files(data_dir))
    for part in _check_target(spec, data_dir, overwrite):
        shutil.rmtree(part)
    # This fleet's truth rows go now, and its registry rows are the new run's from here
    # on: a run that stops half-way leaves the fleet registered (so the next run is
    # refused without --overwrite) and no truth that describes the old telemetry.
    for path, schema in ((vehicle_day_path, VEHICLE_DAY_SCHEMA), (faults_path, FAULTS_SCHEMA)):
        if path.exists():
            _replace_fleet_rows(path, schema.empty_table(), spec.fleet)
    _replace_fleet_rows(registry_path, sim.registry_table(), spec.fleet)

    pending: dict[int, list[tuple[DayOutput, slice]]] = {}
    truth_rows: list[dict[str, object]] = []
    files = 0

    # One writer thread builds and writes a finished date while the next day is being
    # simulated (pyarrow and most numpy kernels release the GIL); at most one date waits.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sim-writer")
    in_flight: list[Future[int]] = []

    def write(pieces: list[tuple[DayOutput, slice]]) -> int:
        table = _outputs_table(pieces, spec.fleet)
        return len(bms.write_telemetry(table, lake, file_prefix=f"sim-{spec.fleet}"))

    def flush(before_day: int | None) -> None:
        nonlocal files
        for day in sorted(pending):
            if before_day is not None and day >= before_day:
                continue
            while in_flight:
                files += in_flight.pop(0).result()
            in_flight.append(writer.submit(write, pending.pop(day)))

    try:
        _simulate_days(sim, spec, pending, truth_rows, flush, progress, workers)
        flush(before_day=None)
        while in_flight:
            files += in_flight.pop(0).result()
    finally:
        writer.shutdown(wait=True, cancel_futures=True)
    readings = sum(
        len_ for len_ in (row["readings"] for row in truth_rows) if isinstance(len_, int)
    )
    _replace_fleet_rows(
        vehicle_day_path, pa.Table.from_pylist(truth_rows, schema=VEHICLE_DAY_SCHEMA), spec.fleet
    )
    faults = sim.faults_table()
    _replace_fleet_rows(faults_path, faults, spec.fleet)
    return SimSummary(
        vehicles=spec.vehicles,
        days=spec.days,
        readings=readings,
        files=files,
        faults=faults.num_rows,
        first_date=spec.start,
        last_date=spec.end,
        seconds=time.perf_counter() - t_start,
    )


def readings_of(out: DayOutput, rows: Iterable[int] | None = None) -> Iterator[bms.Reading]:
    """``bms.Reading`` objects of (some rows of) a vehicle-day output."""
    idx = range(len(out)) if rows is None else rows
    for k in idx:
        soh = float(out.soh_pct[k])
        yield bms.Reading(
            v=1,
            vin=out.vin,
            seq=int(out.seq[k]),
            ts=datetime.fromtimestamp(int(out.ts_ms[k]) / 1000.0, tz=UTC),
            pack=bms.Pack(
                current_a=float(out.current_a[k]),
                voltage_v=float(out.voltage_v[k]),
                soc_pct=float(out.soc_pct[k]),
                cycle_count=int(out.cycle_count[k]),
                odometer_km=float(out.odometer_km[k]),
                mode=MODE_NAMES[int(out.mode[k])],  # type: ignore[arg-type]
                soh_pct=None if np.isnan(soh) else soh,
            ),
            cells=bms.Cells(
                voltages_mv=out.cell_mv[k].tolist(),
                temps_c=[round(x, 1) for x in out.temp_c[k].tolist()],
            ),
        )


def iter_readings(spec: FleetSpec, *, vins: Iterable[str] | None = None) -> Iterator[bms.Reading]:
    """Every reading of the simulated fleet as ``bms.Reading``, in time order.

    Parameters
    ----------
    spec : FleetSpec
        What to simulate (same physics and seeds as ``simulate_to_lake``, so the same
        ``(vin, seq)`` carry the same values).
    vins : iterable of str, optional
        Only these vehicles.
    """
    wanted = set(vins) if vins is not None else None
    sim = FleetSimulator(spec)
    for _, outputs in sim.run():
        chosen = [o for o in outputs if wanted is None or o.vin in wanted]
        if not chosen:
            continue
        ts = np.concatenate([o.ts_ms for o in chosen])
        which = np.concatenate([np.full(len(o), i) for i, o in enumerate(chosen)])
        row = np.concatenate([np.arange(len(o)) for o in chosen])
        for k in np.lexsort((which, ts)):
            out = chosen[int(which[k])]
            yield next(readings_of(out, [int(row[k])]))
