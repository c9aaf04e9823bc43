"""Start and stop the servers cdrflow runs on (`cdrflow up`, `down`), and the worker of `cdrflow demo`.

On one machine (``Settings.embedded``) :func:`up` starts three background processes
under the state folder, each in its own session with its own log and pid file:

- ``s3``: a localbucket S3 server keeping the broker's log as files in ``STATE/s3``;
- ``kafka``: the tansu Kafka-protocol broker, storing in ``s3://tansu/`` on that server,
  so ``down`` then ``up`` loses nothing (docs/infra.md: durable storage);
- ``clickhouse``: the Debian ClickHouse server with a config written to
  ``STATE/clickhouse``, a ``default`` user for the pipeline (password
  ``CDRFLOW_CLICKHOUSE_PASSWORD``, else one generated once into
  ``STATE/clickhouse/admin.password``, which every cdrflow command reads) and a read-only
  ``finance`` user (``readonly=1``: SELECT only) whose password is
  ``CDRFLOW_FINANCE_PASSWORD``, else one generated once into
  ``STATE/clickhouse/finance.password``. Only their SHA-256 is written to users.xml; the
  passwords are never printed or logged, their files are 0600.

Every server listens on 127.0.0.1 only; the state folder is 0700 and the logs 0600.

When ``CDRFLOW_KAFKA_BOOTSTRAP`` / ``CDRFLOW_CLICKHOUSE_URL`` are set, the server they
name is used as it is and only the topics and the schema are ensured. State folder
layout::

    STATE/.cdrflow-state           marks the folder as ours (``down --purge`` checks it)
    STATE/run/NAME.json            pid file: pid, start time, command, address
    STATE/logs/NAME.log            stdout and stderr of each server
    STATE/s3/tansu/                the broker's bucket
    STATE/clickhouse/              config.xml, users.xml, admin.password, finance.password, data/, tmp/
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from streams.clickhouse.migrations import MIGRATIONS_DIR
from streams.settings import EMBEDDED_HOST, Settings
from streams.stack.clickhouse_config import (
    _clickhouse_dir,
    _clickhouse_server_command,
    _finance_password_file,
    _write_clickhouse_config,
)
from streams.stack.embedded import BROKER_BUCKET, ServerInfo, StackError, StackInfo
from streams.stack.processes import (
    _MARKER,
    _clean_env,
    _clickhouse_answers,
    _http_answers,
    _is_live,
    _kafka_answers,
    _Launch,
    _live_record,
    _locked,
    _prepare_state_dir,
    _process_alive,
    _read_record,
    _start,
    _stop,
    _wait_until_answers,
)
from streams.stack.provision import ensure_schema, ensure_topics
from streams.stack.topics import check_topics

#: The embedded servers, in start order (the broker needs its S3 store first).
SERVERS = ("s3", "kafka", "clickhouse")
#: Where `make setup` puts the broker binary.
PROJECT_TANSU = Path(__file__).resolve().parents[2] / ".tools" / "bin" / "tansu"

# The broker's own S3 client reads these; localbucket accepts any credentials.
_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "cdrflow",
    "AWS_SECRET_ACCESS_KEY": "cdrflow",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}


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
    streams.clickhouse.migrations.MigrationError
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
        _check_external("kafka", lambda: _kafka_answers(settings.kafka_access()), ",".join(bootstrap), timeout_s)
    if not settings.embedded_clickhouse:
        params = settings.clickhouse_params()
        address = f"{params['host']}:{params['port']}"
        servers.append(ServerInfo("clickhouse", address))
        _check_external("clickhouse", lambda: _clickhouse_answers(settings), address, timeout_s)

    say("creating topics")
    created, warnings = ensure_topics(settings, timeout_s=timeout_s)
    # Existing topics are never changed here: say which can lose data (cdrflow topics --check).
    try:
        warnings += [f"topic {f.topic}: {f.message} (cdrflow topics --check; docs/operations.md)"
                     for f in check_topics(settings, timeout_s=timeout_s).problems]
    except Exception as error:  # a cluster may refuse DescribeConfigs to this principal
        warnings.append(f"could not check the topics' configs ({error}): run cdrflow topics --check")
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
        admin_password_file=(
            settings.clickhouse_admin_password_file
            if settings.embedded_clickhouse and settings.clickhouse_password is None
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


# ------------------------------------------------------------------------------- launches


def _launches(settings: Settings) -> list[_Launch]:
    state = settings.state_dir
    logs = state / "logs"
    launches = []
    if settings.embedded_kafka:
        s3_url = f"http://{EMBEDDED_HOST}:{settings.s3_port}"
        kafka_url = f"tcp://{EMBEDDED_HOST}:{settings.kafka_port}"
        kafka = settings.kafka_access()
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
                answers=lambda: _kafka_answers(kafka),
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
                owner_only=(logs / "clickhouse-server.log", logs / "clickhouse-server.err.log"),
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
    return [sys.executable, "-m", "streams.stack.s3_server"]


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


# ------------------------------------------------------------------------------ processes


def _check_external(name: str, answers: Callable[[], bool], address: str, timeout_s: float) -> None:
    deadline = time.monotonic() + min(timeout_s, 15.0)
    while not answers():
        if time.monotonic() > deadline:
            variable = "CDRFLOW_KAFKA_BOOTSTRAP" if name == "kafka" else "CDRFLOW_CLICKHOUSE_URL"
            raise StackError(f"{name} at {address} (from {variable}) does not answer")
        time.sleep(0.5)


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
            command=lambda: [sys.executable, "-m", "streams.cli.worker", "--loglevel", loglevel],
            env=lambda: env,
            address="-",
            ports={},
            log=log,
            answers=lambda: True,
        )
        return _start(state_dir, launch)
