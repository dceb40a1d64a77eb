"""Ingest tests need the broker's persistence to work (sessions survive a restart).

Mosquitto started as root drops to the ``mosquitto`` user, which cannot write into
pytest's private temporary directory: persistence and the log silently do nothing and a
restarted broker forgets every session. As root, keep the broker's user.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import MosquittoBroker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A private broker with working persistence on a free port, stopped after the test."""
    extra = "user root\n" if os.geteuid() == 0 else ""
    b = MosquittoBroker(tmp_path / "mosquitto", extra_conf=extra)
    b.start()
    try:
        yield b
    finally:
        b.stop()
