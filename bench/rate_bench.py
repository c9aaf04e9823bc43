"""Time ``cdrflow rate`` on a generated month of traffic against the I/O floor of polars.

Generates a data set into a temporary folder (``streams.offline.generate.generate_dataset``), then
in the same run measures:

- the **I/O floor**: ``polars.read_csv`` of ``cdrs.csv`` and ``write_csv`` of the frame to
  another file, best of ``--repeat``. A rating run reads the same file and writes at least
  as much, so it cannot beat this;
- **cdrflow rate**: ``cdrflow rate CDRS --plans DIR --accounts FILE --out DIR`` as a
  subprocess (the ``cdrflow`` next to this Python), wall clock, best of ``--repeat``, and
  its peak resident memory (``ru_maxrss`` of the waited-for children: the only children
  this script starts are those runs).

Targets: rate/floor ratio <= 2.0, >= 400k CDRs/s, peak memory < 3 GB (wall clock, best run).

Also measured, to say how much of the ratio is start-up (not targets): ``cdrflow rate`` of
the file's first line alone with the same plans and accounts (``start_up_s``), and a fresh
``python`` process doing the floor's read and write (``process_floor_s``).

Both are also given in CPU seconds (user + system, all threads): on a machine shared with
other work the wall clock of a run moves with the load, its CPU time much less, so the
CPU ratio is the figure to compare between runs. ``--phases`` adds where the time of a
rating run goes, phase by phase, run one after the other in one process.

Usage::

    .venv/bin/python bench/rate_bench.py                      # 1M CDRs, 20k accounts
    .venv/bin/python bench/rate_bench.py --cdrs 100000 --accounts 2000 --json
    .venv/bin/python bench/rate_bench.py --phases              # and the breakdown by phase

Exit status: 0 when every target is met, 1 when one is missed or the rating run failed,
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Runnable from a plain checkout too, not only from an installed project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from streams.offline.generate import GeneratedDataset, generate_dataset  # noqa: E402

TARGET_RATIO = 2.0
TARGET_CDRS_PER_S = 400_000
TARGET_PEAK_MB = 3 * 1024
_OUTPUT_FILES = ("rated.csv", "rejected.csv")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures; return the exit status.

    Parameters
    ----------
    argv
        Command-line arguments (without the program name); ``sys.argv[1:]`` when None.

    Returns
    -------
    int
        0 when every target is met, 1 otherwise (or when ``cdrflow rate`` failed).
    """
    args = _parse_args(argv)
    say = _stderr_printer(quiet=args.json)
    with tempfile.TemporaryDirectory(prefix="cdrflow-bench-") as tmp:
        root = Path(tmp)
        say(f"generating {args.cdrs:,} CDRs over {args.accounts:,} accounts in {root} ...")
        started = time.perf_counter()
        data = generate_dataset(
            root / "data",
            cdrs=args.cdrs,
            accounts=args.accounts,
            month=args.month,
            seed=args.seed,
            progress=lambda done: say(f"  {done:,} / {args.cdrs:,}"),
        )
        figures: dict[str, object] = {
            "cdrs": data.cdrs,
            "accounts": data.accounts,
            "numbers": data.numbers,
            "file_mb": round(data.cdrs_file.stat().st_size / 2**20, 1),
            "generate_s": round(time.perf_counter() - started, 3),
        }

        say(f"I/O floor: polars read_csv + write_csv, best of {args.repeat} ...")
        floor_runs = [_io_floor(data.cdrs_file, root / "floor.csv") for _ in range(args.repeat)]
        floor_s = min(wall for wall, _ in floor_runs)
        figures |= {
            "floor_s": round(floor_s, 3),
            "floor_runs_s": [round(wall, 3) for wall, _ in floor_runs],
            "floor_cpu_s": round(min(cpu for _, cpu in floor_runs), 3),
        }

        say(f"cdrflow rate, best of {args.repeat} ...")
        rate = _time_rate(data, root / "rated", repeat=args.repeat, timeout_s=args.timeout)
        figures |= rate

        say(f"start-up: cdrflow rate of the file's first line, and a process doing the floor, best of {args.repeat} ...")
        figures |= _start_up(data, root, repeat=args.repeat, timeout_s=args.timeout)

        if args.phases:
            say("phases of a rating run, one after the other in one process ...")
            figures["phases"] = _phases(data, root / "phased", timeout_s=args.timeout)

    rate_s = figures.get("rate_s")
    if isinstance(rate_s, float):
        figures["cdrs_per_s"] = round(data.cdrs / rate_s) if rate_s > 0 else None
        figures["ratio"] = round(rate_s / floor_s, 2) if floor_s > 0 else None
        floor_cpu = figures["floor_cpu_s"]
        figures["cpu_ratio"] = round(figures["rate_cpu_s"] / floor_cpu, 2) if floor_cpu > 0 else None
    verdict = _verdict(figures)
    figures |= verdict

    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        _print_report(figures)
    return 0 if verdict["pass"] else 1


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time `cdrflow rate` on generated traffic against the polars I/O floor.",
        epilog="example: .venv/bin/python bench/rate_bench.py --cdrs 1000000 --accounts 20000",
    )
    parser.add_argument("--cdrs", type=int, default=1_000_000, help="CDR lines to generate (default 1,000,000)")
    parser.add_argument("--accounts", type=int, default=20_000, help="accounts to generate (default 20,000)")
    parser.add_argument("--month", default="2026-03", help="month of traffic, YYYY-MM (default 2026-03)")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the data set (default 7)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best counts (default 3)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one rating run may take (default 900)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    parser.add_argument("--phases", action="store_true", help="also time each phase of a rating run in one process")
    args = parser.parse_args(argv)
    if args.cdrs < 1 or args.accounts < 1 or args.repeat < 1:
        parser.error("--cdrs, --accounts and --repeat must be at least 1")
    return args


