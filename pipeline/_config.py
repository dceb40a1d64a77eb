"""Typed, layered configuration: defaults < TOML file < environment < command-line flags.

One frozen dataclass per section. Environment variables are ``FLEETBMS_SECTION__KEY``
(nested tables add more ``__KEY`` parts, e.g. ``FLEETBMS_ALERTS__NMC__CELL_MAX_MV``);
their strings are coerced to the field's type. A field's type may carry its allowed
values (``Annotated[int, Range(low=1)]``, ``Annotated[str, Choices(...)]``, through the
aliases below); numbers must be finite and paths not empty. Every error names the key,
the value and where it came from, and the effective value of each key remembers its
source, which ``fleetbms config show`` prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import bms
from bms import FLEET_PATTERN

__all__ = [
    "AlertLimits",
    "AlertsConfig",
    "AnalyticsConfig",
    "AnomalyConfig",
    "ConfigError",
    "FleetConfig",
    "IngestConfig",
    "NightlyConfig",
    "ReportsConfig",
    "RetentionConfig",
    "Secret",
    "Settings",
    "env_key",
    "load_settings",
    "render_settings",
    "with_overrides",
]

ENV_PREFIX = "FLEETBMS_"


class ConfigError(ValueError):
    """A configuration value or file is wrong; the message names key, value and source."""


class Secret(str):
    """A string that never shows itself in reprs, logs or ``config show``."""

    def __repr__(self) -> str:
        return "'***'"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: ``low``/``high`` inclusive, ``above``/``below`` not."""

    low: float | None = None
    above: float | None = None
    high: float | None = None
    below: float | None = None

    def problem(self, value: float) -> str | None:
        """``None`` if ``value`` is allowed, else what it must be."""
        tests = (
            (self.low, value >= (self.low or 0), "at least"),
            (self.above, value > (self.above or 0), "greater than"),
            (self.high, value <= (self.high or 0), "at most"),
            (self.below, value < (self.below or 0), "less than"),
        )
        if all(ok for bound, ok, _ in tests if bound is not None):
            return None
        return "must be " + " and ".join(f"{w} {_number(b)}" for b, _, w in tests if b is not None)


@dataclass(frozen=True)
class Choices:
    """Allowed values of a string, or with ``many`` of each item of a comma-separated list
    (with ``empty`` an empty list too)."""

    values: tuple[str, ...]
    many: bool = False
    empty: bool = False

    def problem(self, value: str) -> str | None:
        """``None`` if ``value`` is allowed, else what it must be."""
        items = [x.strip().lower() for x in value.split(",")] if self.many else [value]
        items = [x for x in items if x] if self.many else items
        if (items or self.empty) and all(x in self.values for x in items):
            return None
        what = "a comma-separated list of" if self.many else "one of"
        return f"must be {what} {', '.join(self.values)}"


@dataclass(frozen=True)
class WarrantyPolicyRef:
    """A warranty policy: a shipped preset id or the path of an existing policy file
    (``bms.load_warranty_policy``'s rules; the file's content is checked when it is used)."""

    def problem(self, value: str) -> str | None:
        """``None`` if ``value`` is allowed, else what it must be."""
        path = bms.warranty_policy_file(value)
        if path is None and value in bms.warranty_presets():
            return None
        if path is not None and path.is_file():
            return None
        if path is not None and path.is_dir():
            return f"names a directory, not a policy file: {path.absolute()}"
        if path is not None:
            return f"names no policy file: {path.absolute()} does not exist"
        presets = ", ".join(bms.warranty_presets())
        return f"is neither a shipped preset ({presets}) nor an existing policy file"


PosInt = Annotated[int, Range(low=1)]
NonNegInt = Annotated[int, Range(low=0)]
PosFloat = Annotated[float, Range(above=0)]
NonNegFloat = Annotated[float, Range(low=0)]
Percent = Annotated[float, Range(low=0, high=100)]
Port = Annotated[int, Range(low=0, high=65_535)]  # 0 = off
ZstdLevel = Annotated[int, Range(low=1, high=22)]


