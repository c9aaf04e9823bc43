"""A correction through the worker's batch step (streams.worker.batch), without Kafka.

Half of each account's log is rated with a wrong plan; the correction is worked out as
``cdrflow rerate`` does (rating.rerate, streams.ledger.rerate.correction_commands) and folded by
the worker, crashed once in the middle; the other half is rated after it with the right
plan. What the worker sent must then be what a run with the right plan from the start
gives: every call, every alert, every balance.
"""

from __future__ import annotations

import shutil
from datetime import date, datetime, timezone
from pathlib import Path

import orjson
import polars as pl

from rating import Catalog, RatingState, rate
from rating.corrected_history import Billed
from rating.rerate import COMPARED_COLUMNS, Period, Rerun, correction_catalog, diff
from schemas.cdr_csv import parse_csv
from schemas.ledger import LedgerCommand
from schemas.messages import cdr_chunk_value, cdr_chunks_frame
from streams.ledger.commands import event_order
from streams.ledger.rerate import Prepared, correction_commands
from streams.worker.batch import BatchOutcome, rate_messages
from streams.worker.messages import SourceMessage
from streams.worker.sinks import read_output
from streams.worker.state_records import RecordFold
from tariffs import Tariffs, load_tariffs
from tests.conftest import VECTORS

TOPIC = "cdr.raw"
MIXED = VECTORS / "mixed"
PARTITIONS = 3


class Log:
    """Messages of accounts on partitions, offsets given as they are appended."""

    def __init__(self) -> None:
        self.next = [0] * PARTITIONS

    def message(self, account: str, value: bytes) -> SourceMessage:
        partition = sum(account.encode()) % PARTITIONS
        offset = self.next[partition]
        self.next[partition] += 1
        return SourceMessage(account.encode(), partition, offset, value)


def _tariffs(tmp_path: Path) -> tuple[Tariffs, Tariffs]:
    wrong = tmp_path / "wrong"
    shutil.copytree(MIXED / "plans", wrong)
    text = (wrong / "std-100.toml").read_text()
    # Billed too cheap: the right first tier past the package is 0.15 a minute.
    (wrong / "std-100.toml").write_text(text.replace('up_to_minutes = 100, per_minute = "0.15"',
                                                     'up_to_minutes = 100, per_minute = "0.01"', 1))
    return load_tariffs(wrong, MIXED / "accounts.toml"), load_tariffs(MIXED / "plans", MIXED / "accounts.toml")


def _run(messages: list[SourceMessage], catalog: Catalog, table: RecordFold, *, write: bool = True) -> BatchOutcome:
    outcome = rate_messages(messages, {m.key: table.accounts.get(m.key) for m in messages}, catalog, TOPIC)
    if write:
        for _, (_, records) in outcome.states.items():
            for key, value in records:
                table.apply(key, value)
    return outcome


def _outputs(outcomes: list[BatchOutcome], kind: str) -> pl.DataFrame:
    frames = [read_output(m.value, kind) for o in outcomes for m in o.outputs if m.kind == kind]
    return pl.concat(frames, how="diagonal_relaxed")


def _lines(messages: list[SourceMessage]) -> pl.DataFrame:
    chunks = [m for m in messages if b'"ledger"' not in (m.value or b"")]
    decoded = cdr_chunks_frame([m.value for m in chunks])
    per_line = [m for m, height in zip(chunks, decoded.heights, strict=True) for _ in range(height)]
    return decoded.frame.with_columns(
        topic=pl.lit(TOPIC),
        partition=pl.Series([m.partition for m in per_line], dtype=pl.Int32),
        offset=pl.Series([m.offset for m in per_line], dtype=pl.Int64),
    )


