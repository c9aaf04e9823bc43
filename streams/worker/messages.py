"""The worker's messages: what it takes from ``cdr.raw`` and what it sends, cut per partition.

Pure (no Kafka, no Faust): outputs are grouped by source partition, one message per kind
and ``cdr.raw`` partition, cut by rows and bytes (docs/streaming.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import orjson
import polars as pl

from schemas.messages import frame_bytes

#: ``forward``: calls of a transferred number for the log of the account that held it
#: then (issue 25), put on ``cdr.raw`` keyed by that account.
OutputKind = Literal["rated", "rejected", "alerts", "ledger", "balances", "status", "forward"]


#: Rows per output message: a large account batch is cut so that a message stays well
#: under Kafka's default 1 MB limit (a rated row is ~370 bytes of Arrow IPC).
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


def encode(value: Any) -> bytes:
    """A message or table value as compact UTF-8 JSON."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def _messages_by_partition(
    kind: OutputKind, frame: pl.DataFrame, keys: list[bytes], partition_of: list[int], topic: str
) -> Iterable[OutputMessage]:
    """One message per source partition (and per ``OUTPUT_ROWS`` rows), each account's rows
    together and in log order, as Arrow IPC (``schemas.messages.frame_bytes``).

    The frame is sorted once, then cut into slices (no copy): writing a slice costs no
    Python per value. Messages follow the batch's partitions, not its accounts: a live
    feed's batch of 1,000 accounts makes a few messages per kind, where a message per
    account made ~2,000 (each one a cost to send, acknowledge and read).
    """
    if frame.height == 0:
        return
    partitions = np.asarray(partition_of, dtype=np.int64)[frame.get_column(_KEY_INDEX).to_numpy()]
    frame = frame.with_columns(pl.Series(_PARTITION, partitions)).sort(_PARTITION, _KEY_INDEX, maintain_order=True)
    index = frame.get_column(_KEY_INDEX).to_numpy()
    part = frame.get_column(_PARTITION).to_numpy()
    bounds = [0, *(np.flatnonzero(np.diff(part)) + 1).tolist(), frame.height]
    rows = _Rows(kind, frame.drop(_KEY_INDEX, _PARTITION), index, keys)
    for first, end in zip(bounds, bounds[1:]):
        partition = int(part[first])
        key = f"{topic}[{partition}]".encode()
        for start in range(first, end, OUTPUT_ROWS):
            yield from rows.bounded(key, partition, start, min(start + OUTPUT_ROWS, end))


@dataclass(frozen=True)
class _Rows:
    """A kind's rows, sorted by partition then account, to cut into messages."""

    kind: OutputKind
    frame: pl.DataFrame
    index: np.ndarray  # each row's key index
    keys: list[bytes]

    def bounded(self, key: bytes, partition: int, start: int, stop: int) -> Iterable[OutputMessage]:
        """Rows ``start:stop`` as one message, or as halves until each is under
        ``OUTPUT_MAX_BYTES`` (rows of long lines: a CDR line may be 4 kB)."""
        encoded = frame_bytes(self.frame.slice(start, stop - start))
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
        "source": position,  # streams.clickhouse.insert names such rows the same way
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
