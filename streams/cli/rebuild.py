"""``cdrflow rebuild``: drop the ClickHouse projections and fill them again from the Kafka log.

ClickHouse is a projection: every row it holds came from an output topic of the worker
(``billing.events``, ``cdr.rejected`` and ``rating.rejected``, ``alerts``,
``ledger.events``, ``account.balances``), which keep every message. Rebuilding empties each table and
inserts every message of its topic again through the sink; copies of a replayed
message collapse as they always do, so the tables read (FINAL) exactly as before.
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import polars as pl
import typer
from rich.table import Table

from schemas import topics
from streams.cli._common import ExitCode, StateDirOption, console, fail, settings_or_fail
from streams.clickhouse import insert as inserts
from streams.kafka.client import BrokerError, read_to_end, topic_name

#: table <- output topics, and the sink's insert for it
PROJECTIONS = (
    ("rated_calls", (topics.BILLING_EVENTS,), "rated", inserts.insert_rated),
    ("rejected_cdrs", (topics.CDR_REJECTED, topics.RATING_REJECTED), "rejected", inserts.insert_rejected),
    ("alerts", (topics.ALERTS,), "alerts", inserts.insert_alerts),
    ("billing_events", (topics.LEDGER_EVENTS,), "ledger", inserts.insert_billing_events),
    ("account_balances", (topics.ACCOUNT_BALANCES,), "balances", inserts.insert_balances),
)

#: Tables filled from a projection by materialized views (or, for the invoices, by its
#: insert: the documents its events carry): emptied with it, filled again by its inserts (the finance views collapse repeats anyway; the history must not keep
#: versions the log no longer has).
DERIVED = {"rated_calls": ("rated_call_versions",), "billing_events": ("invoices", "invoice_lines")}


def rebuild(
    json_: Annotated[bool, typer.Option("--json", help="Print the rows per table as JSON.")] = False,
    state_dir: StateDirOption = None,
) -> None:
    """Empty the ClickHouse tables and rebuild them from the Kafka log (stop the worker first)."""
    from streams.worker.sinks import read_output

    settings = settings_or_fail(state_dir=state_dir)
    db = inserts.connect(settings)
    counts: dict[str, int] = {}
    started = time.monotonic()
    for table, topics, kind, insert in PROJECTIONS:
        names = [topic_name(topic, settings.topic_prefix) for topic in topics]
        with console.status(f"reading {', '.join(names)}"):
            try:
                records = read_to_end(settings, names, timeout_s=300)
            except BrokerError as error:
                raise fail(f"{error}; nothing was dropped", ExitCode.FAILED) from None
        frames = []
        for record in records:
            try:
                frames.append(read_output(record.value, kind))  # type: ignore[arg-type]
            except Exception:  # a foreign message: the sink skipped it too
                continue
        db.execute(f"TRUNCATE TABLE {table}")
        for view_target in DERIVED.get(table, ()):
            db.execute(f"TRUNCATE TABLE {view_target}")
        rows = 0
        for start in range(0, len(frames), 2000):
            chunk = [f for f in frames[start : start + 2000] if f.height]
            if chunk:
                rows += insert(db, pl.concat(chunk, how="diagonal_relaxed"))
        counts[table] = rows
    seconds = time.monotonic() - started
    if json_:
        console.print_json(json.dumps({"rows": counts, "seconds": round(seconds, 3)}))
        return
    out = Table(title=f"rebuilt from the Kafka log in {seconds:.1f} s", title_justify="left")
    out.add_column("table")
    out.add_column("rows inserted", justify="right")
    for table, rows in counts.items():
        out.add_row(table, f"{rows:,}")
    console.print(out)
