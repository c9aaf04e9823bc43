"""The rating worker's state as small records: an account's state split by key.

Pure (no Kafka): how one account's part of the rating state, its ledger book and its
place in the log become records of bounded size, and back. docs/streaming.md ("The
state records") tells the layout and why:

- the **core** (key = the account id): ``applied_offset``, balance, package credit,
  watermark, ledger book, a failure if the account is blocked, and the list of the
  account's other records;
- a **month** record per charge month still within the horizon (``<id>\\x00m<month_key>``):
  allowance used, seconds charged per class, and each local day's spend and cap alert;
- **seen segments** (``<id>\\x00s<month_key>.<n>``): the ids remembered for the duplicate
  check, a segment of at most ``SEGMENT_MAX_BYTES``, merged size-tiered so that a batch
  writes only its new ids (plus now and then a merge) and an account-month has a few
  dozen segments at most, whatever its traffic.

A batch writes only the records it changed, and the core **last**: the core commits
them. Every other record carries the ``applied_offset`` of the core it belongs to (a
value prefix), and a reader takes such a record only when a core of that offset follows
it (:class:`RecordFold`); a worker killed in the middle of writing an account's records
leaves nothing half-applied. So the changelog written per batch is proportional to the
batch, no value approaches the broker's message limit, and the whole state is bounded by
the horizon (rating.horizon), not by the age of the system.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import numpy as np
import orjson
import polars as pl

from rating.clock import month_key
from rating.state import (
    ALLOWANCE_SCHEMA,
    BALANCES_SCHEMA,
    BURSTS_SCHEMA,
    CHARGED_SCHEMA,
    CREDITS_SCHEMA,
    DAILY_SCHEMA,
    LATEST_SCHEMA,
    SEEN_SCHEMA,
    RatingState,
)

#: Parts of a record key: account id, NUL, the record's name within the account.
SEPARATOR: Final[bytes] = b"\x00"
#: A partition's checkpoint (account part empty: account ids are never empty).
CHECKPOINT_KEY: Final[bytes] = b"\x00checkpoint"
CORE: Final[bytes] = b""
#: A seen segment holds at most this much JSON; half of it makes it "full" (never merged).
SEGMENT_MAX_BYTES: Final[int] = 32 * 1024
#: Segments of one size tier merged together once there are this many.
SEGMENT_FANOUT: Final[int] = 4
_TIER_BASE_BYTES: Final[int] = 256


# ---------------------------------------------------------------------------- keys


def record_key(account: bytes, name: bytes = CORE) -> bytes:
    """The key of an account's record (``name`` empty: its core).

    Examples
    --------
    >>> record_key(b"A001"), record_key(b"A001", b"m24314")
    (b'A001', b'A001\\x00m24314')
    """
    return account if not name else account + SEPARATOR + name


def split_key(key: bytes) -> tuple[bytes, bytes]:
    """``(account, name)`` of a record key (the checkpoint: ``(b"", b"checkpoint")``)."""
    account, _, name = key.partition(SEPARATOR)
    return account, name


def month_name(month_key: int) -> bytes:
    return b"m%d" % month_key


def segment_name(month_key: int, number: int) -> bytes:
    return b"s%d.%d" % (month_key, number)


@functools.lru_cache(maxsize=8192)
def parse_segment_name(name: bytes) -> tuple[int, int] | None:
    """``(month_key, number)`` of a seen segment's name, else None (memoised: a batch
    looks at each of its accounts' names a few times, and they are few)."""
    if not name.startswith(b"s"):
        return None
    month, _, number = name[1:].partition(b".")
    return int(month), int(number)


def parse_month_name(name: bytes) -> int | None:
    return int(name[1:]) if name.startswith(b"m") else None


# ---------------------------------------------------------------------------- values


