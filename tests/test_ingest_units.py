"""The pure parts of ``load`` and ``ingest``: routing, chunking, rejections, the catalogue fold,
and the command's answers that need no server."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from rating import Catalog, RatingState, rate
from schemas.cdr_csv import parse_csv
from schemas.columns import CDR_COLUMNS
from schemas.messages import cdr_chunk_frame, cdr_chunk_value
from streams.catalog.publish import CatalogError, fold_catalog, plan_value
from streams.cli import ingest as ingest_cli
from streams.feeds.ingest import SpoolFile, SpoolWatch, new_ingest_id, refusals
from streams.feeds.routing import REJECTION_SCHEMA, AccountChunker, Routed, rejection_groups, route
from streams.kafka import client as kafka_io
from tariffs import Plan, Tariffs, load_plans, load_tariffs
from tests.conftest import PROJECT, VECTORS

BASIC = VECTORS / "basic"


@pytest.fixture(scope="module")
def basic() -> tuple[pl.DataFrame, dict[str, str]]:
    tariffs = load_tariffs(BASIC / "plans", BASIC / "accounts.toml")
    return parse_csv((BASIC / "cdrs.csv").read_bytes()), tariffs.account_of_number()


def _routed(basic) -> Routed:
    batch, numbers = basic
    return route(batch, numbers, source="cdrs.csv", ingest_id="i-1")


# ---------------------------------------------------------------------------- routing


def test_routing_rejects_malformed_and_unknown_number_lines_as_the_engine_does(basic) -> None:
    batch, _ = basic
    routed = _routed(basic)
    tariffs = load_tariffs(BASIC / "plans", BASIC / "accounts.toml")
    engine = rate(batch, RatingState.empty(), Catalog.from_tariffs(tariffs)).rejected
    expected = engine.filter(pl.col("reason").is_in(["malformed", "unknown_number"]))
    assert routed.rejected.select("line", "cdr_id", "reason", "detail").rows() == expected.select(
        "line", "cdr_id", "reason", "detail"
    ).rows()
    assert routed.rejected.schema == pl.Schema(REJECTION_SCHEMA)
    assert routed.rejected.get_column("account_id").null_count() == routed.rejected.height
    assert set(routed.rejected.get_column("source")) == {"cdrs.csv"}
    assert set(routed.rejected.get_column("ingest_id")) == {"i-1"}


def test_a_malformed_line_is_malformed_even_when_its_number_is_unknown() -> None:
    header = ",".join(CDR_COLUMNS)
    line = "X1,sw,138,4009999999,010,010,010,not-a-time,,2026-03-02T09:01:00+08:00,60,ANSWERED"
    routed = route(parse_csv(f"{header}\n{line}\n".encode()), {}, source="f.csv", ingest_id="i")
    assert routed.rejected.select("line", "reason").rows() == [(2, "malformed")]
    assert routed.rejected_keys.to_list() == [""]


def test_every_other_line_is_accepted_with_its_account_in_file_order(basic) -> None:
    batch, numbers = basic
    routed = _routed(basic)
    accepted_lines = routed.accepted.get_column("line").to_list()
    rejected_lines = set(routed.rejected.get_column("line"))
    assert accepted_lines == [line for line in batch.get_column("line") if line not in rejected_lines]
    assert routed.accepted.select(pl.col("called").replace_strict(numbers)).to_series().to_list() == (
        routed.accepted.get_column("account_id").to_list()
    )


def test_rejections_are_keyed_by_the_called_number_or_empty_when_malformed(basic) -> None:
    for key, part in rejection_groups(_routed(basic)):
        if key == b"":
            assert set(part.get_column("reason")) == {"malformed"}
        else:
            assert set(part.get_column("reason")) == {"unknown_number"}
            assert set(part.get_column("detail")) == {f"called number {key.decode()} belongs to no account"}


def test_rejection_groups_hold_at_most_the_limit(basic) -> None:
    routed = _routed(basic)
    assert [part.height for key, part in rejection_groups(routed, limit=2) if key == b""] == [2, 2, 1]


# --------------------------------------------------------------------------- chunking


def _lines(account: str, *numbers: int) -> pl.DataFrame:
    return pl.DataFrame({"line": list(numbers), "account_id": [account] * len(numbers)})


def test_chunks_hold_one_account_in_file_order_across_pieces_of_a_file() -> None:
    chunker = AccountChunker(limit=3)
    pieces = [
        pl.concat([_lines("A", 2, 4), _lines("B", 3)]).sort("line"),
        pl.concat([_lines("A", 5, 7, 8), _lines("B", 6)]).sort("line"),
        _lines("B", 9, 10),
    ]
    chunks = [chunk for piece in pieces for chunk in chunker.add(piece)] + chunker.flush()
    as_lists = [(account, frame.get_column("line").to_list()) for account, frame in chunks]
    assert as_lists == [("A", [2, 4, 5]), ("B", [3, 6, 9]), ("A", [7, 8]), ("B", [10])]
    assert chunker.held == 0


def test_full_chunks_are_sent_at_once_and_the_rest_waits_for_the_end() -> None:
    chunker = AccountChunker(limit=2)
    sent = chunker.add(_lines("A", 2, 3, 4, 5, 6))
    assert [frame.get_column("line").to_list() for _, frame in sent] == [[2, 3], [4, 5]]
    assert chunker.held == 1
    assert [frame.get_column("line").to_list() for _, frame in chunker.flush()] == [[6]]


def test_held_lines_are_let_go_past_the_bound() -> None:
    chunker = AccountChunker(limit=10, max_held=3)
    sent = chunker.add(pl.concat([_lines("A", 2, 3), _lines("B", 4, 5)]))
    assert sorted((a, f.height) for a, f in sent) == [("A", 2), ("B", 2)]
    assert chunker.held == 0


def test_a_chunk_is_a_cdr_raw_message_that_reads_back_as_the_lines(basic) -> None:
    routed = _routed(basic)
    for account, chunk in AccountChunker().add(routed.accepted) + AccountChunker().flush():
        frame = cdr_chunk_frame(cdr_chunk_value("cdrs.csv", chunk.drop("account_id"), "i-1"))
        assert frame.select("line", *CDR_COLUMNS).equals(chunk.select("line", *CDR_COLUMNS))


def test_an_empty_piece_makes_no_chunk() -> None:
    chunker = AccountChunker()
    assert chunker.add(_lines("A").clear()) == [] and chunker.flush() == []


# ------------------------------------------------------------------ files and the fold


def test_ingest_ids_are_fresh_and_name_the_content() -> None:
    sha = "ab" * 32
    first = new_ingest_id(sha, datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    second = new_ingest_id(sha, datetime(2026, 3, 2, 9, 0, 0, 1, tzinfo=UTC))
    assert first.startswith("abababababab-") and first != second


def test_a_file_ingested_before_or_twice_in_a_run_is_refused() -> None:
    a, b, c = (SpoolFile(Path(n), 1, h * 64) for n, h in (("a.csv", "1"), ("b.csv", "2"), ("c.csv", "2")))
    assert refusals([a, b], {}) == []
    assert refusals([a, b, c], {}) == ["c.csv: same content as b.csv, given in the same run"]
    assert refusals([a], {"1" * 64: {"name": "a.csv", "at": "t", "ingest_id": "x"}})[0].startswith("a.csv: already")


def test_a_spool_file_is_ready_once_it_stops_changing() -> None:
    watch = SpoolWatch(settle_s=1.0)
    path = Path("x.csv")
    assert watch.ready({path: (1, 1)}, now=0.0) == []
    assert watch.ready({path: (2, 2)}, now=0.9) == []
    assert watch.ready({path: (2, 2)}, now=1.5) == []
    assert watch.ready({path: (2, 2)}, now=2.0) == [path]


@pytest.mark.parametrize("plans", [PROJECT / "tariffs" / "reference", BASIC / "plans", VECTORS / "mixed" / "plans"])
def test_a_plan_event_reads_back_as_the_same_plan(plans: Path) -> None:
    loaded, sources = load_plans(plans)
    tariffs = Tariffs(plans=loaded, accounts=(), sources=sources)
    for plan_id, plan in loaded.items():
        assert Plan.model_validate(plan_value(tariffs, plan_id)) == plan


def _plan(plan_id: str = "p") -> dict:
    return {"id": plan_id, "versions": [{"effective_from": "2026-01-01T00:00:00+08:00"}]}


def _account(account_id: str, *numbers: str, plan: str = "p") -> dict:
    return {"id": account_id, "plan": plan, "numbers": list(numbers)}


def test_the_last_value_of_a_key_wins_and_none_removes_it() -> None:
    tariffs = fold_catalog(
        [(b"p", _plan())],
        [(b"A1", _account("A1", "4008000001")), (b"A1", _account("A1", "4008000002")),
         (b"A2", _account("A2", "4008000003")), (b"A2", None)],
    )
    assert tariffs.account_of_number() == {"4008000002": "A1"}


def test_values_the_models_refuse_are_skipped_and_the_key_keeps_its_value() -> None:
    tariffs = fold_catalog(
        [(b"p", _plan()), (b"p", {"id": "p"}), (b"q", _plan("other"))],
        [(b"A1", _account("A1", "4008000001")), (b"A1", {"garbage": True}), (b"A9", _account("A9", plan="nope"))],
    )
    assert list(tariffs.plans) == ["p"]
    assert [a.id for a in tariffs.accounts] == ["A1"]


def test_a_number_on_two_accounts_is_an_error() -> None:
    with pytest.raises(CatalogError, match="4008000001"):
        fold_catalog([(b"p", _plan())], [(b"A1", _account("A1", "4008000001")), (b"A2", _account("A2", "4008000001"))])


# ----------------------------------------------------------------- the command, no server


@pytest.fixture
def invoke():
    app = typer.Typer()
    app.command()(ingest_cli.load)
    app.command()(ingest_cli.ingest)

    def run(*args: str | Path, **env: str):
        return CliRunner().invoke(app, [str(a) for a in args], env={"CDRFLOW_CLICKHOUSE_URL": "", **env})

    return run


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_missing_file_exits_2_with_a_message(invoke, tmp_path: Path) -> None:
    result = invoke("ingest", tmp_path / "nope.csv")
    assert result.exit_code == 2
    assert "nope.csv: CDR file not found" in result.output and "Traceback" not in result.output


def test_an_unreachable_broker_exits_1_naming_it(invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_io, "BOOTSTRAP_TIMEOUT_S", 0.5)
    bootstrap = f"127.0.0.1:{_closed_port()}"
    result = invoke("ingest", BASIC / "cdrs.csv", CDRFLOW_KAFKA_BOOTSTRAP=bootstrap)
    assert result.exit_code == 1
    assert f"the Kafka broker at {bootstrap}" in result.output and "Traceback" not in result.output


def test_load_refuses_invalid_files_as_plans_check_does(invoke, tmp_path: Path) -> None:
    result = invoke("load", "--plans", tmp_path / "none", "--accounts", BASIC / "accounts.toml")
    assert result.exit_code == 2
    assert "plans folder not found" in result.output


def test_follow_takes_one_folder(invoke, tmp_path: Path) -> None:
    result = invoke("ingest", tmp_path, tmp_path, "--follow")
    assert result.exit_code == 2 and "one spool folder" in result.output


def test_follow_watches_a_folder_not_a_file(invoke) -> None:
    result = invoke("ingest", BASIC / "cdrs.csv", "--follow")
    assert result.exit_code == 2 and "is a file; --follow watches a spool folder" in result.output
