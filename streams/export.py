"""Write what ClickHouse holds as the files of the offline ``rate`` command (spec 6).

``rated.csv``, ``rejected.csv`` and ``alerts.csv`` come out in the format ``cdrflow rate``
writes (the same writers, :mod:`streams.rate_files`), so that ``cdrflow compare EXPECTED
OUT`` compares the streaming path with the offline one. Rows are read with ``FINAL`` (a
replayed row counts once) and ordered by file and line, so a run over one file gives
``rated.csv`` and ``alerts.csv`` identical to the offline files. ``rejected.csv`` also
names each line's ``file``, beside ``line``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl
from clickhouse_driver import Client

from schemas.columns import ALERT_KINDS
from streams.rate_files import CSV_DATETIME_FORMAT, alerts_csv_frame, rated_csv_frame, rejected_csv_frame
from streams.sink_clickhouse import ALERTS, RATED, REJECTED, Table

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
        ``alerts`` (``streams.sink_clickhouse.connect``).
    out
        The output folder, created if needed; the three files in it are replaced.

    Returns
    -------
    dict
        Rows written per file: ``{"rated": ..., "rejected": ..., "alerts": ...}``.

    Examples
    --------
    >>> from streams.settings import Settings
    >>> from streams.sink_clickhouse import connect
    >>> export(connect(Settings()), Path("/tmp/run"))  # doctest: +SKIP
    {'rated': 2702, 'rejected': 331, 'alerts': 38}
    """
    out.mkdir(parents=True, exist_ok=True)
    rated = read_table(client, RATED, order_by=(*_FILE_ORDER, "account_id", "cdr_id"))
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
        path = out / f"{name}.csv"
        partial = path.with_name(f".{path.name}.partial")  # never a half-written file
        frame.write_csv(partial, datetime_format=CSV_DATETIME_FORMAT)
        partial.replace(path)
    return {name: frame.height for name, frame in frames.items()}


def read_table(
    client: Client,
    table: Table,
    *,
    order_by: Sequence[str],
    keep: Sequence[str] = (),
    params: dict[str, object] | None = None,
    where: str = "",
) -> pl.DataFrame:
    """The rows of ``table`` (``FINAL``) as the frame the sink was given, in order.

    ``order_by`` are SQL expressions, which may use ``%(name)s`` parameters of ``params``;
    ``where`` a condition on columns no newer version changes (with FINAL, docs/finance.md).

    The columns are ``table.schema`` with its dtypes (nulls back where the table stores
    a stand-in value, datetimes joined with their microseconds), then ``keep`` (optional
    columns such as ``source``) as the table holds them.
    """
    selected: list[str] = []
    for name in table.schema:
        if name in table.micros:
            selected += [f"toUInt32({name})", table.micros[name]]
        else:
            selected.append(f"`{name}`")
    selected += [f"`{name}`" for name in keep]
    columns = client.execute(
        f"SELECT {', '.join(selected)} FROM {table.name} FINAL {f'WHERE {where} ' if where else ''}"
        f"ORDER BY {', '.join(order_by)}",
        params,
        columnar=True,
    )
    values = iter(columns or [[]] * len(selected))  # no rows: no columns either
    series: list[pl.Series] = []
    for name, dtype in {**table.schema, **{name: table.optional[name] for name in keep}}.items():
        if name in table.micros:
            seconds = pl.Series(next(values), dtype=pl.Int64)
            micros = pl.Series(next(values), dtype=pl.Int64)
            instant = pl.from_epoch(seconds * 1_000_000 + micros, time_unit="us")
            series.append(instant.dt.replace_time_zone("UTC").cast(dtype).alias(name))
            continue
        data = next(values)
        if getattr(data, "dtype", None) == object:  # numpy's nullable columns: numbers and None
            data = data.tolist()
        series.append(pl.Series(name, data, dtype=dtype))
    return pl.DataFrame(series).with_columns(
        pl.when(pl.col(name) != value).then(pl.col(name)).alias(name) for name, value in table.absent.items()
    )