@dataclass(frozen=True)
class FleetConfig:
    id: str = "demo"  # fleet id used in topics and partitions
    timezone: str = "Asia/Kolkata"  # IANA zone that defines the fleet's "yesterday"


@dataclass(frozen=True)
class IngestConfig:
    broker: str = "127.0.0.1:1883"  # HOST:PORT of the MQTT broker
    client_id: str = "fleetbms-ingest"  # also the persistent-session identity
    group: str = ""  # shared-subscription group; empty = plain subscription
    username: str = ""
    password: Secret = Secret("")  # noqa: RUF009 (immutable str subclass)
    tls_ca: str = ""  # path of a CA bundle; empty = no TLS
    tls_cert: str = ""
    tls_key: str = ""
    flush_rows: PosInt = 50_000  # readings buffered before a flush
    flush_age_s: PosFloat = 2.0  # oldest buffered reading waits at most this long [s]
    # unacknowledged QoS 1 messages the broker may send
    receive_maximum: Annotated[int, Range(low=1, high=65_535)] = 65_535
    # broker keeps the session this long offline [s]
    session_expiry_s: Annotated[int, Range(low=0, high=2**32 - 1)] = 7 * 24 * 3600
    max_payload_bytes: PosInt = 16 * 2**20  # larger messages are quarantined [bytes]
    dedup_window: PosInt = 256  # disjoint seq ranges remembered per VIN for dedup
    log_interval_s: PosFloat = 10.0  # one JSON counter line this often [s]
    metrics_port: Port = 0  # Prometheus endpoint; 0 = off
    reconnect_min_s: PosFloat = 1.0  # backoff start [s]
    reconnect_max_s: PosFloat = 60.0  # backoff cap [s]


@dataclass(frozen=True)
class AlertLimits:
    """Live hard limits of one chemistry (contract v1 defaults, science.md section 4)."""

    cell_max_mv: PosInt = 4250  # cell_overvoltage above this [mV]
    cell_min_mv: PosInt = 2800  # cell_undervoltage below this [mV]
    temp_max_c: float = 60.0  # over_temperature above this [degC]
    spread_max_mv: PosInt = 100  # cell_spread above this at rest [mV]
    rest_c_rate: PosFloat = 0.05  # "at rest" = |current| below this fraction of C [1/h]
    thermal_rise_c_per_min: PosFloat = 1.0  # thermal_rise above this while resting [degC/min]
    clear_margin_mv: NonNegInt = 20  # hysteresis: a voltage alert clears this far inside [mV]
    clear_margin_c: NonNegFloat = 3.0  # hysteresis for temperature alerts [degC]


@dataclass(frozen=True)
class AlertsConfig:
    nmc: AlertLimits = AlertLimits()
    lfp: AlertLimits = AlertLimits(cell_max_mv=3650, cell_min_mv=2500)
    # profile used for a VIN of unknown chemistry
    default_chemistry: Annotated[str, Choices(("nmc", "lfp"))] = "nmc"
    capacity_ah: PosFloat = 100.0  # nominal pack capacity for C-rates when unknown [Ah]
    thermal_window_s: PosFloat = 60.0  # thermal_rise: rate measured over at least this [s]


@dataclass(frozen=True)
class AnalyticsConfig:
    rest_min_s: PosInt = 3 * 3600  # rest needed before an OCV point is trusted [s]
    # capacity needs at least this SoC swing [%]
    min_soc_window_pct: Annotated[float, Range(above=0, high=100)] = 10.0
    reference_temp_c: float = 25.0  # resistance normalised to this [degC]
    history_days: PosInt = 730  # SoH fit window [days]
    rest_c_rate: PosFloat = 0.02  # |current| below this x capacity counts as rest [1/h]
    max_gap_s: PosFloat = 900.0  # a longer silence between readings is a data gap [s]
    step_min_c_rate: PosFloat = 0.2  # current step used for resistance [1/h]
    step_max_delay_s: PosFloat = 900.0  # a step's loaded reading at most this long after [s]
    over_temp_c: float = 60.0  # over-temperature event threshold (warranty usage) [degC]
    over_temp_spread_c: NonNegFloat = 10.0  # ... with the sensors' mean at most this below it [K]
    deep_discharge_soc_pct: Percent = 5.0  # deep-discharge event threshold [%]
    threads: NonNegInt = 0  # DuckDB threads; 0 = all cores