def _stderr_printer(*, quiet: bool) -> Callable[[str], None]:
    # Progress goes to stderr so that --json leaves stdout parseable.
    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return say


def _io_floor(source: Path, target: Path) -> tuple[float, float]:
    """(wall, CPU) seconds to read ``source`` with polars and write the frame back out."""
    started, cpu = time.perf_counter(), time.process_time()
    # Every column as text: area codes and numbers keep their leading zeros, as a rating
    # run must read them, and the broken lines of the feed cannot derail type inference.
    frame = pl.read_csv(source, infer_schema=False)
    frame.write_csv(target)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    target.unlink()
    return elapsed, cpu


def _start_up(data: GeneratedDataset, root: Path, *, repeat: int, timeout_s: float) -> dict[str, object]:
    """What a run costs before its CDRs: ``cdrflow rate`` of the file's header and first line
    with the same plans and accounts (process start, imports, loading the accounts), and a
    process that starts, imports polars and does the floor's read and write.

    The floor above is measured inside this (already started) interpreter; a ``cdrflow
    rate`` run is a process of its own. The two figures say how much of the ratio is that.
    """
    cdrflow = Path(sys.executable).with_name("cdrflow")
    one = root / "one-line.csv"
    with data.cdrs_file.open("rb") as handle:
        one.write_bytes(handle.readline() + handle.readline())
    rate_command = [
        str(cdrflow), "rate", str(one), "--plans", str(data.plans_dir), "--accounts", str(data.accounts_file),
        "--out", str(root / "one-line"),
    ]  # fmt: skip
    floor_script = (
        "import sys, polars as pl; pl.read_csv(sys.argv[1], infer_schema=False).write_csv(sys.argv[2])"
    )
    floor_command = [sys.executable, "-c", floor_script, str(data.cdrs_file), str(root / "process-floor.csv")]

    def best(command: list[str]) -> float | None:
        runs = []
        for _ in range(repeat):
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, timeout=timeout_s)
            if done.returncode != 0:
                return None
            runs.append(time.perf_counter() - started)
        return round(min(runs), 3)

    start_up, process_floor = best(rate_command), best(floor_command)
    (root / "process-floor.csv").unlink(missing_ok=True)
    return {"start_up_s": start_up, "process_floor_s": process_floor}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time_rate(data: GeneratedDataset, out_root: Path, *, repeat: int, timeout_s: float) -> dict[str, object]:
    """Run ``cdrflow rate`` ``repeat`` times; stop at the first failure and say why."""
    cdrflow = Path(sys.executable).with_name("cdrflow")
    if not cdrflow.exists():
        return {"rate_error": f"{cdrflow} not found: install the project (pip install -e .) in this venv"}
    runs: list[float] = []
    cpu_runs: list[float] = []
    accounted: dict[str, int] | None = None
    for attempt in range(1, repeat + 1):
        out = out_root / f"run-{attempt}"
        command = [
            str(cdrflow), "rate", str(data.cdrs_file),
            "--plans", str(data.plans_dir), "--accounts", str(data.accounts_file), "--out", str(out),
        ]  # fmt: skip
        started, cpu = time.perf_counter(), _children_cpu()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"rate_error": f"cdrflow rate did not finish within {timeout_s:.0f} s (--timeout)"}
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            return {"rate_error": _failure(command, done, elapsed)}
        runs.append(elapsed)
        cpu_runs.append(_children_cpu() - cpu)
        accounted = _accounted_lines(out)
        if attempt < repeat:
            shutil.rmtree(out)  # rated.csv of 1M CDRs is hundreds of MB; keep one at a time
    # ru_maxrss: kilobytes on Linux, bytes on macOS; the largest over all runs.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    return {
        "rate_s": round(min(runs), 3),
        "rate_median_s": round(statistics.median(runs), 3),
        "rate_runs_s": [round(s, 3) for s in runs],
        "rate_cpu_s": round(min(cpu_runs), 3),
        "rate_cpu_runs_s": [round(s, 3) for s in cpu_runs],
        "peak_mb": round(peak_mb, 1),
        "lines_accounted": accounted,
    }


