"""What runs and how far it got: ``cdrflow status``'s answer (servers, topics, lag,
the rating state its workers publish, ClickHouse tables, rejects)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from clickhouse_driver import Client
from kafka import TopicPartition

from schemas.topics import FEED_NOTES, WORKER_STATUS
from streams.kafka.client import _kafka_admin, log_end_offsets
from streams.settings import Settings
from streams.stack.clickhouse_config import _finance_password_file, _quote_identifier, finance_password
from streams.stack.processes import _clickhouse_answers, _kafka_answers, _live_record, _process_alive, _read_record
from streams.stack.servers import SERVERS, _launches
from streams.stack.topics import check_topics

#: The keys of :func:`status`'s answer.
STATUS_KEYS = (
    "state_dir",
    "embedded",
    "kafka_bootstrap",
    "clickhouse_url",
    "servers",
    "topics",
    "consumer_groups",
    "clickhouse_tables",
    "rejects_by_reason",
    "worker_state",
    "blocked_accounts",
    "topic_problems",
    "dead_letters",
    "feed_warnings",
    "notes",
    "errors",
)


def status(settings: Settings, *, timeout_s: float = 5.0) -> dict[str, Any]:
    """Servers, topics, consumer lag and ClickHouse tables, as plain data (JSON-ready).

    Never raises for a server that is down: what could not be read is listed under
    ``errors``; ``topic_problems`` lists topic configs that can lose data (``cdrflow topics
    --check``). Keys: see :data:`STATUS_KEYS`. ``rejects_by_reason`` counts the rejected
    lines in ClickHouse (a replayed rejection once).

    ``topics[name]["end_offsets"]`` are the ends of the logs as Fetch responses report
    them, not as ListOffsets does (too low on tansu, see :func:`log_end_offsets`), and
    ``consumer_groups[group]["lag"]`` is counted from them.

    ``dead_letters`` counts the output messages ClickHouse refused, by kind, with the
    latest reason (``dead_letters`` table); ``feed_warnings`` what the live feeds' readers
    noticed about their lines, by source (``feed.notes``: times written in another zone
    than they are read in...). Both also make a note.
    """
    answer: dict[str, Any] = {
        "state_dir": str(settings.state_dir),
        "embedded": settings.embedded,
        "kafka_bootstrap": ",".join(settings.kafka_servers()),
        "clickhouse_url": settings.redacted_clickhouse_url(),
        "servers": _servers_status(settings),
        "topics": {},
        "consumer_groups": {},
        "clickhouse_tables": {},
        "rejects_by_reason": {},
        "worker_state": {},
        "blocked_accounts": {},
        "topic_problems": [],
        "dead_letters": {},
        "feed_warnings": {},
        "notes": [],
        "errors": [],
    }
    for launch in _launches(settings):
        record = _live_record(settings.state_dir, launch.name)
        if record is not None and record["address"] != launch.address:
            answer["notes"].append(
                f"{launch.name} of this state folder runs at {record['address']}, but the "
                f"settings say {launch.address} (set {launch.port_variable})"
            )
    if answer["servers"]["kafka"]["state"] == "up":
        try:
            answer["topics"], answer["consumer_groups"] = _kafka_status(settings, timeout_s)
        except Exception as error:  # status reports, it does not fail
            answer["errors"].append(f"kafka: {error}")
        try:
            answer["worker_state"] = worker_state(settings, answer["topics"])
        except Exception as error:
            answer["errors"].append(f"worker.status: {error}")
        try:
            # The same check as `cdrflow topics --check`: configs that can lose data.
            report = check_topics(settings, timeout_s=max(timeout_s, 15.0))
            answer["topic_problems"] = [f"{f.topic}: {f.message}" for f in report.problems]
            answer["notes"] += [f"topic {f.topic}: {f.message}" for f in report.findings if f.severity == "warning"]
        except Exception as error:
            answer["errors"].append(f"topic configs: {error}")
        answer["blocked_accounts"] = {
            account: {**failure, "partition": partition}
            for partition, figures in answer["worker_state"].items()
            for account, failure in figures.get("blocked", {}).items()
        }
        try:
            answer["feed_warnings"] = feed_warnings(settings, answer["topics"])
        except Exception as error:
            answer["errors"].append(f"feed.notes: {error}")
        for source, said in answer["feed_warnings"].items():
            answer["notes"].extend(f"feed {source}: {warning}" for warning in said.get("warnings", []))
    if answer["servers"]["clickhouse"]["state"] == "up":
        try:
            # One connection for the three reads (a fresh one each was three handshakes).
            params = settings.clickhouse_params()
            client = Client(**{**params, "database": ""}, connect_timeout=2, send_receive_timeout=10)
            try:
                database = params["database"]
                answer["clickhouse_tables"] = _clickhouse_tables(client, database)
                if "rejected_cdrs" in answer["clickhouse_tables"]:
                    answer["rejects_by_reason"] = _rejects_by_reason(client, database)
                if "dead_letters" in answer["clickhouse_tables"]:
                    answer["dead_letters"] = _dead_letters(client, database)
            finally:
                client.disconnect()
        except Exception as error:
            answer["errors"].append(f"clickhouse: {error}")
    if settings.embedded_clickhouse and finance_password(settings) is not None:
        where = (
            "CDRFLOW_FINANCE_PASSWORD"
            if settings.finance_password is not None
            else f"in {_finance_password_file(settings)}"
        )
        answer["notes"].append(f"finance (read-only) connects as user finance, password {where}")
    for kind, letters in answer["dead_letters"].items():
        answer["notes"].append(
            f"{letters['messages']} {kind} message(s) ClickHouse refused are in the dead_letters table "
            f"(latest: {letters['latest_reason']}); their rows did not land"
        )
    return answer


def feed_warnings(settings: Settings, topics: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """What each live feed's reader last said about its lines (``feed.notes``), by source;
    sources with nothing to say are left out."""
    latest = _latest_values(settings, FEED_NOTES, topics, lambda value: str(value["source"]))
    return {source: value for source, value in sorted(latest.items()) if value.get("warnings")}


def worker_state(settings: Settings, topics: dict[str, Any] | None = None) -> dict[int, dict[str, Any]]:
    """Each ``cdr.raw`` partition's state figures and blocked accounts, as the worker
    holding it last published them on ``worker.status`` (streams.worker.runner)."""
    return dict(sorted(_latest_values(settings, WORKER_STATUS, topics, lambda value: int(value["partition"])).items()))


def _latest_values(
    settings: Settings, topic: str, topics: dict[str, Any] | None, key: Callable[[dict[str, Any]], Any]
) -> dict[Any, dict[str, Any]]:
    """The last JSON value of each ``key`` on a small status topic (absent topic: none);
    a message that is not such a value is passed over."""
    name = f"{settings.topic_prefix}{topic}"
    if topics is not None and name not in topics:
        return {}
    from streams.kafka.async_reader import read_topics  # aiokafka: only when asked

    latest: dict[Any, dict[str, Any]] = {}
    for record in read_topics(settings.kafka_access(), [name], timeout_s=30)[name]:
        try:
            value = json.loads(record.value)
            latest[key(value)] = value
        except (ValueError, KeyError, TypeError):
            continue  # not a value of this topic: nothing to show
    return latest


def _servers_status(settings: Settings) -> dict[str, dict[str, Any]]:
    servers: dict[str, dict[str, Any]] = {}
    launches = {launch.name: launch for launch in _launches(settings)}
    for name in SERVERS:
        record = _read_record(settings.state_dir, name)
        live = record is not None and _process_alive(record["pid"], record["start_ticks"])
        launch = launches.get(name)
        if launch is None and not live:
            continue  # external mode: no s3, and kafka/clickhouse are reported below
        address = record["address"] if live else launch.address
        answers = live and launch is not None and launch.answers()
        servers[name] = {
            "state": "up" if live and answers else ("not answering" if live else "down"),
            "pid": record["pid"] if live else None,
            "address": address,
            "log": str(launch.log if launch else record["log"]),
            "external": False,
        }
    if not settings.embedded_kafka:
        bootstrap = settings.kafka_servers()
        servers["kafka"] = {
            "state": "up" if _kafka_answers(settings.kafka_access()) else "down",
            "pid": None,
            "address": ",".join(bootstrap),
            "log": None,
            "external": True,
        }
    if not settings.embedded_clickhouse:
        params = settings.clickhouse_params()
        servers["clickhouse"] = {
            "state": "up" if _clickhouse_answers(settings) else "down",
            "pid": None,
            "address": f"{params['host']}:{params['port']}",
            "log": None,
            "external": True,
        }
    return servers


def _kafka_status(settings: Settings, timeout_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    kafka = settings.kafka_access()
    admin = _kafka_admin(kafka, timeout_s)
    try:
        described = [
            topic
            for topic in admin.describe_topics()
            if not topic["is_internal"] and not topic["name"].startswith("__")
        ]
        partitions = [
            TopicPartition(topic["name"], partition["partition_index"])
            for topic in described
            for partition in topic["partitions"]
        ]
        ends = log_end_offsets(kafka, partitions, timeout_s=timeout_s)
        topics = {
            topic["name"]: {
                "partitions": len(topic["partitions"]),
                "end_offsets": {
                    tp.partition: ends[tp]
                    for tp in sorted(ends, key=lambda tp: tp.partition)
                    if tp.topic == topic["name"]
                },
            }
            for topic in sorted(described, key=lambda topic: topic["name"])
        }
        groups: dict[str, Any] = {}
        for group in sorted(admin.list_groups(), key=lambda group: group["group_id"]):
            group_id = group["group_id"]
            committed = admin.list_group_offsets({group_id: None}).get(group_id, {})
            lag = {
                f"{tp.topic}[{tp.partition}]": max(ends[tp] - offset.offset, 0)
                for tp, offset in sorted(committed.items())
                if ends.get(tp) is not None and offset.offset >= 0
            }
            groups[group_id] = {
                "state": group.get("group_state"),
                "lag": sum(lag.values()),
                "partitions": lag,
            }
    finally:
        admin.close()
    return topics, groups


def _clickhouse_tables(client: Client, database: str) -> dict[str, Any]:
    where = {"database": database}
    tables = client.execute(
        "SELECT name, engine FROM system.tables WHERE database = %(database)s ORDER BY name", where
    )
    # Rows stored in active parts: replays not yet collapsed by a merge count here.
    part_rows = dict(
        client.execute(
            "SELECT table, sum(rows) FROM system.parts WHERE database = %(database)s AND active GROUP BY table",
            where,
        )
    )
    answer = {}
    for name, engine in tables:
        if engine.endswith("MergeTree"):
            rows: int | None = int(part_rows.get(name, 0))
        elif engine in ("View", "MaterializedView"):
            rows = None  # a view holds nothing itself (MV ... TO keeps rows elsewhere)
        else:
            rows = client.execute(f"SELECT count() FROM {_quote_identifier(database)}.{_quote_identifier(name)}")[0][0]
        answer[name] = {"engine": engine, "rows": rows}
    return answer


def _dead_letters(client: Client, database: str) -> dict[str, dict[str, Any]]:
    rows = client.execute(
        "SELECT kind, count(), sum(rows), argMax(reason, landed_time) FROM "
        f"{_quote_identifier(database)}.dead_letters FINAL GROUP BY kind ORDER BY kind"
    )
    return {kind: {"messages": int(count), "rows": int(lines), "latest_reason": reason} for kind, count, lines, reason in rows}


def _rejects_by_reason(client: Client, database: str) -> dict[str, int]:
    rows = client.execute(
        f"SELECT reason, count() FROM {_quote_identifier(database)}.rejected_cdrs FINAL GROUP BY reason ORDER BY reason"
    )
    return {reason: int(count) for reason, count in rows}
