"""How far the live feeds (``ingest --tail``, ``route``) have sent their feeds: the
``ingest.positions`` topic, and the read-back that makes a restart exact.

The worker rates every ``cdr.raw`` message it is given. A line a feed sent twice would
be rated once and then rejected as a ``duplicate`` (spec 4.3): an extra row that the
offline run of the same file does not have. So a feed must never send a line again
after a restart, whatever moment it was killed at. Kafka has no usable transactions here
(docs/infra.md); the protocol, "read your own writes" (docs/streaming.md):

1. A :class:`Position` of a feed says: every line of ``source`` below ``next_line`` is
   on the broker, acknowledged; and any line of ``source`` sent later lands on ``cdr.raw``
   partition ``p`` at or beyond ``raw_ends[p]``. A feed writes one only after the sends
   it covers were acknowledged, and takes ``raw_ends`` from those acknowledgements (the
   offset after the last one per partition, :attr:`streams.kafka.client.Sender.acked_ends`)
   or from a read to the end: every later send lands beyond both.
2. On start, the feed reads the last position of each of its feeds
   (:meth:`PositionBook.last`), then reads ``cdr.raw`` from ``raw_ends`` to its real end
   (the Fetch high watermark; tansu reports the end too low) and collects the lines of
   those sources it finds there (:func:`sent_lines`): they were sent after the position
   was written, before the crash. It goes on from ``next_line`` and skips those lines.

A line rejected by the feed goes to ``cdr.rejected`` and may be sent again: its row is
keyed by ``(ingest_id, source, line)`` in ClickHouse, so the copy collapses. Positions
are keyed by feed (``tail:<absolute path>``, ``route:<topic>:<partition>``) and each key
always goes to the same partition (``crc32(key) % partitions``), where its last record is
its current value.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.topics import INGEST_POSITIONS
from streams.kafka.async_reader import TP, partitions_of, read_to_end, reported_ends
from streams.kafka.client import Sender, topic_name
from streams.settings import KafkaAccess

log = logging.getLogger(__name__)

#: Records read back from the reported end of a partition before going further back.
FIRST_WINDOW: Final[int] = 64

Count = Annotated[int, Field(ge=0)]


class FileMark(BaseModel):
    """Which file a tailed generation is, and how far into it the feed has read.

    A file is known by its device and inode (a rename keeps them, so a rotated file is
    found again) and by its first bytes (an inode can be reused after a delete).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: int
    inode: int
    #: Bytes of the file consumed: just after the last whole line sent.
    offset: Count
    #: SHA-256 (hex) of the file's first ``head_bytes`` bytes.
    head_sha256: str
    head_bytes: Count


class Position(BaseModel):
    """How far one feed has been sent (see the module docstring for what it promises).

    Examples
    --------
    >>> p = Position(key="route:sw:0", source="sw[0]", ingest_id="route-sw", next_line=12,
    ...              raw_ends={0: 40, 1: 7}, at="2026-03-02T10:00:00.000Z")
    >>> Position.model_validate_json(p.model_dump_json()) == p
    True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    key: str
    #: What the feed's lines carry as ``source`` (a tailed generation, or ``topic[p]``).
    source: str
    ingest_id: str
    #: Every line below it is on the broker (a file's physical line; a topic's offset).
    next_line: Count
    #: cdr.raw partition -> an offset at or below that of any later send of this feed.
    raw_ends: dict[int, Count]
    at: str
    #: A tailed generation that was read to its end (rotated away or truncated).
    done: bool = False
    file: FileMark | None = None
    #: The header line of a header format seen on a routed partition (text).
    header: str | None = None
    lines: Count = 0
    accepted: Count = 0
    rejected: dict[str, Count] = {}


def now_text() -> str:
    """The UTC time of a record, to the millisecond: ``2026-03-02T10:00:00.123Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def tail_key(path: Path) -> str:
    """The position key of a followed file: its absolute path (symlinks not resolved:
    a tail follows a name, as ``tail -F`` does).

    Examples
    --------
    >>> tail_key(Path("/var/log/asterisk/cdr-csv/Master.csv"))
    'tail:/var/log/asterisk/cdr-csv/Master.csv'
    """
    return f"tail:{Path(path).absolute()}"


def route_key(topic: str, partition: int) -> str:
    """The position key of a routed partition.

    Examples
    --------
    >>> route_key("switch.lines", 2)
    'route:switch.lines:2'
    """
    return f"route:{topic}:{partition}"


def partition_of(key: str, partitions: int) -> int:
    """The ``ingest.positions`` partition of a key: always the same one, so its last
    record there is its value.

    Examples
    --------
    >>> partition_of("route:switch.lines:2", 4) == partition_of("route:switch.lines:2", 4)
    True
    """
    return zlib.crc32(key.encode()) % partitions


