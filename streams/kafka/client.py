"""Producing JSON events to cdrflow's topics and reading a topic back to its end.

Both are tuned for the embedded tansu broker (docs/infra.md) and work the same on a
real Kafka:

- the producer batches (``linger_ms`` 20, 512 kB batches: one ``cdr.raw`` chunk of 500
  lines is ~18 kB) and waits for ``acks="all"``. kafka-python checksums every record
  batch with CRC-32C, in pure Python unless the ``crc32c`` package is installed: with it
  a 37 MB file of chunks is produced in 0.25 s, without it in 3.2 s (measured here);
- reading to the end never trusts ListOffsets (tansu reports the end too low, see
  :func:`streams.kafka.client.log_end_offsets`): it reads until each partition's position
  reaches the high watermark that Fetch responses carry, which is exact.

Topic names can carry a prefix (``topic_prefix``): the tests use one per test so that
each reads only what it produced; the product uses none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

import kafka
import orjson
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from streams.settings import KafkaAccess, Settings

#: How long a client may take to reach the broker before we say it is unreachable.
BOOTSTRAP_TIMEOUT_S: Final[float] = 10.0
_CLIENT_ID = "cdrflow"
#: The client id of the stack's own checks and status reads.
_STACK_CLIENT_ID = "cdrflow-stack"


class BrokerError(RuntimeError):
    """The broker could not be reached, or refused what we asked; the message says which."""


def topic_name(name: str, topic_prefix: str = "") -> str:
    """The topic ``name`` (a key of ``schemas.topics.TOPICS``) under a prefix.

    Examples
    --------
    >>> topic_name("cdr.raw"), topic_name("cdr.raw", "t1.")
    ('cdr.raw', 't1.cdr.raw')
    """
    return f"{topic_prefix}{name}"


def encode_json(value: Any) -> bytes:
    """A message value as compact UTF-8 JSON (``None`` stays a tombstone)."""
    if value is None:
        return None  # type: ignore[return-value]
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def decode_json(value: bytes | None) -> Any:
    """A message value back from JSON; raises ``ValueError`` for bytes that are not JSON."""
    if value is None:
        return None
    return orjson.loads(value)


def _bootstrap(settings: Settings) -> str:
    return ",".join(settings.kafka_servers())


def unreachable(settings: Settings, error: BaseException) -> BrokerError:
    """The error for a broker that did not answer, naming the bootstrap and its setting."""
    where = "CDRFLOW_KAFKA_BOOTSTRAP" if settings.kafka_bootstrap else "the embedded broker; `cdrflow up` starts it"
    return BrokerError(
        f"the Kafka broker at {_bootstrap(settings)} ({where}) did not answer within "
        f"{BOOTSTRAP_TIMEOUT_S:.0f} s: {error}"
    )


def make_producer(settings: Settings, *, linger_ms: int = 20) -> KafkaProducer:
    """A producer of raw bytes tuned as docs/infra.md measured (no topic auto-creation).

    ``linger_ms``: how long a batch waits for more records. A caller that flushes after
    each burst of sends (the live feeds) gives a long one, so that a burst goes out as one
    batch per partition (streams.feeds.tail: the embedded broker reads back ~15 batches a fetch).
    """
    try:
        return KafkaProducer(
            **settings.kafka_access().kafka_python(),
            client_id=_CLIENT_ID,
            acks="all",
            # Not idempotent, one request in flight: kafka-python 3 is idempotent by default,
            # and the embedded broker (tansu) now and then refused a batch of such a producer
            # with OutOfOrderSequenceNumber (its sequence check races the requests in flight);
            # the batch was not written. A test feeder that did not check its futures lost
            # messages that way, and its workers waited for them: the "rare stall" of
            # docs/streaming.md. One request in flight keeps each partition in send order
            # across retries without sequence numbers.
            enable_idempotence=False,
            max_in_flight_requests_per_connection=1,
            linger_ms=linger_ms,
            compression_type="zstd",
            # The client's own metrics (a sensor update per record and per request): no
            # one reads them, and they were ~2% of ingest's CPU (py-spy, 2026-12-08).
            metrics_enabled=False,
            # Under real Kafka's default message.max.bytes (1 MB), which bounds a batch.
            batch_size=512 * 1024,
            max_request_size=1024 * 1024,
            allow_auto_create_topics=False,
            bootstrap_timeout_ms=int(BOOTSTRAP_TIMEOUT_S * 1000),
            max_block_ms=int(BOOTSTRAP_TIMEOUT_S * 1000) * 3,
        )
    except KafkaError as error:
        raise unreachable(settings, error) from None


def make_reader(settings: Settings) -> KafkaConsumer:
    """A consumer without a group (no join to wait for): it is assigned partitions."""
    try:
        return KafkaConsumer(
            **settings.kafka_access().kafka_python(),
            client_id=_CLIENT_ID,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            allow_auto_create_topics=False,
            bootstrap_timeout_ms=int(BOOTSTRAP_TIMEOUT_S * 1000),
            # How long the broker may gather records. tansu answers an empty fetch once it
            # passes, even when the records are there but its S3 store was slower: at 50 ms,
            # on a busy machine, fetches came back empty again and again (measured); 0 makes
            # its empty fetches never complete (streams.kafka.client.log_end_offsets).
            fetch_max_wait_ms=500,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            metrics_enabled=False,  # as make_producer's
        )
    except KafkaError as error:
        raise unreachable(settings, error) from None


def without_leave_group(consumer: KafkaConsumer) -> KafkaConsumer:
    """``consumer``, made to quit its group without a LeaveGroup request: on ``close`` (and
    when kafka-python gives up on a slow ``poll``) it only forgets its membership, which the
    broker expires after the session timeout, as after a kill -9.

    tansu 0.6.0 wedges a group whose leader leaves while the group re-forms (a member
    joined or left since the last assignment): the leader is removed but stays named as
    the group's leader, so no member can ever complete a rebalance again, new ones
    included, until the broker restarts (docs/infra.md). A member that only stops
    heartbeating is expired with its leadership, and the next member to join leads.

    Uses kafka-python 3's coordinator (``_coordinator.maybe_leave_group_async``, the one
    place that sends LeaveGroup); raises ``RuntimeError`` if it is not there, rather than
    leave groups silently.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if not (hasattr(coordinator, "maybe_leave_group_async") and hasattr(coordinator, "reset_generation")):
        raise RuntimeError(
            f"kafka-python {kafka.__version__} has no ConsumerCoordinator.maybe_leave_group_async: "
            "cdrflow cannot keep its consumer groups from sending LeaveGroup (docs/infra.md); use kafka-python 3.0"
        )

    async def forget_membership(reason: str | None = None, timeout_ms: int | None = None) -> None:
        coordinator.reset_generation()  # what a LeaveGroup does locally, without the request

    coordinator.maybe_leave_group_async = forget_membership
    return consumer


