"""Plans and accounts as pydantic models: spec/rating.md 2.1 and 2.2 are their validators.

Money fields hold integer units of 0.0001 CNY once validated; the files carry decimal
strings (``"0.15"``). Models are frozen: a loaded catalogue never changes under the engine.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from datetime import date, datetime, time, timezone
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)

from schemas.invoices import TaxCategory
from schemas.money import parse_money

CallClass = Literal["local", "long_distance", "international"]
CALL_CLASSES: tuple[CallClass, ...] = ("local", "long_distance", "international")
#: A rate's class: one of CALL_CLASSES, or ``*`` for every class (issue 23).
RateClass = Literal["local", "long_distance", "international", "*"]
ANY_CLASS: Literal["*"] = "*"


def _money(value: object) -> int:
    # spec 1: decimal strings are the only external form; a TOML float is a bug waiting.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f'money must be a decimal string like "0.15", got {value!r}')
    return parse_money(str(value))


def _signed_money(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f'money must be a decimal string like "-3.50", got {value!r}')
    return parse_money(str(value), signed=True)


#: Non-negative money, in units of 0.0001 CNY.
Money = Annotated[int, BeforeValidator(_money)]
#: Money that may be negative (an imported balance in arrears).
SignedMoney = Annotated[int, BeforeValidator(_signed_money)]
PositiveSeconds = Annotated[StrictInt, Field(gt=0)]

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _clock(value: object) -> int:
    """``"HH:MM"`` -> seconds after local midnight."""
    if not isinstance(value, str) or not _HHMM.match(value):
        raise ValueError(f'a time must be "HH:MM" (00:00 to 23:59), got {value!r}')
    parsed = time.fromisoformat(value)
    return parsed.hour * 3600 + parsed.minute * 60


ClockSeconds = Annotated[int, BeforeValidator(_clock)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Tier(_Model):
    """One step of a graduated price: ``per_minute`` up to ``up_to_minutes`` of the month."""

    up_to_minutes: Annotated[StrictInt, Field(gt=0)] | None = None
    per_minute: Money


class Rate(_Model):
    """Price of one (segment, class) in a plan version (spec 2.1)."""

    segment: Annotated[str, Field(pattern=r"^(\*|\d{1,10})$")]
    #: ``*`` matches every class, international included; a rate of the call's own class
    #: and the same segment wins over it (spec 2.1).
    call_class: RateClass = Field(alias="class")
    tiers: Annotated[list[Tier], Field(min_length=1)]

    @field_validator("tiers")
    @classmethod
    def _tiers_strictly_increasing(cls, tiers: list[Tier]) -> list[Tier]:
        # spec 2.1: tiers strictly increasing, the last one without a bound.
        *bounded, last = tiers
        if last.up_to_minutes is not None:
            raise ValueError(
                f"the last tier must have no up_to_minutes (it has {last.up_to_minutes})"
            )
        previous = 0
        for index, tier in enumerate(bounded):
            if tier.up_to_minutes is None:
                raise ValueError(f"tier {index} has no up_to_minutes but is not the last tier")
            if tier.up_to_minutes <= previous:
                raise ValueError(
                    f"tiers must be strictly increasing: tier {index} has up_to_minutes "
                    f"{tier.up_to_minutes} after {previous}"
                )
            previous = tier.up_to_minutes
        return tiers

    @property
    def segment_length(self) -> int:
        """Length used for longest-prefix matching (``*`` counts as 0)."""
        return 0 if self.segment == "*" else len(self.segment)


class Increment(_Model):
    """Billing increments in seconds: ``first`` for the first block, ``next`` after it."""

    first: PositiveSeconds
    next: PositiveSeconds


class OffPeak(_Model):
    """When a version's discount applies (spec 2.1 ``[versions.offpeak]``)."""

    discount_percent: Annotated[StrictInt, Field(ge=0, le=100)]
    windows: list[tuple[ClockSeconds, ClockSeconds]] = []
    weekends: bool = False
    holidays: list[date] = []


class Service(_Model):
    """A value-added service's fee (spec/ledger.md 1): charged per ``period`` while it is
    enabled, never when ``included`` in the plan. ``tax_category`` (issue 24): its VAT
    category on invoices; None: the default (docs/rules.md "Invoices and VAT")."""

    fee: Money = 0
    period: Literal["month", "year", "once"] = "month"
    included: bool = False
    tax_category: TaxCategory | None = None


def _service(value: object) -> object:
    # The short form of the first plans: a fee alone is a monthly fee.
    return {"fee": value} if isinstance(value, (str, int)) and not isinstance(value, bool) else value


