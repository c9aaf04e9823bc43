"""The ``up``, ``down`` and ``status`` commands as a user calls them."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from streams.cli.stack import down, status, up
from streams.settings import Settings
from streams.stack.status import STATUS_KEYS

pytestmark = pytest.mark.integration


@pytest.fixture
def invoke(stack: Settings):
    """Run a command of a typer app built like streams/cli/main.py does, against the stack."""
    app = typer.Typer()
    for command in (up, down, status):
        app.command()(command)
    env = {
        "CDRFLOW_KAFKA_PORT": str(stack.kafka_port),
        "CDRFLOW_S3_PORT": str(stack.s3_port),
        "CDRFLOW_CLICKHOUSE_TCP_PORT": str(stack.clickhouse_tcp_port),
        "CDRFLOW_CLICKHOUSE_HTTP_PORT": str(stack.clickhouse_http_port),
        "CDRFLOW_TOPIC_PARTITIONS": str(stack.topic_partitions),
        "CDRFLOW_KAFKA_BOOTSTRAP": "",
        "CDRFLOW_CLICKHOUSE_URL": "",
    }

    def run(*args: str):
        return CliRunner().invoke(app, [*args, "--state-dir", str(stack.state_dir)], env=env)

    return run


def test_status_json_prints_the_documented_keys(invoke) -> None:
    result = invoke("status", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert tuple(answer) == STATUS_KEYS
    assert "password" not in answer["clickhouse_url"]


def test_status_prints_a_table_of_the_servers(invoke) -> None:
    result = invoke("status")
    assert result.exit_code == 0, result.output
    assert "servers" in result.stdout and "clickhouse tables" in result.stdout


def test_up_on_a_running_stack_says_it_reuses_the_servers(invoke) -> None:
    result = invoke("up")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("(running)") == 3


def test_bad_settings_exit_with_a_message_not_a_traceback() -> None:
    app = typer.Typer()
    app.command()(status)
    app.command()(down)
    env = {"CDRFLOW_CLICKHOUSE_URL": "http://user:secret@host"}
    result = CliRunner().invoke(app, ["status"], env=env)
    assert result.exit_code == 2
    assert "CDRFLOW_CLICKHOUSE_URL" in result.output and "secret" not in result.output
