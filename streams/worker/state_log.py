"""Where the rating worker's state is durable: one topic per partition and generation.

The state of the accounts of ``cdr.raw`` partition ``p`` is a log of records
(streams.worker.state_records) on the topic ``<app_id>-state.p<p>.g<G>``. A log that is only
appended to grows with the age of the system, and a restart that reads it gets slower
with it; tansu neither compacts nor deletes records (docs/infra.md:
DeleteRecords panics, retention is not applied). So the log is cut into **generations**:
when a generation has taken more than ``max(ROLL_MIN_BYTES, ROLL_FACTOR x the live
state)`` of appends, the worker writes the partition's whole live state to generation
``G + 1`` as a snapshot and goes on appending there; the old topic is then deleted.
A restart reads one generation: the live state plus at most that much of appends.

A generation is valid once its snapshot is complete: its first record names the
generation (``\\x00generation``), and a marker (``\\x00snapshot``) after the snapshot's
records gives their number. Recovery takes the newest valid generation; one cut short
(a worker killed while rolling) is never used, and the one before it is still there,
because an old generation is deleted only after the new one is valid.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.topics import STATE_TOPIC
from streams.kafka.async_reader import TP, partitions_of, read_to_end, topic_names
from streams.settings import KafkaAccess
from streams.worker.state_records import CHECKPOINT_KEY, SEPARATOR, RecordFold, checkpoint_offset

log = logging.getLogger(__name__)

#: A generation rolls once its appends pass both: a small state every 4 MB of writes, a
#: larger one when its appends reach its own size again; a restart then reads at most
#: twice the live state. (64 MB let a partition of 12 MB live read 21 MB of history at a
#: restart three months in: bench/soak_bench.py, 2026-12-06.)
ROLL_MIN_BYTES: Final[int] = 4 * 1024 * 1024
#: How long a state write may wait for the broker's acknowledgement before it fails (and
#: is tried again: streams.worker.runner, streams.worker.resume).
STATE_REQUEST_TIMEOUT_MS: Final[int] = 10_000
ROLL_FACTOR: Final[float] = 1.0
#: Records of one produce request: the snapshot goes in few, large requests (each is an
#: object of tansu's S3 store, and reading back costs per object).
PRODUCE_BATCH_BYTES: Final[int] = 1024 * 1024
GENERATION_KEY: Final[bytes] = SEPARATOR + b"generation"
SNAPSHOT_KEY: Final[bytes] = SEPARATOR + b"snapshot"
#: State topics are never expired: the state is not in any other place (schemas.topics).
TOPIC_CONFIGS: Final[dict[str, str]] = STATE_TOPIC.configs


class StateWriteError(RuntimeError):
    """Some records were refused; ``refused`` maps each refused key to the error."""

    def __init__(self, refused: dict[bytes, BaseException]):
        super().__init__(f"{len(refused)} state record(s) refused: {next(iter(refused.values()))!r}")
        self.refused = refused


@dataclass
class PartitionState:
    """The committed state of one ``cdr.raw`` partition's accounts, and where it is kept."""

    partition: int
    generation: int
    fold: RecordFold = field(default_factory=RecordFold)
    #: bytes appended to this generation after its snapshot
    appended_bytes: int = 0
    #: bytes of records appended to the partition's state over every generation
    appended_total: int = 0
    #: the generation topic's end as this worker last wrote it
    end_offset: int = 0
    loaded_in_s: float = 0.0

    @property
    def checkpoint(self) -> int:
        return checkpoint_offset(self.fold.meta.get(CHECKPOINT_KEY[1:]))

    def live_bytes(self) -> int:
        return sum(len(key) + len(record) for records in self.fold.accounts.values() for key, record in records.items())

    def largest_value(self) -> int:
        return max((len(record) for records in self.fold.accounts.values() for record in records.values()), default=0)

    def blocked(self) -> dict[bytes, dict[str, Any]]:
        """Blocked accounts and their failure (streams.worker.state_records.Core.blocked)."""
        out = {}
        for account, records in self.fold.accounts.items():
            core = records.get(b"")
            if core is not None and b'"blocked"' in core.value:
                failure = orjson.loads(core.value).get("blocked")
                if failure:
                    out[account] = failure
        return out