def tagged(tag: int, payload: bytes) -> bytes:
    """A part record's value: the ``applied_offset`` of the core that commits it, then
    its JSON.

    Examples
    --------
    >>> tagged(41, b"[1]"), untag(tagged(41, b"[1]"))
    (b'41\\n[1]', (41, b'[1]'))
    """
    return b"%d\n" % tag + payload


def untag(value: bytes) -> tuple[int, bytes]:
    tag, _, payload = value.partition(b"\n")
    return int(tag), payload


def checkpoint_value(next_offset: int) -> bytes:
    """The stored value of a checkpoint: the first offset not yet folded into the states."""
    return orjson.dumps({"next_offset": next_offset})


def checkpoint_offset(value: bytes | None) -> int:
    """The offset a stored checkpoint names; 0 (the log's start) when there is none.

    Examples
    --------
    >>> checkpoint_offset(checkpoint_value(42)), checkpoint_offset(None)
    (42, 0)
    """
    return 0 if value is None else int(orjson.loads(value)["next_offset"])


class Record:
    """A stored value, with what it decodes to worked out once (a memo, not state)."""

    __slots__ = ("value", "decoded")

    def __init__(self, value: bytes):
        self.value = value
        self.decoded: Any = None

    def __len__(self) -> int:
        return len(self.value)


#: One account's records: name -> record (``CORE``: its core).
AccountRecords = Mapping[bytes, Record]


@dataclass
class Core:
    """An account's core record: where its log stands and what is not in a part."""

    applied_offset: int = -1
    balance: int | None = None
    latest_month: int | None = None
    ledger: dict[str, Any] | None = None
    #: the first message not applied, why, and when (docs/streaming.md "failures")
    blocked: dict[str, Any] | None = None
    #: names of the account's other records
    parts: list[bytes] = field(default_factory=list)
    #: package credit (issue 23): [amount, end (ISO 8601, UTC), refund]; None: none
    credit: list[Any] | None = None
    #: the unusual_calls rule's last counted charge times (issue 25), ISO 8601 UTC, log order
    bursts: list[str] | None = None

    def encode(self) -> bytes:
        value: dict[str, Any] = {"v": 2, "applied_offset": self.applied_offset}
        for name in ("balance", "latest_month", "ledger", "blocked", "credit", "bursts"):
            if getattr(self, name) is not None:
                value[name] = getattr(self, name)
        value["parts"] = [name.decode() for name in sorted(self.parts)]
        return orjson.dumps(value)

    @classmethod
    def decode(cls, value: bytes | None) -> Core:
        if value is None:
            return cls()
        raw = orjson.loads(value)
        return cls(
            applied_offset=int(raw.get("applied_offset", -1)),
            balance=raw.get("balance"),
            latest_month=raw.get("latest_month"),
            ledger=raw.get("ledger"),
            blocked=raw.get("blocked"),
            parts=[name.encode() for name in raw.get("parts", [])],
            credit=raw.get("credit"),
            bursts=raw.get("bursts"),
        )


def core_of(records: AccountRecords | None) -> Core:
    """The decoded core of an account's records (a fresh copy: the caller may change it)."""
    core = _stored_core(records)
    return Core(
        core.applied_offset, core.balance, core.latest_month, core.ledger, core.blocked, list(core.parts),
        None if core.credit is None else list(core.credit),
        None if core.bursts is None else list(core.bursts),
    )


def _stored_core(records: AccountRecords | None) -> Core:
    """The decoded core itself (the memo: read it, never change it)."""
    record = (records or {}).get(CORE)
    if record is None:
        return _NO_CORE
    if record.decoded is None:
        record.decoded = Core.decode(record.value)
    return record.decoded


_NO_CORE: Final[Core] = Core()


# ---------------------------------------------------------------------------- decoding


