"""The vector sets: the project's own are there and complete; shared ones beside it run too.

A missing or broken set is a test that fails naming the folder, never a collection error
(which pytest-xdist reports as an INTERNALERROR, stopping the whole run).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT, VECTOR_SET_FILES, VECTORS, vector_set_folders, vector_set_params, vector_set_problem


def test_the_project_carries_its_own_complete_vector_sets() -> None:
    folders = vector_set_folders(VECTORS)
    assert folders, f"no vector sets under {VECTORS}: the project's own sets are its contract (docs/rules.md)"
    problems = [problem for folder in folders if (problem := vector_set_problem(folder))]
    assert not problems, "\n".join(problems)


def _vector_set(folder: Path, cdrs: bytes = b"cdr_id\n") -> Path:
    for name in VECTOR_SET_FILES:
        path = folder / name
        if name == "plans":
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(cdrs if name == "cdrs.csv" else b"")
    return folder


def _ids(params: list) -> list[str]:
    return [param.id for param in params]


def test_a_shared_set_equal_to_the_projects_runs_once_and_one_that_differs_runs_too(tmp_path: Path) -> None:
    own, shared = tmp_path / "project" / "vectors", tmp_path / "shared" / "vectors"
    for name in ("basic", "mixed"):
        _vector_set(own / name)
    _vector_set(shared / "basic")  # the same files
    _vector_set(shared / "mixed", cdrs=b"cdr_id\nR1\n")  # a changed copy
    _vector_set(shared / "new")  # a set the project does not carry yet
    params = vector_set_params(own, shared)
    assert _ids(params) == ["basic", "mixed", "shared/mixed", "shared/new"]
    assert params[2].values == (shared / "mixed",)


def test_without_a_shared_folder_the_projects_sets_run(tmp_path: Path) -> None:
    _vector_set(tmp_path / "vectors" / "basic")
    assert _ids(vector_set_params(tmp_path / "vectors", tmp_path / "no-such-folder")) == ["basic"]


def test_a_broken_set_is_named_with_what_it_lacks(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cdrs.csv").write_text("cdr_id\n")
    problem = vector_set_problem(broken)
    assert problem is not None and str(broken) in problem
    assert "no plans, accounts.toml, expected/rated.csv, expected/rejected.csv, expected/alerts.csv" in problem


def _run_pytest_in_a_project_with(tmp_path: Path, sets: dict[str, bool]) -> subprocess.CompletedProcess[str]:
    """pytest on two xdist workers in a project of this conftest, with complete or broken sets."""
    project = tmp_path / "project"
    tests = project / "tests"
    tests.mkdir(parents=True)
    (tests / "__init__.py").write_text("")
    shutil.copy(PROJECT / "tests" / "conftest.py", tests / "conftest.py")
    shutil.copy(Path(__file__), tests / "test_vector_sets.py")
    (tests / "test_uses_a_set.py").write_text(
        "def test_a_set_has_its_cdrs(vector_set):\n    assert (vector_set / 'cdrs.csv').is_file()\n"
    )
    (tests / "vectors").mkdir()
    for name, complete in sets.items():
        if complete:
            _vector_set(tests / "vectors" / name)
        else:
            (tests / "vectors" / name).mkdir()
            (tests / "vectors" / name / "cdrs.csv").write_text("cdr_id\n")
    # By node id: only the test of this file that needs no subprocess, never these.
    chosen = ["tests/test_vector_sets.py::test_the_project_carries_its_own_complete_vector_sets", "tests/test_uses_a_set.py"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "-ra", *chosen],
        cwd=project, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_broken_set_fails_its_tests_under_xdist_without_an_internal_error(tmp_path: Path) -> None:
    run = _run_pytest_in_a_project_with(tmp_path, {"good": True, "broken": False})
    assert "INTERNALERROR" not in run.stdout + run.stderr
    assert run.returncode == 1, run.stdout
    assert "ERROR tests/test_uses_a_set.py::test_a_set_has_its_cdrs[broken]" in run.stdout
    assert "broken is not a complete vector set: no plans, accounts.toml, expected/rated.csv" in run.stdout
    assert "1 failed, 1 passed, 1 error" in run.stdout


def test_no_sets_at_all_fail_one_test_under_xdist_without_an_internal_error(tmp_path: Path) -> None:
    run = _run_pytest_in_a_project_with(tmp_path, {})
    assert "INTERNALERROR" not in run.stdout + run.stderr
    assert run.returncode == 1, run.stdout
    assert "FAILED tests/test_vector_sets.py::test_the_project_carries_its_own_complete_vector_sets" in run.stdout
    assert "no vector sets under" in run.stdout
    assert "1 failed, 1 skipped" in run.stdout
