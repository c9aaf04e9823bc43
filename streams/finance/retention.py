"""Retention of call records: drop monthly partitions older than N months (issue 6).

Call records are kept at least :data:`MIN_KEEP_MONTHS` months (medical customers must
keep two years). ClickHouse 18.16 has no TTL, so retention drops whole monthly
partitions: those whose month is before ``as_of``'s month minus ``keep_months`` (with
24, on any day of 2026-11 everything from 2024-11 on is kept).

Dropped: ``rated_calls`` (partitioned by the UTC month of ``charge_time``), ``alerts``
(by the local month) and the views ``calls_by_day`` and ``missed_calls`` (by the month
of the local day). Before a
partition of ``rated_calls`` goes, the per-account totals of its calls, per local month,
are written to ``retained_call_totals``, which the statement adds to the opening balance:
statements of later months stay exact. Ledger events (``billing_events``) and balances
are the account's financial record and are never dropped; ``rejected_cdrs`` is not
partitioned by month and is kept.

Retention also *settles* the past months of the finance views (:func:`settle_months`):
each monthly partition before the current month is merged into one part (``OPTIMIZE ...
FINAL``), which collapses its replayed copies, so reports read it without FINAL
(``streams.finance.reports.grouped_by_day_range``). Run it daily (cron): a late call of a settled
month adds a part, which the next run merges again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from clickhouse_driver import Client

#: The fewest months of call records retention may keep.
MIN_KEEP_MONTHS = 24
#: The tables retention drops partitions of, rated_calls last (after its totals are kept);
#: the history of corrected calls is partitioned like rated_calls and goes with it.
TABLES = ("calls_by_day", "missed_calls", "alerts", "rated_call_versions", "rated_calls")
#: The finance views (partitioned by local month) whose past months are merged into one part each.
SETTLED_VIEWS = ("calls_by_day", "missed_calls")


class RetentionError(ValueError):
    """Retention was asked to keep fewer than :data:`MIN_KEEP_MONTHS` months."""


@dataclass(frozen=True)
class Dropped:
    """What retention dropped (or would drop): the first month kept, ``YYYY-MM``, and
    ``{"table", "partition", "rows"}`` per partition."""

    cutoff: str
    partitions: list[dict[str, Any]]
    settled: list[dict[str, Any]]


def cutoff_month(as_of: date, keep_months: int) -> int:
    """The first month kept, as ``YYYYMM``: ``as_of``'s month minus ``keep_months``.

    Examples
    --------
    >>> cutoff_month(date(2026, 11, 25), 24)
    202411
    >>> cutoff_month(date(2026, 1, 1), 25)
    202312
    """
    index = as_of.year * 12 + as_of.month - 1 - keep_months
    return (index // 12) * 100 + index % 12 + 1


def apply_retention(client: Client, keep_months: int, *, as_of: date, dry_run: bool = False) -> Dropped:
    """Drop the partitions of :data:`TABLES` before :func:`cutoff_month`.

    Raises
    ------
    RetentionError
        ``keep_months`` below :data:`MIN_KEEP_MONTHS`.
    """
    if keep_months < MIN_KEEP_MONTHS:
        raise RetentionError(
            f"--keep-months {keep_months}: call records are kept at least {MIN_KEEP_MONTHS} months"
        )
    cutoff = cutoff_month(as_of, keep_months)
    parts = client.execute(
        "SELECT table, partition, sum(rows) FROM system.parts "
        "WHERE database = currentDatabase() AND active AND table IN %(tables)s "
        "GROUP BY table, partition",
        {"tables": TABLES},
    )
    doomed = sorted(
        ((table, partition, rows) for table, partition, rows in parts if _month(partition) < cutoff),
        key=lambda part: (TABLES.index(part[0]), part[1]),
    )
    if not dry_run:
        for table, partition, _ in doomed:
            if table == "rated_calls":
                _keep_totals(client, int(partition))
            client.execute(f"ALTER TABLE {table} DROP PARTITION {_literal(partition)}")
    return Dropped(
        cutoff=f"{cutoff // 100:04d}-{cutoff % 100:02d}",
        partitions=[{"table": t, "partition": p, "rows": int(r)} for t, p, r in doomed],
        settled=settle_months(client, before=as_of, dry_run=dry_run),
    )


def settle_months(client: Client, *, before: date, dry_run: bool = False) -> list[dict[str, Any]]:
    """Merge each monthly partition of :data:`SETTLED_VIEWS` of a month before the month of
    ``before`` (its last day is before that day) that is not one merged part yet into one
    (``OPTIMIZE ... FINAL``).

    Reports read such a month without FINAL (exact: the merge collapsed the copies). A late
    call landing in a settled month adds a part, and reports read that month with FINAL
    again until the next settling. Returns ``{"table", "partition", "parts"}`` for each
    partition merged (or that would be, with ``dry_run``).
    """
    rows = client.execute(
        "SELECT table, partition, count(), max(level) FROM system.parts "
        "WHERE database = currentDatabase() AND active AND table IN %(tables)s GROUP BY table, partition",
        {"tables": SETTLED_VIEWS},
    )
    merged = []
    for table, partition, parts, level in sorted(rows):
        if _month(partition) >= before.year * 100 + before.month or is_settled(parts, level):
            continue
        if not dry_run:
            client.execute(f"OPTIMIZE TABLE {table} PARTITION {_literal(partition)} FINAL")
        merged.append({"table": table, "partition": partition.strip("'"), "parts": int(parts)})
    return merged


def _month(partition: str) -> int:
    """``YYYYMM`` of a partition value: ``202603`` (monthly) or ``2026-03-01`` (daily)."""
    text = partition.strip("'")
    return int(text) if text.isdigit() else int(text[:4] + text[5:7])


def _literal(partition: str) -> str:
    """A partition value as SQL: ``202603`` or ``'2026-03-01'``."""
    text = partition.strip("'")
    return str(int(text)) if text.isdigit() else f"'{date.fromisoformat(text).isoformat()}'"


def is_settled(parts: int, level: int) -> bool:
    """Whether a partition of ``parts`` active parts, the highest of merge level ``level``,
    holds no copies: one part made by a merge, which collapsed them."""
    return parts == 1 and level > 0


def _keep_totals(client: Client, partition: int) -> None:
    """Per account and local month, what the calls of a rated_calls partition add up to."""
    client.execute(
        "INSERT INTO retained_call_totals (account_id, month, `partition`, calls, billable_s, amount, retained_time, "
        "credit_used) "
        "SELECT account_id, substring(toString(local_day), 1, 7) AS month, toUInt32(%(partition)s), "
        "count(), sum(billable_s), sum(amount), now(), sum(credit_used) "
        "FROM rated_calls FINAL WHERE toYYYYMM(charge_time) = %(partition)s GROUP BY account_id, month",
        {"partition": partition},
    )