def rating_state(accounts: Mapping[str, AccountRecords | None]) -> RatingState:
    """The rating state of these accounts from their records.

    Parts decode once per record (``Record.decoded``); the state's seen hashes are put
    together from each segment's, so a batch pays for the records of its accounts, not
    for parsing them again.
    """
    balances, latest, allowance, charged, credits, bursts = [], [], [], [], [], []
    day_owners: list[tuple[str, int]] = []  # account, days in its month record
    day_texts: list[str] = []
    day_values: list[list[Any]] = []
    segments: list[tuple[str, int, list[str]]] = []  # account, month key, ids
    for account, records in accounts.items():
        if not records:
            continue
        core = _stored_core(records)
        if core.balance is not None:
            balances.append((account, core.balance))
        if core.credit is not None:
            amount, ends, refund = core.credit
            credits.append((account, int(amount), datetime.fromisoformat(ends), bool(refund)))
        if core.latest_month is not None:
            latest.append((account, core.latest_month))
        if core.bursts:
            bursts.extend((account, datetime.fromisoformat(at)) for at in core.bursts)
        for name, record in records.items():
            if name.startswith(b"m"):
                month_key = parse_month_name(name)
                used, charged_s, days = _decoded_month(record)
                if used:
                    allowance.append((account, month_key, used))
                charged.extend((account, month_key, call_class, s) for call_class, s in charged_s.items())
                day_owners.append((account, len(days)))
                day_texts.extend(days)
                day_values.extend(days.values())
            elif name.startswith(b"s"):
                segments.append((account, *_decoded_segment(name, record)))
    state = RatingState(
        balances=pl.DataFrame(balances, schema=BALANCES_SCHEMA, orient="row"),
        allowance=pl.DataFrame(allowance, schema=ALLOWANCE_SCHEMA, orient="row"),
        charged=pl.DataFrame(charged, schema=CHARGED_SCHEMA, orient="row"),
        daily=_daily_frame(day_owners, day_texts, day_values),
        seen=_seen_frame(segments),
        latest=pl.DataFrame(latest, schema=LATEST_SCHEMA, orient="row"),
        credits=pl.DataFrame(credits, schema=CREDITS_SCHEMA, orient="row"),
        bursts=pl.DataFrame(bursts, schema=BURSTS_SCHEMA, orient="row"),
    )
    return state


def _decoded_month(record: Record) -> tuple[int, dict[str, int], dict[str, list[Any]]]:
    """A month record's allowance used, seconds charged per class and days as stored
    (``"YYYY-MM-DD": [spent, alerted]``: the days become a frame a batch at a time)."""
    if record.decoded is None:
        _, payload = untag(record.value)
        raw = orjson.loads(payload)
        record.decoded = (
            int(raw.get("allowance", 0)),
            {k: int(v) for k, v in raw.get("charged", {}).items()},
            raw.get("daily", {}),
        )
    return record.decoded


def _daily_frame(owners: list[tuple[str, int]], days: list[str], values: list[list[Any]]) -> pl.DataFrame:
    """The daily spend rows of the batch's month records, in one frame (the dates parsed
    by polars: one Python call per day was a tenth of a live batch's rating)."""
    if not days:
        return pl.DataFrame(schema=DAILY_SCHEMA)
    lengths = np.fromiter((n for _, n in owners), dtype=np.int64, count=len(owners))
    return pl.DataFrame(
        {
            "account_id": pl.Series([account for account, _ in owners], dtype=pl.String).gather(
                np.repeat(np.arange(len(owners)), lengths)
            ),
            "local_day": pl.Series(days, dtype=pl.String).str.to_date("%Y-%m-%d"),
            "spent_before": pl.Series([int(v[0]) for v in values], dtype=pl.Int64),
            "cap_alerted": pl.Series([bool(v[1]) for v in values], dtype=pl.Boolean),
        },
        schema=DAILY_SCHEMA,
    )


