"""Anomaly machinery on small synthetic analytics outputs: model metadata and refusal,
determinism, status transitions, the command line."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import bms
from pipeline._cli import cli
from tests.bms.anomaly_data import (
    FLEET,
    START,
    Short,
    make_metrics_lake,
    vin,
    write_sensor_readings,
)

DAYS = 50
SHORT = Short(vehicle=3, cell=5, start=26, stop=34)
PARAMS = bms.AnomalyParams(min_training_days=14, n_estimators=50)


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir whose every date has been scored (catch-up run)."""
    data = tmp_path_factory.mktemp("anomaly") / "data"
    make_metrics_lake(data, vehicles=24, days=DAYS, shorts=(SHORT,))
    bms.score_pending_anomalies(data / "lake", data / "state", PARAMS)
    return data


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(src, dst)
    return dst


def _models(data: Path) -> list[Path]:
    return sorted((data / "state" / "models" / f"fleet={FLEET}").glob("if-*"))


def test_model_is_saved_with_metadata_and_checksum(scored: Path) -> None:
    models = _models(scored)
    assert models, "no model saved"
    meta = json.loads((models[-1] / "metadata.json").read_text())
    import sklearn

    assert meta["sklearn_version"] == sklearn.__version__
    assert meta["features"] == list(PARAMS.model_features)
    assert meta["contamination"] == PARAMS.contamination
    assert meta["random_state"] == PARAMS.random_state
    window = meta["training_window"]
    valid_from = date.fromisoformat(meta["valid_from"])
    assert date.fromisoformat(window["end"]) == valid_from - timedelta(days=1)
    assert date.fromisoformat(window["start"]) >= valid_from - timedelta(days=PARAMS.training_days)
    # training rows: vehicles past their warm-up and not flagged on that date
    expected = 0
    d = date.fromisoformat(window["start"])
    while d <= date.fromisoformat(window["end"]):
        part = f"date={d}/fleet={FLEET}/part.parquet"
        feats = pq.read_table(scored / "lake" / "anomaly_features" / part).to_pylist()
        flags = pq.read_table(scored / "lake" / "anomalies" / part).to_pylist()
        flagged = {r["vin"] for r in flags if r["status"] != "cleared"}
        expected += sum(
            1
            for r in feats
            if r["window_days"] >= PARAMS.min_history_days and r["vin"] not in flagged
        )
        d += timedelta(days=1)
    assert meta["training_rows"] == expected
    assert expected > 20 * 24
    assert len(meta["data_sha256"]) == 64
    assert meta["model_version"] == models[-1].name
    blob = (models[-1] / "model.joblib").read_bytes()
    assert hashlib.sha256(blob).hexdigest() == meta["model_sha256"]
    for f in PARAMS.model_features:
        s = meta["feature_stats"][f]
        assert s["low"] <= s["median"] <= s["high"]


def test_every_scored_date_names_its_model(scored: Path) -> None:
    t = bms.read_anomalies(scored / "lake")
    versions = set(t["model_version"].to_pylist())
    assert versions <= {m.name for m in _models(scored)}


def test_model_from_another_sklearn_version_is_refused_and_refitted(
    scored: Path, tmp_path: Path
) -> None:
    data = _copy(scored, tmp_path)
    last = _models(data)[-1]
    meta_path = last / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["sklearn_version"] = "0.24.2"
    meta_path.write_text(json.dumps(meta))
    root = data / "state" / "models" / f"fleet={FLEET}"
    with pytest.raises(bms.ModelRefusedError, match=r"saved by scikit-learn 0\.24\.2 but this is"):
        bms.load_anomaly_model(data / "state", FLEET, last.name)
    day = START + timedelta(days=DAYS - 1)
    summary = bms.score_anomalies(data / "lake", data / "state", day, PARAMS)
    (info,) = summary.models
    assert info.action == "refitted"
    assert "scikit-learn 0.24.2" in info.reason
    assert info.training_rows == meta["training_rows"]
    assert any(
        p.name.startswith(last.name + ".refused-sklearn_version")
        for p in (root / "retired").iterdir()
    )
    new_meta = json.loads((root / info.version / "metadata.json").read_text())
    assert new_meta["reason"] == "sklearn_version"
    # same window and data: the refitted model flags exactly as before
    before = pq.read_table(bms.anomalies_path(scored / "lake", day, FLEET))
    after = pq.read_table(bms.anomalies_path(data / "lake", day, FLEET))
    assert after.drop_columns(["model_version"]).equals(before.drop_columns(["model_version"]))


