"""Where the rating agent resumes after each rebalance: the partitions' state, then the checkpoint.

The worker keeps its accounts' state itself (streams.worker.state_log: one topic per partition
and generation), not in a Faust table; a small Faust table is declared only so that
Faust calls this module's callback at the right moment of every rebalance: after its
recovery and *before* it positions the source partitions at their committed offsets.
Then, for each ``cdr.raw`` partition assigned:

1. **load its state**: read its newest valid generation to the real end (the high
   watermark of Fetch responses, which is exact: tansu reports ListOffsets too low), or
   keep the state in memory when nobody wrote to it since this worker did;
2. **resume at the checkpoint**: commit the checkpoint the state holds (the offset after
   the last batch whose states were written), or the first message of a blocked account
   when that is earlier, as the group's offset. Faust seeks every partition to its
   committed offset right after the recovery callbacks (an ordinary seek here would be
   undone), so the agent starts exactly there.

Messages between the checkpoint and the states written after it are replays that the
per-account ``applied_offset`` skips (streams.worker.batch). The touched Faust internals
(the consumer's raw commit) are named where used. If a step fails it is tried again a few
times; then the worker stops rather than rate from a state it cannot trust (a restarted
worker repeats the steps).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from streams.worker.runner import RatingWorker

log = logging.getLogger(__name__)

#: Tries of the resume steps before the worker gives up, and the first wait between two.
RESUME_ATTEMPTS: Final[int] = 4
RESUME_FIRST_DELAY_S: Final[float] = 1.0


class Resumer:
    """The ``on_recover`` callback of the rating agent's (empty) hook table.

    Parameters
    ----------
    app
        The Faust app.
    worker
        The rating worker whose partition states are loaded here.
    source_topic
        The name of the topic the rating agent consumes (``cdr.raw``).
    on_failure
        Called with the error when the steps failed every try; it must stop the worker.
    """

    def __init__(
        self,
        app: Any,
        worker: RatingWorker,
        source_topic: str,
        on_failure: Callable[[BaseException], Awaitable[None]],
    ):
        self.app = app
        self.worker = worker
        self.source_topic = source_topic
        self.on_failure = on_failure
        #: source partition -> the offset the last rebalance resumed it at (for logs, tests)
        self.resumed_at: dict[int, int] = {}

    async def __call__(self) -> None:
        delay = RESUME_FIRST_DELAY_S
        for attempt in range(1, RESUME_ATTEMPTS + 1):
            try:
                started = time.monotonic()
                loaded = await self.load_states()
                resumed = await self.resume_at_checkpoints()
                log.info(
                    "resumed %s with the state of %d account(s) (%s) in %.1f s",
                    ", ".join(f"{self.source_topic}[{p}]@{o}" for p, o in sorted(resumed.items())) or "nothing",
                    sum(len(s.fold.accounts) for s in self.worker.states.values()),
                    ", ".join(loaded) or "all kept in memory",
                    time.monotonic() - started,
                )
                await self.worker.publish_status()
                return
            except Exception as error:  # the callback's errors would be swallowed by Faust
                if attempt == RESUME_ATTEMPTS:
                    log.critical("could not resume the rating agent safely: %r", error, exc_info=True)
                    await self.on_failure(error)
                    return
                log.error("resuming the rating agent failed (%r); again in %.0f s", error, delay)
                await asyncio.sleep(delay)
                delay *= 2

    def assigned(self) -> list[int]:
        return sorted(tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.source_topic)

    async def load_states(self) -> list[str]:
        """Each assigned partition's state, loaded unless the one in memory is current;
        the partitions are read at once (each read mostly waits for the broker)."""
        assigned = self.assigned()
        states = self.worker.states
        for partition in [p for p in states if p not in assigned]:
            del states[partition]

        async def stale(partition: int) -> bool:
            held = states.get(partition)
            return held is None or not await self.worker.state_log.is_current(held)

        flags = await asyncio.gather(*(stale(p) for p in assigned))
        wanted = [p for p, load in zip(assigned, flags) if load]
        loaded_states = await asyncio.gather(*(self.worker.state_log.load(p) for p in wanted))
        loaded = []
        for partition, state in zip(wanted, loaded_states):
            states[partition] = state
            blocked = state.blocked()
            self.worker.retry |= set(blocked)
            self.worker.loaded(partition)
            loaded.append(
                f"[{partition}] generation {state.generation}: {len(state.fold.accounts)} accounts, "
                f"{state.live_bytes():,} bytes, read in {state.loaded_in_s:.2f} s"
                + (f", {len(blocked)} blocked account(s) to try again" if blocked else "")
            )
        return loaded

    async def resume_at_checkpoints(self) -> dict[int, int]:
        """Make each assigned source partition resume at its checkpoint (or earlier, at the
        first message of a blocked account)."""
        consumer = self.app.consumer
        partitions = sorted(tp for tp in consumer.assignment() if tp.topic == self.source_topic)
        offsets = {}
        for tp in partitions:
            state = self.worker.states[tp.partition]
            blocked = [int(failure["offset"]) for failure in state.blocked().values()]
            offsets[tp] = min([state.checkpoint, *blocked])
        if not offsets:
            return {}
        # Faust internals: commit these offsets as they are (Consumer.commit commits acked
        # offsets only). Refused, Faust would resume at the old committed offsets, which
        # can be past messages whose states never reached the log: stop instead.
        if not await consumer._commit(offsets):
            raise RuntimeError(f"the broker refused to commit the checkpoints {offsets}")
        for tp, offset in offsets.items():
            # Faust's seek to committed offsets skips offset 0; this covers that case.
            await consumer.seek(tp, offset)
        self.resumed_at = {tp.partition: offset for tp, offset in offsets.items()}
        return dict(self.resumed_at)
