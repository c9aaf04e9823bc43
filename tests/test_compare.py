"""`cdrflow compare`: a run's files against expected/ (spec/rating.md 6).

Its verdict is held equal to that of the comparison tool the vector sets came with
(``shared/tools/compare_rating.py``), on every vector set and on altered copies, wherever
that tool lies beside the project (CI).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from rating import Catalog
from streams.offline.compare import CompareError, compare_outputs
from streams.offline.rate import rate_file
from tariffs import load_tariffs
from tests.conftest import SHARED, VECTORS, run_cdrflow

BASIC = VECTORS / "basic"
SHARED_COMPARE = SHARED / "tools" / "compare_rating.py"


def _rate(vectors: Path, out: Path) -> Path:
    rate_file(vectors / "cdrs.csv", Catalog.from_tariffs(load_tariffs(vectors / "plans", vectors / "accounts.toml")), out)
    return out


@pytest.fixture(scope="module")
def basic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cdrflow rate`` of the basic set: equal to its expected/."""
    return _rate(BASIC, tmp_path_factory.mktemp("basic") / "out")


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _write(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _edited(run: Path, tmp_path: Path, name: str, edit: Callable[[list[dict[str, str]]], list[dict[str, str]]]) -> Path:
    """A copy of a run's folder with ``name``.csv's rows passed through ``edit``."""
    copy = tmp_path / "edited"
    copy.mkdir()
    for file in run.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    rows = _read(run / f"{name}.csv")
    columns = list(rows[0])
    _write(copy / f"{name}.csv", edit(rows), columns)
    return copy


def _with(rows: list[dict[str, str]], index: int, **values: str) -> list[dict[str, str]]:
    return [({**row, **values} if i == index else row) for i, row in enumerate(rows)]


def _one_account_alerts_swapped(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    # Two alerts of one account (not of one call: those come in spec 5's fixed order, and a
    # swap of equal tuples would change nothing), in the other order.
    for i, first in enumerate(rows):
        for j in range(i + 1, len(rows)):
            if rows[j]["account_id"] == first["account_id"] and rows[j]["cdr_id"] != first["cdr_id"]:
                swapped = list(rows)
                swapped[i], swapped[j] = rows[j], rows[i]
                return swapped
    raise AssertionError("no account with two alerts of two calls in this vector set")


def _accounts_interleaved(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    # Accounts in reverse order, each account's alerts in its own order: what a stream does.
    accounts = list(dict.fromkeys(row["account_id"] for row in rows))
    return [row for account in reversed(accounts) for row in rows if row["account_id"] == account]


#: Altered copies of a run: (file, edit, whether the result still matches expected/).
ALTERATIONS: dict[str, tuple[str, Callable[[list[dict[str, str]]], list[dict[str, str]]], bool]] = {
    "unchanged": ("rated", lambda rows: rows, True),
    "changed_amount": ("rated", lambda rows: _with(rows, 0, amount="9999.0000"), False),
    "missing_rated_row": ("rated", lambda rows: rows[:-1], False),
    "extra_rated_row": ("rated", lambda rows: [*rows, {**rows[0], "cdr_id": "NOT-IN-THE-LOG"}], False),
    "rated_rows_reversed": ("rated", lambda rows: rows[::-1], True),
    "money_spelled_short": ("rated", lambda rows: [{**r, "amount": r["amount"].rstrip("0")} for r in rows], True),
    "missing_rejection": ("rejected", lambda rows: rows[1:], False),
    "alerts_reordered_in_an_account": ("alerts", _one_account_alerts_swapped, False),
    "alerts_of_accounts_interleaved": ("alerts", _accounts_interleaved, True),
}


@pytest.mark.parametrize("alteration", ALTERATIONS)
def test_the_verdict_on_an_altered_run(alteration: str, basic_run: Path, tmp_path: Path) -> None:
    name, edit, matches = ALTERATIONS[alteration]
    comparison = compare_outputs(BASIC / "expected", _edited(basic_run, tmp_path, name, edit))
    assert comparison.ok is matches, comparison.report()
    for file in comparison.files:
        assert file.ok is (matches or file.name != name), comparison.report()


def test_a_changed_amount_is_named_with_both_values(basic_run: Path, tmp_path: Path) -> None:
    first = _read(basic_run / "rated.csv")[0]
    comparison = compare_outputs(BASIC / "expected", _edited(basic_run, tmp_path, "rated", lambda r: _with(r, 0, amount="9999")))
    (difference,) = comparison.files[0].differences
    assert difference == f"rated {first['cdr_id']} ({first['account_id']}): amount: want {first['amount']} got 9999.0000"
    assert comparison.summary().startswith(f"rated {len(_read(basic_run / 'rated.csv')) - 1}/")


def test_a_missing_rated_file_is_a_difference_and_a_missing_expected_file_an_error(
    basic_run: Path, tmp_path: Path
) -> None:
    comparison = compare_outputs(BASIC / "expected", tmp_path)
    assert not comparison.ok
    assert comparison.files[0].differences == (f"{tmp_path / 'rated.csv'}: no such file",)
    with pytest.raises(CompareError, match=re.escape(str(tmp_path / "rated.csv"))):
        compare_outputs(tmp_path, basic_run)


def test_cdrflow_compare_exits_0_on_a_match_and_1_with_the_differences(basic_run: Path, tmp_path: Path) -> None:
    same = run_cdrflow("compare", BASIC / "expected", basic_run)
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout.strip().splitlines()[-1] == "rated 42/42, rejected 15/15, alerts 8/8"
    altered = _edited(basic_run, tmp_path, "rated", lambda rows: rows[1:])
    differs = run_cdrflow("compare", BASIC / "expected", altered, "--json")
    assert differs.returncode == 1, differs.stderr
    verdict = json.loads(differs.stdout)
    assert verdict["ok"] is False and verdict["rejected"]["ok"] and verdict["alerts"]["ok"]
    assert verdict["rated"] | {"differences": []} == {
        "ok": False, "matched": 41, "expected": 42, "actual": 41, "difference_count": 1, "differences": [],
    }  # fmt: skip
    assert verdict["rated"]["differences"][0].endswith(": missing")


def test_cdrflow_compare_names_an_expected_folder_it_cannot_read(tmp_path: Path) -> None:
    run = run_cdrflow("compare", tmp_path / "nowhere", tmp_path)
    assert run.returncode == 2
    assert f"{tmp_path / 'nowhere' / 'rated.csv'}: no such file" in run.stderr


def _counts(summary: str) -> list[tuple[str, str, str]]:
    return re.findall(r"(rated|rejected|alerts) (\d+)/(\d+)", summary)


@pytest.mark.skipif(not SHARED_COMPARE.is_file(), reason=f"no {SHARED_COMPARE}: the shared folder is not beside the project")
@pytest.mark.parametrize("alteration", ALTERATIONS)
def test_the_verdict_is_that_of_the_shared_tool(alteration: str, vector_set: Path, tmp_path: Path) -> None:
    name, edit, _ = ALTERATIONS[alteration]
    actual = _edited(_rate(vector_set, tmp_path / "run"), tmp_path, name, edit)
    ours = compare_outputs(vector_set / "expected", actual)
    theirs = subprocess.run(
        [sys.executable, str(SHARED_COMPARE), str(vector_set / "expected"), str(actual)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ours.ok is (theirs.returncode == 0), f"ours:\n{ours.report()}\ntheirs:\n{theirs.stdout}{theirs.stderr}"
    assert _counts(ours.summary()) == _counts(theirs.stdout.strip().splitlines()[-1])
