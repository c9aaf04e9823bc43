"""The tariff catalogue a worker rates with, kept up to date from the ``plans``/``accounts`` topics.

The two topics are the catalogue's log (streams.catalog.publish): the worker reads them to their
end at start, then on a timer reads only what was appended since, and folds the whole
log again (``streams.catalog.publish.fold_catalog``, the fold ``cdrflow load`` and ingest use) when
something was. It also reads them before rating a batch that names an account the
catalogue does not know yet (ingest routed with a newer catalogue: `cdrflow load` then
`cdrflow ingest` at once), so a new account is not rejected as an unknown number.

The reads are aiokafka fetches in the worker's event loop that stop at the high
watermark of the Fetch responses (streams.kafka.async_reader). They replace
``streams.catalog.publish.read_catalog`` here, a blocking kafka-python read that twice took over a
minute when two workers started at once on the test stack.

Replays are rated with the catalogue of their time of replay. That is the catalogue of
their first rating unless tariffs changed in between; plan changes are new versions
effective from a future instant (spec 2.1), which leaves past calls' prices as they were.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from faust.types import TP

from rating import Catalog
from schemas.topics import ACCOUNTS, PLANS
from streams.catalog.publish import fold_catalog
from streams.kafka.async_reader import partitions_of, read_to_end
from streams.kafka.client import topic_name
from streams.settings import Settings

log = logging.getLogger(__name__)


class CatalogWatch:
    """The current catalogue, and the part of the two topics it was folded from."""

    def __init__(self, settings: Settings, topic_prefix: str = ""):
        self.kafka = settings.kafka_access()
        self.horizon_months = settings.horizon_months
        self.time_bounds = settings.time_bounds()
        self.plans_topic = topic_name(PLANS, topic_prefix)
        self.accounts_topic = topic_name(ACCOUNTS, topic_prefix)
        self._records: dict[TP, list[tuple[bytes | None, Any]]] = {}
        self._positions: dict[TP, int] = {}
        self._catalog: Catalog | None = None
        self._accounts: frozenset[str] = frozenset()
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        """Whether a catalogue was read (:attr:`catalog` raises before)."""
        return self._catalog is not None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            raise RuntimeError("the catalogue is not loaded yet: await refresh() first")
        return self._catalog

    def knows(self, account_id: str) -> bool:
        """Whether the current catalogue has this account."""
        return account_id in self._accounts

    async def refresh(self) -> bool:
        """Read what the topics got since the last read; fold again if anything. True if it did."""
        async with self._lock:  # the timer and the rating agent may ask at once
            partitions = await partitions_of(self.kafka, [self.plans_topic, self.accounts_topic])
            missing = {self.plans_topic, self.accounts_topic} - {tp.topic for tp in partitions}
            if missing:
                raise RuntimeError(f"topic(s) {', '.join(sorted(missing))} do not exist: run `cdrflow up`")
            tails = await read_to_end(self.kafka, {tp: self._positions.get(tp, 0) for tp in partitions})
            grown = False
            for tp, records in tails.items():
                self._records.setdefault(tp, []).extend((r.key, _decoded(r.value)) for r in records)
                if records:
                    self._positions[tp] = records[-1].offset + 1
                    grown = True
            if not grown and self._catalog is not None:
                return False
            plans = [r for tp, rs in self._records.items() if tp.topic == self.plans_topic for r in rs]
            accounts = [r for tp, rs in self._records.items() if tp.topic == self.accounts_topic for r in rs]
            tariffs = await asyncio.to_thread(fold_catalog, plans, accounts)
            self._catalog = await asyncio.to_thread(
                lambda: Catalog.from_tariffs(tariffs, horizon_months=self.horizon_months, time_bounds=self.time_bounds)
            )
            self._accounts = frozenset(account.id for account in tariffs.accounts)
            log.info("catalogue loaded: %d plans, %d accounts", len(tariffs.plans), len(tariffs.accounts))
            return True


def _decoded(value: bytes | None) -> Any:
    if value is None:
        return None  # a tombstone removes the key
    try:
        return json.loads(value)
    except ValueError:
        return {}  # refused by the model: the key keeps its value (as streams.catalog.publish reads)
