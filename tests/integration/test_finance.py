"""Finance in ClickHouse (issue 6): reports equal sums of the offline rated.csv to the
unit, statements add up to the ledger, views stay exact under replays, the finance user
is read-only, retention keeps 24 months, and the HTML report renders in a real browser.

Each test gets a database of its own on the test stack's ClickHouse (18.16), every
migration applied; the reports run through the installed ``cdrflow`` as a user runs them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import zlib
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from clickhouse_driver import Client
from clickhouse_driver import errors as clickhouse_errors

from rating import Catalog, RatingState, rate
from schemas.area_names import area_names
from schemas.cdr_csv import parse_csv
from schemas.money import format_money
from streams.clickhouse.insert import connect, insert, insert_rated, insert_rejected
from streams.clickhouse.tables import RATED
from streams.clickhouse.migrations import MIGRATIONS_DIR, apply_migrations
from streams.finance.retention import settle_months
from streams.offline.rate import rate_file
from streams.settings import Settings
from streams.stack.clickhouse_config import finance_password
from tariffs import load_tariffs
from tests.integration.pipeline import stack_cli_env, stack_url
from tests.conftest import CDRFLOW, VECTORS

# A fresh database of the test stack per test, every migration applied.
from tests.integration.test_sink_export import database  # noqa: F401  (a fixture)

pytestmark = pytest.mark.integration

MONEY = pl.Decimal(38, 4)


def _cdrflow(settings: Settings, *args: str | Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CDRFLOW_CLICKHOUSE_URL": settings.clickhouse_url or "", **(extra_env or {})}
    return subprocess.run([str(CDRFLOW), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def _json(settings: Settings, *args: str) -> object:
    done = _cdrflow(settings, *args, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _client(settings: Settings) -> Client:
    return Client(**settings.clickhouse_params())


# ----------------------------------------------------------------- reports on the vectors


def _offline_calls(vectors: Path, out: Path) -> pl.DataFrame:
    """The offline rated.csv joined with its CDR lines (by line number): what finance's
    sums are computed from, independently of ClickHouse."""
    catalog = Catalog.from_tariffs(load_tariffs(vectors / "plans", vectors / "accounts.toml"))
    rate_file(vectors / "cdrs.csv", catalog, out)
    rated = pl.read_csv(out / "rated.csv", infer_schema=False)
    cdrs = pl.read_csv(vectors / "cdrs.csv", infer_schema=False).with_row_index("line", offset=2)
    # An empty area is '' (a withheld caller has none), as ClickHouse holds it.
    cdrs = cdrs.select(pl.col("line").cast(pl.String), "disposition", pl.col("caller_area").fill_null(""), "billsec")
    zones = {plan.id: plan.timezone for plan in load_tariffs(vectors / "plans", vectors / "accounts.toml").plans.values()}
    assert set(zones.values()) == {"Asia/Shanghai"}  # the local hour below assumes it
    return rated.join(cdrs, on="line", how="left").with_columns(
        pl.col("amount").cast(MONEY),
        pl.col("credit_used").cast(MONEY),
        pl.col("billable_s").cast(pl.Int64),
        pl.col("billsec").cast(pl.Int64),
        pl.col("local_day").str.to_date(),
        pl.col("charge_time")
        .str.to_datetime(time_zone="UTC")
        .dt.convert_time_zone("Asia/Shanghai")
        .dt.hour()
        .cast(pl.Int64)
        .alias("hour"),
        pl.col("called").str.slice(0, 4).alias("segment"),
    )


def _minutes(seconds: pl.Expr) -> pl.Expr:
    # Minutes with 2 decimals, rounded half up: computed here with integers, as documented.
    hundredths = (seconds * 200 + 60) // 120
    return pl.format("{}.{}", hundredths // 100, (hundredths % 100).cast(pl.String).str.zfill(2))


def _money(column: str) -> pl.Expr:
    return pl.col(column).cast(MONEY).cast(pl.String)


def _load_vectors(settings: Settings, vectors: Path) -> None:
    catalog = Catalog.from_tariffs(load_tariffs(vectors / "plans", vectors / "accounts.toml"))
    batch = parse_csv((vectors / "cdrs.csv").read_bytes()).with_columns(source=pl.lit("cdrs.csv"))
    result = rate(batch, RatingState.empty(), catalog)
    client = connect(settings)
    for _ in range(2):  # a replay: Kafka delivers at least once
        insert_rated(client, result.rated)
        insert_rejected(client, result.rejected)


def test_revenue_on_the_vectors_equals_the_sums_of_the_offline_rated_csv(
    database: Settings, vector_set: Path, tmp_path: Path
) -> None:
    offline = _offline_calls(vector_set, tmp_path / "offline")
    _load_vectors(database, vector_set)
    first, last = offline["local_day"].min(), offline["local_day"].max()
    rated = offline.filter(pl.col("status") == "rated")
    for by, column in {"day": "local_day", "segment": "segment", "class": "class", "plan": "plan_id", "account": "account_id"}.items():
        expected = (
            rated.group_by(column)
            .agg(calls=pl.len(), seconds=pl.col("billable_s").sum(), amount=pl.col("amount").sum())
            .sort(column)
            .select(
                pl.col(column).cast(pl.String).alias(by),
                pl.col("calls").cast(pl.Int64),
                _minutes(pl.col("seconds")).alias("minutes"),
                _money("amount").alias("amount"),
            )
        )
        got = _json(database, "report", "revenue", "--from", str(first), "--to", str(last), "--by", by)
        assert got == expected.to_dicts(), by


def test_missed_calls_and_usage_on_the_vectors_equal_the_offline_outputs(
    database: Settings, vector_set: Path, tmp_path: Path
) -> None:
    offline = _offline_calls(vector_set, tmp_path / "offline")
    _load_vectors(database, vector_set)
    reported_missed = 0
    for month in sorted(set(offline["local_day"].dt.strftime("%Y-%m"))):
        calls = offline.filter(pl.col("local_day").dt.strftime("%Y-%m") == month)
        missed = calls.filter(pl.col("disposition") != "ANSWERED")
        by_hour = dict(missed.group_by("hour").len().iter_rows())
        got = _json(database, "report", "missed-calls", "--month", month, "--by", "hour")
        assert got == [{"hour": hour, "missed": by_hour.get(hour, 0)} for hour in range(24)]
        by_number = missed.group_by("called").len().sort(["len", "called"], descending=[True, False])
        got = _json(database, "report", "missed-calls", "--month", month, "--by", "number")
        assert got == [{"number": number, "missed": count} for number, count in by_number.iter_rows()]
        assert sum(row["missed"] for row in got) == missed.height
        reported_missed += missed.height

        answered = calls.filter(pl.col("disposition") == "ANSWERED")
        per_day = answered.group_by("local_day").agg(calls=pl.len(), s=pl.col("billsec").sum()).sort("local_day")
        got = _json(database, "report", "usage", "--month", month, "--by", "day")
        assert got == per_day.select(
            pl.col("local_day").cast(pl.String).alias("day"), "calls", _minutes(pl.col("s")).alias("minutes")
        ).to_dicts()
        buckets = answered.with_columns(
            bucket=pl.when(pl.col("billsec") < 30).then(0).when(pl.col("billsec") < 60).then(1)
            .when(pl.col("billsec") < 180).then(2).when(pl.col("billsec") < 600).then(3).otherwise(4)
        )
        got = _json(database, "report", "usage", "--month", month, "--by", "duration")
        assert [row["bucket"] for row in got] == ["<30 s", "30-60 s", "1-3 min", "3-10 min", ">10 min"]
        assert [row["calls"] for row in got] == [buckets.filter(pl.col("bucket") == b).height for b in range(5)]
        origin = answered.group_by("caller_area").agg(calls=pl.len(), s=pl.col("billsec").sum())
        got = _json(database, "report", "usage", "--month", month, "--by", "origin")
        assert {row["area"]: (row["calls"], row["minutes"]) for row in got} == {
            area: (count, pl.select(_minutes(pl.lit(seconds))).item()) for area, count, seconds in origin.iter_rows()
        }
        assert all((row["city"], row["province"]) == area_names(row["area"]) for row in got)
    # Every unanswered call of the offline output is in some month's report.
    assert reported_missed == offline.filter(pl.col("disposition") != "ANSWERED").height


def test_the_statement_lines_of_calls_equal_the_offline_rated_csv(
    database: Settings, vector_set: Path, tmp_path: Path
) -> None:
    offline = _offline_calls(vector_set, tmp_path / "offline")
    _load_vectors(database, vector_set)
    account, month = offline.group_by("account_id", pl.col("local_day").dt.strftime("%Y-%m").alias("m")).len().sort(
        "len", descending=True
    ).row(0)[:2]
    calls = offline.filter(pl.col("account_id") == account)
    in_month = calls.filter(pl.col("local_day").dt.strftime("%Y-%m") == month, pl.col("status") == "rated")
    before = calls.filter(pl.col("local_day").dt.strftime("%Y-%m") < month)

    got = _json(database, "report", "statement", "--account", account, "--month", month)

    assert got["calls_amount"] == str(in_month["amount"].sum())
    # No ledger events were loaded: the opening balance is minus the calls before, less
    # what they drew on package credit (issue 23; 0 for accounts without a package).
    assert got["opening_balance"] == str(before["credit_used"].sum() - before["amount"].sum())
    per_class = in_month.group_by("class").agg(pl.len(), pl.col("amount").sum(), pl.col("credit_used").sum()).sort("class")
    lines = [line for line in got["lines"] if line["kind"] == "calls"]
    assert [(line["class"], line["calls"], line["amount"], line["credit"]) for line in lines] == [
        (klass, count, str(used - amount), str(0 - used)) for klass, count, amount, used in per_class.iter_rows()
    ]


# ------------------------------------------------------------- statement and the ledger


def _event(account: str, event_id: str, kind: str, when: datetime, amount: int, *, opening: int = 0,
           reference: str = "", month: str | None = None) -> tuple[object, ...]:
    """A billing_events row (balance and version are the ledger's business: 0 here)."""
    local = when.astimezone(ZoneInfo("Asia/Shanghai"))
    return (event_id, account, kind, when.astimezone(timezone.utc).replace(tzinfo=None), 0, local.date(),
            month or local.strftime("%Y-%m"), amount, opening, 0, reference, 0)


_EVENT_COLUMNS = ("event_id, account_id, kind, effective_time, effective_us, local_day, month, amount, "
                  "opening_balance, balance, reference, version")


def _calls(account: str, rows: list[tuple[str, datetime, int]], version: int = 0) -> pl.DataFrame:
    """Rated calls of ``account``: (cdr_id, charge time, amount), in the sink's frame."""
    shanghai = ZoneInfo("Asia/Shanghai")
    return pl.DataFrame(
        {
            "cdr_id": [cdr for cdr, _, _ in rows],
            "account_id": account,
            "status": "rated",
            "class": "local",
            "offpeak": False,
            "billable_s": 60,
            "allowance_s": 0,
            "charged_s": 60,
            "base": [amount for *_, amount in rows],
            "discount": 0,
            "minimum_uplift": 0,
            "cap_waived": 0,
            "amount": [amount for *_, amount in rows],
            "balance": 0,
            "line": list(range(2, 2 + len(rows))),
            "called": "4008001234",
            "charge_time": [when.astimezone(timezone.utc) for _, when, _ in rows],
            "local_day": [when.astimezone(shanghai).date() for _, when, _ in rows],
            "plan_id": "std-100",
            "plan_version": "2026-01-01T00:00:00+08:00",
            "rate_segment": "4008",
            "tier_first": 1,
            "tier_last": 1,
            "daily_cap": None,
            "offpeak_percent": 0,
            "disposition": "ANSWERED",
            "caller": "13800138000",
            "caller_area": "010",
            "billsec": 55,
            "local_hour": [when.astimezone(shanghai).hour for _, when, _ in rows],
            "version": version,
        },
        schema_overrides={"charge_time": pl.Datetime("us", "UTC"), "daily_cap": pl.Int64, "local_hour": pl.Int8,
                          "version": pl.UInt64, "tier_first": pl.Int32, "tier_last": pl.Int32},
    )


CST = timezone(timedelta(hours=8))


def test_the_statement_adds_up_to_the_ledger_balance(database: Settings) -> None:
    account = "L001"
    events = [
        _event(account, "e1", "AccountOpened", datetime(2026, 2, 10, 9, tzinfo=CST), -500_000, opening=5_000_000),
        _event(account, "e2", "NumberAssigned", datetime(2026, 2, 10, 9, 1, tzinfo=CST), -100_000),
        _event(account, "e3", "RentCharged", datetime(2026, 3, 1, 0, tzinfo=CST), -1_000_000, reference="2026-03"),
        _event(account, "e4", "TopUpReceived", datetime(2026, 3, 5, 12, tzinfo=CST), 2_000_000, reference="pay-77"),
        _event(account, "e5", "ServiceFeeCharged", datetime(2026, 3, 6, 12, tzinfo=CST), -30_000, reference="ivr"),
        _event(account, "e6", "SlaCreditGranted", datetime(2026, 3, 20, 12, tzinfo=CST), 15_000),
        _event(account, "e7", "ServiceEnabled", datetime(2026, 3, 6, 12, tzinfo=CST), 0, reference="ivr"),
        # The close of March belongs to March (its `month`), though it happens in April.
        _event(account, "e8", "MinimumSpendTrueUp", datetime(2026, 4, 1, 0, 5, tzinfo=CST), -42_000, month="2026-03"),
        _event(account, "e9", "RentCharged", datetime(2026, 4, 1, 0, tzinfo=CST), -1_000_000, reference="2026-04"),
        _event("OTHER", "x1", "TopUpReceived", datetime(2026, 3, 5, tzinfo=CST), 9_999_999),
    ]
    rows = events
    calls = [
        ("c1", datetime(2026, 2, 20, 10, tzinfo=CST), 12_345),
        # 2026-03-01 03:00 in Shanghai is still February in UTC: a March call all the same.
        ("c2", datetime(2026, 3, 1, 3, tzinfo=CST), 1_500),
        ("c3", datetime(2026, 3, 15, 10, tzinfo=CST), 7_000),
        ("c4", datetime(2026, 3, 31, 23, 59, tzinfo=CST), 4_321),
        ("c5", datetime(2026, 4, 1, 0, 1, tzinfo=CST), 9_000),
    ]
    client = _client(database)
    for _ in range(2):  # replays collapse
        client.execute(f"INSERT INTO billing_events ({_EVENT_COLUMNS}) VALUES", rows)
        insert_rated(connect(database), _calls(account, calls))
    # A rerating of c3 (higher version) replaces it.
    insert_rated(connect(database), _calls(account, [("c3", datetime(2026, 3, 15, 10, tzinfo=CST), 6_000)], version=1))

    got = _json(database, "report", "statement", "--account", account, "--month", "2026-03")

    # Computed here from the inputs: before March, the opening balance and fees less c1.
    opening = 5_000_000 - 500_000 - 100_000 - 12_345
    march_calls = 1_500 + 6_000 + 4_321
    march_events = -1_000_000 + 2_000_000 - 30_000 + 15_000 - 42_000
    closing = opening + march_events - march_calls
    assert got["account_id"] == account and got["month"] == "2026-03"
    assert got["opening_balance"] == format_money(opening) == "438.7655"
    assert got["calls_amount"] == "1.1821"
    assert got["closing_balance"] == format_money(closing)
    # The ledger's balance once March is closed, folded here from every event and call
    # up to it (spec/ledger.md: the balance is opening_balance + events - calls).
    ledger = sum(row[7] + row[8] for row in rows if row[1] == account and row[6] <= "2026-03")
    ledger -= sum(6_000 if cdr == "c3" else amount for cdr, when, amount in calls if when < datetime(2026, 4, 1, tzinfo=CST))
    assert got["closing_balance"] == format_money(ledger)
    kinds = [(line["kind"], line["amount"]) for line in got["lines"]]
    assert kinds == [
        ("calls", "-1.1821"),
        ("rent", "-100.0000"),
        ("services", "-3.0000"),
        ("minimum_spend_true_up", "-4.2000"),
        ("top_ups", "200.0000"),
        ("credits", "1.5000"),
    ]
    assert "pay-77" in got["lines"][4]["description"]

    # The month the account was opened: it opens with the balance it was opened with.
    february = _json(database, "report", "statement", "--account", account, "--month", "2026-02")
    assert february["opening_balance"] == "500.0000"
    assert february["closing_balance"] == got["opening_balance"]
    assert [line["kind"] for line in february["lines"]] == ["calls", "fees", "fees"]


def test_a_statement_of_an_unknown_account_or_bad_month_fails_with_a_reason(database: Settings) -> None:
    done = _cdrflow(database, "report", "statement", "--account", "NOPE", "--month", "2026-03")
    assert done.returncode == 2 and "NOPE" in done.stderr and "Traceback" not in done.stderr
    done = _cdrflow(database, "report", "missed-calls", "--month", "2026-3x", "--by", "hour")
    assert done.returncode == 2 and "--month" in done.stderr and "Traceback" not in done.stderr


# ------------------------------------------------------------------ views under replays


def test_the_views_count_a_replayed_call_once_and_a_rerated_call_at_its_last_version(database: Settings) -> None:
    sink = connect(database)
    calls = [(f"r{n}", datetime(2026, 3, 2 + n % 5, 10 + n % 7, tzinfo=CST), 1_000 + n) for n in range(50)]
    frame = _calls("V001", calls).with_columns(
        disposition=pl.when(pl.col("cdr_id").is_in(["r1", "r2", "r3"])).then(pl.lit("BUSY")).otherwise(pl.lit("ANSWERED"))
    )
    for _ in range(3):
        insert_rated(sink, frame)
    insert_rated(sink, _calls("V001", [("r0", calls[0][1], 99_999)], version=2))
    client = _client(database)
    assert client.execute("SELECT count() FROM calls_by_day")[0][0] == 151  # the views saw every copy

    expected_amount = sum(amount for *_, amount in calls[1:]) + 99_999
    for phase in ("open", "settled"):
        if phase == "settled":
            assert settle_months(client, before=date(2026, 3, 31)) == []  # March is not over
            settle_months(client, before=date(2026, 4, 1))
            assert client.execute(
                "SELECT uniqExact(partition), count(), min(level) FROM system.parts "
                "WHERE database = currentDatabase() AND table = 'calls_by_day' AND active"
            ) == [(1, 1, 1)]  # the month: one merged part
        got = _json(database, "report", "revenue", "--from", "2026-03-01", "--to", "2026-03-31", "--by", "class")
        assert got == [{"class": "local", "calls": 50, "minutes": "50.00", "amount": format_money(expected_amount)}]
        missed = _json(database, "report", "missed-calls", "--month", "2026-03", "--by", "number")
        assert missed == [{"number": "4008001234", "missed": 3}]


def test_the_monthly_views_migration_keeps_the_calls_landed_before_it(
    stack: Settings, tmp_path: Path
) -> None:
    # A database at 0013 (daily views) with calls in it, then 0014: the new views hold
    # every call once, at its last version, and are fed by inserts after it.
    name = "finance_upgrade_0014"
    params = stack.clickhouse_params()
    server = Client(**{**params, "database": ""})
    server.execute(f"DROP DATABASE IF EXISTS {name}")
    server.execute(f"CREATE DATABASE {name}")
    try:
        client = Client(**{**params, "database": name})
        older = tmp_path / "migrations"
        older.mkdir()
        for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
            if path.name < "0014":
                shutil.copy(path, older / path.name)
        apply_migrations(client, older)
        sink = connect(Settings(clickhouse_url=stack_url(stack, name)))
        calls = [(f"u{n}", datetime(2026, 3, 1 + n % 28, 9, tzinfo=CST), 100 + n) for n in range(40)]
        missed = _calls("U001", calls).with_columns(disposition=pl.lit("BUSY"))
        # Landed as a sink of that schema did: without the columns of later migrations
        # (insert_rated now fills rated_calls.record, of migration 0020).
        insert(sink, RATED, missed)
        insert(sink, RATED, missed)  # a replay
        insert(sink, RATED, _calls("U001", [("u0", calls[0][1], 5_000)], version=3))

        assert apply_migrations(client)[0] == "0014_finance_views_by_month.sql"  # and the later ones
        insert_rated(sink, _calls("U001", [("u40", datetime(2026, 4, 2, 9, tzinfo=CST), 7)]))
        assert client.execute(
            "SELECT partition, count() FROM system.parts WHERE database = currentDatabase() "
            "AND table = 'calls_by_day' AND active GROUP BY partition ORDER BY partition"
        )[-1][0] == "202604"
        expected = sum(amount for *_, amount in calls[1:]) + 5_000 + 7
        assert client.execute("SELECT count(), sum(amount) FROM calls_by_day FINAL") == [(41, expected)]
        assert client.execute("SELECT count() FROM missed_calls FINAL") == [(40,)]
    finally:
        server.execute(f"DROP DATABASE IF EXISTS {name}")


def test_the_views_collapse_replays_on_current_clickhouse_too() -> None:
    chdb_session = pytest.importorskip("chdb.session")
    from tests.integration.test_sink_export import _ChdbClient

    session = chdb_session.Session()
    try:
        client = _ChdbClient(session)
        apply_migrations(client)  # type: ignore[arg-type]
        for amount, version in ((100, 0), (100, 0), (250, 1)):
            client.execute(
                "INSERT INTO rated_calls (account_id, cdr_id, status, called, amount, charge_time, local_day, "
                "disposition, version) SELECT 'A1', 'c1', 'rated', '4008001234', "
                f"{amount}, toDateTime('2026-03-01 02:00:00', 'UTC'), toDate('2026-03-01'), 'NO ANSWER', {version}"
            )
        assert client.execute(
            "SELECT toString(count()), toString(sum(amount)), any(segment) FROM calls_by_day FINAL"
        ) == [("1", "250", "4008")]
        assert client.execute("SELECT toString(count()) FROM missed_calls FINAL") == [("1",)]
    finally:
        session.close()


# ----------------------------------------------------------------------- finance user


def test_the_finance_user_can_select_and_cannot_write(stack: Settings, database: Settings) -> None:
    name = database.clickhouse_params()["database"]
    password = finance_password(stack)
    assert password
    finance = Client(**{**stack.clickhouse_params(), "user": "finance", "password": password, "database": name})
    assert finance.execute("SELECT count() FROM rated_calls FINAL") == [(0,)]
    for statement in (
        "INSERT INTO rated_calls (account_id, cdr_id) SELECT 'A1', 'c1'",
        "ALTER TABLE rated_calls ADD COLUMN x UInt8",
        "ALTER TABLE rated_calls DROP PARTITION 202603",
        "DROP TABLE rated_calls",
        "CREATE TABLE t (x UInt8) ENGINE = Memory",
        "OPTIMIZE TABLE calls_by_day FINAL",
    ):
        with pytest.raises(clickhouse_errors.ServerException) as refused:
            finance.execute(statement)
        assert refused.value.code == 164, statement  # READONLY
    assert _client(database).execute("SELECT count() FROM rated_calls") == [(0,)]
    wrong = Client(**{**stack.clickhouse_params(), "user": "finance", "password": password + "x", "database": name})
    with pytest.raises(clickhouse_errors.ServerException) as refused:
        wrong.execute("SELECT 1")
    assert refused.value.code in (192, 193, 516)  # unknown user / wrong password / auth failed


def test_up_takes_the_finance_password_from_the_environment_and_never_prints_it(stack: Settings) -> None:
    secret = "fin-" + os.urandom(6).hex()
    env = {**stack_cli_env(stack), "CDRFLOW_FINANCE_PASSWORD": secret}
    base = {k: v for k, v in os.environ.items() if not k.startswith("CDRFLOW_")}
    try:
        done = subprocess.run([str(CDRFLOW), "up"], capture_output=True, text=True, env={**base, **env}, timeout=120)
        assert done.returncode == 0, done.stderr
        assert secret not in done.stdout + done.stderr
        assert "CDRFLOW_FINANCE_PASSWORD" in done.stdout
        status = subprocess.run([str(CDRFLOW), "status", "--json"], capture_output=True, text=True,
                                env={**base, **env}, timeout=120)
        assert secret not in status.stdout + status.stderr
        for path in Path(stack.state_dir).rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                assert secret.encode() not in path.read_bytes(), path
        # ClickHouse reloads users.xml by itself (every few seconds).
        finance = Client(**{**stack.clickhouse_params(), "user": "finance", "password": secret, "database": "default"})
        deadline = time.monotonic() + 30
        while True:
            try:
                assert finance.execute("SELECT 1") == [(1,)]
                break
            except clickhouse_errors.ServerException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        # Back to the generated password for the other tests.
        restore = {k: v for k, v in env.items() if k != "CDRFLOW_FINANCE_PASSWORD"}
        subprocess.run([str(CDRFLOW), "up"], capture_output=True, text=True, env={**base, **restore}, timeout=120)


# -------------------------------------------------------------------------- retention


def test_retention_refuses_to_keep_fewer_than_24_months(database: Settings) -> None:
    insert_rated(connect(database), _calls("R001", [("old", datetime(2020, 1, 5, tzinfo=CST), 100)]))
    done = _cdrflow(database, "retention", "--keep-months", "23")
    assert done.returncode == 2
    assert "at least 24 months" in done.stderr and "Traceback" not in done.stderr
    assert _client(database).execute("SELECT count() FROM rated_calls") == [(1,)]


def test_retention_drops_old_months_and_statements_stay_exact(database: Settings) -> None:
    old = [("o1", datetime(2023, 12, 20, tzinfo=CST), 1_000), ("o2", datetime(2024, 2, 1, 3, tzinfo=CST), 2_000)]
    kept = [("k1", datetime(2024, 3, 10, tzinfo=CST), 4_000), ("k2", datetime(2026, 3, 2, tzinfo=CST), 8_000)]
    sink = connect(database)
    for _ in range(2):
        insert_rated(sink, _calls("R002", old + kept))
    before = _json(database, "report", "statement", "--account", "R002", "--month", "2026-03")

    dry = _cdrflow(database, "retention", "--keep-months", "24", "--today", "2026-03-15", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    done = _cdrflow(database, "retention", "--keep-months", "24", "--today", "2026-03-15", "--json")
    assert done.returncode == 0, done.stderr
    dropped = json.loads(done.stdout)
    assert json.loads(dry.stdout)["dropped"] == dropped["dropped"]
    assert dropped["cutoff"] == "2024-03"
    # o2 (2024-02-01 03:00 in Shanghai) is charged in January UTC: partition 202401.
    assert {(p["table"], p["partition"]) for p in dropped["dropped"]} == {
        ("rated_calls", "202312"), ("rated_calls", "202401"), ("calls_by_day", "202312"), ("calls_by_day", "202402"),
    }
    client = _client(database)
    assert sorted(client.execute("SELECT cdr_id FROM rated_calls FINAL")) == [("k1",), ("k2",)]
    after = _json(database, "report", "statement", "--account", "R002", "--month", "2026-03")
    assert after == before
    assert before["opening_balance"] == "-0.7000"


# ------------------------------------------------------------------------ HTML report


def _png_is_not_blank(png: bytes) -> bool:
    """Whether a PNG screenshot holds more than one colour (decoded with zlib only)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    data, offset = b"", 8
    while offset < len(png):
        length = int.from_bytes(png[offset : offset + 4], "big")
        kind = png[offset + 4 : offset + 8]
        if kind == b"IDAT":
            data += png[offset + 8 : offset + 8 + length]
        offset += 12 + length
    pixels = zlib.decompress(data)
    # Rows start with a filter byte; a blank page compresses to the same few bytes over and
    # over. Count the bytes that are not white or a filter code.
    dark = sum(1 for byte in pixels[::7] if byte < 200)
    return dark > len(pixels[::7]) // 200


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is installed by make setup")
def test_the_html_report_renders_its_charts_in_headless_chromium(
    database: Settings, tmp_path: Path
) -> None:
    _load_vectors(database, VECTORS / "mixed")
    page = tmp_path / "report.html"
    done = _cdrflow(database, "report", "html", "--month", "2026-02", "--out", page)
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    assert "<script src=" not in text  # no network needed: plotly is inline
    assert text.count('class="chart"') == 6
    assert 'id="vat"' in text and "no invoice issued this month" in text  # the VAT panel (issue 24)

    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
        "--disable-component-update", "--disable-sync", "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,2000", "--virtual-time-budget=10000",
    ]
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=180)
    assert shot.is_file() and _png_is_not_blank(shot.read_bytes())
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    # plotly draws each chart as SVG once its script ran: one main SVG per chart at least.
    assert dom.stdout.count('class="main-svg"') >= 6
    assert dom.stdout.count('class="point"') > 20  # the bars
