"""Start, stop and inspect the servers cdrflow runs on.

On one machine (``Settings.embedded``) :func:`up` starts three background processes
under the state folder, each in its own session with its own log and pid file:

- ``s3``: a localbucket S3 server keeping the broker's log as files in ``STATE/s3``;
- ``kafka``: the tansu Kafka-protocol broker, storing in ``s3://tansu/`` on that server,
  so ``down`` then ``up`` loses nothing (docs/infra.md: durable storage);
- ``clickhouse``: the Debian ClickHouse server with a config written to
  ``STATE/clickhouse``, a ``default`` user for the pipeline and a read-only ``finance``
  user (``readonly=1``: SELECT only) whose password is ``CDRFLOW_FINANCE_PASSWORD``, else
  one generated once into ``STATE/clickhouse/finance.password``. Only its SHA-256 is
  written to users.xml; the password is never printed or logged.

When ``CDRFLOW_KAFKA_BOOTSTRAP`` / ``CDRFLOW_CLICKHOUSE_URL`` are set, the server they
name is used as it is and only the topics and the schema are ensured. State folder
layout::

    STATE/.cdrflow-state           marks the folder as ours (``down --purge`` checks it)
    STATE/run/NAME.json            pid file: pid, start time, command, address
    STATE/logs/NAME.log            stdout and stderr of each server
    STATE/s3/tansu/                the broker's bucket
    STATE/clickhouse/              config.xml, users.xml, finance.password, data/, tmp/
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from clickhouse_driver import Client
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from schemas.topics import TOPICS
from streams.migrations import MIGRATIONS_DIR, apply_migrations
from streams.settings import EMBEDDED_HOST, Settings

#: The embedded servers, in start order (the broker needs its S3 store first).
SERVERS = ("s3", "kafka", "clickhouse")
#: The cluster id tansu stores its topics under (its default; the broker is started without one).
TANSU_CLUSTER = "tansu_cluster"
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
    "notes",
    "errors",
)
#: The bucket the broker keeps its log in.
BROKER_BUCKET = "tansu"
#: Where `make setup` puts the broker binary.
PROJECT_TANSU = Path(__file__).resolve().parent.parent / ".tools" / "bin" / "tansu"

_MARKER = ".cdrflow-state"
_CLIENT_ID = "cdrflow-stack"
# The broker's own S3 client reads these; localbucket accepts any credentials.
_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "cdrflow",
    "AWS_SECRET_ACCESS_KEY": "cdrflow",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}
# Popen objects of the servers this process started, so that stopping them reaps them.
_CHILDREN: dict[int, subprocess.Popen] = {}


class StackError(RuntimeError):
    """A server could not be found, started, reached or stopped; the message says why."""


@dataclass(frozen=True)
class ServerInfo:
    """One server as :func:`up` left it."""

    name: str
    address: str
    pid: int | None = None  # None: external, not ours
    log: Path | None = None
    reused: bool = False  # was running already


@dataclass(frozen=True)
class StackInfo:
    """What :func:`up` did."""

    embedded: bool
    kafka_bootstrap: str
    clickhouse_url: str  # without password
    servers: tuple[ServerInfo, ...]
    topics_created: tuple[str, ...]
    migrations_applied: tuple[str, ...]
    finance_password_file: Path | None
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0


# ---------------------------------------------------------------------------- up / down


def up(
    settings: Settings,
    *,
    migrations_dir: Path = MIGRATIONS_DIR,
    timeout_s: float = 60.0,
    progress: Callable[[str], None] | None = None,
) -> StackInfo:
    """Start what is not running, wait until it answers, ensure topics and schema.

    Idempotent: servers whose pid files point at live processes are reused.

    Parameters
    ----------
    settings
        Where the servers are (embedded under ``settings.state_dir``, or external).
    migrations_dir
        The ClickHouse migration files to apply (``schemas/migrations``).
    timeout_s
        How long each server may take to answer.
    progress
        Called with a short line before each step (the CLI shows it).

    Raises
    ------
    StackError
        A server is not installed, its port is taken, or it did not answer in time (the
        message names its log file); topics could not be created.
    streams.migrations.MigrationError
        A migration file is misnamed, was edited after it was applied, or failed.

    Examples
    --------
    >>> info = up(Settings(state_dir="/tmp/cdrflow-doc"))  # doctest: +SKIP
    >>> [server.name for server in info.servers]  # doctest: +SKIP
    ['s3', 'kafka', 'clickhouse']
    """
    started_at = time.monotonic()
    say = progress or (lambda _line: None)
    servers: list[ServerInfo] = []
    if settings.embedded_kafka or settings.embedded_clickhouse:
        _prepare_state_dir(settings.state_dir)
        with _locked(settings.state_dir):  # two `up`s at once would start everything twice
            servers += _start_embedded(settings, say, timeout_s)
    bootstrap = settings.kafka_servers()
    if not settings.embedded_kafka:
        servers.insert(0, ServerInfo("kafka", ",".join(bootstrap)))
        _check_external("kafka", lambda: _kafka_answers(bootstrap), ",".join(bootstrap), timeout_s)
    if not settings.embedded_clickhouse:
        params = settings.clickhouse_params()
        address = f"{params['host']}:{params['port']}"
        servers.append(ServerInfo("clickhouse", address))
        _check_external("clickhouse", lambda: _clickhouse_answers(settings), address, timeout_s)

    say("creating topics")
    created, warnings = ensure_topics(settings, timeout_s=timeout_s)
    say("applying ClickHouse migrations")
    applied = ensure_schema(settings, migrations_dir)
    return StackInfo(
        embedded=settings.embedded,
        kafka_bootstrap=",".join(bootstrap),
        clickhouse_url=settings.redacted_clickhouse_url(),
        servers=tuple(servers),
        topics_created=tuple(created),
        migrations_applied=tuple(applied),
        finance_password_file=(
            _finance_password_file(settings)
            if settings.embedded_clickhouse and settings.finance_password is None
            else None
        ),
        warnings=tuple(warnings),
        seconds=time.monotonic() - started_at,
    )


def _start_embedded(
    settings: Settings, say: Callable[[str], None], timeout_s: float
) -> list[ServerInfo]:
    """Start (or find running) the embedded servers and wait until each answers."""
    servers = []
    waiting = []
    s3_was_live = _is_live(settings.state_dir, "s3")
    for launch in _launches(settings):
        if launch.name == "kafka" and not s3_was_live:
            # A broker whose store went away cannot be trusted: restart it with the store.
            _stop(settings.state_dir, "kafka", timeout_s=30.0)
        if launch.name == "clickhouse":
            _write_clickhouse_config(settings)
        record = _live_record(settings.state_dir, launch.name)
        if record is not None:
            if record["address"] != launch.address:
                raise StackError(
                    f"{launch.name} of {settings.state_dir} is running at {record['address']}, "
                    f"not at {launch.address} as the settings say: run `cdrflow down` first, "
                    f"or set {launch.port_variable} to its port"
                )
            servers.append(ServerInfo(launch.name, launch.address, record["pid"], launch.log, True))
        else:
            say(f"starting {launch.name} on {launch.address}")
            servers.append(_start(settings.state_dir, launch))
        if launch.name == "s3":
            # The broker reads its bucket at start: the store must answer before.
            _wait_until_answers(settings.state_dir, launch, timeout_s)
        else:
            waiting.append(launch)
    for launch in waiting:
        say(f"waiting for {launch.name} to answer on {launch.address}")
        _wait_until_answers(settings.state_dir, launch, timeout_s)
    return servers


def down(settings: Settings, purge: bool = False, *, timeout_s: float = 30.0) -> list[str]:
    """Stop the servers ``up`` started under the state folder; return their names.

    Each gets SIGTERM, and SIGKILL if it is still running after ``timeout_s``. Data is
    kept unless ``purge``, which then deletes the whole state folder. External servers
    are never touched.

    Examples
    --------
    >>> down(Settings(state_dir="/tmp/cdrflow-doc"), purge=True)  # doctest: +SKIP
    ['kafka', 's3', 'clickhouse']
    """
    state_dir = settings.state_dir
    if not state_dir.exists():
        return []
    with _locked(state_dir):
        # The broker first, while its S3 store is still there to take its last writes.
        # A background worker (`cdrflow demo`) first, then the broker while its S3 store is
        # still there to take its last writes.
        stopped = [
            name
            for name in ("worker", "kafka", "s3", "clickhouse")
            if _stop(state_dir, name, timeout_s)
        ]
    if purge:
        if not (state_dir / _MARKER).exists():
            raise StackError(
                f"{state_dir} has no {_MARKER} file, so it is not a cdrflow state folder "
                "(or was made by hand): not deleting it"
            )
        shutil.rmtree(state_dir)
    return stopped


def finance_password(settings: Settings) -> str | None:
    """The embedded ClickHouse's ``finance`` password (``CDRFLOW_FINANCE_PASSWORD``, else
    the generated one), or None before the first ``up``."""
    if settings.finance_password is not None:
        return settings.finance_password.get_secret_value()
    path = _finance_password_file(settings)
    return path.read_text().strip() if path.exists() else None


# ---------------------------------------------------------------------- topics and schema


def ensure_topics(settings: Settings, *, timeout_s: float = 30.0) -> tuple[list[str], list[str]]:
    """Create the topics of :data:`schemas.topics.TOPICS` that do not exist yet.

    Returns the names created and warnings (an existing topic whose partition count is
    not the configured one is left as it is: changing it would move accounts between
    partitions).
    """
    try:
        return _ensure_topics(settings, timeout_s)
    except KafkaError as error:
        raise StackError(
            f"could not create the topics on {','.join(settings.kafka_servers())}: {error!r}"
        ) from error


def _ensure_topics(settings: Settings, timeout_s: float) -> tuple[list[str], list[str]]:
    partitions = settings.topic_partitions
    admin = _kafka_admin(settings.kafka_servers(), timeout_s)
    try:
        existing = set(admin.list_topics())
        missing = [name for name in TOPICS if name not in existing]
        # The embedded broker has one node; on a real cluster -1 takes the cluster's default.
        replicas = 1 if settings.embedded_kafka else -1
        if missing:
            answer = admin.create_topics(
                {
                    name: {
                        "num_partitions": partitions,
                        "replication_factor": replicas,
                        **({"configs": TOPICS[name].configs} if TOPICS[name].configs else {}),
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
            f"say {partitions}; left as it is"
            for topic in admin.describe_topics(list(TOPICS))
            if len(topic["partitions"]) != partitions
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


# --------------------------------------------------------------------------------- status


def status(settings: Settings, *, timeout_s: float = 5.0) -> dict[str, Any]:
    """Servers, topics, consumer lag and ClickHouse tables, as plain data (JSON-ready).

    Never raises for a server that is down: what could not be read is listed under
    ``errors``. Keys: see :data:`STATUS_KEYS`. ``rejects_by_reason`` counts the rejected
    lines in ClickHouse (a replayed rejection once).

    ``topics[name]["end_offsets"]`` are the ends of the logs as Fetch responses report
    them, not as ListOffsets does (too low on tansu, see :func:`log_end_offsets`), and
    ``consumer_groups[group]["lag"]`` is counted from them.
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
        answer["blocked_accounts"] = {
            account: {**failure, "partition": partition}
            for partition, figures in answer["worker_state"].items()
            for account, failure in figures.get("blocked", {}).items()
        }
    if answer["servers"]["clickhouse"]["state"] == "up":
        try:
            answer["clickhouse_tables"] = _clickhouse_tables(settings)
            if "rejected_cdrs" in answer["clickhouse_tables"]:
                answer["rejects_by_reason"] = _rejects_by_reason(settings)
        except Exception as error:
            answer["errors"].append(f"clickhouse: {error}")
    if settings.embedded_clickhouse and finance_password(settings) is not None:
        where = (
            "CDRFLOW_FINANCE_PASSWORD"
            if settings.finance_password is not None
            else f"in {_finance_password_file(settings)}"
        )
        answer["notes"].append(f"finance (read-only) connects as user finance, password {where}")
    return answer


