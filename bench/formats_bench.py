"""Time rating a switch's own file against rating the same calls in canonical form (issue 7).

Generates one month of traffic twice with the same seed (``cdrs.csv`` and Asterisk's
``Master.csv``), then rates each in this process (``streams.offline.rate.rate_file``, what
``cdrflow rate`` runs), best of ``--repeat``, and times area derivation
(``schemas.numbering.derive_areas``) on the callers and answer numbers of the file.

Target: Asterisk at >= 100k CDRs/s and at least 1/4 of the canonical speed. The framing
step adds a quoted read, three time conversions and two area derivations per line; the
streaming pipeline lands ~20k lines/s end to end (docs/streaming.md), so framing is not
what limits ingest.

Usage::

    .venv/bin/python bench/formats_bench.py                  # 1M CDRs, 20k accounts
    .venv/bin/python bench/formats_bench.py --cdrs 200000 --accounts 2000 --json

Exit status: 0 when the targets are met, 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from rating import Catalog  # noqa: E402
from schemas.numbering import derive_areas  # noqa: E402
from schemas.switch_formats import Feed  # noqa: E402
from streams.offline.generate import generate_dataset  # noqa: E402
from streams.offline.rate import rate_file  # noqa: E402
from tariffs import load_tariffs  # noqa: E402

TARGET_CDRS_PER_S = 100_000
TARGET_SHARE_OF_CANONICAL = 1 / 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cdrs", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cdrflow-formats-") as folder:
        root = Path(folder)
        options = {"cdrs": args.cdrs, "accounts": args.accounts, "month": "2026-03", "seed": 7}
        canonical = generate_dataset(root / "canonical", **options)
        asterisk = generate_dataset(root / "asterisk", **options, cdr_format="asterisk")
        catalog = Catalog.from_tariffs(load_tariffs(canonical.plans_dir, canonical.accounts_file))
        seconds = {}
        for name, data, feed in (("canonical", canonical, None), ("asterisk", asterisk, Feed.of("asterisk"))):
            best = float("inf")
            for _ in range(args.repeat):
                started = time.perf_counter()
                rate_file(data.cdrs_file, catalog, root / f"out-{name}", feed=feed)
                best = min(best, time.perf_counter() - started)
            seconds[name] = best
        numbers = pl.read_csv(canonical.cdrs_file, columns=["caller", "answer_number"], infer_schema=False,
                              truncate_ragged_lines=True)  # fmt: skip
        column = pl.concat([numbers.get_column("caller"), numbers.get_column("answer_number")])
        started = time.perf_counter()
        derive_areas(column)
        derive_s = time.perf_counter() - started
        distinct = column.n_unique()
    figures = {
        "cdrs": args.cdrs,
        "canonical_s": round(seconds["canonical"], 3),
        "asterisk_s": round(seconds["asterisk"], 3),
        "canonical_cdrs_per_s": round(args.cdrs / seconds["canonical"]),
        "asterisk_cdrs_per_s": round(args.cdrs / seconds["asterisk"]),
        "asterisk_share_of_canonical": round(seconds["canonical"] / seconds["asterisk"], 3),
        "derive_areas_numbers": len(column),
        "derive_areas_distinct": distinct,
        "derive_areas_s": round(derive_s, 3),
        "derive_areas_numbers_per_s": round(len(column) / derive_s),
    }
    met = (
        figures["asterisk_cdrs_per_s"] >= TARGET_CDRS_PER_S
        and figures["asterisk_share_of_canonical"] >= TARGET_SHARE_OF_CANONICAL
    )
    figures["targets_met"] = met
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:32} {value:,}" if isinstance(value, (int, float)) and not isinstance(value, bool) else f"{key:32} {value}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
