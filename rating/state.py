"""What rating remembers between batches, per account (spec 3: the log order).

The state is a handful of small tables: rating a log in any split of batches, passing
the state from one call to the next, gives exactly the results of rating it whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import polars as pl

BALANCES_SCHEMA = {"account_id": pl.String, "balance": pl.Int64}
ALLOWANCE_SCHEMA = {"account_id": pl.String, "month_key": pl.Int64, "allowance_used_s": pl.Int64}
CHARGED_SCHEMA = {"account_id": pl.String, "month_key": pl.Int64, "class": pl.String, "charged_before_s": pl.Int64}
DAILY_SCHEMA = {"account_id": pl.String, "local_day": pl.Date, "spent_before": pl.Int64, "cap_alerted": pl.Boolean}
SEEN_SCHEMA = {"account_id": pl.String, "cdr_id": pl.String, "month_key": pl.Int64}
LATEST_SCHEMA = {"account_id": pl.String, "latest_month": pl.Int64}
CREDITS_SCHEMA = {
    "account_id": pl.String,
    "credit": pl.Int64,
    "credit_expires": pl.Datetime("us", "UTC"),
    "credit_refund": pl.Boolean,
}

#: issue 25: each account's last counted calls of the unusual_calls rule (rating.unusual_calls)
BURSTS_SCHEMA = {"account_id": pl.String, "charge": pl.Datetime("us", "UTC")}

_T = TypeVar("_T")


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
        ``account_id, cdr_id, month_key``: ids that passed steps 1-2, for the duplicate
        check, with the month of their charge time.
    latest
        ``account_id, latest_month``: each account's watermark, the latest charge month of
        its log so far (``rating.horizon``). Every table above keeps only the months
        within the horizon of it.
    credits
        ``account_id, credit, credit_expires, credit_refund``: package credit (issue 23)
        that calls draw on before the balance, until ``credit_expires``; then the rest is
        forfeited, or goes to the balance when ``credit_refund``. An account in
        ``balances`` but not here has none; one in neither still has the credit of the
        package it opened with (``Catalog.accounts``).
    bursts
        ``account_id, charge``: the charge times of each account's last counted calls of
        the catalogue's ``unusual_calls`` rule, in log order (issue 25; rating.unusual_calls).

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
    latest: pl.DataFrame
    credits: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=CREDITS_SCHEMA))
    bursts: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=BURSTS_SCHEMA))
    #: Lookups the engine derives from the tables above (e.g. hashes of ``seen``), each kept
    #: with the table it came from: see :meth:`derived`. Not part of the state's value.
    _derived: dict[str, tuple[tuple[object, ...], Any]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def derived(self, name: str, sources: tuple[object, ...], build: Callable[[], _T]) -> _T:
        """``build()``, computed once for as long as ``sources`` are the objects it was built from.

        Each state starts with no lookups (the field is not copied by ``dataclasses.replace``),
        and a lookup is only reused while each of its sources (a table of this state, a
        catalogue frame) is the very same object it was built from.
        """
        hit = self._derived.get(name)
        if hit is not None and len(hit[0]) == len(sources) and all(a is b for a, b in zip(hit[0], sources)):
            return hit[1]
        value = build()
        self._derived[name] = (sources, value)
        return value

    def remember(self, name: str, sources: tuple[object, ...], value: Any) -> None:
        """Store a lookup worked out incrementally from ``sources`` (see :meth:`derived`)."""
        self._derived[name] = (sources, value)

    @classmethod
    def empty(cls) -> RatingState:
        """The state before the first CDR: every account at its opening balance."""
        return cls(
            balances=pl.DataFrame(schema=BALANCES_SCHEMA),
            allowance=pl.DataFrame(schema=ALLOWANCE_SCHEMA),
            charged=pl.DataFrame(schema=CHARGED_SCHEMA),
            daily=pl.DataFrame(schema=DAILY_SCHEMA),
            seen=pl.DataFrame(schema=SEEN_SCHEMA),
            latest=pl.DataFrame(schema=LATEST_SCHEMA),
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
            ("latest", self.latest),
            ("credits", self.credits),
            ("bursts", self.bursts),
        ]
