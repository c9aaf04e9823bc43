"""The pure rating engine: ``rate(batch, state, catalog) -> RatingResult`` (no I/O)."""

from rating.catalog import Catalog
from rating.engine import PreparedBatch, RatingResult, prepare, rate
from rating.state import RatingState

__all__ = ["Catalog", "PreparedBatch", "RatingResult", "RatingState", "prepare", "rate"]
