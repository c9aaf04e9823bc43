"""Land rating results in ClickHouse: columnar numpy inserts, retried while it is down.

The three tables (``schemas/migrations/0001_billing_tables.sql``) take the frames of
``rating.RatingResult`` as they are: ``insert_rated(client, result.rated)`` and so on.
A frame may also carry where its rows came from, as optional columns:

- ``source`` (the ingested file's name), ``ingest_id`` (the ingest run);
- ``topic``, ``partition``, ``offset`` (the Kafka position the rows were read from);
- ``version`` (rated calls and alerts: a correction inserts with a higher version, which
  replaces the row; default 0) and ``event_id`` (rated calls; default
  ``account_id/cdr_id``, computed by the table);
- ``correction_id`` (rated calls: the correction that made the row, docs/rules.md
  "Corrections"; such rows also reach ``rated_call_versions``) and ``cancelled`` (alerts:
  1 when a correction took the alert back).

An absent optional column is filled by the table (``''``, ``-1``, ``0``); other columns a
frame carries (the rating engine passes batch columns through) are not stored.

Inserting the same rows twice is harmless (at-least-once delivery, a retried insert):
every table is a ReplacingMergeTree keyed by the identity of its rows, and readers that
need exact figures read with ``FINAL`` (or ``argMax``).

Inserts go straight from polars to clickhouse-driver's numpy path, column by column, no
pandas frame on the way (the driver still imports pandas for that path); string columns
are encoded for the wire by numpy (:mod:`streams.clickhouse.wire`). Measured on this project's
2-core machines, with a client from :func:`connect`: see bench/sink_bench.py and the
figures in docs/streaming.md. The calls block: from an asyncio agent, run them in a
thread (``asyncio.to_thread``), one client per thread.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timezone
from typing import TypeVar

import numpy as np
import polars as pl
from clickhouse_driver import Client
from clickhouse_driver import errors as clickhouse_errors

from schemas.invoices import InvoiceDocument
from streams.clickhouse import wire as ch_wire
from streams.clickhouse.tables import (
    ALERTS,
    BALANCES,
    BILLING_EVENTS,
    INVOICE_LINES,
    INVOICES,
    RATED,
    REJECTED,
    Table,
)
from streams.settings import Settings

log = logging.getLogger(__name__)
ch_wire.install()  # string columns may come as ch_wire.EncodedStrings (see _numpy)

T = TypeVar("T")


# Server error codes that say "not now" rather than "never": the same insert can succeed
# later (ClickHouse's ErrorCodes).
_RETRYABLE_SERVER_CODES = frozenset(
    {
        clickhouse_errors.ErrorCodes.TOO_MANY_SIMULTANEOUS_QUERIES,  # 202
        clickhouse_errors.ErrorCodes.SOCKET_TIMEOUT,  # 209
        clickhouse_errors.ErrorCodes.NETWORK_ERROR,  # 210
        clickhouse_errors.ErrorCodes.TOO_MANY_PARTS,  # 252: inserts faster than merges
    }
)


#: Rows per block an insert is sent in. The server writes each block as it comes while
#: the client sends the next (it would otherwise gather up to ~1M rows, then write):
#: measured on 1M rated calls, 1.5 s instead of 2.5 s, and a third of the server memory.
INSERT_BLOCK_ROWS = 131_072
#: Frames of at least this many rows are sent in two halves over two connections at once
#: (a :class:`SinkClient`'s): while one half's rows are made into columns in Python, the
#: server writes the other's. Measured on 1M rated calls: ~0.4M rows/s -> ~0.6M rows/s.
PARALLEL_MIN_ROWS = 2 * INSERT_BLOCK_ROWS


class ClickHouseUnavailable(RuntimeError):
    """ClickHouse did not answer within the retry budget; the last error is the cause."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying while ClickHouse cannot be reached.

    Waits grow from ``first_delay_s`` by ``factor`` up to ``max_delay_s`` (each drawn
    between half and all of that, so that several workers do not retry in step), and no
    wait goes past ``budget_s`` after the first try. The default budget outlasts a
    server restart of a minute or two (issue 4: "ClickHouse stopped for a minute").
    """

    budget_s: float = 300.0
    first_delay_s: float = 0.5
    max_delay_s: float = 15.0
    factor: float = 2.0


class SinkClient(Client):
    """A ``clickhouse_driver.Client`` that can open a second connection like its own.

    :func:`insert` sends large frames over both at once (:data:`PARALLEL_MIN_ROWS`).
    Like any client, use one from one thread at a time.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        self._arguments = (args, dict(kwargs))
        self._sibling: Client | None = None
        super().__init__(*args, **kwargs)

    def sibling(self) -> Client:
        """The second connection (made on first use), with the same parameters."""
        if self._sibling is None:
            args, kwargs = self._arguments
            self._sibling = Client(*args, **kwargs)
        return self._sibling


