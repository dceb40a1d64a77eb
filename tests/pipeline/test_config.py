"""Layered configuration: defaults < TOML < environment < flags, and its errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import ConfigError, cli, load_settings
from pipeline._config import Secret, render_settings, with_overrides
from tests.pipeline.nightly_data import FLEETBMS, cli_env


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleetbms.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment() -> None:
    settings = load_settings(env={})
    assert settings.data_dir == Path("data")
    assert settings.ingest.flush_rows == 50_000
    assert settings.lake_dir == Path("data/lake")
    assert settings.alerts.lfp.cell_max_mv == 3650


def test_layers_override_in_order(tmp_path: Path) -> None:
    conf = write(
        tmp_path, "[ingest]\nflush_rows = 10\nflush_age_s = 5\n[alerts.lfp]\ntemp_max_c = 55\n"
    )
    env = {"FLEETBMS_INGEST__FLUSH_ROWS": "20", "FLEETBMS_ALERTS__LFP__CELL_MAX_MV": "3600"}
    settings = load_settings(config_file=conf, env=env)
    assert settings.ingest.flush_rows == 20
    assert settings.ingest.flush_age_s == 5.0
    assert settings.alerts.lfp.temp_max_c == 55.0
    assert settings.alerts.lfp.cell_max_mv == 3600
    assert settings.sources["ingest.flush_rows"] == "FLEETBMS_INGEST__FLUSH_ROWS"
    assert settings.sources["ingest.flush_age_s"] == str(conf)
    flagged = with_overrides(settings, {"ingest.flush_rows": 30, "ingest.broker": None})
    assert flagged.ingest.flush_rows == 30
    assert flagged.sources["ingest.flush_rows"] == "flag"
    assert flagged.ingest.broker == settings.ingest.broker


def test_data_dir_flag_beats_environment(tmp_path: Path) -> None:
    env = {"FLEETBMS_DATA_DIR": "/srv/fleet"}
    assert load_settings(env=env).data_dir == Path("/srv/fleet")
    assert load_settings(env=env, data_dir=tmp_path).data_dir == tmp_path


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (
            "",
            {"FLEETBMS_INGEST__FLUSH_ROWS": "many"},
            "ingest.flush_rows: 'many' is not an integer (from FLEETBMS_INGEST__FLUSH_ROWS)",
        ),
        ("[ingest]\nflush_age_s = 'soon'\n", {}, "ingest.flush_age_s: 'soon' is not a number"),
        ("[ingest]\nflush_rowz = 1\n", {}, "ingest.flush_rowz: unknown key"),
        ("[nosuch]\nx = 1\n", {}, "nosuch: unknown key"),
        (
            "[reports]\naudit_enabled = 'maybe'\n",
            {},
            "reports.audit_enabled: 'maybe' is not a boolean",
        ),
        ("[ingest\n", {}, "is not valid TOML"),
        (
            "",
            {"FLEETBMS_ANALYTICS__HISTORY_DAYS": "-5"},
            "analytics.history_days: -5 must be at least 1 (from FLEETBMS_ANALYTICS__HISTORY_DAYS)",
        ),
        ("[analytics]\nhistory_days = 0\n", {}, "analytics.history_days: 0 must be at least 1"),
        (
            "",
            {"FLEETBMS_ANALYTICS__MIN_SOC_WINDOW_PCT": "inf"},
            "analytics.min_soc_window_pct: 'inf' is not a finite number",
        ),
        (
            "[analytics]\nmin_soc_window_pct = nan\n",
            {},
            "analytics.min_soc_window_pct: nan is not a finite number",
        ),
        (
            "[analytics]\nmin_soc_window_pct = 0\n",
            {},
            "analytics.min_soc_window_pct: 0.0 must be greater than 0 and at most 100",
        ),
        (
            "",
            {"FLEETBMS_ANALYTICS__REST_MIN_S": "-1"},
            "analytics.rest_min_s: -1 must be at least 1",
        ),
        ("", {"FLEETBMS_ANALYTICS__THREADS": "-3"}, "analytics.threads: -3 must be at least 0"),
        ("", {"FLEETBMS_REPORTS__WORKERS": "-1"}, "reports.workers: -1 must be at least 1"),
        (
            "",
            {"FLEETBMS_REPORTS__FORMATS": "pdf,xls"},
            "reports.formats: 'pdf,xls' must be a comma-separated list of pdf, csv",
        ),
        (
            "[reports]\nformats = ''\n",
            {},
            "reports.formats: '' must be a comma-separated list of pdf, csv",
        ),
        (
            "[anomaly]\ncontamination = 0.5\n",
            {},
            "anomaly.contamination: 0.5 must be greater than 0 and less than 0.5",
        ),
        (
            "[retention]\narchive_zstd_level = 23\n",
            {},
            "retention.archive_zstd_level: 23 must be at least 1 and at most 22",
        ),
        (
            "",
            {"FLEETBMS_DATA_DIR": ""},
            "data_dir: an empty path is not a directory (from FLEETBMS_DATA_DIR)",
        ),
        ("data_dir = ' '\n", {}, "data_dir: an empty path is not a directory"),
    ],
)
def test_bad_values_name_key_value_and_source(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(config_file=write(tmp_path, text), env=env)


def test_secret_never_shows() -> None:
    settings = load_settings(env={"FLEETBMS_INGEST__PASSWORD": "hunter2"})
    assert settings.ingest.password == "hunter2"
    assert isinstance(settings.ingest.password, Secret)
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in render_settings(settings)


def test_config_show_prints_effective_values_with_sources(tmp_path: Path) -> None:
    conf = write(tmp_path, "[fleet]\nid = 'blr-buses'\n")
    result = CliRunner().invoke(
        cli, ["--config", str(conf), "config", "show"], env={"FLEETBMS_INGEST__FLUSH_ROWS": "7"}
    )
    assert result.exit_code == 0, result.output
    assert f'id = "blr-buses"  # {conf}' in result.output
    assert "flush_rows = 7  # FLEETBMS_INGEST__FLUSH_ROWS" in result.output
    assert 'timezone = "Asia/Kolkata"  # default' in result.output


def test_config_show_with_a_missing_file_is_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "nope.toml"), "config", "show"])
    assert result.exit_code == 1
    assert result.output == f"Error: config file {tmp_path / 'nope.toml'} does not exist\n"


def test_values_at_their_bounds_are_accepted() -> None:
    env = {
        "FLEETBMS_ANALYTICS__THREADS": "0",
        "FLEETBMS_NIGHTLY__LOOKBACK_DAYS": "0",
        "FLEETBMS_RETENTION__ARCHIVE_AFTER_DAYS": "0",
        "FLEETBMS_INGEST__METRICS_PORT": "65535",
        "FLEETBMS_ANALYTICS__MIN_SOC_WINDOW_PCT": "100",
        "FLEETBMS_REPORTS__FORMATS": " CSV ,pdf",
    }
    settings = load_settings(env=env)
    assert settings.analytics.threads == 0
    assert settings.nightly.lookback_days == 0
    assert settings.retention.archive_after_days == 0
    assert settings.ingest.metrics_port == 65535
    assert settings.analytics.min_soc_window_pct == 100.0
    assert settings.reports.formats == " CSV ,pdf"


def test_config_show_output_is_a_valid_config_file(tmp_path: Path) -> None:
    """Every default is within its field's bounds: the printed defaults load back."""
    defaults = load_settings(env={})
    again = load_settings(config_file=write(tmp_path, render_settings(defaults)), env={})
    assert again == defaults


