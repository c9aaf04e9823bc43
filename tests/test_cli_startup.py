"""`cdrflow rate` starts without the pipeline's clients; the full command line keeps them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.main import get_command

from tests.conftest import VECTORS

_PIPELINE_PACKAGES = ("faust", "mode", "kafka", "aiokafka", "clickhouse_driver", "aiohttp")

# Runs the console script's entry point in a fresh interpreter, then lists what it imported.
_PROBE = """
import json, sys
sys.argv = ["cdrflow", *json.loads(sys.argv[1])]
from streams.cli import main
try:
    main()
except SystemExit as exit_:
    code = exit_.code
else:
    code = 0
import gc
import os
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules}),
                  "gc_enabled": gc.isenabled(), "gc_frozen": gc.get_freeze_count(),
                  "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}))
"""


def _run_entry_point(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(list(args))], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_rate_imports_no_kafka_or_clickhouse_client(tmp_path: Path) -> None:
    vectors = VECTORS / "basic"
    probe = _run_entry_point(
        "rate", str(vectors / "cdrs.csv"), "--plans", str(vectors / "plans"),
        "--accounts", str(vectors / "accounts.toml"), "--out", str(tmp_path), "--json",
    )  # fmt: skip
    assert probe["code"] == 0
    assert (tmp_path / "rated.csv").stat().st_size > 0
    assert "polars" in probe["modules"]
    assert [m for m in _PIPELINE_PACKAGES if m in probe["modules"]] == []
    # The numbering plan is for switch formats: a canonical file never needs it.
    assert "phonenumbers" not in probe["modules"]
    # The cycle collector, held off while the plans load, is back on for the rating.
    assert probe["gc_enabled"] is True
    assert probe["gc_frozen"] > 10_000
    # numpy came in with one OpenBLAS thread, not a pool per core that nothing uses.
    assert "numpy" in probe["modules"]
    assert probe["openblas_threads"] == "1"


def test_compare_imports_no_kafka_or_clickhouse_client() -> None:
    expected = VECTORS / "basic" / "expected"
    probe = _run_entry_point("compare", str(expected), str(expected))
    assert probe["code"] == 0
    assert [m for m in _PIPELINE_PACKAGES if m in probe["modules"]] == []


def test_a_pipeline_command_still_gets_its_clients() -> None:
    probe = _run_entry_point("export", "--help")
    assert probe["code"] == 0
    assert "clickhouse_driver" in probe["modules"]


def test_the_imported_app_has_every_command() -> None:
    from streams.cli.main import app

    commands = set(get_command(app).commands)
    offline = {"rate", "generate", "plans", "compare"}
    pipeline = {"up", "down", "status", "load", "ingest", "export", "worker", "demo", "rebuild"}
    assert offline | pipeline <= commands


def test_plans_loaded_beside_the_first_chunk_rate_as_a_loaded_catalogue(tmp_path: Path) -> None:
    from rating import Catalog
    from streams.offline.rate import rate_file
    from tariffs import load_tariffs

    vectors = VECTORS / "mixed"
    calls = []

    def load() -> Catalog:
        calls.append(1)
        return Catalog.from_tariffs(load_tariffs(vectors / "plans", vectors / "accounts.toml"))

    lazily = rate_file(vectors / "cdrs.csv", load, tmp_path / "lazily", chunk_bytes=20_000)
    eagerly = rate_file(vectors / "cdrs.csv", load(), tmp_path / "eagerly", chunk_bytes=20_000)
    assert calls == [1, 1]
    assert (lazily.rated, lazily.rejected, lazily.amount) == (eagerly.rated, eagerly.rejected, eagerly.amount)
    for name in ("rated.csv", "rejected.csv", "alerts.csv"):
        assert (tmp_path / "lazily" / name).read_bytes() == (tmp_path / "eagerly" / name).read_bytes()


def test_plans_that_fail_to_load_leave_no_output_folder(tmp_path: Path) -> None:
    from streams.offline.rate import rate_file

    class PlansRefused(Exception):
        pass

    def load():  # noqa: ANN202 - raises before returning anything
        raise PlansRefused("bad plans")

    try:
        rate_file(VECTORS / "mixed" / "cdrs.csv", load, tmp_path / "out", chunk_bytes=20_000)
    except PlansRefused:
        pass
    else:  # pragma: no cover - the assertion below says what went wrong
        raise AssertionError("the loader's error must reach the caller")
    assert not (tmp_path / "out").exists()