def worker_state(settings: Settings, topics: dict[str, Any] | None = None) -> dict[int, dict[str, Any]]:
    """Each ``cdr.raw`` partition's state figures and blocked accounts, as the worker
    holding it last published them on ``worker.status`` (streams.rating_worker)."""
    name = f"{settings.topic_prefix}worker.status"
    if topics is not None and name not in topics:
        return {}
    from streams.log_reader import read_topics  # aiokafka: only when asked

    latest: dict[int, dict[str, Any]] = {}
    for record in read_topics(settings.kafka_servers(), [name], timeout_s=30)[name]:
        try:
            figures = json.loads(record.value)
            latest[int(figures["partition"])] = figures
        except (ValueError, KeyError, TypeError):
            continue  # not a figures message: nothing to show
    return dict(sorted(latest.items()))


def log_end_offsets(
    bootstrap: list[str], partitions: Iterable[TopicPartition], *, timeout_s: float = 5.0
) -> dict[TopicPartition, int | None]:
    """The end offset (offset of the last record + 1) of each partition, as fetches see it.

    Do not trust ListOffsets (``KafkaConsumer.end_offsets``) on the embedded broker: with
    its s3 storage, tansu 0.6.0 answers the base offset + 1 of the first record batch of
    the newest second of the partition, so it can be low by a whole second of traffic
    (measured: 1 for a partition holding 4,102 records written within a second; the
    memory engine is low by up to one batch, docs/infra.md). The high watermark that
    comes with each Fetch response is right, so this fetches once from each partition
    and reads it (None for a partition that did not answer in time).
    """
    partitions = list(partitions)
    if not partitions:
        return {}
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id=_CLIENT_ID,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # where offset 0 is gone (retention), the log start
        request_timeout_ms=int(timeout_s * 1000) + 1000,
        fetch_max_wait_ms=500,  # shorter waits made tansu answer empty fetches (0: never)
        max_partition_fetch_bytes=1024,  # the watermark is what we want, not records
    )
    try:
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, 0)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(consumer.highwater(tp) is not None for tp in partitions):
                break
            consumer.poll(timeout_ms=100)
        return {tp: consumer.highwater(tp) for tp in partitions}
    finally:
        consumer.close()


