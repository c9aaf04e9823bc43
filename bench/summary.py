"""``make bench``: every benchmark in one run, then one table of their figures.

Each bench runs as it would alone (``bench/NAME.py --json``; its progress goes to
stderr), one after the other so that none measures another's load. The table gives, per
figure, the value, the floor it is compared with *measured in the same run* (the raw
kafka-python round trip for the pipeline, polars reading and writing the same CSV for
``cdrflow rate``), the ratio to that floor, the target and whether it is met, and the
value of the previous run on this machine with the change: a throughput regression shows
as a ratio that fell or a figure that moved the wrong way.

Every run's figures are appended to ``bench/results/history.jsonl`` (not in git: figures
belong to a machine); the previous run is read from there.

Usage::

    .venv/bin/python bench/summary.py                        # everything (about 15 min here)
    .venv/bin/python bench/summary.py --only rate,pipeline   # some of them
    .venv/bin/python bench/summary.py --json                 # the table as JSON

Exit status: 0 when every target is met, 1 when one is missed or a bench failed.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HISTORY = HERE / "results" / "history.jsonl"


@dataclass
class Row:
    """One figure of the table."""

    bench: str
    figure: str
    value: float | None
    unit: str
    floor: float | None = None
    #: value / floor, or floor / value for a rate (so that >= 1 is "at least the floor")
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    previous: float | None = None
    #: True when a larger value is better (rates), False for times
    higher_is_better: bool = False


def _rate(figures: dict[str, Any]) -> list[Row]:
    if "rate_error" in figures:
        return [Row("rate", "cdrflow rate: FAILED", None, "", target=str(figures["rate_error"])[:60], met=False)]
    ratio = figures.get("ratio")
    return [
        Row("rate", f"cdrflow rate, {figures['cdrs']:,} CDRs (best)", figures["rate_s"], "s",
            floor=figures["floor_s"], ratio=ratio, target="ratio <= 2.0 (issue 26: 2.5)", met=ratio is not None and ratio <= 2.0),
        Row("rate", "cdrflow rate, CPU", figures["rate_cpu_s"], "s", floor=figures["floor_cpu_s"],
            ratio=figures.get("cpu_ratio")),
        Row("rate", "start-up: cdrflow rate of one line", figures.get("start_up_s"), "s", floor=figures["floor_s"],
            ratio=_ratio(figures.get("start_up_s"), figures["floor_s"])),
        Row("rate", "cdrflow rate against a process doing the floor", figures["rate_s"], "s",
            floor=figures.get("process_floor_s"), ratio=_ratio(figures["rate_s"], figures.get("process_floor_s"))),
        Row("rate", "CDRs/s", figures.get("cdrs_per_s"), "/s", target=">= 400,000",
            met=(figures.get("cdrs_per_s") or 0) >= 400_000, higher_is_better=True),
        Row("rate", "peak memory", figures.get("peak_mb"), "MB", target="< 3,072", met=(figures.get("peak_mb") or 1e9) < 3072),
    ]


def _ratio(value: float | None, floor: float | None) -> float | None:
    return round(value / floor, 2) if value is not None and floor else None


def _pipeline(figures: dict[str, Any]) -> list[Row]:
    ratio = figures["ratio_pipeline_to_raw"]
    return [
        Row("pipeline", f"ingest to landed, {figures['cdrs']:,} CDRs", figures["pipeline_s"], "s",
            floor=figures["raw_round_trip_s"], ratio=ratio, target="ratio >= 1.0 (raw kafka-python round trip)", met=ratio >= 1.0),
        Row("pipeline", "lines/s end to end", figures["pipeline_lines_per_s"], "/s", higher_is_better=True),
        *[
            Row("pipeline", f"CPU {name}", us, "us/CDR")
            for name, us in sorted(figures.get("cpu_us_per_cdr", {}).items(), key=lambda item: -item[1])
        ],
    ]


def _sink(figures: dict[str, Any]) -> list[Row]:
    return [
        Row("sink", "insert_rated", figures["insert_rows_per_s"], "rows/s", target=f">= {figures['target_rows_per_s']:,}",
            met=figures["met"], higher_is_better=True),
        Row("sink", "export", figures.get("export_rows_per_s"), "rows/s", higher_is_better=True),
    ]


def _latency(figures: dict[str, Any]) -> list[Row]:
    rows = []
    for result in figures["results"]:
        p99 = result["to_clickhouse_s"]["p99"]
        at_target = result["rate"] >= 2_000
        rows.append(
            Row("latency", f"p99 append to landed, {result['rate']:,} lines/s", p99, "s",
                target="< 5 s" if at_target else "", met=(p99 is not None and p99 < 5 and not result["rated_lines_missing"]) if at_target else None)
        )
        rows.append(Row("latency", f"p50 append to landed, {result['rate']:,} lines/s", result["to_clickhouse_s"]["p50"], "s"))
    return rows


def _soak(figures: dict[str, Any]) -> list[Row]:
    rows = []
    for run, result in figures.items():
        for name, ok in result["targets"].items():
            rows.append(Row("soak", f"{run}: {name}", None, "", target="holds", met=bool(ok)))
    months = figures.get("soak", {}).get("months") or []
    for number, month in enumerate(months, 1):
        rows.append(Row("soak", f"month {number}: ingest to landed", month.get("ingest_to_landed_s"), "s"))
    return rows


def _live_batch(figures: dict[str, Any]) -> list[Row]:
    return [
        Row("live_batch", "rating step, median batch", figures["batch_s"]["median"], "s"),
        Row("live_batch", "rating step, per account", figures["us_per_account"], "us"),
    ]


def _finance(figures: dict[str, Any]) -> list[Row]:
    return [
        Row("finance", f"query {name}", query["median_s"], "s", target=f"< {figures['target_s']} s",
            met=query["median_s"] < figures["target_s"])
        for name, query in figures["queries"].items()
    ]


#: name -> (script, its arguments, the rows its JSON gives), in the order they run.
BENCHES: dict[str, tuple[str, list[str], Callable[[dict[str, Any]], list[Row]]]] = {
    "rate": ("rate_bench.py", [], _rate),
    "pipeline": ("pipeline_bench.py", [], _pipeline),
    "latency": ("latency_bench.py", [], _latency),
    "sink": ("sink_bench.py", [], _sink),
    "live_batch": ("live_batch_bench.py", [], _live_batch),
    "finance": ("finance_bench.py", [], _finance),
    "soak": ("soak_bench.py", [], _soak),
}


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    previous = _previous_run()
    figures: dict[str, Any] = {}
    rows: list[Row] = []
    for name in args.only:
        script, extra, to_rows = BENCHES[name]
        print(f"== {name} ({script})", file=sys.stderr, flush=True)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(HERE / script), *extra, "--json"], stdout=subprocess.PIPE, text=True)
        try:
            figures[name] = json.loads(done.stdout)
            bench_rows = to_rows(figures[name])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            figures[name] = {"error": f"exit {done.returncode}: {error!r}"}
            bench_rows = [Row(name, f"FAILED (exit {done.returncode}, no figures)", None, "", met=False)]
        print(f"   {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        for row in bench_rows:
            row.previous = previous.get((row.bench, row.figure))
        rows.extend(bench_rows)
    _append_history(figures, rows)
    if args.json:
        print(json.dumps([asdict(row) for row in rows], indent=2))
    else:
        _print_table(rows, previous_at=previous.get(("", "at")))
    return 0 if all(row.met is not False for row in rows) else 1


def _previous_run() -> dict[tuple[str, str], Any]:
    """(bench, figure) -> value of the last run in the history (and ("", "at") -> when)."""
    try:
        last = HISTORY.read_text().splitlines()[-1]
        run = json.loads(last)
    except (OSError, IndexError, json.JSONDecodeError):
        return {}
    values: dict[tuple[str, str], Any] = {(row["bench"], row["figure"]): row["value"] for row in run.get("rows", [])}
    values[("", "at")] = run.get("at")
    return values


def _append_history(figures: dict[str, Any], rows: list[Row]) -> None:
    HISTORY.parent.mkdir(parents=True, exist_ok=True)
    run = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "commit": _commit(),
        "rows": [asdict(row) for row in rows],
        "figures": figures,
    }
    with HISTORY.open("a") as handle:
        handle.write(json.dumps(run) + "\n")


def _commit() -> str:
    done = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip()


def _print_table(rows: list[Row], previous_at: str | None) -> None:
    header = ("bench", "figure", "value", "floor", "ratio", "target", "met", "previous", "change")
    table = [header]
    for row in rows:
        change = ""
        if row.value is not None and row.previous:
            moved = (row.value - row.previous) / row.previous * 100
            worse = moved < 0 if row.higher_is_better else moved > 0
            change = f"{moved:+.0f}%{' worse' if worse and abs(moved) >= 10 else ''}"
        table.append(
            (
                row.bench,
                row.figure,
                _number(row.value, row.unit),
                _number(row.floor, row.unit),
                "" if row.ratio is None else f"{row.ratio:.2f}x",
                row.target,
                {True: "yes", False: "NO", None: ""}[row.met],
                _number(row.previous, row.unit),
                change,
            )
        )
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    for number, line in enumerate(table):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())
        if number == 0:
            print("  ".join("-" * width for width in widths))
    print(f"(previous: the run of {previous_at} in {HISTORY.relative_to(HERE.parent)})" if previous_at else
          f"(no previous run in {HISTORY.relative_to(HERE.parent)})")


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value < 100:
        return f"{value:,.2f} {unit}".strip()
    return f"{value:,.0f} {unit}".strip()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", type=lambda text: text.split(","), default=list(BENCHES),
        help=f"comma-separated benches to run (default all: {','.join(BENCHES)})",
    )
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    args = parser.parse_args(argv)
    unknown = [name for name in args.only if name not in BENCHES]
    if unknown:
        parser.error(f"unknown bench(es) {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    return args


if __name__ == "__main__":
    sys.exit(main())
