"""A rating run's output folder against expected files (spec/rating.md 6): the same or not.

``compare_outputs(expected, actual)`` reads ``rated.csv``, ``rejected.csv`` and
``alerts.csv`` of both folders (the files ``cdrflow rate`` and ``cdrflow export`` write,
and those of a vector set's ``expected/``) and says, file by file, what differs:

- ``rated.csv``: rows match on ``(cdr_id, account_id)`` (a duplicate is per account, spec
  4.3: one ``cdr_id`` may be rated on two accounts), in any order; every column of spec 6
  must be equal. A row of ACTUAL that expected/ does not have is a difference too.
- ``rejected.csv``: the same set of ``(line, reason)``.
- ``alerts.csv``: the same ``(account_id, kind, cdr_id, balance)``, in the same order
  within each account (a stream interleaves accounts freely, spec 5 orders one account's).

Values are compared as the spec means them, not as spelled: money to 4 decimals
(``0.15`` equals ``0.1500``), seconds as whole numbers, ``offpeak`` in any case, other text
without surrounding blanks. A missing ``rejected.csv`` or ``alerts.csv`` of ACTUAL counts
as empty; a missing ``rated.csv`` is a difference. The verdict is that of the comparison
tool the vector sets came with (``tests/test_compare.py`` holds the two equal).

Only the standard library: ``cdrflow compare`` starts without polars' engine work or any
Kafka/ClickHouse client.
"""

from __future__ import annotations

import csv
import difflib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from schemas.columns import ALERT_COLUMNS, MONEY_COLUMNS, RATED_COLUMNS

#: spec 6: what a rated row must carry besides its key (cdr_id, account_id).
_RATED_COMPARED = tuple(column for column in RATED_COLUMNS if column != "cdr_id")
#: spec 6: the columns of an alert (cdrflow adds line and local_day, not compared).
_ALERT_COMPARED = ALERT_COLUMNS[:4]
_ONE_UNIT = Decimal("0.0001")


class CompareError(ValueError):
    """A folder cannot be compared: an expected file or column of spec 6 is missing, or a
    file is not a UTF-8 CSV. The message names the file."""


@dataclass(frozen=True)
class FileComparison:
    """One output file of ACTUAL against its expected twin."""

    name: str
    #: Expected rows (rated, rejected) or alerts found equal in ACTUAL.
    matched: int
    expected: int
    actual: int
    #: What differs, for a person, one line each (all of them; printing may cut).
    differences: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        """``rated 42/42``, with ACTUAL's count where it differs: ``alerts 7/8 (got 9)``."""
        counted = f"{self.name} {self.matched}/{self.expected}"
        return counted if self.actual == self.expected else f"{counted} (got {self.actual})"


@dataclass(frozen=True)
class Comparison:
    """Every output file of a run against expected/."""

    expected: Path
    actual: Path
    files: tuple[FileComparison, ...]

    @property
    def ok(self) -> bool:
        return all(file.ok for file in self.files)

    def summary(self) -> str:
        """One line: ``rated 42/42, rejected 15/15, alerts 8/8``."""
        return ", ".join(file.summary() for file in self.files)

    def report(self, limit: int = 8) -> str:
        """The first ``limit`` differences of each file, then the summary line."""
        lines = []
        for file in self.files:
            lines += file.differences[:limit]
            if len(file.differences) > limit:
                lines.append(f"{file.name}: {len(file.differences) - limit} more differences")
        return "\n".join([*lines, self.summary()])

    def to_json(self, limit: int = 8) -> dict[str, object]:
        """The verdict for scripts: counts in full, the first ``limit`` differences of each file."""
        return {
            "ok": self.ok,
            "expected": str(self.expected),
            "actual": str(self.actual),
            **{
                file.name: {
                    "ok": file.ok,
                    "matched": file.matched,
                    "expected": file.expected,
                    "actual": file.actual,
                    "difference_count": len(file.differences),
                    "differences": list(file.differences[:limit]),
                }
                for file in self.files
            },
        }


def compare_outputs(expected: Path, actual: Path) -> Comparison:
    """Compare the output files of a rating run (``actual``) with ``expected``.

    Raises :class:`CompareError` when ``expected`` lacks one of the three files or a column
    of spec 6, or a file is not a UTF-8 CSV; what ``actual`` lacks is a difference.

    Examples
    --------
    >>> from pathlib import Path
    >>> expected = Path("tests/vectors/basic/expected")
    >>> compare_outputs(expected, expected).summary()
    'rated 42/42, rejected 15/15, alerts 8/8'
    """
    expected, actual = Path(expected), Path(actual)
    want = {
        "rated": _expected_rows(expected / "rated.csv", RATED_COLUMNS),
        "rejected": _expected_rows(expected / "rejected.csv", ("line", "reason")),
        "alerts": _expected_rows(expected / "alerts.csv", _ALERT_COMPARED),
    }
    rated_got = _rows(actual / "rated.csv")
    rated = (
        _compare_rated(want["rated"], rated_got)
        if rated_got is not None
        else FileComparison("rated", 0, len(want["rated"]), 0, (f"{actual / 'rated.csv'}: no such file",))
    )
    return Comparison(
        expected,
        actual,
        (
            rated,
            _compare_rejected(want["rejected"], _rows(actual / "rejected.csv") or []),
            _compare_alerts(want["alerts"], _rows(actual / "alerts.csv") or []),
        ),
    )


