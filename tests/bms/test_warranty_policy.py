"""Warranty policy files: every user mistake is one line naming the file and the key."""

from __future__ import annotations

import pytest

import bms

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
    ],
)
def test_structural_mistakes_name_the_key_and_what_it_must_be(text: str, message: str) -> None:
    assert _error(text) == message


def test_invalid_toml_and_an_integer_too_long_for_python_are_one_line() -> None:
    assert _error("id = \n").startswith("not valid TOML: Invalid value (at line 1")
    # tomllib raises a bare ValueError for an integer beyond Python's digit limit.
    assert _error("id = 1" + "0" * 5000).startswith("not valid TOML: Exceeds the limit")
