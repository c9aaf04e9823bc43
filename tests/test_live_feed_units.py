"""The live edges' pure parts (issue 14), without servers: lines out of shipped messages,
the ends a position may carry, the commands' refusals of bad options, and the router's
consumer that never sends LeaveGroup."""

from __future__ import annotations

import doctest
import importlib

import pytest
from typer.testing import CliRunner

from kafka import KafkaConsumer
from kafka.coordinator.base import Generation, MemberState
from kafka.errors import KafkaConnectionError
from kafka.future import Future

from schemas.shipped_lines import field_path, message_lines
from streams.feeds.positions import Position, held_ends, partition_of, tail_key
from streams.kafka.client import without_leave_group


def test_a_raw_message_is_the_line_without_its_line_end() -> None:
    shipped = message_lines([b'"u1","4001"\n', b'"u2","4002"\r\n', b'"u3","4003"'])
    assert shipped.lines == [b'"u1","4001"', b'"u2","4002"', b'"u3","4003"'] and shipped.problems == {}


def test_a_json_envelope_gives_the_line_in_its_field_nested_or_not() -> None:
    values = [b'{"message": "a,b\\n", "host": "ast1"}', b'{"log": {"original": "c,d"}}']
    assert message_lines(values[:1], "message").lines == [b"a,b"]
    assert message_lines(values[1:], "log.original").lines == [b"c,d"]


def test_a_message_that_holds_no_line_says_why() -> None:
    shipped = message_lines([None, b"x\ny", b"not json", b'{"message": 7}', b'{"msg": "a"}', b"[1]"], "message")
    assert shipped.lines == [b""] * 6
    assert shipped.problems == {
        0: "the message is empty",
        1: 'the message is not JSON (expected an object with the line in "message")',
        2: 'the message is not JSON (expected an object with the line in "message")',
        3: 'the message\'s "message" field is not a string',
        4: 'the message has no "message" field',
        5: 'the message has no "message" field',
    }
    assert message_lines([b"x\ny\r\nz"]).problems == {0: "the message holds 3 lines; one line per message is expected"}


def test_a_json_field_must_be_names_joined_by_dots() -> None:
    with pytest.raises(ValueError, match="--json-field"):
        field_path("log..original")


def test_a_position_with_lines_found_ahead_keeps_the_ends_it_was_recovered_with() -> None:
    # A second crash must read back from below the lines the first read-back found.
    assert held_ends({0: 90, 1: 40, 2: 7}, {0: 60, 1: 45}) == {0: 60, 1: 40, 2: 0}
    assert held_ends({0: 90}, None) == {0: 90}


def test_a_position_survives_its_json_and_keeps_its_key_on_one_partition() -> None:
    position = Position(
        key=tail_key("/var/log/asterisk/cdr-csv/Master.csv"),  # type: ignore[arg-type]
        source="Master.csv@2026-03-02T00:00:01.204Z",
        ingest_id="3f2a9c1b7d4e-20260302T000001204000Z",
        next_line=1_201,
        raw_ends={0: 10, 3: 7},
        at="2026-03-02T00:10:00.000Z",
    )
    assert Position.model_validate_json(position.model_dump_json()) == position
    assert {partition_of(position.key, 4) for _ in range(3)} == {partition_of(position.key, 4)}


@pytest.mark.parametrize(
    "module",
    ["schemas.shipped_lines", "streams.feeds.positions", "streams.feeds.live", "streams.cli.live_display", "streams.feeds.shipped"],
)
def test_the_examples_in_the_docstrings_run(module: str) -> None:
    failures, _ = doctest.testmod(importlib.import_module(module))
    assert failures == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "--tail", "--follow", "spool/"], "--tail follows files as they grow"),
        (["ingest", "--tail", "--wait", "Master.csv"], "--tail follows files as they grow"),
        (["route", "--from-topic", "switch.lines", "--json-field", "log..x"], "--json-field must be"),
        (["route", "--from-topic", "switch.lines", "--format", "mapped"], "--format mapped needs --profile"),
    ],
)
def test_the_live_commands_refuse_bad_options_before_reaching_the_broker(args: list[str], message: str) -> None:
    from streams.cli.main import app

    result = CliRunner().invoke(app, args, env={"CDRFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


@pytest.mark.parametrize("quiet", [False, True])
def test_a_router_consumer_quits_its_group_without_a_leave_group_request(quiet: bool) -> None:
    """tansu 0.6.0 wedges a group whose leader leaves it while it re-forms (docs/infra.md),
    so the routers' consumers only forget their membership. This pins the kafka-python 3
    internals that relies on: a plain consumer, as a member of a group, sends LeaveGroup on
    close; one made by ``without_leave_group`` sends nothing and is out of the group all
    the same."""
    consumer = KafkaConsumer(bootstrap_servers=["127.0.0.1:9"], group_id="g", api_version=(3, 9))
    try:
        if quiet:
            without_leave_group(consumer)
        coordinator = consumer._coordinator
        sent: list[str] = []

        def send(request, **_):  # type: ignore[no-untyped-def]
            sent.append(type(request).__name__)
            return Future().failure(KafkaConnectionError("no broker in a unit test"))

        coordinator._manager.send = send
        coordinator._generation = Generation(3, "member-1", "range")  # a member of a formed group
        coordinator.state = MemberState.STABLE
        coordinator.coordinator_id = "coordinator-0"
        consumer.close(autocommit=False)
        assert sent == ([] if quiet else ["LeaveGroupRequest"])
        assert consumer.group_metadata().member_id == ""
    finally:
        consumer.close()


def test_a_routed_header_of_a_gbk_profile_is_found_and_names_the_columns() -> None:
    # issue 21: a 400 platform's export (Chinese header, GBK) shipped line by line
    from schemas.switch_formats import PROFILES_DIR, Feed
    from streams.feeds.shipped import _as_header, _header_probe

    feed = Feed.of("mapped", profile=PROFILES_DIR / "platform-400-export.toml")
    header = "话单编号,主叫号码,400号码,接听号码,呼叫时间,接通时间,挂机时间,通话时长,呼叫结果".encode("gbk")
    line = "HD1, 13800138000, 4008001234, 01088886666, 2026-03-02 09:00:00, 2026-03-02 09:00:05, 2026-03-02 09:02:10, 00:02:05, 已接通".encode("gbk")
    probe = _header_probe(feed)
    assert probe(header) and not probe(line)
    layout = _as_header(feed, header)
    assert layout is not None and feed.decode_header(header).decode().startswith("话单编号")
    (row,) = layout.parse(line + b"\n", 0).to_dicts()
    assert (row["cdr_id"], row["billsec"], row["disposition"], row["framing"]) == ("HD1", "125", "ANSWERED", None)