def test_model_with_wrong_checksum_is_refused_and_refitted(scored: Path, tmp_path: Path) -> None:
    data = _copy(scored, tmp_path)
    last = _models(data)[-1]
    blob = bytearray((last / "model.joblib").read_bytes())
    blob[-5] ^= 0xFF
    (last / "model.joblib").write_bytes(bytes(blob))
    day = START + timedelta(days=DAYS - 1)
    (info,) = bms.score_anomalies(data / "lake", data / "state", day, PARAMS).models
    assert info.action == "refitted"
    assert "SHA-256" in info.reason


def _break_missing_file(last: Path) -> None:
    (last / "model.joblib").unlink()


def _break_foreign_bytes(last: Path) -> None:
    # a file that is no pickle, with a checksum to match: the check passes, loading fails
    blob = b"not a pickle\n"
    (last / "model.joblib").write_bytes(blob)
    meta = json.loads((last / "metadata.json").read_text())
    meta["model_sha256"] = hashlib.sha256(blob).hexdigest()
    (last / "metadata.json").write_text(json.dumps(meta))


def _break_renamed_folder(last: Path) -> None:
    # another model's folder under a name of its own (copied in by hand)
    last.rename(last.with_name(last.name[:-10] + "foreign000"))


@pytest.mark.parametrize(
    "breakage", [_break_missing_file, _break_foreign_bytes, _break_renamed_folder]
)
def test_unloadable_model_folder_is_refused_and_refitted(
    scored: Path, tmp_path: Path, breakage: Any
) -> None:
    data = _copy(scored, tmp_path)
    last = _models(data)[-1]
    breakage(last)
    day = START + timedelta(days=DAYS - 1)
    (info,) = bms.score_anomalies(data / "lake", data / "state", day, PARAMS).models
    assert info.action == "refitted"
    assert info.version == last.name
    root = data / "state" / "models" / f"fleet={FLEET}"
    assert [p.name.split(".")[1] for p in (root / "retired").iterdir()] == ["refused-format"]
    path = bms.anomalies_path(data / "lake", day, FLEET)
    assert path.read_bytes() == bms.anomalies_path(scored / "lake", day, FLEET).read_bytes()
    # and from the command line: one line, no traceback
    breakage(root / info.version)
    res = CliRunner().invoke(
        cli,
        ["--data-dir", str(data), "anomalies", "--date", str(day)],
        env={"FLEETBMS_ANOMALY__MIN_TRAINING_DAYS": "14", "FLEETBMS_ANOMALY__N_ESTIMATORS": "50"},
    )
    assert res.exit_code == 0, res.output
    assert "refitted" in res.output


def test_a_date_without_any_vehicle_row_is_scored(scored: Path, tmp_path: Path) -> None:
    """All vehicles offline (or today's first readings, too few for a vehicle_day row):
    no feature rows, open flags carried on; it used to crash in the feature builder."""
    data = _copy(scored, tmp_path)
    day = START + timedelta(days=DAYS)
    last = bms.anomalies_path(data / "lake", day - timedelta(days=1), FLEET).parent.parent
    for table in ("vehicle_day", "cell_day", "vehicle_soh"):
        src = data / "lake" / "metrics" / table / last.name / f"fleet={FLEET}" / "part.parquet"
        empty = pq.read_table(src).schema.empty_table()
        bms.write_parquet_atomic(
            empty,
            data / "lake" / "metrics" / table / f"date={day}" / f"fleet={FLEET}" / "part.parquet",
        )
    summary = bms.score_anomalies(data / "lake", data / "state", day, PARAMS)
    assert summary.vehicles == 0
    features = data / "lake" / "anomaly_features" / f"date={day}" / f"fleet={FLEET}"
    assert pq.read_table(features / "part.parquet").num_rows == 0
    assert bms.anomalies_path(data / "lake", day, FLEET).is_file()


