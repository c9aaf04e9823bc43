"""What rating remembers between batches, per account (spec 3: the log order).

The state is a handful of small tables: rating a log in any split of batches, passing
the state from one call to the next, gives exactly the results of rating it whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

BALANCES_SCHEMA = {"account_id": pl.String, "balance": pl.Int64}
ALLOWANCE_SCHEMA = {"account_id": pl.String, "month_key": pl.Int32, "allowance_used_s": pl.Int64}
CHARGED_SCHEMA = {"account_id": pl.String, "month_key": pl.Int32, "class": pl.String, "charged_before_s": pl.Int64}
DAILY_SCHEMA = {"account_id": pl.String, "local_day": pl.Date, "spent_before": pl.Int64, "cap_alerted": pl.Boolean}
SEEN_SCHEMA = {"account_id": pl.String, "cdr_id": pl.String}


@dataclass(frozen=True)
class RatingState:
    """Per-account rating state.

    Attributes
    ----------
    balances
        ``account_id, balance``: accounts absent here still have their opening balance.
    allowance
        ``account_id, month_key, allowance_used_s``: package seconds consumed per month
        (``month_key`` = year * 12 + month - 1 of the plan's local calendar).
    charged
        ``account_id, month_key, class, charged_before_s``: seconds charged per month and
        class, which place the next call on the graduated tiers.
    daily
        ``account_id, local_day, spent_before, cap_alerted``: amounts charged per local day
        and whether that day's ``daily_cap_reached`` alert was raised.
    seen
        ``account_id, cdr_id``: ids that passed steps 1-2, for the duplicate check.

    Examples
    --------
    >>> RatingState.empty().balances.height
    0
    """

    balances: pl.DataFrame
    allowance: pl.DataFrame
    charged: pl.DataFrame
    daily: pl.DataFrame
    seen: pl.DataFrame

    @classmethod
    def empty(cls) -> RatingState:
        """The state before the first CDR: every account at its opening balance."""
        return cls(
            balances=pl.DataFrame(schema=BALANCES_SCHEMA),
            allowance=pl.DataFrame(schema=ALLOWANCE_SCHEMA),
            charged=pl.DataFrame(schema=CHARGED_SCHEMA),
            daily=pl.DataFrame(schema=DAILY_SCHEMA),
            seen=pl.DataFrame(schema=SEEN_SCHEMA),
        )

    def for_accounts(self, account_ids: list[str] | pl.Series) -> RatingState:
        """The part of the state that belongs to these accounts."""
        ids = pl.Series("account_id", account_ids, dtype=pl.String)
        return RatingState(**{name: frame.filter(pl.col("account_id").is_in(ids)) for name, frame in self._frames()})

    def merge(self, other: RatingState) -> RatingState:
        """This state with the accounts of ``other`` replaced by ``other``'s view of them."""
        touched = other.account_ids()
        return RatingState(
            **{
                name: pl.concat([mine.filter(~pl.col("account_id").is_in(touched)), theirs])
                for (name, mine), (_, theirs) in zip(self._frames(), other._frames(), strict=True)
            }
        )

    def account_ids(self) -> pl.Series:
        """Every account this state knows something about."""
        return pl.concat([frame.get_column("account_id") for _, frame in self._frames()]).unique()

    def _frames(self) -> list[tuple[str, pl.DataFrame]]:
        return [
            ("balances", self.balances),
            ("allowance", self.allowance),
            ("charged", self.charged),
            ("daily", self.daily),
            ("seen", self.seen),
        ]