#: The four services every plan has, with their monthly fees, unless a plan says otherwise.
DEFAULT_SERVICES: dict[str, Service] = {
    "ivr": Service(fee="30.00"),
    "recording": Service(fee="50.00"),
    "blacklist": Service(fee="10.00"),
    "sms": Service(fee="20.00"),
}
ServiceName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class Package(_Model):
    """A prepaid term package (``[versions.package]``, issue 23): opening an account on the
    plan buys it: ``price`` leaves the balance and ``credit`` (default: the price) is
    granted until ``term_months`` later; calls and floor charges draw on the credit before
    the balance; at the end the rest is forfeited (``unused = "forfeit"``) or goes to the
    balance (``"refund"``). A renewal pays ``renewal_price`` (default: the price) and
    starts a new term on the renewal day (``renewal = "restart"``) or at the current end
    (``"extend"``)."""

    price: Money
    term_months: Annotated[StrictInt, Field(gt=0, le=120)]
    credit: Money | None = None
    unused: Literal["forfeit", "refund"] = "forfeit"
    renewal: Literal["restart", "extend"] = "restart"
    renewal_price: Money | None = None

    @property
    def granted(self) -> int:
        """The credit a purchase or renewal grants."""
        return self.price if self.credit is None else self.credit

    @property
    def renews_for(self) -> int:
        """What a renewal costs."""
        return self.price if self.renewal_price is None else self.renewal_price

    def ends(self, start: datetime, zone: ZoneInfo) -> datetime:
        """The end of a term that starts at ``start``: the same local wall-clock time
        ``term_months`` later (the day clipped to the month's end), a fixed offset."""
        end = add_months(start.astimezone(zone), self.term_months)
        return end.replace(tzinfo=timezone(end.utcoffset()))


def add_months(instant: datetime, months: int) -> datetime:
    """The same wall-clock instant ``months`` later (the day clipped to the month's end).

    >>> add_months(datetime(2026, 1, 31, 9, 0), 1)
    datetime.datetime(2026, 2, 28, 9, 0)
    """
    total = instant.month - 1 + months
    year, month = instant.year + total // 12, total % 12 + 1
    day = min(instant.day, calendar.monthrange(year, month)[1])
    return instant.replace(year=year, month=month, day=day)