def test_flags_are_checked_like_the_file_and_environment() -> None:
    with pytest.raises(ConfigError, match=r"ingest.flush_rows: 0 must be at least 1 \(from flag\)"):
        with_overrides(load_settings(env={}), {"ingest.flush_rows": 0})


@pytest.mark.parametrize(
    ("env", "args", "code", "message"),
    [
        (
            {"FLEETBMS_ANALYTICS__HISTORY_DAYS": "-5"},
            [],
            1,
            "Error: analytics.history_days: -5 must be at least 1 "
            "(from FLEETBMS_ANALYTICS__HISTORY_DAYS)",
        ),
        (
            {"FLEETBMS_DATA_DIR": ""},
            [],
            1,
            "Error: data_dir: an empty path is not a directory (from FLEETBMS_DATA_DIR)",
        ),
        (
            {},
            ["--data-dir", ""],
            2,
            "Error: Invalid value for '--data-dir': an empty path is not a directory",
        ),
    ],
)
def test_bad_values_on_the_command_line_are_one_line(
    env: dict[str, str], args: list[str], code: int, message: str
) -> None:
    r = subprocess.run(
        [FLEETBMS, *args, "config", "show"],
        env=cli_env(**env),
        capture_output=True,
        text=True,
        check=False,
    )
    assert (r.returncode, r.stderr, r.stdout) == (code, message + "\n", "")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "FLEETBMS_ANALYTICS__HISTROY_DAYS",
            "analytics.histroy_days: unknown key (from FLEETBMS_ANALYTICS__HISTROY_DAYS); "
            "valid keys: deep_discharge_soc_pct, history_days, ",
        ),
        (
            "FLEETBMS_NOPE__X",
            "nope: unknown key (from FLEETBMS_NOPE__X); valid keys: alerts, analytics, anomaly, "
            "fleet, ingest, nightly, reports, retention",
        ),
        (
            "FLEETBMS_ALERTS__NMC",
            "alerts.nmc: a table, not a value (from FLEETBMS_ALERTS__NMC); "
            "set its keys: FLEETBMS_ALERTS__NMC__KEY",
        ),
        (
            "FLEETBMS_INGEST__BROKER__HOST",
            "ingest.broker.host: unknown key (from FLEETBMS_INGEST__BROKER__HOST); "
            "ingest.broker is a value",
        ),
        (
            "FLEETBMS_analytics__history_days",
            "FLEETBMS_analytics__history_days: write it in capitals, "
            "FLEETBMS_ANALYTICS__HISTORY_DAYS",
        ),
        # one underscore between section and key: ignored without a word until now
        (
            "FLEETBMS_INGEST_FLUSH_ROWS",
            "FLEETBMS_INGEST_FLUSH_ROWS: not a configuration variable (a section and its key "
            "are joined by two underscores: FLEETBMS_INGEST__FLUSH_ROWS)",
        ),
        (
            "FLEETBMS_INGEST",
            "FLEETBMS_INGEST: ingest is a table; set its keys: FLEETBMS_INGEST__KEY",
        ),
    ],
)
def test_an_unknown_environment_key_is_an_error_like_in_the_file(name: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={name: "30"})
    assert str(info.value).startswith(message)