def test_rerun_is_byte_identical_even_after_losing_the_models(scored: Path, tmp_path: Path) -> None:
    data = _copy(scored, tmp_path)
    day = START + timedelta(days=DAYS - 2)
    path = bms.anomalies_path(data / "lake", day, FLEET)
    original = path.read_bytes()
    bms.score_anomalies(data / "lake", data / "state", day, PARAMS)
    assert path.read_bytes() == original
    shutil.rmtree(data / "state" / "models")
    bms.score_anomalies(data / "lake", data / "state", day, PARAMS)
    assert path.read_bytes() == original


def test_status_goes_new_ongoing_cleared(scored: Path) -> None:
    t = bms.read_anomalies(scored / "lake")
    rows = [r for r in t.to_pylist() if r["vin"] == vin(SHORT.vehicle) and r["cell"] == SHORT.cell]
    statuses = [r["status"] for r in sorted(rows, key=lambda r: r["date"])]
    assert statuses[0] == "new"
    assert statuses[-1] == "cleared"
    assert set(statuses[1:-1]) == {"ongoing"}
    first = min(r["date"] for r in rows)
    assert START + timedelta(days=SHORT.start) <= first <= START + timedelta(days=SHORT.start + 5)
    assert {r["first_seen"] for r in rows} == {first}
    last = max(r["date"] for r in rows)
    assert last >= START + timedelta(days=SHORT.stop)
    flagged = [r for r in rows if r["status"] != "cleared"]
    assert all("self_discharge" in r["rules"] or r["source"] != "rule" for r in flagged[:3])
    assert any(r["source"] == "both" for r in rows)
    assert all(f"cell {SHORT.cell}" in r["evidence"] for r in flagged)
    # after clearing the entity is gone
    later = [r for r in t.to_pylist() if r["date"] > last and r["vin"] == vin(SHORT.vehicle)]
    assert later == []


def test_a_flag_does_not_clear_while_its_vehicle_sends_nothing(
    scored: Path, tmp_path: Path
) -> None:
    """A vehicle that goes offline with an open flag (its fault may be why) is not
    quiet: the flag stays ongoing until a day with its data finds it quiet long enough
    (days without data used to count, clearing it after clear_days offline)."""
    import pyarrow.compute as pc

    data = _copy(scored, tmp_path)
    v = vin(SHORT.vehicle)
    rows = [
        r
        for r in bms.read_anomalies(data / "lake").to_pylist()
        if r["vin"] == v and r["cell"] == SHORT.cell
    ]
    cleared_on = max(r["date"] for r in rows)
    assert next(r for r in rows if r["date"] == cleared_on)["status"] == "cleared"
    last_flagged = max(r["last_flagged"] for r in rows)
    offline = [
        last_flagged + timedelta(days=k) for k in range(1, (cleared_on - last_flagged).days + 1)
    ]
    for day in offline:
        for name in ("vehicle_day", "cell_day", "vehicle_soh"):
            path = bms.metrics_path(data / "lake", name, day, FLEET)
            table = pq.read_table(path)
            bms.write_parquet_atomic(table.filter(pc.not_equal(table["vin"], v)), path)
    for day in offline:
        bms.score_anomalies(data / "lake", data / "state", day, PARAMS)
    after = {
        r["date"]: r["status"]
        for r in bms.read_anomalies(data / "lake").to_pylist()
        if r["vin"] == v and r["cell"] == SHORT.cell and r["date"] in offline
    }
    assert after == dict.fromkeys(offline, "ongoing")


