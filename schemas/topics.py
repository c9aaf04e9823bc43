"""The Kafka topics of cdrflow, their keys and what flows through them.

Account topics are keyed by account id, so one partition holds one account's whole
history in order (docs/architecture.md: the log is the truth). Every topic gets the same number of
partitions (``Settings.topic_partitions``), which keeps the account topics
co-partitioned. ``cdrflow up`` creates each topic listed here that does not exist yet;
add a topic by adding an entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final


@dataclass(frozen=True)
class Topic:
    """One topic: its name, what its messages are keyed by, and what they carry."""

    name: str
    key: str
    carries: str
    #: topic configs given at creation (e.g. ``cleanup.policy``)
    configs: dict[str, str] = field(default_factory=dict)
    #: its partitions when not the settings' (``topic_partitions``)
    partitions: int | None = None


#: The topic names, one constant each: code names a topic by these, never by a literal
#: (tests/test_layout.py).
CDR_RAW: Final = "cdr.raw"
BILLING_EVENTS: Final = "billing.events"
CDR_REJECTED: Final = "cdr.rejected"
RATING_REJECTED: Final = "rating.rejected"
ALERTS: Final = "alerts"
ACCOUNTS: Final = "accounts"
PLANS: Final = "plans"
LEDGER_EVENTS: Final = "ledger.events"
ACCOUNT_BALANCES: Final = "account.balances"
NUMBER_STATUS: Final = "number.status"
WORKER_STATUS: Final = "worker.status"
INGEST_FILES: Final = "ingest.files"
INGEST_POSITIONS: Final = "ingest.positions"
FEED_NOTES: Final = "feed.notes"
INVOICE_NUMBERS: Final = "invoice.numbers"

#: Topics by name; partitions come from the settings.
TOPICS: Final[dict[str, Topic]] = {
    topic.name: topic
    for topic in (
        Topic(CDR_RAW, key="account_id", carries="CDR lines from switch feeds, in file order"),
        Topic(
            BILLING_EVENTS,
            key="account_id",
            carries="rated calls, fees and top-ups: the account log",
        ),
        Topic(
            CDR_REJECTED,
            key="account_id (the called number when no account is known)",
            carries="CDR lines ingest rejected (malformed, unknown_number) with file, line and reason",
        ),
        Topic(
            RATING_REJECTED,
            key="account_id",
            carries="CDR lines the worker rejected (late, duplicate, invalid_time, no_rate, ...), same form",
        ),
        Topic(ALERTS, key="account_id", carries="low-balance, daily-cap and arrears alerts"),
        Topic(ACCOUNTS, key="account_id", carries="account definitions and their changes"),
        Topic(PLANS, key="plan_id", carries="plan versions, as loaded"),
        Topic(
            LEDGER_EVENTS,
            key="account_id",
            carries="ledger events folded from the account log (fees, top-ups, month close, lifecycle)",
        ),
        Topic(
            ACCOUNT_BALANCES,
            key="account_id",
            carries="each account's balance and lifecycle state after every batch that changed it",
        ),
        Topic(
            NUMBER_STATUS,
            key="the 400 number",
            carries="active | blocked | released, for a switch's call admission (compacted)",
            configs={"cleanup.policy": "compact"},
        ),
        Topic(
            WORKER_STATUS,
            key="the cdr.raw partition number",
            carries="each partition's state figures and blocked accounts, from the worker holding it",
            configs={"cleanup.policy": "compact"},
        ),
        Topic(
            INGEST_FILES,
            key="sha256 of the file's content",
            carries="one event per ingested file: name, sha256, lines, ingest_id, at",
        ),
        Topic(
            INGEST_POSITIONS,
            key="tail:<absolute path> | route:<topic>:<partition>",
            carries="how far `ingest --tail` and `route` have sent their feeds (streams.feeds.positions)",
            # Only the last value of a key is ever read.
            configs={"cleanup.policy": "compact"},
        ),
        Topic(
            FEED_NOTES,
            key="the feed's source (a tailed generation, a routed partition)",
            carries="what a live feed's reader noticed about its lines (times written in another zone...), "
            "for `cdrflow status`",
            configs={"cleanup.policy": "compact"},
        ),
        Topic(
            INVOICE_NUMBERS,
            key="the seller id",
            carries="requests for document numbers: a document's number is its place among the distinct "
            "documents of its seller, in log order (streams.ledger.invoice_numbers; docs/finance.md)",
            # One partition: one order for every request. Kept for ever: the numbers are
            # counted from its first message.
            configs={"retention.ms": "-1", "retention.bytes": "-1"},
            partitions=1,
        ),
    )
}
