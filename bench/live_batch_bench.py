"""The worker's rating step on a live feed's batches, in one process, without Kafka.

A live feed (``ingest --tail``, ``route``) sends each account's lines of a pass as one
message, so a rating batch of 1,000 messages holds a few lines each of ~1,000 accounts:
the step's cost is per account (decode its records, rate, encode what changed), not per
line. This bench measures that step alone: ``streams.worker.batch.rate_messages`` and the
fold of its records into the state (what the worker's state log does after a write).

1. a month of traffic is generated (``--accounts``, ``--cdrs``) and cut as a live feed
   at ``--rate`` lines/s cuts it: a message per account and second, in time order;
2. batches of ``--batch`` messages are rated one after the other on the state the ones
   before left; the first ``--warmup`` are not counted (the state fills);
3. printed: per batch, the median / p90 / max wall time, the accounts and lines of a
   batch, and the microseconds per account.

The end-to-end figure is bench/latency_bench.py's; this one isolates the rating step,
where the worker spends most of its CPU on a live feed (docs/streaming.md, Latency), so a
change to it is compared in seconds instead of a noisy minute-long run.

Usage::

    .venv/bin/python bench/live_batch_bench.py                 # 2,000 accounts, 2,000 lines/s
    .venv/bin/python bench/live_batch_bench.py --accounts 20000 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from rating import Catalog  # noqa: E402
from schemas.cdr_csv import parse_csv  # noqa: E402
from schemas.messages import cdr_chunk_value  # noqa: E402
from streams.cdr_files import stamped  # noqa: E402
from streams.offline.generate import generate_dataset  # noqa: E402
from streams.worker.batch import rate_messages  # noqa: E402
from streams.worker.messages import SourceMessage  # noqa: E402
from streams.worker.state_records import RecordFold  # noqa: E402
from tariffs import load_tariffs  # noqa: E402

PARTITIONS = 4


def live_messages(cdrs: pl.DataFrame, owner: dict[str, str], rate: int) -> list[SourceMessage]:
    """The lines in time order, a message per account and ``rate`` lines (a second of the
    feed), each account on one partition, offsets in order, with ``read_at`` as the tail
    sends them."""
    # Stamped with read_at, as `ingest --tail` stamps the lines it reads (rating.bounds).
    lines = stamped(cdrs.sort("end_time", maintain_order=True), datetime(2026, 4, 1, tzinfo=UTC)).with_columns(
        _key=pl.col("called").replace_strict(owner, default="", return_dtype=pl.String)
    )
    offsets = [0] * PARTITIONS
    messages = []
    for start in range(0, lines.height, rate):
        second = lines.slice(start, rate)
        for (key,), group in second.partition_by("_key", maintain_order=True, as_dict=True).items():
            partition = sum(key.encode()) % PARTITIONS
            value = json.dumps(cdr_chunk_value("Master.csv", group.drop("_key"), "live")).encode()
            messages.append(SourceMessage(key.encode(), partition, offsets[partition], value))
            offsets[partition] += 1
    return messages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--cdrs", type=int, default=132_500, help="a month of traffic to cut into batches")
    parser.add_argument("--rate", type=int, default=2_000, help="lines per second of the feed (per message round)")
    parser.add_argument("--batch", type=int, default=1_000, help="messages per rating batch (the worker's)")
    parser.add_argument("--warmup", type=int, default=25, help="batches not counted")
    parser.add_argument("--batches", type=int, default=25, help="batches counted")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cdrflow-live-batch-") as folder:
        print(f"generating {args.cdrs:,} CDRs over {args.accounts:,} accounts ...", file=sys.stderr)
        data = generate_dataset(Path(folder), cdrs=args.cdrs, accounts=args.accounts, month="2026-03", seed=5)
        tariffs = load_tariffs(data.plans_dir, data.accounts_file)
        catalog = Catalog.from_tariffs(tariffs)
        messages = live_messages(parse_csv(data.cdrs_file.read_bytes()), tariffs.account_of_number(), args.rate)
    needed = (args.warmup + args.batches) * args.batch
    if len(messages) < needed:
        parser.error(f"{len(messages):,} messages, {needed:,} needed: more --cdrs, or fewer batches")

    fold = RecordFold()
    times, accounts, lines = [], [], []
    for number in range(args.warmup + args.batches):
        batch = messages[number * args.batch : (number + 1) * args.batch]
        started = time.perf_counter()
        outcome = rate_messages(batch, {m.key: fold.accounts.get(m.key) for m in batch}, catalog, "cdr.raw")
        for _, records in outcome.states.values():
            for key, value in records:
                fold.apply(key, value)
        if number >= args.warmup:
            times.append(time.perf_counter() - started)
            accounts.append(len(outcome.states))
            lines.append(outcome.lines)

    times.sort()
    figures = {
        "batch_s": {
            "median": round(statistics.median(times), 4),
            "p90": round(times[int(0.9 * (len(times) - 1))], 4),
            "max": round(times[-1], 4),
        },
        "accounts_per_batch": round(statistics.mean(accounts)),
        "lines_per_batch": round(statistics.mean(lines)),
        "us_per_account": round(1e6 * statistics.median(times) / statistics.mean(accounts), 1),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        batch_s = figures["batch_s"]
        print(
            f"rating step, {args.accounts:,} accounts, {args.rate:,} lines/s, batches of {args.batch:,} messages: "
            f"{batch_s['median']:.3f} / {batch_s['p90']:.3f} / {batch_s['max']:.3f} s (median / p90 / max), "
            f"{figures['accounts_per_batch']:,} accounts and {figures['lines_per_batch']:,} lines a batch, "
            f"{figures['us_per_account']:.0f} us per account"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
