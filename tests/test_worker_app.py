"""The worker's Faust app settings that do not need a broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

from streams.app import build_app
from streams.faust_tuning import WORKER_FETCH_MAX_WAIT_MS
from streams.settings import Settings


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
    thread = app.consumer._thread  # Faust internals, as streams.faust_tuning patches them

    async def create() -> object:  # aiokafka makes its clients inside a running loop
        return thread._create_worker_consumer(app.transport)  # created, not started: no connection

    consumer = asyncio.run(create())
    assert consumer._fetch_max_wait_ms == WORKER_FETCH_MAX_WAIT_MS == 500
