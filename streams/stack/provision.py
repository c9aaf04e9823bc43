"""The topics and the ClickHouse schema a stack needs: created where missing, never changed."""

from __future__ import annotations

from pathlib import Path

from clickhouse_driver import Client
from kafka.errors import KafkaError

from schemas.topics import TOPICS
from streams.clickhouse.migrations import MIGRATIONS_DIR, apply_migrations
from streams.kafka.client import _kafka_admin
from streams.settings import Settings
from streams.stack.clickhouse_config import _quote_identifier
from streams.stack.embedded import StackError


def ensure_topics(settings: Settings, *, timeout_s: float = 30.0) -> tuple[list[str], list[str]]:
    """Create the topics of :data:`schemas.topics.TOPICS` that do not exist yet, with the
    configs of their role, the settings' replication factor and ``min.insync.replicas``.

    Returns the names created and warnings (an existing topic whose partition count is
    not the configured one is left as it is: changing it would move accounts between
    partitions; an existing topic's configs are never changed here: ``cdrflow topics
    --check`` says which can lose data).
    """
    try:
        return _ensure_topics(settings, timeout_s)
    except KafkaError as error:
        raise StackError(
            f"could not create the topics on {','.join(settings.kafka_servers())}: {error!r}"
        ) from error


def _ensure_topics(settings: Settings, timeout_s: float) -> tuple[list[str], list[str]]:
    partitions = settings.topic_partitions
    admin = _kafka_admin(settings.kafka_access(), timeout_s)
    try:
        existing = set(admin.list_topics())
        missing = [name for name in TOPICS if name not in existing]
        if missing:
            answer = admin.create_topics(
                {
                    name: {
                        "num_partitions": TOPICS[name].partitions or partitions,
                        "replication_factor": settings.replication_factor(),
                        "configs": TOPICS[name].created_with(settings.min_insync_replicas()),
                    }
                    for name in missing
                },
                raise_errors=False,
            )
            refused = [
                f"{topic['name']}: {topic['error_message'] or 'error ' + str(topic['error_code'])}"
                for topic in answer["topics"]
                # 36: TOPIC_ALREADY_EXISTS (another `up` created it meanwhile)
                if topic["error_code"] not in (0, 36)
            ]
            if refused:
                raise StackError(f"the broker refused to create topics: {'; '.join(refused)}")
            admin.wait_for_topics(missing, timeout_ms=int(timeout_s * 1000))
        warnings = [
            f"topic {topic['name']} has {len(topic['partitions'])} partitions, the settings "
            f"say {TOPICS[topic['name']].partitions or partitions}; left as it is"
            for topic in admin.describe_topics(list(TOPICS))
            if topic["name"] in TOPICS and len(topic["partitions"]) != (TOPICS[topic["name"]].partitions or partitions)
        ]
    finally:
        admin.close()
    return missing, warnings


def ensure_schema(settings: Settings, migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Create the database if needed and apply pending migrations; return their names."""
    params = settings.clickhouse_params()
    server = Client(**{**params, "database": ""}, connect_timeout=5)
    try:
        # Asked first: on a cluster the user may own the database but not be allowed to create.
        exists = server.execute(
            "SELECT count() FROM system.databases WHERE name = %(name)s",
            {"name": params["database"]},
        )
        if exists == [(0,)]:
            database = _quote_identifier(params["database"])
            server.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    finally:
        server.disconnect()
    client = Client(**params, connect_timeout=5)
    try:
        return apply_migrations(client, migrations_dir)
    finally:
        client.disconnect()
