"""Route raw CDR lines to their accounts: spec 4 steps 1-2 at ingest, then chunks per account.

Pure (frames in, frames out). Ingest judges the two steps that need no account state,
with the engine's own functions (``rating.fields``) and in the spec's order: a malformed
line is rejected ``malformed`` whatever its number, then a line whose ``called`` number
belongs to no account is rejected ``unknown_number``. Every other line goes to its
account's partition, where the worker runs steps 3 on (duplicates, times, rates) in log
order. Rejections carry the same columns and words as the engine's
(``rating.engine._rejections``): ``line, cdr_id, reason, detail, account_id`` plus the
``source`` file and the ``ingest_id``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import polars as pl

from rating.fields import malformed_detail, malformed_flag, with_typed_fields
from rating.ownership import owner_at
from schemas.cdr_csv import records_only
from schemas.columns import CDR_COLUMNS
from schemas.messages import CDR_CHUNK_LINES, OPTIONAL_CHUNK_COLUMNS

#: Columns of a rejection row, as the engine's rejections (plus where the line came from).
REJECTION_SCHEMA: Final[dict[str, pl.DataType]] = {
    "line": pl.Int64(),
    "cdr_id": pl.String(),
    "reason": pl.String(),
    "detail": pl.String(),
    "account_id": pl.String(),
    "source": pl.String(),
    "ingest_id": pl.String(),
}
#: Columns of an accepted line: what a ``cdr.raw`` chunk carries, plus its account.
ACCEPTED_COLUMNS: Final[tuple[str, ...]] = ("line", *CDR_COLUMNS, "account_id")


@dataclass(frozen=True)
class Routed:
    """One raw batch split by spec 4 steps 1-2.

    Attributes
    ----------
    accepted
        ``line``, the 12 CDR columns (as read), those of ``OPTIONAL_CHUNK_COLUMNS`` the
        batch has, and ``account_id``, in file order.
    rejected
        Rows of :data:`REJECTION_SCHEMA`, in file order.
    rejected_keys
        The ``cdr.rejected`` message key of each rejected row: the called number of an
        ``unknown_number`` line (schemas.topics: keyed by the called number when no
        account is known), empty for a ``malformed`` line, whose fields are not trusted.
    """

    accepted: pl.DataFrame
    rejected: pl.DataFrame
    rejected_keys: pl.Series


def route(batch: pl.DataFrame, account_of_number: Mapping[str, str], *, source: str, ingest_id: str) -> Routed:
    """Judge spec 4 steps 1-2 on a raw batch (``schemas.cdr_csv.parse_chunk``).

    Examples
    --------
    >>> from schemas.cdr_csv import parse_csv
    >>> batch = parse_csv(open("tests/vectors/basic/cdrs.csv", "rb").read())
    >>> routed = route(batch, {"4008001234": "A001"}, source="cdrs.csv", ingest_id="i1")
    >>> routed.accepted.select("line", "account_id").row(0)
    (2, 'A001')
    >>> routed.rejected.filter(pl.col("line") == 43).select("reason", "source").row(0)
    ('malformed', 'cdrs.csv')
    """
    batch = records_only(batch)
    numbers = pl.DataFrame(
        {"called": list(account_of_number), "account_id": list(account_of_number.values())},
        schema={"called": pl.String, "account_id": pl.String},
    )
    judged = with_typed_fields(batch).with_columns(
        malformed=malformed_flag(),
        malformed_before_account=malformed_flag(before_account=True),
        account_id=pl.col("called").replace_strict(
            numbers.get_column("called"), numbers.get_column("account_id"), default=None, return_dtype=pl.String
        ),
    )
    owners = getattr(account_of_number, "owners", None)  # rating.ownership.Routing (issue 25)
    if owners is not None and owners.height:
        # A transferred number's call goes to the account that held it at its charge time.
        held = owner_at(judged.select("called", pl.coalesce("answer", "start").alias("charge")), owners)
        judged = judged.with_columns(
            held.get_column("owner").zip_with(held.get_column("owned"), judged.get_column("account_id")).alias("account_id")
        )
    # The engine's order (rating.engine._judge): an answering side that cannot be placed
    # is judged after the called number.
    reason = (
        pl.when(pl.col("malformed_before_account"))
        .then(pl.lit("malformed"))
        .when(pl.col("account_id").is_null())
        .then(pl.lit("unknown_number"))
        .when(pl.col("malformed"))
        .then(pl.lit("malformed"))
    )
    judged = judged.with_columns(reason=reason)
    optional = [name for name in OPTIONAL_CHUNK_COLUMNS if name in batch.columns]
    accepted = judged.filter(pl.col("reason").is_null()).select(*ACCEPTED_COLUMNS[:-1], *optional, "account_id")
    # Rechunked: polars 2.1 panics in pl.format over a string column holding an empty
    # chunk, which a filter can leave (few rows here: cheap).
    rejected = judged.filter(pl.col("reason").is_not_null()).rechunk()
    keys = rejected.select(
        pl.when(pl.col("reason") == "unknown_number").then(pl.col("called")).otherwise(pl.lit("")).fill_null("")
    ).to_series()
    rejected = rejected.select(
        "line",
        pl.col("cdr_id").fill_null(""),
        "reason",
        pl.when(pl.col("reason") == "malformed")
        .then(malformed_detail())
        # The engine's words for step 2 (rating.engine._rejections).
        .otherwise(pl.concat_str(pl.lit("called number "), pl.col("called").fill_null(""), pl.lit(" belongs to no account")))
        .alias("detail"),
        # Neither step knows an account: a malformed line's number is not trusted.
        pl.lit(None, dtype=pl.String).alias("account_id"),
        pl.lit(source, dtype=pl.String).alias("source"),
        pl.lit(ingest_id, dtype=pl.String).alias("ingest_id"),
    )
    return Routed(accepted=accepted, rejected=rejected.cast(REJECTION_SCHEMA), rejected_keys=keys.alias("key"))


def rejection_groups(routed: Routed, limit: int = CDR_CHUNK_LINES) -> Iterator[tuple[bytes, pl.DataFrame]]:
    """(message key, rows) for the ``cdr.rejected`` topic, at most ``limit`` rows each,
    in file order within a key.

    Examples
    --------
    >>> rows = pl.DataFrame({"line": [3, 4, 5]})
    >>> routed = Routed(rows.clear(), rows, pl.Series(["", "4001", "4001"]))
    >>> [(key, part.get_column("line").to_list()) for key, part in rejection_groups(routed)]
    [(b'', [3]), (b'4001', [4, 5])]
    """
    keyed = routed.rejected.with_columns(routed.rejected_keys.alias("_key"))
    for (key,), part in keyed.partition_by("_key", maintain_order=True, as_dict=True).items():
        part = part.drop("_key")
        for offset in range(0, part.height, limit):
            yield key.encode(), part.slice(offset, limit)


class AccountChunker:
    """Cuts accepted lines into chunks of one account's lines, in file order.

    Lines are held back until an account has ``limit`` of them (or :meth:`flush` at the end
    of a file), so a file read in many pieces still makes full chunks: with 2k accounts a
    200k-line file becomes ~2k messages of ~100 lines, not one per account and piece.
    Whatever is held is let go once more than ``max_held`` lines wait.

    Examples
    --------
    >>> chunker = AccountChunker(limit=2)
    >>> frame = pl.DataFrame({"line": [2, 3, 4], "account_id": ["A", "B", "A"]})
    >>> [(a, c.get_column("line").to_list()) for a, c in chunker.add(frame)]
    [('A', [2, 4])]
    >>> [(a, c.get_column("line").to_list()) for a, c in chunker.flush()]
    [('B', [3])]
    """

    def __init__(self, limit: int = CDR_CHUNK_LINES, max_held: int = 500_000):
        if limit < 1:
            raise ValueError(f"a chunk holds at least one line, got limit={limit}")
        self.limit = limit
        self.max_held = max_held
        self._held: pl.DataFrame | None = None

    @property
    def held(self) -> int:
        """Lines waiting for their account's chunk to fill."""
        return 0 if self._held is None else self._held.height

    def add(self, accepted: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
        """The full chunks that ``accepted`` (after what is held) completes."""
        frame = accepted if self._held is None else pl.concat([self._held, accepted], how="vertical_relaxed")
        self._held = None
        full: list[tuple[str, pl.DataFrame]] = []
        rest: list[pl.DataFrame] = []
        for account, lines in self._by_account(frame):
            whole = lines.height - lines.height % self.limit
            full.extend((account, lines.slice(offset, self.limit)) for offset in range(0, whole, self.limit))
            if whole < lines.height:
                rest.append(lines.slice(whole))
        if rest:
            self._held = pl.concat(rest)
        if self.held > self.max_held:
            full.extend(self.flush())
        return full

    def flush(self) -> list[tuple[str, pl.DataFrame]]:
        """Every held line, one chunk per account (the end of a file)."""
        held, self._held = self._held, None
        if held is None:
            return []
        return [(account, lines) for account, lines in self._by_account(held)]

    @staticmethod
    def _by_account(frame: pl.DataFrame) -> Iterator[tuple[str, pl.DataFrame]]:
        """Each account's lines in file order (accounts by id): one stable sort, then
        zero-copy slices of its runs, far cheaper than a frame per group."""
        if frame.height == 0:
            return
        ordered = frame.sort("account_id", maintain_order=True)
        offset = 0
        for length, account in ordered.get_column("account_id").rle().struct.unnest().iter_rows():
            yield account, ordered.slice(offset, length)
            offset += length