class PlanVersion(_Model):
    """A plan's prices from ``effective_from`` until the next version takes effect."""

    effective_from: AwareDatetime
    monthly_rent: Money = 0
    included_minutes: Annotated[StrictInt, Field(ge=0)] = 0
    minimum_monthly_spend: Money | None = None
    per_call_minimum: Money | None = None
    daily_cap: Money | None = None
    increment: Increment = Increment(first=60, next=60)
    offpeak: OffPeak | None = None
    rates: list[Rate] = []
    #: The class of a call whose caller has no area (withheld, masked, an extension):
    #: what carriers bill an unidentified domestic caller at (docs/rules.md).
    unknown_caller_class: CallClass = "long_distance"
    # spec/ledger.md 1: fields the ledger reads; rating ignores them.
    opening_fee: Money = 0
    keep_number_fee: Money = 150_000
    services: dict[ServiceName, Annotated[Service, BeforeValidator(_service)]] = Field(
        default_factory=lambda: dict(DEFAULT_SERVICES)
    )
    sla_credit_after_minutes: Annotated[StrictInt, Field(gt=0)] = 120
    # issue 23: packages, floors per number, the opening month, top-ups and lock-in
    # (spec/ledger.md); only ``package`` touches rating (its credit).
    package: Package | None = None
    minimum_scope: Literal["account", "number"] = "account"
    rent_scope: Literal["account", "number"] = "account"
    first_month: Literal["prorate", "full", "actual"] = "prorate"
    min_topup: Money | None = None
    min_term_months: Annotated[StrictInt, Field(gt=0, le=120)] | None = None
    early_termination: Literal["refuse", "remaining_floor"] = "refuse"
    # issue 24: the version's prices include VAT (what enterprises are quoted), unless
    # it says otherwise; invoices then add the tax on top (docs/rules.md).
    prices_include_tax: bool = True
    # issue 25: what a day of outage credits (spec/ledger.md 4), the arrears lifecycle
    # (spec/ledger.md 5: days from the suspension), and what a published tariff states
    # (MIIT 2018 notice: when it was published, until when it is on sale, in words).
    sla_credit_base: Literal["rent", "floor", "package"] = "rent"
    frozen_after_days: Annotated[StrictInt, Field(gt=0, le=3650)] | None = None
    reclaim_after_days: Annotated[StrictInt, Field(gt=0, le=3650)] | None = None
    published_at: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    description: str = ""

    @field_validator("effective_from", "published_at", "valid_until")
    @classmethod
    def _fixed_offset(cls, instant: datetime | None) -> datetime | None:
        # TOML readers attach their own tzinfo classes; keep a plain fixed offset.
        return None if instant is None else instant.replace(tzinfo=timezone(instant.utcoffset()))

    @model_validator(mode="after")
    def _lifecycle_and_validity(self) -> PlanVersion:
        # issue 25: the numbers are released after (or when) the account is frozen; a
        # version is published before it takes effect and on sale after it does.
        if self.frozen_after_days and self.reclaim_after_days and self.reclaim_after_days < self.frozen_after_days:
            raise ValueError(
                f"reclaim_after_days ({self.reclaim_after_days}) must not be less than frozen_after_days "
                f"({self.frozen_after_days}): both count from the suspension"
            )
        if self.published_at is not None and self.published_at > self.effective_from:
            raise ValueError(
                f"published_at {self.published_at.isoformat()} is after effective_from "
                f"{self.effective_from.isoformat()}: a tariff is published before it takes effect"
            )
        if self.valid_until is not None and self.valid_until <= self.effective_from:
            raise ValueError(
                f"valid_until {self.valid_until.isoformat()} must be after effective_from "
                f"{self.effective_from.isoformat()}"
            )
        return self

    @field_validator("services")
    @classmethod
    def _with_default_services(cls, services: dict[str, Service]) -> dict[str, Service]:
        # Today's four keep their meaning and fees unless the plan names them.
        return {**DEFAULT_SERVICES, **services}

    @field_validator("rates")
    @classmethod
    def _one_rate_per_segment_and_class(cls, rates: list[Rate]) -> list[Rate]:
        seen: dict[tuple[str, str], int] = {}
        for index, rate in enumerate(rates):
            key = (rate.segment, rate.call_class)
            if key in seen:
                raise ValueError(
                    f"rates {seen[key]} and {index} share segment {rate.segment!r} and "
                    f"class {rate.call_class!r}; each (segment, class) may appear once"
                )
            seen[key] = index
        return rates


class Plan(_Model):
    """A tariff plan: one TOML file, one or more versions (spec 2.1)."""

    id: Annotated[str, Field(min_length=1, pattern=r"^\S+$")]
    name: str = ""
    currency: Literal["CNY"] = "CNY"
    timezone: str = "Asia/Shanghai"
    versions: Annotated[list[PlanVersion], Field(min_length=1)]

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA timezone {name!r} (e.g. 'Asia/Shanghai')") from exc
        return name

    @field_validator("versions")
    @classmethod
    def _distinct_effective_from(cls, versions: list[PlanVersion]) -> list[PlanVersion]:
        seen: dict[datetime, int] = {}
        for index, version in enumerate(versions):
            if version.effective_from in seen:
                raise ValueError(
                    f"versions {seen[version.effective_from]} and {index} share "
                    f"effective_from {version.effective_from.isoformat()}"
                )
            seen[version.effective_from] = index
        return sorted(versions, key=lambda v: v.effective_from)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def version_at(self, instant: datetime) -> PlanVersion | None:
        """The version in force at ``instant`` (spec 2.1), else None."""
        found = None
        for version in self.versions:
            if version.effective_from <= instant:
                found = version
        return found

    @property
    def has_packages(self) -> bool:
        return any(version.package is not None for version in self.versions)


FourHundredNumber = Annotated[str, Field(pattern=r"^400\d{7}$")]


class Account(_Model):
    """An enterprise that owns 400 numbers and pays for their calls (spec 2.2)."""

    id: Annotated[str, Field(min_length=1, pattern=r"^\S+$")]
    plan: str
    numbers: list[FourHundredNumber] = []
    opening_balance: SignedMoney = 0
    low_balance_threshold: Money = 500_000
    daily_cap: Money | None = None
    opened_at: AwareDatetime | None = None

    @field_validator("opened_at")
    @classmethod
    def _fixed_offset(cls, instant: datetime | None) -> datetime | None:
        return None if instant is None else instant.replace(tzinfo=timezone(instant.utcoffset()))

    @field_validator("numbers")
    @classmethod
    def _numbers_once(cls, numbers: list[str]) -> list[str]:
        if len(set(numbers)) != len(numbers):
            doubled = sorted({n for n in numbers if numbers.count(n) > 1})
            raise ValueError(f"number listed twice: {', '.join(doubled)}")
        return numbers


