"""TLS / SASL settings reach every client (issue 22, item 3), and secrets stay secret.

No broker is needed: each client factory is built with a SASL_SSL (or TLS) configuration
and what it hands its library is looked at; a source scan checks that every Kafka and
ClickHouse client made anywhere in ``streams/`` is made from the settings' access.
"""

from __future__ import annotations

import ast
import asyncio
import io
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from streams.settings import KafkaAccess, Settings, install_log_redaction, redact
from tests.conftest import PROJECT, self_signed_certificate

@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed CA certificate (PEM), as a private CA's would be."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def sasl_ssl(certificate: Path, tmp_path: Path) -> Settings:
    password = tmp_path / "kafka_password"
    password.write_text("kafka-s3cret-from-a-file\n")
    return Settings(
        kafka_bootstrap="k1.example.com:9096,k2.example.com:9096",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="cdrflow",
        kafka_sasl_password_file=password,
        kafka_ssl_cafile=certificate,
        clickhouse_url="clickhouse://cdrflow@ch.example.com:9440/billing",
        clickhouse_password="clickhouse-s3cret",
        clickhouse_secure=True,
        clickhouse_ca_file=certificate,
        topic_replication_factor=3,
    )


class _Recorder:
    """Stands for a client class: records the keyword arguments it is made with."""

    made: list[dict[str, Any]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).made.append(kwargs)

    def __getattr__(self, name: str) -> Any:  # close(), topics(), ...
        return lambda *args, **kwargs: None


def _recorder() -> type[_Recorder]:
    return type("Recorded", (_Recorder,), {"made": []})


def _assert_sasl_ssl(options: dict[str, Any], certificate: Path) -> None:
    assert options["bootstrap_servers"] == ["k1.example.com:9096", "k2.example.com:9096"]
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "cdrflow"
    assert options["sasl_plain_password"] == "kafka-s3cret-from-a-file"
    if "ssl_context" in options:  # aiokafka
        assert isinstance(options["ssl_context"], ssl.SSLContext)
        assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED and options["ssl_context"].check_hostname
    else:  # kafka-python
        assert options["ssl_cafile"] == str(certificate) and options["ssl_check_hostname"] is True