def connect(settings: Settings, **client_options: object) -> SinkClient:
    """A client of the pipeline's ClickHouse for the sink: numpy path, blocks of
    :data:`INSERT_BLOCK_ROWS` rows.

    It connects on first use (and again after a network error). ``client_options`` go to
    ``clickhouse_driver.Client`` (``connect_timeout=...``). Queries through it answer
    numpy arrays (``columnar=True`` gives one per column).

    Examples
    --------
    >>> client = connect(Settings(clickhouse_url="clickhouse://default@127.0.0.1:9000/cdrflow"))
    >>> list(client.connection.hosts), client.connection.database
    ([('127.0.0.1', 9000)], 'cdrflow')
    """
    options = {"connect_timeout": 5, "client_name": "cdrflow-sink", **client_options}
    client_settings = {"use_numpy": True, "insert_block_size": INSERT_BLOCK_ROWS}
    return SinkClient(**settings.clickhouse_params(), settings=client_settings, **options)


def is_retryable(error: BaseException) -> bool:
    """Whether ``error`` says the server could not be reached (or was too busy) for now."""
    if isinstance(error, clickhouse_errors.ServerException):
        return error.code in _RETRYABLE_SERVER_CODES
    return isinstance(
        error,
        clickhouse_errors.NetworkError
        | clickhouse_errors.SocketTimeoutError
        | EOFError  # the server went away in the middle of a packet
        | ConnectionError  # refused, reset, broken pipe
        | TimeoutError,
    )


