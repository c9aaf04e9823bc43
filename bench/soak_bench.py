"""Months of traffic through one embedded stack: does anything grow with the age of the system?

Two runs on a throwaway stack (temporary state folder, free ports), one worker each
(issue 12):

1. **the hotline month** (``--parts``): ``cdrflow generate --cdrs 600000 --accounts 200
   --month 2026-03 --seed 11`` (its busiest account gets ~106k calls), ingested in 6
   parts of ~100k lines with ``--wait``; the export must equal ``cdrflow rate`` of the
   same lines exactly, and after a ``kill -9`` of the worker a new worker lands a new
   1000-line file. Targets: the last part within 2x the second; the new file within 60 s.
2. **the soak** (``--months``): 3 months of 1M CDRs over 2k accounts with the
   generator's skew plus one hotline of ~7% of the calls (>= 200k over the three),
   ingested month by month. After each month: ingest-to-landed time, the state log's
   bytes appended during the month, the largest state value, the worker's RSS, then
   ``kill -9``, a wait for the broker to drop the killed member (``DEAD_MEMBER_GONE_S``),
   and the time from a new worker's start to a new 1000-line file landed.
   Targets: month 3's ingest and restart within 1.5x of month 1's; largest value
   < 64 kB; state bytes per month within 1.5x of month 1's.

Prints a table per run and PASS/FAIL per target (``--json`` for scripts); exits 1 when
a target is missed.

Usage::

    .venv/bin/python bench/soak_bench.py                      # both runs (~12 min here)
    .venv/bin/python bench/soak_bench.py --skip-parts --month-cdrs 200000   # a quick soak
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Runnable from a plain checkout too, not only from an installed project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.kafka.client import log_end_offsets  # noqa: E402
from streams.offline.compare import compare_outputs  # noqa: E402
from streams.offline.generate import generate_dataset  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.stack import servers as stack  # noqa: E402
from streams.stack.status import worker_state  # noqa: E402

BIN = Path(sys.executable).parent
LATER_LINES = 1_000
MAX_VALUE_BYTES = 64 * 1024
#: The worker's group session (streams.worker.app: broker_session_timeout=10) and a margin. A new
#: worker that joins while the killed one is still a member joins twice (the second time
#: once the broker drops the dead member): ~13 s more, or not, depending on timing (one
#: soak measured 14.6 s after month 1 and 27-30 s after months 2-3, the state loading in
#: 0.3-0.8 s each time). The months' restarts wait this long after the kill, so each is
#: measured the same way; what could grow with the history is what comes after.
DEAD_MEMBER_GONE_S = 12.0


class Stack:
    """A throwaway embedded stack with one worker we can kill."""

    def __init__(self, root: Path):
        ports = stack.free_ports(4)
        self.root = root
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CDRFLOW_")},
            "CDRFLOW_STATE_DIR": str(root / "state"),
            "CDRFLOW_KAFKA_PORT": str(ports[0]),
            "CDRFLOW_CLICKHOUSE_TCP_PORT": str(ports[1]),
            "CDRFLOW_CLICKHOUSE_HTTP_PORT": str(ports[2]),
            "CDRFLOW_S3_PORT": str(ports[3]),
        }
        self.worker: subprocess.Popen | None = None
        self.workers = 0

    def settings(self) -> Settings:
        saved = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update(self.env)
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def cdrflow(self, *args: object, check: bool = True, timeout: float = 3600) -> str:
        done = subprocess.run(
            [str(BIN / "cdrflow"), *map(str, args)], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise SystemExit(f"cdrflow {' '.join(map(str, args))} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return done.stdout

    def start_worker(self) -> float:
        self.workers += 1
        log = (self.root / f"worker-{self.workers}.log").open("ab")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "streams.cli.worker", "--loglevel", "info"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        return time.perf_counter()

    def kill_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGKILL)
            self.worker.wait(timeout=30)

    def resume_s(self) -> float | None:
        """How long the current worker's last resume took (loading the state), from its log."""
        import re

        text = (self.root / f"worker-{self.workers}.log").read_text(errors="replace")
        found = re.findall(r"resumed .* in ([0-9.]+) s", text)
        return float(found[-1]) if found else None

    def worker_rss_mb(self) -> float:
        assert self.worker is not None
        for line in Path(f"/proc/{self.worker.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def ingest(self, path: Path) -> float:
        started = time.perf_counter()
        self.cdrflow("ingest", path, "--wait", "--timeout", "3000", "--json")
        return time.perf_counter() - started

    def state(self, timeout_s: float = 60.0) -> dict[int, dict[str, Any]]:
        """The state figures once the worker published them for all it read: each
        partition's checkpoint at the end of its ``cdr.raw`` partition."""
        settings = self.settings()
        deadline = time.monotonic() + timeout_s
        from kafka import TopicPartition

        partitions = [TopicPartition("cdr.raw", p) for p in range(settings.topic_partitions)]
        while True:
            ends = {tp.partition: end for tp, end in log_end_offsets(settings.kafka_access(), partitions, timeout_s=30).items()}
            figures = worker_state(settings)
            if figures and all(figures.get(p, {}).get("checkpoint") == end for p, end in ends.items()):
                return figures
            if time.monotonic() > deadline:
                print(f"(state figures not settled after {timeout_s:.0f} s: {ends} vs "
                      f"{ {p: f.get('checkpoint') for p, f in figures.items()} })", file=sys.stderr)
                return figures
            time.sleep(1.0)

    def down(self) -> None:
        self.kill_worker()
        self.cdrflow("down", check=False)


def _split(cdrs: Path, out: Path, parts: int, later: int) -> tuple[list[Path], Path]:
    """``parts`` files of the file's lines but the last ``later``, and one of those (headers kept)."""
    raw = cdrs.read_bytes().splitlines(keepends=True)
    header, lines = raw[0], raw[1:]
    body, tail = lines[: len(lines) - later], lines[len(lines) - later :]
    out.mkdir(parents=True, exist_ok=True)
    size = -(-len(body) // parts)
    files = []
    for index in range(parts):
        path = out / f"part-{index + 1}.csv"
        path.write_bytes(header + b"".join(body[index * size : (index + 1) * size]))
        files.append(path)
    later_file = out / f"part-{parts + 1}.csv"  # after the others, in name order too (the export sorts by file)
    later_file.write_bytes(header + b"".join(tail))
    return files, later_file


def _renumber(rejected: Path, files: list[Path]) -> None:
    """Line numbers of the part files as lines of the whole file they were cut from (the
    offline run rates the whole file): the rows name their ``file``."""
    import polars as pl

    start, base = 0, {}
    for path in files:
        base[path.name] = start
        start += len(path.read_bytes().splitlines()) - 1
    frame = pl.read_csv(rejected, infer_schema=False)
    frame = frame.with_columns(
        line=(pl.col("line").cast(pl.Int64) + pl.col("file").replace_strict(base, return_dtype=pl.Int64)).cast(pl.String)
    )
    frame.write_csv(rejected)


def _appended(figures: dict[int, dict[str, Any]]) -> int:
    return sum(f.get("appended_total", 0) for f in figures.values())


def _largest(figures: dict[int, dict[str, Any]]) -> int:
    return max((f.get("largest_value", 0) for f in figures.values()), default=0)


def run_parts(root: Path, say: Any, cdrs: int, accounts: int) -> dict[str, Any]:
    work = Stack(root)
    try:
        say("hotline month: stack, data ...")
        work.cdrflow("up")
        data = generate_dataset(root / "data", cdrs=cdrs, accounts=accounts, month="2026-03", seed=11)
        parts, later = _split(data.cdrs_file, root / "parts", 6, LATER_LINES)
        work.cdrflow("load", "--plans", data.plans_dir, "--accounts", data.accounts_file)
        work.start_worker()
        times = []
        for index, part in enumerate(parts, start=1):
            times.append(work.ingest(part))
            say(f"  part {index}: {times[-1]:.1f} s")
        figures = work.state()
        work.kill_worker()
        began = work.start_worker()
        work.ingest(later)
        restart_s = time.perf_counter() - began
        say(f"  kill -9, new worker: the new file landed {restart_s:.1f} s after its start")
        work.cdrflow("export", "--out", root / "export")
        _renumber(root / "export" / "rejected.csv", [*parts, later])
        work.cdrflow("rate", data.cdrs_file, "--plans", data.plans_dir, "--accounts", data.accounts_file,
                     "--out", root / "offline", "--json")
        compared = compare_outputs(root / "offline", root / "export")
        return {
            "cdrs": cdrs,
            "accounts": accounts,
            "part_s": [round(t, 2) for t in times],
            "restart_to_landed_s": round(restart_s, 2),
            "largest_value": _largest(figures),
            "state_bytes_appended": _appended(figures),
            "exact": compared.ok,
            "differences": None if compared.ok else compared.report()[:2000],
            "targets": {
                "exact": compared.ok,
                "last part <= 2x the second": times[-1] <= 2 * times[1],
                "new file within 60 s of the restart": restart_s <= 60,
            },
        }
    finally:
        work.down()


def run_months(root: Path, say: Any, months: int, cdrs: int, accounts: int, hot_share: float) -> dict[str, Any]:
    work = Stack(root)
    rows = []
    try:
        say("soak: stack ...")
        work.cdrflow("up")
        before = 0
        for index in range(months):
            month = f"2026-{3 + index:02d}"
            say(f"soak: generating {month} ({cdrs:,} CDRs) ...")
            data = generate_dataset(
                root / month, cdrs=cdrs, accounts=accounts, month=month, seed=21, hot_share=hot_share
            )
            files, later = _split(data.cdrs_file, root / month / "in", 1, LATER_LINES)
            if index == 0:
                work.cdrflow("load", "--plans", data.plans_dir, "--accounts", data.accounts_file)
                work.start_worker()
            ingest_s = work.ingest(files[0])
            figures = work.state()
            rss = work.worker_rss_mb()
            appended = _appended(figures) - before
            work.kill_worker()
            time.sleep(DEAD_MEMBER_GONE_S)
            began = work.start_worker()
            work.ingest(later)
            restart_s = time.perf_counter() - began
            resume_s = work.resume_s()
            figures = work.state()
            before = _appended(figures)
            rows.append(
                {
                    "month": month,
                    "ingest_to_landed_s": round(ingest_s, 2),
                    "state_bytes_appended": appended,
                    "largest_value": _largest(figures),
                    "live_state_bytes": sum(f.get("live_bytes", 0) for f in figures.values()),
                    "generations": {p: f.get("generation") for p, f in figures.items()},
                    "worker_rss_mb": round(rss, 1),
                    "restart_to_landed_s": round(restart_s, 2),
                    "state_loaded_in_s": resume_s,
                }
            )
            say(f"  {month}: {rows[-1]}")
    finally:
        work.down()
    first, last = rows[0], rows[-1]
    return {
        "months": rows,
        "targets": {
            "last month's ingest within 1.5x the first's": last["ingest_to_landed_s"] <= 1.5 * first["ingest_to_landed_s"],
            "last month's restart within 1.5x the first's": last["restart_to_landed_s"] <= 1.5 * first["restart_to_landed_s"],
            "largest value < 64 kB": max(r["largest_value"] for r in rows) < MAX_VALUE_BYTES,
            "state bytes per month within 1.5x the first's": all(
                r["state_bytes_appended"] <= 1.5 * first["state_bytes_appended"] for r in rows
            ),
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    say = (lambda _: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    figures: dict[str, Any] = {}
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    folder = (
        contextlib.nullcontext(tempfile.mkdtemp(prefix="cdrflow-soak-bench-", dir=args.keep))
        if args.keep is not None
        else tempfile.TemporaryDirectory(prefix="cdrflow-soak-bench-")
    )
    with folder as tmp:
        if not args.skip_parts:
            figures["hotline_month"] = run_parts(Path(tmp) / "parts", say, args.parts_cdrs, args.parts_accounts)
        if not args.skip_months:
            figures["soak"] = run_months(
                Path(tmp) / "months", say, args.months, args.month_cdrs, args.accounts, args.hot_share
            )
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        _print(figures)
    return 0 if all(ok for run in figures.values() for ok in run["targets"].values()) else 1


def _print(figures: dict[str, Any]) -> None:
    parts = figures.get("hotline_month")
    if parts:
        print(f"hotline month: {parts['cdrs']:,} CDRs over {parts['accounts']} accounts in 6 parts")
        print("  ingest --wait per part (s): " + ", ".join(f"{t:.1f}" for t in parts["part_s"]))
        print(f"  kill -9, then a new 1000-line file landed {parts['restart_to_landed_s']:.1f} s after the new worker's start")
        print(f"  largest state value {parts['largest_value']:,} bytes; export equal to `cdrflow rate`: {parts['exact']}")
        if parts["differences"]:
            print(parts["differences"])
        for name, ok in parts["targets"].items():
            print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    soak = figures.get("soak")
    if soak:
        print("soak, month by month:")
        print(
            f"  {'month':8} {'ingest s':>9} {'state bytes':>13} {'largest':>8} {'live state':>12} {'RSS MB':>7} "
            f"{'restart s':>9} {'of which loading the state':>27}"
        )
        for row in soak["months"]:
            print(
                f"  {row['month']:8} {row['ingest_to_landed_s']:9.1f} {row['state_bytes_appended']:13,} "
                f"{row['largest_value']:8,} {row['live_state_bytes']:12,} {row['worker_rss_mb']:7.0f} "
                f"{row['restart_to_landed_s']:9.1f} {row['state_loaded_in_s'] or 0:27.1f}"
            )
        for name, ok in soak["targets"].items():
            print(f"  {'PASS' if ok else 'FAIL'}  {name}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts-cdrs", type=int, default=600_000)
    parser.add_argument("--parts-accounts", type=int, default=200)
    parser.add_argument("--months", type=int, default=3)
    parser.add_argument("--month-cdrs", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--hot-share", type=float, default=0.07, help="the hotline's share of each month's calls")
    parser.add_argument("--skip-parts", action="store_true")
    parser.add_argument("--skip-months", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep what the runs wrote")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
