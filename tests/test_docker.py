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


def test_compose_settings_parse_as_settings(compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    env = compose["services"]["worker"]["environment"]
    for key, value in env.items():
        # Resolve ${VAR:-default} as compose would with nothing set.
        monkeypatch.setenv(key, re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value)))
    settings = Settings()
    assert not settings.embedded
    assert settings.kafka_servers() == ["kafka:9092"]
    assert settings.clickhouse_params()["host"] == "clickhouse"
    assert settings.topic_partitions == 12


def test_the_images_commands_are_cdrflow_commands(compose: dict) -> None:
    commands = set(get_command(app).commands)
    for name in ("init", "worker"):
        assert compose["services"][name]["command"][0] in commands


def test_the_dockerfile_installs_every_package_of_the_project() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    for package in ("schemas", "tariffs", "rating", "streams"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert 'ENTRYPOINT ["cdrflow"]' in dockerfile