def with_retry(
    client: Client,
    action: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``action`` (a call on ``client``), again after each network error, within budget.

    Safe for inserts into this module's tables only because they collapse copies: an
    insert that failed halfway may have landed, and then lands twice.

    Raises
    ------
    ClickHouseUnavailable
        The server still could not be reached when the budget ran out.
    Exception
        Whatever ``action`` raised that is not a network error (a wrong column, a
        missing table), at once.

    Examples
    --------
    >>> client = Client("127.0.0.1", port=1, connect_timeout=0.2)
    >>> with_retry(client, lambda: client.execute("SELECT 1"), what="a test",
    ...            policy=RetryPolicy(budget_s=0.3, first_delay_s=0.1))
    Traceback (most recent call last):
    ...
    streams.clickhouse.insert.ClickHouseUnavailable: a test: ClickHouse at 127.0.0.1:1 did not answer within 0.3 s (...
    """
    started = time.monotonic()
    delay = policy.first_delay_s
    tries = 0
    while True:
        tries += 1
        try:
            return action()
        except Exception as error:
            if not is_retryable(error):
                raise
            # Start the next try on a fresh connection, whatever state this one is in.
            client.disconnect()
            wait = random.uniform(delay / 2, delay)
            left = policy.budget_s - (time.monotonic() - started)
            reason = _first_line(error)
            if wait > left:
                raise ClickHouseUnavailable(
                    f"{what}: ClickHouse at {_address(client)} did not answer within "
                    f"{policy.budget_s:g} s ({tries} tries); last error: {reason}"
                ) from error
            log.warning(
                "%s: ClickHouse at %s failed (%s); try %d in %.1f s (%.0f s of the budget left)",
                what,
                _address(client),
                reason,
                tries + 1,
                wait,
                left,
            )
            sleep(wait)
            delay = min(delay * policy.factor, policy.max_delay_s)


def insert_rated(client: Client, frame: pl.DataFrame, *, retry: RetryPolicy = RetryPolicy()) -> int:
    """Insert rated calls (``RatingResult.rated``, plus origin columns) into ``rated_calls``.

    Returns the number of rows sent. A call inserted again collapses with its copy; a
    higher ``version`` replaces it.

    Examples
    --------
    >>> insert_rated(connect(Settings()), result.rated.with_columns(source=pl.lit("a.csv")))  # doctest: +SKIP
    42
    """
    if "status" in frame.columns:
        # migration 0020: an unbilled record and a billed one of the same call are two rows.
        frame = frame.with_columns(
            record=pl.when(pl.col("status") == "unbilled").then(pl.lit("unbilled")).otherwise(pl.lit(""))
        )
    return insert(client, RATED, frame, retry=retry)


def insert_rejected(
    client: Client, frame: pl.DataFrame, *, retry: RetryPolicy = RetryPolicy()
) -> int:
    """Insert rejected lines (``RatingResult.rejected``, plus origin columns).

    Rows are keyed by ``(ingest_id, source, line)``: a replay collapses, a new ingest of
    the same file is new rows. A row without a ``source`` but with a Kafka ``offset`` (a
    message that was no CDR chunk) gets ``source`` = ``topic[partition]@offset``, so that
    such rejections do not collapse into one.

    Examples
    --------
    >>> insert_rejected(connect(Settings()), result.rejected)  # doctest: +SKIP
    15
    """
    if "offset" in frame.columns:
        frame = _source_from_kafka_position(frame)
    return insert(client, REJECTED, frame, retry=retry)


def insert_alerts(client: Client, frame: pl.DataFrame, *, retry: RetryPolicy = RetryPolicy()) -> int:
    """Insert alerts (``RatingResult.alerts``, plus origin columns) into ``alerts``.

    Examples
    --------
    >>> insert_alerts(connect(Settings()), result.alerts)  # doctest: +SKIP
    8
    """
    return insert(client, ALERTS, frame, retry=retry)


def insert_billing_events(client: Client, frame: pl.DataFrame, *, retry: RetryPolicy = RetryPolicy()) -> int:
    """Insert ledger events into ``billing_events`` (copies collapse by event id), and the
    documents issued among them into ``invoices`` and ``invoice_lines`` (issue 24)."""
    if "document" in frame.columns:
        documents = [text for text in frame.get_column("document").to_list() if text]
        if documents:
            invoices, lines = invoice_frames(documents, frame.filter(pl.col("document") != "").get_column("event_id"))
            insert(client, INVOICES, invoices, retry=retry)
            insert(client, INVOICE_LINES, lines, retry=retry)
    return insert(client, BILLING_EVENTS, frame, retry=retry)


def invoice_frames(documents: list[str], event_ids: Iterable[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The ``invoices`` and ``invoice_lines`` rows of issued documents (their JSON, as
    their events carry them)."""
    heads: list[dict[str, object]] = []
    rows: list[dict[str, object]] = []
    for text, event_id in zip(documents, event_ids, strict=True):
        document = InvoiceDocument.model_validate_json(text)
        issued = document.issued_at
        assert issued is not None and document.invoice_no is not None
        common = {"invoice_no": document.invoice_no, "seller_id": document.seller.id, "kind": document.kind,
                  "account_id": document.account_id, "month": document.month, "issued_day": issued.date()}
        heads.append({
            **common, "issued_time": issued.astimezone(timezone.utc), "corrects": document.corrects or "",
            "corrects_month": document.corrects_month or "", "gross": document.totals.gross,
            "tax": document.totals.tax, "net": document.totals.net, "line_count": len(document.lines),
            "event_id": event_id,
        })
        for number, line in enumerate(document.lines, start=1):
            rows.append({
                **common, "line": number, "line_kind": line.kind, "item": line.item, "charge_month": line.month,
                "description": line.description, "quantity": line.quantity, "seconds": line.seconds,
                "category": line.category, "rate": str(line.rate), "gross": line.gross, "tax": line.tax,
                "net": line.net,
            })
    return pl.DataFrame(heads, schema=INVOICES.schema), pl.DataFrame(rows, schema=INVOICE_LINES.schema)


def insert_balances(client: Client, frame: pl.DataFrame, *, retry: RetryPolicy = RetryPolicy()) -> int:
    """Insert balance rows into ``account_balances`` (the highest ``version`` wins)."""
    return insert(client, BALANCES, frame, retry=retry)


def insert(
    client: Client, table: Table, frame: pl.DataFrame, *, retry: RetryPolicy = RetryPolicy()
) -> int:
    """Insert ``frame`` into ``table`` with columnar numpy inserts; the rows sent.

    ``client`` must have ``use_numpy`` on (see :func:`connect`). From a
    :class:`SinkClient`, a frame of :data:`PARALLEL_MIN_ROWS` rows or more is sent in two
    halves at once, the second over :meth:`SinkClient.sibling`.

    Raises
    ------
    ValueError
        A column of ``table.schema`` is missing, has another type that does not cast, or
        holds nulls where the table has none.
    ClickHouseUnavailable
        See :func:`with_retry`.
    """
    if frame.height == 0:
        return 0
    if isinstance(client, SinkClient) and frame.height >= PARALLEL_MIN_ROWS:
        half = (frame.height + 1) // 2
        with ThreadPoolExecutor(max_workers=1) as pool:
            second = pool.submit(_insert_once, client.sibling(), table, frame.slice(half), retry)
            _insert_once(client, table, frame.slice(0, half), retry)
            second.result()
    else:
        _insert_once(client, table, frame, retry)
    return frame.height


def _insert_once(client: Client, table: Table, frame: pl.DataFrame, retry: RetryPolicy) -> None:
    names, arrays = table_columns(table, frame)
    query = f"INSERT INTO {table.name} ({', '.join(f'`{name}`' for name in names)}) VALUES"
    # The server gathers the blocks it receives up to this many rows before writing.
    block_rows = {"min_insert_block_size_rows": client.client_settings["insert_block_size"]}
    with_retry(
        client,
        lambda: client.execute(query, arrays, columnar=True, settings=block_rows),
        what=f"insert of {frame.height:,} rows into {table.name}",
        policy=retry,
    )


def table_columns(table: Table, frame: pl.DataFrame) -> tuple[list[str], list[np.ndarray]]:
    """The ClickHouse column names of ``table`` and their numpy arrays for ``frame``.

    Raises
    ------
    ValueError
        A column of ``table.schema`` is missing, has a type that does not cast, holds a
        null where the table cannot store one, or holds the value that stands for null.
    """
    missing = [name for name in table.schema if name not in frame.columns]
    if missing:
        raise ValueError(
            f"{table.name}: the frame lacks the column(s) {', '.join(missing)} "
            f"(expected the columns of rating.RatingResult: {', '.join(table.schema)})"
        )
    wanted = {**table.schema, **{n: t for n, t in table.optional.items() if n in frame.columns}}
    try:
        # Strict: a value out of the column's range fails here rather than wrap in numpy.
        typed = frame.select(pl.col(name).cast(dtype, strict=True) for name, dtype in wanted.items())
    except pl.exceptions.PolarsError as error:
        raise ValueError(f"{table.name}: a column does not have the expected type: {error}") from None
    taken = [name for name, value in table.absent.items() if (typed.get_column(name) == value).any()]
    if taken:
        raise ValueError(
            f"{table.name}: {', '.join(f'{n}={table.absent[n]!r}' for n in taken)} occurs as a value, "
            "but the table stores that value for 'does not apply' (null)"
        )
    typed = typed.with_columns(
        # Optional columns are ours to fill; so are the nulls stored as a value.
        *[pl.col(name).fill_null(_fill_value(wanted[name])) for name in wanted if name in table.optional],
        *[pl.col(name).fill_null(value) for name, value in table.absent.items()],
    )
    counts = typed.null_count().row(0, named=True)
    nulls = [name for name in table.schema if counts[name] and name not in table.nullable]
    if nulls:
        raise ValueError(f"{table.name}: null values in {', '.join(nulls)}, which cannot be null")

    names: list[str] = []
    arrays: list[np.ndarray] = []
    for name, series in zip(wanted, typed.get_columns(), strict=True):
        if name in table.micros:
            micros = series.dt.epoch("us")
            names += [name, table.micros[name]]
            # DateTime holds 1970-2106: out of it, the strict cast fails and says so.
            arrays += [
                (micros // 1_000_000).cast(pl.UInt32, strict=True).to_numpy(),
                (micros % 1_000_000).cast(pl.UInt32).to_numpy(),
            ]
        else:
            names.append(name)
            arrays.append(_numpy(series))
    return names, arrays


def _numpy(series: pl.Series) -> np.ndarray:
    """A column as clickhouse-driver's numpy path takes it (None marks a null)."""
    if series.dtype == pl.Boolean:
        return series.cast(pl.UInt8).to_numpy()
    if series.dtype == pl.String:
        return ch_wire.encode_strings(series)
    if series.null_count():
        # to_numpy would give floats with NaN: not exact for money beyond 2**53.
        values = series.fill_null(0).to_numpy().astype(object)
        values[series.is_null().to_numpy()] = None
        return values
    return series.to_numpy()


def _fill_value(dtype: pl.DataType) -> object:
    return "" if dtype == pl.String else (0 if dtype.is_unsigned_integer() else -1)


def _source_from_kafka_position(frame: pl.DataFrame) -> pl.DataFrame:
    """``source`` = ``topic[partition]@offset`` where no file is named but an offset is."""

    def given(name: str, default: object) -> pl.Expr:
        return pl.col(name).fill_null(default) if name in frame.columns else pl.lit(default)

    named = pl.format("{}[{}]@{}", given("topic", ""), given("partition", -1), pl.col("offset"))
    no_file = given("source", "") == ""
    return frame.with_columns(
        source=pl.when(no_file & (pl.col("offset") >= 0)).then(named).otherwise(given("source", ""))
    )


def _address(client: Client) -> str:
    return ",".join(f"{host}:{port}" for host, port in client.connection.hosts)


def _first_line(error: BaseException) -> str:
    # ClickHouse appends the server's stack trace to its messages: not for people.
    text = str(error).split("Stack trace:")[0].strip() or type(error).__name__
    return text.splitlines()[0]