def opened_instant(account: Account, plan: Plan) -> datetime:
    """When an account of the accounts file counts as opened (spec/ledger.md 1): its
    ``opened_at``, else the earliest ``effective_from`` of its plan."""
    return account.opened_at or min(version.effective_from for version in plan.versions)


def opening_package(account: Account, plan: Plan) -> tuple[Package, datetime] | None:
    """The package an imported account buys when it is opened (issue 23), and the end of
    its credit: the package of the version in force at the opening (None: none)."""
    opened = opened_instant(account, plan)
    version = plan.version_at(opened)
    if version is None or version.package is None:
        return None
    return version.package, version.package.ends(opened, plan.zone)


class Transfer(_Model):
    """A 400 number moved from one account to another (过户, issue 25): calls charged
    before ``at`` are the old account's, calls at or after it the new one's."""

    number: FourHundredNumber
    from_account: Annotated[str, Field(alias="from", min_length=1)]
    to_account: Annotated[str, Field(alias="to", min_length=1)]
    at: AwareDatetime

    @field_validator("at")
    @classmethod
    def _fixed_offset(cls, instant: datetime) -> datetime:
        return instant.replace(tzinfo=timezone(instant.utcoffset()))

    @model_validator(mode="after")
    def _two_accounts(self) -> Transfer:
        if self.from_account == self.to_account:
            raise ValueError(f"number {self.number} is transferred from account {self.from_account!r} to itself")
        return self


def ownership(transfers: Iterable[Transfer]) -> dict[str, list[tuple[datetime | None, str]]]:
    """Each transferred number's owners over time: ``[(since, account), ...]`` in time
    order, the first ``since`` None (the owner before the first transfer).

    Raises ``ValueError`` when a number's transfers do not follow each other (one leaves
    an account that does not hold it, or two share an instant).

    >>> t = Transfer.model_validate({"number": "4008123456", "from": "A", "to": "B", "at": "2026-04-01T00:00:00+08:00"})
    >>> [(since and since.isoformat(), owner) for since, owner in ownership([t])["4008123456"]]
    [(None, 'A'), ('2026-04-01T00:00:00+08:00', 'B')]
    """
    chains: dict[str, list[tuple[datetime | None, str]]] = {}
    for transfer in sorted(transfers, key=lambda t: (t.number, t.at)):
        chain = chains.setdefault(transfer.number, [(None, transfer.from_account)])
        since, holder = chain[-1]
        if holder != transfer.from_account:
            raise ValueError(
                f"number {transfer.number} is transferred from {transfer.from_account!r} at "
                f"{transfer.at.isoformat()}, but {holder!r} holds it then"
            )
        if since is not None and since == transfer.at:
            raise ValueError(f"number {transfer.number} has two transfers at {transfer.at.isoformat()}")
        chain.append((transfer.at, transfer.to_account))
    return chains


class AccountsFile(_Model):
    """The accounts file: ``[[accounts]]`` tables, and the ``[[transfers]]`` of numbers
    between them (issue 25)."""

    accounts: list[Account] = []
    transfers: list[Transfer] = []

    @model_validator(mode="after")
    def _ids_and_numbers_unique(self) -> AccountsFile:
        ids: dict[str, int] = {}
        owners: dict[str, str] = {}
        for index, account in enumerate(self.accounts):
            if account.id in ids:
                raise ValueError(f"account id {account.id!r} is used by accounts {ids[account.id]} and {index}")
            ids[account.id] = index
            for number in account.numbers:
                # spec 2.2: a number belongs to at most one account.
                if number in owners:
                    raise ValueError(
                        f"number {number} belongs to two accounts: {owners[number]!r} and {account.id!r}"
                    )
                owners[number] = account.id
        # issue 25: a number's transfers follow each other between accounts of the file,
        # and the last one leaves it with the account that lists it.
        try:
            chains = ownership(self.transfers)
        except ValueError as error:
            raise ValueError(f"transfers: {error}") from None
        for number, chain in chains.items():
            for _, holder in chain:
                if holder not in ids:
                    raise ValueError(f"transfers: number {number} names account {holder!r}, which is not in the file")
            if owners.get(number) != chain[-1][1]:
                raise ValueError(
                    f"transfers: number {number} was last transferred to {chain[-1][1]!r}, so that account "
                    f"must list it in its numbers (it is listed by {owners.get(number)!r})"
                )
        return self
