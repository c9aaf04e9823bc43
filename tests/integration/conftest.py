"""Fixtures that run a real embedded stack (broker, its S3 store, ClickHouse) for tests.

The stack runs in a temporary state folder on ports of its own (20000-20999 for the first
pytest-xdist worker, 21000-21999 for the second, and so on: below Linux's ephemeral range), so it
does not collide with a developer's running stack on the default ports, nor with the
other worker's stack.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.settings import Settings
from streams.stack.embedded import StackError
from streams.stack.servers import down, free_ports, up
from tests.integration.pipeline import PROJECT, Pipeline

#: Partitions the test stack's topics get: not the default 4, to show the setting is used.
TEST_PARTITIONS = 3


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings of a running embedded stack; stopped and purged after the session."""
    # Each pytest-xdist worker (gw0, gw1, ...: make test) starts a stack of its own at the
    # same time as the others: from ports of its own.
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    span = range(20000 + 1000 * (worker % 10), 21000 + 1000 * (worker % 10))
    kafka_port, s3_port, clickhouse_tcp_port, clickhouse_http_port = free_ports(4, span)
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("cdrflow-stack"),
        # Explicit, so a developer's CDRFLOW_* variables cannot point the tests elsewhere.
        kafka_bootstrap=None,
        clickhouse_url=None,
        topic_partitions=TEST_PARTITIONS,
        kafka_port=kafka_port,
        s3_port=s3_port,
        clickhouse_tcp_port=clickhouse_tcp_port,
        clickhouse_http_port=clickhouse_http_port,
    )
    try:
        try:
            up(settings)
        except StackError as error:
            pytest.fail(f"the embedded stack did not start (is `make setup` done?): {error}")
        yield settings
    finally:
        down(settings, purge=True)


@pytest.fixture
def pipeline(stack: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    """A pipeline of this test's own (topic prefix, consumer group, database); its workers stop after."""
    line = Pipeline(stack, tmp_path / "pipeline")
    try:
        yield line
    finally:
        line.stop_workers()
    # Faust's data folder is under the state folder, never in the worker's cwd.
    assert not (PROJECT / f"{line.settings.app_id}-data").exists()
