"""A correction on the account's log: calls rated again, as compensating facts (issue 15).

``cdrflow rerate --apply`` computes, for each account, the calls whose rating changes
when the months of a period are rated again with a corrected catalogue, and publishes
them on the account's ``cdr.raw`` partition as ledger commands of kind ``rerate``, each
carrying one :class:`Correction` part (up to ``CALLS_PER_PART`` calls). The worker folds
a part like any ledger command, in log order (docs/rules.md, "Corrections"):

- the balance moves by ``-(new_amount - old_amount)`` of each call, once, as one
  ``CallRerated`` ledger event per call (``<account>/CallRerated/<cdr_id>/<correction_id>``);
- the month records still within the account's horizon take the calls' allowance,
  charged-seconds and spend deltas, so later calls of the month tier and cap right;
- ``rows`` (the calls' new rated rows) land in ``rated_calls`` with a higher version,
  ``billed_rows`` (the versions they replace) in the history, ``alerts`` in ``alerts``.

Money is integer units of 0.0001 CNY. ``rows``, ``billed_rows`` and ``alerts`` are
column-wise frame values (``schemas.messages.frame_value``), typed by the sink's tables
when the worker reads them.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Calls per correction part (one ``cdr.raw`` message): a part with both rows of each call
#: is ~1 kB a call, so well under the 512 kB an output message may hold.
CALLS_PER_PART: Final[int] = 200
#: A part is cut further until its JSON is under this many bytes (long caller numbers...).
PART_MAX_BYTES: Final[int] = 256 * 1024

CorrectionId = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]


class CallChange(BaseModel):
    """What the ledger and the rating state need of one corrected call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cdr_id: str = Field(min_length=1)
    local_day: date
    call_class: Literal["local", "long_distance", "international"]
    #: what the call was billed (0: it was rejected, e.g. ``late``) and what it costs now
    old_amount: int
    new_amount: int
    allowance_delta_s: int = 0
    charged_delta_s: int = 0
    #: the 400 number called: its month usage moves too (floors per number, issue 23)
    called: str = ""

    @property
    def delta(self) -> int:
        """What the account owes more (+) or less (-) for the call."""
        return self.new_amount - self.old_amount

    @property
    def month(self) -> str:
        """The call's local month, ``YYYY-MM``."""
        return self.local_day.strftime("%Y-%m")


class DayChange(BaseModel):
    """A local day whose calls changed: whether its daily cap is reached after the correction."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    local_day: date
    cap_alerted: bool


class Correction(BaseModel):
    """One part of a correction of one account (the ``correction`` of a ``rerate`` command).

    Examples
    --------
    >>> call = CallChange(cdr_id="c1", local_day="2026-03-02", call_class="local", old_amount=3000,
    ...                   new_amount=2000)
    >>> part = Correction(correction_id="0123456789abcdef", based_on=41, period_from="2026-03-01",
    ...                   period_to="2026-03-31", calls=[call],
    ...                   rows={"v": 1, "rows": {"cdr_id": ["c1"], "amount": [2000]}})
    >>> call.delta, part.parts
    (-1000, 1)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    correction_id: CorrectionId
    part: int = Field(default=0, ge=0)
    parts: int = Field(default=1, ge=1)
    #: the last offset of the account's log the correction was computed from: a correction
    #: computed before another one was applied is refused (docs/rules.md)
    based_on: int
    period_from: date
    period_to: date
    calls: list[CallChange]
    days: list[DayChange] = []
    #: the calls' new rated rows, in the order of ``calls`` (a frame value)
    rows: dict[str, Any]
    #: the rows they replace that the history lacks (first-rating versions), a frame value
    billed_rows: dict[str, Any] | None = None
    #: alert rows raised, changed or cancelled (``cancelled``) by the correction
    alerts: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Correction:
        if self.part >= self.parts:
            raise ValueError(f"part {self.part} of a correction of {self.parts} parts")
        if self.period_to < self.period_from:
            raise ValueError(f"period_to {self.period_to} is before period_from {self.period_from}")
        rows = self.rows.get("rows") if isinstance(self.rows, dict) else None
        ids = rows.get("cdr_id") if isinstance(rows, dict) else None
        if ids != [call.cdr_id for call in self.calls]:
            raise ValueError("rows must hold one new rated row per call, in the order of calls (by cdr_id)")
        return self
