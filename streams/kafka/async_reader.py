"""Reading partitions to their real end with aiokafka, from inside the worker's event loop.

tansu reports the end of a partition too low through ListOffsets (docs/infra.md); the
high watermark that comes with each Fetch response is exact. So a read is done when the
position reaches the high watermark last fetched, checked after every fetch.

Measured on the s3 store: older data comes back at a few dozen record batches per fetch
(each produce request is an object of the store), so reading a long partition from its
start is slow; the worker reads from 0 only the small catalogue topics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from streams.settings import KafkaAccess


class TP(NamedTuple):
    """A topic partition; equal to (and hashed as) Faust's ``TP``, without importing Faust
    (``cdrflow ingest`` reads with this module too)."""

    topic: str
    partition: int

#: How long a read may take before it gives up.
READ_TIMEOUT_S: Final[float] = 120.0


def _consumer(kafka: KafkaAccess) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **kafka.aiokafka(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # tansu's s3 store answers a fetch whose wait is shorter than its storage reads
        # with no records: at 50 ms half the fetches of older data came back empty
        # (again and again for one consumer); 500 ms (the client default) read them all.
        fetch_max_wait_ms=500,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        client_id="cdrflow-reader",
    )


async def partitions_of(kafka: KafkaAccess, topics: Iterable[str]) -> list[TP]:
    """The partitions of these topics (a topic that does not exist has none)."""
    consumer = _consumer(kafka)
    try:
        await consumer.start()  # inside: a failed start must still close the client
        await consumer.topics()  # a metadata refresh of every topic
        return [
            TP(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
    finally:
        await consumer.stop()


async def topic_names(kafka: KafkaAccess) -> set[str]:
    """The names of the broker's topics, as a fresh metadata request gives them."""
    consumer = _consumer(kafka)
    try:
        await consumer.start()
        return set(await consumer.topics())
    finally:
        await consumer.stop()


async def reported_ends(kafka: KafkaAccess, partitions: Iterable[TP]) -> dict[TP, int]:
    """The end offset the broker reports for each partition (ListOffsets).

    tansu reports it too low (by up to the last record batch), so it is only a lower
    bound: good as a place to read *from*, never as the place to stop.
    """
    wanted = list(partitions)
    if not wanted:
        return {}
    consumer = _consumer(kafka)
    try:
        await consumer.start()
        ends = await consumer.end_offsets([TopicPartition(tp.topic, tp.partition) for tp in wanted])
        return {TP(tp.topic, tp.partition): offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def read_to_end(
    kafka: KafkaAccess,
    starts: Mapping[TP, int],
    *,
    timeout_s: float = READ_TIMEOUT_S,
    until: Mapping[TP, int] | None = None,
) -> dict[TP, list[Any]]:
    """Every record of each partition from its start offset to its real end (or, for a
    partition in ``until``, up to that offset: later records fetched with it may come too).

    The end is the high watermark of the Fetch responses, read again after each fetch, so
    the answer holds at least what the log held when this was called.

    Raises ``TimeoutError`` when a partition was not read to its end within ``timeout_s``.
    """
    if not starts:
        return {}
    consumer = _consumer(kafka)
    try:
        await consumer.start()  # inside: a failed start must still close the client
        partitions = {TopicPartition(tp.topic, tp.partition): tp for tp in starts}
        consumer.assign(list(partitions))
        for kafka_tp, tp in partitions.items():
            consumer.seek(kafka_tp, starts[tp])
        records: dict[TP, list[Any]] = {tp: [] for tp in starts}
        remaining = set(partitions)
        deadline = time.monotonic() + timeout_s
        while remaining:
            fetched = await consumer.getmany(*remaining, timeout_ms=200, max_records=50_000)
            for kafka_tp, batch in fetched.items():
                records[partitions[kafka_tp]].extend(batch)
            for kafka_tp in list(remaining):
                highwater = consumer.highwater(kafka_tp)
                stop = (until or {}).get(partitions[kafka_tp])
                if stop is not None and highwater is not None:
                    highwater = min(highwater, stop)
                if highwater is not None and await consumer.position(kafka_tp) >= highwater:
                    remaining.discard(kafka_tp)
            if remaining and time.monotonic() > deadline:
                behind = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(remaining))
                raise TimeoutError(f"could not read {behind} to its end within {timeout_s:.0f} s")
        return records
    finally:
        await consumer.stop()


def read_topics(kafka: KafkaAccess, topics: Iterable[str], *, timeout_s: float = READ_TIMEOUT_S) -> dict[str, list[Any]]:
    """Every record of these topics, from a plain (not async) caller: topic -> records,
    partition after partition, each in log order.

    All their partitions are fetched together, and each read stops at the exact end (the
    high watermark of Fetch responses): about three times faster on the embedded broker
    than kafka-python's topic-by-topic read (``streams.kafka.client.read_to_end``), which
    waits for several fetches per topic. A topic that does not exist has no records
    (callers check the topics first).

    Raises ``TimeoutError`` or an aiokafka ``KafkaError`` when the broker does not answer.
    """
    names = list(dict.fromkeys(topics))

    async def read() -> dict[str, list[Any]]:
        partitions = await partitions_of(kafka, names)
        tails = await read_to_end(kafka, {tp: 0 for tp in partitions}, timeout_s=timeout_s)
        by_topic: dict[str, list[Any]] = {name: [] for name in names}
        for tp in sorted(tails):
            by_topic[tp.topic].extend(tails[tp])
        return by_topic

    return asyncio.run(read())
