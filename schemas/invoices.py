"""Invoices and credit notes (issue 24): the tax table, what a ledger command asks for,
and the document the ledger issues.

A document is frozen when it is issued: the ``InvoiceIssued`` (``CreditNoteIssued``,
``DebitNoteIssued``) event on the account's log carries it whole (lines, rates, tax,
totals), so asking again, a rebuild of ClickHouse or a later change of the tax file
shows the same document. Money is integer units of 0.0001 CNY like everywhere; an
invoice's amounts are whole fen (multiples of 100 units), shown with 2 decimals
(:func:`format_fen`). The rules are in docs/rules.md ("Invoices and VAT").
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

#: The VAT categories of telecom services in China (财税〔2014〕43号).
TaxCategory = Literal["basic_telecom", "value_added_telecom"]
CATEGORIES: Final[tuple[str, ...]] = ("basic_telecom", "value_added_telecom")
DocumentKind = Literal["invoice", "credit_note", "debit_note"]
#: units of 0.0001 CNY in one fen (0.01 CNY)
UNITS_PER_FEN: Final[int] = 100


def _rate(value: object) -> Decimal:
    # Like money: a decimal string; a TOML float is refused (binary floats near tax are a bug).
    if isinstance(value, Decimal):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f'a rate must be a decimal string like "0.09", got {value!r}') from None
    else:
        raise ValueError(f'a rate must be a decimal string like "0.09", got {value!r}')
    if not parsed.is_finite() or not Decimal(0) <= parsed < Decimal(1):
        raise ValueError(f"a rate must be at least 0 and below 1 (0.09 is 9%), got {value!r}")
    if parsed != parsed.quantize(Decimal("0.0001")):
        raise ValueError(f"a rate has at most 4 decimals, got {value!r}")
    return parsed.quantize(Decimal("0.0001")).normalize() if parsed else Decimal(0)


#: A VAT rate as a fraction (0.09 is 9%), from a decimal string.
Rate = Annotated[Decimal, BeforeValidator(_rate)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Seller(_Model):
    """Who issues the invoices; its ``id`` names its numbering sequence."""

    id: Annotated[str, Field(min_length=1, pattern=r"^\S+$")]
    name: Annotated[str, Field(min_length=1)]
    tax_id: str = ""
    address: str = ""
    invoice_prefix: Annotated[str, Field(pattern=r"^[A-Z0-9-]{0,12}$")] = ""

    def number(self, sequence: int) -> str:
        """The document number of a position in the sequence (from 1).

        >>> Seller(id="s", name="S", invoice_prefix="CDF").number(12)
        'CDF00000012'
        """
        return f"{self.invoice_prefix}{sequence:08d}"


class RatePeriod(_Model):
    """A rate from the first day of a month until the next period of its category."""

    effective_from: date
    rate: Rate

    @field_validator("effective_from")
    @classmethod
    def _first_of_a_month(cls, day: date) -> date:
        # Every VAT change so far took effect on a month's first day; a month then has one
        # rate per category, which is what an invoice of the month is taxed at.
        if day.day != 1:
            raise ValueError(f"a rate takes effect on the first day of a month, got {day.isoformat()}")
        return day


class TaxCategoryRates(_Model):
    name: str = ""
    rates: Annotated[list[RatePeriod], Field(min_length=1)]

    @field_validator("rates")
    @classmethod
    def _increasing(cls, rates: list[RatePeriod]) -> list[RatePeriod]:
        for before, after in zip(rates, rates[1:]):
            if after.effective_from <= before.effective_from:
                raise ValueError(
                    f"rates must be in date order: {after.effective_from.isoformat()} follows "
                    f"{before.effective_from.isoformat()}"
                )
        return rates


class TaxTable(_Model):
    """The seller and the rates of each category over time (``tariffs/tax_rates.toml``).

    Examples
    --------
    >>> table = TaxTable(seller={"id": "s", "name": "S"}, categories={
    ...     "basic_telecom": {"rates": [{"effective_from": "2018-05-01", "rate": "0.10"},
    ...                                 {"effective_from": "2019-04-01", "rate": "0.09"}]},
    ...     "value_added_telecom": {"rates": [{"effective_from": "2014-06-01", "rate": "0.06"}]}})
    >>> table.rate_at("basic_telecom", "2019-03"), table.rate_at("basic_telecom", "2019-04")
    (Decimal('0.1'), Decimal('0.09'))
    """

    seller: Seller
    categories: dict[TaxCategory, TaxCategoryRates]

    @model_validator(mode="after")
    def _every_category(self) -> TaxTable:
        missing = [name for name in CATEGORIES if name not in self.categories]
        if missing:
            raise ValueError(f"categories: every category needs its rates; missing {', '.join(missing)}")
        return self

    def rate_at(self, category: str, month: str) -> Decimal:
        """The rate of ``category`` in the month ``YYYY-MM``.

        Raises ``ValueError`` for a month before the category's first rate.
        """
        first = date(int(month[:4]), int(month[5:7]), 1)
        found = None
        for period in self.categories[category].rates:  # type: ignore[index]
            if period.effective_from <= first:
                found = period.rate
        if found is None:
            raise ValueError(f"no VAT rate of {category} for {month} (the tax table starts later)")
        return found


class InvoiceRequest(_Model):
    """What an ``invoice`` ledger command asks the fold to issue (schemas.ledger).

    ``kind`` ``invoice``: the invoice of ``month`` (it takes every charge of that month and
    earlier ones not invoiced yet); ``note``: the credit (or debit) note of what the
    command at ``source_offset`` of the account's log changed in invoice ``corrects``.
    ``sequence`` is the document's position in the seller's numbering (from 1).
    """

    kind: Literal["invoice", "note"]
    sequence: Annotated[int, Field(ge=1)]
    month: str = ""
    source_offset: int = -1
    corrects: str = ""
    table: TaxTable

    @property
    def number(self) -> str:
        return self.table.seller.number(self.sequence)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> InvoiceRequest:
        if self.kind == "invoice" and not is_month(self.month):
            raise ValueError(f"an invoice needs its month YYYY-MM, got {self.month!r}")
        if self.kind == "note" and (self.source_offset < 0 or not self.corrects):
            raise ValueError("a note needs the log offset of what it corrects and the invoice it corrects")
        return self


def document_id(account_id: str, request: InvoiceRequest | None = None, *, month: str = "",
                source_offset: int = -1, corrects: str = "") -> str:
    """The deterministic id of a document: what its number is given to, once.

    >>> document_id("A1", month="2026-03"), document_id("A1", source_offset=42, corrects="CDF00000001")
    ('invoice/A1/2026-03', 'note/A1/42/CDF00000001')
    """
    if request is not None:
        month, source_offset, corrects = request.month, request.source_offset, request.corrects
        if request.kind == "invoice":
            return f"invoice/{account_id}/{month}"
        return f"note/{account_id}/{source_offset}/{corrects}"
    if month:
        return f"invoice/{account_id}/{month}"
    return f"note/{account_id}/{source_offset}/{corrects}"


class InvoiceLine(_Model):
    """One line of a document: a charge kind of one month, with its VAT.

    ``gross`` includes the tax (what the customer pays), ``net = gross - tax``; a line
    that gives money back (a correction, an SLA credit, package credit refunded) is
    negative. ``quantity``: calls of a call line, else the charges added up; ``seconds``:
    billable seconds of a call line.
    """

    kind: str
    item: str = ""
    month: str
    description: str
    quantity: int = 0
    seconds: int = 0
    category: TaxCategory
    rate: Rate
    gross: int
    tax: int
    net: int


class Totals(_Model):
    gross: int = 0
    tax: int = 0
    net: int = 0


class VatLine(_Model):
    """The document's lines of one rate, added up (the VAT summary)."""

    rate: Rate
    gross: int
    tax: int
    net: int