def _decoded_segment(name: bytes, record: Record) -> tuple[int, list[str]]:
    """A seen segment's month key and ids (parsed once per record)."""
    if record.decoded is None:
        month_key, _ = parse_segment_name(name)  # type: ignore[misc]
        record.decoded = (month_key, orjson.loads(untag(record.value)[1]))
    return record.decoded


def _seen_frame(segments: list[tuple[str, int, list[str]]]) -> pl.DataFrame:
    """The ids of the batch's segments (account, month key, ids) as one frame.

    Built once per batch from the segments' parsed ids: a frame per segment cost ~0.16 ms
    each (half of a live batch's rating, ~1,000 accounts with a few new segments each),
    and a frame cut from a batch-wide one would keep the whole of it alive for as long as
    any segment of it lives (polars slices share their buffers).
    """
    if not segments:
        return pl.DataFrame(schema=SEEN_SCHEMA)
    lengths = np.fromiter((len(ids) for _, _, ids in segments), dtype=np.int64, count=len(segments))
    owner = np.repeat(np.arange(len(segments)), lengths)
    return pl.DataFrame(
        {
            "account_id": pl.Series([account for account, _, _ in segments], dtype=pl.String).gather(owner),
            "cdr_id": pl.Series([cdr_id for _, _, ids in segments for cdr_id in ids], dtype=pl.String),
            "month_key": pl.Series([month for _, month, _ in segments], dtype=pl.Int64).gather(owner),
        },
        schema=SEEN_SCHEMA,
    )


def segment_ids(record: Record, account: str, name: bytes) -> list[str]:
    """The ids a seen segment holds."""
    return list(_decoded_segment(name, record)[1])


# ---------------------------------------------------------------------------- encoding


def month_values(state: RatingState, wanted: pl.DataFrame) -> dict[tuple[str, int], bytes]:
    """The JSON of each wanted month record (``wanted``: ``account_id, month_key``), from the
    rating state after a batch; a month the state no longer holds is left out.

    The bytes are those of ``orjson.dumps({"allowance": used, "charged": {class: s},
    "daily": {"YYYY-MM-DD": [spent, alerted]}}, option=OPT_SORT_KEYS)``: sorted keys, so the
    same month gives the same bytes whatever the order of the state's rows, and an
    unchanged month is recognised and not written again. The days (most of a month's
    bytes, ~1,000 accounts' months rewritten by a live batch) are formatted by polars,
    not one Python call per day.

    Examples
    --------
    >>> from datetime import date
    >>> from dataclasses import replace
    >>> state = replace(RatingState.empty(),
    ...     charged=pl.DataFrame([("A", 24314, "local", 60)], schema=CHARGED_SCHEMA, orient="row"),
    ...     daily=pl.DataFrame([("A", date(2026, 3, 2), 500, True)], schema=DAILY_SCHEMA, orient="row"))
    >>> month_values(state, pl.DataFrame({"account_id": ["A"], "month_key": [24314]}))
    {('A', 24314): b'{"allowance":0,"charged":{"local":60},"daily":{"2026-03-02":[500,true]}}'}
    """
    if wanted.height == 0:
        return {}
    keys = ["account_id", "month_key"]
    allowance = dict(
        ((account, month_key), used)
        for account, month_key, used in state.allowance.join(wanted, on=keys, how="semi").iter_rows()
    )
    charged: dict[tuple[str, int], dict[str, int]] = {}
    for account, month_key, call_class, seconds in state.charged.join(wanted, on=keys, how="semi").iter_rows():
        charged.setdefault((account, month_key), {})[call_class] = seconds
    days = (
        state.daily.with_columns(month_key=_MONTH_OF_DAY)
        .join(wanted, on=keys, how="semi")
        .unique(["account_id", "local_day"], keep="last")  # as a dict keeps the last (sorted next)
        .sort("account_id", "month_key", "local_day")
        .group_by(keys, maintain_order=True)
        .agg(
            pl.format(
                '"{}":[{},{}]',
                pl.col("local_day").dt.to_string("%Y-%m-%d"),
                pl.col("spent_before").cast(pl.String).fill_null("null"),
                pl.when(pl.col("cap_alerted")).then(pl.lit("true"))
                .when(pl.col("cap_alerted").not_()).then(pl.lit("false"))
                .otherwise(pl.lit("null")),
            ).str.join(",").alias("daily")
        )
    )
    daily = {(account, month_key): text for account, month_key, text in days.iter_rows()}
    values: dict[tuple[str, int], bytes] = {}
    for key in sorted(allowance.keys() | charged.keys() | daily.keys()):
        used = allowance.get(key, 0)
        values[key] = b'{"allowance":%s,"charged":%s,"daily":{%s}}' % (
            b"null" if used is None else b"%d" % used,
            orjson.dumps(charged.get(key, {}), option=orjson.OPT_SORT_KEYS),
            daily.get(key, "").encode(),
        )
    return values


