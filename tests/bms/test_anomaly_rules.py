"""Physical rules on hand-made feature rows: what each rule needs before it speaks."""

from __future__ import annotations

import pyarrow as pa

from bms._anomaly_rules import RuleLimits, evaluate_rules
from bms._features import FEATURES_SCHEMA


def _row(vin: str, chemistry: str, **values: object) -> dict[str, object]:
    base: dict[str, object] = {f.name: None for f in FEATURES_SCHEMA}
    base.update(vin=vin, chemistry=chemistry, has_cell_data=True, window_days=14, **values)
    return base


def _hits(rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
    features = pa.Table.from_pylist(rows, schema=FEATURES_SCHEMA)
    return [
        (h["vin"], h["rule"], h["cell"], h["severity"], h["threshold"])
        for h in evaluate_rules(features, RuleLimits()).to_pylist()
    ]


def test_spread_needs_a_real_soc_imbalance_not_a_steep_curve() -> None:
    """40 mV at rest is 4 % of SoC on the NMC curve, but 1 % at the top of the LFP curve
    (37 mV/%): a full LFP pack with a normal imbalance is not near the spread limit."""
    rows = [
        _row("A", "nmc", rest_dev_rel_mv=-45.0, rest_dev_cell=3, rest_dev_soc_pct=-4.5),
        _row("B", "lfp", rest_dev_rel_mv=40.1, rest_dev_cell=4, rest_dev_soc_pct=1.1),
        _row("C", "lfp", rest_dev_rel_mv=95.0, rest_dev_cell=4, rest_dev_soc_pct=2.6),
        # no readings at rest on the OCV curve: the mV share alone decides
        _row("D", "lfp", rest_dev_rel_mv=41.0, rest_dev_cell=9, rest_dev_soc_pct=None),
        _row("E", "nmc", rest_dev_rel_mv=30.0, rest_dev_cell=1, rest_dev_soc_pct=3.2),
    ]
    assert _hits(rows) == [
        ("A", "cell_spread", 3, "warning", 40.0),
        ("C", "cell_spread", 4, "critical", 40.0),
        ("D", "cell_spread", 9, "warning", 40.0),
    ]


def test_resistance_from_a_single_current_step_needs_twice_the_margin() -> None:
    common = {"resistance_z": 8.0, "resistance_cell": 7}
    rows = [
        _row("A", "nmc", resistance_rel_pct=35.7, resistance_steps=1.0, **common),
        _row("B", "nmc", resistance_rel_pct=35.7, resistance_steps=4.0, **common),
        _row("C", "nmc", resistance_rel_pct=249.0, resistance_steps=1.0, **common),
        _row("D", "nmc", resistance_rel_pct=35.7, resistance_steps=4.0, resistance_z=4.0),
    ]
    assert _hits(rows) == [
        ("B", "cell_resistance", 7, "warning", 30.0),
        ("C", "cell_resistance", 7, "critical", 60.0),
    ]
