"""A whole rating state through the worker's records and back (streams.worker.state_records)."""

from __future__ import annotations

import polars as pl

from rating import RatingState
from rating.clock import month_key
from streams.worker.state_records import AccountUpdate, Core, RecordFold, account_records, month_values, rating_state


def via_records(state: RatingState) -> RatingState:
    """``state`` written as each account's records, folded as a recovery reads them, and
    decoded again: what a worker that restarts rates with."""
    fold = RecordFold()
    balances = dict(state.balances.iter_rows())
    latest = dict(state.latest.iter_rows())
    credits = {a: [c, e.isoformat(), r] for a, c, e, r in state.credits.iter_rows()}
    months = pl.concat(
        [
            state.allowance.select("account_id", "month_key"),
            state.charged.select("account_id", "month_key"),
            state.daily.select(
                "account_id",
                month_key(pl.col("local_day")).alias("month_key"),
            ),
        ]
    ).unique()
    values = month_values(state, months)
    for account in state.account_ids().to_list():
        update = AccountUpdate(
            core=Core(applied_offset=0, balance=balances.get(account), latest_month=latest.get(account),
                      credit=credits.get(account)),
            months={m: v for (a, m), v in values.items() if a == account},
            remembered={
                m: group.get_column("cdr_id").to_list()
                for (m,), group in state.seen.filter(pl.col("account_id") == account).group_by(
                    "month_key", maintain_order=True
                )
            },
        )
        for key, value in account_records(account.encode(), None, update):
            fold.apply(key, value)
    return rating_state({a.decode(): records for a, records in fold.accounts.items()})
