"""Each package's public surface is its ``__all__``: complete and sorted (ruff RUF022 order)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = ["bms", "ingest", "reports", "pipeline", "sim"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    public = {n for n in vars(module) if not n.startswith("_")}
    submodules = {n for n in public if type(getattr(module, n)).__name__ == "module"}
    assert set(module.__all__) == public - submodules
    assert len(module.__all__) == len(set(module.__all__))


@pytest.mark.parametrize("name", PACKAGES)
def test_import_has_no_side_effects_and_stays_light(name: str, tmp_path) -> None:
    """Importing a package creates no files and does not pull in the heavy libraries."""
    code = (
        f"import sys, {name}; "
        "heavy = [m for m in ('sklearn', 'reportlab', 'matplotlib') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
    assert list(tmp_path.iterdir()) == []
