"""Corrections, pure (rating.rerate, rating.corrected_history): the diff of a rerating run.

The billed side is an offline run (``rating.rate``) of a log with a wrong catalogue; the
correction rates it again with the right one. A correction is right when it turns what
was billed into what a run with the right catalogue from the start gives.
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from rating import Catalog, RatingState, rate
from rating.corrected_history import Billed
from rating.rerate import COMPARED_COLUMNS, Diff, Period, Rerun, correction_catalog, diff
from schemas.cdr_csv import parse_csv
from tariffs import Tariffs, load_tariffs
from tests.conftest import VECTORS

MIXED = VECTORS / "mixed"
HEADER = "cdr_id,switch_id,caller,called,answer_number,caller_area,answer_area,start_time,answer_time,end_time,billsec,disposition"


def _catalogs(tmp_path: Path, vectors: Path, old: str, new: str, plan: str = "std-100.toml") -> tuple[Tariffs, Tariffs]:
    """(wrong, right): the vector set's plans, and a copy with ``old`` replaced by ``new`` in one plan."""
    wrong = tmp_path / "wrong"
    shutil.copytree(vectors / "plans", wrong)
    text = (wrong / plan).read_text()
    assert old in text
    (wrong / plan).write_text(text.replace(old, new, 1))
    return load_tariffs(wrong, vectors / "accounts.toml"), load_tariffs(vectors / "plans", vectors / "accounts.toml")


def _log(cdrs: bytes) -> pl.DataFrame:
    """A CDR file as a log: one message per line, offsets in file order, one partition."""
    return parse_csv(cdrs).with_columns(
        source=pl.lit("cdrs.csv"),
        ingest_id=pl.lit("i1"),
        topic=pl.lit("cdr.raw"),
        partition=pl.lit(0, dtype=pl.Int32),
        offset=pl.col("line").cast(pl.Int64),
    )


def _billed(log: pl.DataFrame, tariffs: Tariffs, horizon_months: int = 1) -> tuple[Billed, Catalog]:
    """What the pipeline would hold after rating ``log`` with ``tariffs`` (no ledger events)."""
    catalog = Catalog.from_tariffs(tariffs, horizon_months=horizon_months)
    result = rate(log, RatingState.empty(), catalog)
    billed = Billed(
        rated=result.rated.with_columns(version=pl.lit(0, dtype=pl.UInt64), correction_id=pl.lit("")),
        rejected=result.rejected,
        events=pl.DataFrame(
            schema={"account_id": pl.String, "event_id": pl.String, "kind": pl.String, "amount": pl.Int64,
                    "opening_balance": pl.Int64, "local_day": pl.Date, "partition": pl.Int32, "offset": pl.Int64,
                    "seq": pl.Int64}
        ),
        cap_alerts=result.alerts.filter(pl.col("kind") == "daily_cap_reached").select("account_id", "cdr_id"),
        opening=catalog.accounts.select("account_id", pl.col("opening_balance").alias("balance")),
    )
    return billed, catalog


def _correct(log: pl.DataFrame, billed: Billed, right: Tariffs, period: Period) -> Diff:
    catalog = correction_catalog(Catalog.from_tariffs(right))
    accounts = catalog.accounts.get_column("account_id").to_list()
    rerun = Rerun(catalog, period, accounts, billed.rejected)
    for start in range(0, log.height, 700):  # in pieces: any split gives the same
        rerun.add(log.slice(start, 700))
    return diff(rerun.result(), billed, period, catalog)


def _offline(log: pl.DataFrame, tariffs: Tariffs, horizon_months: int = 1):
    return rate(log, RatingState.empty(), Catalog.from_tariffs(tariffs, horizon_months=horizon_months))


def _differences(wrong, right, months: list[int]) -> pl.DataFrame:
    """Calls of ``months`` whose rating differs between two offline runs."""
    month = pl.col("local_day").dt.year() * 12 + pl.col("local_day").dt.month() - 1
    pair = wrong.rated.join(right.rated, on=["account_id", "cdr_id"], suffix="_right").filter(
        month.is_in(months)
    )
    differs = pl.any_horizontal(~pl.col(c).eq_missing(pl.col(f"{c}_right")) for c in COMPARED_COLUMNS)
    return pair.filter(differs).select(
        "account_id", "cdr_id", pl.col("amount").alias("old_amount"), pl.col("amount_right").alias("new_amount")
    )