def canonical(column: str, text: str | None) -> str:
    """A value of an output file as the spec means it, so spellings of one value compare equal.

    Money (spec 1) to exactly 4 decimals, ``*_s`` to whole seconds, ``offpeak`` in lower
    case, anything else without surrounding blanks; a number that does not parse becomes
    ``BAD:<text>``, which equals nothing a valid file holds.

    Examples
    --------
    >>> canonical("amount", "0.15"), canonical("charged_s", "120"), canonical("offpeak", "True")
    ('0.1500', '120', 'true')
    >>> canonical("amount", "")
    'BAD:'
    """
    text = (text or "").strip()
    try:
        if column in MONEY_COLUMNS:
            return str(Decimal(text).quantize(_ONE_UNIT))
        if column.endswith("_s"):
            return str(int(Decimal(text)))
    except (ArithmeticError, ValueError):  # decimal.InvalidOperation; int() of NaN or Infinity
        return "BAD:" + text
    return text.lower() if column == "offpeak" else text


def _expected_rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    # Only expected files are checked: a column missing from ACTUAL shows as a difference.
    rows = _rows(path)
    if rows is None:
        raise CompareError(f"{path}: no such file (an expected folder holds rated.csv, rejected.csv, alerts.csv)")
    missing = [column for column in columns if rows and column not in rows[0]]
    if missing:
        raise CompareError(f"{path}: no column {', '.join(missing)} (spec 6)")
    return rows


def _rows(path: Path) -> list[dict[str, str]] | None:
    """The rows of a CSV file with a header; None when there is no such file."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, csv.Error) as error:
        raise CompareError(f"{path}: not a UTF-8 CSV file ({error})") from None
    return rows


def _compare_rated(want: list[dict[str, str]], got: list[dict[str, str]]) -> FileComparison:
    by_key: dict[tuple[str, str], dict[str, str]] = {}
    for row in got:
        by_key.setdefault((row.get("cdr_id") or "", (row.get("account_id") or "").strip()), row)
    differences = []
    for row in want:
        key = (row["cdr_id"], row["account_id"])
        other = by_key.get(key)
        if other is None:
            differences.append(f"rated {key[0]} ({key[1]}): missing")
            continue
        values = [
            (column, canonical(column, row[column]), canonical(column, other.get(column))) for column in _RATED_COMPARED
        ]
        fields = [f"{column}: want {wanted} got {found}" for column, wanted, found in values if wanted != found]
        if fields:
            differences.append(f"rated {key[0]} ({key[1]}): " + "; ".join(fields))
    matched = len(want) - len(differences)
    expected_keys = {(row["cdr_id"], row["account_id"]) for row in want}
    differences += [f"rated {key[0]} ({key[1]}): not expected" for key in by_key if key not in expected_keys]
    if len(got) != len(want) and not differences:  # a key twice in ACTUAL
        differences.append(f"rated: {len(got)} rows, {len(want)} expected")
    return FileComparison("rated", matched, len(want), len(got), tuple(differences))


def _compare_rejected(want_rows: list[dict[str, str]], got_rows: list[dict[str, str]]) -> FileComparison:
    want = {(row["line"], row["reason"]) for row in want_rows}
    got = {((row.get("line") or "").strip(), (row.get("reason") or "").strip()) for row in got_rows}
    differences = [f"rejected line {line} ({reason}): missing" for line, reason in sorted(want - got, key=_by_line)]
    differences += [
        f"rejected line {line} ({reason}): not expected" for line, reason in sorted(got - want, key=_by_line)
    ]
    return FileComparison("rejected", len(want & got), len(want), len(got), tuple(differences))


def _by_line(row: tuple[str, str]) -> tuple[int, str, str]:
    line, reason = row
    return (int(line) if line.isdigit() else -1, line, reason)


def _compare_alerts(want_rows: list[dict[str, str]], got_rows: list[dict[str, str]]) -> FileComparison:
    def in_account_order(rows: list[dict[str, str]]) -> list[tuple[str, ...]]:
        # A stable sort on the account: each account's alerts keep their order (spec 5).
        alerts = [tuple(canonical(column, row.get(column)) for column in _ALERT_COMPARED) for row in rows]
        return sorted(alerts, key=lambda alert: alert[0])

    want, got = in_account_order(want_rows), in_account_order(got_rows)
    differences = []
    opcodes = difflib.SequenceMatcher(None, want, got).get_opcodes() if want != got else []
    for tag, want_from, want_to, got_from, got_to in opcodes:
        if tag != "equal":
            differences += [f"alerts want: {' '.join(alert)}" for alert in want[want_from:want_to]]
            differences += [f"alerts got:  {' '.join(alert)}" for alert in got[got_from:got_to]]
    expected = set(want)
    return FileComparison("alerts", sum(alert in expected for alert in got), len(want), len(got), tuple(differences))
