"""Where the rating agent resumes after each rebalance: a complete table, then the checkpoint.

Faust rebuilds a table from its changelog after every rebalance and stops at the end
offset the broker reports. tansu reports that end too low (docs/infra.md: by up to a
record batch on the memory store, by up to a second of writes on the s3 store), so a
recovered table can miss its last updates. Worse, a table short of its tail and then
written again makes the changelog non-monotone: an older state written later hides a
newer one, which no checkpoint can repair. So, once Faust's recovery is done and before
the source partitions are positioned:

1. **complete the table**: read each active changelog partition from where Faust stopped
   to its real end (the high watermark of Fetch responses, which is exact) and apply
   those records to the table, as Faust's recovery would have;
2. **resume at the checkpoint**: for each assigned ``cdr.raw`` partition, commit the
   checkpoint the table holds (the offset after the last batch whose states were written)
   as the group's offset. Faust seeks every partition to its committed offset right
   after the recovery callbacks (an ordinary seek here would be undone), so the agent
   starts exactly there and never sees a message from before the seek.

Messages between the checkpoint and the states written after it are replays that the
per-account ``applied_offset`` skips (streams.rating_batch). This module is the one place
that touches Faust internals (the recovery's offsets and buffers, the consumer's raw
commit); they are named where used. If any step fails the worker stops rather than rate
from a state it cannot trust: a restarted worker repeats the steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from streams.log_reader import read_to_end
from streams.rating_batch import checkpoint_key, checkpoint_offset

log = logging.getLogger(__name__)


class Resumer:
    """The ``on_recover`` callback of the rating agent's state table.

    Parameters
    ----------
    app
        The Faust app.
    table
        The state table (raw keys and raw values).
    source_topic
        The name of the topic the rating agent consumes (``cdr.raw``).
    bootstrap
        Broker addresses, for the reader of changelog tails.
    on_failure
        Called with the error when the table cannot be completed or the checkpoint not
        committed; it must stop the worker.
    """

    def __init__(
        self,
        app: Any,
        table: Any,
        source_topic: str,
        bootstrap: list[str],
        on_failure: Callable[[BaseException], Awaitable[None]],
    ):
        self.app = app
        self.table = table
        self.source_topic = source_topic
        self.bootstrap = bootstrap
        self.on_failure = on_failure
        #: source partition -> the offset the last rebalance resumed it at (for logs, tests)
        self.resumed_at: dict[int, int] = {}

    async def __call__(self) -> None:
        try:
            started = time.monotonic()
            completed = await self.complete_table()
            resumed = await self.resume_at_checkpoints()
            log.info(
                "resumed %s after completing the table with %d changelog records (%.1f s)",
                ", ".join(f"{self.source_topic}[{p}]@{o}" for p, o in sorted(resumed.items())) or "nothing",
                completed,
                time.monotonic() - started,
            )
        except Exception as error:  # the callback's errors would be swallowed by Faust
            log.critical("could not resume the rating agent safely: %r", error, exc_info=True)
            await self.on_failure(error)

    async def complete_table(self) -> int:
        """Apply what Faust's recovery left unread of each active changelog partition."""
        recovery = self.app.tables.recovery
        # Faust internals: the recovery's per-partition last applied offsets.
        active = {tp for tp in recovery.actives_for_table.get(self.table, set())}
        if not active:
            return 0
        starts = {tp: recovery.active_offsets.get(tp, -1) + 1 for tp in active}
        tails = await read_to_end(self.bootstrap, starts)
        # From here to the end nothing awaits, so Faust's recovery cannot interleave.
        recovery.flush_buffers()  # Faust internals: events it read but has not applied yet
        applied = 0
        for tp, records in tails.items():
            done = recovery.active_offsets.get(tp, -1)
            fresh = [record for record in records if record.offset > done]
            if not fresh:
                continue
            self.table.apply_changelog_batch([_changelog_event(record) for record in fresh])
            recovery.active_offsets[tp] = fresh[-1].offset
            applied += len(fresh)
        return applied

    async def resume_at_checkpoints(self) -> dict[int, int]:
        """Make each assigned source partition resume at its checkpoint."""
        consumer = self.app.consumer
        partitions = sorted(tp for tp in consumer.assignment() if tp.topic == self.source_topic)
        offsets = {tp: checkpoint_offset(self.table.get(checkpoint_key(tp.partition))) for tp in partitions}
        if not offsets:
            return {}
        # Faust internals: commit these offsets as they are (Consumer.commit commits acked
        # offsets only). Refused, Faust would resume at the old committed offsets, which
        # can be past messages whose states never reached the changelog: stop instead.
        if not await consumer._commit(offsets):
            raise RuntimeError(f"the broker refused to commit the checkpoints {offsets}")
        for tp, offset in offsets.items():
            # Faust's seek to committed offsets skips offset 0; this covers that case.
            await consumer.seek(tp, offset)
        self.resumed_at = {tp.partition: offset for tp, offset in offsets.items()}
        return dict(self.resumed_at)


def _changelog_event(record: Any) -> SimpleNamespace:
    """A changelog record in the shape ``Table.apply_changelog_batch`` reads."""
    return SimpleNamespace(
        key=record.key,
        value=record.value,
        message=SimpleNamespace(key=record.key, value=record.value, partition=record.partition, offset=record.offset),
    )
