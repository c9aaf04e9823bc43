"""One rating batch from taken messages to written state, and what a failure may stop.

The rating agent of streams/worker/app.py hands each batch here. The order is the design of
docs/streaming.md: rate (streams.worker.batch, in a thread), send every output and wait
for the acknowledgements, then append each partition's account records and, after
them, its checkpoint (streams.worker.state_log). Batches are written one at a time, in order;
the next batch is rated while one is written, on the state that write will leave, and
rated again on what was written if it was not written whole.

A failure is kept to the accounts it concerns (docs/streaming.md, "When something
fails"): an account whose rating raises, whose outputs or records the broker refuses for
what they are (too large, invalid), is **blocked**: its state stays as it was, a failure
note is written in its core with the first message it did not apply, and its messages
stay in the log; every other account goes on. A blocked account is tried again when a
worker next takes its partition (a restart), from that message. A broker that refuses
everything (away, restarting) is waited for, with backoff, however long it takes: the
worker never exits for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

import orjson
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from rating import Catalog
from streams.worker.batch import BatchOutcome, blocked_core, is_unblock, rate_isolated
from streams.worker.messages import OutputMessage, SourceMessage
from streams.worker.state_log import PartitionState, StateLog, StateWriteError
from streams.worker.state_records import CHECKPOINT_KEY, AccountRecords, checkpoint_value, core_of

log = logging.getLogger(__name__)

#: Sends of a batch's outputs before refusals of some of them block their accounts (a
#: refusal of all of them is the broker away: waited for, without end).
OUTPUT_SEND_ATTEMPTS: Final[int] = 5
OUTPUT_RESEND_FIRST_DELAY_S: Final[float] = 0.25
RETRY_MAX_DELAY_S: Final[float] = 30.0
#: Each partition's state figures go to the ``worker.status`` topic at once after a
#: rebalance, a roll or a failure; otherwise, when batches changed them, once the worker
#: has been idle for ``STATUS_IDLE_S`` or at most every ``STATUS_EVERY_S`` while busy.
#: The topic is compacted on Kafka; tansu keeps every record (under 300 MB a year per
#: partition busy all the time at this pace).
STATUS_EVERY_S: Final[float] = 60.0
STATUS_IDLE_S: Final[float] = 5.0
#: Refusals no retry can mend: they are about the record, not the broker.
_RECORD_ERRORS: Final = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)


def is_record_error(error: BaseException | None) -> bool:
    """Whether the broker refused a record for what it is (size), not for its own state
    (Faust's producer wraps the client's error: its cause is looked at too)."""
    while error is not None:
        if isinstance(error, _RECORD_ERRORS):
            return True
        error = error.__cause__
    return False


async def send_in_order(
    send: Callable[[Any], Awaitable[Awaitable[object]]],
    messages: Sequence[Any],
    *,
    attempts: int = OUTPUT_SEND_ATTEMPTS,
    first_delay_s: float = OUTPUT_RESEND_FIRST_DELAY_S,
    max_delay_s: float = RETRY_MAX_DELAY_S,
) -> dict[int, BaseException]:
    """Send ``messages`` in order (``send(m)`` queues one and gives its delivery future)
    and wait until the broker acknowledged them; give back the ones it would not take.

    When the broker refused some, the whole list is sent again, in order, after a wait
    (``first_delay_s``, doubled each time up to ``max_delay_s``): records after a refused
    one may have been stored, and a compacted topic (``number.status``) keeps the last
    record of a key, so only the whole sequence again leaves each key's last record last.
    The copies are harmless: every output carries a deterministic id and its readers
    collapse repeats (docs/streaming.md).

    It stops, giving back ``{index: error}`` of the refused messages, when every refusal
    is about the record itself (too large), or after ``attempts`` sends when the broker
    took the others (so the refusals concern those records). While it refuses all of
    them it is away, and the sends go on, for as long as that lasts.
    """
    attempt = 0
    while True:
        attempt += 1
        futures: list[Any] = []
        for message in messages:
            try:
                futures.append(await send(message))
            except Exception as error:  # refused before it was queued (its size)
                futures.append(error)
        results = await asyncio.gather(
            *[f for f in futures if not isinstance(f, BaseException)], return_exceptions=True
        )
        waited = iter(results)
        outcome = [f if isinstance(f, BaseException) else next(waited) for f in futures]
        refused = {i: r for i, r in enumerate(outcome) if isinstance(r, BaseException)}
        if not refused:
            return {}
        if not all(isinstance(error, Exception) for error in refused.values()):
            raise next(e for e in refused.values() if not isinstance(e, Exception))
        if all(is_record_error(e) for e in refused.values()):
            return refused
        if attempt >= attempts and len(refused) < len(messages):
            return refused
        delay = min(first_delay_s * 2 ** (attempt - 1), max_delay_s)
        first = next(iter(refused.values()))
        log.warning(
            "the broker refused %d of %d output messages (%r); sending all %d again in %.2f s (attempt %d)",
            len(refused), len(messages), first, len(messages), delay, attempt + 1,
        )
        await asyncio.sleep(delay)


@dataclass(eq=False)
class RatedBatch:
    """A batch rated and not written yet (streams.worker.runner.RatingWorker.rate_batch)."""

    #: its messages of partitions this worker held a state for
    messages: list[SourceMessage]
    #: those partitions, and the states they were rated on
    held: dict[int, PartitionState]
    #: the accounts' records they were rated on
    stored: dict[bytes, AccountRecords | None]
    outcome: BatchOutcome
    #: accounts that could not be rated, sent or written -> why
    failed: dict[bytes, str]
    #: the batch whose writes it was rated on, being written then (None: rated on the
    #: written state); let go once that write is known to be whole (no chain of batches)
    ahead: RatedBatch | None
    rated_in_s: float
    #: it was rated on the state of a write then in flight, which turned out whole
    rated_ahead: bool = False
    #: a try again of blocked accounts (:meth:`RatingWorker.try_again`): no checkpoint
    catch_up: bool = False
    #: once written: why not every account and partition was (None: all were)
    why_not_whole: str | None = None

    @property
    def whole(self) -> bool:
        return self.why_not_whole is None


class RatingWorker:
    """The rating agent's state and its batch step (streams/worker/app.py drives it).

    Parameters
    ----------
    state_log
        Where the partitions' states are kept.
    send_output
        Queues one output message and gives its delivery future (Faust's producer).
    send_status
        Queues one ``worker.status`` message (key, value).
    mine
        The ``cdr.raw`` partitions assigned to this worker now.
    source_topic
        The name of ``cdr.raw`` (it goes into every output row).
    read_source
        Reads ``cdr.raw[partition]`` from an offset up to (not with) another: what a try
        again of blocked accounts rates (:meth:`try_again`).
    """

    def __init__(
        self,
        state_log: StateLog,
        send_output: Callable[[OutputMessage], Awaitable[Awaitable[object]]],
        send_status: Callable[[bytes, bytes], Awaitable[object]],
        mine: Callable[[], set[int]],
        source_topic: str,
        read_source: Callable[[int, int, int], Awaitable[list[SourceMessage]]] | None = None,
    ):
        self.state_log = state_log
        self.send_output = send_output
        self.send_status = send_status
        self.mine = mine
        self.source_topic = source_topic
        self.read_source = read_source
        #: cdr.raw partition -> the offset after the last message the agent took of it
        self.taken: dict[int, int] = {}
        #: blocked accounts an operator asked to try again (:meth:`try_again`): account ->
        #: (partition, offset of the request)
        self.unblocks: dict[bytes, tuple[int, int]] = {}
        #: held by whoever rates: the agent's batches and the timer's :meth:`try_again`
        self.lock = asyncio.Lock()
        #: cdr.raw partition -> its accounts' committed state (loaded by streams.worker.resume)
        self.states: dict[int, PartitionState] = {}
        #: blocked accounts to try once more (those of partitions loaded since the last start)
        self.retry: set[bytes] = set()
        #: accounts whose last batch could not be written at all, and their partitions: their
        #: messages are held, and those partitions' checkpoints stay where they were, for the
        #: rest of this worker's life (a restart rates them again from there)
        self.unwritten: dict[bytes, int] = {}  # account -> its partition
        self.frozen: set[int] = set()
        #: the write of the last batch rated (one at a time, in order), and that batch
        self._writing: asyncio.Task[None] | None = None
        self._writing_batch: RatedBatch | None = None
        self._status_sent = 0.0
        self._changed = False
        self._last_batch = 0.0
        self._who = f"{socket.gethostname()}:{os.getpid()}"

    # ------------------------------------------------------------------------ a batch
    async def rate_batch(self, messages: list[SourceMessage], catalog: Catalog, *, catch_up: bool = False) -> RatedBatch:
        """Rate a batch, then start writing it (:meth:`settled` waits for the writing).

        Batches are written one after the other, each whole before the next one starts;
        a batch is rated while the one before is being written, on the state that one
        will leave (its accounts' records with its writes folded in). If that batch was
        not written whole (an account blocked, a partition held or taken away), this one
        is rated again on what was written.
        """
        if not catch_up:
            for message in messages:
                self.taken[message.partition] = max(self.taken.get(message.partition, 0), message.offset + 1)
        writing = self._writing
        ahead = self._writing_batch if writing is not None and not writing.done() else None
        batch = await self._rate(messages, catalog, ahead)
        await self.settled()
        if batch.ahead is not None and not batch.ahead.whole:
            log.warning(
                "a batch was rated on the state of one not written whole (%s): rating it again on the state written",
                batch.ahead.why_not_whole,
            )
            batch = await self._rate(messages, catalog, None)
        elif batch.ahead is not None:
            batch.ahead, batch.rated_ahead = None, True
        if catch_up:
            # Older messages of a few accounts: the partition's checkpoint is already past them.
            batch.catch_up = True
            batch.outcome.checkpoints.clear()
        self.unblocks.update(batch.outcome.unblocks)
        self._writing_batch = batch
        self._writing = asyncio.create_task(self._write_batch(batch), name="cdrflow-write-batch")
        return batch

    async def try_again(self, catalog: Catalog) -> None:
        """Try blocked accounts again at once, as an operator asked (``cdrflow blocked retry
        ACCOUNT`` or ``skip``: an ``unblock`` command on the account's log that a batch found
        among the account's messages not applied: :attr:`unblocks`; docs/streaming.md,
        "Blocked accounts"). Call it between two batches, holding :attr:`lock`.

        Each account's messages from the one it is blocked at up to where the agent has
        taken its partition are read again from ``cdr.raw`` and rated as a batch of their
        own (a skip asked for is done there: streams.worker.batch), before the agent takes
        its next batch, so the account's log stays in order. An account blocked again
        further on, with an unblock command beyond that, is tried once more; one blocked
        again at the same message stays blocked (no loop). Other accounts do not wait for
        an operator, only for this read. A failure here is logged: the accounts stay
        blocked, and a restart tries them again.
        """
        tried_at: dict[bytes, int] = {}  # account -> the offset it was blocked at when tried
        while self.unblocks and self.read_source is not None:
            await self.settled()  # the batch that found them is written: their notes are stored
            requests, self.unblocks = self.unblocks, {}
            for partition in sorted({p for p, _ in requests.values()}):
                state = self.states.get(partition)
                if state is None or partition not in self.mine() or partition not in self.taken:
                    continue  # moved: its new owner tries its blocked accounts when it loads them
                blocked_at = {
                    key: int(core.blocked["offset"])
                    for key, (p, _) in requests.items()
                    if p == partition and (core := core_of(state.fold.accounts.get(key))).blocked is not None
                }
                # Tried at this message already (blocked again there): no progress, no loop.
                blocked_at = {k: o for k, o in blocked_at.items() if tried_at.get(k) != o}
                if not blocked_at:
                    continue
                tried_at.update(blocked_at)
                try:
                    read = await self.read_source(partition, min(blocked_at.values()), self.taken[partition])
                except Exception as error:  # the accounts stay blocked; a restart tries them again
                    log.error("could not read %s[%d] to try %d blocked account(s) again: %r", self.source_topic,
                              partition, len(blocked_at), error)
                    continue
                messages = [m for m in read if m.key in blocked_at and m.offset >= blocked_at[m.key]]
                log.warning("trying %s again as asked: %d message(s) of %s[%d] from offset %d",
                            ", ".join(k.decode("utf-8", "replace") for k in blocked_at), len(messages),
                            self.source_topic, partition, min(blocked_at.values()))
                self.retry |= set(blocked_at)
                await self.rate_batch(messages, catalog, catch_up=True)
        self.unblocks.clear()

    async def settled(self) -> None:
        """Wait until the batch being written (if any) is written or held."""
        writing = self._writing
        if writing is None:
            return
        try:
            await asyncio.shield(writing)  # the caller's cancellation does not cut the write
        except asyncio.CancelledError:
            if not writing.cancelled():
                raise  # the caller is cancelled, not the write

    async def _rate(self, messages: list[SourceMessage], catalog: Catalog, ahead: RatedBatch | None) -> RatedBatch:
        # A message of a partition this worker holds no state for (taken just before a
        # rebalance moved it) is left to the partition's owner.
        held = {p: self.states[p] for p in {m.partition for m in messages} if p in self.states}
        messages = [m for m in messages if m.partition in held]
        pending_writes = ahead.outcome.states if ahead is not None else {}
        pending_on = ahead.held if ahead is not None else {}
        stored: dict[bytes, AccountRecords | None] = {}
        for message in messages:
            if message.key in stored:
                continue
            state = held[message.partition]
            writes = pending_writes.get(message.key)
            if writes is not None and pending_on.get(message.partition) is state:
                # What the batch being written will leave (a copy: the write folds in meanwhile).
                stored[message.key] = state.fold.after(message.key, writes[1])
            else:
                records = state.fold.accounts.get(message.key)
                stored[message.key] = None if records is None else dict(records)
        started = time.perf_counter()
        if messages:
            outcome, failed = await asyncio.to_thread(
                rate_isolated, messages, stored, catalog, self.source_topic,
                retry=frozenset(self.retry), hold=frozenset(self.unwritten),
            )
        else:
            outcome, failed = BatchOutcome(), {}
        return RatedBatch(messages, held, stored, outcome, failed, ahead, time.perf_counter() - started)

    async def _write_batch(self, batch: RatedBatch) -> None:
        """Send, write, or hold: never raises (a bug in the glue holds what it touched)."""
        try:
            await self._write_rated(batch)
        except Exception as error:  # a bug in the glue: hold what it touched, go on
            batch.why_not_whole = f"not written: {error!r}"
            self.hold(batch.messages, error)

    async def _write_rated(self, batch: RatedBatch) -> None:
        """The batch's outputs, acknowledged, then each partition's state: with failures
        kept to their accounts."""
        messages, held, stored, outcome, failed = batch.messages, batch.held, batch.stored, batch.outcome, batch.failed
        if not messages:
            return
        started = time.perf_counter()
        outputs = outcome.outputs  # a failed account has none (rate_isolated)
        for message, error in await self._send_outputs(outputs):
            failed.setdefault(message.account, f"output {message.kind} refused by the broker: {error!r}"[:500])
        acknowledged = time.perf_counter()
        skipped = []
        for partition, state in held.items():
            # Taken away, or loaded again by a rebalance meanwhile (its owner may have
            # written since): these messages are re-rated from the checkpoint instead.
            if self.states.get(partition) is not state or partition not in self.mine():
                skipped.append(partition)
                continue
            if partition in self.frozen:
                outcome.checkpoints.pop(partition, None)
            try:
                await self._write(state, outcome, failed, messages, stored)
            except Exception as error:
                skipped.append(partition)
                self.hold([m for m in messages if m.partition == partition], error)
        blocked = {**outcome.blocked, **failed}  # rated up to a message and blocked there, or not at all
        for key in failed.keys() - outcome.unblocks.keys():
            # Blocked here (outputs or records refused) with an operator's request after it
            # in this very batch (a replay of the log): tried again like a held one.
            core = core_of(stored.get(key))
            asked = [m for m in messages if m.key == key and m.offset > core.applied_offset and is_unblock(m)]
            if asked:
                self.unblocks[key] = (asked[-1].partition, asked[-1].offset)
        if blocked:
            batch.why_not_whole = f"{len(blocked)} account(s) blocked"
        elif skipped:
            batch.why_not_whole = f"partition(s) {sorted(skipped)} not written"
        retried = self.retry & {m.key for m in messages}
        self.retry -= retried
        if blocked:
            log.error(
                "%d account(s) blocked, their lines kept in %s for the next try: %s",
                len(blocked), self.source_topic,
                "; ".join(f"{k.decode('utf-8', 'replace')}: {e}" for k, e in list(blocked.items())[:5]),
            )
        log.info(
            "rated %d lines of %d messages (%d replays skipped, %d held for blocked accounts, %d not CDR chunks) "
            "in %.3f s%s; %d output messages acknowledged in %.3f s; state written in %.3f s",
            outcome.lines, outcome.messages, outcome.skipped, outcome.held, outcome.garbage, batch.rated_in_s,
            " (while the batch before was written)" if batch.rated_ahead else "",
            len(outputs), acknowledged - started, time.perf_counter() - acknowledged,
        )
        # A failure, or a blocked account freed, shows in `cdrflow status` at once.
        self._changed = True
        self._last_batch = time.monotonic()
        if blocked or retried:
            await self.publish_status()

    async def _send_outputs(self, outputs: list[OutputMessage]) -> list[tuple[OutputMessage, BaseException]]:
        """Send the batch's outputs (:func:`send_in_order`); give back the messages of one
        account each that the broker would not take.

        A message of several accounts' rows that is refused is sent again as one message
        per account: only the accounts whose own rows are refused (too large) are blocked.
        """
        refused = await send_in_order(self.send_output, outputs)
        left = [(outputs[i], error) for i, error in sorted(refused.items()) if outputs[i].split is None]
        alone = [m for i in sorted(refused) if (split := outputs[i].split) is not None for m in split()]
        if alone:
            log.warning("%d output messages of several accounts refused: sending their %d accounts' rows apart",
                        len(refused) - len(left), len(alone))
            left += [(alone[i], error) for i, error in sorted((await send_in_order(self.send_output, alone)).items())]
        return left

    async def _write(
        self,
        state: PartitionState,
        outcome: BatchOutcome,
        failed: dict[bytes, str],
        messages: list[SourceMessage],
        stored: dict[bytes, AccountRecords | None],
    ) -> None:
        """The partition's account records, then its checkpoint; refusals block accounts."""
        partition = state.partition
        now = datetime.now(timezone.utc)
        while True:
            records: list[tuple[bytes, bytes]] = []
            for key, (part, writes) in outcome.states.items():
                if part == partition and key not in failed:
                    records.extend(writes)
            for key, error in failed.items():
                blocked = blocked_core(key, stored.get(key), messages, error, now)
                if blocked is not None and blocked[0] == partition:
                    records.append(blocked[1])
            try:
                await self._append_until_taken(state, records)
                break
            except StateWriteError as error:  # some records refused for what they are
                for key, why in error.refused.items():
                    account = key.partition(b"\x00")[0]
                    if key == account and account in failed:
                        raise  # even its blocked core (a few hundred bytes): nothing to narrow down
                    failed[account] = f"state record refused by the broker: {why!r}"[:500]
        if partition in outcome.checkpoints:
            await self._append_until_taken(state, [(CHECKPOINT_KEY, checkpoint_value(outcome.checkpoints[partition]))])
        if self.state_log.should_roll(state) and partition in self.mine():
            started = time.perf_counter()
            before = state.generation
            if await self.state_log.roll(state, lambda: partition in self.mine()):
                self._status_sent = 0.0  # the new generation shows at the next tick
                log.info(
                    "state of %s[%d]: generation %d -> %d (%d live bytes) in %.2f s",
                    self.source_topic, partition, before, state.generation, state.live_bytes(),
                    time.perf_counter() - started,
                )

    async def _append_until_taken(self, state: PartitionState, records: list[tuple[bytes, bytes]]) -> None:
        """Append, waiting out a broker that refuses everything; record errors are raised."""
        delay = 0.5
        while True:
            try:
                await self.state_log.append(state, records)
                return
            except StateWriteError as error:
                if any(is_record_error(e) for e in error.refused.values()) or len(error.refused) < len(records):
                    raise
                log.error("the broker refused the state of %s[%d] (%r); again in %.1f s",
                          self.source_topic, state.partition, next(iter(error.refused.values())), delay)
            except Exception as error:  # not even queued: the producer could not reach the broker
                log.error("could not write the state of %s[%d] (%r); again in %.1f s",
                          self.source_topic, state.partition, error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY_S)

    def loaded(self, partition: int) -> None:
        """A partition's state was read again from its log: what this life held of it
        (accounts it could not write, its checkpoint) is rated again from the log."""
        self.unwritten = {k: p for k, p in self.unwritten.items() if p != partition}
        self.frozen.discard(partition)
        self.taken.pop(partition, None)  # the agent resumes it from its checkpoint

    def hold(self, messages: Sequence[SourceMessage], error: BaseException) -> None:
        """The writes of these messages' partitions failed in a way nothing narrowed down to
        an account (a bug, or the broker refusing even a blocked core): hold each
        partition's accounts of them and its checkpoint for the rest of this life, and go
        on with everything else."""
        for partition in sorted({m.partition for m in messages}):
            accounts = {m.key for m in messages if m.partition == partition}
            log.critical(
                "could not write the state of %s[%d] (%r): holding %d account(s) and the partition's checkpoint "
                "until the worker restarts",
                self.source_topic, partition, error, len(accounts), exc_info=True,
            )
            self.unwritten.update(dict.fromkeys(accounts, partition))
            self.frozen.add(partition)

    # ------------------------------------------------------------------------ figures
    def figures(self, state: PartitionState) -> dict[str, Any]:
        """What ``cdrflow status`` shows of a partition's state."""
        blocked = state.blocked()
        return {
            "partition": state.partition,
            "worker": self._who,
            "generation": state.generation,
            "accounts": len(state.fold.accounts),
            "records": sum(len(r) for r in state.fold.accounts.values()),
            "live_bytes": state.live_bytes(),
            "largest_value": state.largest_value(),
            "appended_bytes": state.appended_bytes,
            "appended_total": state.appended_total,
            "checkpoint": state.checkpoint,
            "loaded_in_s": round(state.loaded_in_s, 3),
            "blocked": {k.decode("utf-8", "replace"): v for k, v in blocked.items()},
            "held_in_memory": sorted(
                k.decode("utf-8", "replace") for k, p in self.unwritten.items() if p == state.partition
            ),
            "at": datetime.now(timezone.utc).isoformat(),
        }

    async def publish_status(self) -> None:
        """Each held partition's figures on ``worker.status``."""
        self._status_sent = time.monotonic()
        self._changed = False
        for partition, state in list(self.states.items()):
            try:
                await self.send_status(str(partition).encode(), orjson.dumps(self.figures(state)))
            except Exception as error:  # figures only: the next tick sends them again
                log.warning("could not publish the state figures of partition %d: %r", partition, error)

    async def publish_if_due(self) -> None:
        """The figures, if batches changed them and the worker is idle or they are old."""
        now = time.monotonic()
        if self._changed and (now - self._last_batch >= STATUS_IDLE_S or now - self._status_sent >= STATUS_EVERY_S):
            await self.publish_status()
