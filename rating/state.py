"""What rating remembers between batches, per account (spec 3: the log order).

The state is a handful of small tables: rating a log in any split of batches, passing
the state from one call to the next, gives exactly the results of rating it whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypeVar

import polars as pl

BALANCES_SCHEMA = {"account_id": pl.String, "balance": pl.Int64}
ALLOWANCE_SCHEMA = {"account_id": pl.String, "month_key": pl.Int64, "allowance_used_s": pl.Int64}
CHARGED_SCHEMA = {"account_id": pl.String, "month_key": pl.Int64, "class": pl.String, "charged_before_s": pl.Int64}
DAILY_SCHEMA = {"account_id": pl.String, "local_day": pl.Date, "spent_before": pl.Int64, "cap_alerted": pl.Boolean}
SEEN_SCHEMA = {"account_id": pl.String, "cdr_id": pl.String}

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
        )

    def to_accounts(self) -> dict[str, dict[str, object]]:
        """Each account's part of the state as a JSON-ready dict (a Faust table value).

        Examples
        --------
        >>> state = RatingState.empty()
        >>> RatingState.from_accounts(state.to_accounts()).balances.height
        0
        """
        out: dict[str, dict[str, object]] = {}

        def slot(account_id: str) -> dict[str, object]:
            return out.setdefault(
                account_id, {"balance": None, "allowance": {}, "charged": {}, "daily": {}, "seen": []}
            )

        for account_id, balance in self.balances.iter_rows():
            slot(account_id)["balance"] = balance
        for account_id, month_key, used in self.allowance.iter_rows():
            slot(account_id)["allowance"][str(month_key)] = used
        for account_id, month_key, call_class, charged in self.charged.iter_rows():
            slot(account_id)["charged"][f"{month_key}|{call_class}"] = charged
        for account_id, day, spent, alerted in self.daily.iter_rows():
            slot(account_id)["daily"][day.isoformat()] = [spent, alerted]
        for account_id, ids in self.seen.group_by("account_id").agg("cdr_id").iter_rows():
            slot(account_id)["seen"] = ids
        return out

    @classmethod
    def from_accounts(cls, accounts: dict[str, dict[str, object]]) -> RatingState:
        """The inverse of :meth:`to_accounts`."""
        balances, allowance, charged, daily, seen = [], [], [], [], []
        for account_id, part in accounts.items():
            if part.get("balance") is not None:
                balances.append((account_id, part["balance"]))
            allowance += [(account_id, int(k), v) for k, v in part.get("allowance", {}).items()]
            for key, value in part.get("charged", {}).items():
                month_key, call_class = key.split("|", 1)
                charged.append((account_id, int(month_key), call_class, value))
            daily += [(account_id, date.fromisoformat(k), v[0], v[1]) for k, v in part.get("daily", {}).items()]
            seen += [(account_id, cdr_id) for cdr_id in part.get("seen", [])]
        return cls(
            balances=pl.DataFrame(balances, schema=BALANCES_SCHEMA, orient="row"),
            allowance=pl.DataFrame(allowance, schema=ALLOWANCE_SCHEMA, orient="row"),
            charged=pl.DataFrame(charged, schema=CHARGED_SCHEMA, orient="row"),
            daily=pl.DataFrame(daily, schema=DAILY_SCHEMA, orient="row"),
            seen=pl.DataFrame(seen, schema=SEEN_SCHEMA, orient="row"),
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
