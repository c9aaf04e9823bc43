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
- outputs are grouped by message key (the account), as the output topics are keyed;
- each partition's checkpoint is the offset after the last message of the batch: every
  message below it is folded into the states this batch writes (or earlier ones).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import orjson
import polars as pl

from rating import Catalog, RatingState, rate
from schemas.messages import cdr_chunks_frame, frame_value

log = logging.getLogger(__name__)

OutputKind = Literal["rated", "rejected", "alerts"]
#: Rows per output message: a large account batch is cut so that a message stays well
#: under Kafka's default 1 MB limit (a rated row is ~300 bytes of JSON).
OUTPUT_ROWS: Final[int] = 1000
#: The table key of a partition's checkpoint; account keys are UTF-8 text, never NUL.
CHECKPOINT_PREFIX: Final[bytes] = b"\x00checkpoint/"
_KEY_INDEX = "_key_index"


@dataclass(frozen=True)
class SourceMessage:
    """A ``cdr.raw`` message as the agent took it: raw key (the account) and raw value."""

    key: bytes
    partition: int
    offset: int
    value: bytes | None


@dataclass(frozen=True)
class OutputMessage:
    """A message for ``billing.events`` (rated), ``cdr.rejected`` or ``alerts``."""

    kind: OutputKind
    key: bytes
    value: bytes


@dataclass
class BatchOutcome:
    """What one batch produced.

    Attributes
    ----------
    outputs
        Messages to send, and to see acknowledged, before any state is written.
    states
        Table key -> (partition, encoded value) to write afterwards: each account the
        batch advanced, with its new ``applied_offset``.
    checkpoints
        Partition -> the offset after the batch's last message, written after the states.
    """

    outputs: list[OutputMessage] = field(default_factory=list)
    states: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)
    checkpoints: dict[int, int] = field(default_factory=dict)
    messages: int = 0
    skipped: int = 0
    garbage: int = 0
    lines: int = 0


def checkpoint_key(partition: int) -> bytes:
    """The table key under which a ``cdr.raw`` partition's checkpoint is kept.

    Examples
    --------
    >>> checkpoint_key(2)
    b'\\x00checkpoint/2'
    """
    return CHECKPOINT_PREFIX + str(partition).encode()


def checkpoint_value(next_offset: int) -> bytes:
    """The stored value of a checkpoint: the first offset not yet folded into the states."""
    return encode({"next_offset": next_offset})


def checkpoint_offset(value: bytes | None) -> int:
    """The offset a stored checkpoint names; 0 (the log's start) when there is none.

    Examples
    --------
    >>> checkpoint_offset(checkpoint_value(42)), checkpoint_offset(None)
    (42, 0)
    """
    if value is None:
        return 0
    return int(json.loads(value)["next_offset"])


def applied_offset(value: bytes | None) -> int:
    """The ``cdr.raw`` offset of the last message an account's stored state holds (-1: none)."""
    if value is None:
        return -1
    return int(json.loads(value).get("applied_offset", -1))