_MONTH_OF_DAY = month_key(pl.col("local_day"))


def _json_sizes(ids: list[str]) -> list[int]:
    """Bytes each id takes in a JSON list: its UTF-8, quotes and comma (escapes are rare)."""
    return [len(cdr_id.encode("utf-8")) + 3 for cdr_id in ids]


def _chunks(ids: list[str], sizes: list[int] | None = None) -> list[tuple[list[str], int]]:
    """``ids`` cut into segments of at most ``SEGMENT_MAX_BYTES`` of JSON each, with each
    segment's size (``sizes``: each id's, :func:`_json_sizes`, when the caller has them)."""
    if not ids:
        return []
    sizes = _json_sizes(ids) if sizes is None else sizes
    total = 2 + sum(sizes)
    if total <= SEGMENT_MAX_BYTES:  # the usual batch of one account-month
        return [(ids, total)]
    through = np.cumsum(sizes)
    out: list[tuple[list[str], int]] = []
    start, before = 0, 0
    while start < len(ids):
        end = max(int(np.searchsorted(through, before + SEGMENT_MAX_BYTES - 2, side="right")), start + 1)
        out.append((ids[start:end], 2 + int(through[end - 1]) - before))
        start, before = end, int(through[end - 1])
    return out


def _tier(size: int) -> int | None:
    """A segment's size tier (None: full, never merged again)."""
    if size >= SEGMENT_MAX_BYTES // 2:
        return None
    return max(0, int(math.log(max(size, 1) / _TIER_BASE_BYTES, SEGMENT_FANOUT)) + 1) if size >= _TIER_BASE_BYTES else 0


@dataclass
class SegmentPlan:
    """What adding ids to an account-month's seen segments writes."""

    #: segment number -> its ids (new segments, merged or not)
    written: dict[int, list[str]] = field(default_factory=dict)
    #: segment numbers merged away
    deleted: list[int] = field(default_factory=list)


