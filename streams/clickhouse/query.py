"""Reading ClickHouse: a client for the few-row queries of commands, and a table read back
as the frame the sink was given."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
from clickhouse_driver import Client

from streams.clickhouse.tables import Table
from streams.settings import Settings


def query_client(settings: Settings) -> Client:
    """A plain (non-numpy) client for the few-row queries of commands."""
    return Client(**settings.clickhouse_params(), connect_timeout=5, send_receive_timeout=60)


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
