"""Read plan files and the accounts file, and say what is wrong in words a person can act on.

Every problem found is collected (not just the first), each naming the file, the field
and, where it applies, the plan version, rate and tier (spec/rating.md 2.1, 2.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rtoml
from pydantic import ValidationError

from tariffs.catalogue import CATALOGUE_FILE, CatalogueRules, load_catalogue_rules
from tariffs.errors import TariffError
from tariffs.grades import GRADES_FILE, load_grade_fees
from schemas.money import format_money
from tariffs.models import Account, AccountsFile, Plan, Transfer, opening_package, ownership


@dataclass(frozen=True)
class Tariffs:
    """Everything rating needs to know besides the CDRs: plans by id and the accounts."""

    plans: dict[str, Plan]
    accounts: tuple[Account, ...]
    sources: dict[str, Path] = field(default_factory=dict)
    #: number_grades.toml beside the plans (spec/ledger.md 3); None: the folder has none
    grade_fees: Any = None
    #: catalogue.toml beside the plans (issue 25): notice days, unusual-use alerts
    rules: CatalogueRules = field(default_factory=CatalogueRules)
    #: numbers moved between accounts (issue 25), from the accounts file or the topic
    transfers: tuple[Transfer, ...] = ()
    #: the catalogue.toml the rules were read from (None: the defaults, no file)
    rules_source: Path | None = None

    def account_of_number(self) -> dict[str, str]:
        """Each number's account now: the one that lists it, or the last a transfer gave it to."""
        owners = {number: account.id for account in self.accounts for number in account.numbers}
        owners.update({number: chain[-1][1] for number, chain in self.owners().items()})
        return owners

    def owners(self) -> dict[str, list[tuple[Any, str]]]:
        """Each transferred number's owners over time (``tariffs.models.ownership``): the
        account that bills a call of it is the one holding it at the call's charge time."""
        return ownership(self.transfers)


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
    # rtoml (Rust) reads a 20k-account file in a fifth of tomllib's time.
    try:
        text = path.read_bytes().decode("utf-8")
        return rtoml.loads(text)
    except FileNotFoundError:
        raise TariffError([f"{path}: file not found"]) from None
    except IsADirectoryError:
        raise TariffError([f"{path}: is a folder, expected a TOML file"]) from None
    except UnicodeDecodeError as exc:
        raise TariffError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except rtoml.TomlParsingError as exc:
        raise TariffError([f"{path}: not valid TOML: {exc}"]) from None


def load_plans(directory: Path) -> tuple[dict[str, Plan], dict[str, Path]]:
    """Load every ``*.toml`` plan file of a folder; plan ids must be unique."""
    plans, sources, problems, _ = _read_plans(Path(directory))
    if problems:
        raise TariffError(problems)
    return plans, sources


def _read_plans(directory: Path) -> tuple[dict[str, Plan], dict[str, Path], list[str], set[str]]:
    """Valid plans, their files, the problems, and every plan id named (valid or not)."""
    if not directory.is_dir():
        return {}, {}, [f"{directory}: plans folder not found (expected a folder of plan .toml files)"], set()
    problems: list[str] = []
    plans: dict[str, Plan] = {}
    sources: dict[str, Path] = {}
    named: set[str] = set()
    files = sorted(p for p in directory.glob("*.toml") if p.name not in (GRADES_FILE, CATALOGUE_FILE))
    if not files:
        problems.append(f"{directory}: no plan files (*.toml) found")
    for path in files:
        try:
            raw = _read_toml(path)
        except TariffError as exc:
            problems.extend(exc.problems)
            continue
        if isinstance(raw.get("id"), str):
            named.add(raw["id"])
        try:
            plan = Plan.model_validate(raw)
        except ValidationError as exc:
            problems.extend(_problems(path, exc, raw))
            continue
        if plan.id in plans:
            problems.append(f"{path}: id: plan id {plan.id!r} is already defined in {sources[plan.id]}")
            continue
        plans[plan.id] = plan
        sources[plan.id] = path
    return plans, sources, problems, named


def load_accounts(path: Path) -> tuple[Account, ...]:
    """Load and validate the accounts file."""
    return _load_accounts_file(Path(path)).accounts_tuple


def _load_accounts_file(path: Path) -> _AccountsRead:
    raw = _read_toml(path)
    try:
        parsed = AccountsFile.model_validate(raw)
    except ValidationError as exc:
        raise TariffError(_problems(path, exc, raw)) from None
    return _AccountsRead(tuple(parsed.accounts), tuple(parsed.transfers))


@dataclass(frozen=True)
class _AccountsRead:
    accounts_tuple: tuple[Account, ...]
    transfers: tuple[Transfer, ...]


def load_tariffs(plans_dir: Path, accounts_file: Path) -> Tariffs:
    """Load plans and accounts together and check that every account's plan exists."""
    plans, sources, problems, named = _read_plans(Path(plans_dir))
    accounts: tuple[Account, ...] = ()
    transfers: tuple[Transfer, ...] = ()
    try:
        read = _load_accounts_file(Path(accounts_file))
        accounts, transfers = read.accounts_tuple, read.transfers
    except TariffError as exc:
        problems.extend(exc.problems)
    if named:
        for index, account in enumerate(accounts):
            # A plan whose file has errors still exists: its errors are reported above.
            if account.plan not in named:
                known = ", ".join(sorted(named))
                problems.append(
                    f"{accounts_file}: accounts[{index}] (id {account.id!r}) > plan: "
                    f"plan {account.plan!r} does not exist (plans: {known})"
                )

    for index, account in enumerate(accounts):
        # issue 23: an imported account buys its plan's package when it is opened.
        plan = plans.get(account.plan)
        bought = opening_package(account, plan) if plan is not None else None
        if bought is not None and account.opening_balance < bought[0].price:
            problems.append(
                f"{accounts_file}: accounts[{index}] (id {account.id!r}) > opening_balance: "
                f"{format_money(account.opening_balance)} does not pay for the package of plan {plan.id!r} "
                f"({format_money(bought[0].price)}), which an account on it buys when it is opened"
            )

    grade_fees = None
    if (Path(plans_dir) / GRADES_FILE).exists():
        try:
            grade_fees = load_grade_fees(plans_dir)
        except TariffError as exc:
            problems.extend(exc.problems)
    rules = CatalogueRules()
    try:
        rules = load_catalogue_rules(plans_dir)
    except TariffError as exc:
        problems.extend(exc.problems)
    if problems:
        raise TariffError(problems)
    rules_file = Path(plans_dir) / CATALOGUE_FILE
    return Tariffs(plans=plans, accounts=accounts, sources=sources, grade_fees=grade_fees, rules=rules,
                   transfers=transfers, rules_source=rules_file if rules_file.exists() else None)
