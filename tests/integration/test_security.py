"""Closed to strangers, TLS, secrets kept (issue 22, items 1-3), on real servers.

- the session's embedded stack: the state folder is 0700, its logs and passwords 0600,
  every server listens on 127.0.0.1 only, ClickHouse refuses ``default`` without its
  generated password, ``cdrflow topics --check`` passes;
- a topic made with a short retention: ``topics --check`` fails (exit 1) naming it, and
  ``status`` shows it;
- the whole pipeline over TLS: a ClickHouse 18.16 serving TLS (``tcp_port_secure``, a
  certificate made by openssl) and the broker behind a TLS terminator (tansu 0.6.0 has no
  TLS listener of its own: docs/operations.md). ``up`` (external), ``load``, a worker
  (Faust and aiokafka), ``ingest --wait``, ``topics --check``, ``status``, ``export``: the
  export equals the vector set's expected files. With sentinel secrets (ClickHouse
  password, a webhook URL's password and token, a bearer token), none of them appears
  in any log, any command's output or any process's command line.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import re
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from schemas.topics import TOPICS
from streams.offline.compare import compare_outputs
from streams.settings import KafkaAccess, Settings
from streams.stack.clickhouse_config import _clickhouse_server_command, _write_clickhouse_config
from streams.stack.servers import PROJECT_TANSU, free_ports
from tests.conftest import CDRFLOW, VECTORS, self_signed_certificate
from tests.integration.pipeline import stack_cli_env

pytestmark = pytest.mark.integration

BASIC = VECTORS / "basic"


def _cli(env: dict[str, str], *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDRFLOW_")}
    return subprocess.run([str(CDRFLOW), *map(str, args)], env={**clean, **env}, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------- the embedded stack


def test_the_embedded_stack_is_closed_to_other_users_and_other_machines(stack: Settings) -> None:
    state = stack.state_dir
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in [*(state / "logs").iterdir(), stack.clickhouse_admin_password_file,
                 state / "clickhouse" / "finance.password", state / "clickhouse" / "users.xml"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # Every port a server of the stack listens on is bound to the loopback address.
    pids = {json.loads(p.read_text())["pid"] for p in (state / "run").glob("*.json")}
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    mine = [line for line in listening.splitlines() if any(f"pid={pid}," in line for pid in pids)]
    assert len(mine) >= 4, listening  # s3, kafka, ClickHouse native and HTTP
    for line in mine:
        assert line.split()[3].startswith("127.0.0.1:"), line
    # The pipeline's ClickHouse user needs the generated password; finance stays read-only.
    params = stack.clickhouse_params()
    assert len(params["password"]) >= 20
    for password, code in (("", 194), ("wrong", 193)):  # REQUIRED_PASSWORD, WRONG_PASSWORD
        with pytest.raises(ServerException) as refused:
            Client(**{**params, "password": password, "database": ""}).execute("SELECT 1")
        assert refused.value.code == code, refused.value
    assert Client(**{**params, "database": ""}).execute("SELECT 1") == [(1,)]


def test_topics_check_passes_on_the_stack_and_fails_on_a_topic_with_a_short_retention(stack: Settings) -> None:
    passed = _cli(stack_cli_env(stack), "topics", "--check", "--json")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    answer = json.loads(passed.stdout)
    assert answer["ok"] and answer["problems"] == []
    raw = next(t for t in answer["topics"] if t["name"] == "cdr.raw")
    assert raw["cluster"]["configs"]["retention.ms"] == "-1" and raw["cluster"]["replication"] == 1

    # A pipeline whose cdr.raw was made by hand with a week's retention (Kafka's default).
    prefix = f"short{os.getpid()}."
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_servers())
    try:
        admin.create_topics([
            NewTopic(f"{prefix}{name}", stack.topic_partitions, 1,
                     topic_configs={**topic.created_with(1), **({"retention.ms": "604800000"} if name == "cdr.raw" else {})})
            for name, topic in TOPICS.items()
        ])
    finally:
        admin.close()
    env = {**stack_cli_env(stack), "CDRFLOW_TOPIC_PREFIX": prefix}
    failed = _cli(env, "topics", "--check")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"{prefix}cdr.raw: retention.ms is 604800000 (7.0 days)" in failed.stderr
    problems = json.loads(_cli(env, "topics", "--check", "--json").stdout)["problems"]
    assert [p["topic"] for p in problems] == [f"{prefix}cdr.raw"]
    status = _cli(env, "status", "--json")
    assert any(p.startswith(f"{prefix}cdr.raw: retention.ms") for p in json.loads(status.stdout)["topic_problems"])


# ------------------------------------------------------------------- TLS everywhere


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tls")
    return {"cert": self_signed_certificate(folder), "key": folder / "key.pem"}


SENTINELS = {
    "clickhouse": "ch-Sentinel-7f3a9c",
    "webhook_query": "query-Sentinel-a77d",
    "webhook_token": "bearer-Sentinel-c2b8",
}


@pytest.fixture(scope="module")
def tls_clickhouse(tls: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A ClickHouse 18.16 of its own answering TLS only on its native port (the sentinel password)."""
    home = tmp_path_factory.mktemp("tls-clickhouse")
    plain, secure, http_port = free_ports(3, range(31000, 32000))
    settings = Settings(state_dir=home, kafka_bootstrap=None, clickhouse_url=None, clickhouse_tcp_port=plain,
                        clickhouse_http_port=http_port, clickhouse_password=SENTINELS["clickhouse"])
    _write_clickhouse_config(settings)
    config = home / "clickhouse" / "config.xml"
    config.write_text(config.read_text().replace(
        f"<tcp_port>{plain}</tcp_port>",
        f"<tcp_port_secure>{secure}</tcp_port_secure><openSSL><server>"
        f"<certificateFile>{tls['cert']}</certificateFile><privateKeyFile>{tls['key']}</privateKeyFile>"
        "<verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile>"
        "<disableProtocols>sslv2,sslv3</disableProtocols></server></openSSL>",
    ))
    process = subprocess.Popen([*_clickhouse_server_command(), f"--config-file={config}"], cwd=home,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    params = {"host": "127.0.0.1", "port": secure, "user": "default", "password": SENTINELS["clickhouse"],
              "secure": True, "ca_certs": str(tls["cert"])}
    deadline = time.monotonic() + 60
    while True:
        try:
            Client(**params, connect_timeout=1).execute("SELECT 1")
            break
        except Exception:
            assert process.poll() is None and time.monotonic() < deadline, "the TLS ClickHouse did not answer"
            time.sleep(0.3)
    try:
        yield {"port": secure, "logs": home / "logs", "pid": process.pid}
    finally:
        process.terminate()
        process.wait(timeout=30)


class TlsTerminator:
    """TLS on ``port``, plain TCP to ``target`` (what a TLS listener of the broker would do)."""

    def __init__(self, port: int, target: int, cert: Path, key: Path):
        self.port, self.target = port, target
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.context)
        )
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(1 << 16):
                    sink.write(data)
                    await sink.drain()
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def tls_kafka(tls: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A tansu broker (memory store) reached only through TLS: clients see 127.0.0.1:<tls port>."""
    plain, secure = free_ports(2, range(32000, 33000))
    log = tmp_path_factory.mktemp("tls-kafka") / "tansu.log"
    with log.open("wb") as out:
        broker = subprocess.Popen(
            [str(PROJECT_TANSU), "broker", "--listener-url", f"tcp://127.0.0.1:{plain}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{secure}", "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    terminator = TlsTerminator(secure, plain, tls["cert"], tls["key"])
    try:
        yield {"bootstrap": f"127.0.0.1:{secure}", "log": log, "pid": broker.pid}
    finally:
        terminator.stop()
        broker.terminate()
        broker.wait(timeout=30)


class _Webhook(http.server.BaseHTTPRequestHandler):
    """Answers 503 to every other alert (so the notifier retries and logs the URL)."""

    seen: list[tuple[str, str]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append((self.path, self.headers.get("Authorization", "")))
        self.send_response(503 if len(type(self).seen) % 2 else 200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_pipeline_over_tls_lands_exactly_and_no_secret_leaves_a_process(
    stack: Settings, tls: dict[str, Path], tls_clickhouse: dict[str, object], tls_kafka: dict[str, object],
    tmp_path: Path,
) -> None:
    webhook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    host, port = webhook.server_address[:2]
    env = {
        "CDRFLOW_STATE_DIR": str(tmp_path / "state"),
        "CDRFLOW_KAFKA_BOOTSTRAP": str(tls_kafka["bootstrap"]),
        "CDRFLOW_KAFKA_SECURITY_PROTOCOL": "SSL",
        "CDRFLOW_KAFKA_SSL_CAFILE": str(tls["cert"]),
        # The password in the URL: the form most likely to be printed by mistake.
        "CDRFLOW_CLICKHOUSE_URL": f"clickhouse://default:{SENTINELS['clickhouse']}@127.0.0.1:{tls_clickhouse['port']}"
                                  "/tls_pipeline",
        "CDRFLOW_CLICKHOUSE_SECURE": "true",
        "CDRFLOW_CLICKHOUSE_CA_FILE": str(tls["cert"]),
        "CDRFLOW_TOPIC_PARTITIONS": "2",
        "CDRFLOW_TOPIC_REPLICATION_FACTOR": "1",
        "CDRFLOW_APP_ID": "cdrflow-tls",
        "CDRFLOW_ALERT_WEBHOOK": f"http://{host}:{port}/alerts?token={SENTINELS['webhook_query']}",
        "CDRFLOW_ALERT_WEBHOOK_TOKEN_FILE": str(_secret(tmp_path, "webhook", SENTINELS["webhook_token"])),
    }
    outputs: list[str] = []

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        result = _cli(env, *args)
        outputs.extend((result.stdout, result.stderr))
        return result

    up = run("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "(TLS)" in up.stdout
    assert run("load", "--plans", BASIC / "plans", "--accounts", BASIC / "accounts.toml").returncode == 0
    worker_log = tmp_path / "worker.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDRFLOW_")}
    with worker_log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli.worker", "--loglevel", "debug"],
                                  env={**clean, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        ingested = run("ingest", BASIC / "cdrs.csv", "--wait", "--timeout", "240", "--json")
        assert ingested.returncode == 0, ingested.stdout + ingested.stderr
        checked = run("topics", "--check")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        status = run("status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert json.loads(status.stdout)["clickhouse_url"].endswith("/tls_pipeline (TLS)")
        exported = run("export", "--out", tmp_path / "export")
        assert exported.returncode == 0, exported.stdout + exported.stderr
        compared = compare_outputs(BASIC / "expected", tmp_path / "export")
        assert compared.ok, compared.report()
        # Issue 24's invoices over TLS (the catalogue, ClickHouse): March is open, so drafts.
        invoiced = run("invoice", "--all", "--month", "2026-03", "--json", "--out", tmp_path / "invoices")
        assert invoiced.returncode == 0, invoiced.stdout + invoiced.stderr
        drafts = json.loads(invoiced.stdout)["documents"]
        assert drafts and len(list((tmp_path / "invoices").glob("draft-*.html"))) == len(drafts)
        # The router over TLS (its group consumer, position book, read-back): the vector's
        # lines again, from a topic of their own (already on cdr.raw: the worker rejects them).
        tls_access = KafkaAccess((str(tls_kafka["bootstrap"]),), "SSL", ssl_cafile=str(tls["cert"]))
        outputs.append(_route_the_lines(tls_access, env, tmp_path))
        # The alerts reached the webhook with the bearer token, some after a retry.
        deadline = time.monotonic() + 60
        while len({p for p, _ in _Webhook.seen}) < 1 or len(_Webhook.seen) < 4:
            assert time.monotonic() < deadline, _Webhook.seen
            time.sleep(0.5)
        assert {auth for _, auth in _Webhook.seen} == {f"Bearer {SENTINELS['webhook_token']}"}
        cmdlines = _command_lines()
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        webhook.shutdown()
    text = worker_log.read_text(errors="replace")
    assert f"alert webhook http://{host}:{port}/alerts?token=***" in text  # retries logged, the URL without its token
    # No secret in any log, output or command line. The sentinels, and the session stack's
    # generated passwords.
    secrets = [*SENTINELS.values(), stack.clickhouse_params()["password"],
               (stack.state_dir / "clickhouse" / "finance.password").read_text().strip()]
    places = {"worker log": text, **{f"output {i}": out for i, out in enumerate(outputs)}}
    for folder in (Path(str(tls_clickhouse["logs"])), stack.state_dir / "logs", tmp_path / "state"):
        for path in folder.rglob("*"):
            if path.is_file() and not path.name.endswith(".password"):
                places[str(path)] = path.read_text(errors="replace")
    places["tansu log"] = Path(str(tls_kafka["log"])).read_text(errors="replace")
    places.update(cmdlines)
    leaks = [(where, secret) for where, content in places.items() for secret in secrets if secret in content]
    assert leaks == [], leaks
    assert len(places) > 10


def _route_the_lines(access: KafkaAccess, env: dict[str, str], tmp_path: Path) -> str:
    """``cdrflow route --json`` of the basic vector's lines (one per message, put on the
    broker through ``access``) until it has read them all; what it printed."""
    topic = f"tls-switch-lines-{os.getpid()}"
    admin = KafkaAdminClient(**access.kafka_python())
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
        admin.wait_for_topics([topic], timeout_ms=30_000)
    finally:
        admin.close()
    lines = (BASIC / "cdrs.csv").read_bytes().splitlines()
    producer = KafkaProducer(**access.kafka_python(), linger_ms=20)
    for line in lines:
        producer.send(topic, value=line)
    producer.flush(timeout=60)
    producer.close()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDRFLOW_")}
    log = tmp_path / "route.out"
    with log.open("wb") as out:
        router = subprocess.Popen([str(CDRFLOW), "route", "--from-topic", topic, "--json"], env={**clean, **env},
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not any(
            event.get("lines", 0) >= len(lines)
            for event in (json.loads(text) for text in log.read_text().splitlines() if text.startswith("{"))
        ):
            assert router.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(1.0)
    finally:
        router.terminate()
        router.wait(timeout=60)
    return log.read_text()


def _secret(folder: Path, name: str, value: str) -> Path:
    path = folder / f"{name}.secret"
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def _command_lines() -> dict[str, str]:
    """Every process's command line (``/proc/*/cmdline``), by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if re.fullmatch(r"\d+", entry.name):
            try:
                found[f"/proc/{entry.name}/cmdline"] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace"
                )
            except OSError:
                continue
    return found
