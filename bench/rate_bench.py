"""Time ``cdrflow rate`` on a generated month of traffic against the I/O floor of polars.

Generates a data set into a temporary folder (``streams.generate.generate_dataset``), then
in the same run measures:

- the **I/O floor**: ``polars.read_csv`` of ``cdrs.csv`` and ``write_csv`` of the frame to
  another file, best of ``--repeat``. A rating run reads the same file and writes at least
  as much, so it cannot beat this;
- **cdrflow rate**: ``cdrflow rate CDRS --plans DIR --accounts FILE --out DIR`` as a
  subprocess (the ``cdrflow`` next to this Python), wall clock, best of ``--repeat``, and
  its peak resident memory (``ru_maxrss`` of the waited-for children: the only children
  this script starts are those runs).

Targets: rate/floor ratio <= 2.0, >= 400k CDRs/s, peak memory < 3 GB.

Usage::

    .venv/bin/python bench/rate_bench.py                      # 1M CDRs, 20k accounts
    .venv/bin/python bench/rate_bench.py --cdrs 100000 --accounts 2000 --json

Exit status: 0 when every target is met, 1 when one is missed or the rating run failed,
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Runnable from a plain checkout too, not only from an installed project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from streams.generate import GeneratedDataset, generate_dataset  # noqa: E402

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
        floor_s = min(floor_runs)
        figures |= {"floor_s": round(floor_s, 3), "floor_runs_s": [round(s, 3) for s in floor_runs]}

        say(f"cdrflow rate, best of {args.repeat} ...")
        rate = _time_rate(data, root / "rated", repeat=args.repeat, timeout_s=args.timeout)
        figures |= rate

    rate_s = figures.get("rate_s")
    if isinstance(rate_s, float):
        figures["cdrs_per_s"] = round(data.cdrs / rate_s) if rate_s > 0 else None
        figures["ratio"] = round(rate_s / floor_s, 2) if floor_s > 0 else None
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


def _io_floor(source: Path, target: Path) -> float:
    """Seconds to read ``source`` with polars and write the frame back out."""
    started = time.perf_counter()
    # Every column as text: area codes and numbers keep their leading zeros, as a rating
    # run must read them, and the broken lines of the feed cannot derail type inference.
    frame = pl.read_csv(source, infer_schema=False)
    frame.write_csv(target)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def _time_rate(data: GeneratedDataset, out_root: Path, *, repeat: int, timeout_s: float) -> dict[str, object]:
    """Run ``cdrflow rate`` ``repeat`` times; stop at the first failure and say why."""
    cdrflow = Path(sys.executable).with_name("cdrflow")
    if not cdrflow.exists():
        return {"rate_error": f"{cdrflow} not found: install the project (pip install -e .) in this venv"}
    runs: list[float] = []
    accounted: dict[str, int] | None = None
    for attempt in range(1, repeat + 1):
        out = out_root / f"run-{attempt}"
        command = [
            str(cdrflow), "rate", str(data.cdrs_file),
            "--plans", str(data.plans_dir), "--accounts", str(data.accounts_file), "--out", str(out),
        ]  # fmt: skip
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"rate_error": f"cdrflow rate did not finish within {timeout_s:.0f} s (--timeout)"}
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            return {"rate_error": _failure(command, done, elapsed)}
        runs.append(elapsed)
        accounted = _accounted_lines(out)
        if attempt < repeat:
            shutil.rmtree(out)  # rated.csv of 1M CDRs is hundreds of MB; keep one at a time
    # ru_maxrss: kilobytes on Linux, bytes on macOS; the largest over all runs.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    return {
        "rate_s": round(min(runs), 3),
        "rate_runs_s": [round(s, 3) for s in runs],
        "peak_mb": round(peak_mb, 1),
        "lines_accounted": accounted,
    }


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
    print(f"floor         {figures['floor_s']:.3f} s  (polars read_csv + write_csv; runs {figures['floor_runs_s']})")
    if "rate_error" in figures:
        print(f"rate          FAILED: {figures['rate_error']}")
    else:
        print(f"rate          {figures['rate_s']:.3f} s  (cdrflow rate wall clock; runs {figures['rate_runs_s']})")
        print(f"CDRs/s        {figures['cdrs_per_s']:,}")
        print(f"ratio         {figures['ratio']:.2f} x floor")
        print(f"peak memory   {figures['peak_mb']:,.0f} MB")
        accounted = figures.get("lines_accounted")
        if isinstance(accounted, dict):
            total = sum(accounted.values())
            mark = "ok" if total == figures["cdrs"] else "MISMATCH"
            print(
                f"lines         {total:,} of {figures['cdrs']:,} in rated.csv ({accounted['rated']:,}) "
                f"+ rejected.csv ({accounted['rejected']:,}): {mark}"
            )
    verdict = "PASS" if figures["pass"] else "FAIL (" + "; ".join(figures["missed"]) + ")"
    print(f"targets: ratio <= {TARGET_RATIO}, >= 400k CDRs/s, peak < 3 GB: {verdict}")


if __name__ == "__main__":
    sys.exit(main())
