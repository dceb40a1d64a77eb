"""A fault injected into pyarrow's Parquet writer (third-party code), for the tests of a
write that fails for one message: ``ParquetWriter.write_table`` refuses a table holding
a reading whose ``odometer_km`` is one of the marked values, with ``pyarrow.ArrowInvalid``.
``install_conversion`` makes the conversion of such a column to Arrow (``pyarrow.array``)
fail instead, and ``install_alert`` the live alerts' search of the hottest sensor
(``numpy.argmax``) of a reading holding a marked temperature; ``install_text`` makes
the Parquet writer refuse a quarantine table whose reason detail is not ASCII, and
``install_topic`` one whose topic holds ``REFUSED_TOPIC`` (escaped too: it is ASCII);
``install_decoder`` makes ``msgspec.json.decode`` raise on a payload holding ``FAULT``.

In the test process: ``install(monkeypatch.setattr, ...)``. In the ingest writer process (a
child interpreter): ``hook_dir(tmp)`` writes a ``sitecustomize.py`` that installs it at
start-up; put that directory on ``PYTHONPATH`` before the worker starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: An odometer reading no test sends otherwise. [km]
MARKED_KM = 777_777.5
#: Another one, for ``install_conversion``. [km]
CONVERSION_KM = 888_888.5
#: A sensor temperature no test sends otherwise, for ``install_alert``. [degC]
ALERT_TEMP_C = 77.7
#: A fleet id no test uses otherwise, for ``install_topic``.
REFUSED_TOPIC = "refused_fleet"


def _faulty(
    original: Callable[..., Any],
    marked: tuple[float, ...],
    together: bool,
    written: list[Path] | None,
    error: type[Exception],
) -> Any:
    def write_table(self: pq.ParquetWriter, table: pa.Table, *args: Any, **kwargs: Any) -> Any:
        if written is not None:
            written.append(Path(self.where))
        if "odometer_km" in table.column_names:
            held = [bool(pc.any(pc.equal(table["odometer_km"], km)).as_py()) for km in marked]
            if all(held) if together else any(held):
                raise error(f"injected fault: odometer_km in {list(marked)}")
        return original(self, table, *args, **kwargs)

    return write_table


def install(
    setattr_: Callable[[Any, str, Any], None],
    marked: tuple[float, ...] = (MARKED_KM,),
    *,
    together: bool = False,
    written: list[Path] | None = None,
    error: type[Exception] = pa.ArrowInvalid,
) -> None:
    """Make ``ParquetWriter.write_table`` raise ``error`` on a marked reading
    (``together``: only on a table holding every marked value at once, a failure no
    single message causes). ``written`` collects the path of every file written to (or
    tried)."""
    setattr_(
        pq.ParquetWriter,
        "write_table",
        _faulty(pq.ParquetWriter.write_table, marked, together, written, error),
    )


def install_conversion(
    setattr_: Callable[[Any, str, Any], None], marked: tuple[float, ...] = (CONVERSION_KM,)
) -> None:
    """Make ``pyarrow.array`` raise for a float64 NumPy array holding a marked value (the
    odometer column of a telemetry table being built)."""
    original = pa.array

    def array(obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(obj, np.ndarray) and obj.dtype == np.float64 and np.isin(obj, marked).any():
            raise pa.ArrowInvalid(f"injected fault: converting {list(marked)}")
        return original(obj, *args, **kwargs)

    setattr_(pa, "array", array)


def install_alert(setattr_: Callable[[Any, str, Any], None]) -> None:
    """Make ``numpy.argmax`` raise ``ValueError`` on an array holding ``ALERT_TEMP_C`` in
    tenths of a degree (the sensor list of a reading over the temperature limit)."""
    original = np.argmax
    marked_dc = round(ALERT_TEMP_C * 10)

    def argmax(a: Any, *args: Any, **kwargs: Any) -> Any:
        if np.isin(np.asarray(a), [marked_dc]).any():
            raise ValueError(f"injected fault: argmax of a sensor list with {ALERT_TEMP_C} degC")
        return original(a, *args, **kwargs)

    setattr_(np, "argmax", argmax)


def install_text(setattr_: Callable[[Any, str, Any], None]) -> None:
    """Make ``ParquetWriter.write_table`` raise ``ArrowInvalid`` on a table with a
    ``detail`` column holding a character outside ASCII."""
    original = pq.ParquetWriter.write_table

    def write_table(self: pq.ParquetWriter, table: pa.Table, *args: Any, **kwargs: Any) -> Any:
        details = table["detail"].to_pylist() if "detail" in table.column_names else []
        if not all(text.isascii() for text in details):
            raise pa.ArrowInvalid("injected fault: a detail outside ASCII")
        return original(self, table, *args, **kwargs)

    setattr_(pq.ParquetWriter, "write_table", write_table)


def install_topic(setattr_: Callable[[Any, str, Any], None]) -> None:
    """Make ``ParquetWriter.write_table`` raise ``ArrowInvalid`` on a table with a
    ``topic`` column holding ``REFUSED_TOPIC`` (a row refused even with its text escaped)."""
    original = pq.ParquetWriter.write_table

    def write_table(self: pq.ParquetWriter, table: pa.Table, *args: Any, **kwargs: Any) -> Any:
        topics = table["topic"].to_pylist() if "topic" in table.column_names else []
        if any(REFUSED_TOPIC in topic for topic in topics):
            raise pa.ArrowInvalid("injected fault: a refused topic")
        return original(self, table, *args, **kwargs)

    setattr_(pq.ParquetWriter, "write_table", write_table)


def install_decoder(setattr_: Callable[[Any, str, Any], None]) -> None:
    """Make ``msgspec.json.decode`` raise ``RuntimeError`` on a payload holding ``FAULT``
    (the decoder's second parse of a payload the typed decoder refused)."""
    original = msgspec.json.decode

    def decode(buf: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(buf, bytes | bytearray | memoryview) and b"FAULT" in bytes(buf):
            raise RuntimeError("injected fault: decoding FAULT")
        return original(buf, *args, **kwargs)

    setattr_(msgspec.json, "decode", decode)


def hook_dir(
    directory: Path, marked: tuple[float, ...] = (MARKED_KM,), *, also: tuple[str, ...] = ()
) -> Path:
    """A directory whose ``sitecustomize.py`` installs the fault in any Python started
    with it on ``PYTHONPATH``; ``also`` names more installers of this module to run
    (e.g. ``"install_alert"``)."""
    directory.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parents[2]
    (directory / "sitecustomize.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(root)!r})\n"
        "from tests.ingest import write_fault\n"
        f"write_fault.install(setattr, {marked!r})\n"
        + "".join(f"write_fault.{name}(setattr)\n" for name in also)
    )
    return directory