class StateLog:
    """Generation topics of the worker's state: load, append, roll.

    Parameters
    ----------
    kafka
        The brokers and how to reach them.
    base
        Topic name stem (``<prefix><app_id>-state``); a generation is ``<base>.p<P>.g<G>``.
    on_deleted
        Called with the name of each generation topic deleted (the embedded stack also
        clears its files: tansu leaves them).
    replication_factor, topic_configs
        How a new generation topic is created (the settings' replication and
        ``min.insync.replicas``; kept forever).
    """

    def __init__(
        self,
        kafka: KafkaAccess,
        base: str,
        *,
        on_deleted: Callable[[str], Awaitable[None] | None] | None = None,
        roll_min_bytes: int = ROLL_MIN_BYTES,
        replication_factor: int = 1,
        topic_configs: dict[str, str] | None = None,
    ):
        self.kafka = kafka
        self.replication_factor = replication_factor
        self.topic_configs = dict(TOPIC_CONFIGS if topic_configs is None else topic_configs)
        self.base = base
        self.on_deleted = on_deleted
        self.roll_min_bytes = roll_min_bytes
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()  # partitions load (and may start a generation) at once
        # One topic created at a time: tansu answered UnknownError to creates (and to the
        # first produces) of several new topics at once, on a loaded machine.
        self._create_lock = asyncio.Lock()
        self._pattern = re.compile(re.escape(base) + r"\.p(\d+)\.g(\d+)")
        self._deleting: set[asyncio.Task[None]] = set()

    def topic(self, partition: int, generation: int) -> str:
        return f"{self.base}.p{partition}.g{generation}"

    async def producer(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            return await self._started_producer()

    async def _started_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                **self.kafka.aiokafka(),
                acks="all",
                enable_idempotence=False,
                linger_ms=5,
                # ids and JSON compress several times over: fewer bytes through the broker
                # and its store, so a restart reads the state sooner. zstd (cramjam), not
                # gzip: aiokafka compresses on the event loop, and its gzip is level 9: a
                # live batch's 0.7 MB of records took 42 ms (ratio 7.6), zstd 4.7 ms (6.3).
                compression_type="zstd",
                max_batch_size=PRODUCE_BATCH_BYTES,
                max_request_size=PRODUCE_BATCH_BYTES + 64 * 1024,
                client_id="cdrflow-state",
                # A write the broker cannot take fails after 10 s, not aiokafka's 40 s: the
                # first write to a brand-new state topic was once answered
                # NotLeaderForPartition until the timeout (docs/streaming.md, Limits), and
                # the resume then starts a next generation at once.
                request_timeout_ms=STATE_REQUEST_TIMEOUT_MS,
            )
            await producer.start()
            self._producer = producer
        return self._producer

    async def stop(self) -> None:
        for task in list(self._deleting):
            task.cancel()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    # ------------------------------------------------------------------------ loading
    async def generations(self, partition: int) -> list[int]:
        """The generations of a partition that have a topic, oldest first."""
        found = []
        for name in await topic_names(self.kafka):
            match = self._pattern.fullmatch(name)
            if match and int(match.group(1)) == partition:
                found.append(int(match.group(2)))
        return sorted(found)

    async def load(self, partition: int) -> PartitionState:
        """The partition's committed state, from its newest valid generation (a new
        generation 0 when it has none)."""
        started = time.monotonic()
        generations = await self.generations(partition)
        for generation in reversed(generations):
            state = await self._read(partition, generation)
            if state is not None:
                state.loaded_in_s = time.monotonic() - started
                for older in generations:
                    if older < generation:
                        self._delete_later(self.topic(partition, older))
                return state
            log.warning("state generation %s is not complete (cut short while rolling): not used", self.topic(partition, generation))
        state = PartitionState(partition=partition, generation=(generations[-1] + 1) if generations else 0)
        await self._start_generation(state, [])
        state.loaded_in_s = time.monotonic() - started
        return state

    async def is_current(self, state: PartitionState) -> bool:
        """Whether the partition's log is still as this worker last wrote it (nobody else
        wrote since, and no newer generation exists): then it need not be read again."""
        generations = await self.generations(state.partition)
        if not generations or generations[-1] != state.generation:
            return False
        tp = TP(self.topic(state.partition, state.generation), 0)
        ends = await read_to_end(self.kafka, {tp: state.end_offset})
        return not ends[tp]

    async def _read(self, partition: int, generation: int) -> PartitionState | None:
        tp = TP(self.topic(partition, generation), 0)
        records = (await read_to_end(self.kafka, {tp: 0}))[tp]
        if not records or records[0].key != GENERATION_KEY:
            return None
        header = orjson.loads(records[0].value)
        if header.get("generation") != generation or header.get("partition") != partition:
            return None
        state = PartitionState(partition=partition, generation=generation)
        state.appended_total = int(header.get("appended_total", 0))
        complete = False
        for position, record in enumerate(records[1:], start=1):
            if record.key == SNAPSHOT_KEY:
                if int(orjson.loads(record.value)["records"]) != position - 1:
                    return None  # records of the snapshot are missing
                complete = True
                continue
            if complete:
                state.appended_bytes += len(record.key or b"") + len(record.value or b"")
            state.fold.apply(record.key, record.value)
        if not complete:
            return None
        state.appended_total += state.appended_bytes
        state.end_offset = records[-1].offset + 1
        return state

    # ------------------------------------------------------------------------ writing
    async def append(self, state: PartitionState, records: list[tuple[bytes, bytes]]) -> None:
        """Append records to the partition's generation and wait for every acknowledgement.

        Raises :class:`StateWriteError` naming the refused keys (the caller decides which
        accounts they block); nothing is applied to ``state`` then. On success the
        records are folded into ``state``.
        """
        if not records:
            return
        futures = await self._send(self.topic(state.partition, state.generation), records)
        results = await asyncio.gather(*futures, return_exceptions=True)
        refused = {key: result for (key, _), result in zip(records, results) if isinstance(result, BaseException)}
        if refused:
            raise StateWriteError(refused)
        size = sum(len(key) + len(value) for key, value in records)
        state.appended_bytes += size
        state.appended_total += size
        state.end_offset = max(state.end_offset, max(r.offset for r in results) + 1)  # type: ignore[union-attr]
        for key, value in records:
            state.fold.apply(key, value)

    def should_roll(self, state: PartitionState) -> bool:
        # The cheap test first: the live size is a walk over every record.
        return state.appended_bytes > self.roll_min_bytes and state.appended_bytes > ROLL_FACTOR * state.live_bytes()

    async def roll(self, state: PartitionState, still_mine: Callable[[], bool]) -> bool:
        """Write the partition's live state as a new generation and switch to it.

        ``still_mine`` is asked right before the snapshot is made valid: a partition taken
        away meanwhile is left to its new owner (the cut-short generation is never used).
        """
        generations = await self.generations(state.partition)
        old = state.generation
        new = max([*generations, old]) + 1
        snapshot = list(state.fold.records())
        fresh = PartitionState(partition=state.partition, generation=new, appended_total=state.appended_total)
        if not await self._start_generation(fresh, snapshot, still_mine):
            return False
        state.generation, state.appended_bytes, state.end_offset = new, 0, fresh.end_offset
        self._delete_later(self.topic(state.partition, old))
        return True

    async def _start_generation(
        self, state: PartitionState, snapshot: list[tuple[bytes, bytes]], still_mine: Callable[[], bool] = lambda: True
    ) -> bool:
        topic = self.topic(state.partition, state.generation)
        await self._create(topic)
        header = orjson.dumps(
            {"generation": state.generation, "partition": state.partition, "appended_total": state.appended_total}
        )
        futures = await self._send(topic, [(GENERATION_KEY, header), *snapshot])
        await asyncio.gather(*futures)
        if not still_mine():
            log.warning("%s: the partition was taken away while rolling; the new generation is left unused", topic)
            return False
        marker = orjson.dumps({"records": len(snapshot)})
        (future,) = await self._send(topic, [(SNAPSHOT_KEY, marker)])
        result = await future
        state.end_offset = result.offset + 1
        return True

    async def _send(self, topic: str, records: Iterable[tuple[bytes, bytes]]) -> list[Awaitable[Any]]:
        producer = await self.producer()
        return [await producer.send(topic, value=value, key=key, partition=0) for key, value in records]

    async def _create(self, topic: str) -> None:
        async with self._create_lock:
            await self._create_one(topic)

    async def _create_one(self, topic: str) -> None:
        admin = AIOKafkaAdminClient(**self.kafka.aiokafka(), client_id="cdrflow-state")
        await admin.start()
        try:
            await admin.create_topics([
                NewTopic(topic, num_partitions=1, replication_factor=self.replication_factor, topic_configs=self.topic_configs)
            ])
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()
        # Metadata of a new topic reaches the producer only once it asks again.
        deadline = time.monotonic() + 30
        while topic not in await topic_names(self.kafka):
            if time.monotonic() > deadline:
                raise KafkaError(f"the state topic {topic} was created but does not show")
            await asyncio.sleep(0.1)

    def _delete_later(self, topic: str) -> None:
        task = asyncio.ensure_future(self._delete(topic))
        self._deleting.add(task)
        task.add_done_callback(self._deleting.discard)

    async def _delete(self, topic: str) -> None:
        admin = AIOKafkaAdminClient(**self.kafka.aiokafka(), client_id="cdrflow-state")
        try:
            await admin.start()
            await admin.delete_topics([topic])
        except Exception as error:  # tansu deletes the topic, then fails to delete its objects
            if topic in await topic_names(self.kafka):
                log.warning("could not delete the old state generation %s: %r", topic, error)
                return
        finally:
            await admin.close()
        log.info("deleted the old state generation %s", topic)
        if self.on_deleted is not None:
            done = self.on_deleted(topic)
            if done is not None:
                await done


__all__ = ["PartitionState", "StateLog", "StateWriteError", "partitions_of"]