@dataclass(frozen=True)
class AnomalyConfig:
    training_days: PosInt = 90  # rolling window of the isolation forest [days]
    min_training_days: PosInt = 21  # no model before this much history [days]
    # expected share of anomalous training rows (sklearn)
    contamination: Annotated[float, Range(above=0, below=0.5)] = 0.01
    threshold_sigmas: PosFloat = 6.0  # flag threshold: median + this many robust sigmas
    random_state: Annotated[int, Range(low=0, high=2**32 - 1)] = 42
    n_estimators: PosInt = 100  # isolation trees
    max_samples: PosInt = 256  # rows per tree (Liu et al. 2008)
    refit_days: PosInt = 7  # refit at least this often [days]
    drift_days: PosInt = 7  # drift measured over this many days [days]
    drift_factor: PosFloat = 4.0  # refit when rows above threshold exceed this x training share
    persist_days: PosInt = 6  # model flag needs this many days above threshold ... [days]
    persist_window: PosInt = 8  # ... within this many days [days]
    clear_days: PosInt = 3  # a flag quiet on this many days with data is cleared [days]
    min_history_days: NonNegInt = 7  # days of cell data before the model judges a vehicle [days]
    top_features: NonNegInt = 3  # contributing features named per flag


#: Formats ``reports`` writes (its ``FORMATS``).
REPORT_FORMATS = ("pdf", "csv")

#: Names of the nightly stages in order (``pipeline._nightly.STAGES``, which imports this
#: module; a test keeps the two equal).
NIGHTLY_STAGES = (
    "compaction",
    "reconciliation",
    "analytics",
    "anomalies",
    "reports",
    "audit",
    "retention",
)


@dataclass(frozen=True)
class ReportsConfig:
    formats: Annotated[str, Choices(REPORT_FORMATS, many=True)] = "pdf,csv"
    # preset id or path of a TOML policy (relative to the working directory)
    warranty_policy: Annotated[str, WarrantyPolicyRef()] = "oem-8y-160k-70"
    audit_enabled: bool = False  # nightly writes an audit bundle too
    workers: PosInt = 2  # processes rendering vehicle PDFs
    vehicle_window_days: PosInt = 90  # days of cell and usage data in a vehicle report [days]


@dataclass(frozen=True)
class RetentionConfig:
    archive_after_days: NonNegInt = 400  # raw telemetry moves to the archive tier after [days]
    purge_after_days: PosInt = 3 * 365  # archived telemetry is deleted after [days]
    archive_zstd_level: ZstdLevel = 19


@dataclass(frozen=True)
class NightlyConfig:
    lock_timeout_s: NonNegFloat = 0.0  # wait this long for another run's lock; 0 = fail at once [s]
    lookback_days: NonNegInt = 2  # also redo earlier dates whose telemetry changed since [days]
    row_group_rows: PosInt = 250_000  # rows per row group of compacted telemetry [rows]
    compact_memory_rows: PosInt = 1_000_000  # bigger partitions merge in VIN ranges [rows]
    compact_file_rows: PosInt = 4_000_000  # a partition of 2x this is split into files [rows]
    compact_zstd_level: ZstdLevel = 3  # zstd level of compacted telemetry
    late_after_s: NonNegFloat = 3600.0  # a reading received later than this after ts is late [s]
    # comma-separated stage names not to run (recorded as skipped)
    skip_stages: Annotated[str, Choices(NIGHTLY_STAGES, many=True, empty=True)] = ""


@dataclass(frozen=True)
class Settings:
    """The effective configuration. ``sources`` maps ``section.key`` to where it came from."""

    data_dir: Path = Path("data")
    fleet: FleetConfig = FleetConfig()
    ingest: IngestConfig = IngestConfig()
    alerts: AlertsConfig = AlertsConfig()
    analytics: AnalyticsConfig = AnalyticsConfig()
    anomaly: AnomalyConfig = AnomalyConfig()
    reports: ReportsConfig = ReportsConfig()
    retention: RetentionConfig = RetentionConfig()
    nightly: NightlyConfig = NightlyConfig()
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def lake_dir(self) -> Path:
        return self.data_dir / "lake"

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "state"

    @property
    def truth_dir(self) -> Path:
        return self.data_dir / "truth"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"


