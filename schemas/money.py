"""Money at the edge: decimal strings outside, integer units of 0.0001 CNY inside.

spec/rating.md 1: money is held as integer units of 0.0001 CNY everywhere inside the
system; decimal strings with at most 4 decimals are the only external form.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import polars as pl

UNITS_PER_CNY = 10_000
_DECIMAL_STRING = re.compile(r"^-?\d+(\.\d+)?$")
_ONE_UNIT = Decimal("0.0001")


def parse_money(text: str, *, signed: bool = False) -> int:
    """Parse a decimal string such as ``"0.15"`` into integer units of 0.0001 CNY.

    Parameters
    ----------
    text
        A decimal string with at most 4 decimals.
    signed
        Allow a leading minus sign (a balance may be negative; a price may not).

    Examples
    --------
    >>> parse_money("0.15")
    1500
    >>> parse_money("-3.5", signed=True)
    -35000
    """
    if not isinstance(text, str):
        raise ValueError(f'money must be a decimal string like "0.15", got {text!r}')
    stripped = text.strip()
    if not _DECIMAL_STRING.match(stripped):
        raise ValueError(f'money must be a decimal string like "0.15", got {text!r}')
    try:
        value = Decimal(stripped)
    except InvalidOperation as exc:  # pragma: no cover - the pattern above already rules it out
        raise ValueError(f"not a decimal number: {text!r}") from exc
    if value < 0 and not signed:
        raise ValueError(f"money must not be negative, got {text!r}")
    units = value * UNITS_PER_CNY
    if units != units.to_integral_value():
        raise ValueError(f"money has more than 4 decimals: {text!r}")
    return int(units)


def format_money(units: int) -> str:
    """Format integer units as a decimal string with exactly 4 decimals.

    Examples
    --------
    >>> format_money(1500)
    '0.1500'
    >>> format_money(-10000)
    '-1.0000'
    """
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), UNITS_PER_CNY)
    return f"{sign}{whole}.{frac:04d}"


def money_expr(column: str | pl.Expr) -> pl.Expr:
    """Polars expression turning an Int64 units column into an exact Decimal(38, 4).

    Written to CSV it reads like :func:`format_money` (``0.1500``): decimal arithmetic on
    integers, no float on the way.

    Examples
    --------
    >>> frame = pl.DataFrame({"amount": [1500, -10000, 0]}).select(money_expr("amount"))
    >>> frame["amount"].cast(pl.String).to_list()
    ['0.1500', '-1.0000', '0.0000']
    """
    units = pl.col(column) if isinstance(column, str) else column
    money = units.cast(pl.Decimal(38, 0)) * pl.lit(_ONE_UNIT, dtype=pl.Decimal(38, 4))
    return money.alias(column if isinstance(column, str) else "money")
