"""The ledger on the account's log (spec/ledger.md): commands in, events out.

An account's log is its ``cdr.raw`` partition (key = account id): CDR chunks and ledger
commands side by side, so one fold over one log gives rated calls, balance, alerts and
lifecycle. A command is a fact a person or system asserts (a payment arrived, a service
was ordered, a month is to be closed); the rating agent folds it in log order
(``rating.ledger``) into the events of ledger.md section 1, each with a deterministic
``event_id``: replaying the log or repeating a command never creates a second one.

A command's message value is ``{"v": 1, "ledger": {...}}`` (a CDR chunk has no
``ledger`` key). Money is integer units of 0.0001 CNY.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.corrections import Correction
from schemas.invoices import InvoiceRequest
from schemas.invoices import is_month as _is_month

LEDGER_MESSAGE_VERSION: Final[int] = 1

CommandKind = Literal[
    "open", "topup", "services", "keep", "resume", "cancel", "close_month", "sla_credit", "rerate", "renew",
    # issue 24: issue a numbered invoice or note (schemas.invoices)
    "invoice",
    # issue 22: try a blocked account again, or skip the message it is blocked at
    "unblock",
    # issue 25: a number moves between accounts (one command on each account's log)
    "transfer_out", "transfer_in",
]
EventKind = Literal[
    "AccountOpened",
    "NumberAssigned",
    "TopUpReceived",
    "RentCharged",
    "ServiceFeeCharged",
    "MinimumSpendTrueUp",
    "KeepNumberFeeCharged",
    "SlaCreditGranted",
    "ServiceEnabled",
    "ServiceDisabled",
    "AccountSuspended",
    "AccountReactivated",
    "KeepNumberStarted",
    "KeepNumberEnded",
    "CancellationRequested",
    "NumberFrozen",
    "AccountClosed",
    "RefundIssued",
    "CallRerated",
    # issue 22: a message a blocked account was stopped at, skipped (`cdrflow blocked skip`)
    "InputSkipped",
    # issue 23: term packages and lock-in
    "PackagePurchased",
    "PackageRenewed",
    "PackageCreditExpired",
    "EarlyTerminationCharged",
    # issue 24: a month closed for the account; documents issued (they carry them whole)
    "MonthClosed",
    "InvoiceIssued",
    "CreditNoteIssued",
    "DebitNoteIssued",
    # issue 25: the arrears lifecycle's reclaim, and number transfers
    "NumberReleased",
    "NumberTransferred",
]
#: Events that take money (amount <= 0), give it (>= 0); every other kind moves none.
CHARGES: Final[frozenset[str]] = frozenset(
    {
        "AccountOpened",
        "NumberAssigned",
        "RentCharged",
        "ServiceFeeCharged",
        "MinimumSpendTrueUp",
        "KeepNumberFeeCharged",
        "RefundIssued",
        "PackagePurchased",
        "PackageRenewed",
        "EarlyTerminationCharged",
    }
)
#: A package's credit that ends goes to the balance (``unused = "refund"``) or nowhere.
CREDITS: Final[frozenset[str]] = frozenset({"TopUpReceived", "SlaCreditGranted", "PackageCreditExpired"})
#: Events whose money may go either way: a correction makes a call dearer or cheaper.
SIGNED: Final[frozenset[str]] = frozenset({"CallRerated"})
#: Events that grant package credit (``credit_change >= 0``) and that take it (``<= 0``:
#: floor charges draw on it before the balance; an ending takes what is left); no other
#: kind touches the credit (issue 23).
CREDIT_GRANTS: Final[frozenset[str]] = frozenset({"PackagePurchased", "PackageRenewed"})
CREDIT_TAKES: Final[frozenset[str]] = frozenset(
    {"MinimumSpendTrueUp", "EarlyTerminationCharged", "PackageCreditExpired"}
)
#: The services every plan has (tariffs.models.DEFAULT_SERVICES); a plan may add others.
SERVICES: Final[tuple[str, ...]] = ("ivr", "recording", "blacklist", "sms")
_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_NUMBER = re.compile(r"^400\d{7}$")


def fixed_offset(instant: datetime) -> datetime:
    """The same instant with a plain fixed-offset tzinfo (whatever zone object it had)."""
    return instant.replace(tzinfo=timezone(instant.utcoffset()))


class LedgerCommand(BaseModel):
    """One ledger command on an account's log; which fields apply depends on ``kind``.

    Examples
    --------
    >>> LedgerCommand(kind="topup", account_id="A1", at="2026-03-01T10:00:00+08:00",
    ...               amount=1_000_000, ref="PAY-1").command_id
    'topup/PAY-1'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: CommandKind
    account_id: str = Field(min_length=1)
    at: AwareDatetime
    #: what makes a repeat of the same command the same (default from kind and fields)
    command_id: str = ""
    # open
    plan: str = ""
    numbers: list[str] = []
    opening_balance: int = 0
    opening_fee: int = Field(default=0, ge=0)
    #: number -> [grade, selection fee]; empty for an imported account
    number_fees: dict[str, tuple[str, int]] = {}
    imported: bool = False
    # topup
    amount: int = 0
    ref: str = ""
    # services
    enable: list[str] = []
    disable: list[str] = []
    # close_month: "YYYY-MM"
    month: str = ""
    # sla_credit: the fault
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    # rerate: one part of a correction (schemas.corrections)
    correction: Correction | None = None
    # unblock (`cdrflow blocked retry|skip`, docs/streaming.md "Blocked accounts"): try a
    # blocked account again; with skip_offset, the message it is blocked at (a cdr.raw
    # offset of the account's partition) is not applied but kept as rejections, why in reason
    skip_offset: int | None = Field(default=None, ge=0)
    reason: str = ""
    # invoice: the document to issue, its number and the tax table (issue 24)
    document: InvoiceRequest | None = None
    # transfer_out / transfer_in (issue 25): the number, and the account it goes to / comes from
    number: str = ""
    counterpart: str = ""

    @field_validator("at", "start", "end")
    @classmethod
    def _fixed(cls, instant: datetime | None) -> datetime | None:
        return None if instant is None else fixed_offset(instant)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> LedgerCommand:
        if self.kind == "open" and not self.plan:
            raise ValueError("an open command needs a plan")
        if self.kind == "topup" and (self.amount <= 0 or not self.ref):
            raise ValueError("a top-up needs a positive amount and a payment reference")
        if self.kind == "services":
            # Which services exist is the plan's (the fold checks); here only their form.
            bad = sorted(s for s in {*self.enable, *self.disable} if not _SERVICE_NAME.match(s))
            if bad:
                raise ValueError(f"not a service name: {', '.join(bad)} (lower-case letters, digits and _)")
        if self.kind == "close_month" and not _is_month(self.month):
            raise ValueError(f"month must be YYYY-MM, got {self.month!r}")
        if self.kind == "sla_credit" and (self.start is None or self.end is None or self.end <= self.start):
            raise ValueError("an SLA credit needs a fault start and a later end")
        if self.kind in ("transfer_out", "transfer_in") and (
            not _NUMBER.match(self.number) or not self.counterpart or self.counterpart == self.account_id
        ):
            raise ValueError("a transfer needs a 400 number and another account (counterpart)")
        if (self.kind == "rerate") != (self.correction is not None):
            raise ValueError("a rerate command carries a correction, and only a rerate command does")
        if self.skip_offset is not None and (self.kind != "unblock" or not self.reason.strip()):
            raise ValueError("only an unblock command skips a message, and it says why (reason)")
        if (self.kind == "invoice") != (self.document is not None):
            raise ValueError("an invoice command carries a document, and only an invoice command does")
        if not self.command_id:
            object.__setattr__(self, "command_id", self._default_id())
        return self

    def _default_id(self) -> str:
        if self.kind == "open":
            return "open"
        if self.kind == "topup":
            return f"topup/{self.ref}"
        if self.kind == "close_month":
            return f"close_month/{self.month}"
        if self.kind == "sla_credit":
            return f"sla_credit/{self.start.isoformat()}/{self.end.isoformat()}"  # type: ignore[union-attr]
        if self.kind == "rerate":
            return f"rerate/{self.correction.correction_id}/{self.correction.part}"  # type: ignore[union-attr]
        if self.kind == "invoice":
            return f"invoice/{self.document.number}"  # type: ignore[union-attr]
        if self.kind in ("transfer_out", "transfer_in"):
            return f"{self.kind}/{self.number}/{self.at.isoformat()}"
        return f"{self.kind}/{self.at.isoformat()}"

    def message_value(self) -> dict[str, Any]:
        """The ``cdr.raw`` message value of this command (an unblock's fields only on an
        unblock command: the others read as before, by workers of earlier releases too)."""
        value = self.model_dump(mode="json")
        if self.kind != "unblock":
            del value["skip_offset"], value["reason"]
        return {"v": LEDGER_MESSAGE_VERSION, "ledger": value}