def require_topics(settings: Settings, reader: KafkaConsumer, names: Iterable[str]) -> None:
    """Raise :class:`BrokerError` naming the topics that do not exist on the broker."""
    try:
        existing = reader.topics()
    except KafkaError as error:
        raise unreachable(settings, error) from None
    missing = [name for name in names if name not in existing]
    if missing:
        raise BrokerError(
            f"topic{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"{'do' if len(missing) > 1 else 'does'} not exist on {_bootstrap(settings)}: "
            "run `cdrflow up`, which creates the topics cdrflow uses"
        )


def read_to_end(
    settings: Settings, topic: str | Sequence[str], *, reader: KafkaConsumer | None = None, timeout_s: float = 60.0
) -> list[ConsumerRecord]:
    """Every record of ``topic`` (or of several topics, one after the other) from its
    beginning to its end, per partition in log order.

    The end is the high watermark of each partition as Fetch responses report it when we
    get there: records produced while we read may or may not be included. (The embedded
    broker answers each fetch in ~0.2 s with one partition's records; assigned two
    topics at once, its fetches came back with watermarks but never records, so topics
    are read one at a time.)

    Raises
    ------
    BrokerError
        The broker did not answer, a topic does not exist, or the end was not reached
        within ``timeout_s``.
    """
    own = reader is None
    consumer = make_reader(settings) if reader is None else reader
    topics = [topic] if isinstance(topic, str) else list(topic)
    try:
        require_topics(settings, consumer, topics)
        return [record for name in topics for record in _read_one(settings, consumer, name, timeout_s)]
    except KafkaError as error:
        raise BrokerError(f"reading {', '.join(topics)} from {_bootstrap(settings)} failed: {error}") from None
    finally:
        if own:
            consumer.close()