def test_the_diff_is_the_difference_of_two_offline_runs_to_the_unit(tmp_path: Path) -> None:
    wrong, right = _catalogs(tmp_path, MIXED, '{ up_to_minutes = 100, per_minute = "0.15" }',
                             '{ up_to_minutes = 100, per_minute = "0.18" }')
    log = _log((MIXED / "cdrs.csv").read_bytes())
    billed, _ = _billed(log, wrong)
    period = Period(date(2026, 2, 1), date(2026, 2, 28))
    found = _correct(log, billed, right, period)

    expected = _differences(_offline(log, wrong), _offline(log, right), period.month_keys())
    assert expected.height > 20  # a real correction: the first tier past the package is dearer
    got = found.calls.select("account_id", "cdr_id", "old_amount", "new_amount")
    assert got.sort("account_id", "cdr_id").equals(expected.sort("account_id", "cdr_id"))
    assert found.problems == []
    assert (found.calls.get_column("delta") == found.calls["new_amount"] - found.calls["old_amount"]).all()
    by_class = expected.join(found.calls.select("account_id", "cdr_id", "class"), on=["account_id", "cdr_id"])
    want_totals = (
        by_class.group_by("account_id", "class")
        .agg(calls=pl.len(), delta=(pl.col("new_amount") - pl.col("old_amount")).sum())
        .sort("account_id", "class")
    )
    assert found.totals.select("account_id", "class", "calls", "delta").equals(want_totals, )
    per_account = want_totals.group_by("account_id").agg(pl.col("delta").sum()).sort("account_id")
    moved = found.balances.filter(pl.col("delta") != 0).select("account_id", (-pl.col("delta")).alias("delta"))
    assert moved.equals(per_account)  # the balance moves by minus the calls' deltas


def test_correcting_every_month_gives_the_right_run_its_balances_and_its_alerts(tmp_path: Path) -> None:
    # A cheaper first tier billed: the right one is dearer, so balances fall and alerts move.
    wrong, right = _catalogs(tmp_path, MIXED, '{ up_to_minutes = 100, per_minute = "0.15" }',
                             '{ up_to_minutes = 100, per_minute = "0.01" }')
    log = _log((MIXED / "cdrs.csv").read_bytes())
    billed, _ = _billed(log, wrong)
    found = _correct(log, billed, right, Period(date(2026, 1, 1), date(2026, 2, 28)))
    truth = _offline(log, right)

    # Every call: billed, with the corrected rows in place, is the right run.
    corrected = pl.concat([
        billed.rated.join(found.new_rows.select("account_id", "cdr_id"), on=["account_id", "cdr_id"], how="anti")
        .select(truth.rated.columns),
        found.new_rows.select(truth.rated.columns),
    ])
    keys = ["account_id", "cdr_id"]
    changed = found.new_rows.select(keys)
    assert corrected.join(changed, on=keys).sort(keys).equals(truth.rated.join(changed, on=keys).sort(keys))
    assert corrected.drop("balance").sort(keys).equals(truth.rated.drop("balance").sort(keys))
    final = truth.state.balances.sort("account_id")
    assert found.balances.select("account_id", pl.col("corrected_balance").alias("balance")).equals(final)

    # The alerts: billed ones, changed as the correction says, are the right run's.
    alerts = {(a, k, c): b for a, k, c, b in _offline(log, wrong).alerts.select("account_id", "kind", "cdr_id", "balance").rows()}
    assert found.alerts.height
    for row in found.alerts.iter_rows(named=True):
        key = (row["account_id"], row["kind"], row["cdr_id"])
        if row["cancelled"]:
            assert alerts.pop(key) == row["old_balance"]
        else:
            alerts[key] = row["balance"]
    want = {(a, k, c): b for a, k, c, b in truth.alerts.select("account_id", "kind", "cdr_id", "balance").rows()}
    assert alerts == want
    assert {"appear", "vanish"} <= set(found.alerts.get_column("change").to_list())


def test_a_second_correction_against_the_corrected_rows_finds_nothing(tmp_path: Path) -> None:
    wrong, right = _catalogs(tmp_path, MIXED, '{ up_to_minutes = 100, per_minute = "0.15" }',
                             '{ up_to_minutes = 100, per_minute = "0.18" }')
    log = _log((MIXED / "cdrs.csv").read_bytes())
    billed, catalog = _billed(log, right)
    found = _correct(log, billed, right, Period(date(2026, 2, 1), date(2026, 2, 28)))
    assert found.empty and found.problems == []
    assert found.balances.get_column("delta").to_list() == [0] * catalog.accounts.height


def _calls(*lines: str) -> bytes:
    return ("\n".join([HEADER, *lines]) + "\n").encode()


def _call(cdr_id: str, called: str, start: str, seconds: int) -> str:
    end_minute = int(start[14:16]) + seconds // 60
    end = f"{start[:14]}{end_minute:02d}:{seconds % 60:02d}{start[19:]}"
    return f"{cdr_id},sw1,01062345678,{called},01088886666,010,010,{start},{start},{end},{seconds},ANSWERED"


