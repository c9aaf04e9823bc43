"""One batch of ``cdr.raw`` messages through the rating engine: what the agent sends and keeps.

Pure (no Kafka, no Faust): the rating agent hands over the messages it took and the
stored states of their accounts, and gets back the output messages to send and the
states to write. Everything effectively-once needs from a batch is decided here
(docs/streaming.md):

- each stored account state carries ``applied_offset``, the ``cdr.raw`` offset of the
  last message folded into it; a message at or below it is a replay and is skipped, so
  re-reading a partition from an older position never charges a call twice;
- the other messages of the batch are rated in one ``rating.rate`` call (any split of an
  account's log into batches gives the same results, so a replay re-rates
  deterministically), their rows carrying ``topic``, ``partition`` and ``offset``;
- a message that is not a CDR chunk becomes a ``malformed`` rejection named by its Kafka
  position, never a crashed agent;
- outputs are grouped by source partition: one message per kind and ``cdr.raw``
  partition (cut by rows and bytes), sent to the output partition of that number, so an
  account's rows stay in one partition, in log order, whatever the number of accounts a
  batch touches (a live feed's batch touches ~1,000 of them);
- each partition's checkpoint is the offset after the last message of the batch: every
  message below it is folded into the states this batch writes (or earlier ones).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from datetime import datetime, timezone

import numpy as np
import orjson
import polars as pl

from rating import Catalog, RatingState, rate
from rating.clock import month_key
from rating.corrected_state import corrected_state
from rating.fields import with_typed_fields
from rating.ledger import Book, Terms, after_calls, apply_command
from schemas.ledger import LedgerCommand, command_from_value
from schemas.messages import cdr_chunks_frame, frame_from_value, frame_value
from streams.sink_clickhouse import ALERTS, RATED, Table
from streams.state_records import (
    AccountRecords,
    AccountUpdate,
    Core,
    Record,
    account_records,
    core_of,
    month_values,
    rating_state,
)

log = logging.getLogger(__name__)

OutputKind = Literal["rated", "rejected", "alerts", "ledger", "balances", "status"]
#: Rows per output message: a large account batch is cut so that a message stays well
#: under Kafka's default 1 MB limit (a rated row is ~300 bytes of JSON).
OUTPUT_ROWS: Final[int] = 1000
#: ... and rows of long lines (a line may hold 4 kB) cut it further: a message stays
#: under half the producer's 1 MB request limit.
OUTPUT_MAX_BYTES: Final[int] = 512 * 1024
_KEY_INDEX = "_key_index"
_PARTITION = "_partition"


@dataclass(frozen=True)
class SourceMessage:
    """A ``cdr.raw`` message as the agent took it: raw key (the account) and raw value."""

    key: bytes
    partition: int
    offset: int
    value: bytes | None


@dataclass(frozen=True)
class OutputMessage:
    """A message for ``billing.events`` (rated), ``rating.rejected``, ``alerts``, ...

    Attributes
    ----------
    key
        The message key: the source partition's name (``cdr.raw[2]``) for rows grouped
        by partition, the account for a message that ``split`` made, the number for
        ``number.status``.
    account
        The ``cdr.raw`` key whose rows it carries when that is one account (a status is
        one account's); ``b""`` when it carries several (``accounts``).
    partition
        The ``cdr.raw`` partition its rows came from: the sender puts it in the output
        partition of that number (modulo the topic's partitions); None: by key.
    accounts
        The accounts whose rows it carries.
    split
        The same rows as one message per account (when a grouped message is refused for
        its size, only the accounts whose own rows are refused are blocked).
    """

    kind: OutputKind
    key: bytes
    value: bytes
    account: bytes = b""
    partition: int | None = None
    accounts: tuple[bytes, ...] = ()
    split: Callable[[], list[OutputMessage]] | None = field(default=None, compare=False, repr=False)


@dataclass
class BatchOutcome:
    """What one batch produced.

    Attributes
    ----------
    outputs
        Messages to send, and to see acknowledged, before any state is written.
    states
        Account key -> (partition, records to write afterwards: its changed parts, then
        its core with the new ``applied_offset``; streams.state_records).
    checkpoints
        Partition -> the offset after the batch's last message, written after the states.
    """

    outputs: list[OutputMessage] = field(default_factory=list)
    states: dict[bytes, tuple[int, list[tuple[bytes, bytes]]]] = field(default_factory=dict)
    checkpoints: dict[int, int] = field(default_factory=dict)
    messages: int = 0
    skipped: int = 0
    garbage: int = 0
    lines: int = 0
    #: messages of blocked accounts, left in the log for the next try
    held: int = 0


def encode(value: Any) -> bytes:
    """A message or table value as compact UTF-8 JSON."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def rate_messages(
    messages: Sequence[SourceMessage],
    stored: Mapping[bytes, AccountRecords | None],
    catalog: Catalog,
    topic: str,
    *,
    retry: frozenset[bytes] = frozenset(),
    hold: frozenset[bytes] = frozenset(),
) -> BatchOutcome:
    """Rate the messages of one batch that the stored states do not hold yet.

    Parameters
    ----------
    messages
        The batch, in the order taken (offset order within each partition).
    stored
        Each message key's stored records (``None``: the account has none yet).
    catalog
        The tariff catalogue to rate with.
    topic
        The source topic's name, carried in every output row with partition and offset.
    retry
        Blocked accounts to try again (the others' messages are held: left in the log).
    hold
        Accounts whose messages are held whatever their state says (the worker could not
        write their state).

    Examples
    --------
    >>> from tariffs import load_tariffs
    >>> catalog = Catalog.from_tariffs(load_tariffs("tests/vectors/basic/plans",
    ...                                             "tests/vectors/basic/accounts.toml"))
    >>> garbage = SourceMessage(b"A001", 0, 7, b"not json")
    >>> outcome = rate_messages([garbage], {}, catalog, "cdr.raw")
    >>> [(m.kind, m.key, m.accounts) for m in outcome.outputs], outcome.checkpoints
    ([('rejected', b'cdr.raw[0]', (b'A001',)), ('balances', b'cdr.raw[0]', (b'A001',))], {0: 8})
    >>> records = {b"": Record(outcome.states[b"A001"][1][-1][1])}
    >>> outcome = rate_messages([garbage], {b"A001": records}, catalog, "cdr.raw")
    >>> outcome.skipped, outcome.outputs
    (1, [])
    """
    ordered = sorted(messages, key=lambda m: (m.partition, m.offset))
    outcome = BatchOutcome(messages=len(ordered))
    keys: list[bytes] = []
    key_index: dict[bytes, int] = {}
    key_partition: dict[bytes, int] = {}
    last_offset: dict[bytes, tuple[int, int]] = {}
    cores: dict[bytes, Core] = {}
    pending: list[tuple[SourceMessage, int, int]] = []  # to decode, with their key index and round
    garbage: list[dict[str, Any]] = []
    positions: list[tuple[int, int, int, int, int]] = []  # partition, offset, key index, lines, round
    # An account's ledger commands split its lines into rounds: the lines before its
    # first command, those between its first and second, ... (log order holds per account).
    commands: list[tuple[int, int, SourceMessage, LedgerCommand]] = []  # round, key index, ...
    rounds: dict[int, int] = {}
    for message in ordered:
        outcome.checkpoints[message.partition] = max(
            outcome.checkpoints.get(message.partition, 0), message.offset + 1
        )
        core = cores.get(message.key)
        if core is None:
            core = cores[message.key] = core_of(stored.get(message.key))
        if message.key in hold or (core.blocked is not None and message.key not in retry):
            outcome.held += 1  # a blocked account: its lines stay in the log for the next try
            continue
        done = last_offset.get(message.key, (message.partition, core.applied_offset))[1]
        if message.offset <= done:
            outcome.skipped += 1  # a replay: the state holds this message already
            continue
        last_offset[message.key] = (message.partition, message.offset)
        index = key_index.setdefault(message.key, len(keys))
        if index == len(keys):
            keys.append(message.key)
            key_partition[message.key] = message.partition
        value = message.value
        if value is not None and b'"ledger"' in value:  # cheap: only ledger messages hold it as a key
            try:
                command = command_from_value(orjson.loads(value))
            except Exception as error:  # a ledger message that is no valid command
                outcome.garbage += 1
                garbage.append(_garbage_row(message, topic, index, error))
                continue
            if command is not None:
                commands.append((rounds.get(index, 0), index, message, command))
                rounds[index] = rounds.get(index, 0) + 1
                continue
        pending.append((message, index, rounds.get(index, 0)))
    # All CDR chunks decoded at once (one frame for the batch, not one per message).
    decoded = cdr_chunks_frame([message.value for message, _, _ in pending])
    for number, (message, index, round_number) in enumerate(pending):
        error = decoded.errors.get(number)
        if error is not None:  # a stranger's bytes: a rejection, never a crashed agent
            outcome.garbage += 1
            garbage.append(_garbage_row(message, topic, index, error))
        else:
            positions.append((message.partition, message.offset, index, decoded.heights[number], round_number))

    accounts = {key.decode("utf-8", "replace"): key for key in keys}
    fold = _LedgerFold(catalog, topic, keys, {a: cores[k].ledger for a, k in accounts.items() if cores[k].ledger})
    state = rating_state({a: stored.get(k) for a, k in accounts.items()})
    collected: dict[str, list[pl.DataFrame]] = {"rated": [], "rejected": [], "alerts": []}
    remembered: list[pl.DataFrame] = []
    charged_months: list[pl.DataFrame] = []
    batch = _with_positions(decoded.frame, positions, topic) if positions else None
    if batch is not None:
        outcome.lines = batch.height
    for round_number in range(max(rounds.values(), default=0) + 1):
        if batch is not None:
            lines = (batch.filter(pl.col(_ROUND) == round_number) if commands else batch).drop(_ROUND)
            if lines.height:
                lines, inactive = fold.split_inactive(lines)
                if inactive.height:
                    collected["rejected"].append(inactive)
                result = rate(lines, fold.flush(state), catalog)
                state = fold.after_calls(result)
                for kind in collected:
                    collected[kind].append(getattr(result, kind))
                remembered.append(result.remembered)
                charged_months.append(
                    result.rated.filter(pl.col("status") == "rated").select("account_id", _MONTH_OF_DAY.alias("month_key"))
                )
        for command_round, index, message, command in commands:
            if command_round == round_number:
                state = fold.apply(state, index, message, command)
    if garbage:
        collected["rejected"].append(_garbage_frame(garbage))
    if fold.refusals:
        collected["rejected"].append(_garbage_frame(fold.refusals))
    collected["rated"].extend(fold.corrected_rows)
    collected["alerts"].extend(fold.alert_frames())
    if fold.corrected_months:
        charged_months.append(
            pl.DataFrame(fold.corrected_months, schema={"account_id": pl.String, "month_key": pl.Int64}, orient="row")
        )
    state = fold.flush(state)
    _warn_misrouted(state, accounts)
    partition_of = [key_partition[key] for key in keys]
    for kind, frames_of_kind in collected.items():
        if frames_of_kind:
            frame = pl.concat(frames_of_kind, how="diagonal_relaxed")
            if kind == "alerts":  # ledger alerts come after the calls' of their round: log order
                frame = frame.sort(_KEY_INDEX, maintain_order=True)
            outcome.outputs.extend(_messages_by_partition(kind, frame, keys, partition_of, topic))  # type: ignore[arg-type]
    outcome.outputs.extend(_messages_by_partition("ledger", fold.event_frame(), keys, partition_of, topic))
    outcome.outputs.extend(fold.status_messages())
    updates = _updates(state, accounts, cores, remembered, charged_months, catalog.horizon_months)
    balances = []
    for key, (partition, offset) in last_offset.items():
        account = key.decode("utf-8", "replace")
        update = updates[account]
        update.core.applied_offset = offset
        update.core.blocked = None  # rated: a blocked account that was retried is free again
        book = fold.books.get(account)
        if book is not None:
            update.core.ledger = book.to_json()
        outcome.states[key] = (partition, account_records(key, stored.get(key), update))
        balances.append(fold.balance_row(account, key_index[key], offset, state, book))
    if balances:
        outcome.outputs.extend(
            _messages_by_partition("balances", pl.DataFrame(balances, schema=_BALANCE_SCHEMA), keys, partition_of, topic)
        )
    return outcome


_MONTH_OF_DAY = month_key(pl.col("local_day"))


def _updates(
    state: RatingState,
    accounts: Mapping[str, bytes],
    cores: Mapping[bytes, Core],
    remembered: list[pl.DataFrame],
    charged_months: list[pl.DataFrame],
    horizon_months: int,
) -> dict[str, AccountUpdate]:
    """Each account's change after the batch: its core, the months it charged, the ids it
    remembered, and the horizon below which its records go."""
    balances = dict(state.balances.iter_rows())
    latest = dict(state.latest.iter_rows())
    updates: dict[str, AccountUpdate] = {}
    for account, key in accounts.items():
        core = cores[key]
        core.balance = balances.get(account, core.balance)
        core.latest_month = latest.get(account, core.latest_month)
        floor = None if core.latest_month is None else core.latest_month - horizon_months
        updates[account] = AccountUpdate(core=core, floor=floor)
    wanted = pl.concat(charged_months).unique() if charged_months else pl.DataFrame(
        schema={"account_id": pl.String, "month_key": pl.Int64}
    )
    for (account, month_key), payload in month_values(state, wanted).items():
        if account in updates:
            updates[account].months[month_key] = payload
    if remembered:
        # Grouped by account and month in log order, each column to Python once: a frame
        # per group would cost more than the ids themselves.
        ids = (
            pl.concat(remembered)
            .filter(pl.col("account_id").is_in(list(updates)))
            .sort("account_id", "month_key", maintain_order=True)
        )
        accounts = ids.get_column("account_id").to_list()
        months = ids.get_column("month_key").to_list()
        cdr_ids = ids.get_column("cdr_id").to_list()
        sizes = (ids.get_column("cdr_id").str.len_bytes().cast(pl.Int64) + 3).to_list()
        start = 0
        for end in range(1, len(cdr_ids) + 1):
            if end == len(cdr_ids) or accounts[end] != accounts[start] or months[end] != months[start]:
                update = updates[accounts[start]]
                update.remembered[months[start]] = cdr_ids[start:end]
                update.sizes[months[start]] = sizes[start:end]
                start = end
    return updates


_ROUND = "_round"
_BALANCE_SCHEMA = {
    "account_id": pl.String,
    "balance": pl.Int64,
    "state": pl.String,
    "plan_id": pl.String,
    "updated_time": pl.Datetime("us", "UTC"),
    "version": pl.UInt64,
    "events": pl.UInt64,
    _KEY_INDEX: pl.Int32,
}
_EVENT_SCHEMA = {
    "event_id": pl.String,
    "account_id": pl.String,
    "kind": pl.String,
    "effective_time": pl.Datetime("us", "UTC"),
    "local_day": pl.Date,
    "month": pl.String,
    "amount": pl.Int64,
    "opening_balance": pl.Int64,
    "balance": pl.Int64,
    "plan_id": pl.String,
    "reference": pl.String,
    "detail": pl.String,
    "topic": pl.String,
    "partition": pl.Int32,
    "offset": pl.Int64,
    _KEY_INDEX: pl.Int32,
}


class _LedgerFold:
    """The ledger side of a batch: books, balances, and the events they give."""

    def __init__(self, catalog: Catalog, topic: str, keys: list[bytes], ledgers: Mapping[str, Any]) -> None:
        self.catalog = catalog
        self.topic = topic
        self.keys = keys
        self.books: dict[str, Book] = {a: Book.from_json(ledger) for a, ledger in ledgers.items()}
        self.events: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.statuses: list[OutputMessage] = []
        self.refusals: list[dict[str, Any]] = []
        #: rated rows of corrections (new versions, and the versions they replace)
        self.corrected_rows: list[pl.DataFrame] = []
        self._corrected_alerts: list[pl.DataFrame] = []
        #: (account, month key) of month records a correction changed
        self.corrected_months: list[tuple[str, int]] = []
        self.latest: dict[str, Any] = {}
        self._accounts = {
            row["account_id"]: row for row in catalog.accounts.select(
                "account_id", "plan_id", "opening_balance", "low_balance_threshold"
            ).iter_rows(named=True)
        }
        self._plans = {plan.id: plan for plan in catalog.plans}
        #: balances the commands left, applied to the state at the next flush
        self._pending: dict[str, int] = {}
        self._known: tuple[pl.DataFrame, dict[str, int]] | None = None

    # --------------------------------------------------------------- calls
    def split_inactive(self, lines: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Lines of kept, frozen or closed accounts (ledger.md 5) become rejections."""
        periods = {a: b.inactive_periods() for a, b in self.books.items()}
        periods = {a: p for a, p in periods.items() if p}
        if not periods:
            return lines, lines.clear()
        accounts = pl.Series([self.keys[i].decode("utf-8", "replace") for i in range(len(self.keys))])
        owner = accounts.gather(lines.get_column(_KEY_INDEX))
        mask = np.zeros(lines.height, dtype=bool)
        candidates = owner.is_in(list(periods)).to_numpy()
        if candidates.any():
            starts = with_typed_fields(lines.filter(pl.Series(candidates)).select(
                "start_time", "answer_time", "end_time", "billsec"
            )).get_column("start").to_list()
            where = np.flatnonzero(candidates)
            for row, start in zip(where, starts, strict=True):
                if start is None:
                    continue  # a malformed time: the engine rejects it for that
                for since, until in periods[owner[int(row)]]:
                    if since <= start and (until is None or start < until):
                        mask[row] = True
                        break
        if not mask.any():
            return lines, lines.clear()
        hit = pl.Series(mask)
        inactive = lines.filter(hit).select(
            "line", "cdr_id",
            pl.lit("account_inactive").alias("reason"),
            pl.format("account {} is kept, frozen or closed at the call's start", owner.filter(hit)).alias("detail"),
            owner.filter(hit).alias("account_id"),
            *[c for c in ("source", "ingest_id", "topic", "partition", "offset", _KEY_INDEX) if c in lines.columns],
        )
        return lines.filter(~hit), inactive

    def after_calls(self, result: Any) -> RatingState:
        """Month usage (minimum spend) and suspensions (arrears) from a round of calls."""
        state = result.state
        rated = result.rated
        if rated.height and self.books:
            usage = (
                rated.filter(pl.col("account_id").is_in(list(self.books)))
                .group_by("account_id", pl.col("local_day").dt.strftime("%Y-%m").alias("month"))
                .agg(pl.col("amount").sum())
            )
            for account, month, amount in usage.iter_rows():
                book = self.books[account]
                if month in book.closed_months or not book.remembers(month):
                    continue  # closed: later calls do not re-open its minimum spend (docs/rules.md)
                book.usage[month] = book.usage.get(month, 0) + amount
        if rated.height:
            latest = rated.group_by("account_id").agg(pl.col("charge_time").max())
            for account, at in latest.iter_rows():
                self._touch(account, at)
        arrears = result.alerts.filter(pl.col("kind") == "arrears")
        if arrears.height and self.books:
            times = arrears.join(rated.select("account_id", "cdr_id", "charge_time"), on=["account_id", "cdr_id"])
            for account, rows in times.group_by("account_id", maintain_order=True):
                account_id = account[0]
                book = self.books.get(account_id)
                terms = self._terms(account_id, None)
                if book is None or book.opened_at is None or terms is None:
                    continue
                pairs = list(zip(rows.get_column("cdr_id").to_list(), rows.get_column("charge_time").to_list()))
                balance = self._balance(state, account_id)
                book, balance, applied = after_calls(book, balance, terms, pairs)
                self.books[account_id] = book
                index = int(rows.get_column(_KEY_INDEX)[0]) if _KEY_INDEX in rows.columns else self._index(account_id)
                position = (
                    (int(rows.get_column("partition")[-1]), int(rows.get_column("offset")[-1]))
                    if "offset" in rows.columns else (-1, -1)
                )
                self._record(applied, index, position, terms)
        return state

    # --------------------------------------------------------------- commands
    def apply(self, state: RatingState, index: int, message: SourceMessage, command: LedgerCommand) -> RatingState:
        account = self.keys[index].decode("utf-8", "replace")
        terms = self._terms(account, command)
        if command.account_id != account or terms is None:
            why = (
                f"the command names account {command.account_id} but is keyed {account}"
                if command.account_id != account
                else f"plan {command.plan or '(none)'} of account {account} is not in the catalogue"
            )
            self._refuse(message, index, command, why)
            return state
        book = self.books.get(account, Book())
        balance = self._balance(state, account)
        correction = command.correction
        recorded = correction is not None and correction.part in book.corrections.get(correction.correction_id, [0, []])[1]
        book, balance, applied = apply_command(book, balance, command, terms, offset=message.offset)
        if applied.refusal:
            self._refuse(message, index, command, applied.refusal)
            return state
        self.books[account] = book
        self._record(applied, index, (message.partition, message.offset), terms)
        self._touch(account, command.at)
        if correction is not None and not recorded:
            state = self._corrected(self.flush(state), account, index, message, correction)
        self._pending[account] = balance
        return state

    def _corrected(self, state: RatingState, account: str, index: int, message: SourceMessage, correction: Any) -> RatingState:
        """A correction part's rows, alerts and month records (docs/rules.md "Corrections")."""
        # Above every earlier version of these calls: the first rating's (0), or an
        # earlier correction's (its own offset + 1, lower than this one's).
        version = message.offset + 1
        tag = {"correction_id": correction.correction_id, _KEY_INDEX: index}
        rows = _rows(correction.rows, RATED).with_columns(
            version=pl.lit(version, dtype=pl.UInt64), **_literals(tag)
        )
        self.corrected_rows.append(rows)
        if correction.billed_rows:
            self.corrected_rows.append(_rows(correction.billed_rows, RATED).with_columns(**_literals(tag)))
        if correction.alerts:
            alerts = _rows(correction.alerts, ALERTS).with_columns(
                version=pl.lit(version, dtype=pl.UInt64), **_literals({_KEY_INDEX: index})
            )
            self._corrected_alerts.append(alerts)
        state, months = corrected_state(state, account, correction.calls, correction.days, self.catalog.horizon_months)
        self.corrected_months.extend((account, month) for month in months)
        return state

    # --------------------------------------------------------------- outputs
    def event_frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.events, schema=_EVENT_SCHEMA)

    def alert_frames(self) -> list[pl.DataFrame]:
        frames = list(self._corrected_alerts)
        if self.alerts:
            frames.insert(0, pl.DataFrame(self.alerts).with_columns(pl.col(_KEY_INDEX).cast(pl.Int32)))
        return frames

    def status_messages(self) -> list[OutputMessage]:
        return self.statuses

    def balance_row(
        self, account: str, index: int, offset: int, state: RatingState, book: Book | None
    ) -> dict[str, Any]:
        known = self._accounts.get(account)
        balance = self._balance(state, account)
        return {
            "account_id": account,
            "balance": balance,
            "state": book.shown_state() if book is not None and book.lifecycle else "active",
            "plan_id": (book.plan_id if book is not None and book.plan_id else (known or {}).get("plan_id", "")),
            "updated_time": self.latest.get(account, datetime(1970, 1, 1, tzinfo=timezone.utc)),
            "version": offset,
            "events": book.event_count if book is not None else 0,
            _KEY_INDEX: index,
        }

    # --------------------------------------------------------------- helpers
    def _terms(self, account: str, command: LedgerCommand | None) -> Terms | None:
        known = self._accounts.get(account)
        book = self.books.get(account)
        plan_id = (book.plan_id if book and book.plan_id else "") or (known or {}).get("plan_id") or (
            command.plan if command is not None else ""
        )
        plan = self._plans.get(plan_id)
        if plan is None:
            return None
        threshold = known["low_balance_threshold"] if known else DEFAULT_LOW_BALANCE
        return Terms(account, plan, threshold)

    def _balance(self, state: RatingState, account: str) -> int:
        if account in self._pending:
            return self._pending[account]
        if self._known is None or self._known[0] is not state.balances:
            self._known = (state.balances, dict(state.balances.iter_rows()))
        if account in self._known[1]:
            return int(self._known[1][account])
        known = self._accounts.get(account)
        return int(known["opening_balance"]) if known else 0

    def flush(self, state: RatingState) -> RatingState:
        """The state with the balances the commands since the last flush left (one concat)."""
        if not self._pending:
            return state
        pending = pl.DataFrame(
            {"account_id": list(self._pending), "balance": list(self._pending.values())},
            schema=state.balances.schema,
        )
        self._pending = {}
        balances = pl.concat([state.balances.join(pending, on="account_id", how="anti"), pending])
        return dataclasses.replace(state, balances=balances)

    def _index(self, account: str) -> int:
        return self.keys.index(account.encode())

    def _touch(self, account: str, at: datetime) -> None:
        previous = self.latest.get(account)
        self.latest[account] = at if previous is None or at > previous else previous

    def _record(self, applied: Any, index: int, position: tuple[int, int], terms: Terms) -> None:
        zone = terms.plan.zone
        for event in applied.events:
            local = event.at.astimezone(zone)
            month = event.reference if event.kind in _MONTH_CLOSE else local.strftime("%Y-%m")
            self.events.append(
                {
                    **event.model_dump(exclude={"at"}),
                    "effective_time": event.at.astimezone(timezone.utc),
                    "local_day": local.date(),
                    "month": month,
                    "topic": self.topic,
                    "partition": position[0],
                    "offset": position[1],
                    _KEY_INDEX: index,
                }
            )
        for alert in applied.alerts:
            self.alerts.append({**alert, _KEY_INDEX: index})
        for number, status, event_id, at in applied.statuses:
            value = {"number": number, "status": status, "account_id": terms.account_id,
                     "event_id": event_id, "at": at.isoformat()}
            self.statuses.append(
                OutputMessage("status", number.encode(), encode(value), terms.account_id.encode())
            )

    def _refuse(self, message: SourceMessage, index: int, command: LedgerCommand, why: str) -> None:
        log.warning("ledger command %s of %s refused: %s", command.command_id, command.account_id, why)
        row = _garbage_row(message, self.topic, index, ValueError(why))
        row.update(
            cdr_id=command.command_id,
            reason="ledger_refused",
            detail=f"{command.kind} refused: {why}",
            account_id=command.account_id,
        )
        self.refusals.append(row)


#: An account the catalogue does not know yet (opened by command): tariffs.Account's default.
DEFAULT_LOW_BALANCE: Final[int] = 500_000
_MONTH_CLOSE: Final = frozenset({"RentCharged", "ServiceFeeCharged", "MinimumSpendTrueUp", "KeepNumberFeeCharged"})


def _rows(value: dict[str, Any], table: Table) -> pl.DataFrame:
    """The rows of a correction's frame value, typed as ``table`` stores them."""
    schema = {**table.schema, **table.optional}
    rows = value.get("rows", {})
    return frame_from_value(value, {name: schema[name] for name in rows if name in schema})


def _literals(values: Mapping[str, Any]) -> dict[str, pl.Expr]:
    return {
        name: pl.lit(value, dtype=pl.Int32 if name == _KEY_INDEX else None) for name, value in values.items()
    }


def _with_positions(batch: pl.DataFrame, positions: list[tuple[int, int, int, int, int]], topic: str) -> pl.DataFrame:
    """Each row's Kafka position, message key index and ledger round, from one entry per message."""
    partitions, offsets, indices, lines, rounds = (np.array(column) for column in zip(*positions, strict=True))
    return batch.with_columns(
        pl.Series(_ROUND, np.repeat(rounds, lines), dtype=pl.Int32),
        pl.lit(topic, dtype=pl.String).alias("topic"),
        pl.Series("partition", np.repeat(partitions, lines), dtype=pl.Int32),
        pl.Series("offset", np.repeat(offsets, lines), dtype=pl.Int64),
        pl.Series(_KEY_INDEX, np.repeat(indices, lines), dtype=pl.Int32),
    )


def _messages_by_partition(
    kind: OutputKind, frame: pl.DataFrame, keys: list[bytes], partition_of: list[int], topic: str
) -> Iterable[OutputMessage]:
    """One message per source partition (and per ``OUTPUT_ROWS`` rows), each account's rows
    together and in log order.

    The frame is turned into message columns once (``frame_value``), then cut: a frame per
    message would cost more than the rating itself. Messages follow the batch's partitions,
    not its accounts: a live feed's batch of 1,000 accounts makes a few messages per kind,
    where a message per account made ~2,000 (each one a cost to send, acknowledge and read).
    """
    if frame.height == 0:
        return
    partitions = np.asarray(partition_of, dtype=np.int64)[frame.get_column(_KEY_INDEX).to_numpy()]
    frame = frame.with_columns(pl.Series(_PARTITION, partitions)).sort(_PARTITION, _KEY_INDEX, maintain_order=True)
    index = frame.get_column(_KEY_INDEX).to_numpy()
    part = frame.get_column(_PARTITION).to_numpy()
    value = frame_value(frame.drop(_KEY_INDEX, _PARTITION))
    columns: dict[str, list[Any]] = value["rows"]  # type: ignore[assignment]
    bounds = [0, *(np.flatnonzero(np.diff(part)) + 1).tolist(), frame.height]
    rows = _Rows(kind, value, columns, index, keys)
    for first, end in zip(bounds, bounds[1:]):
        partition = int(part[first])
        key = f"{topic}[{partition}]".encode()
        for start in range(first, end, OUTPUT_ROWS):
            yield from rows.bounded(key, partition, start, min(start + OUTPUT_ROWS, end))


@dataclass(frozen=True)
class _Rows:
    """A kind's encoded rows, sorted by partition then account, to cut into messages."""

    kind: OutputKind
    value: dict[str, Any]
    columns: dict[str, list[Any]]
    index: np.ndarray  # each row's key index
    keys: list[bytes]

    def bounded(self, key: bytes, partition: int, start: int, stop: int) -> Iterable[OutputMessage]:
        """Rows ``start:stop`` as one message, or as halves until each is under
        ``OUTPUT_MAX_BYTES`` (rows of long lines: a CDR line may be 4 kB)."""
        encoded = encode({**self.value, "rows": {name: column[start:stop] for name, column in self.columns.items()}})
        if len(encoded) <= OUTPUT_MAX_BYTES or stop - start == 1:
            accounts = tuple(self.keys[int(i)] for i in np.unique(self.index[start:stop]))
            yield OutputMessage(
                self.kind,
                key,
                encoded,
                accounts[0] if len(accounts) == 1 else b"",
                partition,
                accounts,
                None if len(accounts) == 1 else (lambda: self.per_account(partition, start, stop)),
            )
            return
        middle = (start + stop) // 2
        yield from self.bounded(key, partition, start, middle)
        yield from self.bounded(key, partition, middle, stop)

    def per_account(self, partition: int, start: int, stop: int) -> list[OutputMessage]:
        """Rows ``start:stop`` as messages of one account each (rows of an account are
        contiguous: sorted by key index)."""
        index = self.index[start:stop]
        bounds = [0, *(np.flatnonzero(np.diff(index)) + 1).tolist(), stop - start]
        return [
            message
            for first, end in zip(bounds, bounds[1:])
            for message in self.bounded(self.keys[int(index[first])], partition, start + first, start + end)
        ]


def _garbage_row(message: SourceMessage, topic: str, index: int, error: Exception) -> dict[str, Any]:
    """A rejection for a message that is no CDR chunk, named by its Kafka position."""
    position = f"{topic}[{message.partition}]@{message.offset}"
    return {
        "line": 0,
        "cdr_id": "",
        "reason": "malformed",
        "detail": f"the message at {position} is not a CDR chunk: {str(error)[:200]}",
        "account_id": None,
        "source": position,  # streams.sink_clickhouse names such rows the same way
        "ingest_id": "",
        "topic": topic,
        "partition": message.partition,
        "offset": message.offset,
        _KEY_INDEX: index,
    }


def _garbage_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "line": pl.Int64,
            "cdr_id": pl.String,
            "reason": pl.String,
            "detail": pl.String,
            "account_id": pl.String,
            "source": pl.String,
            "ingest_id": pl.String,
            "topic": pl.String,
            "partition": pl.Int32,
            "offset": pl.Int64,
            _KEY_INDEX: pl.Int32,
        },
    )