def test_environment_variables_that_are_not_keys_still_work(tmp_path: Path) -> None:
    """FLEETBMS_DATA_DIR and the tests' pause hooks have no SECTION__KEY form."""
    env = {
        "FLEETBMS_DATA_DIR": str(tmp_path),
        "FLEETBMS_TEST_PAUSE_AT": "before:compaction",
        "FLEETBMS_TEST_PAUSE_FILE": str(tmp_path / "flag"),
        "FLEETBMS_ALERTS__LFP__CELL_MAX_MV": "3600",
    }
    settings = load_settings(env=env)
    assert settings.data_dir == tmp_path
    assert settings.alerts.lfp.cell_max_mv == 3600


def test_an_unknown_environment_key_on_the_command_line_is_one_line() -> None:
    r = subprocess.run(
        [FLEETBMS, "config", "show"],
        env=cli_env(FLEETBMS_ANALYTICS__HISTROY_DAYS="30"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith(
        "Error: analytics.histroy_days: unknown key (from FLEETBMS_ANALYTICS__HISTROY_DAYS); "
    )
    assert len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"FLEETBMS_INGEST__RECONNECT_MIN_S": "100"},
            "ingest.reconnect_min_s = 100 must be at most ingest.reconnect_max_s = 60 "
            "(ingest.reconnect_min_s from {source}, ingest.reconnect_max_s from default)",
        ),
        (
            {"FLEETBMS_ANOMALY__PERSIST_DAYS": "9"},
            "anomaly.persist_days = 9 must be at most anomaly.persist_window = 8 "
            "(anomaly.persist_days from {source}, anomaly.persist_window from default)",
        ),
        (
            {"FLEETBMS_ANOMALY__MIN_TRAINING_DAYS": "100"},
            "anomaly.min_training_days = 100 must be at most anomaly.training_days = 90 "
            "(anomaly.min_training_days from {source}, anomaly.training_days from default)",
        ),
        (
            {"FLEETBMS_RETENTION__ARCHIVE_AFTER_DAYS": "1095"},
            "retention.archive_after_days = 1095 must be below retention.purge_after_days = 1095 "
            "(retention.archive_after_days from {source}, "
            "retention.purge_after_days from default)",
        ),
        (
            {"FLEETBMS_ALERTS__LFP__CELL_MIN_MV": "3650"},
            "alerts.lfp.cell_min_mv = 3650 must be below alerts.lfp.cell_max_mv = 3650 "
            "(alerts.lfp.cell_min_mv from {source}, alerts.lfp.cell_max_mv from default)",
        ),
        (
            {"FLEETBMS_FLEET__ID": "a/b"},
            "fleet.id = 'a/b' is not 1-64 characters of [A-Za-z0-9_-] (from {source})",
        ),
        (
            {"FLEETBMS_INGEST__CLIENT_ID": " "},
            "ingest.client_id = ' ' must not be empty: it names the broker session that "
            "keeps readings while ingest is down (from {source})",
        ),
        (
            {"FLEETBMS_FLEET__TIMEZONE": "Mars/Olympus"},
            "fleet.timezone = 'Mars/Olympus' is not an IANA time zone (e.g. Asia/Kolkata) "
            "(from {source})",
        ),
    ],
)
def test_values_that_contradict_each_other_are_refused_when_loaded(
    env: dict[str, str], message: str
) -> None:
    """A limit above its partner (or a fleet id or zone no stage could use) is refused
    when the configuration is read, not when a stage first uses it (a backoff starting
    above its cap, retention purging before it archives, a model needing more history
    than it trains on). The error names where the values came from."""
    ((name, value),) = env.items()
    with pytest.raises(ConfigError) as err:
        load_settings(env=env)
    assert str(err.value) == message.format(source=name)
    # the same from a flag
    key = name.removeprefix("FLEETBMS_").lower().replace("__", ".")
    with pytest.raises(ConfigError) as err:
        with_overrides(load_settings(env={}), {key: value})
    assert str(err.value) == message.format(source="flag")


