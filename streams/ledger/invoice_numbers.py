"""Document numbers: one sequence per seller, issued once, no gap and no reuse (issue 24).

An account's log is one partition of ``cdr.raw``: it orders that account's events, not
the seller's invoices, so the sequence cannot come from one account's fold. It comes from
a log of its own, partition 0 of the ``invoice.numbers`` topic:

1. A request for a document's number is a message carrying the document's deterministic
   id (``invoice/<account>/<month>``, ``note/<account>/<offset>/<invoice>``;
   ``schemas.invoices.document_id``), keyed by the seller.
2. A document's number is its place among the **distinct** documents of its seller,
   counted in log order from the first message (:func:`numbers_in_log`). A second request
   for the same document (the CLI asked twice, two CLIs at once, one that crashed and ran
   again) lands later in the log and counts nothing: the document keeps the number its
   first request gave it.
3. The requester reads the partition from its start up to the offset of its own last
   request (acknowledged by the broker), so it sees every request before its own,
   whatever the broker reports as the end (docs/infra.md: tansu's end offsets).

So two CLI calls at once get one number each for different documents and the same
number for the same one, and nothing can give a number twice. A number is spent once
its request is on the log; the document is then issued on the account's log
(``InvoiceIssued`` ...). A CLI that dies between the two leaves a number requested but
not issued: the next ``cdrflow invoice`` that asks for a number (or ``--all``) reads the
whole partition anyway, finds such requests and issues their documents with their numbers
(streams.ledger.invoices), so the sequence has no gap for longer than until that run. A request is written only for a
document the CLI has checked the fold will issue (a closed month, a known account).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import orjson
from kafka import TopicPartition
from kafka.errors import KafkaError

from schemas.topics import INVOICE_NUMBERS
from streams.kafka.client import BrokerError, make_producer, make_reader, topic_name
from streams.settings import Settings

#: The partition that orders every request (whatever partitions the topic has).
PARTITION: Final[int] = 0
READ_TIMEOUT_S: Final[float] = 120.0


@dataclass(frozen=True)
class NumberRequest:
    """A request for the number of one document, with what it takes to issue it again
    (after a crash) from the request alone."""

    seller: str
    document: str
    account_id: str
    kind: str  # invoice | note
    month: str = ""
    source_offset: int = -1
    corrects: str = ""

    def value(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_value(cls, value: bytes | None) -> NumberRequest | None:
        try:
            return cls(**orjson.loads(value or b""))
        except (orjson.JSONDecodeError, TypeError):
            return None  # a stranger's message: it holds no request and counts for nothing


def numbers_in_log(requests: Iterable[NumberRequest | None]) -> dict[tuple[str, str], tuple[int, NumberRequest]]:
    """(seller, document) -> (its number, its first request), the requests in log order.

    Examples
    --------
    >>> log = [NumberRequest("s", "invoice/A/2026-03", "A", "invoice", "2026-03"),
    ...        NumberRequest("s", "invoice/B/2026-03", "B", "invoice", "2026-03"),
    ...        NumberRequest("s", "invoice/A/2026-03", "A", "invoice", "2026-03"),  # asked again
    ...        None,
    ...        NumberRequest("t", "invoice/C/2026-03", "C", "invoice", "2026-03"),  # another seller
    ...        NumberRequest("s", "invoice/A/2026-04", "A", "invoice", "2026-04")]
    >>> {doc: number for (_, doc), (number, _) in numbers_in_log(log).items()}
    {'invoice/A/2026-03': 1, 'invoice/B/2026-03': 2, 'invoice/C/2026-03': 1, 'invoice/A/2026-04': 3}
    """
    numbers: dict[tuple[str, str], tuple[int, NumberRequest]] = {}
    counts: dict[str, int] = {}
    for request in requests:
        if request is None or (request.seller, request.document) in numbers:
            continue
        counts[request.seller] = counts.get(request.seller, 0) + 1
        numbers[(request.seller, request.document)] = (counts[request.seller], request)
    return numbers


def allocate(
    settings: Settings, requests: Sequence[NumberRequest]
) -> dict[tuple[str, str], tuple[int, NumberRequest]]:
    """Write ``requests`` and read the sequence up to them: every (seller, document) of the
    log so far with its number and first request (those of ``requests`` included).

    With no request, reads the partition to its end as the broker reports it (enough to
    find requests left by a crashed run: one written later is found by a later run).

    Raises ``BrokerError`` when the broker does not take the requests or cannot be read.
    """
    topic = topic_name(INVOICE_NUMBERS, settings.topic_prefix)
    last = -1
    if requests:
        producer = make_producer(settings, linger_ms=5)
        try:
            futures = [
                producer.send(topic, key=r.seller.encode(), value=r.value(), partition=PARTITION) for r in requests
            ]
            producer.flush(timeout=60)
            last = max(future.get(timeout=60).offset for future in futures)
        except KafkaError as error:
            raise BrokerError(f"could not request document numbers on {topic}: {error}") from None
        finally:
            producer.close(timeout=10)
    return numbers_in_log(NumberRequest.from_value(value) for value in _read(settings, topic, last))


def _read(settings: Settings, topic: str, through: int) -> list[bytes | None]:
    """The values of partition 0 from its first offset through ``through`` (-1: to the
    end the broker reports)."""
    reader = make_reader(settings)
    tp = TopicPartition(topic, PARTITION)
    values: list[bytes | None] = []
    try:
        reader.assign([tp])
        reader.seek_to_beginning(tp)
        deadline = time.monotonic() + READ_TIMEOUT_S
        while True:
            for batch in reader.poll(timeout_ms=200, max_records=50_000).values():
                values.extend(record.value for record in batch if through < 0 or record.offset <= through)
            position = reader.position(tp)
            if through >= 0 and position > through:
                return values
            highwater = reader.highwater(tp)
            if through < 0 and highwater is not None and position >= highwater:
                return values
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"could not read {topic}[{PARTITION}] up to offset {through} within {READ_TIMEOUT_S:.0f} s"
                )
    except KafkaError as error:
        raise BrokerError(f"could not read the document numbers on {topic}: {error}") from None
    finally:
        reader.close()


def requests_of(numbers: dict[tuple[str, str], tuple[int, NumberRequest]], seller: str) -> list[tuple[int, Any]]:
    """The (number, first request) of one seller's documents, in number order."""
    return sorted(
        ((number, request) for (owner, _), (number, request) in numbers.items() if owner == seller),
        key=lambda pair: pair[0],
    )
