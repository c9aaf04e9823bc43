"""``up``, ``down`` and ``status`` on the real embedded servers (issue 4, item 2)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from schemas.topics import TOPICS
from streams.clickhouse.migrations import MIGRATIONS_DIR, read_migrations
from streams.settings import Settings
from streams.stack.clickhouse_config import finance_password
from streams.stack.servers import down, up
from streams.stack.status import STATUS_KEYS, status
from tests.integration.pipeline import stack_url

pytestmark = pytest.mark.integration

READONLY = 164  # ClickHouse: "Cannot ... in readonly mode"


def _pids(settings: Settings) -> dict[str, int | None]:
    return {name: server["pid"] for name, server in status(settings)["servers"].items()}


def _server_processes(naming: tuple[bytes, ...] = ()) -> set[int]:
    """Pids of every tansu, ClickHouse and S3 server (localbucket) process on the machine
    (whose command line holds one of ``naming``, when given)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ") + b" "
        except OSError:
            continue
        if any(name in text for name in (b"tansu broker", b"clickhouse-server", b"streams.stack.s3_server")):
            if not naming or any(name in text for name in naming):
                found.add(int(cmdline.parent.name))
    return found


def _produce(settings: Settings, topic: str, count: int) -> list[tuple[bytes, bytes]]:
    # A burst with linger: many records per batch, the case where tansu misreports ends.
    producer = KafkaProducer(bootstrap_servers=settings.kafka_servers(), linger_ms=20)
    sent = [(f"acct-{i % 37:04d}".encode(), f"message {i}".encode()) for i in range(count)]
    for key, value in sent:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    return sent


def _consume_all(settings: Settings, topic: str, count: int, timeout_s: float = 60.0) -> list:
    # Counted, not compared with the broker's end offsets (docs/infra.md).
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_servers(), enable_auto_commit=False, fetch_max_wait_ms=100
    )
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    received = []
    deadline = time.monotonic() + timeout_s
    while len(received) < count and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            received += [(record.key, record.value) for record in records]
    consumer.close()
    return received


def _create_topic(settings: Settings, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_servers())
    admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1}})
    admin.wait_for_topics([name])
    admin.close()


def test_up_again_reuses_the_running_servers(stack: Settings) -> None:
    before = _pids(stack)
    info = up(stack)
    assert [server.name for server in info.servers] == ["s3", "kafka", "clickhouse"]
    assert all(server.reused for server in info.servers)
    assert {server.name: server.pid for server in info.servers} == before
    assert info.topics_created == () and info.migrations_applied == ()


def test_topics_exist_with_the_configured_partitions(stack: Settings) -> None:
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_servers())
    described = {topic["name"]: topic for topic in admin.describe_topics(list(TOPICS))}
    admin.close()
    assert set(described) == set(TOPICS)
    assert stack.topic_partitions != 4  # the fixture's, not the default
    assert {name: len(t["partitions"]) for name, t in described.items()} == {
        name: topic.partitions or stack.topic_partitions for name, topic in TOPICS.items()  # invoice.numbers: 1
    }


def test_clickhouse_answers_with_the_cdrflow_database(stack: Settings) -> None:
    client = Client(**stack.clickhouse_params())
    assert client.execute("SELECT 1") == [(1,)]
    assert client.execute("SELECT currentDatabase()") == [("cdrflow",)]
    assert ("schema_migrations",) in client.execute("SHOW TABLES")


def test_the_default_user_can_create_tables(stack: Settings) -> None:
    client = Client(**stack.clickhouse_params())
    client.execute("CREATE TABLE IF NOT EXISTS scratch (n UInt8) ENGINE = MergeTree ORDER BY n")
    client.execute("INSERT INTO scratch (n) VALUES", [(1,), (2,)])
    assert client.execute("SELECT sum(n) FROM scratch") == [(3,)]
    client.execute("DROP TABLE scratch")


