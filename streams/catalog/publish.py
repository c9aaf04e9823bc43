"""``cdrflow load``: plans and accounts become events on the ``plans`` and ``accounts`` topics.

The two topics are the tariff catalogue's log: key ``plan_id`` / ``account_id``, value the
plan (with all its versions) or the account as JSON, the last value of a key wins, and
:func:`read_catalog` folds them back into :class:`tariffs.Tariffs` (the worker and ingest
both rate and route with it). Loading publishes only the plans and accounts whose content
differs from what the topics hold, so loading the same files twice publishes nothing and a
new plan version is one event.

A value is the plan or account as its file states it (money as decimal strings such as
``"0.15"``, off-peak windows as ``"HH:MM"``, instants in ISO 8601): the form
``Plan.model_validate`` reads. ``model_dump(mode="json")`` cannot serve: it writes money
as integer units and windows as seconds, which the models would read back as CNY and
reject (``1500`` -> 1500.0000 CNY). Content is compared through the models, so
``"0.15"`` and ``"0.150"`` are the same price. Values a model refuses (a garbage message
from another producer) are skipped with a warning, never crash a reader; a ``None`` value
(tombstone) removes the key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any, TypeVar

import rtoml
from pydantic import BaseModel, ValidationError

from schemas.ledger import LedgerCommand
from schemas.money import format_money
from schemas.topics import ACCOUNTS, CDR_RAW, PLANS
from streams.kafka.client import Sender, decode_json, make_reader, read_to_end, topic_name
from streams.settings import Settings
from tariffs import Account, Plan, Tariffs
from tariffs.catalogue import CatalogueRules
from tariffs.grades import GradeFees
from tariffs.models import Transfer, opened_instant, ownership

log = logging.getLogger(__name__)
_Setting = TypeVar("_Setting", bound=BaseModel)


class CatalogError(RuntimeError):
    """The files changed while being loaded, or the topics hold an inconsistent catalogue."""


@dataclass(frozen=True)
class LoadResult:
    """What :func:`publish_tariffs` sent, and what it left as it was."""

    plans_published: tuple[str, ...]
    accounts_published: tuple[str, ...]
    plans_unchanged: int
    accounts_unchanged: int
    #: on the topic but not in the files: left as they are (loading never deletes)
    plans_only_on_topic: tuple[str, ...]
    accounts_only_on_topic: tuple[str, ...]


# ----------------------------------------------------------------------------- values


def plan_value(tariffs: Tariffs, plan_id: str) -> dict[str, Any]:
    """The event value of a loaded plan: its file as JSON, checked to read back equal.

    Examples
    --------
    >>> from tariffs import load_tariffs
    >>> vectors = "tests/vectors/basic/"
    >>> tariffs = load_tariffs(vectors + "plans", vectors + "accounts.toml")
    >>> value = plan_value(tariffs, "std-100")
    >>> value["versions"][0]["rates"][0]["tiers"][0]
    {'up_to_minutes': 100, 'per_minute': '0.15'}
    >>> Plan.model_validate(value) == tariffs.plans["std-100"]
    True
    """
    path = tariffs.sources.get(plan_id)
    if path is None:
        raise CatalogError(f"plan {plan_id!r} has no source file to publish from")
    return _checked(_json_ready(_read_toml(path)), tariffs.plans[plan_id], path)


def account_values(tariffs: Tariffs, accounts_file: Path) -> dict[str, dict[str, Any]]:
    """Event values of the loaded accounts, by id: each ``[[accounts]]`` table as JSON."""
    tables = _read_toml(accounts_file).get("accounts", [])
    if len(tables) != len(tariffs.accounts):
        raise CatalogError(f"{accounts_file} changed while it was loaded: load again")
    return {
        account.id: _checked(_json_ready(table), account, accounts_file)
        for account, table in zip(tariffs.accounts, tables, strict=True)
    }


def _read_toml(path: Path) -> dict[str, Any]:
    # The file was validated by tariffs.load_tariffs a moment ago; _checked guards a change.
    try:
        return rtoml.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, rtoml.TomlParsingError) as error:
        raise CatalogError(f"{path} changed while it was loaded ({error}): load again") from None


def _checked(value: dict[str, Any], model: BaseModel, path: Path) -> dict[str, Any]:
    try:
        same = type(model).model_validate(value) == model
    except ValidationError:
        same = False
    if not same:
        raise CatalogError(f"{path} changed while it was loaded: load again")
    return value


def _json_ready(value: Any) -> Any:
    """TOML values as JSON: dates and times become ISO 8601 strings."""
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_ready(item) for item in value]
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return value


# --------------------------------------------------------------------------- the fold


def fold_catalog(
    plans: Iterable[tuple[bytes | None, Any]], accounts: Iterable[tuple[bytes | None, Any]]
) -> Tariffs:
    """Tariffs from (key, decoded value) pairs of the two topics, in log order.

    The last valid value of a key wins; a ``None`` value removes the key; a value the
    model refuses is skipped with a warning (the key keeps its previous value). Accounts
    whose plan is unknown are left out with a warning. Plans and accounts come sorted by id.

    Examples
    --------
    >>> plan = {"id": "p", "versions": [{"effective_from": "2026-01-01T00:00:00+08:00"}]}
    >>> account = {"id": "A1", "plan": "p", "numbers": ["4008000001"]}
    >>> tariffs = fold_catalog([(b"p", plan)], [(b"A1", account), (b"A1", {"garbage": 1})])
    >>> sorted(tariffs.plans), tariffs.account_of_number()
    (['p'], {'4008000001': 'A1'})
    """
    plans, accounts = list(plans), list(accounts)
    plan_models = _last_valid(plans, Plan, PLANS)
    account_models = _last_valid(accounts, Account, ACCOUNTS)
    transfers = transfers_on_topic(accounts)
    try:
        chained = set(ownership(transfers))
    except ValueError as error:  # a topic written by hand: the transfers contradict each other
        raise CatalogError(f"the number transfers on the accounts topic: {error}") from None
    kept: list[Account] = []
    owners: dict[str, str] = {}
    for account_id in sorted(account_models):
        account = account_models[account_id]
        if account.plan not in plan_models:
            log.warning("account %s names plan %r, which is not on the plans topic: left out", account_id, account.plan)
            continue
        for number in account.numbers:
            if number in chained:
                continue  # its transfers say who holds it when (issue 25), whatever the lists say
            if number in owners:
                # spec 2.2: a number belongs to at most one account; load publishes both
                # accounts when a number moves, so this is a topic written by hand.
                raise CatalogError(
                    f"number {number} belongs to accounts {owners[number]!r} and {account_id!r} on the "
                    f"accounts topic: load the accounts file again"
                )
            owners[number] = account_id
        kept.append(account)
    return Tariffs(
        plans={pid: plan_models[pid] for pid in sorted(plan_models)},
        accounts=tuple(kept),
        rules=rules_on_topic(plans),
        transfers=transfers,
    )


def _last_valid(records: Iterable[tuple[bytes | None, Any]], model: type[BaseModel], topic: str) -> dict[str, Any]:
    latest: dict[str, Any] = {}
    for raw_key, value in records:
        key = raw_key.decode("utf-8", errors="replace") if raw_key is not None else ""
        if key.startswith("#"):  # not a plan or account: e.g. GRADES_KEY
            continue
        if value is None:
            latest.pop(key, None)
            continue
        try:
            parsed = model.model_validate(value)
        except ValidationError as error:
            log.warning("%s: the value of key %r is not a valid %s, skipped: %s", topic, key, model.__name__, error)
            continue
        if parsed.id != key:
            log.warning("%s: key %r holds id %r, skipped", topic, key, parsed.id)
            continue
        latest[key] = parsed
    return latest


# -------------------------------------------------------------------- the topics


def read_catalog(settings: Settings, *, topic_prefix: str = "") -> Tariffs:
    """The tariff catalogue as the ``plans`` and ``accounts`` topics hold it now.

    Raises ``streams.kafka.client.BrokerError`` when the broker does not answer or the topics
    do not exist, :class:`CatalogError` when a number belongs to two accounts.
    """
    plans, accounts = _read_topics(settings, topic_prefix)
    return fold_catalog(plans, accounts)


def _read_topics(settings: Settings, topic_prefix: str) -> tuple[list[tuple[bytes | None, Any]], ...]:
    reader = make_reader(settings)
    try:
        names = [topic_name(PLANS, topic_prefix), topic_name(ACCOUNTS, topic_prefix)]
        records = read_to_end(settings, names, reader=reader)
        return tuple([(r.key, decoded_catalog_value(r.value, name)) for r in records if r.topic == name] for name in names)
    finally:
        reader.close()


def decoded_catalog_value(value: bytes | None, topic: str) -> Any:
    """A ``plans``/``accounts`` record value decoded for :func:`fold_catalog` (not JSON: ``{}``,
    which the models refuse, so the key keeps its previous value)."""
    try:
        return decode_json(value)
    except ValueError:
        log.warning("%s: a message that is not JSON, skipped", topic)
        return {}  # refused by the model, so the key keeps its previous value


def publish_tariffs(
    settings: Settings, tariffs: Tariffs, accounts_file: Path, *, topic_prefix: str = ""
) -> LoadResult:
    """Publish the plans and accounts that differ from the topics' current values.

    ``tariffs`` comes from ``tariffs.load_tariffs`` (it knows each plan's file);
    ``accounts_file`` is the file its accounts were read from.
    """
    plan_records, account_records = _read_topics(settings, topic_prefix)
    # Compared key by key, without fold_catalog's consistency checks: loading good files
    # is how an inconsistent topic gets repaired.
    plans_on_topic = _last_valid(plan_records, Plan, PLANS)
    on_topic = _last_valid(account_records, Account, ACCOUNTS)
    plans_changed = [pid for pid, plan in tariffs.plans.items() if plans_on_topic.get(pid) != plan]
    accounts_changed = [a.id for a in tariffs.accounts if on_topic.get(a.id) != a]
    if plans_changed or accounts_changed:
        _publish(settings, tariffs, accounts_file, plans_changed, accounts_changed, topic_prefix)
    # spec/ledger.md 1: a loaded account is imported as it stands, by an AccountOpened
    # without fees on its log, once (the fold takes a repeated import as done).
    new_accounts = [a for a in tariffs.accounts if a.id not in on_topic]
    if new_accounts:
        _publish_imports(settings, tariffs, new_accounts, topic_prefix)
    # issue 25: the catalogue's rules, and the file's transfers the topic lacks (load never
    # deletes: a transfer made by `cdrflow number transfer` stays).
    if tariffs.rules_source is not None and rules_on_topic(plan_records) != tariffs.rules:
        sender = Sender(settings)
        sender.send(topic_name(PLANS, topic_prefix), RULES_KEY.encode(), tariffs.rules.file_value())
        sender.flush()
    known = {transfer_key(t) for t in transfers_on_topic(account_records)}
    missing = [t for t in tariffs.transfers if transfer_key(t) not in known]
    if missing:
        publish_transfers(settings, missing, topic_prefix=topic_prefix)
    fees = grades_on_topic(plan_records)
    if tariffs.grade_fees is not None and tariffs.grade_fees != fees:
        sender = Sender(settings)
        value: dict[str, Any] = {grade: format_money(tariffs.grade_fees.fee(grade)) for grade in "SABC"}
        if tariffs.grade_fees.minimum_package:  # issue 23: a grade's minimum package
            value["minimum_package"] = {
                grade: {k: format_money(v) for k, v in minimum.model_dump(exclude_none=True).items()}
                for grade, minimum in tariffs.grade_fees.minimum_package.items()
            }
        sender.send(topic_name(PLANS, topic_prefix), GRADES_KEY.encode(), value)
        sender.flush()
    loaded_accounts = {a.id for a in tariffs.accounts}
    return LoadResult(
        plans_published=tuple(plans_changed),
        accounts_published=tuple(accounts_changed),
        plans_unchanged=len(tariffs.plans) - len(plans_changed),
        accounts_unchanged=len(tariffs.accounts) - len(accounts_changed),
        plans_only_on_topic=tuple(sorted(set(plans_on_topic) - set(tariffs.plans))),
        accounts_only_on_topic=tuple(sorted(set(on_topic) - loaded_accounts)),
    )


#: The key on the plans topic of the number-grade fees (spec/ledger.md 3).
GRADES_KEY = "#number_grades"
#: The key on the plans topic of the catalogue's rules (catalogue.toml, issue 25).
RULES_KEY = "#catalogue"
#: Keys on the accounts topic of number transfers (issue 25): ``#transfer/<number>/<at, UTC>``.
TRANSFER_KEY_PREFIX = "#transfer/"


def transfer_key(transfer: Transfer) -> bytes:
    """The accounts-topic key of a transfer: one per number and instant, never removed."""
    return f"{TRANSFER_KEY_PREFIX}{transfer.number}/{transfer.at.astimezone(timezone.utc).isoformat()}".encode()


def transfer_value(transfer: Transfer) -> dict[str, Any]:
    return {"number": transfer.number, "from": transfer.from_account, "to": transfer.to_account,
            "at": transfer.at.isoformat()}


def rules_on_topic(plan_records: Iterable[tuple[bytes | None, Any]]) -> CatalogueRules:
    """The last catalogue rules published (the defaults when none were)."""
    return _setting_on_topic(plan_records, RULES_KEY, CatalogueRules)


def _setting_on_topic(plan_records: Iterable[tuple[bytes | None, Any]], key: str, model: type[_Setting]) -> _Setting:
    """The last valid value of a ``#`` key of the plans topic (the model's defaults when none)."""
    found = model()
    for record_key, value in plan_records:
        if record_key == key.encode() and isinstance(value, dict):
            try:
                found = model.model_validate(value)
            except ValidationError:
                log.warning("plans: the value of key %s is not a valid %s, skipped", key, model.__name__)
    return found


def transfers_on_topic(account_records: Iterable[tuple[bytes | None, Any]]) -> tuple[Transfer, ...]:
    """Every number transfer on the accounts topic (the last value of each key)."""
    found: dict[bytes, Transfer] = {}
    for key, value in account_records:
        if key is None or not key.startswith(TRANSFER_KEY_PREFIX.encode()):
            continue
        if value is None:
            found.pop(key, None)
            continue
        try:
            found[key] = Transfer.model_validate(value)
        except ValidationError:
            log.warning("accounts: the value of key %r is not a valid transfer, skipped", key)
    return tuple(found[key] for key in sorted(found))


def grades_on_topic(plan_records: Iterable[tuple[bytes | None, Any]]) -> GradeFees:
    """The last grade fees published (the defaults when none were)."""
    return _setting_on_topic(plan_records, GRADES_KEY, GradeFees)


def publish_transfers(settings: Settings, transfers: Iterable[Transfer], *, topic_prefix: str = "") -> None:
    """Put number transfers into the catalogue (issue 25): feeds and workers route and
    rate a call of the number by who held it at its charge time."""
    sender = Sender(settings)
    try:
        for transfer in transfers:
            sender.send(topic_name(ACCOUNTS, topic_prefix), transfer_key(transfer), transfer_value(transfer))
        sender.flush()
    finally:
        sender.close()


def move_number(settings: Settings, transfer: Transfer, *, topic_prefix: str = "") -> None:
    """A transfer made by command: the transfer record first (it decides who holds the
    number when), then the two accounts' values with the number moved from one list to
    the other, as a file loaded after it would state them."""
    publish_transfers(settings, [transfer], topic_prefix=topic_prefix)
    _, account_records = _read_topics(settings, topic_prefix)
    latest: dict[str, dict[str, Any]] = {}
    for key, value in account_records:
        if key is not None and not key.startswith(b"#") and isinstance(value, dict):
            latest[key.decode("utf-8", "replace")] = value
    sender = Sender(settings)
    try:
        for account_id, change in ((transfer.from_account, "out"), (transfer.to_account, "in")):
            value = latest.get(account_id)
            if value is None:
                continue
            numbers = [n for n in value.get("numbers", []) if n != transfer.number]
            if change == "in":
                numbers.append(transfer.number)
            if numbers != value.get("numbers", []):
                sender.send(topic_name(ACCOUNTS, topic_prefix), account_id.encode(), {**value, "numbers": numbers})
        sender.flush()
    finally:
        sender.close()


def read_grade_fees(settings: Settings, *, topic_prefix: str = "") -> GradeFees:
    plans, _ = _read_topics(settings, topic_prefix)
    return grades_on_topic(plans)


def _publish_imports(settings: Settings, tariffs: Tariffs, accounts: list[Account], topic_prefix: str) -> None:
    sender = Sender(settings)
    for account in accounts:
        plan = tariffs.plans[account.plan]
        command = LedgerCommand(
            kind="open",
            account_id=account.id,
            at=opened_instant(account, plan),
            plan=account.plan,
            numbers=account.numbers,
            opening_balance=account.opening_balance,
            imported=True,
        )
        sender.send(topic_name(CDR_RAW, topic_prefix), account.id.encode(), command.message_value())
    sender.flush()


def _publish(
    settings: Settings,
    tariffs: Tariffs,
    accounts_file: Path,
    plans: list[str],
    accounts: list[str],
    topic_prefix: str,
) -> None:
    values = account_values(tariffs, accounts_file) if accounts else {}
    sender = Sender(settings)
    try:
        # Plans first: a worker that sees an account already knows its plan.
        for plan_id in plans:
            sender.send(topic_name(PLANS, topic_prefix), plan_id.encode(), plan_value(tariffs, plan_id))
        sender.flush()
        for account_id in accounts:
            sender.send(topic_name(ACCOUNTS, topic_prefix), account_id.encode(), values[account_id])
        sender.flush()
    finally:
        sender.close()
