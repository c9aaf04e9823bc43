"""The synthetic data set of ``streams.offline.generate``: layout, determinism and realism."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

import tariffs
from schemas.columns import CDR_COLUMNS, CDR_HEADER, DISPOSITIONS
from streams.offline.generate import GeneratedDataset, generate_dataset
from tariffs import load_tariffs

MONTH = "2026-03"
MONTH_START = datetime.fromisoformat("2026-03-01T00:00:00+08:00")
NEXT_MONTH_START = datetime.fromisoformat("2026-04-01T00:00:00+08:00")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%:z"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> GeneratedDataset:
    return generate_dataset(
        tmp_path_factory.mktemp("generated"), cdrs=20_000, accounts=400, month=MONTH, seed=11
    )


@pytest.fixture(scope="module")
def lines(data: GeneratedDataset) -> list[str]:
    text = data.cdrs_file.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return text.removesuffix("\n").split("\n")


@pytest.fixture(scope="module")
def well_formed(lines: list[str]) -> pl.DataFrame:
    """The data lines with 12 fields whose times parse with an offset and billsec >= 0."""
    rows = [fields for fields in (line.split(",") for line in lines[1:]) if len(fields) == 12]
    frame = pl.DataFrame(rows, schema=list(CDR_COLUMNS), orient="row")
    parsed = frame.with_columns(
        start=pl.col("start_time").str.strptime(pl.Datetime("us", "UTC"), _TIME_FORMAT, strict=False),
        answer=pl.col("answer_time").str.strptime(pl.Datetime("us", "UTC"), _TIME_FORMAT, strict=False),
        end=pl.col("end_time").str.strptime(pl.Datetime("us", "UTC"), _TIME_FORMAT, strict=False),
        seconds=pl.col("billsec").cast(pl.Int64, strict=False),
    )
    return parsed.filter(
        pl.col("start").is_not_null()
        & pl.col("end").is_not_null()
        & (pl.col("seconds") >= 0)
        & pl.col("disposition").is_in(DISPOSITIONS)
    )


def _small(out: Path, seed: int) -> GeneratedDataset:
    return generate_dataset(out, cdrs=3_000, accounts=60, month=MONTH, seed=seed)


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_seed_writes_identical_bytes(tmp_path: Path) -> None:
    _small(tmp_path / "a", seed=3)
    _small(tmp_path / "b", seed=3)
    assert _file_bytes(tmp_path / "a") == _file_bytes(tmp_path / "b")


def test_different_seed_writes_different_accounts_and_cdrs(tmp_path: Path) -> None:
    first, second = _small(tmp_path / "a", seed=3), _small(tmp_path / "b", seed=4)
    assert first.cdrs_file.read_bytes() != second.cdrs_file.read_bytes()
    assert first.accounts_file.read_bytes() != second.accounts_file.read_bytes()


def test_layout_is_that_of_a_vector_set(data: GeneratedDataset) -> None:
    reference = Path(tariffs.__file__).parent / "reference"
    assert sorted(p.name for p in data.plans_dir.glob("*.toml")) == sorted(p.name for p in reference.glob("*.toml"))
    for plan in reference.glob("*.toml"):
        assert (data.plans_dir / plan.name).read_bytes() == plan.read_bytes()
    assert data.accounts_file == data.root / "accounts.toml"
    assert data.cdrs_file == data.root / "cdrs.csv"


def test_cdr_file_has_the_canonical_header_and_one_line_per_cdr(data: GeneratedDataset, lines: list[str]) -> None:
    assert lines[0] == CDR_HEADER
    assert len(lines) == 1 + 20_000 == 1 + data.cdrs
    assert b"\r" not in data.cdrs_file.read_bytes()


def test_files_load_and_every_account_has_its_plan(data: GeneratedDataset) -> None:
    loaded = load_tariffs(data.plans_dir, data.accounts_file)  # raises on an unknown plan
    assert len(loaded.accounts) == data.accounts == 400
    assert sum(len(account.numbers) for account in loaded.accounts) == data.numbers
    assert {account.plan for account in loaded.accounts} == set(loaded.plans)


def test_numbers_are_unique_and_match_their_plans_segments(data: GeneratedDataset) -> None:
    loaded = load_tariffs(data.plans_dir, data.accounts_file)
    numbers = [number for account in loaded.accounts for number in account.numbers]
    assert len(numbers) == len(set(numbers))
    segments = {"std-100": ("4008", "4006"), "eco-4007": ("4007",), "vip-500": ("4001",),
                "pkg-3y-3000": ("4008", "4006"), "floor-50": ("4007", "4006")}
    for account in loaded.accounts:
        assert all(number.startswith(segments[account.plan]) for number in account.numbers), account


def test_accounts_spread_over_plans_with_balances_thresholds_and_caps(data: GeneratedDataset) -> None:
    loaded = load_tariffs(data.plans_dir, data.accounts_file)
    plans = Counter(account.plan for account in loaded.accounts)
    assert plans["std-100"] > plans["eco-4007"] > plans["vip-500"] > 0
    assert any(account.daily_cap is not None for account in loaded.accounts)
    assert any(account.low_balance_threshold != 500_000 for account in loaded.accounts)
    assert any(account.opening_balance < account.low_balance_threshold for account in loaded.accounts)
    vip_numbers = [n for a in loaded.accounts if a.plan == "vip-500" for n in a.numbers]
    assert any(n.startswith("40010") for n in vip_numbers)


def test_well_formed_calls_lie_within_the_month(well_formed: pl.DataFrame) -> None:
    assert well_formed.height > 19_000
    for column in ("start", "answer", "end"):
        times = well_formed[column].drop_nulls()
        assert times.min() >= MONTH_START and times.max() < NEXT_MONTH_START, column
    assert well_formed["start_time"].str.ends_with("+08:00").all()


def test_unanswered_calls_have_no_answer_time_and_no_billsec(well_formed: pl.DataFrame) -> None:
    unanswered = well_formed.filter(pl.col("disposition") != "ANSWERED")
    assert unanswered.height > 0
    assert (unanswered["answer_time"] == "").all()
    assert (unanswered["seconds"] == 0).all()
    answered = well_formed.filter(pl.col("disposition") == "ANSWERED")
    assert answered["answer"].is_not_null().all()
    assert (answered["start"] <= answered["answer"]).all() and (answered["answer"] <= answered["end"]).all()


def test_traffic_mix_is_realistic(well_formed: pl.DataFrame) -> None:
    answered_share = (well_formed["disposition"] == "ANSWERED").mean()
    local_share = (well_formed["caller_area"] == well_formed["answer_area"]).mean()
    international = well_formed["caller_area"].str.contains(r"^(\+|00)").sum()
    billsec = well_formed.filter(pl.col("disposition") == "ANSWERED")["seconds"]
    assert 0.77 < answered_share < 0.83
    assert 0.56 < local_share < 0.64
    assert international > 0
    assert 70 < billsec.median() < 110
    assert billsec.max() > 3600


def test_calls_follow_business_hours(well_formed: pl.DataFrame) -> None:
    hours = well_formed["start"].dt.convert_time_zone("Asia/Shanghai").dt.hour()
    assert (hours.is_between(9, 11)).sum() > 10 * (hours.is_between(1, 3)).sum()


def test_cdr_ids_are_unique_but_for_resent_lines(data: GeneratedDataset, lines: list[str]) -> None:
    ids = Counter(line.split(",", 1)[0] for line in lines[1:])
    assert sum(count - 1 for count in ids.values()) == data.resent
    assert all(cdr_id.startswith("sw-") and cdr_id[-8:].isdigit() for cdr_id in ids)


def test_resent_lines_repeat_an_earlier_line_exactly(data: GeneratedDataset, lines: list[str]) -> None:
    seen: set[str] = set()
    repeats = 0
    for line in lines[1:]:
        repeats += line in seen
        seen.add(line)
    assert repeats == data.resent > 0


def test_some_calls_go_to_numbers_nobody_owns(data: GeneratedDataset, well_formed: pl.DataFrame) -> None:
    owned = {n for a in load_tariffs(data.plans_dir, data.accounts_file).accounts for n in a.numbers}
    unknown = well_formed.filter(~pl.col("called").is_in(owned))
    assert unknown.height == data.unknown_number > 0
    assert unknown["called"].str.contains(r"^400\d{7}$").all()


def test_malformed_lines_of_each_kind_are_present(data: GeneratedDataset, lines: list[str]) -> None:
    rows = [line.split(",") for line in lines[1:]]
    missing_column = sum(len(fields) != 12 for fields in rows)
    full = [fields for fields in rows if len(fields) == 12]
    no_offset = sum(" " in fields[7] for fields in full)
    negative = sum(fields[10].startswith("-") for fields in full)
    misspelt = sum(fields[11] == "ANSWERD" for fields in full)
    assert min(missing_column, no_offset, negative, misspelt) > 0
    assert missing_column + no_offset + negative + misspelt == data.malformed == 20


def test_progress_reports_lines_written_up_to_the_total(tmp_path: Path) -> None:
    seen: list[int] = []
    generate_dataset(tmp_path, cdrs=1_000, accounts=20, month=MONTH, seed=1, progress=seen.append)
    assert seen and seen == sorted(seen) and seen[-1] == 1_000


def test_bad_month_is_refused_with_the_expected_form(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        generate_dataset(tmp_path, cdrs=10, accounts=2, month="2026-13", seed=1)


def test_no_cdrs_writes_the_header_only(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path, cdrs=0, accounts=3, month=MONTH, seed=1)
    assert data.cdrs_file.read_text() == CDR_HEADER + "\n"
    assert len(load_tariffs(data.plans_dir, data.accounts_file).accounts) == 3
