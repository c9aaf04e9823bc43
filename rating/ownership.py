"""Who holds a 400 number at a call's charge time (issue 25: number transfers).

A number moved from one account to another (``tariffs.models.Transfer``) bills its calls
by their charge time: the account that held it then. Both the feeds' routing
(``streams.feeds.routing``) and the engine (``rating.engine``, offline) look it up here,
so a call goes to the same account on every path, a late one included.

Pure column work: only the rows of transferred numbers are looked up (an as-of join per
number over its owners), so a catalogue without transfers costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Final

import polars as pl

from tariffs import Tariffs

#: The "since" of a number's first owner: before any call.
_BEGINNING: Final[datetime] = datetime(1900, 1, 1, tzinfo=timezone.utc)
OWNERS_SCHEMA: Final = {"called": pl.String, "since": pl.Datetime("us", "UTC"), "owner": pl.String}


def owners_frame(owners: Mapping[str, Sequence[tuple[datetime | None, str | None]]]) -> pl.DataFrame:
    """``called, since, owner``: one row per owner of each transferred number.

    Examples
    --------
    >>> at = datetime(2026, 4, 1, tzinfo=timezone.utc)
    >>> owners_frame({"4008000001": [(None, "A"), (at, "B")]}).get_column("owner").to_list()
    ['A', 'B']
    """
    rows = [
        (number, _BEGINNING if since is None else since.astimezone(timezone.utc), owner)
        for number, chain in owners.items()
        for since, owner in chain
    ]
    return pl.DataFrame(rows, schema=OWNERS_SCHEMA, orient="row")


def owner_at(frame: pl.DataFrame, owners: pl.DataFrame) -> pl.DataFrame:
    """The holder of each row's ``called`` number at its ``charge`` (a UTC instant), for the
    rows of transferred numbers: ``owned`` (the number has owners over time) and ``owner``
    (the account then; null before any, or for a row without a charge time), row-aligned.

    Examples
    --------
    >>> at = datetime(2026, 4, 1, tzinfo=timezone.utc)
    >>> owners = owners_frame({"4008000001": [(None, "A"), (at, "B")]})
    >>> calls = pl.DataFrame({"called": ["4008000001", "4008000001", "4009"],
    ...     "charge": [datetime(2026, 3, 31, tzinfo=timezone.utc), at, at]})
    >>> owner_at(calls, owners).rows()
    [(True, 'A'), (True, 'B'), (False, None)]
    """
    numbers = owners.get_column("called").unique()
    probe = frame.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"),
        pl.col("called"),
        pl.col("charge").dt.convert_time_zone("UTC").dt.cast_time_unit("us"),
    )
    owned = probe.get_column("called").is_in(numbers.implode()).fill_null(False)
    found = (
        probe.filter(owned & pl.col("charge").is_not_null())
        .sort("charge")
        .join_asof(owners.sort("since"), left_on="charge", right_on="since", by="called", strategy="backward",
                   check_sortedness=False)
        .select("_row", "owner")
    )
    return (
        probe.select("_row")
        .join(found, on="_row", how="left", maintain_order="left")
        .select(pl.Series("owned", owned), "owner")
    )


class Routing(dict[str, str]):
    """Each number's account now (a plain ``dict``), with ``owners``: the owners over time
    of the numbers that were transferred (:func:`owners_frame`). The feeds route with it
    (``streams.feeds.routing.route``): a call of a transferred number goes to the account
    that held it at the call's charge time.

    >>> Routing({"4008000001": "B"}, owners_frame({})).owners.height
    0
    """

    def __init__(self, current: Mapping[str, str], owners: pl.DataFrame):
        super().__init__(current)
        self.owners = owners


def routing_of(tariffs: Tariffs) -> Routing:
    """The :class:`Routing` of a catalogue."""
    return Routing(tariffs.account_of_number(), owners_frame(tariffs.owners()))
