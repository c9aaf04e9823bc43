"""The sinks' side of the worker: output messages decoded and inserted until ClickHouse took
them, or, when it refuses a message's rows for what they hold, put in ``dead_letters``."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import faust
import orjson
import polars as pl
from clickhouse_driver import errors as clickhouse_errors

from schemas.messages import ARROW_STREAM_MARK, frame_value, frames_from_values, read_frame_bytes
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
    (frame,) = frames_from_values([value], OUTPUT_SCHEMAS[kind])
    if isinstance(frame, Exception):
        raise frame
    return frame


def _frames(events: Iterable[faust.EventT], kind: OutputKind) -> list[pl.DataFrame]:
    """The frames of a batch of output messages; a message that is none is logged, skipped."""
    return [landing.frame for landing in _landings(events, kind) if landing.frame is not None]


@dataclass(frozen=True)
class Landing:
    """One output message to land: its rows (None: it holds none it can show), and where
    it is on Kafka, for a dead letter."""

    frame: pl.DataFrame | None
    topic: str
    partition: int
    offset: int
    value: bytes
    problem: str = ""


def _landings(events: Iterable[faust.EventT], kind: OutputKind) -> list[Landing]:
    """The messages of a batch with their rows, decoded all at once (``frames_from_values``)."""
    events = list(events)
    landings = []
    for event, frame in zip(events, frames_from_values([e.message.value for e in events], OUTPUT_SCHEMAS[kind])):
        message = event.message
        value = message.value if isinstance(message.value, bytes) else bytes(message.value or b"")
        if isinstance(frame, Exception):  # a foreign producer's bytes: nothing to land
            log.warning(
                "%s[%d]@%d is not a %s frame message, skipped: %s",
                message.topic, message.partition, message.offset, kind, str(frame)[:200],
            )
            landings.append(
                Landing(None, message.topic, message.partition, message.offset, value, f"not a {kind} frame message: {frame}")
            )
        else:
            landings.append(Landing(frame, message.topic, message.partition, message.offset, value))
    return landings


#: ClickHouse errors that say "these rows, never": a type or a value the table cannot
#: hold (ClickHouse's ErrorCodes). Anything else that is not the sink's own refusal
#: (a missing table, a server away) is waited out: the rows are fine, the place is not.
_REFUSING_SERVER_CODES: Final = frozenset(
    {
        clickhouse_errors.ErrorCodes.TYPE_MISMATCH,  # 53
        clickhouse_errors.ErrorCodes.CANNOT_PARSE_TEXT,  # 6
        clickhouse_errors.ErrorCodes.CANNOT_CONVERT_TYPE,  # 70
        clickhouse_errors.ErrorCodes.ARGUMENT_OUT_OF_BOUND,  # 69
        clickhouse_errors.ErrorCodes.TOO_LARGE_STRING_SIZE,  # 131
        clickhouse_errors.ErrorCodes.CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN,  # 349
        clickhouse_errors.ErrorCodes.ILLEGAL_TYPE_OF_ARGUMENT,  # 43
    }
)


def refused(error: BaseException) -> bool:
    """Whether an insert failed for the rows it was given (they will never land as they
    are), rather than for the place they go to: the sink's checks (``ValueError``), a
    polars error on a value out of a column's range (a year 2107 in a DateTime), a
    ClickHouse data error."""
    if isinstance(error, ValueError | TypeError | OverflowError | pl.exceptions.PolarsError):
        return True
    return isinstance(error, clickhouse_errors.ServerException) and error.code in _REFUSING_SERVER_CODES


def _insert_until_done(
    client: Any,
    insert: Callable[..., int],
    landings: list[Landing] | list[pl.DataFrame],
    kind: OutputKind,
    stopping: threading.Event,
) -> int:
    """Insert the messages' rows in one insert, retrying while ClickHouse is away; the
    number of messages sent to ``dead_letters``.

    Rows ClickHouse refuses for what they hold (:func:`refused`) never stall the sink:
    the messages are then inserted one by one, and each one refused lands whole in the
    ``dead_letters`` table (migration 0019, ``cdrflow status``), so that the rows after
    it land.
    """
    landings = [x if isinstance(x, Landing) else Landing(x, "", -1, -1, b"") for x in landings]
    dead = [x for x in landings if x.frame is None]
    good = [x for x in landings if x.frame is not None]
    if good:
        try:
            frame = pl.concat([x.frame for x in good], how="diagonal_relaxed")  # type: ignore[misc]
        except pl.exceptions.PolarsError:
            frame = None
        done = False
        if frame is not None:
            try:
                _retry_forever(lambda: insert(client, frame, retry=SINK_RETRY), f"insert of {frame.height:,} {kind} rows", stopping)
                done = True
            except Exception as error:
                if not refused(error):
                    raise
                log.error("a %s batch was refused (%s); inserting its messages one by one", kind, _first_line(error))
        if not done:
            for one in good:
                assert one.frame is not None
                try:
                    _retry_forever(
                        lambda one=one: insert(client, one.frame, retry=SINK_RETRY),
                        f"insert of {one.frame.height:,} {kind} rows",
                        stopping,
                    )
                except Exception as error:
                    if not refused(error):
                        raise
                    dead.append(Landing(one.frame, one.topic, one.partition, one.offset, one.value, _first_line(error)))
    for letter in dead:
        _dead_letter(client, letter, kind, stopping)
    return len(dead)


def _dead_letter(client: Any, letter: Landing, kind: OutputKind, stopping: threading.Event) -> None:
    """Land a refused message in ``dead_letters``; should even that be refused, log it."""
    rows = 0 if letter.frame is None else letter.frame.height
    log.error(
        "%s message %s[%d]@%d (%d rows) refused, put in dead_letters: %s",
        kind, letter.topic, letter.partition, letter.offset, rows, letter.problem[:300],
    )
    frame = pl.DataFrame(
        {
            "kind": [kind],
            "topic": [letter.topic],
            "partition": [letter.partition],
            "offset": [letter.offset],
            "reason": [letter.problem[:2000]],
            "rows": [rows],
            "message": [_readable(letter)],
        },
        schema=dict(tables.DEAD_LETTERS.schema),
    )
    try:
        _retry_forever(
            lambda: inserts.insert(client, tables.DEAD_LETTERS, frame, retry=SINK_RETRY), "insert of a dead letter", stopping
        )
    except Exception as error:
        if not refused(error):
            raise
        log.error("the dead letter of %s[%d]@%d was refused too, left out: %s", letter.topic, letter.partition,
                  letter.offset, _first_line(error))  # fmt: skip


def _readable(letter: Landing) -> str:
    """The message as people read it: an Arrow message's rows, every column of them, as
    the JSON frame value (which the sinks read too); any other message's bytes as text."""
    if letter.value[:4] == ARROW_STREAM_MARK:
        try:
            return orjson.dumps(frame_value(read_frame_bytes(letter.value))).decode()
        except Exception:  # noqa: BLE001 (bytes no writer made, or values JSON cannot hold)
            pass
    return letter.value.decode("utf-8", errors="replace")


def _first_line(error: BaseException) -> str:
    return (str(error).split("Stack trace:")[0].strip() or type(error).__name__).splitlines()[0][:500]


def _retry_forever(action: Callable[[], object], what: str, stopping: threading.Event) -> None:
    """Run ``action`` until it succeeds; rows refused for what they hold (:func:`refused`)
    get out at once.

    Gives up only when the worker stops (``stopping``): the batch is then not acked, and
    comes again to the next worker.
    """
    delay = 1.0
    while True:
        try:
            action()
            return
        except Exception as error:
            if refused(error):
                raise
            # the sink's own retries ran out, or a server error: the place, not the rows
            log.error("%s failed (%s); again in %.0f s", what, _first_line(error)[:300], delay)
            if stopping.wait(delay):
                raise asyncio.CancelledError(f"{what}: the worker stops") from error
            delay = min(delay * 2, 60.0)
