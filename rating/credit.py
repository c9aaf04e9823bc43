"""Package credit (issue 23; spec/rating.md 5): calls draw on it before the balance, until it ends.

A term package grants credit with an end (``credit_expires``). In log order, each call's
amount is taken from the credit first and from the balance for the rest; at the first
call of the account whose charge time is at or after the end, the credit left ends
before that call is charged: it is forfeited, or it goes to the balance when the package
says ``unused = "refund"``. From then on calls are charged from the balance only.

Low-balance and arrears alerts judge **funds**, credit plus balance (docs/rules.md):
``funds_before`` is what the account had just before the call (after an ending at it),
``funds_after`` what it has after.

Pure column expressions over a batch in log order, with per-account seeds (the state of
the batches before), so any split of a log into batches gives the same result.
"""

from __future__ import annotations

import polars as pl

_ACCOUNT = "account_idx"


def with_credit(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Draw the batch's amounts on each account's credit, then on its balance.

    Needs, per row in log order: ``account_idx``, ``charge``, ``amount``,
    ``balance_before_batch`` and the account's credit seeds ``credit_before_batch``,
    ``credit_ends`` (null: no credit) and ``credit_refund``.

    Adds ``credit_used`` (drawn from the credit by this call), ``credit`` (left after it),
    ``credit_expired`` (the credit that ended at this call, before it was charged; 0 on
    every other row), ``credit_ended`` (the credit had ended by this row), ``balance``
    (after the call), ``funds_before`` and ``funds_after``.

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> at = [datetime(2026, 3, d, tzinfo=timezone.utc) for d in (1, 2, 9, 10)]
    >>> batch = pl.LazyFrame({"account_idx": [0] * 4, "charge": at, "amount": [600, 600, 100, 100],
    ...     "balance_before_batch": [5000] * 4, "credit_before_batch": [1000] * 4,
    ...     "credit_ends": [datetime(2026, 3, 5, tzinfo=timezone.utc)] * 4, "credit_refund": [False] * 4})
    >>> with_credit(batch).select("credit_used", "credit", "credit_expired", "balance").collect().rows()
    [(600, 400, 0, 5000), (400, 0, 0, 4800), (0, 0, 0, 4700), (0, 0, 0, 4600)]
    """
    ends = pl.col("credit_ends")
    ended = (pl.col("charge") >= ends).fill_null(False).cum_max().over(_ACCOUNT)
    credit0 = pl.col("credit_before_batch")
    live = pl.when(pl.col("credit_ended")).then(0).otherwise(pl.col("amount"))
    # min(credit, what the live calls so far cost): the credit drawn up to this row
    drawn = pl.min_horizontal(credit0, live.cum_sum().over(_ACCOUNT))
    first_ended = pl.col("credit_ended") & ~pl.col("credit_ended").shift(1).over(_ACCOUNT).fill_null(False)
    frame = frame.with_columns(credit_ended=ended).with_columns(drawn_through=drawn)
    frame = frame.with_columns(
        credit_used=pl.col("drawn_through") - pl.col("drawn_through").shift(1).over(_ACCOUNT).fill_null(0),
        credit=pl.when(pl.col("credit_ended")).then(0).otherwise(credit0 - pl.col("drawn_through")),
        credit_expired=pl.when(first_ended).then(credit0 - pl.col("drawn_through")).otherwise(0),
    )
    refunded = pl.when(pl.col("credit_refund")).then(pl.col("credit_expired")).otherwise(0)
    cash = pl.col("amount") - pl.col("credit_used") - refunded
    frame = frame.with_columns(balance=pl.col("balance_before_batch") - cash.cum_sum().over(_ACCOUNT))
    return frame.with_columns(funds_after=pl.col("balance") + pl.col("credit")).with_columns(
        funds_before=pl.col("funds_after") + pl.col("amount")
    ).drop("drawn_through")


def without_credit(frame: pl.LazyFrame) -> pl.LazyFrame:
    """:func:`with_credit` for a batch no account of which has credit: the balance alone."""
    balance = pl.col("balance_before_batch") - pl.col("amount").cum_sum().over(_ACCOUNT)
    return frame.with_columns(
        balance=balance,
        credit_used=pl.lit(0, dtype=pl.Int64),
        credit=pl.lit(0, dtype=pl.Int64),
        credit_expired=pl.lit(0, dtype=pl.Int64),
        credit_ended=pl.lit(False),
    ).with_columns(funds_after=pl.col("balance"), funds_before=pl.col("balance") + pl.col("amount"))