def test_the_finance_user_reads_but_cannot_write(stack: Settings) -> None:
    params = {**stack.clickhouse_params(), "user": "finance", "password": finance_password(stack)}
    finance = Client(**params)
    assert finance.execute("SELECT count() FROM schema_migrations") == [(len(read_migrations(MIGRATIONS_DIR)),)]
    with pytest.raises(ServerException) as insert:
        finance.execute("INSERT INTO schema_migrations (version) VALUES", [(99,)])
    assert insert.value.code == READONLY
    with pytest.raises(ServerException) as create:
        finance.execute("CREATE TABLE finance_scratch (n UInt8) ENGINE = Memory")
    assert create.value.code == READONLY


def test_down_then_up_keeps_the_log(stack: Settings) -> None:
    _create_topic(stack, "test.durable", partitions=stack.topic_partitions)
    sent = _produce(stack, "test.durable", 3000)
    pids = _pids(stack)

    stopped = down(stack)
    assert stopped == ["kafka", "s3", "clickhouse"]
    assert not set(pids.values()) & _server_processes()

    info = up(stack)
    assert not any(server.reused for server in info.servers)
    assert sorted(_consume_all(stack, "test.durable", len(sent))) == sorted(sent)


def test_status_reports_servers_topics_and_tables(stack: Settings) -> None:
    answer = status(stack)
    assert tuple(answer) == STATUS_KEYS
    assert {name: server["state"] for name, server in answer["servers"].items()} == {
        "s3": "up",
        "kafka": "up",
        "clickhouse": "up",
    }
    assert answer["kafka_bootstrap"] == stack.kafka_servers()[0]
    assert answer["clickhouse_url"] == (
        f"clickhouse://default@127.0.0.1:{stack.clickhouse_tcp_port}/cdrflow"
    )
    for name, topic in TOPICS.items():
        assert answer["topics"][name]["partitions"] == (topic.partitions or stack.topic_partitions)
    assert answer["clickhouse_tables"]["schema_migrations"] == {
        "engine": "MergeTree",
        "rows": len(read_migrations(MIGRATIONS_DIR)),
    }
    assert answer["clickhouse_tables"]["rated_calls"]["engine"] == "ReplacingMergeTree"
    assert all(isinstance(count, int) for count in answer["rejects_by_reason"].values())
    assert answer["errors"] == []


def test_status_end_offsets_and_lag_count_every_record(stack: Settings) -> None:
    # tansu's ListOffsets answers far too low after a burst of multi-record batches
    # (streams.kafka.client.log_end_offsets); status must not.
    _create_topic(stack, "test.lag", partitions=1)
    _produce(stack, "test.lag", 500)
    consumer = KafkaConsumer(bootstrap_servers=stack.kafka_servers(), group_id="test-lag")
    consumer.commit({TopicPartition("test.lag", 0): OffsetAndMetadata(200, "", -1)})
    consumer.close()

    # The session's broker holds every earlier test's topics by now, and status fetches a
    # watermark from each of their partitions: give it longer than the CLI's 5 s.
    answer = status(stack, timeout_s=30.0)
    assert answer["topics"]["test.lag"]["end_offsets"] == {0: 500}
    assert answer["consumer_groups"]["test-lag"]["lag"] == 300


def test_external_variables_start_nothing(stack: Settings, tmp_path: Path) -> None:
    external = Settings(
        state_dir=tmp_path / "external-state",
        kafka_bootstrap=",".join(stack.kafka_servers()),
        clickhouse_url=stack_url(stack, "cdrflow_ext"),
    )
    # Only servers of `external` count: test files running in parallel start and stop
    # stacks of their own meanwhile (comparing every server on the machine was flaky).
    mine = (str(external.state_dir).encode(), b"127.0.0.1:%d " % external.kafka_port)
    processes = _server_processes(mine)

    info = up(external)

    assert _server_processes(mine) == processes
    assert not external.state_dir.exists()
    assert [(server.name, server.pid) for server in info.servers] == [
        ("kafka", None),
        ("clickhouse", None),
    ]
    client = Client(**external.clickhouse_params())
    assert ("schema_migrations",) in client.execute("SHOW TABLES")
    assert down(external) == []
    assert status(stack)["servers"]["kafka"]["state"] == "up"
