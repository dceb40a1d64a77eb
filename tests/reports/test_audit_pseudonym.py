"""Pseudonyms: keyed, stable, and no known VIN survives in any text."""

from __future__ import annotations

import hashlib
import hmac

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from reports import Pseudonymizer, pseudonym

KEY = bytes(range(32))
VINS = ["MAT612345NEX00001", "MAT612345NEX00002", "12345678901234567"]
_VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"


def test_pseudonym_is_the_truncated_hmac_sha256_of_the_vin() -> None:
    digest = hmac.new(KEY, b"MAT612345NEX00001", hashlib.sha256).hexdigest()
    assert pseudonym("MAT612345NEX00001", KEY) == "psn_" + digest[:24]
    assert pseudonym("MAT612345NEX00001", KEY) != pseudonym("MAT612345NEX00001", b"k" * 32)


@given(
    st.lists(
        st.one_of(
            st.sampled_from(VINS),
            st.text(alphabet=_VIN_ALPHABET + 'abc-_ ,:{}"', max_size=25),
        ),
        max_size=8,
    )
)
def test_no_known_vin_survives_in_any_text(parts: list[str]) -> None:
    out = Pseudonymizer(KEY, VINS).text("".join(parts))
    assert not any(vin in out for vin in VINS)


@given(st.text(alphabet="abcdefxyz0123456789 _-.:,{}\"'", max_size=60))
def test_text_without_upper_case_vin_tokens_is_unchanged(text: str) -> None:
    # Digit-only 17-runs are kept unless they are known VINs (numbers, not VINs).
    assert Pseudonymizer(KEY, VINS[:2]).text(text) == text


def test_all_digit_known_vin_is_replaced_but_other_numbers_are_kept() -> None:
    ps = Pseudonymizer(KEY, VINS)
    assert ps.text("id 12345678901234567 and 99999999999999999") == (
        f"id {pseudonym(VINS[2], KEY)} and 99999999999999999"
    )


def test_table_scrubbing_keeps_types_nulls_and_dictionary_columns() -> None:
    ps = Pseudonymizer(KEY, VINS)
    table = pa.table(
        {
            "vin": pa.array([VINS[0], None, ""], pa.string()),
            "owner_vin": pa.array([VINS[1]] * 3).dictionary_encode(),
            "note": pa.array([f"see {VINS[1]}", "ok", None], pa.large_string()),
            "soh_pct": [90.0, 91.0, 92.0],
        }
    )
    out = ps.table(table)
    assert out.schema.types == table.schema.types
    assert out["vin"].to_pylist() == [pseudonym(VINS[0], KEY), None, ""]
    assert out["owner_vin"].to_pylist() == [pseudonym(VINS[1], KEY)] * 3
    assert out["note"].to_pylist() == [f"see {pseudonym(VINS[1], KEY)}", "ok", None]
    assert out["soh_pct"] == table["soh_pct"]
    assert ps.mapping == {pseudonym(v, KEY): v for v in VINS[:2]}