T = TypeVar("T")


def env_key(*parts: str) -> str:
    """Environment variable of a key path: ``env_key("lake", "root")`` -> FLEETBMS_LAKE__ROOT."""
    return ENV_PREFIX + "__".join(p.upper() for p in parts)


def _hints(cls: type) -> dict[str, Any]:
    """Each field's type, without its ``Annotated`` constraints."""
    return typing.get_type_hints(cls)


def _constraints(cls: type) -> dict[str, tuple[Any, ...]]:
    """Each field's ``Range``/``Choices`` from its ``Annotated`` type (empty if none)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {k: getattr(t, "__metadata__", ()) for k, t in hints.items()}


def _coerce(value: Any, typ: Any, key: str, source: str) -> Any:
    """Coerce a TOML or environment value to ``typ``; raise ConfigError naming key and source."""
    where = f"(from {source})"
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: {value!r} is not a boolean {where}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: {value!r} is not an integer {where}")
    if typ is float:
        number = None
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        if number is None:
            raise ConfigError(f"{key}: {value!r} is not a number {where}")
        if not math.isfinite(number):
            raise ConfigError(f"{key}: {value!r} is not a finite number {where}")
        return number
    if typ is Path:
        if isinstance(value, str) and value.strip():
            return Path(value)
        if isinstance(value, str):
            raise ConfigError(f"{key}: an empty path is not a directory {where}")
        raise ConfigError(f"{key}: {value!r} is not a string {where}")
    if typ in (str, Secret):
        if isinstance(value, str):
            return typ(value)
        raise ConfigError(f"{key}: {value!r} is not a string {where}")
    if isinstance(typ, types.UnionType):
        raise ConfigError(f"{key}: unsupported type {typ}")
    raise ConfigError(f"{key}: unsupported type {typ}")


def _apply(
    obj: T, values: Mapping[str, Any], prefix: str, source: str, sources: dict[str, str]
) -> T:
    """Return ``obj`` (a config dataclass) with ``values`` (a nested mapping) applied."""
    hints = _hints(type(obj))
    constraints = _constraints(type(obj))
    names = {f.name for f in dataclasses.fields(obj) if f.name != "sources"}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in names:
            valid = ", ".join(sorted(names))
            raise ConfigError(f"{path}: unknown key (from {source}); valid keys: {valid}")
        typ = hints[key]
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path}: expected a table, got {value!r} (from {source})")
            changes[key] = _apply(current, value, f"{path}.", source, sources)
        else:
            changes[key] = _coerce(value, typ, path, source)
            for allowed in constraints[key]:
                problem = allowed.problem(changes[key])
                if problem:
                    raise ConfigError(f"{path}: {changes[key]!r} {problem} (from {source})")
            sources[path] = source
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


def _env_values(cls: type, parts: tuple[str, ...], env: Mapping[str, str]) -> dict[str, Any]:
    """Nested mapping of the environment variables that name fields of ``cls``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in ("sources", "data_dir"):
            continue
        typ = _hints(cls)[f.name]
        if dataclasses.is_dataclass(typ):
            sub = _env_values(typ, (*parts, f.name), env)  # type: ignore[arg-type]
            if sub:
                out[f.name] = sub
        else:
            name = env_key(*parts, f.name)
            if name in env:
                out[f.name] = env[name]
    return out


def _flatten_env_sources(values: Mapping[str, Any], parts: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flatten_env_sources(value, (*parts, key)))
        else:
            out[".".join((*parts, key))] = env_key(*parts, key)
    return out