def plan_segments(
    existing: Mapping[int, int],
    new_ids: list[str],
    ids_of: Callable[[int], list[str]],
    new_sizes: list[int] | None = None,
) -> SegmentPlan:
    """Where ``new_ids`` go among an account-month's seen segments.

    ``existing``: segment number -> its size in bytes; ``ids_of(number)`` reads one;
    ``new_sizes``: each new id's JSON size, when known. The new ids become new segments; then, size-tiered, ``SEGMENT_FANOUT`` segments of one
    tier are merged into one of the next, until no tier holds that many. Each id is thus
    written a few times at most (once per tier), and a month holds a few full segments
    plus at most ``SEGMENT_FANOUT - 1`` per tier.

    Examples
    --------
    >>> plan = plan_segments({}, ["a", "b"], lambda n: [])
    >>> plan.written, plan.deleted
    ({0: ['a', 'b']}, [])
    >>> sizes = {0: 10, 1: 10, 2: 10}
    >>> plan = plan_segments(sizes, ["d"], lambda n: ["abc"[n]])
    >>> plan.written, sorted(plan.deleted)
    ({4: ['a', 'b', 'c', 'd']}, [0, 1, 2])
    """
    plan = SegmentPlan()
    sizes = dict(existing)
    next_number = max(sizes, default=-1) + 1
    for chunk, size in _chunks(new_ids, new_sizes):
        plan.written[next_number] = chunk
        sizes[next_number] = size
        next_number += 1
    while True:
        tiers: dict[int, list[int]] = {}
        for number in sorted(sizes):
            tier = _tier(sizes[number])
            if tier is not None:
                tiers.setdefault(tier, []).append(number)
        crowded = [tier for tier, numbers in tiers.items() if len(numbers) >= SEGMENT_FANOUT]
        if not crowded:
            return plan
        merged_numbers = tiers[min(crowded)][:SEGMENT_FANOUT]
        merged: list[str] = []
        for number in merged_numbers:
            merged += plan.written.pop(number) if number in plan.written else ids_of(number)
            if number in existing:
                plan.deleted.append(number)
            del sizes[number]
        for chunk, size in _chunks(merged):
            plan.written[next_number] = chunk
            sizes[next_number] = size
            next_number += 1


# ---------------------------------------------------------------------------- reading a log


class RecordFold:
    """Records read back in log order into the committed state (what a recovery loads).

    A part record waits until the core it belongs to (same tag) is read; a core commits
    its waiting parts and drops the account's records it no longer lists. Parts whose
    core never came (a worker killed mid-write, a blocked account's refused write) are
    dropped when the account's next core comes, and left out at the end.

    Examples
    --------
    >>> fold = RecordFold()
    >>> fold.apply(record_key(b"A", b"m1"), tagged(5, b"{}"))
    >>> fold.accounts
    {}
    >>> fold.apply(b"A", Core(applied_offset=5, parts=[b"m1"]).encode())
    >>> sorted(fold.accounts[b"A"])
    [b'', b'm1']
    """

    def __init__(self) -> None:
        self.accounts: dict[bytes, dict[bytes, Record]] = {}
        self.meta: dict[bytes, bytes] = {}
        self._waiting: dict[bytes, dict[bytes, tuple[int, bytes]]] = {}

    def apply(self, key: bytes, value: bytes | None) -> None:
        account, name = split_key(key)
        if not account:  # a partition-level record (the checkpoint): taken as it comes
            if value is None:
                self.meta.pop(name, None)
            else:
                self.meta[name] = value
            return
        if name:
            if value is not None:
                tag, _ = untag(value)
                self._waiting.setdefault(account, {})[name] = (tag, value)
            return
        if value is None:  # an account forgotten as a whole
            self.accounts.pop(account, None)
            self._waiting.pop(account, None)
            return
        core = Core.decode(value)
        records = self.accounts.setdefault(account, {})
        for part_name, (tag, part_value) in self._waiting.pop(account, {}).items():
            if tag == core.applied_offset:
                records[part_name] = Record(part_value)
        listed = set(core.parts)
        for part_name in [n for n in records if n and n not in listed]:
            del records[part_name]
        records[CORE] = record = Record(value)
        record.decoded = core  # decoded once (core_of hands out copies)

    def after(self, account: bytes, writes: Iterable[tuple[bytes, bytes | None]]) -> dict[bytes, Record] | None:
        """An account's records once ``writes`` are folded in, this fold unchanged (None:
        none). Folding writes a second time changes nothing, so writes already folded in
        may be among them.

        Examples
        --------
        >>> fold = RecordFold()
        >>> fold.apply(b"A", Core(applied_offset=5).encode())
        >>> later = fold.after(b"A", [(b"A", Core(applied_offset=9).encode())])
        >>> core_of(later).applied_offset, core_of(fold.accounts[b"A"]).applied_offset
        (9, 5)
        """
        probe = RecordFold()
        if account in self.accounts:
            probe.accounts[account] = dict(self.accounts[account])
        if account in self._waiting:
            probe._waiting[account] = dict(self._waiting[account])
        for key, value in writes:
            probe.apply(key, value)
        return probe.accounts.get(account)

    def records(self) -> Iterable[tuple[bytes, bytes]]:
        """The committed state as records, each account's parts before its core (a
        snapshot: reading it back gives this state again)."""
        for name, value in self.meta.items():
            yield SEPARATOR + name, value
        for account, records in self.accounts.items():
            core = records.get(CORE)
            if core is None:
                continue
            tag = _stored_core(records).applied_offset  # decoded when it was folded in
            for name, record in records.items():
                if name:
                    _, payload = untag(record.value)
                    yield record_key(account, name), tagged(tag, payload)
            yield account, core.value