def test_a_late_call_of_the_period_is_rated_by_a_correction_run() -> None:
    tariffs = load_tariffs(VECTORS / "basic" / "plans", VECTORS / "basic" / "accounts.toml")
    log = _log(_calls(
        _call("m1", "4008002222", "2026-03-02T10:00:00+08:00", 120),
        _call("m2", "4008002222", "2026-05-02T10:00:00+08:00", 60),  # May: March is out of the horizon
        _call("late-in", "4008002222", "2026-03-10T10:00:00+08:00", 180),
        _call("late-out", "4008002222", "2026-03-25T10:00:00+08:00", 180),
    ))
    billed, _ = _billed(log, tariffs)
    assert billed.rejected.select("cdr_id", "reason").rows() == [("late-in", "late"), ("late-out", "late")]
    found = _correct(log, billed, tariffs, Period(date(2026, 3, 1), date(2026, 3, 15)))

    # Rated as it stands in the log: after m1, in March's allowance (std-100: 300 minutes).
    assert found.calls.select("cdr_id", "old_amount", "new_amount", "changed", "old_status").rows() == [
        ("late-in", 0, 0, "rated now (billed late)", "late"),
    ]
    row = found.new_rows.row(0, named=True)
    assert (row["status"], row["allowance_s"], row["line"]) == ("rated", 180, 4)
    assert found.problems == []


def test_a_late_call_with_a_price_moves_the_balance_and_raises_its_alert() -> None:
    tariffs = load_tariffs(VECTORS / "basic" / "plans", VECTORS / "basic" / "accounts.toml")
    # A003 (eco-4007, no package, 0.10 a minute, minimum 0.05; balance 25.00, threshold 20.00).
    log = _log(_calls(
        _call("e1", "4007003333", "2026-03-02T10:00:00+08:00", 600),
        _call("e2", "4007003333", "2026-05-02T10:00:00+08:00", 600),
        _call("e3", "4007003333", "2026-03-03T10:00:00+08:00", 2400),
    ))
    billed, _ = _billed(log, tariffs)
    found = _correct(log, billed, tariffs, Period(date(2026, 3, 1), date(2026, 3, 31)))
    assert found.calls.select("cdr_id", "old_amount", "new_amount").rows() == [("e3", 0, 40_000)]
    # 25.00 - 1.00 (e1) - 1.00 (e2) - 4.00 (e3): 19.00, below the threshold at e3, in log order.
    assert found.balances.select("balance", "corrected_balance", "delta").row(0) == (230_000, 190_000, -40_000)
    assert found.new_rows.get_column("balance").to_list() == [190_000]
    assert found.alerts.select("kind", "cdr_id", "change", "balance", "cancelled").rows() == [
        ("low_balance", "e3", "appear", 190_000, False),
    ]


def test_calls_the_corrected_catalogue_rejects_are_problems_not_corrections(tmp_path: Path) -> None:
    # A "correction" that loses eco-4007's local rate: its billed local calls would be no_rate.
    lossy, billed_with = _catalogs(tmp_path, VECTORS / "basic", 'segment = "4007"\nclass = "local"',
                                   'segment = "4009"\nclass = "local"', plan="eco-4007.toml")
    log = _log((VECTORS / "basic" / "cdrs.csv").read_bytes())
    billed, _ = _billed(log, billed_with)
    found = _correct(log, billed, lossy, Period(date(2026, 2, 1), date(2026, 2, 28)))
    assert found.problems and "the corrected run has it rejected no_rate" in found.problems[0]


@pytest.mark.parametrize("first, last", [(date(2026, 3, 2), date(2026, 3, 1))])
def test_a_period_ending_before_it_starts_is_refused(first: date, last: date) -> None:
    with pytest.raises(ValueError, match="ends"):
        Period(first, last)


def test_a_period_with_no_calls_has_nothing_to_correct() -> None:
    tariffs = load_tariffs(VECTORS / "basic" / "plans", VECTORS / "basic" / "accounts.toml")
    empty = _log(_calls())
    billed, _ = _billed(empty, tariffs)
    found = _correct(empty, billed, tariffs, Period(date(2026, 3, 1), date(2026, 3, 31)))
    assert found.empty and found.problems == [] and found.totals.height == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--accounts", "A1", "--from", "2026-03-01", "--to", "2026-03-31"], "exactly one of --dry-run and --apply"),
        (["--accounts", "A1", "--all", "--from", "2026-03-01", "--to", "2026-03-31", "--dry-run"],
         "exactly one of --accounts"),
        (["--all", "--from", "2026-03-01", "--to", "2026-02-31", "--dry-run"], "--to '2026-02-31': expected a day"),
        (["--all", "--from", "2026-03-02", "--to", "2026-03-01", "--apply"], "ends (2026-03-01) before it starts"),
        (["--all", "--from", "2026-03-01", "--to", "2026-03-31", "--apply", "--at", "2026-04-01T10:00:00"],
         "give the offset"),
    ],
)
def test_rerate_refuses_bad_options_before_anything_is_read(args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from streams.cli.main import app

    result = CliRunner().invoke(app, ["rerate", *args], env={"CDRFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
