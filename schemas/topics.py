"""The Kafka topics of cdrflow, their keys, what flows through them and how long they keep it.

Account topics are keyed by account id, so one partition holds one account's whole
history in order (docs/architecture.md: the log is the truth). Every topic gets the same number of
partitions (``Settings.topic_partitions``), which keeps the account topics
co-partitioned; a topic that names its own (``invoice.numbers``: one) keeps that. ``cdrflow up`` creates each topic listed here that does not exist yet,
with the configs of its role (below) plus the replication factor and
``min.insync.replicas`` of the settings; ``cdrflow topics --check`` compares them with the
cluster's (docs/operations.md, "The topics"). Add a topic by adding an entry.

Roles, and what they keep:

- **truth** (``KEEP_FOREVER``): the account log, the catalogue, the ingest records, the
  invoice number requests and the worker's state. Nothing else holds them (ClickHouse is rebuilt from Kafka, never
  the other way): never expired, never compacted (``cdr.raw`` is keyed by account:
  compaction would keep only an account's last chunk).
- **output** (``KEEP_FOREVER``): what the worker derived; ``cdrflow rebuild`` refills
  ClickHouse from them, so they are kept as long as the log they came from.
- **latest** (``LATEST_VALUE``): a key's last value is all that is ever read (a number's
  status, a feed's position and notes, a partition's figures): compacted, never expired.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Literal


#: Never expired, never compacted: retention -1 in time and in bytes.
KEEP_FOREVER: Final[dict[str, str]] = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}
#: A key's last value is kept forever (compaction never removes it; nothing expires).
LATEST_VALUE: Final[dict[str, str]] = {"cleanup.policy": "compact", "retention.ms": "-1", "retention.bytes": "-1"}

Role = Literal["truth", "output", "latest"]


@dataclass(frozen=True)
class Topic:
    """One topic: its name, what its messages are keyed by, what they carry, and its role."""

    name: str
    key: str
    carries: str
    role: Role = "truth"
    #: topic configs given at creation, from the role unless given
    configs: dict[str, str] = field(default_factory=dict)
    #: its partitions when not the settings' (``topic_partitions``)
    partitions: int | None = None

    def __post_init__(self) -> None:
        if not self.configs:
            object.__setattr__(self, "configs", dict(LATEST_VALUE if self.role == "latest" else KEEP_FOREVER))

    def created_with(self, min_insync_replicas: int) -> dict[str, str]:
        """The configs a topic is created with: its role's and ``min.insync.replicas``.

        Examples
        --------
        >>> TOPICS[CDR_RAW].created_with(2)["retention.ms"], TOPICS[CDR_RAW].created_with(2)["min.insync.replicas"]
        ('-1', '2')
        """
        return {**self.configs, "min.insync.replicas": str(min_insync_replicas)}


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

#: Topics by name; partitions come from the settings unless the topic names its own.
TOPICS: Final[dict[str, Topic]] = {
    topic.name: topic
    for topic in (
        Topic(
            CDR_RAW,
            key="account_id",
            carries="CDR lines from switch feeds, in file order, and ledger commands; the worker writes a "
            "transferred number's calls back here to the account that held it then (issue 25)",
        ),
        Topic(
            BILLING_EVENTS,
            key="account_id",
            carries="rated calls, fees and top-ups: the account log",
            role="output",
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
            role="output",
        ),
        Topic(ALERTS, key="account_id", carries="low-balance, daily-cap and arrears alerts", role="output"),
        Topic(ACCOUNTS, key="account_id", carries="account definitions and their changes"),
        Topic(PLANS, key="plan_id", carries="plan versions, as loaded"),
        Topic(
            LEDGER_EVENTS,
            key="account_id",
            carries="ledger events folded from the account log (fees, top-ups, month close, lifecycle)",
            role="output",
        ),
        Topic(
            ACCOUNT_BALANCES,
            key="account_id",
            carries="each account's balance and lifecycle state after every batch that changed it",
            role="output",
        ),
        Topic(
            NUMBER_STATUS,
            key="the 400 number",
            carries="active | blocked | released, for a switch's call admission (compacted)",
            role="latest",
        ),
        Topic(
            WORKER_STATUS,
            key="the cdr.raw partition number",
            carries="each partition's state figures and blocked accounts, from the worker holding it",
            role="latest",
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
            role="latest",
        ),
        Topic(
            FEED_NOTES,
            key="the feed's source (a tailed generation, a routed partition)",
            carries="what a live feed's reader noticed about its lines (times written in another zone...), "
            "for `cdrflow status`",
            # Only the last note of a source is ever read.
            role="latest",
        ),
        Topic(
            INVOICE_NUMBERS,
            key="the seller id",
            carries="requests for document numbers: a document's number is its place among the distinct "
            "documents of its seller, in log order (streams.ledger.invoice_numbers; docs/finance.md)",
            # One partition: one order for every request. Truth, kept for ever: the numbers
            # are counted from its first message.
            partitions=1,
        ),
    )
}


#: The worker's state: one single-partition topic per ``cdr.raw`` partition and
#: generation, ``<app_id>-state.p<P>.g<G>`` (streams.worker.state_log), created by the
#: worker. The state is in no other place: kept forever (an old generation is deleted by
#: the worker once the next one is complete).
STATE_TOPIC: Final = Topic(
    "<app_id>-state.p<P>.g<G>",
    key="account_id, or account_id NUL record name",
    carries="the accounts' state records of one cdr.raw partition, one generation",
)
#: Topics Faust makes for itself (``<app_id>-...``): they hold no cdrflow data (the
#: table is empty, the leader topic is Faust's assignor's), so nothing is lost with them.
FAUST_TOPICS: Final[tuple[str, ...]] = ("<app_id>-rebalance_hook-changelog", "<app_id>-__assignor-__leader")


def state_topic_pattern(app_id: str, topic_prefix: str = "") -> str:
    """The regular expression of the state topics of an app (a prefix included).

    Examples
    --------
    >>> import re
    >>> bool(re.fullmatch(state_topic_pattern("cdrflow"), "cdrflow-state.p3.g12"))
    True
    """
    return re.escape(f"{topic_prefix}{app_id}-state") + r"\.p(\d+)\.g(\d+)"
