"""``cdrflow rerate``'s work: read the log and what was billed, publish a correction.

The rules are pure and live in ``rating.rerate`` and ``rating.corrected_history``
(docs/rules.md, "Corrections"); this module moves data:

1. **Where to read from.** An account's calls of the months the period touches, and of
   the horizon month(s) before them, are at or after the first ``cdr.raw`` offset
   ClickHouse holds for a call of those months: ``rated_calls`` by its local day,
   ``rejected_cdrs`` (which has no day) by when it landed, taken to be at most
   :data:`REJECTION_LEAD_DAYS` before its call's month began. Each partition is read
   from there to its real end (``streams.kafka.async_reader``), keeping the accounts' messages.
2. **Wait for the worker.** What ClickHouse holds must be the fold of exactly that log:
   the worker has folded each account's last message read (``account_balances``), its
   ledger events, rated rows and rejections have landed, and so have the rows and alerts
   of the corrections on the log (:func:`landing_gaps`); other alerts, which carry no
   count, once they have not changed for :data:`ALERTS_SETTLE_S`.
3. **What was billed**: the current versions (``FINAL``) of the window's calls, its
   rejections, its ledger events with money, the cap alerts in force, and the balance
   before the window.
4. **Rate again** (``rating.rerate.Rerun``) and **diff** (``rating.rerate.diff``).
5. ``--apply``: the diff as ``rerate`` ledger commands on each account's log (parts of
   ``CALLS_PER_PART`` calls), then wait until the worker folded them and everything landed.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final

import numpy as np
import orjson
import polars as pl
from clickhouse_driver import Client

from rating import Catalog
from rating.corrected_history import Billed
from rating.rerate import LINE_KEY, Diff, Period, Rerun, correction_catalog, diff
from schemas.corrections import CALLS_PER_PART, PART_MAX_BYTES, CallChange, Correction, DayChange
from schemas.ledger import LedgerCommand, command_from_value
from schemas.messages import cdr_chunks_frame, frame_value
from schemas.topics import CDR_RAW
from streams.clickhouse.insert import connect
from streams.clickhouse.query import query_client, read_table
from streams.clickhouse.tables import RATED, REJECTED
from streams.kafka.async_reader import TP, read_to_end
from streams.kafka.client import topic_name
from streams.ledger import commands as ledger_ops
from streams.settings import Settings
from tariffs import Account, Plan, TariffError, Tariffs, load_accounts, load_plans

#: A rejection that landed this many days before the first month read is taken to be of
#: an older month (rejected_cdrs has no day of the call; docs/rules.md "Corrections").
REJECTION_LEAD_DAYS: Final[int] = 31
#: Lines rated per engine call (any split gives the same result).
LINES_PER_RATING: Final[int] = 200_000
LANDING_TIMEOUT_S: Final[float] = 120.0
_RATED_KEEP: Final = (
    "source", "ingest_id", "topic", "partition", "offset", "version", "correction_id",
    "disposition", "caller", "caller_area", "billsec", "local_hour", "credit_used", "credit",
)
_ORIGIN_KEEP: Final = ("source", "ingest_id", "topic", "partition", "offset")


class RerateError(RuntimeError):
    """The correction cannot be made; the message says why, for a person."""


# ---------------------------------------------------------------------------- the catalogue


def corrected_tariffs(current: Tariffs, plans_dir: Any = None, accounts_file: Any = None) -> Tariffs:
    """The catalogue to rate with: the current one (the topics'), with the plans of
    ``plans_dir`` and the accounts of ``accounts_file`` in place of theirs (by id).

    Raises ``tariffs.TariffError`` naming the file and field of each problem.
    """
    plans: dict[str, Plan] = dict(current.plans)
    accounts: dict[str, Account] = {account.id: account for account in current.accounts}
    if plans_dir is not None:
        plans.update(load_plans(plans_dir)[0])
    if accounts_file is not None:
        accounts.update({account.id: account for account in load_accounts(accounts_file)})
    problems = []
    owners: dict[str, str] = {}
    for account in sorted(accounts.values(), key=lambda a: a.id):
        if account.plan not in plans:
            problems.append(f"account {account.id}: plan {account.plan!r} is neither in --plans nor loaded")
        for number in account.numbers:
            if owners.setdefault(number, account.id) != account.id:
                problems.append(f"number {number} belongs to both {owners[number]} and {account.id}")
    if problems:
        raise TariffError(problems)
    return Tariffs(plans=plans, accounts=tuple(sorted(accounts.values(), key=lambda a: a.id)))


def catalogue_digest(tariffs: Tariffs, accounts: Sequence[str]) -> str:
    """A hash of what the correction rates these accounts with (their plans and terms)."""
    chosen = [a for a in tariffs.accounts if a.id in set(accounts)]
    plans = sorted({a.plan for a in chosen})
    text = orjson.dumps(
        {
            "plans": [tariffs.plans[p].model_dump(mode="json") for p in plans],
            "accounts": [a.model_dump(mode="json") for a in chosen],
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(text).hexdigest()


# ---------------------------------------------------------------------------- the log


@dataclass
class Window:
    """What was read of the accounts' logs."""

    #: the CDR lines of the accounts' chunks, in log order, with their Kafka position
    lines: pl.DataFrame
    #: partition -> first offset read, last offset read
    starts: dict[int, int]
    ends: dict[int, int]
    #: account -> the offset of its last message read, and its partition
    last_offset: dict[str, int]
    partition_of: dict[str, int] = field(default_factory=dict)
    #: (account, partition, offset, part) of the corrections on the log
    corrections: list[tuple[str, int, int, Correction]] = field(default_factory=list)
    topic: str = CDR_RAW


def start_offsets(db: Client, topic: str, accounts: Sequence[str] | None, first_month: date) -> dict[int, int]:
    """Each partition's first offset holding a call of these accounts of ``first_month``
    or later (module docstring, step 1)."""
    where = "topic = %(topic)s AND `offset` >= 0" + (" AND account_id IN %(accounts)s" if accounts is not None else "")
    params = {"topic": topic, "accounts": tuple(accounts or ()), "first": first_month,
              "landed": datetime.combine(first_month - timedelta(days=REJECTION_LEAD_DAYS), datetime.min.time())}
    starts: dict[int, int] = {}
    rows = db.execute(
        f"SELECT `partition`, min(`offset`) FROM rated_calls WHERE {where} AND local_day >= %(first)s GROUP BY `partition`",
        params,
    ) + db.execute(
        f"SELECT `partition`, min(`offset`) FROM rejected_cdrs WHERE {where} AND account_id != '' "
        "AND reason != 'ledger_refused' AND landed_time >= %(landed)s GROUP BY `partition`",
        params,
    )
    for partition, offset in rows:
        starts[int(partition)] = min(int(offset), starts.get(int(partition), 1 << 62))
    return starts


def read_window(settings: Settings, starts: dict[int, int], accounts: set[str] | None) -> Window:
    """The accounts' messages from each partition's start to its real end."""
    topic = topic_name(CDR_RAW, settings.topic_prefix)
    records = asyncio.run(read_to_end(settings.kafka_access(), {TP(topic, p): o for p, o in starts.items()}, timeout_s=600))
    chunks: list[tuple[bytes, int, int]] = []
    window = Window(lines=pl.DataFrame(), starts=dict(starts), ends={p: o - 1 for p, o in starts.items()},
                    last_offset={}, topic=topic)
    skipped: set[tuple[int, int]] = set()  # messages an operator skipped (cdrflow blocked skip)
    for tp, batch in records.items():
        for record in batch:
            window.ends[tp.partition] = max(window.ends[tp.partition], record.offset)
            account = (record.key or b"").decode("utf-8", "replace")
            if accounts is not None and account not in accounts:
                continue
            window.last_offset[account] = max(record.offset, window.last_offset.get(account, -1))
            window.partition_of[account] = tp.partition
            value = record.value or b""
            if b'"ledger"' in value:
                try:
                    command = command_from_value(orjson.loads(value))
                except Exception:  # refused by the worker as it is refused here
                    continue
                if command is not None and command.correction is not None:
                    window.corrections.append((account, tp.partition, record.offset, command.correction))
                if command is not None and command.skip_offset is not None:
                    skipped.add((tp.partition, command.skip_offset))
                if command is not None:
                    continue
            chunks.append((value, tp.partition, record.offset))
    # A skipped message was never rated (its lines are `skipped` rejections): not rated here either.
    chunks = [chunk for chunk in chunks if (chunk[1], chunk[2]) not in skipped]
    decoded = cdr_chunks_frame([value for value, _, _ in chunks])
    kept = [(p, o, h) for (_, p, o), h in zip(chunks, decoded.heights, strict=True) if h]
    partitions, offsets, heights = (np.array(c, dtype=np.int64) for c in zip(*kept, strict=True)) if kept else ([],) * 3
    window.lines = decoded.frame.with_columns(
        pl.lit(topic, dtype=pl.String).alias("topic"),
        pl.Series("partition", np.repeat(partitions, heights), dtype=pl.Int32),
        pl.Series("offset", np.repeat(offsets, heights), dtype=pl.Int64),
    )
    return window


# ---------------------------------------------------------------------------- ClickHouse


def read_billed(db: Client, frames: Client, topic: str, window: Window, accounts: Sequence[str]) -> Billed:
    """What ClickHouse holds of the window (module docstring, step 3)."""
    low, high = min(window.starts.values()), max(window.ends.values())
    params: dict[str, Any] = {"topic": topic, "accounts": tuple(accounts), "low": low, "high": high}
    in_window = _in_window(window)
    mine = "account_id IN %(accounts)s AND "
    span = "topic = %(topic)s AND `offset` >= %(low)s AND `offset` <= %(high)s"
    rated = read_table(frames, RATED, order_by=("account_id", "`offset`", "line"), keep=_RATED_KEEP,
                       params=params, where=mine + span)
    rejected = read_table(frames, REJECTED, order_by=("`offset`", "line"), keep=_ORIGIN_KEEP, params=params,
                          where=span).filter(in_window)
    events = pl.DataFrame(
        db.execute(
            "SELECT account_id, event_id, kind, amount, opening_balance, local_day, `partition`, `offset`, "
            "credit_change, credit, effective_time "
            f"FROM billing_events FINAL WHERE {mine}`offset` >= %(low)s AND `offset` <= %(high)s "
            "AND kind != 'CallRerated' AND (amount != 0 OR opening_balance != 0 OR credit_change != 0)",
            params,
        ),
        schema={"account_id": pl.String, "event_id": pl.String, "kind": pl.String, "amount": pl.Int64,
                "opening_balance": pl.Int64, "local_day": pl.Date, "partition": pl.Int32, "offset": pl.Int64,
                "credit_change": pl.Int64, "credit": pl.Int64, "effective_time": pl.Datetime("us", "UTC")},
        orient="row",
    ).filter(in_window)
    order = ledger_ops.event_order()
    rated = rated.filter(in_window)
    events = _at_calls(events.with_columns(
        seq=pl.col("kind").replace_strict(order, default=len(order), return_dtype=pl.Int64)
    ), rated).drop("effective_time").sort("offset", "seq", "event_id")
    caps = pl.DataFrame(
        db.execute(
            "SELECT account_id, cdr_id, cancelled FROM alerts FINAL "
            f"WHERE {mine}kind = 'daily_cap_reached'",
            params,
        ),
        schema={"account_id": pl.String, "cdr_id": pl.String, "cancelled": pl.UInt8},
        orient="row",
    ).filter(pl.col("cancelled") == 0).drop("cancelled")
    return Billed(
        rated=rated,
        rejected=rejected,
        events=events,
        cap_alerts=caps,
        opening=_opening(db, window, accounts),
    )


def _at_calls(events: pl.DataFrame, rated: pl.DataFrame) -> pl.DataFrame:
    """Package credit that ended at a call (issue 23) goes just before that call in the
    history: the first call of its message charged at or after the end (``seq``: its line
    less one, after the call before it)."""
    ended = events.filter(pl.col("kind") == "PackageCreditExpired")
    if ended.height == 0 or rated.height == 0:
        return events
    lines = (
        ended.select("account_id", "event_id", "offset", "effective_time")
        .join(rated.select("account_id", "offset", "line", "charge_time"), on=["account_id", "offset"])
        .filter(pl.col("charge_time") >= pl.col("effective_time").dt.truncate("1s"))
        .group_by("event_id")
        .agg(at_line=pl.col("line").min() - 1)
    )
    return events.join(lines, on="event_id", how="left").with_columns(
        seq=pl.coalesce("at_line", "seq")
    ).drop("at_line")


def _in_window(window: Window) -> pl.Expr:
    bounds = [(pl.col("partition") == p) & pl.col("offset").is_between(window.starts[p], window.ends[p])
              for p in window.starts]
    return pl.any_horizontal(bounds) if bounds else pl.lit(False)


def _opening(db: Client, window: Window, accounts: Sequence[str]) -> pl.DataFrame:
    """Each account's balance before the window: rating.corrected_history's start."""
    balance: dict[str, int] = {account: 0 for account in accounts}
    params = {"accounts": tuple(accounts)}
    for partition, start in window.starts.items():
        where = "account_id IN %(accounts)s AND `partition` = %(p)s AND `offset` < %(start)s"
        bound = {**params, "p": partition, "start": start}
        # the funds: package credit counts (rating.corrected_history)
        for account, amount in db.execute(
            f"SELECT account_id, sum(opening_balance + amount + credit_change) FROM billing_events FINAL WHERE {where} "
            "AND kind != 'CallRerated' GROUP BY account_id",
            bound,
        ):
            balance[account] += int(amount)
        for account, amount in db.execute(
            f"SELECT account_id, sum(amount) FROM rated_calls FINAL WHERE {where} GROUP BY account_id", bound
        ):
            balance[account] -= int(amount)
    for account, amount in db.execute(
        "SELECT account_id, sum(amount) FROM retained_call_totals FINAL WHERE account_id IN %(accounts)s "
        "GROUP BY account_id",
        params,
    ):
        balance[account] -= int(amount)
    return pl.DataFrame({"account_id": list(balance), "balance": list(balance.values())},
                        schema={"account_id": pl.String, "balance": pl.Int64})


def landing_gaps(window: Window, billed: Billed, alerts: pl.DataFrame) -> list[str]:
    """What of the window has not landed in ClickHouse yet (empty: everything has).

    Every line read is a rated row or a rejection; every correction part on the log that
    the worker did not refuse has its rows (at its version or a later one) and its alerts.
    """
    gaps = []
    landed = pl.concat([billed.rated.select(LINE_KEY), billed.rejected.select(LINE_KEY)])
    missing = window.lines.select(LINE_KEY).join(landed, on=list(LINE_KEY), how="anti")
    if missing.height:
        gaps.append(f"{missing.height} line(s) of the log read (e.g. {missing.row(0)}) have no row yet")
    refused = set(
        billed.rejected.filter(pl.col("reason") == "ledger_refused").get_column("source").to_list()
    )
    seen: set[tuple[str, int]] = set()
    versions = billed.rated.select("account_id", "cdr_id", "offset", "version", "correction_id")
    for account, partition, offset, part in window.corrections:
        if (part.correction_id, part.part) in seen or f"{window.topic}[{partition}]@{offset}" in refused:
            continue
        seen.add((part.correction_id, part.part))
        rows = pl.DataFrame(part.rows["rows"]).select("cdr_id", "offset").with_columns(account_id=pl.lit(account))
        rows = rows.filter(pl.col("offset") >= window.starts.get(partition, 0))
        found = rows.join(versions, on=["account_id", "cdr_id"], how="left").filter(
            pl.col("version").is_null()
            | ((pl.col("version") < offset + 1) & (pl.col("correction_id") != part.correction_id))
        )
        if found.height:
            gaps.append(f"correction {part.correction_id} part {part.part} at offset {offset}: rows not landed")
        if part.alerts and part.alerts["rows"].get("kind"):
            wanted = pl.DataFrame(part.alerts["rows"]).select("account_id", "kind", "cdr_id")
            late = wanted.join(alerts, on=["account_id", "kind", "cdr_id"], how="left").filter(
                pl.col("version").is_null() | (pl.col("version") < offset + 1)
            )
            if late.height and not found.height:
                gaps.append(f"correction {part.correction_id} part {part.part} at offset {offset}: alerts not landed")
    return gaps


def _alert_versions(db: Client, window: Window, accounts: Sequence[str]) -> pl.DataFrame:
    """The latest version of each alert of the accounts raised in the window (or by a
    ledger event, which carries no position)."""
    found = pl.DataFrame(
        db.execute(
            "SELECT account_id, kind, cdr_id, max(version), any(`partition`), any(`offset`) FROM alerts "
            "WHERE account_id IN %(a)s GROUP BY account_id, kind, cdr_id",
            {"a": tuple(accounts)},
        ),
        schema={"account_id": pl.String, "kind": pl.String, "cdr_id": pl.String, "version": pl.UInt64,
                "partition": pl.Int32, "offset": pl.Int64},
        orient="row",
    )
    return found.filter(_in_window(window) | (pl.col("offset") < 0)).select(
        "account_id", "kind", "cdr_id", pl.col("version").cast(pl.Int64)
    )


# ---------------------------------------------------------------------------- the whole run


@dataclass
class Prepared:
    """A correction worked out, before anything is published."""

    accounts: list[str]
    period: Period
    diff: Diff
    #: account -> the last offset of its partition read (the correction's ``based_on``)
    based_on: dict[str, int]
    catalogue: str
    #: lines read and rated
    lines: int = 0

    @property
    def correction_id(self) -> str:
        """Derived from the scope, the catalogue, where the log was read to and the diff:
        the same correction computed twice from the same log has the same id."""
        calls = self.diff.calls.select("account_id", "cdr_id", "new_amount", "old_amount").rows()
        alerts = self.diff.alerts.select("account_id", "kind", "cdr_id", "balance", "cancelled").rows()
        text = orjson.dumps(
            {
                "accounts": sorted(self.accounts),
                "period": [self.period.first.isoformat(), self.period.last.isoformat()],
                "catalogue": self.catalogue,
                "based_on": dict(sorted(self.based_on.items())),
                "calls": calls,
                "alerts": alerts,
            },
            default=str,
        )
        return hashlib.sha256(text).hexdigest()[:16]


def prepare(
    settings: Settings,
    tariffs: Tariffs,
    accounts: Sequence[str] | None,
    period: Period,
    *,
    horizon_months: int,
    progress: Callable[[str, int, int], None] = lambda what, done, total: None,
    timeout_s: float = LANDING_TIMEOUT_S,
) -> Prepared:
    """Read, wait, rate again and diff (module docstring, steps 1-4).

    ``accounts`` None: every account of ``tariffs``. ``progress(what, done, total)`` is
    told how far the reading and the rating are.
    """
    known = {account.id for account in tariffs.accounts}
    chosen = sorted(known) if accounts is None else list(dict.fromkeys(accounts))
    unknown = [a for a in chosen if a not in known]
    if unknown:
        raise RerateError(f"--accounts: {', '.join(unknown[:10])} not in the catalogue (cdrflow load, or --accounts-file)")
    topic = topic_name(CDR_RAW, settings.topic_prefix)
    db = query_client(settings)
    frames = connect(settings)
    first = period.first_month_key() - horizon_months
    first_month = date(first // 12, first % 12 + 1, 1)
    progress("finding where the period starts in the log", 0, 1)
    starts = start_offsets(db, topic, None if accounts is None else chosen, first_month)
    # The worker's time bounds: a call it refused as no call's stays refused.
    catalog = correction_catalog(Catalog.from_tariffs(tariffs, time_bounds=settings.time_bounds()))
    digest = catalogue_digest(tariffs, chosen)
    if not starts:
        window = Window(lines=pl.DataFrame(), starts={}, ends={}, last_offset={}, topic=topic)
    else:
        progress("reading the accounts' logs", 0, 1)
        window = read_window(settings, starts, set(chosen))
    if window.last_offset:
        progress("waiting for the worker to fold the log read", 0, 1)
        try:
            ledger_ops.wait_offsets_folded(db, window.last_offset, timeout_s=timeout_s)
        except TimeoutError as error:
            raise RerateError(str(error)) from None
    billed = _landed_billed(db, frames, topic, window, chosen, timeout_s) if starts else _no_billed(chosen)
    rerun = Rerun(catalog, period, chosen, billed.rejected)
    lines = window.lines if window.lines.height else None
    total = 0 if lines is None else lines.height
    for start in range(0, total, LINES_PER_RATING):
        progress("rating again", start, total)
        rerun.add(lines.slice(start, LINES_PER_RATING))  # type: ignore[union-attr]
    progress("rating again", total, total)
    found = diff(rerun.result(), billed, period, catalog)
    return Prepared(
        accounts=chosen,
        period=period,
        diff=found,
        based_on={a: window.ends[window.partition_of[a]] if a in window.partition_of else -1 for a in chosen},
        catalogue=digest,
        lines=total,
    )


#: Alerts land through a sink of their own and carry no count to wait for: they are taken
#: as landed once they have not changed for this long (as ``ingest --wait`` does).
ALERTS_SETTLE_S: Final[float] = 1.0


def _landed_billed(db: Client, frames: Client, topic: str, window: Window, accounts: list[str], timeout_s: float) -> Billed:
    deadline = time.monotonic() + timeout_s
    settled: pl.DataFrame | None = None
    while True:
        billed = read_billed(db, frames, topic, window, accounts)
        alerts = _alert_versions(db, window, accounts)
        gaps = landing_gaps(window, billed, alerts)
        if not gaps and settled is not None and alerts.sort(alerts.columns).equals(settled):
            return billed
        if not gaps and time.monotonic() > deadline:
            return billed  # alerts still coming: taken as they stand
        settled = None if gaps else alerts.sort(alerts.columns)
        if not gaps:
            time.sleep(ALERTS_SETTLE_S)
            continue
        if time.monotonic() > deadline:
            raise RerateError(
                "what the worker made of the log read has not all landed in ClickHouse within "
                f"{timeout_s:.0f} s ({'; '.join(gaps[:3])}): is a worker running (cdrflow worker, cdrflow status)?"
            )
        time.sleep(0.5)


def _no_billed(accounts: list[str]) -> Billed:
    rated_schema = {**RATED.schema, **{name: RATED.optional[name] for name in _RATED_KEEP}}
    return Billed(
        rated=pl.DataFrame(schema=rated_schema),
        rejected=pl.DataFrame(schema={**REJECTED.schema, **{n: REJECTED.optional[n] for n in _ORIGIN_KEEP}}),
        events=pl.DataFrame(schema={"account_id": pl.String, "event_id": pl.String, "kind": pl.String,
                                    "amount": pl.Int64, "opening_balance": pl.Int64, "local_day": pl.Date,
                                    "partition": pl.Int32, "offset": pl.Int64, "seq": pl.Int64}),
        cap_alerts=pl.DataFrame(schema={"account_id": pl.String, "cdr_id": pl.String}),
        opening=pl.DataFrame({"account_id": accounts, "balance": [0] * len(accounts)},
                             schema={"account_id": pl.String, "balance": pl.Int64}),
    )


# ---------------------------------------------------------------------------- apply


def correction_commands(prepared: Prepared, at: datetime) -> list[LedgerCommand]:
    """The diff as ``rerate`` commands: per account, parts of up to ``CALLS_PER_PART``
    calls in log order; the last part carries the account's alert changes."""
    found = prepared.diff
    correction_id = prepared.correction_id
    by_account = {
        name: _by_account(frame)
        for name, frame in (("calls", found.calls), ("rows", found.new_rows), ("days", found.days),
                            ("alerts", found.alerts),
                            ("billed", found.billed_rows.drop("correction_id", strict=False)))
    }
    commands = []
    for account in prepared.accounts:
        calls = by_account["calls"].get(account)
        if calls is None or calls.height == 0:
            continue
        rows = by_account["rows"][account]
        billed_rows = by_account["billed"].get(account, found.billed_rows.clear())
        days = by_account["days"][account]
        alerts = by_account["alerts"].get(account, found.alerts.clear())
        bounds = _parts(calls, rows)
        for part, (start, stop) in enumerate(bounds):
            part_calls = calls.slice(start, stop - start)
            ids = part_calls.get_column("cdr_id")
            part_days = days.join(part_calls.select("local_day").unique(), on="local_day", how="semi")
            replaced = billed_rows.filter(pl.col("cdr_id").is_in(ids.implode()))
            last = part == len(bounds) - 1
            correction = Correction(
                correction_id=correction_id,
                part=part,
                parts=len(bounds),
                based_on=prepared.based_on[account],
                period_from=prepared.period.first,
                period_to=prepared.period.last,
                calls=[_call_change(row) for row in part_calls.iter_rows(named=True)],
                days=[DayChange(local_day=d, cap_alerted=c) for d, c in part_days.select("local_day", "cap_alerted").rows()],
                rows=frame_value(rows.slice(start, stop - start)),
                billed_rows=frame_value(replaced) if replaced.height else None,
                alerts=frame_value(_alert_rows(alerts)) if last and alerts.height else None,
            )
            commands.append(LedgerCommand(kind="rerate", account_id=account, at=at, correction=correction))
    return commands


def _by_account(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    return {key[0]: part for key, part in frame.partition_by("account_id", as_dict=True, maintain_order=True).items()}


def _parts(calls: pl.DataFrame, rows: pl.DataFrame) -> list[tuple[int, int]]:
    """[start, stop) of each part: ``CALLS_PER_PART`` calls, fewer where their rows are long."""
    bounds = []
    start = 0
    while start < calls.height:
        stop = min(start + CALLS_PER_PART, calls.height)
        while stop - start > 1 and len(orjson.dumps(frame_value(rows.slice(start, stop - start)))) * 2 > PART_MAX_BYTES:
            stop = start + (stop - start) // 2
        bounds.append((start, stop))
        start = stop
    return bounds


def _call_change(row: dict[str, Any]) -> CallChange:
    return CallChange(
        cdr_id=row["cdr_id"],
        local_day=row["local_day"],
        call_class=row["class"],
        old_amount=row["old_amount"],
        new_amount=row["new_amount"],
        allowance_delta_s=row["allowance_delta_s"],
        charged_delta_s=row["charged_delta_s"],
        called=row.get("called") or "",
    )


def _alert_rows(alerts: pl.DataFrame) -> pl.DataFrame:
    return alerts.select(
        "account_id", "kind", "cdr_id", "balance", "line", "local_day", *_ORIGIN_KEEP,
        pl.col("cancelled").cast(pl.UInt8),
    )


@dataclass
class Applied:
    """What the worker made of a published correction."""

    published: list[ledger_ops.Published]
    #: the parts the worker applied (the others were refused, or recorded already)
    applied: list[ledger_ops.Published]
    refused: list[str]
    #: account -> (balance, state) once folded
    balances: dict[str, tuple[int, str]]


def apply(settings: Settings, commands: list[LedgerCommand], *, timeout_s: float = LANDING_TIMEOUT_S) -> Applied:
    """Publish the commands and wait until the worker folded them and their rows landed."""
    published = ledger_ops.publish(settings, commands)
    db = query_client(settings)
    try:
        ledger_ops.wait_folded(db, published, timeout_s=timeout_s)
    except TimeoutError as error:
        raise RerateError(str(error)) from None
    topic = topic_name(CDR_RAW, settings.topic_prefix)
    positions = {f"{topic}[{p.partition}]@{p.offset}": p for p in published}
    refused = {
        source: detail
        for source, detail in db.execute(
            "SELECT source, detail FROM rejected_cdrs FINAL WHERE reason = 'ledger_refused' AND source IN %(s)s",
            {"s": tuple(positions)},
        )
    }
    # A part the book held already (a retried or racing copy) folds to nothing: no events.
    folded = {
        int(offset)
        for (offset,) in db.execute(
            "SELECT DISTINCT `offset` FROM billing_events FINAL WHERE kind = 'CallRerated' AND account_id IN %(a)s "
            "AND `offset` IN %(o)s",
            {"a": tuple({p.command.account_id for p in published}), "o": tuple(p.offset for p in published)},
        )
    }
    applied = [p for position, p in positions.items() if position not in refused and p.offset in folded]
    deadline = time.monotonic() + timeout_s
    while _unlanded(db, applied):
        if time.monotonic() > deadline:
            raise RerateError(f"the correction was folded, but its rows have not all landed within {timeout_s:.0f} s")
        time.sleep(0.3)
    balances = {}
    for account in {p.command.account_id for p in published}:
        row = ledger_ops.account_row(db, account) or {}
        balances[account] = (row.get("balance", 0), row.get("state", ""))
    return Applied(
        published=published,
        applied=applied,
        refused=[f"{source}: {detail}" for source, detail in refused.items()],
        balances=balances,
    )


def _unlanded(db: Client, applied: list[ledger_ops.Published]) -> int:
    """Applied correction parts whose rows or alerts are not in ClickHouse yet."""
    pending = 0
    for item in applied:
        correction = item.command.correction
        assert correction is not None
        ids = tuple(call.cdr_id for call in correction.calls)
        landed = db.execute(
            "SELECT count() FROM (SELECT cdr_id, max(version) AS v FROM rated_calls WHERE account_id = %(a)s "
            "AND cdr_id IN %(ids)s GROUP BY cdr_id) WHERE v >= %(v)s",
            {"a": item.command.account_id, "ids": ids, "v": item.offset + 1},
        )[0][0]
        wanted = len(correction.alerts["rows"]["kind"]) if correction.alerts else 0
        alerts = db.execute(
            "SELECT count() FROM alerts WHERE account_id = %(a)s AND version = %(v)s",
            {"a": item.command.account_id, "v": item.offset + 1},
        )[0][0] if wanted else 0
        if landed < len(ids) or alerts < wanted:
            pending += 1
    return pending
