"""Output paths (issue 22, item 7): an --out never overwrites an input and never writes
through a symbolic link; refused before anything is written (docs/rules.md, "Output files")."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.cdr_files import CdrFileError, check_outputs, replace_output
from tests.conftest import VECTORS, run_cdrflow

BASIC = VECTORS / "basic"


def _rate(cdrs: Path, out: Path, accounts: Path = BASIC / "accounts.toml"):  # type: ignore[no-untyped-def]
    return run_cdrflow("rate", cdrs, "--plans", BASIC / "plans", "--accounts", accounts, "--out", out)


def test_rate_refuses_an_out_whose_rated_csv_is_the_input_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    cdrs = out / "rated.csv"  # the input lives where the output would go
    shutil.copy(BASIC / "cdrs.csv", cdrs)
    before = cdrs.read_bytes()

    run = _rate(cdrs, out)

    assert run.returncode == 2, run.stderr
    assert "would overwrite the input" in run.stderr and "rated.csv" in run.stderr
    assert cdrs.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["rated.csv"]


def test_rate_refuses_an_output_that_is_a_hard_link_to_the_input(tmp_path: Path) -> None:
    cdrs = tmp_path / "cdrs.csv"
    shutil.copy(BASIC / "cdrs.csv", cdrs)
    out = tmp_path / "out"
    out.mkdir()
    os.link(cdrs, out / "alerts.csv")
    before = cdrs.read_bytes()

    run = _rate(cdrs, out)

    assert run.returncode == 2 and "alerts.csv: writing it would overwrite the input" in run.stderr, run.stderr
    assert cdrs.read_bytes() == before and not (out / "rated.csv").exists()


def test_rate_refuses_an_output_that_is_the_accounts_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    accounts = out / "rejected.csv"
    shutil.copy(BASIC / "accounts.toml", accounts)

    run = _rate(BASIC / "cdrs.csv", out, accounts=accounts)

    assert run.returncode == 2 and "rejected.csv: writing it would overwrite the input" in run.stderr, run.stderr
    assert accounts.read_bytes() == (BASIC / "accounts.toml").read_bytes()


def test_rate_does_not_follow_a_link_out_of_the_output_folder(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not cdrflow's\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "rated.csv").symlink_to(elsewhere)

    run = _rate(BASIC / "cdrs.csv", out)

    assert run.returncode == 2 and "is a symbolic link" in run.stderr, run.stderr
    assert elsewhere.read_text() == "not cdrflow's\n"
    assert not (out / "rejected.csv").exists()


def test_rate_writes_over_its_own_earlier_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _rate(BASIC / "cdrs.csv", out).returncode == 0
    first = (out / "rated.csv").read_bytes()
    assert _rate(BASIC / "cdrs.csv", out).returncode == 0
    assert (out / "rated.csv").read_bytes() == first


def test_replace_output_replaces_a_link_instead_of_writing_through_it(tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("kept\n")
    link = tmp_path / "report.html"
    link.symlink_to(target)
    with pytest.raises(CdrFileError, match="symbolic link"):
        check_outputs([link])
    replace_output(link, lambda handle: handle.write(b"new\n"))  # if it were called anyway
    assert target.read_text() == "kept\n"
    assert not link.is_symlink() and link.read_text() == "new\n"


def test_a_planted_partial_link_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("kept\n")
    (tmp_path / ".calls.csv.partial").symlink_to(target)
    replace_output(tmp_path / "calls.csv", lambda handle: handle.write(b"a,b\n"))
    assert target.read_text() == "kept\n" and (tmp_path / "calls.csv").read_text() == "a,b\n"


def test_report_html_refuses_an_out_that_is_a_link_before_reading_clickhouse(tmp_path: Path) -> None:
    from streams.cli.main import app

    target = tmp_path / "target.html"
    target.write_text("kept\n")
    (tmp_path / "march.html").symlink_to(target)
    result = CliRunner().invoke(
        app, ["report", "html", "--month", "2026-03", "--out", str(tmp_path / "march.html")],
        env={"CDRFLOW_CLICKHOUSE_URL": "clickhouse://default@127.0.0.1:1/cdrflow"},
    )
    assert result.exit_code == 2, result.output
    assert "symbolic link" in result.output and target.read_text() == "kept\n"


def test_export_refuses_an_out_with_a_link_in_it_before_reading_clickhouse(tmp_path: Path) -> None:
    from streams.cli.main import app

    target = tmp_path / "target.csv"
    target.write_text("kept\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "alerts.csv").symlink_to(target)
    result = CliRunner().invoke(
        app, ["export", "--out", str(out)], env={"CDRFLOW_CLICKHOUSE_URL": "clickhouse://default@127.0.0.1:1/cdrflow"}
    )
    assert result.exit_code == 2, result.output
    assert "symbolic link" in result.output and target.read_text() == "kept\n"
    assert sorted(p.name for p in out.iterdir()) == ["alerts.csv"]


def test_invoice_out_refuses_a_link_among_its_documents_and_writes_none(tmp_path: Path) -> None:
    # cdrflow invoice --out (issue 24) writes each document's .json and .html: the same rule.
    from streams.cli.invoice import _write
    from streams.ledger.invoices import Result
    from tests.test_invoicing import scenario

    document = scenario().invoice("2026-03", 1)
    assert document is not None and document.invoice_no
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "target.html"
    target.write_text("kept\n")
    (out / f"{document.invoice_no}.html").symlink_to(target)
    with pytest.raises(CdrFileError, match="symbolic link"):
        _write(out, [Result("A1", "2026-03", document=document)])
    assert target.read_text() == "kept\n" and sorted(p.name for p in out.iterdir()) == [f"{document.invoice_no}.html"]
    (out / f"{document.invoice_no}.html").unlink()
    (out / f".{document.invoice_no}.json.partial").symlink_to(target)  # planted after the check: not followed
    written = _write(out, [Result("A1", "2026-03", document=document)])
    assert [p.name for p in written] == [f"{document.invoice_no}.json", f"{document.invoice_no}.html"]
    assert target.read_text() == "kept\n" and document.invoice_no in (out / f"{document.invoice_no}.html").read_text()
