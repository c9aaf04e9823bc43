"""The ClickHouse tables the pipeline lands in, as contracts: their columns and types.

Pure data: the batch code, the worker, export and rerate import these; the client and
its inserts are in streams.clickhouse.insert."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import polars as pl

#: What a frame may carry about where its rows came from (all three tables store it).
ORIGIN_COLUMNS: Mapping[str, pl.DataType] = {
    "source": pl.String(),
    "ingest_id": pl.String(),
    "topic": pl.String(),
    "partition": pl.Int32(),
    "offset": pl.Int64(),
}


@dataclass(frozen=True)
class Table:
    """A ClickHouse table and the polars frame it stores.

    Attributes
    ----------
    name
        The table (unqualified: the client's database).
    schema
        The columns every frame must have, with the dtypes ``rating.rate`` gives them.
    absent
        Columns whose null ("does not apply") is stored as a value that cannot occur
        otherwise (``''``, ``0``): column -> that value. Cheaper than ``Nullable``.
    nullable
        Columns stored ``Nullable``, where no such value exists. The other columns of
        ``schema`` must hold no null.
    optional
        Columns a frame may carry; the table fills them when absent.
    micros
        Datetime columns stored as ``DateTime`` (whole seconds) plus a ``UInt32`` column
        of microseconds (ClickHouse 18.16 has no DateTime64): column -> microseconds column.
    server_filled
        Columns of the table that the server fills at insert (a ``DEFAULT``); never sent.
    """

    name: str
    schema: pl.Schema
    absent: Mapping[str, object] = field(default_factory=dict)
    nullable: frozenset[str] = frozenset()
    optional: Mapping[str, pl.DataType] = field(default_factory=dict)
    micros: Mapping[str, str] = field(default_factory=dict)
    server_filled: frozenset[str] = frozenset()


RATED = Table(
    "rated_calls",
    pl.Schema(
        {
            "cdr_id": pl.String(),
            "account_id": pl.String(),
            "status": pl.String(),
            "class": pl.String(),
            "offpeak": pl.Boolean(),
            "billable_s": pl.Int64(),
            "allowance_s": pl.Int64(),
            "charged_s": pl.Int64(),
            "base": pl.Int64(),
            "discount": pl.Int64(),
            "minimum_uplift": pl.Int64(),
            "cap_waived": pl.Int64(),
            "amount": pl.Int64(),
            "balance": pl.Int64(),
            "line": pl.Int64(),
            "called": pl.String(),
            "charge_time": pl.Datetime("us", "UTC"),
            "local_day": pl.Date(),
            "plan_id": pl.String(),
            "plan_version": pl.String(),
            "rate_segment": pl.String(),
            "tier_first": pl.Int32(),
            "tier_last": pl.Int32(),
            "daily_cap": pl.Int64(),
            "offpeak_percent": pl.Int64(),
        }
    ),
    # Unbilled calls have no plan version, rate or tier; tiers are numbered from 1.
    absent={"plan_version": "", "rate_segment": "", "tier_first": 0, "tier_last": 0},
    nullable=frozenset({"daily_cap"}),
    # The finance columns (migration 0010) are optional so that frames from before them
    # (a message produced by an older worker) still land: '' or -1, "not recorded".
    optional={
        **ORIGIN_COLUMNS,
        "event_id": pl.String(),
        "version": pl.UInt64(),
        "disposition": pl.String(),
        "caller": pl.String(),
        "caller_area": pl.String(),
        "billsec": pl.Int64(),
        "local_hour": pl.Int8(),
        # migration 0015: the correction that made this version ('' for a first rating)
        "correction_id": pl.String(),
        # migration 0023 (issue 23): package credit the call drew on, and what was left
        "credit_used": pl.Int64(),
        "credit": pl.Int64(),
        # migration 0018: how the caller was placed ('' for rows rated before it)
        "caller_origin": pl.String(),
        # migration 0020: 'unbilled' for an unbilled row, '' for a billed one (of the
        # sorting key: one call's two records do not collapse; insert_rated fills it)
        "record": pl.String(),
    },
    micros={"charge_time": "charge_us"},
)


REJECTED = Table(
    "rejected_cdrs",
    pl.Schema(
        {
            "line": pl.Int64(),
            "cdr_id": pl.String(),
            "reason": pl.String(),
            "detail": pl.String(),
            "account_id": pl.String(),
        }
    ),
    absent={"account_id": ""},  # no account known, or a malformed line
    optional=ORIGIN_COLUMNS,
    server_filled=frozenset({"landed_time"}),  # migration 0011: when the row landed
)


ALERTS = Table(
    "alerts",
    pl.Schema(
        {
            "account_id": pl.String(),
            "kind": pl.String(),
            "cdr_id": pl.String(),
            "balance": pl.Int64(),
            "line": pl.Int64(),
            "local_day": pl.Date(),
        }
    ),
    # migration 0016: 1 when a correction took the alert back (a higher version)
    optional={**ORIGIN_COLUMNS, "version": pl.UInt64(), "cancelled": pl.UInt8()},
)


#: Ledger events (``rating.ledger`` via ``streams.worker.batch``): schemas/migrations/0002.
BILLING_EVENTS = Table(
    "billing_events",
    pl.Schema(
        {
            "event_id": pl.String(),
            "account_id": pl.String(),
            "kind": pl.String(),
            "effective_time": pl.Datetime("us", "UTC"),
            "local_day": pl.Date(),
            "month": pl.String(),
            "amount": pl.Int64(),
            "opening_balance": pl.Int64(),
            "balance": pl.Int64(),
            "plan_id": pl.String(),
            "reference": pl.String(),
            "detail": pl.String(),
        }
    ),
    optional={
        "topic": pl.String(), "partition": pl.Int32(), "offset": pl.Int64(), "version": pl.UInt64(),
        # migration 0024 (issue 23): what the event did to the package credit, and the credit after it
        "credit_change": pl.Int64(), "credit": pl.Int64(),
        # migration 0030 (issue 24): the document an InvoiceIssued (...NoteIssued) event issued, JSON
        "document": pl.String(),
        # migration 0040 (issue 25): NumberTransferred on the old account: the account it went to
        "transferred_to": pl.String(),
    },
    micros={"effective_time": "effective_us"},
)


#: Each account's balance and state after a batch; ``version`` = the log offset.
BALANCES = Table(
    "account_balances",
    pl.Schema(
        {
            "account_id": pl.String(),
            "balance": pl.Int64(),
            "state": pl.String(),
            "plan_id": pl.String(),
            "updated_time": pl.Datetime("us", "UTC"),
            "version": pl.UInt64(),
        }
    ),
    # migration 0025 (issue 23): package credit left and its end (ISO 8601, '' when none)
    optional={
        "events": pl.UInt64(), "credit": pl.Int64(), "credit_expires": pl.String(),
        # migration 0041 (issue 25): the lifecycle's next deadline (frozen, released, closed) and when
        "next_step": pl.String(), "next_step_at": pl.String(),
    },
)


DEAD_LETTERS = Table(
    "dead_letters",
    pl.Schema(
        {
            "kind": pl.String(),
            "topic": pl.String(),
            "partition": pl.Int32(),
            "offset": pl.Int64(),
            "reason": pl.String(),
            "rows": pl.UInt32(),
            "message": pl.String(),
        }
    ),
    server_filled=frozenset({"landed_time"}),  # migration 0019: when the message landed there
)

#: Invoices and notes (migration 0031, issue 24): one row per document, from the
#: documents of billing_events (streams.clickhouse.insert.insert_billing_events).
INVOICES = Table(
    "invoices",
    pl.Schema(
        {
            "invoice_no": pl.String(),
            "seller_id": pl.String(),
            "kind": pl.String(),
            "account_id": pl.String(),
            "month": pl.String(),
            "issued_time": pl.Datetime("us", "UTC"),
            "issued_day": pl.Date(),
            "corrects": pl.String(),
            "corrects_month": pl.String(),
            "gross": pl.Int64(),
            "tax": pl.Int64(),
            "net": pl.Int64(),
            "line_count": pl.UInt32(),
            "event_id": pl.String(),
        }
    ),
    optional={"version": pl.UInt64()},
)

#: The lines of invoices and notes (migration 0031).
INVOICE_LINES = Table(
    "invoice_lines",
    pl.Schema(
        {
            "invoice_no": pl.String(),
            "seller_id": pl.String(),
            "line": pl.UInt32(),
            "kind": pl.String(),
            "account_id": pl.String(),
            "month": pl.String(),
            "issued_day": pl.Date(),
            "line_kind": pl.String(),
            "item": pl.String(),
            "charge_month": pl.String(),
            "description": pl.String(),
            "quantity": pl.Int64(),
            "seconds": pl.Int64(),
            "category": pl.String(),
            "rate": pl.String(),
            "gross": pl.Int64(),
            "tax": pl.Int64(),
            "net": pl.Int64(),
        }
    ),
    optional={"version": pl.UInt64()},
)


#: The tables of this module, by name.
TABLES: Mapping[str, Table] = {
    table.name: table for table in (RATED, REJECTED, ALERTS, BILLING_EVENTS, BALANCES, DEAD_LETTERS, INVOICES, INVOICE_LINES)
}
