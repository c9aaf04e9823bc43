"""Read plan files and the accounts file, and say what is wrong in words a person can act on.

Every problem found is collected (not just the first), each naming the file, the field
and, where it applies, the plan version, rate and tier (spec/rating.md 2.1, 2.2).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tariffs.models import Account, AccountsFile, Plan


class TariffError(Exception):
    """One or more invalid plan or account files; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Tariffs:
    """Everything rating needs to know besides the CDRs: plans by id and the accounts."""

    plans: dict[str, Plan]
    accounts: tuple[Account, ...]
    sources: dict[str, Path] = field(default_factory=dict)

    def account_of_number(self) -> dict[str, str]:
        return {number: account.id for account in self.accounts for number in account.numbers}


def _describe(loc: tuple[Any, ...], raw: Any) -> str:
    """Turn a pydantic location into ``versions[1] (effective_from ...) > rates[0] (...)``."""
    parts: list[str] = []
    node = raw
    for step in loc:
        if isinstance(step, int):
            label = f"[{step}]"
            child = node[step] if isinstance(node, list) and step < len(node) else None
            if isinstance(child, dict):
                if "effective_from" in child:
                    label += f" (effective_from {child['effective_from']})"
                elif "segment" in child or "class" in child:
                    label += f" (segment {child.get('segment')!r}, class {child.get('class')!r})"
                elif "id" in child:
                    label += f" (id {child['id']!r})"
            parts[-1:] = [(parts[-1] if parts else "") + label]
            node = child
        else:
            parts.append(str(step))
            node = node.get(step) if isinstance(node, dict) else None
    return " > ".join(parts) if parts else "(file)"


def _problems(path: Path, exc: ValidationError, raw: Any) -> list[str]:
    out = []
    for error in exc.errors(include_url=False):
        where = _describe(tuple(error["loc"]), raw)
        message = error["msg"].removeprefix("Value error, ")
        got = error.get("input")
        suffix = ""
        if error["type"] not in {"value_error", "missing"} and not isinstance(got, (dict, list)):
            suffix = f" (got {got!r})"
        out.append(f"{path}: {where}: {message}{suffix}")
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise TariffError([f"{path}: file not found"]) from None
    except IsADirectoryError:
        raise TariffError([f"{path}: is a folder, expected a TOML file"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise TariffError([f"{path}: not valid TOML: {exc}"]) from None
    except UnicodeDecodeError as exc:
        raise TariffError([f"{path}: not UTF-8 text: {exc}"]) from None


def load_plan(path: Path) -> Plan:
    """Load and validate one plan file."""
    raw = _read_toml(path)
    try:
        return Plan.model_validate(raw)
    except ValidationError as exc:
        raise TariffError(_problems(path, exc, raw)) from None


def load_plans(directory: Path) -> tuple[dict[str, Plan], dict[str, Path]]:
    """Load every ``*.toml`` plan file of a folder; plan ids must be unique."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TariffError([f"{directory}: plans folder not found (expected a folder of plan .toml files)"])
    problems: list[str] = []
    plans: dict[str, Plan] = {}
    sources: dict[str, Path] = {}
    files = sorted(p for p in directory.glob("*.toml") if p.name != "number_grades.toml")
    if not files:
        problems.append(f"{directory}: no plan files (*.toml) found")
    for path in files:
        try:
            plan = load_plan(path)
        except TariffError as exc:
            problems.extend(exc.problems)
            continue
        if plan.id in plans:
            problems.append(f"{path}: id: plan id {plan.id!r} is already defined in {sources[plan.id]}")
            continue
        plans[plan.id] = plan
        sources[plan.id] = path
    if problems:
        raise TariffError(problems)
    return plans, sources


def load_accounts(path: Path) -> tuple[Account, ...]:
    """Load and validate the accounts file."""
    path = Path(path)
    raw = _read_toml(path)
    try:
        return tuple(AccountsFile.model_validate(raw).accounts)
    except ValidationError as exc:
        raise TariffError(_problems(path, exc, raw)) from None


def load_tariffs(plans_dir: Path, accounts_file: Path) -> Tariffs:
    """Load plans and accounts together and check that every account's plan exists."""
    problems: list[str] = []
    plans: dict[str, Plan] = {}
    sources: dict[str, Path] = {}
    accounts: tuple[Account, ...] = ()
    try:
        plans, sources = load_plans(Path(plans_dir))
    except TariffError as exc:
        problems.extend(exc.problems)
    try:
        accounts = load_accounts(Path(accounts_file))
    except TariffError as exc:
        problems.extend(exc.problems)
    if plans:
        for index, account in enumerate(accounts):
            if account.plan not in plans:
                known = ", ".join(sorted(plans))
                problems.append(
                    f"{accounts_file}: accounts[{index}] (id {account.id!r}) > plan: "
                    f"plan {account.plan!r} does not exist (plans: {known})"
                )
    if problems:
        raise TariffError(problems)
    return Tariffs(plans=plans, accounts=accounts, sources=sources)
