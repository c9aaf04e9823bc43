"""The number -> account map a long-running live feed routes with, kept current from the
``plans`` / ``accounts`` topics.

``cdrflow ingest`` reads the catalogue once per file. A tail or a router runs for days,
so, like the worker (streams.catalog.watch), it reads what the two topics got since its
last read, every ``refresh_s`` (5 s), in a thread of its own: the feed's loop never
waits for a read (each takes about one fetch wait of the broker, ~0.5 s on tansu). So an
account loaded with ``cdrflow load`` routes its calls within ``refresh_s``; a call that
comes sooner is rejected ``unknown_number``, as ``cdrflow ingest`` started before the
load would reject it. Load accounts before their numbers carry traffic.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any, Final

from rating.ownership import routing_of
from schemas.topics import ACCOUNTS, PLANS
from streams.catalog.publish import CatalogError, decoded_catalog_value, fold_catalog
from streams.kafka.async_reader import TP, partitions_of, read_to_end
from streams.kafka.client import topic_name
from streams.settings import Settings

log = logging.getLogger(__name__)

REFRESH_S: Final[float] = 5.0


class RoutingTable:
    """The current ``account_of_number`` of the catalogue topics.

    :meth:`load` reads them whole (raises ``streams.catalog.publish.CatalogError`` for a number of
    two accounts, ``TimeoutError`` or an aiokafka error when the broker does not
    answer); :meth:`start` keeps them current until :meth:`stop`.
    """

    def __init__(self, settings: Settings, topic_prefix: str = "", *, refresh_s: float = REFRESH_S):
        self.kafka = settings.kafka_access()
        self.topics = (topic_name(PLANS, topic_prefix), topic_name(ACCOUNTS, topic_prefix))
        self.refresh_s = refresh_s
        self._records: dict[TP, list[tuple[bytes | None, Any]]] = {}
        self._read_to: dict[TP, int] = {}
        self._numbers: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def accounts(self) -> int:
        return len(set(self._numbers.values()))

    def load(self) -> dict[str, str]:
        """Read the topics (what was appended since the last read) and fold them again."""
        with self._lock:
            if not asyncio.run(self._read()) and self._numbers:
                return self._numbers
            plans = [r for tp, rs in self._records.items() if tp.topic == self.topics[0] for r in rs]
            accounts = [r for tp, rs in self._records.items() if tp.topic == self.topics[1] for r in rs]
            # issue 25: with the owners over time of transferred numbers (rating.ownership)
            self._numbers = routing_of(fold_catalog(plans, accounts))
            return self._numbers

    async def _read(self) -> bool:
        """Append what the topics got since the last read; True if they got anything."""
        partitions = await partitions_of(self.kafka, self.topics)
        tails = await read_to_end(self.kafka, {tp: self._read_to.get(tp, 0) for tp in partitions})
        grown = False
        for tp, records in tails.items():
            topic = PLANS if tp.topic == self.topics[0] else ACCOUNTS
            self._records.setdefault(tp, []).extend((r.key, decoded_catalog_value(r.value, topic)) for r in records)
            if records:
                self._read_to[tp] = records[-1].offset + 1
                grown = True
        return grown

    @property
    def numbers(self) -> Mapping[str, str]:
        """The map of the last read (replaced whole by a read, never changed in place)."""
        return self._numbers

    def _refresh_quietly(self) -> dict[str, str]:
        try:
            return self.load()
        except CatalogError as error:
            log.warning("the catalogue topics are inconsistent, routing with the last good map: %s", error)
        except Exception as error:  # the broker away for a moment: the next refresh will do
            log.warning("could not read the catalogue topics, routing with the last map: %s", error)
        return self._numbers

    def start(self) -> None:
        """Refresh every ``refresh_s`` in a daemon thread."""

        def loop() -> None:
            while not self._stop.wait(self.refresh_s):
                self._refresh_quietly()

        self._thread = threading.Thread(target=loop, name="cdrflow-catalogue", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
