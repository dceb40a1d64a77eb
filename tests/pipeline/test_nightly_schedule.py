"""The README's crontab line and systemd units: syntax, and the command they run."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline import cli

README = Path(__file__).parents[2] / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def cron_field_ok(field: str, lo: int, hi: int) -> bool:
    for part in field.split(","):
        rng, _, step = part.partition("/")
        if step and not step.isdigit():
            return False
        if rng == "*":
            continue
        a, _, b = rng.partition("-")
        if not a.isdigit() or (b and not b.isdigit()):
            return False
        if not lo <= int(a) <= hi or (b and not int(a) <= int(b) <= hi):
            return False
    return True


def test_readme_crontab_line_has_five_valid_fields_and_runs_fleetbms_nightly():
    (block,) = blocks("crontab")
    lines = [x for x in block.splitlines() if x.strip() and not x.startswith("#")]
    assert len(lines) == 1
    fields = lines[0].split(None, 5)
    limits = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
    assert all(cron_field_ok(f, lo, hi) for f, (lo, hi) in zip(fields[:5], limits, strict=True))
    command = fields[5]
    assert command.startswith("cd /srv/fleetbms && .venv/bin/fleetbms ")
    args = command.split("bin/fleetbms ", 1)[1].split(">>")[0].split()
    assert args == ["--data-dir", "/srv/fleetbms/data", "nightly"]
    ctx = cli.make_context("fleetbms", list(args), resilient_parsing=True)
    assert ctx.params["data_dir"] == Path("/srv/fleetbms/data")
    assert cli.resolve_command(ctx, ["nightly"])[0] == "nightly"


def parse_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None, comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_readme_systemd_units_have_the_right_sections_and_keys(tmp_path: Path):
    service_text, timer_text = blocks("ini")
    service, timer = parse_unit(service_text), parse_unit(timer_text)
    assert service.sections() == ["Unit", "Service"]
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"].endswith(
        "fleetbms --data-dir /srv/fleetbms/data nightly"
    )
    assert service["Service"]["SuccessExitStatus"] == "3"
    assert timer.sections() == ["Unit", "Timer", "Install"]
    assert timer["Timer"]["OnCalendar"] == "*-*-* 06:00:00 Asia/Kolkata"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"

    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # the parser checks above still ran
        return
    calendar = subprocess.run(
        [analyze, "calendar", timer["Timer"]["OnCalendar"]], capture_output=True, text=True
    )
    assert calendar.returncode == 0, calendar.stderr
    # verify needs an existing executable and directory: point them at this checkout.
    fleetbms = str(Path(sys.executable).with_name("fleetbms"))
    local = service_text.replace("/srv/fleetbms/.venv/bin/fleetbms", fleetbms).replace(
        "/srv/fleetbms", str(tmp_path)
    )
    (tmp_path / "fleetbms-nightly.service").write_text(local)
    (tmp_path / "fleetbms-nightly.timer").write_text(timer_text)
    verify = subprocess.run(
        [
            analyze,
            "verify",
            "--man=no",
            str(tmp_path / "fleetbms-nightly.timer"),
            str(tmp_path / "fleetbms-nightly.service"),
        ],
        capture_output=True,
        text=True,
    )
    problems = [line for line in verify.stderr.splitlines() if "fleetbms-nightly" in line]
    assert verify.returncode == 0, verify.stderr
    assert problems == []