def encode(value: Any) -> bytes:
    """A message or table value as compact UTF-8 JSON."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def rate_messages(
    messages: Sequence[SourceMessage],
    stored: Mapping[bytes, bytes | None],
    catalog: Catalog,
    topic: str,
) -> BatchOutcome:
    """Rate the messages of one batch that the stored states do not hold yet.

    Parameters
    ----------
    messages
        The batch, in the order taken (offset order within each partition).
    stored
        Each message key's stored state (``None``: the account has none yet).
    catalog
        The tariff catalogue to rate with.
    topic
        The source topic's name, carried in every output row with partition and offset.

    Examples
    --------
    >>> from schemas.messages import cdr_chunk_value
    >>> from tariffs import load_tariffs
    >>> catalog = Catalog.from_tariffs(load_tariffs("../shared/vectors/basic/plans",
    ...                                             "../shared/vectors/basic/accounts.toml"))
    >>> garbage = SourceMessage(b"A001", 0, 7, b"not json")
    >>> outcome = rate_messages([garbage], {}, catalog, "cdr.raw")
    >>> [(m.kind, m.key) for m in outcome.outputs], outcome.checkpoints
    ([('rejected', b'A001')], {0: 8})
    >>> outcome = rate_messages([garbage], {b"A001": outcome.states[b"A001"][1]}, catalog, "cdr.raw")
    >>> outcome.skipped, outcome.outputs
    (1, [])
    """
    ordered = sorted(messages, key=lambda m: (m.partition, m.offset))
    outcome = BatchOutcome(messages=len(ordered))
    keys: list[bytes] = []
    key_index: dict[bytes, int] = {}
    last_offset: dict[bytes, tuple[int, int]] = {}
    pending: list[tuple[SourceMessage, int]] = []  # to decode, with their key index
    garbage: list[dict[str, Any]] = []
    positions: list[tuple[int, int, int, int]] = []  # partition, offset, key index, lines
    for message in ordered:
        outcome.checkpoints[message.partition] = max(
            outcome.checkpoints.get(message.partition, 0), message.offset + 1
        )
        done = last_offset.get(message.key, (message.partition, applied_offset(stored.get(message.key))))[1]
        if message.offset <= done:
            outcome.skipped += 1  # a replay: the state holds this message already
            continue
        last_offset[message.key] = (message.partition, message.offset)
        index = key_index.setdefault(message.key, len(keys))
        if index == len(keys):
            keys.append(message.key)
        pending.append((message, index))
    # All values decoded at once (one frame for the batch, not one per message).
    decoded = cdr_chunks_frame([message.value for message, _ in pending])
    for number, (message, index) in enumerate(pending):
        error = decoded.errors.get(number)
        if error is not None:  # a stranger's bytes: a rejection, never a crashed agent
            outcome.garbage += 1
            garbage.append(_garbage_row(message, topic, index, error))
        else:
            positions.append((message.partition, message.offset, index, decoded.heights[number]))
    if positions:
        batch = _with_positions(decoded.frame, positions, topic)
        outcome.lines = batch.height
        accounts = {key.decode("utf-8", "replace"): stored.get(key) for key in keys}
        state = RatingState.from_accounts({a: orjson.loads(v) for a, v in accounts.items() if v is not None})
        result = rate(batch, state, catalog)
        rejected = result.rejected
        if garbage:
            rejected = pl.concat([rejected, pl.DataFrame(garbage, schema=rejected.schema)], how="vertical")
        new_parts = result.state.to_accounts()
        _warn_misrouted(new_parts, accounts)
        outputs = (("rated", result.rated), ("rejected", rejected), ("alerts", result.alerts))
    else:
        new_parts = {}
        outputs = (("rejected", _garbage_frame(garbage)),) if garbage else ()
    for kind, frame in outputs:
        outcome.outputs.extend(_messages_by_key(kind, frame, keys))
    for key, (partition, offset) in last_offset.items():
        account = key.decode("utf-8", "replace")
        part = new_parts.get(account)
        if part is None:  # no rated row and no earlier state: nothing to remember but the offset
            before = stored.get(key)
            part = orjson.loads(before) if before is not None else {}
        outcome.states[key] = (partition, encode({**part, "applied_offset": offset}))
    return outcome


def _with_positions(batch: pl.DataFrame, positions: list[tuple[int, int, int, int]], topic: str) -> pl.DataFrame:
    """Each row's Kafka position and message key index, from one entry per message."""
    partitions, offsets, indices, lines = (np.array(column) for column in zip(*positions, strict=True))
    return batch.with_columns(
        pl.lit(topic, dtype=pl.String).alias("topic"),
        pl.Series("partition", np.repeat(partitions, lines), dtype=pl.Int32),
        pl.Series("offset", np.repeat(offsets, lines), dtype=pl.Int64),
        pl.Series(_KEY_INDEX, np.repeat(indices, lines), dtype=pl.Int32),
    )


def _messages_by_key(kind: OutputKind, frame: pl.DataFrame, keys: list[bytes]) -> Iterable[OutputMessage]:
    """One message per key (and per ``OUTPUT_ROWS`` rows), rows in log order.

    The frame is turned into message columns once (``frame_value``), then cut by key:
    a frame per key would cost more than the rating itself.
    """
    if frame.height == 0:
        return
    frame = frame.sort(_KEY_INDEX, maintain_order=True)
    index = frame.get_column(_KEY_INDEX).to_numpy()
    value = frame_value(frame.drop(_KEY_INDEX))
    columns: dict[str, list[Any]] = value["rows"]  # type: ignore[assignment]
    bounds = [0, *(np.flatnonzero(np.diff(index)) + 1).tolist(), frame.height]
    for first, end in zip(bounds, bounds[1:]):
        for start in range(first, end, OUTPUT_ROWS):
            stop = min(start + OUTPUT_ROWS, end)
            rows = {name: column[start:stop] for name, column in columns.items()}
            yield OutputMessage(kind, keys[int(index[first])], encode({**value, "rows": rows}))


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


def _warn_misrouted(new_parts: Mapping[str, object], accounts: Mapping[str, object]) -> None:
    # cdr.raw is keyed by account (ingest routes with the catalogue); lines of another
    # account mean a number moved between ingest and rating, or a foreign producer.
    strangers = sorted(set(new_parts) - set(accounts))
    if strangers:
        log.warning(
            "cdr.raw lines of account(s) %s came in messages keyed by other accounts: their "
            "state is not kept (messages must be keyed by the account of their numbers)",
            ", ".join(strangers[:5]),
        )
