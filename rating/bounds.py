"""Which charge times are rated at all: a switch clock gone wrong is not a call.

A call whose charge time (spec 4 step 5) is outside the bounds is rejected
``invalid_time`` before the horizon looks at it (docs/rules.md, "Times that are no
call's"), so it never moves its account's watermark, and it lands nowhere a time cannot
be stored (ClickHouse's DateTime ends in 2106). Two bounds, both fixed by the log alone,
so that a replay or a correction of the same log judges every call the same:

- an absolute window ``[earliest, latest)``, by default 2001-01-01 to 2100-01-01 UTC
  (a clock reset to 1970 or 2000-01-01, a year typed as 2107 or 9999);
- at most ``ahead`` after the instant the line was read, when the feed stamped it in the
  batch (``read_at``: a file's modification time for ``rate`` and ``ingest``, the time a
  line was read for ``ingest --tail``, the record's timestamp for ``route``): a switch
  does not write a call before it happened. 24 hours by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import polars as pl


@dataclass(frozen=True)
class TimeBounds:
    """The charge times rated: ``[earliest, latest)`` and at most ``ahead`` after ``read_at``.

    Examples
    --------
    >>> TimeBounds().describe()
    '[2001-01-01T00:00:00Z, 2100-01-01T00:00:00Z), and at most 24 h after the line was read'
    """

    earliest: datetime = datetime(2001, 1, 1, tzinfo=UTC)
    latest: datetime = datetime(2100, 1, 1, tzinfo=UTC)
    ahead: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if self.earliest.tzinfo is None or self.latest.tzinfo is None:
            raise ValueError("time bounds must carry a time zone")
        if not self.earliest < self.latest:
            raise ValueError(f"the earliest call time {self.earliest} must be before the latest {self.latest}")
        if self.ahead < timedelta(0):
            raise ValueError(f"the time ahead of reading must not be negative, got {self.ahead}")

    def describe(self) -> str:
        hours = self.ahead / timedelta(hours=1)
        return f"[{_text(self.earliest)}, {_text(self.latest)}), and at most {hours:g} h after the line was read"

    def outside(self, charge: pl.Expr, read_at: pl.Expr) -> pl.Expr:
        """Whether a charge time (UTC) is outside the bounds (null times are not)."""
        return (
            (charge < pl.lit(self.earliest)) | (charge >= pl.lit(self.latest)) | (charge > read_at + pl.lit(self.ahead))
        ).fill_null(False)

    def detail(self, charge: pl.Expr, read_at: pl.Expr) -> pl.Expr:
        """Why a charge time is outside, in words."""
        shown = charge.dt.to_string("%Y-%m-%dT%H:%M:%SZ")
        hours = self.ahead / timedelta(hours=1)
        return (
            pl.when((charge < pl.lit(self.earliest)) | (charge >= pl.lit(self.latest)))
            .then(
                pl.format(
                    "charge time {} is outside the times rated, [{}, {}): a switch clock gone wrong?",
                    shown, pl.lit(_text(self.earliest)), pl.lit(_text(self.latest)),
                )
            )
            .otherwise(
                pl.format(
                    "charge time {} is more than {} h after the line was read ({}): a switch clock ahead?",
                    shown, pl.lit(f"{hours:g}"), read_at.dt.to_string("%Y-%m-%dT%H:%M:%SZ"),
                )
            )
        )  # fmt: skip


def _text(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


DEFAULT_TIME_BOUNDS: Final[TimeBounds] = TimeBounds()