def _read_one(settings: Settings, consumer: KafkaConsumer, topic: str, timeout_s: float) -> list[ConsumerRecord]:
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    records: list[ConsumerRecord] = []
    remaining = set(partitions)
    deadline = time.monotonic() + timeout_s
    while remaining:
        for batch in consumer.poll(timeout_ms=200, max_records=50_000).values():
            records.extend(batch)
        for tp in list(remaining):
            highwater = consumer.highwater(tp)
            if highwater is not None and consumer.position(tp) >= highwater:
                remaining.discard(tp)
        if remaining and time.monotonic() > deadline:
            behind = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(remaining))
            raise BrokerError(
                f"could not read {behind} to the end within {timeout_s:.0f} s from {_bootstrap(settings)}"
            )
    return records


class Sender:
    """Sends JSON events through one producer and remembers the first failure.

    kafka-python's ``flush`` does not raise for a record the broker refused; its future
    does. :meth:`flush` waits and raises :class:`BrokerError` if any send failed.

    ``acked_ends`` holds, per ``(topic, partition)`` written, the offset after the last
    record the broker acknowledged: every record sent after a :meth:`flush` lands at or
    beyond it (the live feeds' positions rest on that, streams.feeds.positions).
    """

    def __init__(self, settings: Settings, producer: KafkaProducer | None = None):
        self.settings = settings
        self.producer = producer or make_producer(settings)
        self.messages = 0
        self.acked_ends: dict[tuple[str, int], int] = {}
        self._failures: list[BaseException] = []

    def send(self, topic: str, key: bytes, value: Any, *, partition: int | None = None) -> None:
        try:
            future = self.producer.send(topic, key=key, value=encode_json(value), partition=partition)
        except KafkaError as error:
            raise BrokerError(f"could not send to {topic} on {_bootstrap(self.settings)}: {error}") from None
        future.add_callback(self._acked)
        future.add_errback(self._failures.append)
        self.messages += 1

    def _acked(self, metadata: Any) -> None:
        # Runs in the producer's I/O thread; one writer per key, so no lock is needed.
        where = (metadata.topic, metadata.partition)
        if metadata.offset + 1 > self.acked_ends.get(where, 0):
            self.acked_ends[where] = metadata.offset + 1

    def flush(self, timeout_s: float = 120.0) -> None:
        try:
            self.producer.flush(timeout=timeout_s)
        except KafkaError as error:
            raise BrokerError(f"the broker at {_bootstrap(self.settings)} did not take every message: {error}") from None
        if self._failures:
            first = self._failures[0]
            count = len(self._failures)
            self._failures.clear()
            raise BrokerError(
                f"the broker at {_bootstrap(self.settings)} refused {count} message{'s' if count > 1 else ''}: {first}"
            )

    def close(self) -> None:
        self.producer.close(timeout=10)

def log_end_offsets(
    kafka: KafkaAccess, partitions: Iterable[TopicPartition], *, timeout_s: float = 5.0
) -> dict[TopicPartition, int | None]:
    """The end offset (offset of the last record + 1) of each partition, as fetches see it.

    Do not trust ListOffsets (``KafkaConsumer.end_offsets``) on the embedded broker: with
    its s3 storage, tansu 0.6.0 answers the base offset + 1 of the first record batch of
    the newest second of the partition, so it can be low by a whole second of traffic
    (measured: 1 for a partition holding 4,102 records written within a second; the
    memory engine is low by up to one batch, docs/infra.md). The high watermark that
    comes with each Fetch response is right, so this fetches once from each partition
    and reads it (None for a partition that did not answer in time).
    """
    partitions = list(partitions)
    if not partitions:
        return {}
    consumer = KafkaConsumer(
        **kafka.kafka_python(),
        client_id=_STACK_CLIENT_ID,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # where offset 0 is gone (retention), the log start
        request_timeout_ms=int(timeout_s * 1000) + 1000,
        fetch_max_wait_ms=500,  # shorter waits made tansu answer empty fetches (0: never)
        max_partition_fetch_bytes=1024,  # the watermark is what we want, not records
    )
    try:
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, 0)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(consumer.highwater(tp) is not None for tp in partitions):
                break
            consumer.poll(timeout_ms=100)
        return {tp: consumer.highwater(tp) for tp in partitions}
    finally:
        consumer.close()


def _kafka_admin(kafka: KafkaAccess, timeout_s: float) -> KafkaAdminClient:
    timeout_ms = int(timeout_s * 1000)
    return KafkaAdminClient(
        **kafka.kafka_python(),
        client_id=_STACK_CLIENT_ID,
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
    )


@contextmanager
def _quiet_client_logs() -> Iterator[None]:
    """Mute kafka-python's and clickhouse-driver's logs of refused connections.

    Both log each one with a traceback; while a server starts, those are expected.
    """
    loggers = [logging.getLogger(name) for name in ("kafka", "clickhouse_driver")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