def command_from_value(value: object) -> LedgerCommand | None:
    """The command of a ``cdr.raw`` message value; ``None`` when it is no ledger message.

    Raises ``pydantic.ValidationError`` for a ledger message that is not a valid command.
    """
    if not isinstance(value, dict) or "ledger" not in value:
        return None
    return LedgerCommand.model_validate(value["ledger"])


class LedgerEvent(BaseModel):
    """An event of ledger.md section 1, as the fold produced it.

    ``amount`` is the event's own money (- takes from the balance, + adds); an
    AccountOpened also sets the balance it was opened with (``opening_balance``), so the
    balance after it is ``opening_balance + amount``. ``balance`` is the balance right
    after the event, in log order.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    account_id: str
    kind: EventKind
    at: AwareDatetime
    amount: int = 0
    opening_balance: int = 0
    balance: int
    plan_id: str = ""
    reference: str = ""
    detail: str = ""
    #: what the event did to the package credit (issue 23), and the credit right after it
    credit_change: int = 0
    credit: int = 0
    #: an issued document (InvoiceIssued, CreditNoteIssued, DebitNoteIssued): the
    #: schemas.invoices.InvoiceDocument as JSON (issue 24); '' on every other kind
    document: str = ""
    #: NumberTransferred on the account the number left: the account it went to (issue 25)
    transferred_to: str = ""

    @model_validator(mode="after")
    def _sign_of_kind(self) -> LedgerEvent:
        if self.kind in CHARGES and self.amount > 0:
            raise ValueError(f"{self.kind} takes money: its amount cannot be positive ({self.amount})")
        if self.kind in CREDITS and self.amount < 0:
            raise ValueError(f"{self.kind} gives money: its amount cannot be negative ({self.amount})")
        if self.kind not in CHARGES | CREDITS | SIGNED and self.amount != 0:
            raise ValueError(f"{self.kind} moves no money (amount {self.amount})")
        if self.kind in CREDIT_GRANTS and self.credit_change < 0:
            raise ValueError(f"{self.kind} grants credit: its credit_change cannot be negative ({self.credit_change})")
        if self.kind in CREDIT_TAKES and self.credit_change > 0:
            raise ValueError(f"{self.kind} takes credit: its credit_change cannot be positive ({self.credit_change})")
        if self.kind not in CREDIT_GRANTS | CREDIT_TAKES and self.credit_change != 0:
            raise ValueError(f"{self.kind} moves no credit (credit_change {self.credit_change})")
        return self