# ------------------------------------------------------------------------------- launches


@dataclass(frozen=True)
class _Launch:
    """How to start one embedded server and how to tell that it answers."""

    name: str
    command: Callable[[], list[str]]  # resolved at start: the binary may be missing
    env: Callable[[], dict[str, str]]
    address: str
    ports: dict[int, str]  # every port it listens on -> the variable that sets it
    log: Path
    answers: Callable[[], bool]
    error_log: Path | None = None  # where it explains a failed start, if not in `log`

    @property
    def port_variable(self) -> str:
        return next(iter(self.ports.values()))

    def failure_details(self, record: dict[str, Any] | None) -> str:
        """The end of its logs, from where this start began writing them."""
        offsets = (record or {}).get("log_offsets", {})
        lines = _log_lines(self.log, offsets.get(str(self.log), 0))[-12:]
        details = f"see its log {self.log}:\n" + "\n".join("    " + line for line in lines)
        if self.error_log is not None:
            errors = [
                line
                for line in _log_lines(self.error_log, offsets.get(str(self.error_log), 0))
                if "<Error>" in line
            ][-3:]
            if errors:
                details += f"\nlast errors in {self.error_log}:\n" + "\n".join(
                    "    " + line for line in errors
                )
        return details


def _launches(settings: Settings) -> list[_Launch]:
    state = settings.state_dir
    logs = state / "logs"
    launches = []
    if settings.embedded_kafka:
        s3_url = f"http://{EMBEDDED_HOST}:{settings.s3_port}"
        kafka_url = f"tcp://{EMBEDDED_HOST}:{settings.kafka_port}"
        servers = settings.kafka_servers()
        launches += [
            _Launch(
                name="s3",
                command=lambda: [
                    *_localbucket_command(),
                    "--host",
                    EMBEDDED_HOST,
                    "--port",
                    str(settings.s3_port),
                    str(state / "s3"),
                ],
                env=_clean_env,
                address=f"{EMBEDDED_HOST}:{settings.s3_port}",
                ports={settings.s3_port: "CDRFLOW_S3_PORT"},
                log=logs / "s3.log",
                answers=lambda: _http_answers(s3_url),
            ),
            _Launch(
                name="kafka",
                command=lambda: [
                    str(_tansu_bin(settings)),
                    "broker",
                    "--listener-url",
                    kafka_url,
                    "--advertised-listener-url",
                    kafka_url,
                    "--storage-engine",
                    f"s3://{BROKER_BUCKET}/",
                ],
                env=lambda: {**_clean_env(), **_S3_ENV, "AWS_ENDPOINT": s3_url},
                address=f"{EMBEDDED_HOST}:{settings.kafka_port}",
                ports={settings.kafka_port: "CDRFLOW_KAFKA_PORT"},
                log=logs / "kafka.log",
                answers=lambda: _kafka_answers(servers),
            ),
        ]
    if settings.embedded_clickhouse:
        config = _clickhouse_dir(settings) / "config.xml"
        launches.append(
            _Launch(
                name="clickhouse",
                command=lambda: [*_clickhouse_server_command(), f"--config-file={config}"],
                env=_clean_env,
                address=f"{EMBEDDED_HOST}:{settings.clickhouse_tcp_port}",
                ports={
                    settings.clickhouse_tcp_port: "CDRFLOW_CLICKHOUSE_TCP_PORT",
                    settings.clickhouse_http_port: "CDRFLOW_CLICKHOUSE_HTTP_PORT",
                },
                log=logs / "clickhouse.log",
                answers=lambda: _clickhouse_answers(settings),
                error_log=logs / "clickhouse-server.err.log",
            )
        )
    return launches


