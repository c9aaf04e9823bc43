"""How long Faust's consumer lets the broker hold a fetch: the one Faust setting it hard-codes.

faust-streaming's aiokafka driver creates the worker's consumer with
``fetch_max_wait_ms=1500`` and no setting to change it. The embedded broker (tansu)
answers a fetch only after about ``fetch_max_wait_ms`` even when records are waiting
(measured with aiokafka on the s3 store, 1 kB records: 1,500 ms -> ~1.55 s per fetch,
500 ms -> ~0.6 s, 100 ms -> ~0.2 s), so the worker's input arrived at most once every
1.5 s per fetch. 500 ms is the shortest wait docs/infra.md found safe on the s3 store
(shorter waits got empty fetches of older data, again and again).

:func:`tune_faust_consumer` wraps the driver's consumer factory once per process and sets
the wait on the consumer before it starts (aiokafka reads ``_fetch_max_wait_ms`` when it
builds its fetcher). Faust internals: a Faust upgrade must check
``AIOKafkaConsumerThread._create_worker_consumer`` still exists (a test does).
"""

from __future__ import annotations

from typing import Any, Final

from faust.transport.drivers import aiokafka as faust_aiokafka

#: The fetch wait of the worker's consumer (Faust's own: 1,500 ms).
WORKER_FETCH_MAX_WAIT_MS: Final[int] = 500

_MARK = "_cdrflow_fetch_wait"


def tune_faust_consumer(fetch_max_wait_ms: int = WORKER_FETCH_MAX_WAIT_MS) -> None:
    """Make the worker consumers Faust creates from now on use ``fetch_max_wait_ms``."""
    thread_class = faust_aiokafka.AIOKafkaConsumerThread
    create = thread_class._create_worker_consumer
    original = getattr(create, _MARK, None) or create

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms  # aiokafka reads it in start()
        return consumer

    setattr(_create_worker_consumer, _MARK, original)
    thread_class._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
