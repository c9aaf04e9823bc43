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
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
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


def test_a_pipeline_command_still_gets_its_clients() -> None:
    probe = _run_entry_point("export", "--help")
    assert probe["code"] == 0
    assert "clickhouse_driver" in probe["modules"]


def test_the_imported_app_has_every_command() -> None:
    from streams.cli import app

    commands = set(get_command(app).commands)
    offline = {"rate", "generate", "plans"}
    pipeline = {"up", "down", "status", "load", "ingest", "export", "worker", "demo", "rebuild"}
    assert offline | pipeline <= commands