def _localbucket_command() -> list[str]:
    if importlib.util.find_spec("localbucket") is None:
        raise StackError(
            f"the S3 server localbucket is not installed in {sys.prefix}: run `make setup` "
            "(or pip install localbucket)"
        )
    # localbucket with TCP_NODELAY and listings walked from the prefix, quiet below WARNING.
    return [sys.executable, "-m", "streams.s3_server"]


def _clean_env() -> dict[str, str]:
    # The servers read some variables of their own (tansu: STORAGE_ENGINE, LISTENER_URL,
    # AWS_*); pass them only what we set.
    dropped = (
        "AWS_",
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "OTEL_",
    )
    return {key: value for key, value in os.environ.items() if not key.startswith(dropped)}


def _tansu_bin(settings: Settings) -> Path:
    candidates = [settings.tansu_bin] if settings.tansu_bin else [PROJECT_TANSU]
    found = shutil.which("tansu")
    candidates += [Path(found)] if found and not settings.tansu_bin else []
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise StackError(
        f"the tansu broker is not installed (looked for {', '.join(map(str, candidates))} and "
        "tansu on PATH): run `make setup` (scripts/setup-servers.sh), or set CDRFLOW_TANSU_BIN"
    )


def _clickhouse_server_command() -> list[str]:
    # Debian's package ships /usr/sbin/clickhouse-server; upstream's one /usr/bin/clickhouse.
    for path in (
        shutil.which("clickhouse-server"),
        "/usr/sbin/clickhouse-server",
        "/usr/bin/clickhouse-server",
    ):
        if path and os.access(path, os.X_OK):
            return [path]
    if os.access("/usr/bin/clickhouse", os.X_OK):
        return ["/usr/bin/clickhouse", "server"]
    raise StackError(
        "the ClickHouse server is not installed (no clickhouse-server in PATH, /usr/sbin or "
        "/usr/bin): run `make setup` (scripts/setup-servers.sh)"
    )


