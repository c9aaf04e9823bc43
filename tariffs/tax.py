"""The tax file: ``tariffs/tax_rates.toml`` (issue 24), read and validated like plans.

It names the seller (whose numbering sequence the invoices take) and each VAT category's
rates over time (``schemas.invoices.TaxTable``). Every problem is reported together,
naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from schemas.invoices import TaxTable
from tariffs.errors import TariffError
from tariffs.loader import _problems, _read_toml

#: The file shipped with cdrflow (the rates of China since 2014).
SHIPPED_TAX_RATES = Path(__file__).with_name("tax_rates.toml")


def load_tax_rates(path: str | Path | None = None) -> TaxTable:
    """The tax table of ``path`` (default: the shipped file).

    Raises ``TariffError`` naming the file and the field of each problem.

    Examples
    --------
    >>> table = load_tax_rates()
    >>> str(table.rate_at("basic_telecom", "2026-03")), str(table.rate_at("value_added_telecom", "2026-03"))
    ('0.09', '0.06')
    >>> str(table.rate_at("basic_telecom", "2018-06")), str(table.rate_at("basic_telecom", "2015-01"))
    ('0.1', '0.11')
    """
    path = Path(path) if path is not None else SHIPPED_TAX_RATES
    raw = _read_toml(path)
    try:
        return TaxTable.model_validate(raw)
    except ValidationError as exc:
        raise TariffError(_problems(path, exc, raw)) from None
