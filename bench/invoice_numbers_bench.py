"""Time the number of one more invoice after N requests on the seller's sequence (issue 24).

``streams.ledger.invoice_numbers.allocate`` writes its request and reads partition 0 of
``invoice.numbers`` from its start up to that request (docs/finance.md "Invoice numbers"),
so its cost grows with the requests made so far. This writes ``--requests`` requests
(default 240,000: a year of monthly invoices of 20,000 accounts) to a fresh topic, then
times ``--repeat`` allocations of one more document, each checking that the number it got
is the next one (the requests are all distinct documents).

The broker is a throwaway embedded stack on free ports unless ``--state-dir`` names a
running one; the topic is a fresh prefix's.

Usage::

    .venv/bin/python bench/invoice_numbers_bench.py --requests 240000 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402
from sink_bench import _clickhouse  # noqa: E402

from schemas.topics import INVOICE_NUMBERS  # noqa: E402
from streams.kafka.client import make_producer, topic_name  # noqa: E402
from streams.ledger.invoice_numbers import PARTITION, NumberRequest, allocate  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.stack import servers as stack  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=240_000, help="requests already on the sequence")
    parser.add_argument("--repeat", type=int, default=3, help="allocations timed; the median counts")
    parser.add_argument("--state-dir", type=Path, help="use the running stack of this state folder")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = parser.parse_args(argv)
    say = (lambda text: None) if args.json else (lambda text: print(text, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix="cdrflow-numbers-bench-") as scratch:
        base, started = _clickhouse(args.state_dir, Path(scratch), say)
        try:
            settings = Settings(**{**base.model_dump(), "topic_prefix": f"bench{uuid.uuid4().hex[:8]}."})
            topic = topic_name(INVOICE_NUMBERS, settings.topic_prefix)
            admin = KafkaAdminClient(**settings.kafka_access().kafka_python())
            admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
            admin.close()
            say(f"writing {args.requests:,} requests to {topic}")
            written = time.monotonic()
            producer = make_producer(settings, linger_ms=50)
            for index in range(args.requests):
                request = NumberRequest("bench", f"invoice/A{index:07d}/2026-03", f"A{index:07d}", "invoice", "2026-03")
                producer.send(topic, key=b"bench", value=request.value(), partition=PARTITION)
            producer.flush(timeout=600)
            producer.close()
            write_s = time.monotonic() - written
            times = []
            for run in range(args.repeat):
                request = NumberRequest("bench", f"invoice/NEW{run}/2026-03", f"NEW{run}", "invoice", "2026-03")
                began = time.monotonic()
                numbers = allocate(settings, [request])
                times.append(time.monotonic() - began)
                assert numbers[("bench", request.document)][0] == args.requests + run + 1
            figures = {
                "requests": args.requests,
                "write_s": round(write_s, 2),
                "allocate_s_median": round(statistics.median(times), 2),
                "allocate_s": [round(t, 2) for t in times],
                "requests_read_per_s": round(args.requests / statistics.median(times)),
            }
        finally:
            if started:
                stack.down(base, purge=True)
    print(json.dumps(figures) if args.json else "\n".join(f"{k}: {v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
