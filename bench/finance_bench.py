"""Time finance's report queries over 10M rated calls (issue 6).

Generates ``--calls`` rated calls of one month (synthetic rows in the engine's rated
frame, with the finance columns: vectorised, chunk by chunk of 1M), inserts them through
the sink's fast path (``streams.clickhouse.insert.insert_rated``: columnar numpy, two
connections), which also fills the materialized views ``calls_by_day`` and
``missed_calls``, then inserts ``--replayed`` of them again (a replay, as Kafka's
at-least-once delivery makes them) so that the FINAL reads have copies to collapse.
Calls come in time order (as switches send them). Then times, ``--repeat`` times each
(the median counts, the worst is shown), in two phases:

- **open**: the month as the inserts left it (the month still receiving calls): the
  views' monthly partition is several parts and read with FINAL;
- **closed**: the month settled (``streams.finance.retention.settle_months``, what the daily
  ``cdrflow retention`` does once the month is over): one merged part, read without FINAL.

- **statement**: ``streams.finance.reports.statement`` of an account for the month (a different
  account each run);
- **revenue by day**: ``streams.finance.reports.revenue`` over the month, ``--by day``;
- **missed calls**: ``streams.finance.reports.missed_calls`` of the month, ``--by hour``;
- and, for information, revenue by segment and by account, usage by hour.

The queries also check that the replayed rows did not count twice (the call count of
revenue by day equals the rated calls generated).

ClickHouse is a throwaway embedded stack on free ports unless ``--state-dir`` names a
running one; the benchmark works in its own database (``finance_bench``), dropped at the
end. Target (issue 6): the statement, revenue by day and missed calls under 1 s each
(median), in both phases; the other queries are shown for information.

Usage::

    .venv/bin/python bench/finance_bench.py                 # 10M calls, 20k accounts
    .venv/bin/python bench/finance_bench.py --calls 1000000 --json

Exit status: 0 when every timed query is under the target, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

# Runnable from a plain checkout too, not only from an installed project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from clickhouse_driver import Client  # noqa: E402
from rich.progress import Progress  # noqa: E402
from sink_bench import _clickhouse, scratch_database  # noqa: E402

from streams.clickhouse.insert import connect, insert_rated  # noqa: E402
from streams.finance import reports  # noqa: E402
from streams.finance.retention import settle_months  # noqa: E402
from streams.settings import Settings  # noqa: E402

TARGET_S = 1.0
DATABASE = "finance_bench"
CHUNK = 1_000_000
MONTH = "2026-03"
SEGMENTS = np.array(["4001", "4006", "4007", "4008"])
CLASSES = np.array(["local", "long_distance", "international"])
PLANS = np.array(["std-100", "eco-4007", "vip-500"])
DISPOSITIONS = np.array(["ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CONGESTION"])
AREAS = np.array(["010", "021", "020", "0755", "0571", "028", "027", "+44", "0991"])
TIMED = ("statement", "revenue by day", "missed calls by hour")
PHASES = ("open", "closed")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    say = (lambda _message: None) if args.json else (lambda message: print(message, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix="cdrflow-finance-bench-") as temporary:
        settings, started = _clickhouse(args.state_dir, Path(temporary) / "state", say)
        try:
            figures = _measure(settings, args, say)
        finally:
            if started:
                from streams.stack import servers as stack

                stack.down(settings, purge=True)
    figures["target_s"] = TARGET_S
    figures["met"] = all(
        figures["queries"][f"{name} ({phase})"]["median_s"] < TARGET_S for name in TIMED for phase in PHASES
    )
    if args.json:
        print(json.dumps(figures))
    else:
        print(
            f"loaded {figures['calls']:,} calls (+{figures['replayed']:,} replayed) in "
            f"{figures['load_s']:.1f} s ({figures['load_rows_per_s']:,.0f} rows/s, views included)"
        )
        print(
            "settling (OPTIMIZE FINAL of the views' month): "
            + ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in figures["settle_s"].items())
        )
        for name, figure in figures["queries"].items():
            timed = name.split(" (")[0] in TIMED
            mark = "" if not timed else ("  ok" if figure["median_s"] < TARGET_S else "  OVER 1 s")
            print(f"{name:<34} median {figure['median_s']:.3f} s, worst {figure['max_s']:.3f} s{mark}")
    return 0 if figures["met"] else 1


def rated_chunk(start: int, rows: int, total: int, accounts: int, seed: int) -> pl.DataFrame:
    """Rows ``start .. start + rows`` of ``total`` of the generated month, in time order:
    the engine's rated frame."""
    rng = np.random.default_rng(seed + start)
    account = rng.integers(0, accounts, rows)
    month_start = datetime(2026, 3, 1, tzinfo=timezone(timedelta(hours=8))).astimezone(timezone.utc)
    position = np.arange(start, start + rows) * (31 * 86_400 - 600) // max(total, 1)
    offset_s = position + rng.integers(0, 600, rows)
    disposition = DISPOSITIONS[rng.choice(5, rows, p=[0.8, 0.1, 0.05, 0.03, 0.02])]
    answered = disposition == "ANSWERED"
    billsec = np.where(answered, rng.gamma(1.5, 90, rows).astype(np.int64), 0)
    billable = np.where(answered & (billsec > 0), (billsec + 59) // 60 * 60, 0)
    amount = billable * rng.integers(10, 30, rows)  # 0.0010-0.0030 CNY a second
    frame = pl.DataFrame(
        {
            "n": np.arange(start, start + rows),
            "account": account,
            "status": np.where(billable > 0, "rated", "unbilled"),
            "class": CLASSES[rng.choice(3, rows, p=[0.6, 0.35, 0.05])],
            "offset_s": offset_s,
            "billsec": billsec,
            "billable_s": billable,
            "amount": amount,
            "disposition": disposition,
            "caller_area": AREAS[rng.integers(0, len(AREAS), rows)],
        }
    )
    charge = pl.lit(month_start) + pl.duration(seconds=pl.col("offset_s"))
    local = (charge + pl.duration(hours=8)).dt.replace_time_zone(None)
    rated = pl.col("status") == "rated"
    return frame.select(
        pl.format("C{}", pl.col("n")).alias("cdr_id"),
        pl.format("B{}", pl.col("account").cast(pl.String).str.zfill(6)).alias("account_id"),
        "status",
        "class",
        pl.lit(False).alias("offpeak"),
        "billable_s",
        pl.lit(0, dtype=pl.Int64).alias("allowance_s"),
        pl.col("billable_s").alias("charged_s"),
        pl.col("amount").alias("base"),
        pl.lit(0, dtype=pl.Int64).alias("discount"),
        pl.lit(0, dtype=pl.Int64).alias("minimum_uplift"),
        pl.lit(0, dtype=pl.Int64).alias("cap_waived"),
        "amount",
        (pl.lit(5_000_000, dtype=pl.Int64) - pl.col("amount")).alias("balance"),
        (pl.col("n") + 2).alias("line"),
        pl.format(
            "{}{}",
            pl.lit(pl.Series(SEGMENTS)).gather(pl.col("account") % 4),
            pl.col("account").cast(pl.String).str.zfill(6),
        ).alias("called"),
        charge.alias("charge_time"),
        local.dt.date().alias("local_day"),
        pl.lit(pl.Series(PLANS)).gather(pl.col("account") % 3).alias("plan_id"),
        pl.when(rated).then(pl.lit("2026-01-01T00:00:00+08:00")).alias("plan_version"),
        pl.when(rated).then(pl.lit("*")).alias("rate_segment"),
        pl.when(rated).then(pl.lit(1, dtype=pl.Int32)).alias("tier_first"),
        pl.when(rated).then(pl.lit(1, dtype=pl.Int32)).alias("tier_last"),
        pl.lit(None, dtype=pl.Int64).alias("daily_cap"),
        pl.lit(0, dtype=pl.Int64).alias("offpeak_percent"),
        "disposition",
        pl.format("138{}", pl.col("n").cast(pl.String).str.zfill(8)).alias("caller"),
        "caller_area",
        "billsec",
        local.dt.hour().cast(pl.Int8).alias("local_hour"),
        pl.lit("bench.csv").alias("source"),
        pl.lit("bench").alias("ingest_id"),
    )


def _measure(settings: Settings, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, object]:
    target, server = scratch_database(settings, DATABASE)
    try:
        sink = connect(target)
        rated_calls = 0
        started = time.perf_counter()
        with Progress(disable=args.json, transient=True) as progress:
            task = progress.add_task("inserting rated calls", total=args.calls + args.replayed)
            replay = None
            for start in range(0, args.calls, CHUNK):
                chunk = rated_chunk(start, min(CHUNK, args.calls - start), args.calls, args.accounts, args.seed)
                rated_calls += int((chunk.get_column("status") == "rated").sum())
                insert_rated(sink, chunk)
                progress.advance(task, chunk.height)
                replay = chunk.head(args.replayed) if replay is None else replay
            if replay is not None and args.replayed:  # the same rows again: a replay
                insert_rated(sink, replay)
                progress.advance(task, replay.height)
        load_s = time.perf_counter() - started
        say(f"loaded in {load_s:.1f} s; letting merges settle")
        time.sleep(args.settle)

        client = Client(**target.clickhouse_params())
        first, following = reports.month_range(MONTH)
        last = following - timedelta(days=1)
        accounts = iter(f"B{n:06d}" for n in range(7, 10**6, 97))
        queries: dict[str, Callable[[], object]] = {
            "statement": lambda: reports.statement(client, next(accounts), MONTH),
            "revenue by day": lambda: reports.revenue(client, first, last, "day"),
            "missed calls by hour": lambda: reports.missed_calls(client, MONTH, "hour"),
            "revenue by segment": lambda: reports.revenue(client, first, last, "segment"),
            "revenue by account": lambda: reports.revenue(client, first, last, "account"),
            "usage by hour": lambda: reports.usage(client, MONTH, "hour"),
        }
        timings = {}
        # The month open (parts as the inserts left them, read with FINAL), then closed
        # (settled by retention: one merged part, read without FINAL).
        settle_s = {}
        for phase in PHASES:
            if phase != "open":
                began = time.perf_counter()
                settle_months(Client(**target.clickhouse_params()), before=following)
                settle_s[phase] = time.perf_counter() - began
                say(f"settled for the {phase} phase in {settle_s[phase]:.1f} s")
            for name, query in queries.items():
                runs = []
                for _ in range(args.repeat):
                    began = time.perf_counter()
                    query()
                    runs.append(time.perf_counter() - began)
                label = f"{name} ({phase})"
                timings[label] = {"median_s": statistics.median(runs), "max_s": max(runs), "runs": runs}
                say(f"{label}: median {timings[label]['median_s']:.3f} s")
            counted = sum(row["calls"] for row in reports.revenue(client, first, last, "day").raw_rows)
            if counted != rated_calls:
                raise SystemExit(f"revenue by day counted {counted:,} rated calls, {rated_calls:,} were generated")
    finally:
        server.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
    return {
        "calls": args.calls,
        "replayed": 0 if replay is None else replay.height,
        "accounts": args.accounts,
        "load_s": load_s,
        "load_rows_per_s": (args.calls + args.replayed) / load_s,
        "settle_s": settle_s,
        "queries": timings,
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000_000, help="rated calls to load (default 10,000,000)")
    parser.add_argument(
        "--replayed", type=int, default=1_000_000, help="of them inserted twice (default 1,000,000; at most 1M)"
    )
    parser.add_argument("--accounts", type=int, default=20_000, help="accounts (default 20,000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each query; the median counts (default 5)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait after loading (default 10)")
    parser.add_argument("--state-dir", type=Path, help="use the running stack of this state folder")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