# ---------------------------------------------------------------------------- writing a batch


@dataclass
class AccountUpdate:
    """What one batch changed of one account, to be written as records."""

    core: Core
    #: month_key -> the month record's JSON after the batch (months the batch charged)
    months: dict[int, bytes] = field(default_factory=dict)
    #: month_key -> ids the batch remembered for the duplicate check, in log order
    remembered: dict[int, list[str]] = field(default_factory=dict)
    #: month_key -> each remembered id's JSON size, when the caller worked them out at once
    sizes: dict[int, list[int]] = field(default_factory=dict)
    #: months before this one are out of the horizon: their records go
    floor: int | None = None


def account_records(account: bytes, before: AccountRecords | None, update: AccountUpdate) -> list[tuple[bytes, bytes]]:
    """The records to write for one account after a batch: changed parts, then the core
    that commits them (and, by the names it lists, drops the parts it no longer has).

    Examples
    --------
    >>> writes = account_records(b"A", None, AccountUpdate(Core(applied_offset=7), {24314: b"{}"}, {24314: ["x"]}))
    >>> [(key, value[:2]) for key, value in writes]
    [(b'A\\x00m24314', b'7\\n'), (b'A\\x00s24314.0', b'7\\n'), (b'A', b'{"')]
    """
    before = before or {}
    tag = update.core.applied_offset
    names = {name for name in before if name}
    writes: list[tuple[bytes, bytes]] = []
    for month_key, payload in sorted(update.months.items()):
        name = month_name(month_key)
        old = before.get(name)
        if old is None or untag(old.value)[1] != payload:
            writes.append((record_key(account, name), tagged(tag, payload)))
        names.add(name)
    account_id = account.decode("utf-8", "replace")
    for month_key, ids in sorted(update.remembered.items()):
        segments = {
            parsed[1]: len(record)
            for name, record in before.items()
            if (parsed := parse_segment_name(name)) is not None and parsed[0] == month_key
        }

        def ids_of(number: int, month_key: int = month_key) -> list[str]:
            name = segment_name(month_key, number)
            return segment_ids(before[name], account_id, name)

        plan = plan_segments(segments, ids, ids_of, update.sizes.get(month_key))
        for number in plan.deleted:
            names.discard(segment_name(month_key, number))
        for number, chunk in sorted(plan.written.items()):
            names.add(segment_name(month_key, number))
            writes.append((record_key(account, segment_name(month_key, number)), tagged(tag, orjson.dumps(chunk))))
    if update.floor is not None:
        names = {name for name in names if _month_of_name(name) >= update.floor}
    # Parts written for months already out of the horizon are not listed, so not kept.
    writes = [(key, value) for key, value in writes if split_key(key)[1] in names]
    update.core.parts = sorted(names)
    writes.append((account, update.core.encode()))
    return writes


@functools.lru_cache(maxsize=8192)
def _month_of_name(name: bytes) -> int:
    month = parse_month_name(name)
    if month is not None:
        return month
    parsed = parse_segment_name(name)
    return parsed[0] if parsed is not None else 1 << 40
