"""Shared fixtures: where the shared vectors are and how to run the installed CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
VECTORS = SHARED / "vectors"
COMPARE = SHARED / "tools" / "compare_rating.py"
CDRFLOW = Path(sys.executable).parent / "cdrflow"
VECTOR_SETS = sorted(p.name for p in VECTORS.iterdir() if (p / "expected").is_dir()) if VECTORS.is_dir() else []


def run_cdrflow(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``cdrflow`` console script, as a user would."""
    return subprocess.run(
        [str(CDRFLOW), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def compare_with_expected(expected: Path, actual: Path) -> subprocess.CompletedProcess[str]:
    """``shared/tools/compare_rating.py EXPECTED ACTUAL``: exit 0 only on an exact match."""
    return subprocess.run(
        [sys.executable, str(COMPARE), str(expected), str(actual)], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(params=VECTOR_SETS)
def vector_set(request: pytest.FixtureRequest) -> Path:
    """Each shared vector set (plans/, accounts.toml, cdrs.csv, expected/)."""
    return VECTORS / request.param


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not VECTOR_SETS:
        raise pytest.UsageError(f"no vector sets found under {VECTORS}: the shared folder must sit beside the project")
