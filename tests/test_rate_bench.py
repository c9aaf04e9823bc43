"""bench/rate_bench.py's ``--phases`` runs the rating path it describes, phase by phase."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

from rating import Catalog
from streams.offline.rate import rate_file
from tariffs import load_tariffs
from tests.conftest import PROJECT, VECTORS


def _rate_bench():  # noqa: ANN202 - the bench script, loaded as a module
    spec = importlib.util.spec_from_file_location("rate_bench", PROJECT / "bench" / "rate_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_phases_time_every_phase_and_write_what_cdrflow_rate_writes(tmp_path: Path) -> None:
    vectors = VECTORS / "mixed"
    data = SimpleNamespace(
        cdrs_file=vectors / "cdrs.csv", plans_dir=vectors / "plans", accounts_file=vectors / "accounts.toml"
    )
    phases = _rate_bench()._phases(data, tmp_path / "phased", timeout_s=300)
    assert "error" not in phases, phases.get("error")
    assert list(phases) == [
        "imports",
        "load plans and accounts",
        "compile the catalogue",
        "read the file",
        "parse (schemas.cdr_csv)",
        "prepare (rating.prepare)",
        "rate (rating.rate)",
        "write rated/rejected/alerts.csv",
    ]
    assert all(p["wall_s"] >= 0 and p["cpu_s"] >= 0 for p in phases.values())
    catalog = Catalog.from_tariffs(load_tariffs(vectors / "plans", vectors / "accounts.toml"))
    rate_file(vectors / "cdrs.csv", catalog, tmp_path / "rated")
    for name in ("rated.csv", "rejected.csv", "alerts.csv"):
        assert (tmp_path / "phased" / name).read_bytes() == (tmp_path / "rated" / name).read_bytes(), name