def _check_env_names(env: Mapping[str, str]) -> None:
    """A ``FLEETBMS_SECTION__KEY`` variable that names no key is an error, as in the file.

    Variables without ``__`` (``FLEETBMS_DATA_DIR``, the tests' ``FLEETBMS_TEST_*``) are
    not configuration keys and are left alone, except one that starts with a section's
    name (``FLEETBMS_INGEST_FLUSH_ROWS``): a key written with one underscore too few,
    which would otherwise be ignored without a word.
    """
    sections = [
        f.name for f in dataclasses.fields(Settings) if f.name not in ("sources", "data_dir")
    ]
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        if "__" not in name:
            rest = name.removeprefix(ENV_PREFIX).lower()
            for section in sections:
                if rest == section:
                    raise ConfigError(f"{name}: {section} is a table; set its keys: {name}__KEY")
                if rest.startswith(section + "_"):
                    key = rest.removeprefix(section + "_")
                    raise ConfigError(
                        f"{name}: not a configuration variable (a section and its key are "
                        f"joined by two underscores: {env_key(section, key)})"
                    )
            continue
        parts = name.removeprefix(ENV_PREFIX).lower().split("__")
        cls: Any = Settings
        for depth, key in enumerate(parts):
            path = ".".join(parts[: depth + 1])
            names = sorted(
                f.name for f in dataclasses.fields(cls) if f.name not in ("sources", "data_dir")
            )
            if key not in names:
                raise ConfigError(
                    f"{path}: unknown key (from {name}); valid keys: {', '.join(names)}"
                )
            typ = _hints(cls)[key]
            last = depth == len(parts) - 1
            if dataclasses.is_dataclass(typ) and last:
                raise ConfigError(
                    f"{path}: a table, not a value (from {name}); set its keys: {name}__KEY"
                )
            if not dataclasses.is_dataclass(typ) and not last:
                raise ConfigError(
                    f"{'.'.join(parts)}: unknown key (from {name}); {path} is a value"
                )
            cls = typ
        if name != env_key(*parts):
            raise ConfigError(f"{name}: write it in capitals, {env_key(*parts)}")


def _apply_env(settings: Settings, env: Mapping[str, str], sources: dict[str, str]) -> Settings:
    values = _env_values(Settings, (), env)
    names = _flatten_env_sources(values, ())
    for path, name in names.items():
        # Apply key by key so an error names the exact variable.
        nested: dict[str, Any] = {}
        cursor = nested
        keys = path.split(".")
        for k in keys[:-1]:
            cursor = cursor.setdefault(k, {})
        cursor[keys[-1]] = env[name]
        settings = _apply(settings, nested, "", name, sources)
    return settings