def _warn_misrouted(state: RatingState, accounts: Mapping[str, object]) -> None:
    # cdr.raw is keyed by account (ingest routes with the catalogue); lines of another
    # account mean a number moved between ingest and rating, or a foreign producer.
    strangers = sorted(set(state.account_ids().to_list()) - set(accounts))
    if strangers:
        log.warning(
            "cdr.raw lines of account(s) %s came in messages keyed by other accounts: their "
            "state is not kept (messages must be keyed by the account of their numbers)",
            ", ".join(strangers[:5]),
        )


def rate_isolated(
    messages: Sequence[SourceMessage],
    stored: Mapping[bytes, AccountRecords | None],
    catalog: Catalog,
    topic: str,
    *,
    retry: frozenset[bytes] = frozenset(),
    hold: frozenset[bytes] = frozenset(),
) -> tuple[BatchOutcome, dict[bytes, str]]:
    """:func:`rate_messages`, with a failing account kept from stopping the others.

    When rating the batch raises, its accounts are halved and each half rated on its own,
    down to the accounts that fail alone: those come back in the second value (account
    key -> the error), with no state written for them and none of their outputs; every
    other account is rated as usual. An account's messages only ever change its own
    state, so rating the halves apart gives what rating them together would.
    """
    try:
        return rate_messages(messages, stored, catalog, topic, retry=retry, hold=hold), {}
    except Exception as error:  # a bug or a record no rule foresaw: find whose
        keys = sorted({m.key for m in messages})
        if len(keys) == 1:
            log.error("rating account %r failed: %r", keys[0], error, exc_info=True)
            outcome = BatchOutcome(messages=len(messages))
            for message in messages:
                outcome.checkpoints[message.partition] = max(
                    outcome.checkpoints.get(message.partition, 0), message.offset + 1
                )
            return outcome, {keys[0]: f"{type(error).__name__}: {error}"[:500]}
    half = set(keys[: len(keys) // 2])
    merged = BatchOutcome()
    failed: dict[bytes, str] = {}
    for part in ([m for m in messages if m.key in half], [m for m in messages if m.key not in half]):
        outcome, part_failed = rate_isolated(part, stored, catalog, topic, retry=retry, hold=hold)
        failed.update(part_failed)
        merged.outputs.extend(outcome.outputs)
        merged.states.update(outcome.states)
        for partition, offset in outcome.checkpoints.items():
            merged.checkpoints[partition] = max(merged.checkpoints.get(partition, 0), offset)
        for name in ("messages", "skipped", "garbage", "lines", "held"):
            setattr(merged, name, getattr(merged, name) + getattr(outcome, name))
    return merged, failed


def blocked_core(
    key: bytes, stored: AccountRecords | None, messages: Sequence[SourceMessage], error: str, at: datetime
) -> tuple[int, tuple[bytes, bytes]] | None:
    """The core record that blocks an account after a failure: its state as it was, with
    the first message it did not apply (kept in the log for the next try) and why.

    None when the account had no message past its state in ``messages``.
    """
    core = core_of(stored)
    mine = [m for m in messages if m.key == key and m.offset > core.applied_offset]
    if not mine:
        return None
    first = min(m.offset for m in mine)
    if core.blocked is not None:
        first = min(first, int(core.blocked["offset"]))
    core.blocked = {"offset": first, "partition": mine[0].partition, "error": error[:500], "at": at.isoformat()}
    return mine[0].partition, (key, core.encode())
