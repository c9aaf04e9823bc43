"""The worker's Faust app settings that do not need a broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka.errors import MessageSizeTooLargeError

from streams.settings import Settings
from streams.worker.app import build_app
from streams.worker.faust_tuning import WORKER_FETCH_MAX_WAIT_MS
from streams.worker.runner import send_in_order


def test_faust_data_folder_is_under_the_state_folder(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path / "state{x}",  # braces: Faust formats the setting with str.format
        kafka_bootstrap="127.0.0.1:1",
        clickhouse_url="clickhouse://default@127.0.0.1:1/cdrflow",
        app_id="cdrflow-test",
    )
    app = build_app(settings)
    assert Path(app.conf.datadir) == tmp_path / "state{x}" / "faust" / "cdrflow-test"


def test_the_worker_consumer_lets_the_broker_hold_a_fetch_half_a_second(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path,
        kafka_bootstrap="127.0.0.1:1",
        clickhouse_url="clickhouse://default@127.0.0.1:1/cdrflow",
        app_id="cdrflow-test",
    )
    app = build_app(settings)
    thread = app.consumer._thread  # Faust internals, as streams.worker.faust_tuning patches them

    async def create() -> object:  # aiokafka makes its clients inside a running loop
        return thread._create_worker_consumer(app.transport)  # created, not started: no connection

    consumer = asyncio.run(create())
    assert consumer._fetch_max_wait_ms == WORKER_FETCH_MAX_WAIT_MS == 500


class _Broker:
    """Delivery futures for sends; ``refuse(number, message)`` says which sends fail, and how."""

    def __init__(self, refuse) -> None:  # type: ignore[no-untyped-def]
        self.refuse = refuse
        self.stored: list[str] = []
        self.sends = 0

    async def send(self, message: str) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        error = self.refuse(self.sends, message)
        if error is not None:
            future.set_exception(error)
        else:
            self.stored.append(message)
            future.set_result(None)
        self.sends += 1
        return future


def test_refused_outputs_are_sent_again_whole_and_in_order() -> None:
    # The second of three is refused on the first send: the records after it got stored,
    # so all three go again, and each key's last record is the last one sent.
    broker = _Broker(lambda n, m: RuntimeError(f"refused {m}") if n == 1 else None)
    refused = asyncio.run(send_in_order(broker.send, ["a1", "b1", "a2"], attempts=3, first_delay_s=0.0))
    assert refused == {}
    assert broker.stored == ["a1", "a2", "a1", "b1", "a2"]
    assert broker.stored[-3:] == ["a1", "b1", "a2"]


def test_a_broker_that_refuses_everything_is_waited_for_past_the_attempts() -> None:
    # Away for 5 rounds of sends (more than the 3 attempts), then back: nothing is given up.
    broker = _Broker(lambda n, m: RuntimeError("broker away") if n < 10 else None)
    refused = asyncio.run(send_in_order(broker.send, ["a", "b"], attempts=3, first_delay_s=0.0))
    assert refused == {} and broker.stored == ["a", "b"] and broker.sends == 12


def test_a_message_refused_while_the_others_are_taken_is_given_back_after_the_attempts() -> None:
    broker = _Broker(lambda n, m: RuntimeError("refused b") if m == "b" else None)
    refused = asyncio.run(send_in_order(broker.send, ["a", "b", "c"], attempts=3, first_delay_s=0.0))
    assert list(refused) == [1] and broker.sends == 9


def test_a_message_too_large_is_given_back_at_once() -> None:
    broker = _Broker(lambda n, m: MessageSizeTooLargeError() if m == "big" else None)
    refused = asyncio.run(send_in_order(broker.send, ["a", "big"], attempts=5, first_delay_s=0.0))
    assert list(refused) == [1] and isinstance(refused[1], MessageSizeTooLargeError)
    assert broker.sends == 2


def test_a_grouped_output_refused_for_its_size_blocks_only_the_accounts_whose_own_rows_are_too_large() -> None:
    from streams.worker.batch import rate_messages
    from streams.worker.runner import RatingWorker
    from tests.test_rating_batch import TOPIC, _messages, _vector

    catalog, batch, owner = _vector("mixed")
    outcome = rate_messages(_messages(batch, owner, chunk_lines=3000), {}, catalog, TOPIC)
    rated = [m for m in outcome.outputs if m.kind == "rated"]
    assert any(len(m.accounts) > 1 for m in rated)
    parts = [part for m in rated for part in (m.split() if m.split else [m])]
    largest = max(parts, key=lambda m: len(m.value))
    limit = max(len(m.value) for m in parts if m is not largest) + 1  # only the largest account's rows pass it
    assert len(largest.value) >= limit and all(len(m.value) < limit for m in outcome.outputs if m.kind != "rated")

    broker = _Broker(lambda n, m: MessageSizeTooLargeError() if len(m.value) >= limit else None)
    worker = RatingWorker(None, broker.send, None, lambda: set(), TOPIC)  # type: ignore[arg-type]
    refused = asyncio.run(worker._send_outputs(outcome.outputs))
    assert [(m.account, m.kind) for m, _ in refused] == [(largest.account, "rated")]
    assert all(isinstance(error, MessageSizeTooLargeError) for _, error in refused)
    # Every row of every other account reached the broker, the refused ones' included apart.
    stored_rows = sum(len(message_ids(m)) for m in broker.stored if m.kind == "rated")
    assert stored_rows == sum(len(message_ids(m)) for m in rated) - len(message_ids(largest))


def message_ids(message) -> list[str]:  # type: ignore[no-untyped-def]
    from streams.worker.sinks import read_output

    return read_output(message.value, message.kind).get_column("cdr_id").to_list()
