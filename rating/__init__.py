"""The pure rating engine: ``rate(batch, state, catalog) -> RatingResult`` (no I/O)."""

from rating.catalog import Catalog
from rating.engine import RatingResult, rate
from rating.state import RatingState

__all__ = ["Catalog", "RatingResult", "RatingState", "rate"]
