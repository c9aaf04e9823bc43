"""Area code -> (city, province), from Google's numbering-plan data (``phonenumbers``).

China's fixed-line area codes (``010``, ``021``, ``0755``...) name a city; the geocoder of
the ``phonenumbers`` library (libphonenumber's data, kept up to date upstream) gives
"City, Province" in English for the area's numbers (just "City" for the four
municipalities, which are their own province). A caller area starting with ``+`` or
``00`` is international (spec 2.3): its city is empty and its province the country.

(Which area a *number* belongs to is ``schemas.numbering``'s job; this module only names
area codes, for the finance reports.)
"""

from __future__ import annotations

from functools import lru_cache

import phonenumbers
from phonenumbers import geocoder

#: What an unknown or empty area code is reported as.
UNKNOWN = ("", "unknown")
# A subscriber part that makes a full number of any Chinese area code: the geocoder looks
# up the number's prefix, so its exact digits do not matter.
_SUBSCRIBER = "62345678"


@lru_cache(maxsize=4096)
def area_names(area_code: str) -> tuple[str, str]:
    """The city and province of a caller area code, ``("", "unknown")`` when none is known.

    Examples
    --------
    >>> area_names("0755")
    ('Shenzhen', 'Guangdong')
    >>> area_names("010")
    ('Beijing', 'Beijing')
    >>> area_names("+44")
    ('', 'International: United Kingdom')
    >>> area_names("12")
    ('', 'unknown')
    """
    code = (area_code or "").strip()
    if code.startswith("+") or code.startswith("00"):
        return _country(code)
    if not code.startswith("0") or not code[1:].isdigit() or not 2 <= len(code) <= 4:
        return UNKNOWN
    try:
        number = phonenumbers.parse(f"+86{code[1:]}{_SUBSCRIBER}")
    except phonenumbers.NumberParseException:
        return UNKNOWN
    description = geocoder.description_for_valid_number(number, "en")
    if not description or description == "China":  # only the country: no such area
        return UNKNOWN
    city, _, province = description.partition(", ")
    return city, province or city


def _country(code: str) -> tuple[str, str]:
    digits = code[1:] if code.startswith("+") else code[2:]
    try:
        region = phonenumbers.region_code_for_country_code(int(digits)) if digits.isdigit() else "ZZ"
    except ValueError:
        region = "ZZ"
    if region == "ZZ":
        return "", "International"
    # The geocoder's own country names (not exported under a public name).
    display = getattr(geocoder, "_region_display_name", None)
    name = (display(region, "en") if display else "") or region
    return "", f"International: {name}"
