"""What every live feed (``ingest --tail``, ``route``) does with a batch of framed lines:
judge spec 4 steps 1-2 and send, exactly as ``cdrflow ingest`` does.

The same functions as ingest (``streams.feeds.routing.route``, ``rejection_groups``,
``AccountChunker``), so a line gets the same rejection, the same account key and the same
chunk format whichever way it came. Two differences, both for latency: nothing is held
back for a fuller chunk (a batch's lines of an account go out at once, up to
``CDR_CHUNK_LINES`` per message), and lines the feed finds already on ``cdr.raw`` after a
restart (``skip``, streams.feeds.positions) are left out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import polars as pl

from schemas.messages import cdr_chunk_value, frame_value
from schemas.switch_formats import Layout
from schemas.topics import CDR_RAW, CDR_REJECTED, FEED_NOTES, INGEST_FILES, INGEST_POSITIONS
from streams.feeds.routing import AccountChunker, rejection_groups, route
from streams.kafka.client import Sender, topic_name

#: The live feeds flush after each pass, so a batch never waits this long: it only keeps a
#: pass's records of a partition in one batch. The embedded broker's s3 store reads
#: back ~15 record batches per fetch, whatever their size (measured: 300 one-record
#: batches took 12 s to read), so batches, not records, bound what a worker takes in.
LIVE_LINGER_MS: Final[int] = 5_000


@dataclass(frozen=True)
class LiveTopics:
    """The topics a live feed writes, under a pipeline's prefix."""

    raw: str
    rejected: str
    files: str
    positions: str
    notes: str

    @classmethod
    def under(cls, topic_prefix: str = "") -> LiveTopics:
        """
        Examples
        --------
        >>> LiveTopics.under("t1.").positions
        't1.ingest.positions'
        """
        names = (CDR_RAW, CDR_REJECTED, INGEST_FILES, INGEST_POSITIONS, FEED_NOTES)
        return cls(*(topic_name(name, topic_prefix) for name in names))


@dataclass
class Tally:
    """Lines of one feed, and what became of them at the feed."""

    lines: int = 0
    #: Sent to cdr.raw (or found there after a restart).
    accepted: int = 0
    #: Found on cdr.raw after a restart, so not sent again.
    skipped: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    messages: int = 0

    def add(self, other: Tally) -> None:
        self.lines += other.lines
        self.accepted += other.accepted
        self.skipped += other.skipped
        self.rejected.update(other.rejected)
        self.messages += other.messages


def send_batch(
    sender: Sender,
    topics: LiveTopics,
    batch: pl.DataFrame,
    account_of_number: Mapping[str, str],
    *,
    source: str,
    ingest_id: str,
    skip: set[int] | None = None,
) -> Tally:
    """Route a raw batch (``schemas.cdr_csv.BATCH_SCHEMA``, its ``line`` column the lines'
    identity within ``source``) and send it: accepted lines as ``cdr.raw`` chunks keyed
    by account, rejections to ``cdr.rejected``. Lines in ``skip`` are already on
    ``cdr.raw`` and are not sent (they count as accepted and skipped).

    The caller flushes the sender: nothing here waits for the broker.
    """
    tally = Tally(lines=batch.height)
    if batch.height == 0:
        return tally
    routed = route(batch, account_of_number, source=source, ingest_id=ingest_id)
    accepted = routed.accepted
    tally.accepted = accepted.height
    if skip:
        already = accepted.get_column("line").is_in(sorted(skip))
        tally.skipped = int(already.sum())
        accepted = accepted.filter(~already)
    chunker = AccountChunker()
    for account_id, lines in [*chunker.add(accepted), *chunker.flush()]:
        sender.send(topics.raw, account_id.encode(), cdr_chunk_value(source, lines, ingest_id))
        tally.messages += 1
    for key, rows in rejection_groups(routed):
        sender.send(topics.rejected, key, frame_value(rows))
        tally.messages += 1
    tally.rejected.update(routed.rejected.get_column("reason").to_list())
    return tally


def report_warnings(sender: Sender, topics: LiveTopics, source: str, layout: Layout, said: list[str]) -> list[str]:
    """What the reader noticed about a feed so far (``schemas.switch_formats.FeedNotes``),
    put on ``feed.notes`` (key: the source) when it changed, for ``cdrflow status``; the
    warnings not said before are returned, for the command's output. ``said`` is the
    feed's list of what was said, updated here."""
    warnings = layout.notes.warnings(layout.feed)
    if warnings == said:
        return []
    new = [w for w in warnings if w not in said]
    said[:] = warnings
    value = {
        "source": source,
        "format": layout.feed.describe(),
        "warnings": warnings,
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
    sender.send(topics.notes, source.encode(), value)
    return new
