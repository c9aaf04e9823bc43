"""Tariff plans and accounts: the TOML files, their models and their validation."""

from tariffs.errors import TariffError
from tariffs.loader import Tariffs, load_accounts, load_plans, load_tariffs
from tariffs.models import CALL_CLASSES, Account, CallClass, Plan, PlanVersion, Rate, Tier

__all__ = [
    "CALL_CLASSES",
    "Account",
    "CallClass",
    "Plan",
    "PlanVersion",
    "Rate",
    "TariffError",
    "Tariffs",
    "Tier",
    "load_accounts",
    "load_plans",
    "load_tariffs",
]