PRESETS = (
    "euro7-m1, euro7-n1, oem-2w-8y-80k-70, oem-8y-160k-70, oem-8y-240k-70, uk-zev-8y-100kmi-70, "
    "un-gtr22"
)


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (
            "",
            {"FLEETBMS_NIGHTLY__SKIP_STAGES": "foo"},
            "nightly.skip_stages: 'foo' must be a comma-separated list of compaction, "
            "reconciliation, analytics, anomalies, reports, audit, retention "
            "(from FLEETBMS_NIGHTLY__SKIP_STAGES)",
        ),
        (
            "[nightly]\nskip_stages = 'audit,report'\n",
            {},
            "nightly.skip_stages: 'audit,report' must be a comma-separated list of compaction, "
            "reconciliation, analytics, anomalies, reports, audit, retention (from {conf})",
        ),
        (
            "[reports]\nwarranty_policy = 'nosuch'\n",
            {},
            f"reports.warranty_policy: 'nosuch' is neither a shipped preset ({PRESETS}) "
            "nor an existing policy file (from {conf})",
        ),
        (
            "",
            {"FLEETBMS_REPORTS__WARRANTY_POLICY": ""},
            f"reports.warranty_policy: '' is neither a shipped preset ({PRESETS}) "
            "nor an existing policy file (from FLEETBMS_REPORTS__WARRANTY_POLICY)",
        ),
        (
            "",
            {"FLEETBMS_REPORTS__WARRANTY_POLICY": "policies/fleet.toml"},
            "reports.warranty_policy: 'policies/fleet.toml' names no policy file: "
            "{cwd}/policies/fleet.toml does not exist (from FLEETBMS_REPORTS__WARRANTY_POLICY)",
        ),
        (
            "[reports]\nwarranty_policy = 'policies'\n",
            {},
            "reports.warranty_policy: 'policies' is neither a shipped preset "
            f"({PRESETS}) nor an existing policy file (from {{conf}})",
        ),
        (
            "[reports]\nwarranty_policy = 'policies/'\n",
            {},
            "reports.warranty_policy: 'policies/' names a directory, not a policy file: "
            "{cwd}/policies (from {conf})",
        ),
    ],
)
def test_stage_names_and_warranty_policy_are_checked_when_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, env: dict[str, str], message: str
) -> None:
    """An unknown stage to skip, or a policy that is neither a shipped preset nor an
    existing file, is refused with its key, value and source when the configuration is
    read, not in the middle of the nightly run."""
    cwd = tmp_path / "work"
    (cwd / "policies").mkdir(parents=True)
    monkeypatch.chdir(cwd)
    conf = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(config_file=conf, env=env)
    assert str(err.value) == message.format(conf=conf, cwd=cwd)


