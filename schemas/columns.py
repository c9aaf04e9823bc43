"""The CSV column contract (spec/rating.md 2.3 and 6) and the codes used in outputs."""

from __future__ import annotations

from typing import Final, Literal

#: spec 2.3: the canonical CDR CSV columns, in this order.
CDR_COLUMNS: Final[tuple[str, ...]] = (
    "cdr_id",
    "switch_id",
    "caller",
    "called",
    "answer_number",
    "caller_area",
    "answer_area",
    "start_time",
    "answer_time",
    "end_time",
    "billsec",
    "disposition",
)
CDR_HEADER: Final[str] = ",".join(CDR_COLUMNS)

#: How a ``framing`` problem of the answering number begins: it is judged after the
#: called number (spec 4 step 2), so a call to no account is ``unknown_number`` first.
ANSWER_PROBLEM: Final[str] = "answer_number "

DISPOSITIONS: Final[tuple[str, ...]] = ("ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CONGESTION")

RejectReason = Literal[
    "malformed", "unknown_number", "late", "duplicate", "invalid_time", "no_rate", "account_inactive"
]
#: spec 4: rejection codes, in the order the steps run (late: the horizon, docs/rules.md;
#: account_inactive: ledger.md 5).
REJECT_REASONS: Final[tuple[str, ...]] = (
    "malformed",
    "unknown_number",
    "late",
    "duplicate",
    "invalid_time",
    "no_rate",
    "account_inactive",
)

AlertKind = Literal["daily_cap_reached", "low_balance", "arrears", "unusual_calls", "unusual_spend"]
#: spec 5: when one call raises several alerts they come in this order; issue 25's two
#: unusual-use alerts after them (docs/rules.md "Unusual use").
ALERT_KINDS: Final[tuple[str, ...]] = ("daily_cap_reached", "low_balance", "arrears", "unusual_calls", "unusual_spend")

CallStatus = Literal["rated", "unbilled"]

#: spec 6: rated.csv must carry these (more may follow).
RATED_COLUMNS: Final[tuple[str, ...]] = (
    "cdr_id",
    "account_id",
    "status",
    "class",
    "offpeak",
    "billable_s",
    "allowance_s",
    "charged_s",
    "base",
    "discount",
    "minimum_uplift",
    "cap_waived",
    "amount",
)
#: Columns cdrflow adds to rated.csv so a dispute can be answered from the row.
RATED_EXPLAIN_COLUMNS: Final[tuple[str, ...]] = (
    "line",
    "called",
    "charge_time",
    "local_day",
    "plan_id",
    "plan_version",
    "rate_segment",
    "tier_first",
    "tier_last",
    "offpeak_percent",
    "daily_cap",
    "balance",
    # issue 23: the package credit the call drew on, and the credit left after it
    "credit_used",
    "credit",
    # How the caller was placed (schemas.numbering.CALLER_ORIGINS): `unknown` is rated by
    # its plan's unknown_caller_class (docs/rules.md).
    "caller_origin",
)
#: Columns the engine adds to rated calls for finance's reports (ClickHouse only): the
#: CDR's disposition (missed calls), caller and caller area (call origin), billsec (call
#: duration) and the local hour of the charge time (0-23, plan timezone). Not in rated.csv,
#: which keeps the spec 6 format.
RATED_FINANCE_COLUMNS: Final[tuple[str, ...]] = ("disposition", "caller", "caller_area", "billsec", "local_hour")
MONEY_COLUMNS: Final[frozenset[str]] = frozenset(
    {"base", "discount", "minimum_uplift", "cap_waived", "amount", "balance", "daily_cap", "credit_used", "credit"}
)

REJECTED_COLUMNS: Final[tuple[str, ...]] = ("line", "cdr_id", "reason", "detail", "account_id")
ALERT_COLUMNS: Final[tuple[str, ...]] = ("account_id", "kind", "cdr_id", "balance", "line", "local_day")