def load_settings(
    *,
    config_file: Path | None = None,
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build the effective settings from defaults, a TOML file and the environment.

    ``data_dir`` (the ``--data-dir`` flag) beats ``FLEETBMS_DATA_DIR``, which beats
    ``data_dir`` in the file, which beats ``./data``.

    Raises
    ------
    ConfigError
        Unreadable or invalid file, unknown key (in the file, or a ``FLEETBMS_X__Y``
        variable), or a value of the wrong type or out of its field's range.
    """
    env = os.environ if env is None else env
    sources: dict[str, str] = {}
    settings = Settings()
    if config_file is not None:
        try:
            raw = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {config_file} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {config_file} is a directory") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {config_file} is not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(
                f"cannot read config file {config_file}: {exc.strerror or exc}"
            ) from None
        settings = _apply(settings, raw, "", str(config_file), sources)
    _check_env_names(env)
    settings = _apply_env(settings, env, sources)
    if data_dir is not None:
        settings = dataclasses.replace(settings, data_dir=data_dir)
        sources["data_dir"] = "--data-dir"
    elif "FLEETBMS_DATA_DIR" in env:
        path = _coerce(env["FLEETBMS_DATA_DIR"], Path, "data_dir", "FLEETBMS_DATA_DIR")
        settings = dataclasses.replace(settings, data_dir=path)
        sources["data_dir"] = "FLEETBMS_DATA_DIR"
    _check_relations(settings, sources)
    return dataclasses.replace(settings, sources=sources)


def _check_relations(settings: Settings, sources: Mapping[str, str]) -> None:
    """Checks across fields (each field's own range is checked where it is set): a value
    that contradicts another is refused here, not when a stage first uses it. The error
    names where each value came from (``sources``: key -> file, variable or ``flag``)."""
    s = settings

    def src(key: str) -> str:
        return sources.get(key, "default")

    pairs: list[tuple[str, float, str, float, bool]] = [
        # (name a, a, name b, b, strict): a < b (strict) or a <= b
        (
            "ingest.reconnect_min_s",
            s.ingest.reconnect_min_s,
            "ingest.reconnect_max_s",
            s.ingest.reconnect_max_s,
            False,
        ),
        (
            "anomaly.min_training_days",
            s.anomaly.min_training_days,
            "anomaly.training_days",
            s.anomaly.training_days,
            False,
        ),
        (
            "anomaly.persist_days",
            s.anomaly.persist_days,
            "anomaly.persist_window",
            s.anomaly.persist_window,
            False,
        ),
        (
            "retention.archive_after_days",
            s.retention.archive_after_days,
            "retention.purge_after_days",
            s.retention.purge_after_days,
            True,
        ),
    ]
    for chem in ("nmc", "lfp"):
        lim = getattr(s.alerts, chem)
        pairs.append(
            (
                f"alerts.{chem}.cell_min_mv",
                lim.cell_min_mv,
                f"alerts.{chem}.cell_max_mv",
                lim.cell_max_mv,
                True,
            )
        )
    for name_a, a, name_b, b, strict in pairs:
        if a > b or (strict and a == b):
            rel = "below" if strict else "at most"
            raise ConfigError(
                f"{name_a} = {a:g} must be {rel} {name_b} = {b:g} "
                f"({name_a} from {src(name_a)}, {name_b} from {src(name_b)})"
            )
    if not re.fullmatch(FLEET_PATTERN, s.fleet.id):
        raise ConfigError(
            f"fleet.id = {s.fleet.id!r} is not 1-64 characters of [A-Za-z0-9_-] "
            f"(from {src('fleet.id')})"
        )
    if not s.ingest.client_id.strip():
        raise ConfigError(
            f"ingest.client_id = {s.ingest.client_id!r} must not be empty: it names the broker "
            f"session that keeps readings while ingest is down (from {src('ingest.client_id')})"
        )
    try:
        ZoneInfo(s.fleet.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"fleet.timezone = {s.fleet.timezone!r} is not an IANA time zone (e.g. Asia/Kolkata) "
            f"(from {src('fleet.timezone')})"
        ) from None


def with_overrides(settings: Settings, overrides: Mapping[str, Any]) -> Settings:
    """Apply command-line flags (``{"ingest.broker": "host:1883"}``); ``None`` values skip."""
    sources = dict(settings.sources)
    for path, value in overrides.items():
        if value is None:
            continue
        nested: dict[str, Any] = {}
        cursor = nested
        keys = path.split(".")
        for k in keys[:-1]:
            cursor = cursor.setdefault(k, {})
        cursor[keys[-1]] = value
        settings = _apply(settings, nested, "", "flag", sources)
    _check_relations(settings, sources)
    return dataclasses.replace(settings, sources=sources)


def _toml_value(value: Any) -> str:
    if isinstance(value, Secret):
        return '"***"' if value else '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def render_settings(settings: Settings) -> str:
    """The effective configuration as TOML, each value commented with its source."""
    lines = [
        f"data_dir = {_toml_value(settings.data_dir)}"
        f"  # {settings.sources.get('data_dir', 'default')}"
    ]

    def section(obj: Any, prefix: str) -> None:
        scalars: list[tuple[str, Any]] = []
        tables: list[tuple[str, Any]] = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            (tables if dataclasses.is_dataclass(value) else scalars).append((f.name, value))
        lines.append("")
        lines.append(f"[{prefix}]")
        for name, value in scalars:
            src = settings.sources.get(f"{prefix}.{name}", "default")
            lines.append(f"{name} = {_toml_value(value)}  # {src}")
        for name, value in tables:
            section(value, f"{prefix}.{name}")

    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            section(value, f.name)
    return "\n".join(lines) + "\n"
