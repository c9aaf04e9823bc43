"""Number grades and their selection fees (spec/ledger.md section 3).

A 400 number is ``400`` + 7 digits; its 4-digit segment is ``400X`` and ``s`` the six
digits after it. The grade is the first that matches, S before A before B, else C. The
fees default to S 10000.00, A 3000.00, B 800.00, C 0.00 and can be overridden by a
``number_grades.toml`` beside the plans, which may also give a grade a minimum package
(issue 23: a 靓号 needs a dearer package): a plan's package ``price`` or its floor
(``minimum_monthly_spend``) at least this much, either one sufficing::

    [fees]
    S = "8888.00"
    A = "2000.00"

    [minimum_package]
    S = { price = "3000.00" }
    A = { price = "1000.00", floor = "100.00" }
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import rtoml
from pydantic import BaseModel, ConfigDict, ValidationError

from schemas.money import format_money
from tariffs.errors import TariffError
from tariffs.models import Money, PlanVersion

Grade = Literal["S", "A", "B", "C"]
GRADES_FILE = "number_grades.toml"
_NUMBER = re.compile(r"^400\d{7}$")


class GradeMinimum(BaseModel):
    """The least package a grade's numbers may be assigned to: a package ``price`` or a
    floor (``minimum_monthly_spend``) of at least this much, either one sufficing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    price: Money | None = None
    floor: Money | None = None

    def refuses(self, version: PlanVersion) -> str | None:
        """Why ``version`` is below this minimum (None: it is not)."""
        price = version.package.price if version.package is not None else None
        floor = version.minimum_monthly_spend
        if self.price is not None and price is not None and price >= self.price:
            return None
        if self.floor is not None and floor is not None and floor >= self.floor:
            return None
        if self.price is None and self.floor is None:
            return None
        wanted = " or ".join(
            f"{what} of at least {format_money(value)}"
            for what, value in (("a package price", self.price), ("a floor", self.floor))
            if value is not None
        )
        has = f"package price {format_money(price)}" if price is not None else "no package"
        has += f", floor {format_money(floor)}" if floor is not None else ", no floor"
        return f"needs {wanted} ({has})"


class GradeFees(BaseModel):
    """Selection fee per grade, in units of 0.0001 CNY, and each grade's minimum package."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    S: Money = 100_000_000
    A: Money = 30_000_000
    B: Money = 8_000_000
    C: Money = 0
    minimum_package: dict[Grade, GradeMinimum] = {}

    def fee(self, grade: Grade) -> int:
        return int(getattr(self, grade))

    def refuses(self, number: str, version: PlanVersion) -> str | None:
        """Why ``number`` cannot be assigned to a plan at ``version`` (None: it can)."""
        number_grade = grade(number)
        minimum = self.minimum_package.get(number_grade)
        why = None if minimum is None else minimum.refuses(version)
        return None if why is None else f"number {number} is grade {number_grade}: its plan {why}"


def _run(s: str, length: int) -> bool:
    """``length`` or more equal digits in a row."""
    return any(len(set(s[i : i + length])) == 1 for i in range(len(s) - length + 1))


def _consecutive(digits: str) -> bool:
    """Each digit one above the one before, or each one below (``1234``, ``4321``)."""
    steps = {int(b) - int(a) for a, b in zip(digits, digits[1:])}
    return steps in ({1}, {-1})


def grade(number: str) -> Grade:
    """The grade of a 400 number (spec/ledger.md 3); the letters of a form may coincide.

    Examples
    --------
    >>> [grade(n) for n in ("4001888888", "4008123456", "4008987654")]
    ['S', 'S', 'S']
    >>> [grade(n) for n in ("4001377770", "4001305678", "4001309876", "4001123123", "4001112233")]
    ['A', 'A', 'A', 'A', 'A']
    >>> [grade(n) for n in ("4001300070", "4001301122", "4001301212")]
    ['B', 'B', 'B']
    >>> grade("4001302468")
    'C'
    """
    if not _NUMBER.match(number):
        raise ValueError(f"{number!r} is not a 400 number (400 and 7 digits)")
    s = number[4:]
    last4 = s[2:]
    if len(set(s)) == 1 or _consecutive(s):
        return "S"
    if _run(s, 4) or _consecutive(last4) or s[:3] == s[3:] or (s[0] == s[1] and s[2] == s[3] and s[4] == s[5]):
        return "A"
    if _run(s, 3) or (last4[0] == last4[1] and last4[2] == last4[3]) or (last4[:2] == last4[2:]):
        return "B"
    return "C"


def load_grade_fees(plans_dir: str | Path) -> GradeFees:
    """The fees of ``number_grades.toml`` in ``plans_dir``; the defaults when there is none."""
    path = Path(plans_dir) / GRADES_FILE
    if not path.exists():
        return GradeFees()
    try:
        raw = rtoml.load(path)
    except (rtoml.TomlParsingError, UnicodeDecodeError) as error:
        raise TariffError([f"{path}: not valid TOML: {error}"]) from error
    raw = raw if isinstance(raw, dict) else {}
    fees = raw.get("fees", {})
    try:
        return GradeFees.model_validate(
            {**(fees if isinstance(fees, dict) else {}), "minimum_package": raw.get("minimum_package", {})}
        )
    except ValidationError as error:
        raise TariffError(
            [f"{path}: {_section(e['loc'])}: {e['msg']}" for e in error.errors()]
        ) from error


def _section(loc: tuple[object, ...]) -> str:
    """``fees > S`` or ``minimum_package > A > price``: where in the file a problem is."""
    parts = [str(part) for part in loc]
    return " > ".join(parts if parts and parts[0] == "minimum_package" else ["fees", *parts])
