"""Tariff notice (issue 25): a change must be published ``notice_days`` before it reaches customers.

The MIIT notice of 2018 asks that each plan state its validity and that plans on sale be
published; a notice period before a change is the operator's own rule (30 days is common
practice; research: /work/shared/research/real-tariffs.md section 4). A plan version
may carry ``published_at``; :func:`short_notices` finds the versions that take effect
less than the catalogue's ``notice_days`` after it, and :func:`coming_changes` the
changes that take effect soon (the notices to send). docs/rules.md ("Tariff notice").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tariffs.loader import Tariffs
from tariffs.models import PlanVersion

#: What a notice says changed, besides these bookkeeping fields.
_NOT_A_CHANGE = frozenset({"effective_from", "published_at", "valid_until", "description"})


def short_notices(tariffs: Tariffs) -> list[str]:
    """One problem per plan version published less than ``notice_days`` before it takes
    effect, naming the plan's file and the version. A plan's first version is no change
    for anyone and is not judged; a version without ``published_at`` cannot be.

    Examples
    --------
    >>> from tariffs import load_tariffs
    >>> short_notices(load_tariffs("tests/vectors/basic/plans", "tests/vectors/basic/accounts.toml"))
    []
    """
    days = tariffs.rules.notice_days
    problems = []
    for plan in tariffs.plans.values():
        for index, version in enumerate(plan.versions[1:], start=1):
            if version.published_at is None:
                continue
            given = version.effective_from - version.published_at
            if given < timedelta(days=days):
                where = tariffs.sources.get(plan.id, plan.id)
                problems.append(
                    f"{where}: versions[{index}] (effective_from {version.effective_from.isoformat()}): "
                    f"published_at {version.published_at.isoformat()} gives {_days(given)} of notice, "
                    f"less than the catalogue's notice_days ({days})"
                )
    return problems


@dataclass(frozen=True)
class Change:
    """A plan version that takes effect soon, for the notice to its customers."""

    plan_id: str
    plan_name: str
    effective_from: datetime
    published_at: datetime | None
    description: str
    #: the fields that differ from the version before (``rent``, ``rates`` ...)
    changed: tuple[str, ...]
    #: accounts on the plan (who gets the notice)
    accounts: tuple[str, ...]
    #: whole days between publication and effect (None: not published)
    notice_days: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "plan_id": self.plan_id,
            "plan_name": self.plan_name,
            "effective_from": self.effective_from.isoformat(),
            "published_at": None if self.published_at is None else self.published_at.isoformat(),
            "notice_days": self.notice_days,
            "description": self.description,
            "changed": list(self.changed),
            "accounts": list(self.accounts),
        }


def coming_changes(tariffs: Tariffs, at: datetime, days: int) -> list[Change]:
    """The plan versions (not a plan's first) that take effect in ``[at, at + days]``, in
    time order, with what each changes and the accounts it reaches.

    Examples
    --------
    >>> from datetime import timezone
    >>> from tariffs import load_tariffs
    >>> tariffs = load_tariffs("tests/vectors/basic/plans", "tests/vectors/basic/accounts.toml")
    >>> coming_changes(tariffs, datetime(2020, 1, 1, tzinfo=timezone.utc), 30)
    []
    """
    until = at + timedelta(days=days)
    out = []
    for plan in tariffs.plans.values():
        customers = tuple(sorted(a.id for a in tariffs.accounts if a.plan == plan.id))
        for before, version in zip(plan.versions, plan.versions[1:]):
            if at <= version.effective_from <= until:
                given = None if version.published_at is None else (version.effective_from - version.published_at).days
                out.append(
                    Change(plan.id, plan.name, version.effective_from, version.published_at, version.description,
                           changed_fields(before, version), customers, given)
                )
    return sorted(out, key=lambda change: (change.effective_from, change.plan_id))


def changed_fields(before: PlanVersion, after: PlanVersion) -> tuple[str, ...]:
    """The fields of ``after`` that differ from ``before`` (what a notice must tell).

    >>> from tariffs.models import PlanVersion
    >>> a = PlanVersion(effective_from="2026-01-01T00:00:00+08:00", monthly_rent="100.00")
    >>> b = PlanVersion(effective_from="2026-05-01T00:00:00+08:00", monthly_rent="120.00", description="new rent")
    >>> changed_fields(a, b)
    ('monthly_rent',)
    """
    old, new = before.model_dump(), after.model_dump()
    return tuple(name for name in new if name not in _NOT_A_CHANGE and old.get(name) != new[name])


def _days(delta: timedelta) -> str:
    whole = delta.days
    return f"{whole} day{'s' if whole != 1 else ''}" if delta.seconds == 0 else f"{delta.total_seconds() / 86400:.1f} days"