def test_a_flag_clears_after_clear_days_with_data_not_calendar_days(
    scored: Path, tmp_path: Path
) -> None:
    """A vehicle offline for four days after its last finding, then back and quiet: its
    flag clears on its third quiet day with data (clear_days), not on its first day back
    (the calendar days offline used to count)."""
    import pyarrow.compute as pc

    data = _copy(scored, tmp_path)
    v = vin(SHORT.vehicle)
    rows = [
        r
        for r in bms.read_anomalies(data / "lake").to_pylist()
        if r["vin"] == v and r["cell"] == SHORT.cell
    ]
    last_flagged = max(r["last_flagged"] for r in rows)
    offline = [last_flagged + timedelta(days=k) for k in range(1, 5)]
    back = [offline[-1] + timedelta(days=k) for k in range(1, PARAMS.clear_days + 1)]
    assert back[-1] < START + timedelta(days=DAYS)
    for day in offline:
        for name in ("vehicle_day", "cell_day", "vehicle_soh"):
            path = bms.metrics_path(data / "lake", name, day, FLEET)
            table = pq.read_table(path)
            bms.write_parquet_atomic(table.filter(pc.not_equal(table["vin"], v)), path)
    for day in offline + back:
        bms.score_anomalies(data / "lake", data / "state", day, PARAMS)
    after = {
        r["date"]: (r["status"], r["last_flagged"])
        for r in bms.read_anomalies(data / "lake").to_pylist()
        if r["vin"] == v and r["cell"] == SHORT.cell and r["date"] > last_flagged
    }
    assert after == {
        **dict.fromkeys(offline + back[:-1], ("ongoing", last_flagged)),
        back[-1]: ("cleared", last_flagged),
    }


def test_evidence_states_each_rule_limit_with_the_value_sign_and_no_dash_unit(
    scored: Path,
) -> None:
    """A draining cell's deviation trend of -3.9 mV/day read "(limit 2)", as if it were
    below its limit; unitless features read "drift_growth_z=7.85 - (fleet normal ...)"."""
    rule_clause = re.compile(
        r"([a-z_]+)(?: (?:cell|sensor) \d+)?: (\S+)(?: [^\s(]+)? \(limit (\S+)\)"
    )
    seen = set()
    for r in bms.read_anomalies(scored / "lake").to_pylist():
        for part in r["evidence"].split("; "):
            assert " - (fleet normal" not in part, part
            assert not part.endswith(" -"), part
            if m := rule_clause.fullmatch(part):
                value, limit = float(m[2]), float(m[3])
                assert (value < 0) == (limit < 0), part
                seen.add(m[1])
    assert "deviation_growth" in seen


_FEATURE_CLAUSE = re.compile(r"(\w+)=(\S+)(?: \S+)? \(fleet normal (\S+)\.\.(\S+)\)")


def test_a_flag_raised_by_rules_only_lists_only_features_outside_their_normal_range(
    scored: Path, tmp_path: Path
) -> None:
    """A healthy vehicle whose pack reached 56 degC one day is flagged by temp_high
    alone: its evidence states the rule and lists no model feature inside the fleet's
    normal range (it listed the model's top three, in range or not: noise that hid the
    reason)."""
    data = _copy(scored, tmp_path)
    day = START + timedelta(days=DAYS - 1)
    hot = vin(7)
    path = bms.metrics_path(data / "lake", "vehicle_day", day, FLEET)
    table = pq.read_table(path)
    temps = [
        56.0 if v == hot else t
        for v, t in zip(table["vin"].to_pylist(), table["temp_c_max"].to_pylist(), strict=True)
    ]
    table = table.set_column(
        table.schema.get_field_index("temp_c_max"), "temp_c_max", pa.array(temps, pa.float64())
    )
    bms.write_parquet_atomic(table, path)
    bms.score_anomalies(data / "lake", data / "state", day, PARAMS)
    rows = bms.read_anomalies(data / "lake", [day]).to_pylist()
    (row,) = [r for r in rows if r["vin"] == hot]
    assert (row["source"], row["rules"]) == ("rule", ["temp_high"])
    assert row["evidence"].startswith("temp_high: 56 degC (limit 55)")
    rule_only = [r for r in bms.read_anomalies(data / "lake").to_pylist() if r["source"] == "rule"]
    assert len(rule_only) > 1
    for r in rule_only:
        listed = []
        for part in r["evidence"].split("; "):
            if m := _FEATURE_CLAUSE.fullmatch(part):
                value, low, high = float(m[2]), float(m[3]), float(m[4])
                assert not low <= value <= high, (r["vin"], r["date"], part)
                listed.append(m[1])
        assert listed == [t["feature"] for t in r["top_features"]]
        for t in r["top_features"]:
            assert not t["normal_low"] <= t["value"] <= t["normal_high"], t