def test_a_correction_folded_by_the_worker_makes_the_run_the_right_plans_from_the_start(tmp_path: Path) -> None:
    wrong_tariffs, right_tariffs = _tariffs(tmp_path)
    wrong, right = Catalog.from_tariffs(wrong_tariffs), Catalog.from_tariffs(right_tariffs)
    batch = parse_csv((MIXED / "cdrs.csv").read_bytes())
    owner = right_tariffs.account_of_number()
    log = Log()
    first_half: list[SourceMessage] = []
    second_half: list[SourceMessage] = []
    opened_at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for account in right_tariffs.accounts:
        command = LedgerCommand(kind="open", account_id=account.id, at=opened_at, plan=account.plan,
                                numbers=list(account.numbers), opening_balance=account.opening_balance, imported=True)
        first_half.append(log.message(account.id, orjson.dumps(command.message_value())))
    keyed = batch.with_columns(_key=pl.col("called").replace_strict(owner, default=None, return_dtype=pl.String))
    halves: dict[str, tuple[list[bytes], list[bytes]]] = {}
    for (key,), lines in keyed.filter(pl.col("_key").is_not_null()).partition_by("_key", as_dict=True,
                                                                                   maintain_order=True).items():
        values = [orjson.dumps(cdr_chunk_value("cdrs.csv", lines.slice(s, 40), "i1")) for s in range(0, lines.height, 40)]
        halves[key] = (values[: (len(values) + 1) // 2], values[(len(values) + 1) // 2:])
    for key, (first, _) in halves.items():
        first_half += [log.message(key, value) for value in first]

    # The worker rates the first half with the wrong plan.
    table = RecordFold()
    billed_outcomes = [_run(first_half[s : s + 25], wrong, table) for s in range(0, len(first_half), 25)]

    # cdrflow rerate: what was billed (as the sinks land it), rated again, diffed.
    rated = _outputs(billed_outcomes, "rated").with_columns(
        version=pl.lit(0, dtype=pl.UInt64), correction_id=pl.lit("")
    )
    events = _outputs(billed_outcomes, "ledger").filter((pl.col("amount") != 0) | (pl.col("opening_balance") != 0))
    alerts = _outputs(billed_outcomes, "alerts")
    accounts = [a.id for a in right_tariffs.accounts]
    billed = Billed(
        rated=rated,
        rejected=_outputs(billed_outcomes, "rejected"),
        events=events.with_columns(seq=pl.col("kind").replace_strict(event_order(), return_dtype=pl.Int64)),
        cap_alerts=alerts.filter(pl.col("kind") == "daily_cap_reached").select("account_id", "cdr_id"),
        opening=pl.DataFrame({"account_id": accounts, "balance": [0] * len(accounts)}),
    )
    period = Period(date(2026, 1, 1), date(2026, 2, 28))
    catalog = correction_catalog(right)
    rerun = Rerun(catalog, period, accounts, billed.rejected)
    rerun.add(_lines(first_half))
    found = diff(rerun.result(), billed, period, catalog)
    assert found.problems == [] and found.calls.height > 20 and found.alerts.height > 0
    based_on = {a: log.next[sum(a.encode()) % PARTITIONS] - 1 for a in accounts}
    prepared = Prepared(accounts=accounts, period=period, diff=found, based_on=based_on, catalogue="test")
    commands = correction_commands(prepared, datetime(2026, 3, 5, 10, tzinfo=timezone.utc))
    corrections = [log.message(c.account_id, orjson.dumps(c.message_value())) for c in commands]
    assert len(corrections) >= len({c.account_id for c in commands})

    # The worker, with the right plan loaded, folds the correction: crashed once before it
    # wrote its state (its outputs were sent), then again; then the second half comes.
    crashed = _run(corrections, right, table, write=False)
    applied = [_run(corrections[s : s + 3], right, table) for s in range(0, len(corrections), 3)]
    assert _outputs([crashed], "ledger").equals(_outputs(applied, "ledger"))
    for key, (_, second) in halves.items():
        second_half += [log.message(key, value) for value in second]
    later = [_run(second_half[s : s + 25], right, table) for s in range(0, len(second_half), 25)]
    # A copy of the correction (the CLI retried) changes nothing.
    copies = [log.message(m.key.decode(), m.value) for m in corrections]
    again = _run(copies, right, table)
    assert [m.kind for m in again.outputs] == ["balances"] * len({m.key for m in copies})

    truth = rate(batch, RatingState.empty(), right)
    everything = [*billed_outcomes, crashed, *applied, *later, again]
    sent = (
        _outputs(everything, "rated").with_columns(pl.col("version").fill_null(0))
        .sort("version", maintain_order=True)
        .unique(["account_id", "cdr_id"], keep="last", maintain_order=True)
    )
    keys = ["account_id", "cdr_id"]
    columns = [*keys, *COMPARED_COLUMNS, "local_day", "line"]
    assert sent.select(columns).sort(keys).equals(truth.rated.select(columns).sort(keys))
    balances = _outputs(everything, "balances").unique("account_id", keep="last", maintain_order=True)
    assert balances.select("account_id", "balance").sort("account_id").equals(truth.state.balances.sort("account_id"))
    alert_rows = (
        _outputs(everything, "alerts").with_columns(pl.col("version").fill_null(0), pl.col("cancelled").fill_null(0))
        .sort("version", maintain_order=True)
        .unique(["account_id", "kind", "cdr_id"], keep="last", maintain_order=True)
        .filter(pl.col("cancelled") == 0)
    )
    alert_columns = ["account_id", "kind", "cdr_id", "balance"]
    assert alert_rows.select(alert_columns).sort(alert_columns).equals(truth.alerts.select(alert_columns).sort(alert_columns))
    # The history: each corrected call's first rating, and its corrected version.
    history = _outputs(applied, "rated").filter(pl.col("version") == 0)
    assert history.height == found.billed_rows.height and (history.get_column("correction_id") != "").all()
