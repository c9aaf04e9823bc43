"""docker/: no Docker engine here, so check what can be checked: the compose file parses,
its services are the ones a cluster needs, and every CDRFLOW_* variable it sets is one
the settings class reads (a typo would silently fall back to a default)."""

from __future__ import annotations

import re

import pytest
import yaml
from typer.main import get_command

from streams.cli.main import app
from streams.settings import Settings
from tests.conftest import PROJECT

DOCKER = PROJECT / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_has_kafka_clickhouse_a_one_shot_init_and_workers(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"kafka", "clickhouse", "init", "worker"}
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    assert services["init"]["command"] == ["up"] and services["init"]["restart"] == "no"
    assert services["worker"]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert "replicas" in services["worker"]["deploy"]


def test_every_cdrflow_variable_in_compose_is_a_setting(compose: dict) -> None:
    known = {f"CDRFLOW_{name.upper()}" for name in Settings.model_fields}
    for name in ("init", "worker"):
        env = compose["services"][name]["environment"]
        used = {key for key in env if key.startswith("CDRFLOW_")}
        assert used, name
        assert used <= known, f"{name}: {sorted(used - known)} are not settings"
        # External mode: both servers named, so `cdrflow up` starts nothing.
        assert {"CDRFLOW_KAFKA_BOOTSTRAP", "CDRFLOW_CLICKHOUSE_URL"} <= used


def test_compose_settings_parse_as_settings(compose: dict, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = compose["services"]["worker"]["environment"]
    secret = tmp_path / "clickhouse_password"
    secret.write_text("from-the-secret-file\n")
    for key, value in env.items():
        # Resolve ${VAR:-default} as compose would with nothing set.
        monkeypatch.setenv(key, re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value)))
    assert env["CDRFLOW_CLICKHOUSE_PASSWORD_FILE"] == "/run/secrets/clickhouse_password"
    monkeypatch.setenv("CDRFLOW_CLICKHOUSE_PASSWORD_FILE", str(secret))  # where compose mounts it
    settings = Settings()
    assert not settings.embedded
    assert settings.kafka_servers() == ["kafka:9092"]
    assert settings.clickhouse_params()["host"] == "clickhouse"
    assert settings.clickhouse_params()["password"] == "from-the-secret-file"
    assert settings.topic_partitions == 12
    assert (settings.replication_factor(), settings.min_insync_replicas()) == (1, 1)  # one broker in this file


def test_compose_publishes_no_port_and_has_no_default_password(compose: dict) -> None:
    for name, service in compose["services"].items():
        assert "ports" not in service, f"{name} publishes {service.get('ports')}"
    text = (DOCKER / "compose.yaml").read_text()
    # A password is required (${VAR:?...}), never defaulted (${VAR:-...}) nor written down.
    assert not re.search(r"PASSWORD[A-Z_]*:-", text)
    assert "${CDRFLOW_CLICKHOUSE_PASSWORD:?" in text and "${CDRFLOW_FINANCE_PASSWORD:?" in text
    assert "cdrflow:${" not in text and "@clickhouse" in text and ":@" not in text  # no password in the URL
    # cdrflow's services get it as a Docker secret (a file), not as a variable or argument.
    for name in ("init", "worker"):
        assert compose["services"][name]["secrets"] == ["clickhouse_password"]
        assert "CDRFLOW_CLICKHOUSE_PASSWORD" not in compose["services"][name]["environment"]
    assert compose["secrets"]["clickhouse_password"] == {"environment": "CDRFLOW_CLICKHOUSE_PASSWORD"}
    # No broker-wide retention hides what the topics themselves say.
    assert not any("RETENTION" in key for key in compose["services"]["kafka"]["environment"])
    # The health check logs in nowhere: no password on a command line.
    assert "password" not in " ".join(compose["services"]["clickhouse"]["healthcheck"]["test"]).lower()


def test_the_finance_overlay_publishes_clickhouse_on_loopback_only() -> None:
    overlay = yaml.safe_load((DOCKER / "compose.finance.yaml").read_text())
    ports = overlay["services"]["clickhouse"]["ports"]
    assert ports and all(port.startswith("127.0.0.1:") for port in ports)


def test_the_images_commands_are_cdrflow_commands(compose: dict) -> None:
    commands = set(get_command(app).commands)
    for name in ("init", "worker"):
        assert compose["services"][name]["command"][0] in commands


def test_the_dockerfile_installs_every_package_of_the_project() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    for package in ("schemas", "tariffs", "rating", "streams"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert 'ENTRYPOINT ["cdrflow"]' in dockerfile