# One rating run cut into its phases, run one after the other (no overlap) in a fresh
# interpreter: the sum is more than a real run's wall clock, which overlaps reading, rating
# and writing; each phase's share is what it costs.
_PHASES = """
import json, os, sys, time
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:5000,muzzy_decay_ms:5000")
figures = {}
mark = [time.perf_counter(), time.process_time()]
def phase(name):
    wall, cpu = time.perf_counter(), time.process_time()
    figures[name] = {"wall_s": round(wall - mark[0], 3), "cpu_s": round(cpu - mark[1], 3)}
    mark[:] = [wall, cpu]
import streams.cli
from rating import Catalog, RatingState, prepare, rate
from streams.cdr_files import iter_chunks, open_cdr_file
from streams.offline.rate import OutputFiles
from tariffs import load_tariffs
phase("imports")
cdrs, plans, accounts, out = sys.argv[1:5]
tariffs = load_tariffs(plans, accounts)
phase("load plans and accounts")
catalog = Catalog.from_tariffs(tariffs)
phase("compile the catalogue")
handle, layout, header = open_cdr_file(__import__("pathlib").Path(cdrs))
with handle:
    chunks = list(iter_chunks(handle))
phase("read the file")
batches, line = [], layout.first_line
for chunk in chunks:
    batches.append(layout.parse(chunk, line))
    line += chunk.count(b"\\n")
del chunks
phase("parse (schemas.cdr_csv)")
batches = [prepare(batch, catalog) for batch in batches]
phase("prepare (rating.prepare)")
state, results = RatingState.empty(), []
for batch in batches:
    result = rate(batch, state, catalog)
    state = result.state
    results.append(result)
phase("rate (rating.rate)")
with OutputFiles(__import__("pathlib").Path(out)) as outputs:
    for result in results:
        outputs.write(result)
phase("write rated/rejected/alerts.csv")
print(json.dumps(figures))
"""


def _phases(data: GeneratedDataset, out: Path, *, timeout_s: float) -> dict[str, object]:
    command = [
        sys.executable, "-c", _PHASES, str(data.cdrs_file), str(data.plans_dir), str(data.accounts_file), str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    if done.returncode != 0:
        return {"error": (done.stderr.strip() or "(no output)").splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _failure(command: list[str], done: subprocess.CompletedProcess[str], elapsed: float) -> str:
    tail = (done.stderr.strip() or done.stdout.strip() or "(no output)").splitlines()[-15:]
    return (
        f"cdrflow rate failed with exit code {done.returncode} after {elapsed:.2f} s\n"
        f"  command: {' '.join(command)}\n  " + "\n  ".join(tail)
    )


def _accounted_lines(out: Path) -> dict[str, int] | None:
    """Data lines of rated.csv and rejected.csv (spec 6: every input line is in one of them)."""
    counts: dict[str, int] = {}
    for name in _OUTPUT_FILES:
        path = out / name
        if not path.exists():
            return None
        with path.open("rb") as handle:
            newlines = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 24), b""))
        counts[name.removesuffix(".csv")] = max(0, newlines - 1)  # minus the header
    return counts