def test_kafka_python_factories_get_the_security_settings(
    sasl_ssl: Settings, certificate: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streams.kafka.client as client

    for name in ("KafkaProducer", "KafkaConsumer", "KafkaAdminClient"):
        monkeypatch.setattr(client, name, _recorder())
    client.make_producer(sasl_ssl)
    client.make_reader(sasl_ssl)
    client._kafka_admin(sasl_ssl.kafka_access(), 1.0)
    client.log_end_offsets(sasl_ssl.kafka_access(), [], timeout_s=0.1)  # nothing asked: no client
    made = client.KafkaProducer.made + client.KafkaConsumer.made + client.KafkaAdminClient.made  # type: ignore[attr-defined]
    assert len(made) == 3
    for options in made:
        _assert_sasl_ssl(options, certificate)


def test_the_routers_consumer_gets_the_security_settings(sasl_ssl: Settings, certificate: Path) -> None:
    # feeds.shipped makes its group consumer itself: from the same access.
    options = sasl_ssl.kafka_access().kafka_python()
    _assert_sasl_ssl(options, certificate)


def test_aiokafka_clients_get_the_security_settings(sasl_ssl: Settings, certificate: Path) -> None:
    from streams.kafka.async_reader import _consumer

    async def made() -> dict[str, Any]:
        consumer = _consumer(sasl_ssl.kafka_access())
        client = consumer._client
        return {
            "bootstrap_servers": client._bootstrap_servers,
            "security_protocol": client._security_protocol,
            "sasl_mechanism": client._sasl_mechanism,
            "sasl_plain_username": client._sasl_plain_username,
            "sasl_plain_password": client._sasl_plain_password,
            "ssl_context": client._ssl_context,
        }

    _assert_sasl_ssl(asyncio.run(made()), certificate)


def test_the_state_log_makes_its_producer_and_admin_with_the_access(
    sasl_ssl: Settings, certificate: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streams.worker.state_log as state_log

    producers, admins = _recorder(), _recorder()

    async def start(self: Any) -> None:
        return None

    producers.start = start  # type: ignore[attr-defined]
    monkeypatch.setattr(state_log, "AIOKafkaProducer", producers)
    monkeypatch.setattr(state_log, "AIOKafkaAdminClient", admins)
    log = state_log.StateLog(sasl_ssl.kafka_access(), "cdrflow-state", replication_factor=3)
    asyncio.run(log.producer())
    _assert_sasl_ssl(producers.made[0], certificate)
    assert log.replication_factor == 3 and log.topic_configs["retention.ms"] == "-1"


def test_faust_gets_sasl_credentials_with_a_tls_context(sasl_ssl: Settings) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.worker.app import build_app

    app = build_app(sasl_ssl)
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_username"] == "cdrflow" and auth["sasl_plain_password"] == "kafka-s3cret-from-a-file"
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    assert app.conf.topic_replication_factor == 3
    assert [str(url) for url in app.conf.broker] == ["kafka://k1.example.com:9096", "kafka://k2.example.com:9096"]


def test_faust_gets_tls_credentials_without_sasl(certificate: Path) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.worker.app import faust_credentials

    access = KafkaAccess(("k1:9093",), "SSL", ssl_cafile=str(certificate))
    auth = credentials_to_aiokafka_auth(faust_credentials(access), None)
    assert auth["security_protocol"] == "SSL" and isinstance(auth["ssl_context"], ssl.SSLContext)
    assert faust_credentials(KafkaAccess(("k1:9092",))) is None


def test_every_clickhouse_client_gets_tls_and_the_password(sasl_ssl: Settings, certificate: Path) -> None:
    from streams.clickhouse.insert import connect
    from streams.clickhouse.query import query_client

    params = sasl_ssl.clickhouse_params()
    assert (params["secure"], params["verify"], params["ca_certs"]) == (True, True, str(certificate))
    assert params["password"] == "clickhouse-s3cret" and params["port"] == 9440
    for client in (connect(sasl_ssl), query_client(sasl_ssl)):
        connection = client.connection
        assert connection.secure_socket and connection.verify_cert
        assert connection.ssl_options == {"ca_certs": str(certificate)}
        assert connection.password == "clickhouse-s3cret"
    assert sasl_ssl.redacted_clickhouse_url() == "clickhouse://cdrflow@ch.example.com:9440/billing (TLS)"


def test_every_client_in_streams_is_made_from_the_settings() -> None:
    """A source scan: each Kafka client is made with the access's options (``**x.kafka_python()``
    or ``**x.aiokafka()``), Faust's app with ``broker_credentials``, each ClickHouse client
    from ``clickhouse_params()`` (its TLS keys included)."""
    kafka = {"KafkaConsumer", "KafkaProducer", "KafkaAdminClient", "AIOKafkaConsumer", "AIOKafkaProducer",
             "AIOKafkaAdminClient"}
    wrong: list[str] = []
    for path in sorted((PROJECT / "streams").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            where = f"{path.relative_to(PROJECT)}:{node.lineno}"
            spread = [ast.unparse(k.value) for k in node.keywords if k.arg is None]
            if name in kafka and not any(s.endswith(("kafka_python()", "aiokafka()")) for s in spread):
                wrong.append(f"{where}: {name} without the access's options")
            if name == "App" and "broker_credentials" not in {k.arg for k in node.keywords}:
                wrong.append(f"{where}: faust.App without broker_credentials")
            if name in ("Client", "SinkClient") and path.parts[-2] != "tests":
                text = ast.unparse(node)
                if "clickhouse_params()" not in text and "params" not in text and "*args" not in text:
                    wrong.append(f"{where}: a ClickHouse client not made from clickhouse_params()")
    assert wrong == []


def test_security_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="needs CDRFLOW_KAFKA_SASL_USERNAME"):
        Settings(kafka_bootstrap="k:9096", kafka_security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="embedded broker"):
        Settings(kafka_bootstrap=None, clickhouse_url=None, kafka_security_protocol="SSL")
    with pytest.raises(ValidationError, match="no write could be acknowledged"):
        Settings(kafka_bootstrap="k:9092", topic_replication_factor=2, topic_min_insync_replicas=3)
    with pytest.raises(ValidationError, match="cannot read"):
        Settings(clickhouse_password_file="/nonexistent/secret")


def test_secrets_are_redacted_in_log_records_and_tracebacks(sasl_ssl: Settings) -> None:
    install_log_redaction()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    try:
        logger.warning("login %s:%s refused", "cdrflow", "kafka-s3cret-from-a-file")
        try:
            raise RuntimeError("connect clickhouse://cdrflow:clickhouse-s3cret@ch:9440 failed")
        except RuntimeError:
            logger.exception("could not connect")
        record = logging.makeLogRecord({"msg": "%s", "args": ("clickhouse-s3cret",)})
        assert record.getMessage() == "***"
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "s3cret" not in text and "login cdrflow:*** refused" in text and "RuntimeError: connect clickhouse://cdrflow:***@" in text, text
    assert redact("nothing secret here") == "nothing secret here"


def test_a_settings_error_does_not_print_the_password() -> None:
    with pytest.raises(ValidationError) as error:
        Settings(clickhouse_url="clickhouse://u:pw-in-url-123@:notaport/db")
    assert "pw-in-url-123" not in str(error.value)


def test_the_live_feeds_events_are_redacted(sasl_ssl: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    # `ingest --tail` and `route` print their errors and warnings (a library's words) as they come.
    from streams.cli.live_display import LiveDisplay

    LiveDisplay("route", ("partition",), json_=True).event(
        {"event": "error", "message": "SASL login cdrflow/kafka-s3cret-from-a-file refused"}
    )
    printed = capsys.readouterr().out
    assert "s3cret" not in printed and '"message":"SASL login cdrflow/*** refused"' in printed, printed