def test_a_bad_stage_name_or_policy_from_a_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^nightly.skip_stages: 'foo' must be .*\(from flag\)$"):
        with_overrides(load_settings(env={}), {"nightly.skip_stages": "foo"})
    with pytest.raises(ConfigError, match=r"^reports.warranty_policy: 'x' is .*\(from flag\)$"):
        with_overrides(load_settings(env={}), {"reports.warranty_policy": "x"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"FLEETBMS_NIGHTLY__SKIP_STAGES": "foo"},
            "Error: nightly.skip_stages: 'foo' must be a comma-separated list of compaction, "
            "reconciliation, analytics, anomalies, reports, audit, retention "
            "(from FLEETBMS_NIGHTLY__SKIP_STAGES)",
        ),
        (
            {"FLEETBMS_REPORTS__WARRANTY_POLICY": "nosuch"},
            f"Error: reports.warranty_policy: 'nosuch' is neither a shipped preset ({PRESETS}) "
            "nor an existing policy file (from FLEETBMS_REPORTS__WARRANTY_POLICY)",
        ),
    ],
)
def test_config_show_refuses_a_bad_stage_name_or_policy_in_one_line(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    r = subprocess.run(
        [FLEETBMS, "config", "show"],
        env=cli_env(**env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (r.returncode, r.stderr, r.stdout) == (1, message + "\n", "")


def test_stage_names_and_policies_that_exist_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Empty or any case for the stages (as the nightly run reads them); a preset id, or a
    policy file relative to the working directory, with or without ``.toml``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "fleet.toml").write_text("not checked until used")
    (tmp_path / "fleet-terms").write_text("not checked until used")
    for stages in ("", " ", "analytics", " Reports , audit,"):
        settings = load_settings(env={"FLEETBMS_NIGHTLY__SKIP_STAGES": stages})
        assert settings.nightly.skip_stages == stages
    for policy in ("un-gtr22", "policies/fleet.toml", "fleet-terms", str(tmp_path / "fleet-terms")):
        settings = load_settings(env={"FLEETBMS_REPORTS__WARRANTY_POLICY": policy})
        assert settings.reports.warranty_policy == policy


def test_the_configs_stage_names_are_the_nightly_stages() -> None:
    from pipeline._config import NIGHTLY_STAGES
    from pipeline._nightly import STAGES

    assert tuple(stage.name for stage in STAGES) == NIGHTLY_STAGES


def test_a_contradicting_value_in_the_config_file_names_the_file(tmp_path: Path) -> None:
    """The operator must know which layer to fix: the file, a variable or a flag."""
    config = tmp_path / "fleetbms.toml"
    config.write_text('[fleet]\ntimezone = "Asia/Kolkatta"\n')
    r = subprocess.run(
        [FLEETBMS, "--config", str(config), "config", "show"],
        env=cli_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == (
        "Error: fleet.timezone = 'Asia/Kolkatta' is not an IANA time zone (e.g. Asia/Kolkata) "
        f"(from {config})\n"
    )
