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
  message below it is folded into the states this batch writes (or earlier ones);
- an operator's ``unblock`` command (``cdrflow blocked retry|skip``) of a blocked account is
  reported in ``unblocks`` (the runner then tries the account again at once), and a
  message it skips is kept as ``skipped`` rejections instead of being applied
  (docs/streaming.md, "Blocked accounts").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson
import polars as pl

from rating import Catalog, RatingState, rate
from rating.clock import month_key
from rating.engine import ROUTED_ACCOUNT
from schemas.ledger import LedgerCommand, command_from_value
from schemas.messages import cdr_chunks_frame
from streams.worker.ledger_fold import _ROUND, LedgerFold
from streams.worker.messages import (
    _KEY_INDEX,
    OutputMessage,
    SourceMessage,
    _garbage_frame,
    _garbage_row,
    _messages_by_partition,
)
from streams.worker.state_records import (
    AccountRecords,
    AccountUpdate,
    Core,
    account_records,
    core_of,
    month_values,
    rating_state,
)

log = logging.getLogger(__name__)


@dataclass
class BatchOutcome:
    """What one batch produced.

    Attributes
    ----------
    outputs
        Messages to send, and to see acknowledged, before any state is written.
    states
        Account key -> (partition, records to write afterwards: its changed parts, then
        its core with the new ``applied_offset``; streams.worker.state_records).
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
    #: blocked accounts with an operator's unblock command among their messages not
    #: applied: account -> (partition, the command's offset); the runner tries them again
    unblocks: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    #: accounts rated up to the message they fail at, and blocked there (their state,
    #: with the note, is in ``states``) -> the error
    blocked: dict[bytes, str] = field(default_factory=dict)


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
    >>> from streams.worker.state_records import Record
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
    forwards_taken: dict[int, set[str]] = {}  # key index -> forwarded chunk ids its log took
    forwarded: list[tuple[int, str]] = []  # (key index, id) of the chunks this batch takes
    # Operators' skips in this batch: account -> offset of the message to skip -> the command.
    skips = _skips(ordered)
    skipped: list[tuple[SourceMessage, int, LedgerCommand]] = []
    for message in ordered:
        outcome.checkpoints[message.partition] = max(
            outcome.checkpoints.get(message.partition, 0), message.offset + 1
        )
        core = cores.get(message.key)
        if core is None:
            core = cores[message.key] = core_of(stored.get(message.key))
        if message.key in hold or (core.blocked is not None and message.key not in retry):
            outcome.held += 1  # a blocked account: its lines stay in the log for the next try
            if core.blocked is not None and is_unblock(message):
                outcome.unblocks[message.key] = (message.partition, message.offset)  # try it again now
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
        skip = skips.get(message.key, {}).get(message.offset)
        if skip is not None and core.blocked is not None and int(core.blocked["offset"]) == message.offset:
            skipped.append((message, index, skip))  # not applied: kept as rejections, said by an event
            continue
        if value is not None and b'"ledger"' in value:  # cheap: only ledger messages hold it as a key
            try:
                command = command_from_value(orjson.loads(value))
            except Exception as error:  # a ledger message that is no valid command
                outcome.garbage += 1
                garbage.append(_garbage_row(message, topic, index, error))
                continue
            if command is not None and command.kind == "unblock":
                # Applied by reaching it: a skip it asks for was done at the skipped message
                # (above), while the account was blocked there; otherwise nothing to do.
                log.info("cdrflow blocked %s of %s reached at %s[%d]@%d (a skip is done at its message while the "
                         "account is blocked there)", "skip" if command.skip_offset is not None else "retry",
                         command.account_id, topic, message.partition, message.offset)
                continue
            if command is not None:
                commands.append((rounds.get(index, 0), index, message, command))
                rounds[index] = rounds.get(index, 0) + 1
                continue
        if value is not None and b'"forwarded"' in value:  # issue 25: another log's calls of a number
            forward_id = _forward_id(value)
            taken = forwards_taken.setdefault(index, set(((cores[message.key].ledger or {}).get("forwards") or [])))
            if forward_id in taken:
                outcome.skipped += 1  # a second copy (its sender was replayed): taken already
                continue
            if forward_id is not None:
                taken.add(forward_id)
                forwarded.append((index, forward_id))
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
    fold = LedgerFold(catalog, topic, keys, {a: cores[k].ledger for a, k in accounts.items() if cores[k].ledger})
    for index, forward_id in forwarded:
        fold.took_forward(keys[index].decode("utf-8", "replace"), forward_id)
    state = rating_state({a: stored.get(k) for a, k in accounts.items()})
    collected: dict[str, list[pl.DataFrame]] = {"rated": [], "rejected": [], "alerts": []}
    remembered: list[pl.DataFrame] = []
    charged_months: list[pl.DataFrame] = []
    # A skipped message is its account's first not applied (it is blocked there): its
    # event comes first in log order, with the balance as it stood.
    for message, index, command in skipped:
        rows = skipped_rows(message, topic, index, command, cores[message.key].blocked or {})
        garbage.extend(rows)
        fold.skipped(state, index, message, command, len(rows))
    batch = _with_positions(decoded.frame, positions, topic, keys) if positions else None
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
    outcome.outputs.extend(fold.forwards)
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


def _forward_id(value: bytes) -> str | None:
    """The id of a forwarded chunk (``streams.worker.ledger_fold``), None when unreadable
    (the chunk's decoding then says what is wrong)."""
    try:
        found = orjson.loads(value).get("forwarded")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return found if isinstance(found, str) else None


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
    credits = {account: [credit, ends, refund] for account, credit, ends, refund in state.credits.iter_rows()}
    bursts: dict[str, list[str]] = {}
    for account, at in state.bursts.iter_rows():  # issue 25: the unusual_calls rule's last calls
        bursts.setdefault(account, []).append(at.isoformat())
    updates: dict[str, AccountUpdate] = {}
    for account, key in accounts.items():
        core = cores[key]
        if account in balances:  # its package credit is the state's: none when it has none
            credit = credits.get(account)
            core.credit = None if credit is None else [credit[0], credit[1].isoformat(), credit[2]]
        core.balance = balances.get(account, core.balance)
        core.bursts = bursts.get(account)
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


_BALANCE_SCHEMA = {
    "account_id": pl.String,
    "balance": pl.Int64,
    "credit": pl.Int64,
    "credit_expires": pl.String,
    "state": pl.String,
    "next_step": pl.String,
    "next_step_at": pl.String,
    "plan_id": pl.String,
    "updated_time": pl.Datetime("us", "UTC"),
    "version": pl.UInt64,
    "events": pl.UInt64,
    _KEY_INDEX: pl.Int32,
}


def _with_positions(
    batch: pl.DataFrame, positions: list[tuple[int, int, int, int, int]], topic: str, keys: list[bytes]
) -> pl.DataFrame:
    """Each row's Kafka position, message key index and ledger round, from one entry per
    message, and the account it was routed to (its message's key: the engine rates it as
    that account's, whatever the catalogue of the moment says; docs/rules.md)."""
    partitions, offsets, indices, lines, rounds = (np.array(column) for column in zip(*positions, strict=True))
    routed = pl.Series([key.decode("utf-8", "replace") for key in keys], dtype=pl.String)
    return batch.with_columns(
        routed.gather(np.repeat(indices, lines)).alias(ROUTED_ACCOUNT),
        pl.Series(_ROUND, np.repeat(rounds, lines), dtype=pl.Int32),
        pl.lit(topic, dtype=pl.String).alias("topic"),
        pl.Series("partition", np.repeat(partitions, lines), dtype=pl.Int32),
        pl.Series("offset", np.repeat(offsets, lines), dtype=pl.Int64),
        pl.Series(_KEY_INDEX, np.repeat(indices, lines), dtype=pl.Int32),
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


def is_unblock(message: SourceMessage) -> bool:
    """Whether a message is an operator's ``unblock`` command (cheap test first)."""
    value = message.value
    if value is None or b'"unblock"' not in value:
        return False
    try:
        command = command_from_value(orjson.loads(value))
    except Exception:
        return False
    return command is not None and command.kind == "unblock"


def _skips(messages: Sequence[SourceMessage]) -> dict[bytes, dict[int, LedgerCommand]]:
    """The skips the batch's unblock commands ask for: account -> skipped offset -> command
    (a command only skips a message before it in its account's log)."""
    found: dict[bytes, dict[int, LedgerCommand]] = {}
    for message in messages:
        if message.value is None or b'"skip_offset"' not in message.value:
            continue
        try:
            command = command_from_value(orjson.loads(message.value))
        except Exception:
            continue
        if command is not None and command.kind == "unblock" and command.skip_offset is not None:
            if command.skip_offset < message.offset and command.account_id.encode() == message.key:
                found.setdefault(message.key, {}).setdefault(command.skip_offset, command)
    return found


def skipped_rows(
    message: SourceMessage, topic: str, index: int, command: LedgerCommand, blocked: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The rejections that keep a skipped message: one per line of a CDR chunk (reason
    ``skipped``, with the operator's reason and the error that blocked it), or one for a
    message that is not a chunk (a ledger command: its id as ``cdr_id``)."""
    position = f"{topic}[{message.partition}]@{message.offset}"
    detail = f"skipped by an operator at {command.at.isoformat()}: {command.reason}"
    if blocked.get("error"):
        detail += f" (blocked by: {str(blocked['error'])[:200]})"
    base = {
        "reason": "skipped",
        "detail": detail,
        "account_id": message.key.decode("utf-8", "replace"),
        "topic": topic,
        "partition": message.partition,
        "offset": message.offset,
        _KEY_INDEX: index,
    }
    try:
        value = orjson.loads(message.value or b"")
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("line"), list) and isinstance(value.get("cdr_id"), list):
        source, ingest_id = str(value.get("source") or position), str(value.get("ingest_id") or "")
        return [
            {**base, "line": int(line), "cdr_id": str(cdr_id or ""), "source": source, "ingest_id": ingest_id}
            for line, cdr_id in zip(value["line"], value["cdr_id"], strict=False)
        ]
    ledger = value.get("ledger") if isinstance(value, dict) else None
    cdr_id = str(ledger.get("command_id") or ledger.get("kind") or "") if isinstance(ledger, dict) else ""
    return [{**base, "line": 0, "cdr_id": cdr_id, "source": position, "ingest_id": ""}]


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
    down to the accounts that fail alone. Such an account is rated up to the message it
    fails at (the longest run of its messages that rates, found by halving too) and
    blocked there: that state, with the failure note, is in ``outcome.states`` and the
    account in ``outcome.blocked``. One that fails at its first message comes back in
    the second value (account key -> the error), with no state written for it and none
    of its outputs. Every other account is rated as usual. An account's messages only
    ever change its own state, so rating the halves apart gives what rating them
    together would.
    """
    try:
        return rate_messages(messages, stored, catalog, topic, retry=retry, hold=hold), {}
    except Exception as error:  # a bug or a record no rule foresaw: find whose
        keys = sorted({m.key for m in messages})
        if len(keys) == 1:
            return _rate_up_to_failure(keys[0], messages, stored, catalog, topic, error, retry=retry, hold=hold)
    half = set(keys[: len(keys) // 2])
    merged = BatchOutcome()
    failed: dict[bytes, str] = {}
    for part in ([m for m in messages if m.key in half], [m for m in messages if m.key not in half]):
        outcome, part_failed = rate_isolated(part, stored, catalog, topic, retry=retry, hold=hold)
        failed.update(part_failed)
        merged.outputs.extend(outcome.outputs)
        merged.states.update(outcome.states)
        merged.unblocks.update(outcome.unblocks)
        merged.blocked.update(outcome.blocked)
        for partition, offset in outcome.checkpoints.items():
            merged.checkpoints[partition] = max(merged.checkpoints.get(partition, 0), offset)
        for name in ("messages", "skipped", "garbage", "lines", "held"):
            setattr(merged, name, getattr(merged, name) + getattr(outcome, name))
    return merged, failed


def _rate_up_to_failure(
    key: bytes,
    messages: Sequence[SourceMessage],
    stored: Mapping[bytes, AccountRecords | None],
    catalog: Catalog,
    topic: str,
    error: Exception,
    *,
    retry: frozenset[bytes],
    hold: frozenset[bytes],
) -> tuple[BatchOutcome, dict[bytes, str]]:
    """One account whose messages fail together: rated up to the first message that fails
    after the longest run that rates (halving), and blocked at that message."""
    log.error("rating account %r failed: %r", key, error, exc_info=True)
    why = f"{type(error).__name__}: {error}"[:500]
    mine = sorted(messages, key=lambda m: (m.partition, m.offset))
    rated, fails = 0, len(mine)  # a run of `rated` messages rates; one of `fails` does not
    best: BatchOutcome | None = None
    while fails - rated > 1:
        middle = (rated + fails) // 2
        try:
            best, rated = rate_messages(mine[:middle], stored, catalog, topic, retry=retry, hold=hold), middle
        except Exception as shorter:  # noqa: BLE001 - any failure: the run is shorter
            fails, why = middle, f"{type(shorter).__name__}: {shorter}"[:500]
    outcome = best if best is not None and key in best.states else BatchOutcome(messages=len(messages))
    outcome.messages = len(messages)
    for message in messages:
        outcome.checkpoints[message.partition] = max(outcome.checkpoints.get(message.partition, 0), message.offset + 1)
    left = mine[rated:]  # from the message it fails at
    core = core_of(stored.get(key))
    unblocks = [m for m in left if m.offset > core.applied_offset and is_unblock(m)]
    if unblocks:
        outcome.unblocks[key] = (unblocks[-1].partition, unblocks[-1].offset)
    if key not in outcome.states:
        return outcome, {key: why}
    # Rated up to the failing message: its state says so, blocked there.
    partition, records = outcome.states[key]
    failing = left[0]
    blocked = Core.decode(records[-1][1])
    assert records[-1][0] == key, "the core comes last (streams.worker.state_records)"
    blocked.blocked = {
        "offset": failing.offset, "partition": failing.partition, "error": why,
        "at": datetime.now(timezone.utc).isoformat(),
    }
    outcome.states[key] = (partition, [*records[:-1], (key, blocked.encode())])
    outcome.blocked[key] = why
    log.error("account %r rated up to %s[%d]@%d and blocked there: %s", key, topic, failing.partition,
              failing.offset, why)
    return outcome, {}


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
