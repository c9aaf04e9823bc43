"""The catalogue's own rules (issue 25): ``catalogue.toml`` beside the plans.

Rules of the operator rather than of a plan: the notice a tariff change must be published
with, and the two unusual-use alerts. Every field is optional; without the file every
default holds::

    notice_days = 30                 # a plan version takes effect >= 30 days after published_at
    unusual_spend_factor = "5"       # unusual_spend: a month's charges > 5 x the 3 months before (0: off)

    [unusual_calls]                  # unusual_calls: none unless this table is given
    count = 5                        # 5 counted calls ...
    window_minutes = 60              # ... within 60 minutes (in log order)
    classes = ["international"]      # which calls count (default: international)
    hours = ["00:00", "06:00"]       # local [start, end) of their charge time (default: all day)

docs/rules.md ("Unusual use", "Tariff notice") tells what each rule does.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Final

import rtoml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from tariffs.errors import TariffError
from tariffs.models import CallClass, ClockSeconds

CATALOGUE_FILE: Final[str] = "catalogue.toml"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UnusualCalls(_Model):
    """A burst of calls worth a person's look (toll fraud): ``count`` calls of ``classes``
    whose local charge time is within ``hours``, the ``count`` of them within
    ``window_minutes``."""

    count: Annotated[StrictInt, Field(ge=2, le=10_000)]
    window_minutes: Annotated[StrictInt, Field(gt=0, le=44_640)] = 60
    classes: Annotated[list[CallClass], Field(min_length=1)] = ["international"]
    hours: tuple[ClockSeconds, ClockSeconds] | None = None

    def counts_all_day(self) -> bool:
        return self.hours is None or self.hours[0] == self.hours[1]


class CatalogueRules(_Model):
    """What ``catalogue.toml`` says; every default when there is none."""

    notice_days: Annotated[StrictInt, Field(ge=0, le=3650)] = 30
    unusual_spend_factor: Annotated[Decimal, Field(ge=0, le=1000, decimal_places=2)] = Decimal(5)
    unusual_calls: UnusualCalls | None = None

    @field_validator("unusual_spend_factor", mode="before")
    @classmethod
    def _no_float(cls, value: object) -> object:
        # A factor like "2.5" is exact as a string; a TOML float is not read as one.
        if isinstance(value, float):
            raise ValueError(f'unusual_spend_factor must be an integer or a decimal string like "2.5", got {value!r}')
        return value

    @property
    def unusual_spend_percent(self) -> int:
        """The factor in hundredths (500 for 5): integer arithmetic for the rule."""
        return int(self.unusual_spend_factor * 100)

    def file_value(self) -> dict[str, object]:
        """The rules as ``catalogue.toml`` would write them (the ``plans`` topic's value)."""
        value: dict[str, object] = {
            "notice_days": self.notice_days,
            "unusual_spend_factor": str(self.unusual_spend_factor),
        }
        if self.unusual_calls is not None:
            calls = self.unusual_calls
            value["unusual_calls"] = {
                "count": calls.count,
                "window_minutes": calls.window_minutes,
                "classes": list(calls.classes),
                **({"hours": [_clock(calls.hours[0]), _clock(calls.hours[1])]} if calls.hours is not None else {}),
            }
        return value


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def load_catalogue_rules(plans_dir: str | Path) -> CatalogueRules:
    """The rules of ``catalogue.toml`` in ``plans_dir``; the defaults when there is none.

    >>> load_catalogue_rules("tests/vectors/basic/plans").notice_days
    30
    """
    path = Path(plans_dir) / CATALOGUE_FILE
    if not path.exists():
        return CatalogueRules()
    try:
        raw = rtoml.loads(path.read_text(encoding="utf-8"))
    except (rtoml.TomlParsingError, UnicodeDecodeError) as error:
        raise TariffError([f"{path}: not valid TOML: {error}"]) from None
    try:
        return CatalogueRules.model_validate(raw)
    except ValidationError as error:
        raise TariffError(
            [f"{path}: {' > '.join(map(str, e['loc'])) or '(file)'}: {e['msg'].removeprefix('Value error, ')}"
             for e in error.errors(include_url=False)]
        ) from None