class Buyer(_Model):
    account_id: str
    plan_id: str = ""
    numbers: list[str] = []


class InvoiceDocument(_Model):
    """An invoice, a credit note or a debit note, as issued (or a draft: no number)."""

    invoice_no: str | None
    kind: DocumentKind
    status: Literal["issued", "draft"]
    account_id: str
    #: the invoice's month; a note's: the month it was issued in
    month: str
    issued_at: AwareDatetime | None = None
    #: a note: the invoice it corrects, and that invoice's month
    corrects: str | None = None
    corrects_month: str | None = None
    seller: Seller
    buyer: Buyer
    lines: list[InvoiceLine]
    totals: Totals
    vat: list[VatLine]
    #: what the document's months did that carries no VAT here (units): package credit the
    #: calls and floors drew on, package credit forfeited (docs/rules.md)
    memo: dict[str, int] = {}


def format_fen(units: int) -> str:
    """Units of a whole number of fen as CNY with 2 decimals.

    >>> format_fen(1_305_000), format_fen(-6000), format_fen(0)
    ('130.50', '-0.60', '0.00')
    """
    sign = "-" if units < 0 else ""
    fen = abs(units) // UNITS_PER_FEN
    return f"{sign}{fen // 100}.{fen % 100:02d}"


def format_rate(rate: Decimal) -> str:
    """A rate as a percentage: ``9%``, ``6%``, ``1.5%``.

    >>> format_rate(Decimal("0.09")), format_rate(Decimal("0.015"))
    ('9%', '1.5%')
    """
    return f"{(rate * 100).normalize():f}%"


def document_json(document: InvoiceDocument) -> dict[str, Any]:
    """The document for people and scripts: money as CNY strings with 2 decimals, rates
    as decimal strings (``"0.09"``)."""
    value = document.model_dump(mode="json")
    for line in value["lines"]:
        for key in ("gross", "tax", "net"):
            line[key] = format_fen(line[key])
    for line in value["vat"]:
        for key in ("gross", "tax", "net"):
            line[key] = format_fen(line[key])
    value["totals"] = {key: format_fen(amount) for key, amount in value["totals"].items()}
    value["memo"] = {key: format_fen(round_to_fen(amount)) for key, amount in value["memo"].items()}
    value["draft"] = document.status == "draft"
    return value


def round_to_fen(units: int) -> int:
    """Units rounded half up (away from zero) to whole fen.

    >>> round_to_fen(1_234_550), round_to_fen(-1_234_550), round_to_fen(49)
    (1234600, -1234600, 0)
    """
    sign = -1 if units < 0 else 1
    return sign * ((abs(units) + UNITS_PER_FEN // 2) // UNITS_PER_FEN) * UNITS_PER_FEN


def is_month(text: str) -> bool:
    """Whether ``text`` is a month ``YYYY-MM``.

    >>> is_month("2026-03"), is_month("2026-3"), is_month("2026-13")
    (True, False, False)
    """
    try:
        datetime.strptime(text, "%Y-%m")
    except ValueError:
        return False
    return len(text) == 7
