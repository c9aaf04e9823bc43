"""Write what ClickHouse holds as the files of the offline ``rate`` command (spec 6).

``rated.csv``, ``rejected.csv`` and ``alerts.csv`` come out in the format ``cdrflow rate``
writes (the same writers, :mod:`streams.offline.rate`), so that ``cdrflow compare EXPECTED
OUT`` compares the streaming path with the offline one. Rows are read with ``FINAL`` (a
replayed row counts once) and ordered by file and line, so a run over one file gives
``rated.csv`` and ``alerts.csv`` identical to the offline files. ``rejected.csv`` also
names each line's ``file``, beside ``line``.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from clickhouse_driver import Client

from schemas.columns import ALERT_KINDS
from schemas.output_files import CSV_DATETIME_FORMAT, alerts_csv_frame, rated_csv_frame, rejected_csv_frame
from streams.cdr_files import check_outputs, replace_output
from streams.clickhouse.query import read_table
from streams.clickhouse.tables import ALERTS, RATED, REJECTED

#: The files :func:`export` writes, in the order it writes them.
EXPORT_FILES = ("rated.csv", "rejected.csv", "alerts.csv")

# Where a row was read: file, then line; ingest_id parts a file ingested twice (--force).
_FILE_ORDER = ("source", "line", "ingest_id")


def export(client: Client, out: Path) -> dict[str, int]:
    """Write ``out/rated.csv``, ``rejected.csv`` and ``alerts.csv`` from ClickHouse.

    Parameters
    ----------
    client
        A client of the database holding ``rated_calls``, ``rejected_cdrs`` and
        ``alerts`` (``streams.clickhouse.insert.connect``).
    out
        The output folder, created if needed; the three files in it are replaced.

    Returns
    -------
    dict
        Rows written per file: ``{"rated": ..., "rejected": ..., "alerts": ...}``.

    Examples
    --------
    >>> from streams.settings import Settings
    >>> from streams.clickhouse.insert import connect
    >>> export(connect(Settings()), Path("/tmp/run"))  # doctest: +SKIP
    {'rated': 2702, 'rejected': 331, 'alerts': 38}
    """
    paths = {name: out / f"{name}.csv" for name in ("rated", "rejected", "alerts")}
    check_outputs(paths.values())  # raises CdrFileError before anything is written
    out.mkdir(parents=True, exist_ok=True)
    # credit_used, credit, caller_origin: the last explaining columns of rated.csv (empty
    # for rows rated before them).
    rated = read_table(
        client, RATED, order_by=(*_FILE_ORDER, "account_id", "cdr_id"), keep=("credit_used", "credit", "caller_origin")
    )
    # A line a correction rated (a late call of its period...) is a rated row now: its
    # rejection is left out (docs/rules.md "Corrections"). The key columns only: FINAL-safe.
    rejected = read_table(
        client, REJECTED, order_by=_FILE_ORDER, keep=("source",),
        where="(ingest_id, source, line) NOT IN (SELECT ingest_id, source, line FROM rated_calls WHERE correction_id != '')",
    )
    # spec 5: one call's alerts come in the order of ALERT_KINDS. An alert a correction
    # took back is cancelled in its last version: dropped after FINAL, not by a WHERE.
    kind_order = "indexOf(%(kinds)s, kind)"
    alerts = read_table(
        client, ALERTS, order_by=(*_FILE_ORDER, kind_order), params={"kinds": list(ALERT_KINDS)}, keep=("cancelled",)
    )
    alerts = alerts.filter(pl.col("cancelled") == 0).drop("cancelled")

    rejected_csv = rejected_csv_frame(rejected.rename({"source": "file"}))
    # The file beside the line: together they say where the rejected line is.
    rejected_csv = rejected_csv.select("file", "line", pl.exclude("file", "line"))
    frames = {
        "rated": rated_csv_frame(rated),
        "rejected": rejected_csv,
        "alerts": alerts_csv_frame(alerts),
    }
    for name, frame in frames.items():
        # Never a half-written file, never through a link.
        replace_output(paths[name], lambda handle, frame=frame: frame.write_csv(handle, datetime_format=CSV_DATETIME_FORMAT))
    return {name: frame.height for name, frame in frames.items()}