def _verdict(figures: dict[str, object]) -> dict[str, object]:
    if "rate_error" in figures:
        return {"pass": False, "missed": ["cdrflow rate did not complete"]}
    missed = []
    ratio, throughput, peak = figures.get("ratio"), figures.get("cdrs_per_s"), figures.get("peak_mb")
    if ratio is None or ratio > TARGET_RATIO:
        missed.append(f"ratio {ratio} > {TARGET_RATIO}")
    if throughput is None or throughput < TARGET_CDRS_PER_S:
        missed.append(f"{throughput:,} CDRs/s < {TARGET_CDRS_PER_S:,}" if throughput else "no throughput")
    if peak is None or peak >= TARGET_PEAK_MB:
        missed.append(f"peak {peak} MB >= {TARGET_PEAK_MB} MB")
    return {"pass": not missed, "missed": missed}


def _print_report(figures: dict[str, object]) -> None:
    print(
        f"CDRs          {figures['cdrs']:,} ({figures['accounts']:,} accounts, {figures['numbers']:,} numbers, "
        f"{figures['file_mb']} MB; generated in {figures['generate_s']:.2f} s)"
    )
    print(
        f"floor         {figures['floor_s']:.3f} s  (polars read_csv + write_csv; runs {figures['floor_runs_s']}); "
        f"CPU {figures['floor_cpu_s']:.3f} s"
    )
    if "rate_error" in figures:
        print(f"rate          FAILED: {figures['rate_error']}")
    else:
        print(
            f"rate          {figures['rate_s']:.3f} s best, {figures['rate_median_s']:.3f} s median "
            f"(cdrflow rate wall clock; runs {figures['rate_runs_s']})"
        )
        print(f"rate CPU      {figures['rate_cpu_s']:.3f} s  (user + system; runs {figures['rate_cpu_runs_s']})")
        print(f"CDRs/s        {figures['cdrs_per_s']:,}")
        print(f"ratio         {figures['ratio']:.2f} x floor (wall clock); {figures['cpu_ratio']:.2f} x in CPU time")
        print(f"peak memory   {figures['peak_mb']:,.0f} MB")
        if figures.get("start_up_s") is not None and figures.get("process_floor_s") is not None:
            ratio = figures["rate_s"] / figures["process_floor_s"]
            print(
                f"start-up      {figures['start_up_s']:.3f} s  (cdrflow rate of one line: process, imports, "
                f"the accounts) = {figures['start_up_s'] / figures['floor_s']:.1f} x the floor before a CDR is read"
            )
            print(
                f"process floor {figures['process_floor_s']:.3f} s  (a python process: import polars, read + write); "
                f"rate is {ratio:.2f} x it"
            )
        accounted = figures.get("lines_accounted")
        if isinstance(accounted, dict):
            total = sum(accounted.values())
            mark = "ok" if total == figures["cdrs"] else "MISMATCH"
            print(
                f"lines         {total:,} of {figures['cdrs']:,} in rated.csv ({accounted['rated']:,}) "
                f"+ rejected.csv ({accounted['rejected']:,}): {mark}"
            )
    phases = figures.get("phases")
    if isinstance(phases, dict) and "error" in phases:
        print(f"phases        FAILED: {phases['error']}")
    elif isinstance(phases, dict):
        total = sum(p["cpu_s"] for p in phases.values())
        print("phases        (one after the other, one process; wall / CPU seconds, share of CPU)")
        for name, p in phases.items():
            print(f"  {name:34} {p['wall_s']:6.3f}  {p['cpu_s']:6.3f}  {p['cpu_s'] / total:4.0%}")
    verdict = "PASS" if figures["pass"] else "FAIL (" + "; ".join(figures["missed"]) + ")"
    print(f"targets: ratio <= {TARGET_RATIO}, >= 400k CDRs/s, peak < 3 GB: {verdict}")


if __name__ == "__main__":
    sys.exit(main())