def _parked_temps_c(stuck_c: float | None = None, cadence_s: int = 300) -> np.ndarray:
    """Four sensors following a parked pack's daily swing of 3 degC, a reading every
    ``cadence_s``; sensor 0 stuck at ``stuck_c`` (below the others: the pack median
    stays)."""
    hours = np.arange(86_400 // cadence_s) * cadence_s / 3600
    temps = np.repeat((26.0 + 1.5 * np.sin(2 * np.pi * hours / 24))[:, None], 4, axis=1)
    if stuck_c is not None:
        temps[:, 0] = stuck_c
    return temps


def test_stuck_sensor_evidence_names_its_value_and_since_when(scored: Path, tmp_path: Path) -> None:
    """A sensor stuck at 24.0 degC for five days (the vehicle offline on one of them),
    at 25.0 the day before: the evidence says which sensor, the value and since when
    (it said only 'sensor_stuck sensor 0: 1 (limit 1)')."""
    import pyarrow.compute as pc

    data = _copy(scored, tmp_path)
    v = vin(9)
    days = [START + timedelta(days=k) for k in range(43, 50)]
    offline = days[4]
    stuck = {days[1]: 25.0} | {d: 24.0 for d in days[2:] if d != offline}
    for day in days:
        if day == offline:
            for name in ("vehicle_day", "cell_day", "vehicle_soh"):
                path = bms.metrics_path(data / "lake", name, day, FLEET)
                table = pq.read_table(path)
                bms.write_parquet_atomic(table.filter(pc.not_equal(table["vin"], v)), path)
        else:
            write_sensor_readings(data / "lake", v, day, _parked_temps_c(stuck.get(day)))
    for day in days:
        bms.score_anomalies(data / "lake", data / "state", day, PARAMS)
    evidence = {
        r["date"]: r["evidence"]
        for r in bms.read_anomalies(data / "lake", days).to_pylist()
        if r["vin"] == v and r["cell"] == -1
    }
    assert set(evidence) == set(days[1:])
    # offline: the flag and its evidence carried on
    assert evidence[offline] == evidence[days[3]]
    stuck_clauses = {d: e.split("; ")[:2] for d, e in evidence.items()}
    rule = "sensor_stuck sensor 0: 1 (limit 1)"
    assert stuck_clauses[days[1]] == [
        rule,
        f"sensor 0 stuck at 25.0 degC since {days[1]} (stuck all day on 1 day with its data)",
    ]
    assert stuck_clauses[days[2]] == [
        rule,
        f"sensor 0 stuck at 24.0 degC since {days[2]} (stuck all day on 1 day with its data)",
    ]
    assert stuck_clauses[days[-1]] == [
        rule,
        f"sensor 0 stuck at 24.0 degC since {days[2]} (stuck all day on 4 days with its data)",
    ]


def test_a_spike_is_not_a_critical_temperature(scored: Path, tmp_path: Path) -> None:
    """Two parked vehicles whose sensor read 71.2 or 58.2 degC once: on an erratic sensor
    (3 degC of noise) the erratic finding says so and no temp_high is raised; on a sound
    one (one glitch in 2,880 readings: not erratic), a temp_high warning on that sensor
    says the reading was not held. Both were critical over-temperatures on the day's
    hottest reading."""
    data = _copy(scored, tmp_path)
    day = START + timedelta(days=DAYS - 1)
    noisy, glitch = vin(10), vin(11)
    cadence_s = {noisy: 300, glitch: 30}
    temps = {v: _parked_temps_c(cadence_s=c) for v, c in cadence_s.items()}
    temps[noisy][:, 2] += np.random.default_rng(1).normal(0.0, 3.0, len(temps[noisy]))
    temps[noisy][100, 2] = 71.2
    temps[glitch][1000, 1] = 58.2
    for v, t in temps.items():
        write_sensor_readings(data / "lake", v, day, t, cadence_s=cadence_s[v])
    path = bms.metrics_path(data / "lake", "vehicle_day", day, FLEET)
    table = pq.read_table(path)
    hottest = [
        float(np.round(temps[v].max(), 1)) if v in temps else t
        for v, t in zip(table["vin"].to_pylist(), table["temp_c_max"].to_pylist(), strict=True)
    ]
    table = table.set_column(
        table.schema.get_field_index("temp_c_max"), "temp_c_max", pa.array(hottest, pa.float64())
    )
    bms.write_parquet_atomic(table, path)
    bms.score_anomalies(data / "lake", data / "state", day, PARAMS)
    rows = {r["vin"]: r for r in bms.read_anomalies(data / "lake", [day]).to_pylist()}
    row = rows[noisy]
    assert (row["rules"], row["severity"], row["sensor"]) == (["sensor_erratic"], "warning", 2)
    assert row["evidence"].split("; ")[1] == (
        "sensor 2 reached 71.2 degC, not counted as the pack's temperature "
        "(the other sensors held at most 27.5 degC)"
    )
    row = rows[glitch]
    assert (row["rules"], row["severity"], row["sensor"]) == (["temp_high"], "warning", 1)
    assert row["evidence"].split("; ")[:2] == [
        "temp_high sensor 1: 58.2 degC (limit 55)",
        "sensor 1 reached 58.2 degC in single readings only, not held on a second "
        "(the sensors held at most 27.5 degC)",
    ]


def test_no_other_vehicle_is_flagged(scored: Path) -> None:
    t = bms.read_anomalies(scored / "lake")
    assert set(t["vin"].to_pylist()) == {vin(SHORT.vehicle)}


def test_pending_dates_are_empty_after_catch_up_and_follow_changed_inputs(
    scored: Path, tmp_path: Path
) -> None:
    data = _copy(scored, tmp_path)
    assert bms.pending_anomaly_dates(data / "lake", data / "state") == {}
    day = START + timedelta(days=40)
    part = (
        data / "lake" / "metrics" / "cell_day" / f"date={day}" / f"fleet={FLEET}" / "part.parquet"
    )
    bms.write_parquet_atomic(pq.read_table(part), part)
    pending = bms.pending_anomaly_dates(data / "lake", data / "state")
    assert pending == {FLEET: [START + timedelta(days=k) for k in range(40, DAYS)]}


def test_top_features_carry_the_fleet_normal_range(scored: Path) -> None:
    t = bms.read_anomalies(scored / "lake")
    row = next(r for r in t.to_pylist() if r["source"] == "both")
    top = row["top_features"]
    assert len(top) == PARAMS.top_features
    assert top[0]["feature"] in ("self_discharge_z", "drift_z", "drift_growth_z")
    assert top[0]["value"] > top[0]["normal_high"]
    assert top[0]["distance"] >= top[1]["distance"] >= top[2]["distance"]
    assert row["score"] > row["threshold"]


def test_params_reject_unknown_feature() -> None:
    with pytest.raises(ValueError, match="unknown model feature"):
        dataclasses.replace(PARAMS, model_features=("nope",))


def test_cli_scores_a_date_and_trains(scored: Path, tmp_path: Path) -> None:
    data = _copy(scored, tmp_path)
    day = START + timedelta(days=DAYS - 1)
    runner = CliRunner()
    env = {"FLEETBMS_ANOMALY__MIN_TRAINING_DAYS": "14", "FLEETBMS_ANOMALY__N_ESTIMATORS": "50"}
    res = runner.invoke(cli, ["--data-dir", str(data), "anomalies", "--date", str(day)], env=env)
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"{day} fleets {FLEET}: 24 vehicles, ")
    res = runner.invoke(cli, ["--data-dir", str(data), "anomalies"], env=env)
    assert res.exit_code == 0, res.output
    assert res.output == "all analysed dates are scored\n"
    res = runner.invoke(
        cli, ["--data-dir", str(data), "anomalies", "train", "--fleet", FLEET], env=env
    )
    assert res.exit_code == 0, res.output
    assert f"scores from {day + timedelta(days=1)}" in res.output
    res = runner.invoke(
        cli, ["--data-dir", str(data), "anomalies", "--date", "2030-01-01"], env=env
    )
    assert res.exit_code == 1
    assert res.output.startswith("Error: no analytics output for 2030-01-01 in ")