class PositionBook:
    """Reads and writes the ``ingest.positions`` topic of one pipeline."""

    def __init__(self, kafka: KafkaAccess, topic_prefix: str = ""):
        self.kafka = kafka
        self.topic = topic_name(INGEST_POSITIONS, topic_prefix)
        self._partitions: int | None = None

    def partitions(self) -> int:
        if self._partitions is None:
            found = asyncio.run(partitions_of(self.kafka, [self.topic]))
            if not found:
                raise RuntimeError(f"topic {self.topic} does not exist: run `cdrflow up`, which creates it")
            self._partitions = len(found)
        return self._partitions

    def write(self, sender: Sender, position: Position) -> None:
        """Send a position (the caller flushes: it counts once acknowledged)."""
        sender.send(
            self.topic,
            position.key.encode(),
            position.model_dump(mode="json"),
            partition=partition_of(position.key, self.partitions()),
        )

    def last(self, keys: Iterable[str]) -> dict[str, Position]:
        """The last position of each key that has one.

        Reads each partition backwards from its end, in growing windows, until every key
        of it is found or its start is reached: a restart reads a few records, not the
        whole history (positions are written every second).
        """
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        count = self.partitions()
        by_partition: dict[int, set[str]] = {}
        for key in wanted:
            by_partition.setdefault(partition_of(key, count), set()).add(key)
        return asyncio.run(self._last(by_partition))

    async def _last(self, by_partition: Mapping[int, set[str]]) -> dict[str, Position]:
        tps = {p: TP(self.topic, p) for p in by_partition}
        ends = await reported_ends(self.kafka, tps.values())
        found: dict[str, Position] = {}
        for partition, keys in by_partition.items():
            tp = tps[partition]
            missing = set(keys)
            window = FIRST_WINDOW
            start = ends.get(tp, 0)
            while missing:
                start = max(0, start - window)
                records = (await read_to_end(self.kafka, {tp: start}))[tp]
                for record in reversed(records):
                    key = (record.key or b"").decode("utf-8", errors="replace")
                    if key in missing:
                        position = _decoded(record.value, key)
                        if position is not None:
                            found[key] = position
                            missing.discard(key)
                if start == 0:
                    break
                window *= 8
        return found


def _decoded(value: bytes | None, key: str) -> Position | None:
    try:
        return Position.model_validate_json(value or b"")
    except ValidationError as error:
        log.warning("%s: a record of key %r is not a position, skipped: %s", INGEST_POSITIONS, key, error)
        return None


def sent_lines(
    kafka: KafkaAccess, raw_topic: str, starts: Mapping[int, int], sources: Iterable[str]
) -> tuple[dict[str, set[int]], dict[int, int]]:
    """The lines of ``sources`` that ``cdr.raw`` holds from ``starts`` (partition -> offset;
    a partition not named is read from 0) to its real end, and where each read ended.

    Returns ``(source -> line numbers, partition -> offset after the last record read)``;
    the second is a valid ``raw_ends`` for the next position.
    """
    names = set(sources)

    async def read() -> tuple[dict[str, set[int]], dict[int, int]]:
        partitions = await partitions_of(kafka, [raw_topic])
        begin = {tp: max(0, starts.get(tp.partition, 0)) for tp in partitions}
        tails = await read_to_end(kafka, begin)
        return _lines_of(tails.values(), names), {
            tp.partition: max(begin[tp], records[-1].offset + 1 if records else 0) for tp, records in tails.items()
        }

    return asyncio.run(read())


def _lines_of(partitions: Iterable[list[object]], names: set[str]) -> dict[str, set[int]]:
    """The lines of the chunks of these sources (other messages are not decoded)."""
    needles = [b'"source":' + orjson.dumps(name) for name in names]
    found: dict[str, set[int]] = {name: set() for name in names}
    for records in partitions:
        for record in records:
            value = record.value or b""  # type: ignore[attr-defined]
            if not any(needle in value for needle in needles):
                continue
            try:
                chunk = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            source = chunk.get("source") if isinstance(chunk, dict) else None
            if source in found and isinstance(chunk.get("line"), list):
                found[source].update(n for n in chunk["line"] if isinstance(n, int))
    return found


def held_ends(ends: Mapping[int, int], floor: Mapping[int, int] | None) -> dict[int, int]:
    """The ``raw_ends`` a position may carry while lines found by a read-back are still
    ahead of it (``floor``: the recovered position's ends): never past them, or a second
    crash would read back from beyond those lines and send them again.

    Examples
    --------
    >>> held_ends({0: 50, 1: 70}, None)
    {0: 50, 1: 70}
    >>> held_ends({0: 50, 1: 70}, {0: 20})
    {0: 20, 1: 0}
    """
    if floor is None:
        return dict(ends)
    return {partition: min(end, floor.get(partition, 0)) for partition, end in ends.items()}


def reported_raw_ends(kafka: KafkaAccess, raw_topic: str) -> dict[int, int]:
    """``raw_ends`` for a feed that has sent nothing yet: the ends the broker reports (a
    lower bound of the real ends, which is all a position needs)."""

    async def read() -> dict[int, int]:
        partitions = await partitions_of(kafka, [raw_topic])
        return {tp.partition: offset for tp, offset in (await reported_ends(kafka, partitions)).items()}

    return asyncio.run(read())
