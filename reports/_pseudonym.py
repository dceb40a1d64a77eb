"""Keyed pseudonyms of vehicle identification numbers, and scrubbing of tables and text.

A pseudonym is ``psn_`` and the first 24 hex digits (96 bits) of
HMAC-SHA256(key, VIN as UTF-8) [1]_: stable for one key, unrelated across keys, and not
reversible without the key (the key holder can re-identify by recomputing it for each
known VIN). Lower-case hex never forms a VIN (17 of ``[A-HJ-NPR-Z0-9]``, ISO 3779), so a
scrubbed text can be checked for leftover VINs by pattern.

What is replaced, in every string the bundle carries (cell values, column and table
names, file names, JSON, Parquet metadata):

- the whole value of a string column named ``vin``, ``*_vin`` or ``vin_*``;
- any run of exactly 17 characters of ``[A-HJ-NPR-Z0-9]`` that contains a letter or is a
  known VIN (a VIN written in free text, e.g. in anomaly evidence);
- any known VIN inside a longer run of those characters.

References
----------
.. [1] H. Krawczyk, M. Bellare, R. Canetti, "HMAC: Keyed-Hashing for Message
   Authentication", RFC 2104, 1997; SHA-256 per FIPS 180-4.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

PSEUDONYM_PREFIX = "psn_"
PSEUDONYM_HEX_DIGITS = 24
_RUN = re.compile(r"[A-HJ-NPR-Z0-9]{17,}")
_VIN_LEN = 17


def pseudonym(vin: str, key: bytes) -> str:
    """Pseudonym of ``vin`` under ``key``: ``psn_`` + 24 hex digits of HMAC-SHA256.

    Parameters
    ----------
    vin : str
        Vehicle identification number (any string; VINs are not normalised).
    key : bytes
        The fleet's pseudonym key (``load_or_create_pseudonym_key``).
    """
    digest = hmac.new(key, vin.encode("utf-8"), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX_DIGITS]


def is_vin_column(name: str) -> bool:
    """True for column names whose values are VINs (``vin``, ``*_vin``, ``vin_*``)."""
    lower = name.lower()
    return lower == "vin" or lower.endswith("_vin") or lower.startswith("vin_")


def _has_string(typ: pa.DataType) -> bool:
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return True
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        return True
    if pa.types.is_dictionary(typ):
        return _has_string(typ.value_type)
    if pa.types.is_nested(typ):
        return any(_has_string(typ.field(i).type) for i in range(typ.num_fields))
    return False


class Pseudonymizer:
    """Replaces VINs by their pseudonyms in strings, Arrow tables and JSON values.

    Thread-safe; remembers every VIN it replaced (``mapping``) for the reveal file.

    Parameters
    ----------
    key : bytes
        The fleet's pseudonym key.
    known_vins : iterable of str
        VINs to catch even where they are not a 17-character token on their own (the
        registry and every ``vin`` column of the exported tables).
    """

    def __init__(self, key: bytes, known_vins: Iterable[str] = ()) -> None:
        self._key = key
        self._lock = threading.Lock()
        self._vin_to_psn: dict[str, str] = {}
        self._text_memo: dict[str, str] = {}
        self._known: set[str] = set()
        self._odd_known: list[str] = []  # known VINs outside the ISO 3779 alphabet
        self.add_known(known_vins)

    def add_known(self, vins: Iterable[str]) -> None:
        """Add VINs to look for inside longer strings."""
        with self._lock:
            for vin in vins:
                if not vin or vin in self._known:
                    continue
                self._known.add(vin)
                if not (len(vin) == _VIN_LEN and _RUN.fullmatch(vin)):
                    self._odd_known.append(vin)
            self._odd_known.sort(key=lambda v: (-len(v), v))
            self._text_memo.clear()

    @property
    def key_id(self) -> str:
        """Public id of the key (16 hex digits): equal ids = comparable pseudonyms."""
        return hashlib.sha256(b"fleetbms-pseudonym-key-id:" + self._key).hexdigest()[:16]

    @property
    def mapping(self) -> dict[str, str]:
        """Pseudonym -> VIN of every VIN replaced so far."""
        with self._lock:
            return {p: v for v, p in self._vin_to_psn.items()}

    def of(self, vin: str) -> str:
        """Pseudonym of one VIN (remembered for the reveal mapping)."""
        psn = self._vin_to_psn.get(vin)
        if psn is None:
            psn = pseudonym(vin, self._key)
            with self._lock:
                self._vin_to_psn[vin] = psn
        return psn

    def _replace_run(self, match: re.Match[str]) -> str:
        run = match.group(0)
        if len(run) == _VIN_LEN:
            if run in self._known or not run.isdigit():
                return self.of(run)
            return run
        out: list[str] = []
        i = start = 0
        while i <= len(run) - _VIN_LEN:
            window = run[i : i + _VIN_LEN]
            if window in self._known:
                out.append(run[start:i])
                out.append(self.of(window))
                i += _VIN_LEN
                start = i
            else:
                i += 1
        out.append(run[start:])
        return "".join(out)

    def text(self, value: str) -> str:
        """``value`` with every VIN in it replaced by its pseudonym."""
        if len(value) < _VIN_LEN and not self._odd_known:
            return value
        cached = self._text_memo.get(value)
        if cached is not None:
            return cached
        out = value
        for vin in self._odd_known:
            if vin in out:
                out = out.replace(vin, self.of(vin))
        out = _RUN.sub(self._replace_run, out)
        if len(self._text_memo) < 1_000_000:
            self._text_memo[value] = out
        return out

    def data(self, value: bytes) -> bytes:
        """Bytes with every VIN replaced (latin-1 round trip, so any bytes pass)."""
        return self.text(value.decode("latin-1")).encode("latin-1")

    def json_value(self, value: Any) -> Any:
        """A parsed JSON value with VINs replaced in every key and string."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.json_value(v) for v in value]
        if isinstance(value, dict):
            return {self.text(str(k)): self.json_value(v) for k, v in value.items()}
        return value

    def _metadata(self, meta: Mapping[bytes, bytes] | None) -> dict[bytes, bytes] | None:
        if not meta:
            return None
        return {self.data(k): self.data(v) for k, v in meta.items()}

    def _values(self, values: list[Any], whole: bool) -> tuple[list[Any], bool]:
        """Scrub a list of str/bytes/None; ``whole`` = each value is a VIN."""
        out: list[Any] = []
        changed = False
        for v in values:
            new: Any
            if v is None or (whole and not v):
                new = v  # null or empty: no vehicle to hide
            elif isinstance(v, bytes):
                new = self.of(v.decode("utf-8", "replace")).encode() if whole else self.data(v)
            else:
                new = self.of(v) if whole else self.text(v)
            changed = changed or new != v
            out.append(new)
        return out, changed

    def _chunk(self, arr: pa.Array, whole: bool) -> pa.Array:
        typ = arr.type
        if pa.types.is_dictionary(typ):
            if not _has_string(typ.value_type):
                return arr
            new_dict = self._chunk(arr.dictionary, whole)
            if new_dict is arr.dictionary:
                return arr
            return pa.DictionaryArray.from_arrays(arr.indices, new_dict)
        if (
            pa.types.is_string(typ)
            or pa.types.is_large_string(typ)
            or pa.types.is_binary(typ)
            or pa.types.is_large_binary(typ)
        ):
            if len(arr) == 0:
                return arr
            encoded = pc.dictionary_encode(arr)
            new_values, changed = self._values(encoded.dictionary.to_pylist(), whole)
            if not changed:
                return arr
            return pc.take(pa.array(new_values, typ), encoded.indices)
        if _has_string(typ):
            # Nested values (lists, structs, maps of strings) are rare in metrics:
            # take the slow, simple and exact route through Python objects.
            return pa.array([self._nested(v, whole) for v in arr.to_pylist()], type=self._type(typ))
        return arr

    def _nested(self, value: Any, whole: bool) -> Any:
        if isinstance(value, str):
            return self.of(value) if whole else self.text(value)
        if isinstance(value, bytes):
            return self.data(value)
        if isinstance(value, list):
            return [self._nested(v, whole) for v in value]
        if isinstance(value, tuple):  # map entries
            return tuple(self._nested(v, whole) for v in value)
        if isinstance(value, dict):
            return {k: self._nested(v, whole) for k, v in value.items()}
        return value

    def _field(self, field: pa.Field) -> pa.Field:
        return pa.field(
            self.text(field.name),
            self._type(field.type),
            nullable=field.nullable,
            metadata=self._metadata(field.metadata),
        )

    def _type(self, typ: pa.DataType) -> pa.DataType:
        """``typ`` with VINs removed from struct field names and field metadata."""
        if pa.types.is_struct(typ):
            return pa.struct([self._field(typ.field(i)) for i in range(typ.num_fields)])
        if pa.types.is_large_list(typ):
            return pa.large_list(self._field(typ.value_field))
        if pa.types.is_fixed_size_list(typ):
            return pa.list_(self._field(typ.value_field), typ.list_size)
        if pa.types.is_list(typ):
            return pa.list_(self._field(typ.value_field))
        if pa.types.is_map(typ):
            return pa.map_(self._field(typ.key_field), self._field(typ.item_field))
        return typ

    def table(self, table: pa.Table) -> pa.Table:
        """``table`` with VINs replaced in values, column names and metadata.

        Whole values of VIN columns are replaced; other string values are scrubbed as
        text. Column types are kept (a dictionary column stays a dictionary column).
        """
        fields: list[pa.Field] = []
        columns: list[pa.ChunkedArray] = []
        for field, column in zip(table.schema, table.columns, strict=True):
            whole = is_vin_column(field.name) and _has_string(field.type)
            if _has_string(field.type):
                chunks = [self._chunk(c, whole) for c in column.chunks]
                column = pa.chunked_array(chunks, type=chunks[0].type if chunks else field.type)
            new_field = self._field(field)
            fields.append(new_field.with_type(column.type))
            columns.append(column)
        schema = pa.schema(fields, metadata=self._metadata(table.schema.metadata))
        return pa.Table.from_arrays(columns, schema=schema)
