"""Time the ClickHouse sink: ``insert_rated`` of a generated month of rated calls, and ``export``.

Generates a data set into a temporary folder (``streams.offline.generate.generate_dataset``),
rates it with the engine (``rating.rate``, one batch), then against a ClickHouse:

- **insert_rated**: the rated frame (source and ingest_id added, as the worker sends it)
  into a fresh ``rated_calls``, over a client from ``streams.clickhouse.insert.connect``;
  rows/s of each of ``--repeat`` runs (the table emptied and left to settle between
  runs), the median counts;
- **export**: ``streams.finance.export.export`` of what landed (FINAL, ordered by file and line).

ClickHouse is a throwaway embedded stack started in a temporary state folder on free
ports, unless ``--state-dir`` names a running one (``cdrflow up``). The benchmark works in
its own database (``sink_bench``), dropped at the end.

Target: insert_rated >= 500k rows/s (issue 4).

Usage::

    .venv/bin/python bench/sink_bench.py                      # 1M CDRs, 20k accounts
    .venv/bin/python bench/sink_bench.py --cdrs 200000 --accounts 2000 --json

Exit status: 0 when the target is met, 1 when it is missed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

# Runnable from a plain checkout too, not only from an installed project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402
from clickhouse_driver import Client  # noqa: E402

from rating import Catalog, RatingState, rate  # noqa: E402
from schemas.cdr_csv import parse_csv  # noqa: E402
from streams.clickhouse.insert import connect, insert_rated  # noqa: E402
from streams.clickhouse.migrations import apply_migrations  # noqa: E402
from streams.finance.export import export  # noqa: E402
from streams.offline.generate import generate_dataset  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.stack import servers as stack  # noqa: E402
from tariffs import load_tariffs  # noqa: E402

TARGET_ROWS_PER_S = 500_000
DATABASE = "sink_bench"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    say = (lambda _message: None) if args.json else (lambda message: print(message, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix="cdrflow-sink-bench-") as temporary:
        root = Path(temporary)
        say(f"generating {args.cdrs:,} CDRs for {args.accounts:,} accounts")
        data = generate_dataset(root / "data", cdrs=args.cdrs, accounts=args.accounts, month=args.month, seed=args.seed)
        catalog = Catalog.from_tariffs(load_tariffs(data.plans_dir, data.accounts_file))
        result = rate(parse_csv(data.cdrs_file.read_bytes()), RatingState.empty(), catalog)
        rated = result.rated.with_columns(source=pl.lit("cdrs.csv"), ingest_id=pl.lit("bench"))

        settings, started = _clickhouse(args.state_dir, root / "state", say)
        try:
            figures = _measure(settings, rated, root / "export", repeat=args.repeat, say=say)
        finally:
            if started:
                stack.down(settings, purge=True)
    figures["target_rows_per_s"] = TARGET_ROWS_PER_S
    figures["met"] = figures["insert_rows_per_s"] >= TARGET_ROWS_PER_S
    if args.json:
        print(json.dumps(figures))
    else:
        print(
            f"insert_rated: {figures['rows']:,} rows, median {figures['insert_rows_per_s']:,.0f} rows/s "
            f"(runs: {', '.join(f'{r:,.0f}' for r in figures['insert_runs'])}; target {TARGET_ROWS_PER_S:,})\n"
            f"export:       {figures['export_s']:.2f} s ({figures['export_rows_per_s']:,.0f} rated rows/s)"
        )
    return 0 if figures["met"] else 1


def _measure(
    settings: Settings, rated: pl.DataFrame, out: Path, *, repeat: int, say: Callable[[str], None]
) -> dict[str, object]:
    target, server = scratch_database(settings, DATABASE)
    try:
        client = connect(target)
        runs = []
        for run in range(1, repeat + 1):
            client.execute("TRUNCATE TABLE rated_calls")
            time.sleep(3.0)  # let the server settle (merges of the run before)
            started = time.perf_counter()
            insert_rated(client, rated)
            runs.append(rated.height / (time.perf_counter() - started))
            say(f"run {run}: {runs[-1]:,.0f} rows/s")
        started = time.perf_counter()
        export(client, out)
        export_s = time.perf_counter() - started
    finally:
        server.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
    return {
        "rows": rated.height,
        "insert_rows_per_s": statistics.median(runs),
        "insert_runs": runs,
        "export_s": export_s,
        "export_rows_per_s": rated.height / export_s,
    }


def scratch_database(settings: Settings, name: str) -> tuple[Settings, Client]:
    """A fresh database ``name`` on the ClickHouse of ``settings``, every migration applied:
    settings naming it, and a client of the server (to drop it afterwards)."""
    params = settings.clickhouse_params()
    server = Client(**{**params, "database": ""})
    server.execute(f"DROP DATABASE IF EXISTS {name}")
    server.execute(f"CREATE DATABASE {name}")
    credentials = f"{quote(params['user'], safe='')}:{quote(params['password'], safe='')}"
    target = Settings(clickhouse_url=f"clickhouse://{credentials}@{params['host']}:{params['port']}/{name}")
    apply_migrations(Client(**{**params, "database": name}))
    return target, server


def _clickhouse(state_dir: Path | None, scratch: Path, say: Callable[[str], None]) -> tuple[Settings, bool]:
    """Settings of a running ClickHouse, and whether this script started it."""
    if state_dir is not None:
        return Settings(state_dir=state_dir), False
    ports = stack.free_ports(4)
    settings = Settings(
        state_dir=scratch,
        kafka_bootstrap=None,
        clickhouse_url=None,
        kafka_port=ports[0],
        s3_port=ports[1],
        clickhouse_tcp_port=ports[2],
        clickhouse_http_port=ports[3],
    )
    say("starting a throwaway embedded stack")
    stack.up(settings)
    return settings, True


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cdrs", type=int, default=1_000_000, help="CDR lines to generate (default 1,000,000)")
    parser.add_argument("--accounts", type=int, default=20_000, help="accounts to generate (default 20,000)")
    parser.add_argument("--month", default="2026-03", help="month of traffic, YYYY-MM (default 2026-03)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the data set (default 1)")
    parser.add_argument("--repeat", type=int, default=5, help="insert runs; the median counts (default 5)")
    parser.add_argument("--state-dir", type=Path, help="use the running stack of this state folder")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
