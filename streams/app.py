"""The cdrflow Faust app: topics, then the state table, then the agents.

Agents move, batch and commit; rules live in ``rating/`` and the batch decisions in
``streams.rating_batch``. How the pieces make billing effectively once without Kafka
transactions is told in docs/streaming.md; in short:

- **rate_cdrs** takes ``cdr.raw`` messages in batches, skips what each account's state
  already holds (``applied_offset``), rates the rest in one ``rating.rate`` call, sends
  the rated calls, rejections and alerts and waits for the broker's acknowledgements,
  and only then writes each account's new state and the partition's checkpoint;
- after every rebalance :class:`streams.resume.Resumer` completes the table from its
  changelog and makes the agent resume at the checkpoint;
- **sink_rated / sink_rejected / sink_alerts** insert batches into ClickHouse, whose
  tables collapse re-inserted rows; an offset is committed only after its insert;
- **notify_alerts** logs each alert and POSTs it to the webhook with an idempotency key.

The table is keyed like ``cdr.raw`` (the raw account id) and every state is written to
the changelog partition of the message it came from, so a table key lives in the same
partition number as its account's CDRs, whatever the number of workers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import faust
import orjson
import polars as pl

from schemas.messages import frame_from_value, frames_from_values
from streams import sink_clickhouse
from streams.catalog_watch import CatalogWatch
from streams.faust_tuning import tune_faust_consumer
from streams.kafka_io import topic_name
from streams.notify import Notifier
from streams.rating_batch import (
    OutputKind,
    SourceMessage,
    checkpoint_key,
    checkpoint_value,
    rate_messages,
)
from streams.resume import Resumer
from streams.settings import Settings

log = logging.getLogger(__name__)

#: cdr.raw messages per rating batch (~100 lines each from ingest: ~100k lines), and how
#: long a batch waits to fill. Measured end to end on 200k lines (docs/streaming.md):
#: 250 -> 18k lines/s, 1000 -> 20k, 3000 -> 24k; 1000 keeps a batch's memory and its
#: alerts' delay small.
RATE_BATCH_MESSAGES: Final[int] = 1000
RATE_BATCH_WITHIN_S: Final[float] = 0.5
#: Output messages per sink insert (each up to 1000 rows) and how long a batch waits.
SINK_BATCH_MESSAGES: Final[int] = 2000
SINK_BATCH_WITHIN_S: Final[float] = 1.0
#: The sink's own retries per insert; the agent then tries again, for as long as it runs.
SINK_RETRY: Final = sink_clickhouse.RetryPolicy(budget_s=30.0)
#: Sends of a batch's outputs before the rating agent gives up, and the first wait between
#: two (doubled each time). tansu refused produces to ``number.status`` (UnknownError)
#: once, with two workers on a loaded machine: likely both writing one of its partitions
#: at the same moment (it is keyed by number, every other output by account).
OUTPUT_SEND_ATTEMPTS: Final[int] = 5
OUTPUT_RESEND_FIRST_DELAY_S: Final[float] = 0.25
#: How often the worker looks for new plans and accounts.
CATALOG_CHECK_S: Final[float] = 5.0
#: Exit status of a worker that stopped because it could not go on safely.
EXIT_UNSAFE: Final[int] = 70

#: The columns each output topic's rows may have, with their types (the sink's tables).
OUTPUT_SCHEMAS: Final[dict[OutputKind, dict[str, pl.DataType]]] = {
    kind: {**table.schema, **table.optional}
    for kind, table in (
        ("rated", sink_clickhouse.RATED),
        ("rejected", sink_clickhouse.REJECTED),
        ("alerts", sink_clickhouse.ALERTS),
        ("ledger", sink_clickhouse.BILLING_EVENTS),
        ("balances", sink_clickhouse.BALANCES),
    )
}
_OUTPUT_TOPICS: Final[dict[OutputKind, str]] = {
    "rated": "billing.events",
    "rejected": "cdr.rejected",
    "alerts": "alerts",
    "ledger": "ledger.events",
    "balances": "account.balances",
    "status": "number.status",
}


def build_app(settings: Settings, *, topic_prefix: str = "") -> faust.App:
    """The Faust app of one worker, configured from ``settings``.

    ``topic_prefix`` puts every topic under a prefix (tests; several pipelines on one
    broker); the consumer group and the table's changelog are named by ``settings.app_id``.
    """
    tune_faust_consumer()  # fetches held 0.5 s, not Faust's fixed 1.5 s (streams.faust_tuning)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_servers()],
        store="memory://",  # rocksdb fails inside take() on this Faust (docs/infra.md)
        topic_replication_factor=1,
        topic_partitions=settings.topic_partitions,
        consumer_auto_offset_reset="earliest",
        # docs/infra.md: with Faust's defaults a restart took 120 s to get its partitions
        broker_session_timeout=10,
        broker_rebalance_timeout=10,
        broker_heartbeat_interval=2,
        # One copy of the state, in the changelog; a standby would be one more reader
        # to keep consistent with the resume steps, for a faster failover only.
        table_standby_replicas=0,
        # Fewer, larger produce requests: on tansu's s3 store each one is an object,
        # and reading the changelog back (recovery) costs per object.
        producer_max_batch_size=512 * 1024,
        consumer_max_fetch_size=16 * 1024 * 1024,
        web_enabled=False,
        autodiscover=False,
        # Faust's own folder (table files; empty with the memory store) lives under the
        # state folder, not in the current folder (docs/streaming.md).
        datadir=faust_datadir(settings),
    )

    # ------------------------------------------------------------------------ topics
    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(topic_name(name, topic_prefix), key_serializer="raw", value_serializer="raw")

    cdr_raw = raw_topic("cdr.raw")
    outputs = {kind: raw_topic(name) for kind, name in _OUTPUT_TOPICS.items()}

    # ------------------------------------------------------------------------ tables
    # Raw keys, as cdr.raw: JSON keys would hash to other partitions (docs/infra.md).
    account_state = app.Table(
        "account_state",
        default=None,
        key_type=bytes,  # bytes: the raw codec for keys and values
        value_type=bytes,
        partitions=settings.topic_partitions,
    )
    account_state.on_recover(
        Resumer(app, account_state, cdr_raw.get_topic_name(), settings.kafka_servers(), on_failure=_stop_unsafe)
    )

    catalog = CatalogWatch(settings, topic_prefix)
    notifier = Notifier(settings.alert_webhook)

    # ------------------------------------------------------------------------ agents
    @app.agent(cdr_raw, name="rate_cdrs")
    async def rate_cdrs(stream: faust.StreamT) -> None:
        await _declare(outputs.values())
        await _until_done(catalog.refresh, "loading the tariff catalogue")
        last_forced = 0.0
        async for events in stream.take_events(RATE_BATCH_MESSAGES, within=RATE_BATCH_WITHIN_S):
            try:
                messages = [
                    SourceMessage(e.message.key or b"", e.message.partition, e.message.offset, e.message.value)
                    for e in events
                ]
                if time.monotonic() - last_forced > 1.0 and _names_unknown_account(messages, catalog):
                    last_forced = time.monotonic()
                    await catalog.refresh()
                stored = {m.key: account_state.get(m.key) for m in messages}
                started = time.perf_counter()
                outcome = await asyncio.to_thread(
                    rate_messages, messages, stored, catalog.catalog, cdr_raw.get_topic_name()
                )
                rated = time.perf_counter()
                # Outputs first, acknowledged; the states that cover them after.
                await send_in_order(
                    lambda m: outputs[m.kind].send(key=m.key, value=m.value),
                    outcome.outputs,
                    attempts=OUTPUT_SEND_ATTEMPTS,
                    first_delay_s=OUTPUT_RESEND_FIRST_DELAY_S,
                )
                acknowledged = time.perf_counter()
                # A partition taken away meanwhile (a slow batch outliving a rebalance) is
                # not written to: its new owner resumed from the changelog as it was, and
                # re-rates these messages. No await from here on: the check holds.
                mine = {tp.partition for tp in app.consumer.assignment() if tp.topic == cdr_raw.get_topic_name()}
                for key, (partition, value) in outcome.states.items():
                    if partition in mine:
                        _write(account_state, partition, key, value)
                for partition, next_offset in outcome.checkpoints.items():
                    if partition in mine:
                        _write(account_state, partition, checkpoint_key(partition), checkpoint_value(next_offset))
                log.info(
                    "rated %d lines of %d messages (%d replays skipped, %d not CDR chunks) in %.3f s; "
                    "%d output messages acknowledged in %.3f s",
                    outcome.lines, outcome.messages, outcome.skipped, outcome.garbage, rated - started,
                    len(outcome.outputs), acknowledged - rated,
                )
            except Exception as error:
                # A batch is taken from the stream: retrying it here would need the same
                # events again, which Faust does not give. Stop, and let a restart
                # resume at the checkpoint.
                log.critical("the rating agent failed: %r", error, exc_info=True)
                await _stop_unsafe(error)

    def sink(kind: OutputKind, insert: Callable[..., int]) -> None:
        @app.agent(outputs[kind], name=f"sink_{kind}")
        async def sink_agent(stream: faust.StreamT) -> None:
            client = sink_clickhouse.connect(settings)
            stopping = threading.Event()  # ends the insert retries of a worker that stops
            try:
                async for events in stream.take_events(SINK_BATCH_MESSAGES, within=SINK_BATCH_WITHIN_S):
                    started = time.perf_counter()
                    frames = await asyncio.to_thread(_frames, events, kind)
                    decoded = time.perf_counter()
                    # Returns only once ClickHouse took the rows: the events are acked (and
                    # their offsets committed) after this, never before.
                    await asyncio.to_thread(_insert_until_done, client, insert, frames, kind, stopping)
                    log.info(
                        "sink %s: %d rows of %d messages decoded in %.3f s, inserted in %.3f s",
                        kind, sum(f.height for f in frames), len(events), decoded - started,
                        time.perf_counter() - decoded,
                    )
            finally:
                stopping.set()

    sink("rated", sink_clickhouse.insert_rated)
    sink("rejected", sink_clickhouse.insert_rejected)
    sink("alerts", sink_clickhouse.insert_alerts)
    sink("ledger", sink_clickhouse.insert_billing_events)
    sink("balances", sink_clickhouse.insert_balances)

    @app.agent(outputs["alerts"], name="notify_alerts")
    async def notify_alerts(stream: faust.StreamT) -> None:
        try:
            async for events in stream.take_events(SINK_BATCH_MESSAGES, within=SINK_BATCH_WITHIN_S):
                frames = await asyncio.to_thread(_frames, events, "alerts")
                for frame in frames:
                    await notifier.notify(frame)
        finally:
            await notifier.close()

    @app.timer(CATALOG_CHECK_S)
    async def watch_catalog() -> None:
        try:
            await catalog.refresh()
        except Exception as error:  # the next tick tries again
            log.warning("could not check the tariff catalogue: %r", error)

    return app


# ---------------------------------------------------------------------------- helpers


async def send_in_order(
    send: Callable[[Any], Awaitable[Awaitable[object]]],
    messages: list[Any],
    *,
    attempts: int,
    first_delay_s: float,
) -> None:
    """Send ``messages`` in order (``send(m)`` queues one and gives its delivery future)
    and wait until the broker acknowledged them all.

    When the broker refused some, the whole list is sent again, in order, after a wait
    (``first_delay_s``, doubled each time), up to ``attempts`` sends in all; then the
    first refusal is raised. All, not only the refused ones: records after a refused one
    may have been stored, and a compacted topic (``number.status``) keeps the last record
    of a key, so only the whole sequence again leaves each key's last record last. The
    copies are harmless: every output carries a deterministic id and its readers collapse
    repeats (docs/streaming.md).
    """
    for attempt in range(1, attempts + 1):
        futures = [await send(message) for message in messages]
        results = await asyncio.gather(*futures, return_exceptions=True)
        refused = [result for result in results if isinstance(result, BaseException)]
        if not refused:
            return
        if attempt == attempts or not all(isinstance(error, Exception) for error in refused):
            raise refused[0]
        delay = first_delay_s * 2 ** (attempt - 1)
        log.warning(
            "the broker refused %d of %d output messages (%r); sending all %d again in %.2f s (attempt %d of %d)",
            len(refused), len(messages), refused[0], len(messages), delay, attempt + 1, attempts,
        )
        await asyncio.sleep(delay)


def faust_datadir(settings: Settings) -> str:
    """Faust's data folder of this app: ``STATE_DIR/faust/APP_ID`` (braces escaped:
    Faust formats the setting with ``str.format``)."""
    return str(settings.state_dir / "faust" / settings.app_id).replace("{", "{{").replace("}", "}}")


def _write(table: Any, partition: int, key: bytes, value: bytes) -> None:
    """Set a table key and send it to the changelog partition its source message came from."""
    table.data[key] = value
    table.send_changelog(partition, key, value)


def _names_unknown_account(messages: list[SourceMessage], catalog: CatalogWatch) -> bool:
    return any(m.key and not catalog.knows(m.key.decode("utf-8", "replace")) for m in messages)


async def _declare(topics: Iterable[faust.TopicT]) -> None:
    # docs/infra.md: sending to a topic that does not exist crash-loops the producer.
    for topic in topics:
        await topic.maybe_declare()


async def _until_done(action: Callable[[], Awaitable[object]], what: str) -> None:
    delay = 0.5
    while True:
        try:
            await action()
            return
        except Exception as error:
            log.warning("%s failed (%s); again in %.0f s", what, error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


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


async def _stop_unsafe(error: BaseException) -> None:
    """Stop the worker now: it cannot go on without risking a wrong charge.

    Faust would restart a crashed agent in the same process, past the batch it was
    given; exiting instead is what a kill -9 does, which the design recovers from.
    """
    logging.shutdown()
    os._exit(EXIT_UNSAFE)
