"""Plan and account files: every rule of spec 2.1 and 2.2, errors that name file and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tariffs import TariffError, load_tariffs
from tests.conftest import PROJECT, run_cdrflow

REFERENCE = PROJECT / "tariffs" / "reference"
ACCOUNTS = """
[[accounts]]
id = "A001"
plan = "std-100"
numbers = ["4008001234", "4006001234"]
opening_balance = "500.00"
daily_cap = "80.00"

[[accounts]]
id = "A002"
plan = "eco-4007"
numbers = ["4007002222"]
opening_balance = "60.00"
"""


@pytest.fixture()
def tariff_dir(tmp_path: Path) -> Path:
    shutil.copytree(REFERENCE, tmp_path / "plans")
    (tmp_path / "accounts.toml").write_text(ACCOUNTS)
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def _problems(tariff_dir: Path) -> str:
    with pytest.raises(TariffError) as caught:
        load_tariffs(tariff_dir / "plans", tariff_dir / "accounts.toml")
    return "\n".join(caught.value.problems)


def test_reference_plans_load(tariff_dir: Path) -> None:
    tariffs = load_tariffs(tariff_dir / "plans", tariff_dir / "accounts.toml")
    assert sorted(tariffs.plans) == ["eco-4007", "floor-50", "pkg-3y-3000", "std-100", "vip-500"]
    assert tariffs.plans["std-100"].versions[0].rates[0].tiers[0].per_minute == 1500
    assert tariffs.accounts[0].daily_cap == 800_000


PLAN_RULES = [
    # (what is wrong, old text, new text, fragments the message must contain)
    ("money with five decimals", '{ up_to_minutes = 100, per_minute = "0.15" }', '{ up_to_minutes = 100, per_minute = "0.15001" }',
     ["std-100.toml", "versions[0] (effective_from 2026-01-01", "rates[0] (segment '4008', class 'local')", "tiers[0]", "per_minute", "more than 4 decimals"]),
    ("negative money", 'monthly_rent = "100.00"', 'monthly_rent = "-100.00"', ["std-100.toml", "monthly_rent", "negative"]),
    ("money as a float", 'monthly_rent = "100.00"', "monthly_rent = 100.0", ["monthly_rent", "decimal string"]),
    ("discount above 100", "discount_percent = 30", "discount_percent = 130", ["offpeak > discount_percent", "less than or equal to 100"]),
    ("discount below 0", "discount_percent = 30", "discount_percent = -1", ["offpeak > discount_percent", "greater than or equal to 0"]),
    ("tiers not increasing", "{ up_to_minutes = 300, per_minute = \"0.13\" }", "{ up_to_minutes = 100, per_minute = \"0.13\" }",
     ["rates[0] (segment '4008', class 'local') > tiers", "strictly increasing"]),
    ("last tier bounded", '{ per_minute = "0.12" },\n]', '{ up_to_minutes = 900, per_minute = "0.12" },\n]', ["tiers", "last tier must have no up_to_minutes"]),
    ("two rates share segment and class", 'segment = "*"\nclass = "long_distance"', 'segment = "*"\nclass = "local"', ["versions[0]", "rates", "share segment '*' and class 'local'"]),
    ("two versions share effective_from", "effective_from = 2026-03-15T00:00:00+08:00", "effective_from = 2026-01-01T00:00:00+08:00", ["versions", "share effective_from"]),
    ("time not HH:MM", 'windows = [["22:00", "08:00"]]', 'windows = [["22:00", "8am"]]', ["offpeak > windows[0][1]", 'must be "HH:MM"']),
    ("hour 24", 'windows = [["22:00", "08:00"]]', 'windows = [["24:00", "08:00"]]', ["windows[0][0]", 'must be "HH:MM"']),
    ("increment not positive", "increment = { first = 60, next = 60 }", "increment = { first = 0, next = 60 }", ["increment > first", "greater than 0"]),
    ("increment not an integer", "increment = { first = 60, next = 60 }", "increment = { first = 60, next = 1.5 }", ["increment > next", "integer"]),
    ("unknown field", "monthly_rent = \"100.00\"", "monthly_rent = \"100.00\"\nmonthly_rnet = \"1.00\"", ["monthly_rnet", "Extra inputs are not permitted"]),
    ("unknown timezone", 'timezone = "Asia/Shanghai"', 'timezone = "Asia/Beijing"', ["timezone", "unknown IANA timezone"]),
    ("effective_from without offset", "effective_from = 2026-01-01T00:00:00+08:00", "effective_from = 2026-01-01T00:00:00", ["effective_from", "timezone"]),
]


@pytest.mark.parametrize(("case", "old", "new", "fragments"), PLAN_RULES, ids=[r[0] for r in PLAN_RULES])
def test_invalid_plan_file_is_refused_naming_file_and_field(tariff_dir: Path, case: str, old: str, new: str, fragments: list[str]) -> None:
    _edit(tariff_dir / "plans" / "std-100.toml", old, new)
    message = _problems(tariff_dir)
    for fragment in fragments:
        assert fragment in message, f"{case}: {fragment!r} not in {message!r}"


def test_number_on_two_accounts_is_refused(tariff_dir: Path) -> None:
    _edit(tariff_dir / "accounts.toml", '"4007002222"', '"4008001234"')
    message = _problems(tariff_dir)
    assert "accounts.toml" in message and "4008001234 belongs to two accounts: 'A001' and 'A002'" in message


def test_account_on_a_plan_that_does_not_exist_is_refused(tariff_dir: Path) -> None:
    _edit(tariff_dir / "accounts.toml", 'plan = "eco-4007"', 'plan = "eco-9999"')
    message = _problems(tariff_dir)
    assert "accounts[1] (id 'A002') > plan" in message and "'eco-9999' does not exist" in message


def test_account_ids_must_be_unique(tariff_dir: Path) -> None:
    _edit(tariff_dir / "accounts.toml", 'id = "A002"', 'id = "A001"')
    assert "account id 'A001' is used by accounts 0 and 1" in _problems(tariff_dir)


def test_a_number_that_is_not_a_400_number_is_refused(tariff_dir: Path) -> None:
    _edit(tariff_dir / "accounts.toml", '"4007002222"', '"01088886666"')
    message = _problems(tariff_dir)
    assert "accounts[1] (id 'A002') > numbers[0]" in message and "^400" in message


def test_two_plan_files_with_one_id_are_refused(tariff_dir: Path) -> None:
    shutil.copy(tariff_dir / "plans" / "std-100.toml", tariff_dir / "plans" / "std-100-copy.toml")
    assert "plan id 'std-100' is already defined" in _problems(tariff_dir)


def test_every_problem_is_reported_not_just_the_first(tariff_dir: Path) -> None:
    _edit(tariff_dir / "plans" / "std-100.toml", "discount_percent = 30", "discount_percent = 130")
    _edit(tariff_dir / "plans" / "vip-500.toml", 'monthly_rent = "500.00"', 'monthly_rent = "5.00001"')
    _edit(tariff_dir / "accounts.toml", 'plan = "eco-4007"', 'plan = "nope"')
    message = _problems(tariff_dir)
    assert "std-100.toml" in message and "vip-500.toml" in message


def test_plans_check_prints_the_plans(tariff_dir: Path) -> None:
    run = run_cdrflow("plans", "check", "--plans", tariff_dir / "plans", "--accounts", tariff_dir / "accounts.toml")
    assert run.returncode == 0, run.stderr
    assert "std-100" in run.stdout and "2026-03-15T00:00:00+08:00" in run.stdout and "0.1500/min" in run.stdout


def test_plans_check_lists_every_error_without_a_traceback(tariff_dir: Path) -> None:
    _edit(tariff_dir / "plans" / "std-100.toml", "discount_percent = 30", "discount_percent = 130")
    _edit(tariff_dir / "accounts.toml", 'plan = "eco-4007"', 'plan = "nope"')
    run = run_cdrflow("plans", "check", "--plans", tariff_dir / "plans", "--accounts", tariff_dir / "accounts.toml")
    assert run.returncode != 0
    assert "2 problems" in run.stderr and "discount_percent" in run.stderr and "'nope' does not exist" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout


def test_plans_check_json_is_machine_readable(tariff_dir: Path) -> None:
    import json

    run = run_cdrflow("plans", "check", "--plans", tariff_dir / "plans", "--accounts", tariff_dir / "accounts.toml", "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["ok"] is True and data["accounts"] == 2 and data["numbers"] == 3
    assert data["plans"]["std-100"]["versions"][1]["effective_from"].startswith("2026-03-15")
