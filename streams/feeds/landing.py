"""``cdrflow ingest --wait``: how many lines of an ingest have landed in ClickHouse, and what became of them.

Every ingested line ends as exactly one row of ``rated_calls`` (rated or unbilled) or of
``rejected_cdrs`` (spec 6), each carrying the ``ingest_id`` of the run that sent it. The
sink may insert a row more than once (at-least-once delivery); the tables collapse the
copies, so every count here reads with ``FINAL``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from clickhouse_driver import Client
from clickhouse_driver.errors import Error as ClickHouseError

from schemas.money import UNITS_PER_CNY
from streams.clickhouse.query import query_client
from streams.settings import Settings

#: The tables an ingest's lines land in (schemas/migrations), all read with FINAL.
LANDING_TABLES: Final[tuple[str, ...]] = ("rated_calls", "rejected_cdrs", "alerts")


class LandingError(RuntimeError):
    """ClickHouse cannot be asked (unreachable, tables missing); the message says why."""


class LandingTimeout(RuntimeError):
    """Not every line landed in time; ``landed`` holds what had."""

    def __init__(self, message: str, landed: Landed):
        super().__init__(message)
        self.landed = landed


@dataclass
class Landed:
    """The fate of the lines of some ingests, as ClickHouse holds it."""

    rated: int = 0
    unbilled: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    amount: int = 0
    alerts: Counter[str] = field(default_factory=Counter)

    @property
    def lines(self) -> int:
        return self.rated + self.unbilled + sum(self.rejected.values())


def _units(value: Any) -> int:
    # Int64 units (the project's schema); a Decimal(…, 4) column would come back in CNY.
    if isinstance(value, Decimal):
        return int(value * UNITS_PER_CNY)
    return int(value or 0)


def _address(settings: Settings) -> str:
    return settings.redacted_clickhouse_url()


def missing_tables(client: Client, database: str) -> list[str]:
    """The landing tables not (yet) in ``database``."""
    present = {
        name
        for (name,) in client.execute(
            "SELECT name FROM system.tables WHERE database = %(database)s", {"database": database}
        )
    }
    return [name for name in LANDING_TABLES if name not in present]


def count_landed(client: Client, ingest_ids: Sequence[str]) -> Landed:
    """Rated, unbilled, rejected by reason, amount and alerts of these ingests."""
    ids = {"ids": tuple(ingest_ids)}
    landed = Landed()
    for status, count, amount in client.execute(
        "SELECT status, count(), sum(amount) FROM rated_calls FINAL WHERE ingest_id IN %(ids)s GROUP BY status",
        ids,
    ):
        if status == "rated":
            landed.rated += count
        else:
            landed.unbilled += count
        landed.amount += _units(amount)
    landed.rejected.update(
        dict(
            client.execute(
                "SELECT reason, count() FROM rejected_cdrs FINAL WHERE ingest_id IN %(ids)s GROUP BY reason", ids
            )
        )
    )
    landed.alerts.update(
        dict(client.execute("SELECT kind, count() FROM alerts FINAL WHERE ingest_id IN %(ids)s GROUP BY kind", ids))
    )
    return landed


#: Alerts land through their own sink agent, a moment after the calls that raised them;
#: nothing says how many to expect, so the count is taken once it stops moving.
ALERTS_SETTLE_S: Final[float] = 2.0


def _with_settled_alerts(client: Client, ingest_ids: Sequence[str], landed: Landed, deadline: float) -> Landed:
    settled_at = time.monotonic()
    while time.monotonic() - settled_at < ALERTS_SETTLE_S and time.monotonic() < deadline:
        time.sleep(0.25)
        again = count_landed(client, ingest_ids)
        if again.alerts != landed.alerts:
            settled_at = time.monotonic()
        landed = again
    return landed


def wait_until_landed(
    settings: Settings,
    ingest_ids: Sequence[str],
    lines: int,
    *,
    timeout_s: float = 600.0,
    poll_s: float = 0.5,
    progress: Callable[[int], None] | None = None,
) -> Landed:
    """Poll ClickHouse until ``lines`` rows of these ingests have landed; return what they became.

    Raises
    ------
    LandingError
        ClickHouse does not answer, or the landing tables do not exist.
    LandingTimeout
        Fewer rows had landed after ``timeout_s`` (no worker running, or a slow one).
    """
    database = settings.clickhouse_params()["database"]
    deadline = time.monotonic() + timeout_s
    client = query_client(settings)
    try:
        try:
            missing = missing_tables(client, database)
        except (ClickHouseError, OSError, EOFError) as error:
            raise LandingError(f"ClickHouse at {_address(settings)} did not answer: {error}") from None
        if missing:
            raise LandingError(
                f"ClickHouse at {_address(settings)} has no table{'s' if len(missing) > 1 else ''} "
                f"{', '.join(f'{database}.{name}' for name in missing)} yet, so there is nothing to wait for: "
                "the lines were sent; run `cdrflow up` (it applies the schema) and start a worker "
                "(`cdrflow worker`), then look with `cdrflow status`"
            )
        while True:
            try:
                landed = count_landed(client, ingest_ids)
            except (ClickHouseError, OSError, EOFError) as error:
                raise LandingError(f"ClickHouse at {_address(settings)} stopped answering: {error}") from None
            if progress is not None:
                progress(landed.lines)
            if landed.lines >= lines:
                return _with_settled_alerts(client, ingest_ids, landed, deadline)
            if time.monotonic() > deadline:
                raise LandingTimeout(
                    f"after {timeout_s:.0f} s, {landed.lines:,} of {lines:,} lines have landed in ClickHouse "
                    f"({_address(settings)}): is a worker running (`cdrflow worker`, `cdrflow status` shows "
                    "its lag)? The lines are on the topics and will land when it catches up",
                    landed,
                )
            time.sleep(poll_s)
    finally:
        client.disconnect()
