"""The cdrflow Faust app: topics, then the state table, then the agents.

Agents move, batch and commit; rules live in ``rating/`` and the batch decisions in
``streams.worker.batch``. How the pieces make billing effectively once without Kafka
transactions is told in docs/streaming.md; in short:

- **rate_cdrs** takes ``cdr.raw`` messages in batches and hands them to
  :class:`streams.worker.runner.RatingWorker`: it skips what each account's state already
  holds (``applied_offset``), rates the rest in one ``rating.rate`` call, sends the rated
  calls, rejections and alerts and waits for the broker's acknowledgements, and only then
  writes each account's changed state records and the partition's checkpoint
  (streams.worker.state_log); a failing account is blocked, never the worker;
- after every rebalance :class:`streams.worker.resume.Resumer` loads the assigned partitions'
  state and makes the agent resume at the checkpoint;
- **sink_rated / sink_rejected / sink_alerts** insert batches into ClickHouse, whose
  tables collapse re-inserted rows; an offset is committed only after its insert;
- **notify_alerts** logs each alert and POSTs it to the webhook with an idempotency key.

The state of ``cdr.raw`` partition ``p``'s accounts is kept on topics of its own
(``<app_id>-state.p<p>.g<generation>``), so it follows its partition to whichever worker
holds it, whatever the number of workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import faust
import polars as pl

from schemas import topics
from streams.catalog.watch import CatalogWatch
from streams.clickhouse import insert as inserts
from streams.kafka.async_reader import TP, partitions_of, read_to_end
from streams.kafka.client import topic_name
from streams.settings import KafkaAccess, Settings
from streams.stack.embedded import remove_topic_files
from streams.worker.faust_tuning import tune_faust_consumer
from streams.worker.messages import OutputKind, OutputMessage, SourceMessage
from streams.worker.notify import Notifier
from streams.worker.resume import Resumer
from streams.worker.runner import STATUS_IDLE_S, RatingWorker
from streams.worker.sinks import _frames, _insert_until_done, _landings
from streams.worker.state_log import StateLog

log = logging.getLogger(__name__)

#: cdr.raw messages per rating batch (~100 lines each from ingest: ~100k lines), and how
#: long a batch waits to fill. Measured end to end on 200k lines (docs/streaming.md):
#: 250 -> 18k lines/s, 1000 -> 20k, 3000 -> 24k; 1000 keeps a batch's memory and its
#: alerts' delay small.
RATE_BATCH_MESSAGES: Final[int] = 1000
RATE_BATCH_WITHIN_S: Final[float] = 0.5
#: Output messages per sink insert (each up to 1000 rows) and how long a batch waits. A
#: rating batch makes a few messages per kind and partition (rows grouped by partition),
#: so a sink's batch rarely fills: the wait is what a live feed's row waits at the sink.
SINK_BATCH_MESSAGES: Final[int] = 2000
SINK_BATCH_WITHIN_S: Final[float] = 0.25
#: How long a stopping worker waits for the batch it is writing.
STOP_WRITE_WAIT_S: Final[float] = 30.0
#: How often the worker looks for new plans and accounts.
CATALOG_CHECK_S: Final[float] = 5.0
#: Exit status of a worker that stopped because it could not go on safely.
EXIT_UNSAFE: Final[int] = 70

_OUTPUT_TOPICS: Final[dict[OutputKind, str]] = {
    "rated": topics.BILLING_EVENTS,
    # Not cdr.rejected, which ingest writes: tansu refuses one of two producers writing one
    # partition at the same moment (docs/infra.md); the rejected sink reads both.
    "rejected": topics.RATING_REJECTED,
    "alerts": topics.ALERTS,
    "ledger": topics.LEDGER_EVENTS,
    "balances": topics.ACCOUNT_BALANCES,
    "status": topics.NUMBER_STATUS,
    # issue 25: calls of a transferred number, to the log of the account that held it then
    "forward": topics.CDR_RAW,
}


def build_app(settings: Settings, *, topic_prefix: str = "") -> faust.App:
    """The Faust app of one worker, configured from ``settings``.

    ``topic_prefix`` puts every topic under a prefix (tests; several pipelines on one
    broker); the consumer group and the table's changelog are named by ``settings.app_id``.
    """
    tune_faust_consumer()  # fetches held 0.5 s, not Faust's fixed 1.5 s (streams.worker.faust_tuning)
    kafka = settings.kafka_access()
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in kafka.servers],
        # TLS / SASL for Faust's consumer, producer and admin client (docs/operations.md)
        broker_credentials=faust_credentials(kafka),
        store="memory://",  # rocksdb fails inside take() on this Faust (docs/infra.md)
        # Topics Faust creates itself (its changelog and leader topics; cdrflow's own are
        # made by `cdrflow up` with the configs of schemas.topics, passed below too).
        topic_replication_factor=settings.replication_factor(),
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
        # A batch's outputs go out as a burst: waiting 50 ms sends each partition's share of
        # it as one record batch, not hundreds (tansu's s3 store reads back ~15 record
        # batches a fetch, so the sinks fell minutes behind at 2,000 lines/s; docs/streaming.md).
        producer_linger=0.05,
        producer_compression_type="zstd",
        producer_max_request_size=settings.producer_max_request_bytes,
        consumer_max_fetch_size=16 * 1024 * 1024,
        web_enabled=False,
        autodiscover=False,
        # Faust's own folder (table files; empty with the memory store) lives under the
        # state folder, not in the current folder (docs/streaming.md).
        datadir=faust_datadir(settings),
    )

    # ------------------------------------------------------------------------ topics
    def raw_topic(*names: str) -> faust.TopicT:
        # Declared with the configs of their role: should Faust create one (it does when a
        # topic is missing), it keeps what it carries as `cdrflow up` would have made it.
        return app.topic(
            *(topic_name(name, topic_prefix) for name in names), key_serializer="raw", value_serializer="raw",
            config=topics.TOPICS[names[0]].created_with(settings.min_insync_replicas()),
        )

    cdr_raw = raw_topic(topics.CDR_RAW)
    outputs = {kind: raw_topic(name) for kind, name in _OUTPUT_TOPICS.items()}

    # ------------------------------------------------------------------------ state
    # The accounts' state is kept by streams.worker.state_log, not in a Faust table; this empty
    # table is declared for its recovery callback only: Faust calls it after every
    # rebalance, before it positions the source partitions (streams.worker.resume).
    rebalance_hook = app.Table("rebalance_hook", default=None, key_type=bytes, value_type=bytes,
                               partitions=settings.topic_partitions)
    status_topic = raw_topic(topics.WORKER_STATUS)
    state_log = StateLog(
        kafka,
        topic_name(f"{settings.app_id}-state", topic_prefix),
        on_deleted=_embedded_topic_cleaner(settings),
        roll_min_bytes=settings.state_roll_bytes,
        replication_factor=settings.replication_factor(),
        topic_configs=topics.STATE_TOPIC.created_with(settings.min_insync_replicas()),
    )

    def assigned() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == cdr_raw.get_topic_name()}

    # Each output topic's partition count: a batch's rows of cdr.raw[p] go to partition p
    # of each output topic (modulo its count), so an account's rows stay in one partition.
    output_partitions: dict[OutputKind, int] = {}

    def send_output(message: OutputMessage) -> Awaitable[Awaitable[object]]:
        partition = None if message.partition is None else message.partition % output_partitions[message.kind]
        return outputs[message.kind].send(key=message.key, value=message.value, partition=partition)

    async def read_source(partition: int, start: int, end: int) -> list[SourceMessage]:
        # A try again of blocked accounts (cdrflow blocked retry|skip): their messages again.
        tp = TP(cdr_raw.get_topic_name(), partition)
        records = (await read_to_end(kafka, {tp: start}, until={tp: end}))[tp]
        return [SourceMessage(r.key or b"", r.partition, r.offset, r.value) for r in records if r.offset < end]

    worker = RatingWorker(
        state_log,
        send_output=send_output,
        send_status=lambda key, value: status_topic.send(key=key, value=value),
        mine=assigned,
        source_topic=cdr_raw.get_topic_name(),
        read_source=read_source,
    )
    rebalance_hook.on_recover(Resumer(app, worker, cdr_raw.get_topic_name(), on_failure=_stop_unsafe))

    catalog = CatalogWatch(settings, topic_prefix)
    notifier = Notifier.from_settings(settings)

    # ------------------------------------------------------------------------ agents
    @app.agent(cdr_raw, name="rate_cdrs")
    async def rate_cdrs(stream: faust.StreamT) -> None:
        await _declare([*outputs.values(), status_topic])

        async def count_partitions() -> None:
            names = {kind: topic.get_topic_name() for kind, topic in outputs.items()}
            counts = Counter(tp.topic for tp in await partitions_of(kafka, names.values()))
            missing = sorted(name for name in names.values() if not counts[name])
            if missing:  # declared above, but not known to the broker yet: tried again
                raise RuntimeError(f"no partitions of {', '.join(missing)} yet")
            output_partitions.update({kind: counts[name] for kind, name in names.items()})

        await _until_done(count_partitions, "reading the output topics' partitions")
        await _until_done(catalog.refresh, "loading the tariff catalogue")
        last_forced = 0.0
        try:
            async for events in stream.take_events(RATE_BATCH_MESSAGES, within=RATE_BATCH_WITHIN_S):
                messages = [
                    SourceMessage(e.message.key or b"", e.message.partition, e.message.offset, e.message.value)
                    for e in events
                ]
                if time.monotonic() - last_forced > 1.0 and _names_unknown_account(messages, catalog):
                    last_forced = time.monotonic()
                    await _until_done(catalog.refresh, "reading the tariff catalogue")
                async with worker.lock:
                    try:
                        # Rated now (while the batch before is written), written next: the
                        # take and the rating of the next batch overlap this one's writing.
                        await worker.rate_batch(messages, catalog.catalog)
                    except Exception as error:  # a bug in the glue: hold what it touched, go on
                        worker.hold(messages, error)
                        continue
                    await _try_again(worker, catalog)
        finally:
            # A stopping worker finishes the batch it is writing if it can (a write cut
            # short is safe: it is what a kill -9 leaves).
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(worker.settled(), STOP_WRITE_WAIT_S)
            await state_log.stop()

    @app.on_partitions_revoked.connect
    async def write_before_letting_go(app: faust.App, revoked: set, **kwargs: Any) -> None:
        # Faust waits for the taken events to be acknowledged before a rebalance moves
        # partitions; a batch's events are acknowledged once it is rated, so the batch
        # being written is waited for here: no write lands after its partition moved on.
        await worker.settled()

    # What each sink reads: its output topic, and for rejections ingest's too.
    sink_sources = {**outputs, "rejected": raw_topic(topics.CDR_REJECTED, _OUTPUT_TOPICS["rejected"])}

    def sink(kind: OutputKind, insert: Callable[..., int]) -> None:
        @app.agent(sink_sources[kind], name=f"sink_{kind}")
        async def sink_agent(stream: faust.StreamT) -> None:
            client = inserts.connect(settings)
            stopping = threading.Event()  # ends the insert retries of a worker that stops
            try:
                async for events in stream.take_events(SINK_BATCH_MESSAGES, within=SINK_BATCH_WITHIN_S):
                    started = time.perf_counter()
                    landings = await asyncio.to_thread(_landings, events, kind)
                    decoded = time.perf_counter()
                    # Returns only once ClickHouse took the rows (or dead_letters the ones it
                    # refused): the events are acked (and their offsets committed) after
                    # this, never before.
                    await asyncio.to_thread(_insert_until_done, client, insert, landings, kind, stopping)
                    log.info(
                        "sink %s: %d rows of %d messages decoded in %.3f s, inserted in %.3f s",
                        kind, sum(x.frame.height for x in landings if x.frame is not None), len(events),
                        decoded - started, time.perf_counter() - decoded,
                    )
            finally:
                stopping.set()

    sink("rated", inserts.insert_rated)
    sink("rejected", inserts.insert_rejected)
    sink("alerts", inserts.insert_alerts)
    sink("ledger", inserts.insert_billing_events)
    sink("balances", inserts.insert_balances)

    @app.agent(outputs["alerts"], name="notify_alerts")
    async def notify_alerts(stream: faust.StreamT) -> None:
        try:
            async for events in stream.take_events(SINK_BATCH_MESSAGES, within=SINK_BATCH_WITHIN_S):
                frames = await asyncio.to_thread(_frames, events, "alerts")
                if frames:  # one call: its accounts' POSTs go at once (each account's in order)
                    await notifier.notify(pl.concat(frames, how="diagonal_relaxed"))
        finally:
            await notifier.close()

    @app.timer(STATUS_IDLE_S)
    async def publish_state_figures() -> None:
        if worker.unblocks and catalog.loaded:  # asked while the agent is idle (found by a write)
            async with worker.lock:
                await _try_again(worker, catalog)
        await worker.publish_if_due()

    @app.timer(CATALOG_CHECK_S)
    async def watch_catalog() -> None:
        try:
            await catalog.refresh()
        except Exception as error:  # the next tick tries again
            log.warning("could not check the tariff catalogue: %r", error)

    return app


# ---------------------------------------------------------------------------- helpers


def faust_credentials(kafka: KafkaAccess) -> faust.types.auth.CredentialsT | None:
    """Faust's ``broker_credentials`` for the settings' security protocol (None: PLAINTEXT).

    Faust hands them to aiokafka as ``security_protocol``, ``sasl_*`` and ``ssl_context``
    (faust.transport.drivers.aiokafka.credentials_to_aiokafka_auth).
    """
    if kafka.sasl:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            mechanism=kafka.sasl_mechanism,
            ssl_context=kafka.ssl_context(),  # SASL_SSL with it, SASL_PLAINTEXT without
        )
    if kafka.tls:
        return faust.SSLCredentials(kafka.ssl_context())
    return None


def faust_datadir(settings: Settings) -> str:
    """Faust's data folder of this app: ``STATE_DIR/faust/APP_ID`` (braces escaped:
    Faust formats the setting with ``str.format``)."""
    return str(settings.state_dir / "faust" / settings.app_id).replace("{", "{{").replace("}", "}}")


def _embedded_topic_cleaner(settings: Settings) -> Callable[[str], None] | None:
    """For the embedded broker: remove a deleted topic's files from its S3 store (tansu
    deletes the topic but cannot delete the objects in the local store; docs/infra.md)."""
    if not settings.embedded_kafka:
        return None

    def clean(topic: str) -> None:
        remove_topic_files(settings, topic)

    return clean


async def _try_again(worker: RatingWorker, catalog: CatalogWatch) -> None:
    """Blocked accounts an operator asked to try again (cdrflow blocked retry|skip), now."""
    if not worker.unblocks:
        return
    try:
        await worker.try_again(catalog.catalog)
    except Exception as error:  # they stay blocked; a restart tries them again
        log.error("trying blocked accounts again failed: %r", error, exc_info=True)


def _names_unknown_account(messages: list[SourceMessage], catalog: CatalogWatch) -> bool:
    return any(m.key and not catalog.knows(m.key.decode("utf-8", "replace")) for m in messages)


async def _declare(declared: Iterable[faust.TopicT]) -> None:
    # docs/infra.md: sending to a topic that does not exist crash-loops the producer.
    for topic in declared:
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


async def _stop_unsafe(error: BaseException) -> None:
    """Stop the worker now: it cannot go on without risking a wrong charge.

    Faust would restart a crashed agent in the same process, past the batch it was
    given; exiting instead is what a kill -9 does, which the design recovers from.
    """
    logging.shutdown()
    os._exit(EXIT_UNSAFE)