# ---------------------------------------------------------------------- ClickHouse config


def _clickhouse_dir(settings: Settings) -> Path:
    return settings.state_dir / "clickhouse"


def _finance_password_file(settings: Settings) -> Path:
    return _clickhouse_dir(settings) / "finance.password"


def _write_clickhouse_config(settings: Settings) -> None:
    """Write config.xml and users.xml (when changed) and the finance password (once)."""
    home = _clickhouse_dir(settings)
    logs = settings.state_dir / "logs"
    for folder in (home / "data", home / "tmp", home / "user_files", logs):
        folder.mkdir(parents=True, exist_ok=True)
    password_file = _finance_password_file(settings)
    if settings.finance_password is not None:
        # Given by the operator (CDRFLOW_FINANCE_PASSWORD): only its hash is written.
        password = settings.finance_password.get_secret_value()
        where = "CDRFLOW_FINANCE_PASSWORD"
    else:
        if not password_file.exists():
            # Generated once; kept with the data it protects.
            password_file.touch(mode=0o600)
            password_file.write_text(secrets.token_urlsafe(18) + "\n")
        password = password_file.read_text().strip()
        where = f"password in {escape(str(password_file))}"
    password_hash = sha256(password.encode()).hexdigest()

    def path(folder: Path) -> str:
        return escape(str(folder)) + "/"

    config = f"""<?xml version="1.0"?>
<!-- Written by cdrflow up (streams/stack.py); rewritten on each up. -->
<yandex>
    <logger>
        <level>warning</level>
        <log>{escape(str(logs / "clickhouse-server.log"))}</log>
        <errorlog>{escape(str(logs / "clickhouse-server.err.log"))}</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>
    <listen_host>{EMBEDDED_HOST}</listen_host>
    <tcp_port>{settings.clickhouse_tcp_port}</tcp_port>
    <http_port>{settings.clickhouse_http_port}</http_port>
    <path>{path(home / "data")}</path>
    <tmp_path>{path(home / "tmp")}</tmp_path>
    <user_files_path>{path(home / "user_files")}</user_files_path>
    <format_schema_path>{path(home / "format_schemas")}</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <!-- DateTime values read the same on every machine. -->
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
"""
    users = f"""<?xml version="1.0"?>
<!-- Written by cdrflow up (streams/stack.py); rewritten on each up. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>10000000000</max_memory_usage>
        </default>
        <readonly>
            <readonly>1</readonly>
        </readonly>
    </profiles>
    <users>
        <!-- The pipeline: all rights, from this machine only. -->
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <!-- Finance: SELECT only (readonly=1); {where}. -->
        <finance>
            <password_sha256_hex>{password_hash}</password_sha256_hex>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>readonly</profile>
            <quota>default</quota>
        </finance>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""
    _write_if_changed(home / "config.xml", config)
    _write_if_changed(home / "users.xml", users)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        partial.replace(path)


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


# ------------------------------------------------------------------------------ processes


def _prepare_state_dir(state_dir: Path) -> None:
    if state_dir.exists() and any(state_dir.iterdir()) and not (state_dir / _MARKER).exists():
        raise StackError(
            f"{state_dir} exists and is not a cdrflow state folder (no {_MARKER} file): "
            "choose another one with --state-dir or CDRFLOW_STATE_DIR"
        )
    for folder in ("run", "logs", f"s3/{BROKER_BUCKET}"):
        (state_dir / folder).mkdir(parents=True, exist_ok=True)
    (state_dir / _MARKER).touch()


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Hold the state folder's lock (one ``up`` or ``down`` at a time)."""
    with (state_dir / "run" / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pid_file(state_dir: Path, name: str) -> Path:
    return state_dir / "run" / f"{name}.json"


def _read_record(state_dir: Path, name: str) -> dict[str, Any] | None:
    try:
        return json.loads(_pid_file(state_dir, name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _live_record(state_dir: Path, name: str) -> dict[str, Any] | None:
    """The pid file of ``name`` if its process is alive (and is the one that wrote it)."""
    record = _read_record(state_dir, name)
    if record is None or not _process_alive(record["pid"], record["start_ticks"]):
        return None
    return record


def _is_live(state_dir: Path, name: str) -> bool:
    return _live_record(state_dir, name) is not None


def _start_ticks(pid: int) -> tuple[str, int] | None:
    """Process state letter and start time (clock ticks after boot) from /proc, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _process_alive(pid: int, start_ticks: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]
        return False
    found = _start_ticks(pid)
    # A different start time means the pid was reused by another process.
    return found is not None and found[0] != "Z" and found[1] == start_ticks


def _start(state_dir: Path, launch: _Launch) -> ServerInfo:
    for port, variable in launch.ports.items():
        if _port_open(EMBEDDED_HOST, port):
            raise StackError(
                f"port {port} for {launch.name} is taken by another program (not started from "
                f"{state_dir}): stop it, or choose another port with {variable}"
            )
    argv = launch.command()
    launch.log.parent.mkdir(parents=True, exist_ok=True)
    # Logs are appended to across starts: a failure is explained from these offsets on.
    log_offsets = {
        str(path): path.stat().st_size if path.exists() else 0
        for path in (launch.log, launch.error_log)
        if path is not None
    }
    with launch.log.open("ab") as log:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"--- cdrflow up {started}: {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=launch.env(),
            cwd=state_dir,
            start_new_session=True,  # setsid: the server outlives `cdrflow up`
        )
    _CHILDREN[process.pid] = process
    ticks = _start_ticks(process.pid)
    record = {
        "pid": process.pid,
        "start_ticks": ticks[1] if ticks else 0,
        "address": launch.address,
        "argv": argv,
        "log": str(launch.log),
        "log_offsets": log_offsets,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_if_changed(_pid_file(state_dir, launch.name), json.dumps(record, indent=2) + "\n")
    return ServerInfo(launch.name, launch.address, process.pid, launch.log, reused=False)


def _wait_until_answers(state_dir: Path, launch: _Launch, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        record = _read_record(state_dir, launch.name)
        if record is None or not _process_alive(record["pid"], record["start_ticks"]):
            raise StackError(
                f"{launch.name} stopped while starting; {launch.failure_details(record)}"
            )
        if launch.answers():
            return
        if time.monotonic() > deadline:
            raise StackError(
                f"{launch.name} (pid {record['pid']}) did not answer on {launch.address} within "
                f"{timeout_s:.0f} s (`cdrflow down` stops it); {launch.failure_details(record)}"
            )
        time.sleep(0.2)


def _check_external(name: str, answers: Callable[[], bool], address: str, timeout_s: float) -> None:
    deadline = time.monotonic() + min(timeout_s, 15.0)
    while not answers():
        if time.monotonic() > deadline:
            variable = "CDRFLOW_KAFKA_BOOTSTRAP" if name == "kafka" else "CDRFLOW_CLICKHOUSE_URL"
            raise StackError(f"{name} at {address} (from {variable}) does not answer")
        time.sleep(0.5)


def remove_topic_files(settings: Settings, topic: str) -> bool:
    """Remove a deleted topic's files from the embedded broker's S3 folder.

    tansu deletes a topic from its metadata, then fails to delete its objects in the
    local store (localbucket answers 501 to S3's multi-object delete; docs/infra.md), so
    the files would stay forever. Only for a topic the broker no longer lists.
    """
    folder = settings.state_dir / "s3" / BROKER_BUCKET / "clusters" / TANSU_CLUSTER / "topics" / topic
    if folder.parent.name != "topics" or not folder.is_dir():
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def free_ports(count: int, span: range = range(20000, 30000)) -> list[int]:
    """``count`` distinct ports nothing listens on, from ``span`` (default 20000-30000: a
    second stack's ports). Stacks started at the same moment take disjoint spans: a port
    found free here is only taken when the server binds it."""
    ports: list[int] = []
    for port in random.sample(span, min(200, len(span))):
        with socket.socket() as probe:
            try:
                probe.bind((EMBEDDED_HOST, port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise StackError(f"no free ports between {span.start} and {span.stop - 1}")


def start_worker(settings: Settings, *, loglevel: str = "warn") -> ServerInfo:
    """Start a ``cdrflow worker`` in the background under the state folder.

    ``cdrflow demo`` runs it so the stack rates on its own afterwards; ``down`` stops it.
    A worker already running from this state folder is reused.
    """
    state_dir = settings.state_dir
    log = state_dir / "logs" / "worker.log"
    with _locked(state_dir):
        record = _read_record(state_dir, "worker")
        if record is not None and _process_alive(record["pid"], record["start_ticks"]):
            return ServerInfo("worker", "-", record["pid"], log, reused=True)
        env = {**os.environ, "CDRFLOW_STATE_DIR": str(state_dir)}
        launch = _Launch(
            name="worker",
            command=lambda: [sys.executable, "-m", "streams.worker_cli", "--loglevel", loglevel],
            env=lambda: env,
            address="-",
            ports={},
            log=log,
            answers=lambda: True,
        )
        return _start(state_dir, launch)


def _stop(state_dir: Path, name: str, timeout_s: float) -> bool:
    """Stop the server of a pid file: SIGTERM, then SIGKILL after ``timeout_s``."""
    record = _read_record(state_dir, name)
    if record is None:
        return False
    pid, ticks = record["pid"], record["start_ticks"]
    was_alive = _process_alive(pid, ticks)
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        if not _process_alive(pid, ticks):
            break
        _signal_group(pid, sig)
        deadline = time.monotonic() + wait_s
        while _process_alive(pid, ticks) and time.monotonic() < deadline:
            time.sleep(0.05)
    if _process_alive(pid, ticks):
        raise StackError(f"{name} (pid {pid}) did not stop, even after SIGKILL")
    _pid_file(state_dir, name).unlink(missing_ok=True)
    _CHILDREN.pop(pid, None)
    return was_alive


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        # Each server leads its own session (setsid), so its group holds it and its children.
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _log_lines(path: Path, offset: int = 0, last_bytes: int = 64_000) -> list[str]:
    """The lines of a log written after ``offset`` (at most its last ``last_bytes``)."""
    try:
        with path.open("rb") as log:
            log.seek(max(log.seek(0, os.SEEK_END) - last_bytes, offset))
            return log.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return []


# --------------------------------------------------------------------------------- probes


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True  # an S3 error document is an answer
    except OSError:
        return False


def _kafka_admin(bootstrap: list[str], timeout_s: float) -> KafkaAdminClient:
    timeout_ms = int(timeout_s * 1000)
    return KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id=_CLIENT_ID,
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
    )


@contextmanager
def _quiet_client_logs() -> Iterator[None]:
    """Mute kafka-python's and clickhouse-driver's logs of refused connections.

    Both log each one with a traceback; while a server starts, those are expected.
    """
    loggers = [logging.getLogger(name) for name in ("kafka", "clickhouse_driver")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _kafka_answers(bootstrap: list[str]) -> bool:
    # A TCP check first: it is cheaper than a client's bootstrap when nothing listens.
    if not any(_port_open(*_host_port(server, 9092)) for server in bootstrap):
        return False
    with _quiet_client_logs():
        try:
            admin = _kafka_admin(bootstrap, 3.0)
        except Exception:
            return False
        try:
            admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            admin.close()


def _clickhouse_answers(settings: Settings) -> bool:
    params = settings.clickhouse_params()
    # No TCP pre-check here: ClickHouse logs a warning for each connection without data.
    client = Client(**{**params, "database": ""}, connect_timeout=1, send_receive_timeout=3)
    with _quiet_client_logs():
        try:
            return client.execute("SELECT 1") == [(1,)]
        except Exception:
            return False
        finally:
            client.disconnect()


def _host_port(server: str, default_port: int) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return (host, int(port)) if host else (server, default_port)


# ------------------------------------------------------------------------- status details


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
            "state": "up" if _kafka_answers(bootstrap) else "down",
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
    bootstrap = settings.kafka_servers()
    admin = _kafka_admin(bootstrap, timeout_s)
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
        ends = log_end_offsets(bootstrap, partitions, timeout_s=timeout_s)
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


def _clickhouse_tables(settings: Settings) -> dict[str, Any]:
    params = settings.clickhouse_params()
    client = Client(**{**params, "database": ""}, connect_timeout=2, send_receive_timeout=10)
    try:
        database = {"database": params["database"]}
        tables = client.execute(
            "SELECT name, engine FROM system.tables WHERE database = %(database)s ORDER BY name",
            database,
        )
        # Rows stored in active parts: replays not yet collapsed by a merge count here.
        part_rows = dict(
            client.execute(
                "SELECT table, sum(rows) FROM system.parts "
                "WHERE database = %(database)s AND active GROUP BY table",
                database,
            )
        )
        answer = {}
        for name, engine in tables:
            if engine.endswith("MergeTree"):
                rows: int | None = int(part_rows.get(name, 0))
            elif engine in ("View", "MaterializedView"):
                rows = None  # a view holds nothing itself (MV ... TO keeps rows elsewhere)
            else:
                rows = client.execute(
                    f"SELECT count() FROM {_quote_identifier(params['database'])}."
                    f"{_quote_identifier(name)}"
                )[0][0]
            answer[name] = {"engine": engine, "rows": rows}
        return answer
    finally:
        client.disconnect()


def _rejects_by_reason(settings: Settings) -> dict[str, int]:
    params = settings.clickhouse_params()
    client = Client(**{**params, "database": ""}, connect_timeout=2, send_receive_timeout=10)
    try:
        rows = client.execute(
            "SELECT reason, count() FROM "
            f"{_quote_identifier(params['database'])}.rejected_cdrs FINAL "
            "GROUP BY reason ORDER BY reason"
        )
        return {reason: int(count) for reason, count in rows}
    finally:
        client.disconnect()
