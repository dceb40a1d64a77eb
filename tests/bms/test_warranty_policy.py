"""Warranty policy files: every user mistake is one line naming the file and the key."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings

import bms
from bms._warranty import (
    POLICY_KM_RANGE,
    POLICY_MAX_COUNT,
    POLICY_MAX_YEARS,
    POLICY_MIN_SOH_PCT_RANGE,
)
from tests.pipeline.nightly_data import fleetbms

GOOD = 'id = "p"\n[[threshold]]\nyears = 8\nkm = 160000\nmin_soh_pct = 70\n'


def _error(text: str) -> str:
    """The message ``parse_warranty_policy`` refuses ``text`` with (one line)."""
    with pytest.raises(bms.WarrantyPolicyError) as err:
        bms.parse_warranty_policy(text, source="policy.toml")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("policy.toml: ")
    return message.removeprefix("policy.toml: ")


def test_the_good_policy_parses() -> None:
    p = bms.parse_warranty_policy(GOOD, source="policy.toml")
    assert p.thresholds == (bms.WarrantyThreshold(8.0, 160_000.0, 70.0),)
    assert (p.id, p.name, p.source) == ("p", "p", "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'id = "p"\nthreshold = [1, 2]\n',
            "threshold[0] = 1 is an integer, must be a table "
            "([[threshold]] with years, km, min_soh_pct)",
        ),
        (
            'id = "p"\nthreshold = 3\n',
            "threshold = 3 is an integer, must be an array of tables "
            "([[threshold]] with years, km, min_soh_pct)",
        ),
        (
            'id = "p"\n[threshold]\nyears = 8\nkm = 1\nmin_soh_pct = 70\n',
            "threshold must be an array of tables: write [[threshold]], not [threshold]",
        ),
        ('id = "p"\nthreshold = []\n', "needs at least one [[threshold]]"),
        (
            GOOD.replace("years = 8", 'years = "8"'),
            'threshold[0].years = "8" is a string, must be a number',
        ),
        (
            GOOD.replace("years = 8", "years = true"),
            "threshold[0].years = true is a boolean, must be a number",
        ),
        (
            GOOD.replace("km = 160000", "km = [160000]"),
            "threshold[0].km = [160000] is an array, must be a number",
        ),
        (
            GOOD.replace("km = 160000", "km = 2024-01-01"),
            "threshold[0].km = 2024-01-01 is a date/time, must be a number",
        ),
        (
            GOOD.replace("min_soh_pct = 70", "min_soh_pct = {pct = 70}"),
            'threshold[0].min_soh_pct = {"pct": 70} is a table, must be a number',
        ),
        (
            GOOD + "[usage]\nmax_over_temp_events = true\n",
            "usage.max_over_temp_events = true is a boolean, must be a whole number",
        ),
        (
            GOOD + "[usage]\nmax_deep_discharges = 10.5\n",
            "usage.max_deep_discharges = 10.5 is a float, must be a whole number",
        ),
        (
            GOOD + '[usage]\nmax_dc_fast_share = "80 %"\n',
            'usage.max_dc_fast_share = "80 %" is a string, must be a number',
        ),
        (GOOD + "[[usage]]\n", "usage = [{}] is an array, must be a table ([usage])"),
        (GOOD.replace('id = "p"', "id = 5"), "id = 5 is an integer, must be a string"),
        ('name = ["a"]\n' + GOOD, 'name = ["a"] is an array, must be a string'),
        ("source = false\n" + GOOD, "source = false is a boolean, must be a string"),
        (GOOD.replace('id = "p"\n', ""), "id is missing"),
        (GOOD.replace('id = "p"', 'id = " "'), 'id = " " must be a name: not blank, on one line'),
        (
            GOOD.replace('id = "p"', 'id = "a\\nb"'),
            'id = "a\\nb" must be a name: not blank, on one line',
        ),
    ],
)
def test_structural_mistakes_name_the_key_and_what_it_must_be(text: str, message: str) -> None:
    assert _error(text) == message


def test_invalid_toml_and_an_integer_too_long_for_python_are_one_line() -> None:
    assert _error("id = \n").startswith("not valid TOML: Invalid value (at line 1")
    # tomllib raises a bare ValueError for an integer beyond Python's digit limit.
    assert _error("id = 1" + "0" * 5000).startswith("not valid TOML: Exceeds the limit")


def _with(**values: str) -> str:
    """``GOOD`` with threshold keys replaced, and ``usage_KEY`` values in a [usage]."""
    text = GOOD
    usage = ""
    for key, value in values.items():
        if key.startswith("usage_"):
            usage += f"{key.removeprefix('usage_')} = {value}\n"
        else:
            text = "\n".join(
                f"{key} = {value}" if ln.startswith(f"{key} = ") else ln for ln in text.splitlines()
            )
    return text + "\n" + (f"[usage]\n{usage}" if usage else "")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"years": "-8"}, "threshold[0].years = -8 is out of range (must be > 0 and <= 50)"),
        ({"years": "0"}, "threshold[0].years = 0 is out of range (must be > 0 and <= 50)"),
        (
            {"years": "nan"},
            "threshold[0].years = nan is not a finite number (must be > 0 and <= 50)",
        ),
        (
            {"years": "96"},
            "threshold[0].years = 96 is out of range (must be > 0 and <= 50; "
            "years, not months or days)",
        ),
        (
            {"km": "inf"},
            "threshold[0].km = inf is not a finite number (must be >= 1000 and <= 10000000)",
        ),
        (
            {"km": "1e400"},  # TOML reads it as inf
            "threshold[0].km = inf is not a finite number (must be >= 1000 and <= 10000000)",
        ),
        (
            {"km": "1" + "0" * 400},  # an integer too large for a float
            "threshold[0].km = 100000000000000000000000000000000000000… is out of range "
            "(must be >= 1000 and <= 10000000)",
        ),
        (
            {"km": "160"},
            "threshold[0].km = 160 is out of range (must be >= 1000 and <= 10000000; "
            "km, e.g. 160000)",
        ),
        (
            {"min_soh_pct": "0.7"},
            "threshold[0].min_soh_pct = 0.7 is out of range (must be >= 10 and <= 100; "
            "percent, e.g. 70 for 70 %)",
        ),
        (
            {"min_soh_pct": "7"},
            "threshold[0].min_soh_pct = 7 is out of range (must be >= 10 and <= 100)",
        ),
        (
            {"min_soh_pct": "-inf"},
            "threshold[0].min_soh_pct = -inf is not a finite number (must be >= 10 and <= 100)",
        ),
        (
            {"min_soh_pct": "170"},
            "threshold[0].min_soh_pct = 170 is out of range (must be >= 10 and <= 100)",
        ),
        (
            {"usage_max_dc_fast_share": "-1"},
            "usage.max_dc_fast_share = -1 is out of range (must be >= 0 and <= 1)",
        ),
        (
            {"usage_max_dc_fast_share": "80"},
            "usage.max_dc_fast_share = 80 is out of range (must be >= 0 and <= 1; "
            "a share, e.g. 0.8 for 80 %)",
        ),
        (
            {"usage_max_dc_fast_share": "nan"},
            "usage.max_dc_fast_share = nan is not a finite number (must be >= 0 and <= 1)",
        ),
        (
            {"usage_max_over_temp_events": "-1"},
            "usage.max_over_temp_events = -1 is out of range (must be >= 0 and <= 1000000000)",
        ),
        (
            {"usage_max_deep_discharges": "99999999999"},
            "usage.max_deep_discharges = 99999999999 is out of range "
            "(must be >= 0 and <= 1000000000; omit the key for no limit)",
        ),
    ],
)
def test_out_of_range_values_name_the_field_its_value_and_the_range(
    values: dict[str, str], message: str
) -> None:
    assert _error(_with(**values)) == message


def test_the_ends_of_the_ranges_are_accepted() -> None:
    low = bms.parse_warranty_policy(
        _with(
            years="0.1",
            km="1000",
            min_soh_pct="10",
            usage_max_over_temp_events="0",
            usage_max_dc_fast_share="0",
            usage_max_deep_discharges="0",
        )
    )
    assert low.thresholds == (bms.WarrantyThreshold(0.1, 1_000.0, 10.0),)
    assert low.usage == bms.UsageLimits(0, 0.0, 0)
    high = bms.parse_warranty_policy(
        _with(
            years="50",
            km="10_000_000",
            min_soh_pct="100",
            usage_max_over_temp_events="1_000_000_000",
            usage_max_dc_fast_share="1",
            usage_max_deep_discharges="1_000_000_000",
        )
    )
    assert high.thresholds == (bms.WarrantyThreshold(50.0, 10_000_000.0, 100.0),)
    assert high.usage == bms.UsageLimits(1_000_000_000, 1.0, 1_000_000_000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            GOOD + "kms = 5\n",
            "unknown key threshold[0].kms (did you mean km?); "
            "valid in [[threshold]]: years, km, min_soh_pct",
        ),
        (
            GOOD.replace("min_soh_pct = 70", "min_soh = 70"),
            "unknown key threshold[0].min_soh (did you mean min_soh_pct?); "
            "valid in [[threshold]]: years, km, min_soh_pct",
        ),
        (
            GOOD + "[[threshold]]\nyears = 5\nkm = 1e5\nmin_soh_pct = 80\n'a b' = 1\nzz = 2\n",
            'unknown keys threshold[1]."a b", threshold[1].zz; '
            "valid in [[threshold]]: years, km, min_soh_pct",
        ),
        (
            "nme = 'x'\n" + GOOD,
            "unknown key nme (did you mean name?); "
            "valid at the top: id, name, source, threshold, usage",
        ),
        (
            GOOD + "[usage]\nmax_dc_share = 0.5\n",
            "unknown key usage.max_dc_share (did you mean max_dc_fast_share?); "
            "valid in [usage]: max_over_temp_events, max_dc_fast_share, max_deep_discharges",
        ),
    ],
)
def test_unknown_keys_are_refused_with_the_closest_known_one(text: str, message: str) -> None:
    assert _error(text) == message


def test_a_file_not_in_utf8_is_named_with_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(GOOD.replace('id = "p"', 'id = "p"\nname = "Garantie 8 ans"').encode())
    assert bms.load_warranty_policy(path).name == "Garantie 8 ans"
    path.write_bytes(GOOD.replace('id = "p"', 'id = "p"\nname = "Garantie é"').encode("latin-1"))
    with pytest.raises(bms.WarrantyPolicyError) as err:
        bms.load_warranty_policy(path)
    assert str(err.value) == (
        f"{path}: not UTF-8 text (byte 0xe9 on line 2); save the policy as UTF-8"
    )


def test_a_byte_order_mark_is_not_part_of_the_toml(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(GOOD.encode("utf-8-sig"))
    assert bms.load_warranty_policy(path).id == "p"


def test_a_missing_file_or_a_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(bms.WarrantyPolicyError) as err:
        bms.load_warranty_policy(tmp_path / "nope.toml")
    assert str(err.value) == f"cannot read policy file {tmp_path / 'nope.toml'}: " + (
        "No such file or directory"
    )
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(bms.WarrantyPolicyError) as err:
        bms.load_warranty_policy(tmp_path / "dir.toml")
    assert str(err.value).startswith(f"cannot read policy file {tmp_path / 'dir.toml'}: ")


def _thresholds(*terms: tuple[str, str, str]) -> str:
    return 'id = "p"\n' + "".join(
        f"[[threshold]]\nyears = {y}\nkm = {km}\nmin_soh_pct = {pct}\n" for y, km, pct in terms
    )


def test_thresholds_in_any_order_are_taken_by_years_and_km() -> None:
    p = bms.parse_warranty_policy(
        _thresholds(("8", "160000", "70"), ("5", "100000", "80"), ("8", "100000", "75"))
    )
    assert [(t.years, t.km, t.min_soh_pct) for t in p.thresholds] == [
        (5.0, 100_000.0, 80.0),
        (8.0, 100_000.0, 75.0),
        (8.0, 160_000.0, 70.0),
    ]


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        (
            [("8", "160000", "70"), ("8.0", "160_000", "75")],
            "threshold[1] has the same limits as threshold[0] (8 y / 160000 km): "
            "give each pair of years and km once, with its min_soh_pct",
        ),
        (
            # The last one ends cover: at 3 y and 170,000 km the first still covers
            # while (8 y / 160,000 km) would put the end of cover now.
            [("5", "200000", "80"), ("8", "160000", "70")],
            "threshold[1] (8 y / 160000 km) ends later than threshold[0] (5 y / 200000 km) "
            "in years but sooner in km: thresholds must nest, each ending no sooner than "
            "the shorter ones in both, as the longest one ends cover",
        ),
        (
            [("8", "160000", "80"), ("5", "100000", "70")],
            "threshold[0].min_soh_pct = 80 is not below threshold[1].min_soh_pct = 70, "
            "though its cover (8 y / 160000 km) outlasts threshold[1]'s: capacity only "
            "fades, so threshold[1] would never decide a verdict (values swapped?)",
        ),
        (
            [("5", "100000", "70"), ("8", "100000", "70")],
            "threshold[1].min_soh_pct = 70 is not below threshold[0].min_soh_pct = 70, "
            "though its cover (8 y / 100000 km) outlasts threshold[0]'s: capacity only "
            "fades, so threshold[0] would never decide a verdict (values swapped?)",
        ),
    ],
)
def test_thresholds_must_nest_and_ask_for_less_the_longer_they_run(
    terms: list[tuple[str, str, str]], message: str
) -> None:
    assert _error(_thresholds(*terms)) == message


def _toml(value: Any) -> str:
    """``value`` as an inline TOML value (keys quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # nan, inf and -inf are TOML too
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + "}"


_numbers = st.one_of(
    st.floats(),
    st.integers(),
    st.sampled_from([0, 1, 0.7, 7, 10, 50, 70, 96, 100, 1_000, 160_000, 10**7, 10**400]),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
_values = st.recursive(
    st.booleans() | _numbers | st.text(max_size=8) | st.dates(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


def _near(low: int, high: int) -> st.SearchStrategy[Any]:
    """Mostly numbers around a field's range, at times any number."""
    ints, floats = st.integers(low, high), st.floats(low, high)
    return st.one_of(ints, floats, ints, floats, _numbers)


_ids = st.text("abc-8", min_size=1, max_size=8)
_threshold_items = st.fixed_dictionaries(
    {"years": _near(1, 60), "km": _near(1_000, 2 * 10**7), "min_soh_pct": _near(10, 120)}
)
_usage = st.fixed_dictionaries(
    {},
    optional={
        "max_over_temp_events": _near(-10, 2 * 10**9),
        "max_dc_fast_share": _near(-1, 2),
        "max_deep_discharges": _near(-10, 2 * 10**9),
    },
)
# Policies that are near right (each key known, values about their range) ...
_near_documents = st.fixed_dictionaries(
    {"id": _ids, "threshold": st.lists(_threshold_items, min_size=1, max_size=3)},
    optional={"name": _ids, "source": _ids, "usage": _usage},
)
# ... and anything: any value for any key, known or not.
_any_documents = st.fixed_dictionaries(
    {},
    optional={
        "id": _ids | _values,
        "name": _ids | _values,
        "source": _ids | _values,
        "threshold": st.lists(
            _threshold_items | st.dictionaries(st.sampled_from(["years", "km", "kms"]), _values),
            max_size=3,
        )
        | _values,
        "usage": st.dictionaries(
            st.sampled_from(["max_dc_fast_share", "max_deep_discharges", "max_dc_share"]),
            _values,
        )
        | _values,
        "colour": _values,
    },
)
_documents = _near_documents | _any_documents


def _check(text: str) -> None:
    """``text`` parses to a policy within every range, or fails with one line naming
    the source; nothing else."""
    try:
        p = bms.parse_warranty_policy(text, source="policy.toml")
    except bms.WarrantyPolicyError as exc:
        message = str(exc)
    else:
        _assert_valid(p)
        return
    assert message.startswith("policy.toml: ")
    assert "\n" not in message


def _assert_valid(p: bms.WarrantyPolicy) -> None:
    """Every figure of ``p`` within its range, the thresholds nested."""
    assert p.id.strip()
    assert p.thresholds
    for th in p.thresholds:
        assert 0 < th.years <= POLICY_MAX_YEARS
        assert POLICY_KM_RANGE[0] <= th.km <= POLICY_KM_RANGE[1]
        assert POLICY_MIN_SOH_PCT_RANGE[0] <= th.min_soh_pct <= POLICY_MIN_SOH_PCT_RANGE[1]
    for a, b in zip(p.thresholds, p.thresholds[1:], strict=False):
        assert (a.years, a.km) < (b.years, b.km)
        assert a.km <= b.km
        assert a.min_soh_pct > b.min_soh_pct
    share = p.usage.max_dc_fast_share
    assert share is None or 0 <= share <= 1
    for n in (p.usage.max_over_temp_events, p.usage.max_deep_discharges):
        assert n is None or (type(n) is int and 0 <= n <= POLICY_MAX_COUNT)
    assert all(math.isfinite(v) for th in p.thresholds for v in (th.years, th.km, th.min_soh_pct))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents)
def test_any_document_parses_to_a_valid_policy_or_fails_with_one_line(doc: dict[str, Any]) -> None:
    _check("".join(f"{_toml(k)} = {_toml(v)}\n" for k, v in doc.items()))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_any_text_parses_to_a_valid_policy_or_fails_with_one_line(text: str) -> None:
    _check(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_any_file_loads_to_a_valid_policy_or_fails_with_one_line(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("policy") / "policy.toml"
    path.write_bytes(data)
    try:
        p = bms.load_warranty_policy(path)
    except bms.WarrantyPolicyError as exc:
        message = str(exc)
    else:
        _assert_valid(p)
        return
    assert message.startswith(f"{path}: ")
    assert "\n" not in message


@pytest.fixture(scope="module")
def small_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with two simulated vehicles' telemetry of two days."""
    data = tmp_path_factory.mktemp("data")
    sim = ("simulate", "--to-lake", "--vehicles", "2", "--days", "2", "--start", "2026-01-01")
    res = fleetbms(data, *sim)
    assert res.returncode == 0, res.stderr
    return data


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'id = "p"\nthreshold = [1, 2]\n', "threshold[0] = 1 is an integer, must be a table"),
        (GOOD.replace("years = 8", "years = nan").encode(), "threshold[0].years = nan is not"),
        (GOOD.replace("km =", "kms =").encode(), "unknown key threshold[0].kms (did you mean km?)"),
        (b'id = "p\xff"\n', "not UTF-8 text (byte 0xff on line 1)"),
    ],
)
def test_cli_analyze_with_a_bad_policy_file_says_one_line_and_exits_1(
    small_lake: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    policy = tmp_path / "bad.toml"
    policy.write_bytes(content)
    for args, env in [
        (("analyze", "--policy", str(policy)), {}),
        (("analyze",), {"FLEETBMS_REPORTS__WARRANTY_POLICY": str(policy)}),
        (("analyze", "--status"), {"FLEETBMS_REPORTS__WARRANTY_POLICY": str(policy)}),
    ]:
        res = fleetbms(small_lake, *args, **env)
        assert res.returncode == 1, (args, env, res.stdout, res.stderr)
        assert res.stdout == ""
        assert res.stderr.startswith(f"Error: {policy}: {message}")
        assert res.stderr.count("\n") == 1, res.stderr
        assert "Traceback" not in res.stderr
    assert not (small_lake / "lake" / "metrics").exists()  # refused before any work


def test_cli_analyze_with_a_good_policy_file_judges_by_it(small_lake: Path, tmp_path: Path) -> None:
    policy = tmp_path / "fleet.toml"
    policy.write_text(GOOD)
    res = fleetbms(small_lake, "analyze", "--date", "2026-01-02", "--policy", str(policy))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("2026-01-02 fleets demo: 2 vehicles")
    part = small_lake / "lake/metrics/warranty/date=2026-01-02/fleet=demo/part.parquet"
    assert set(pq.read_table(part).column("policy_id").to_pylist()) == {"p"}
