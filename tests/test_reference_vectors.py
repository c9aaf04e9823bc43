"""The plain reference agrees with the vector sets, field by field (spec/rating.md 6)."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

import pytest

from schemas.money import format_money
from tariffs import load_tariffs
from tests.reference import rate_reference_csv

RATED_FIELDS = ("cdr_id", "account_id", "status", "class", "offpeak", "billable_s",
                "allowance_s", "charged_s", "base", "discount", "minimum_uplift",
                "cap_waived", "amount")
MONEY_FIELDS = frozenset({"base", "discount", "minimum_uplift", "cap_waived", "amount", "balance"})
ALERT_FIELDS = ("account_id", "kind", "cdr_id", "balance")


def _expected(folder: Path, file: str) -> list[dict[str, str]]:
    with (folder / "expected" / file).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _text(field: str, value: object) -> str:
    """A reference value in the vectors' spelling (money with exactly 4 decimals)."""
    if field in MONEY_FIELDS:
        return format_money(value)  # type: ignore[arg-type]
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _canonical(field: str, text: str) -> str:
    text = text.strip()
    if field in MONEY_FIELDS:
        return str(Decimal(text).quantize(Decimal("0.0001")))
    return text.lower() if field == "offpeak" else text


def _by_account(rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    # spec 6 / streams/offline/compare.py: alert order matters within one account's log only.
    return sorted(rows, key=lambda row: row[0])


@pytest.fixture(scope="module")
def vector_run(vector_set: Path) -> tuple[Path, tuple[list[dict], list[dict], list[dict]]]:
    tariffs = load_tariffs(vector_set / "plans", vector_set / "accounts.toml")
    return vector_set, rate_reference_csv(tariffs, (vector_set / "cdrs.csv").read_bytes())


def test_reference_rates_every_vector_call_like_the_expected_rows(vector_run) -> None:
    folder, (rated, _, _) = vector_run
    want = [tuple(_canonical(f, row[f]) for f in RATED_FIELDS) for row in _expected(folder, "rated.csv")]
    got = [tuple(_canonical(f, _text(f, row[f])) for f in RATED_FIELDS) for row in rated]
    assert got == want


def test_reference_rejects_the_vector_lines_the_expected_file_lists(vector_run) -> None:
    folder, (_, rejected, _) = vector_run
    want = [(row["line"], row["cdr_id"], row["reason"]) for row in _expected(folder, "rejected.csv")]
    got = [(str(row["line"]), row["cdr_id"], row["reason"]) for row in rejected]
    assert got == want


def test_reference_raises_the_vector_alerts_in_account_order(vector_run) -> None:
    folder, (_, _, alerts) = vector_run
    want = [tuple(_canonical(f, row[f]) for f in ALERT_FIELDS) for row in _expected(folder, "alerts.csv")]
    got = [tuple(_canonical(f, _text(f, row[f])) for f in ALERT_FIELDS) for row in alerts]
    assert _by_account(got) == _by_account(want)


def test_every_vector_data_line_is_either_rated_or_rejected(vector_run) -> None:
    # spec 6: every input data line ends up in exactly one of rated.csv or rejected.csv.
    folder, (rated, rejected, _) = vector_run
    data_lines = len((folder / "cdrs.csv").read_bytes().splitlines()) - 1
    lines = sorted([row["line"] for row in rated] + [row["line"] for row in rejected])
    assert lines == list(range(2, data_lines + 2))
