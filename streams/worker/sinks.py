"""The sinks' side of the worker: output messages decoded and inserted until ClickHouse took them."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final

import faust
import orjson
import polars as pl

from schemas.messages import frame_from_value, frames_from_values
from streams.clickhouse import insert as inserts
from streams.clickhouse import tables
from streams.worker.messages import OutputKind

log = logging.getLogger(__name__)


#: The sink's own retries per insert; the agent then tries again, for as long as it runs.
SINK_RETRY: Final = inserts.RetryPolicy(budget_s=30.0)


#: The columns each output topic's rows may have, with their types (the sink's tables).
OUTPUT_SCHEMAS: Final[dict[OutputKind, dict[str, pl.DataType]]] = {
    kind: {**table.schema, **table.optional}
    for kind, table in (
        ("rated", tables.RATED),
        ("rejected", tables.REJECTED),
        ("alerts", tables.ALERTS),
        ("ledger", tables.BILLING_EVENTS),
        ("balances", tables.BALANCES),
    )
}


def read_output(value: bytes, kind: OutputKind) -> pl.DataFrame:
    """An output message's rows, typed; columns the sink does not know are left out.

    Raises ``ValueError`` (or another error of json/polars) for a message that is none.
    """
    decoded = orjson.loads(value)
    schema = OUTPUT_SCHEMAS[kind]
    rows = decoded["rows"] if isinstance(decoded, dict) and isinstance(decoded.get("rows"), dict) else {}
    return frame_from_value(decoded, {name: schema[name] for name in rows if name in schema})


def _frames(events: Iterable[faust.EventT], kind: OutputKind) -> list[pl.DataFrame]:
    """The frames of a batch of output messages; a message that is none is logged, skipped."""
    events = list(events)
    frames = []
    # All decoded at once (schemas.messages.frames_from_values), each as read_output would.
    for event, frame in zip(events, frames_from_values([e.message.value for e in events], OUTPUT_SCHEMAS[kind])):
        if isinstance(frame, Exception):  # a foreign producer's bytes: nothing to land
            message = event.message
            log.warning(
                "%s[%d]@%d is not a %s frame message, skipped: %s",
                message.topic, message.partition, message.offset, kind, str(frame)[:200],
            )
        else:
            frames.append(frame)
    return frames


def _insert_until_done(
    client: Any,
    insert: Callable[..., int],
    frames: list[pl.DataFrame],
    kind: OutputKind,
    stopping: threading.Event,
) -> None:
    """Insert the frames in one insert, retrying while ClickHouse is away.

    A frame ClickHouse cannot take for what it holds (a foreign message with a wrong
    column) is logged and left out, so that it does not hold back every row after it.
    """
    if not frames:
        return
    try:
        frame = pl.concat(frames, how="diagonal_relaxed")
    except pl.exceptions.PolarsError:
        frame = None
    if frame is not None:
        try:
            _retry_forever(lambda: insert(client, frame, retry=SINK_RETRY), f"insert of {frame.height:,} {kind} rows", stopping)
            return
        except ValueError as error:
            log.error("a %s batch was refused (%s); inserting its messages one by one", kind, error)
    for one in frames:
        try:
            _retry_forever(
                lambda one=one: insert(client, one, retry=SINK_RETRY), f"insert of {one.height:,} {kind} rows", stopping
            )
        except ValueError as error:
            log.error("a %s message of %d rows cannot be stored, left out: %s", kind, one.height, error)


def _retry_forever(action: Callable[[], object], what: str, stopping: threading.Event) -> None:
    """Run ``action`` until it succeeds; a ``ValueError`` (bad rows) gets out at once.

    Gives up only when the worker stops (``stopping``): the batch is then not acked, and
    comes again to the next worker.
    """
    delay = 1.0
    while True:
        try:
            action()
            return
        except ValueError:
            raise
        except Exception as error:  # the sink's own retries ran out, or a server error
            log.error("%s failed (%s); again in %.0f s", what, str(error).splitlines()[0][:300], delay)
            if stopping.wait(delay):
                raise asyncio.CancelledError(f"{what}: the worker stops") from error
            delay = min(delay * 2, 60.0)
