"""The error of the tariff files: every problem found, each naming its file and field."""

from __future__ import annotations


class TariffError(Exception):
    """One or more invalid plan or account files; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))
