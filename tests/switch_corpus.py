"""The switch corpus of tests/data/switches (issue 21): its files, how each is read, and
its expected outputs.

``python -m tests.switch_corpus --write`` rates every file offline and writes the
expected outputs (to be read before they are committed: they are the contract).
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from rating import Catalog
from schemas.switch_formats import PROFILES_DIR, Feed
from tariffs import load_tariffs

CORPUS = Path(__file__).parent / "data" / "switches"
OUTPUTS = ("rated", "rejected", "alerts")


@dataclass(frozen=True)
class CorpusFile:
    """One entry of ``corpus.toml``."""

    name: str
    path: Path
    format: str
    profile: Path | None = None
    switch_timezone: str | None = None
    encoding: str | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def expected(self) -> Path:
        return CORPUS / "expected" / self.name

    def feed(self) -> Feed:
        return Feed.of(self.format, profile=self.profile, switch_timezone=self.switch_timezone, encoding=self.encoding)

    def options(self) -> list[str]:
        """The same, as options of ``cdrflow rate`` / ``ingest``."""
        options = ["--format", self.format]
        if self.profile is not None:
            options += ["--profile", str(self.profile)]
        if self.switch_timezone is not None:
            options += ["--switch-timezone", self.switch_timezone]
        if self.encoding is not None:
            options += ["--encoding", self.encoding]
        return options


def corpus_files() -> list[CorpusFile]:
    entries = tomllib.loads((CORPUS / "corpus.toml").read_text(encoding="utf-8"))["files"]
    files = []
    for entry in entries:
        profile = entry.get("profile")
        if profile is not None:
            profile = PROFILES_DIR / f"{profile[8:]}.toml" if profile.startswith("shipped:") else CORPUS / profile
        files.append(
            CorpusFile(
                name=entry["name"], path=CORPUS / entry["file"], format=entry["format"], profile=profile,
                switch_timezone=entry.get("switch_timezone"), encoding=entry.get("encoding"),
                warnings=tuple(entry.get("warnings", ())),
            )  # fmt: skip
        )
    return files


def corpus_catalog() -> Catalog:
    return Catalog.from_tariffs(load_tariffs(CORPUS / "plans", CORPUS / "accounts.toml"))


def read_outputs(folder: Path) -> dict[str, pl.DataFrame]:
    return {name: pl.read_csv(folder / f"{name}.csv", infer_schema=False) for name in OUTPUTS}


def _write() -> None:
    from streams.offline.rate import rate_file

    for entry in corpus_files():
        summary = rate_file(entry.path, corpus_catalog(), entry.expected, feed=entry.feed())
        print(entry.name, summary.rated, summary.unbilled, dict(summary.rejected), summary.warnings)


if __name__ == "__main__" and "--write" in sys.argv:
    _write()
