"""The README's ``fleetbms simulate`` examples run as written (live: against the test
broker, for a few seconds)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import bms
from pipeline import main
from tests.broker import MosquittoBroker

README = Path(__file__).parents[2] / "README.md"


def _examples() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("### `fleetbms simulate", 1)[1].split("\n### ", 1)[0]
    block = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    return [shlex.split(line) for line in block.strip().splitlines()]


def _run(argv: list[str]) -> None:
    assert argv[0] == "fleetbms"
    with pytest.raises(SystemExit) as exc:
        main(argv[1:])
    assert exc.value.code == 0


def test_readme_to_lake_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = next(a for a in _examples() if "--to-lake" in a)
    _run(argv)
    assert bms.telemetry_files(tmp_path / "data" / "lake")
    assert (tmp_path / "data" / "truth" / "vehicle_day.parquet").exists()


def test_readme_live_example_runs_against_a_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker: MosquittoBroker
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = next(a for a in _examples() if "--live" in a)
    argv[argv.index("--broker") + 1] = broker.address
    argv[argv.index("--duration-s") + 1] = "2"
    _run(argv)
    assert list((tmp_path / "data" / "sim" / "buffer").glob("*/state.json"))


def test_readme_simulate_synopsis_brackets_every_option_with_a_default() -> None:
    """Only the choice of --to-lake or --live is required; every other option of the
    synopsis has a default and is shown in brackets."""
    from pipeline._cmd_simulate import simulate_command

    text = README.read_text(encoding="utf-8")
    synopsis = re.search(r"^### `fleetbms simulate (.*)`$", text, re.M)
    assert synopsis is not None
    bare = re.sub(r"\[[^\]]*\]", "", synopsis.group(1)).split()
    assert bare == ["--to-lake|--live"]
    shown = set(re.findall(r"\[(--[a-z-]+)", synopsis.group(1)))
    options = {p.opts[0]: p for p in simulate_command.params}
    assert shown <= set(options)
    assert not any(options[name].required for name in shown)
