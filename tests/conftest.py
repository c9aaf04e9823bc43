"""Shared fixtures: the vector sets every rating path is held to, and the installed CLI.

The project's own vector sets (``tests/vectors/<set>/``) are the contract the project is
held to; the sets of a ``shared/vectors/`` folder beside the project (the one CI lays
there, where new sets appear over time) are run as well when it is there. How a set is
laid out and why both run: docs/rules.md, "Vector sets".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
#: The project's own vector sets.
VECTORS = PROJECT / "tests" / "vectors"
#: The folder CI lays beside the project (vectors/, tools/); absent from a plain clone.
SHARED = PROJECT.parent / "shared"
SHARED_VECTORS = SHARED / "vectors"
CDRFLOW = Path(sys.executable).parent / "cdrflow"

#: What a vector set folder holds (spec/rating.md 2 and 6).
VECTOR_SET_FILES = (
    "plans",
    "accounts.toml",
    "cdrs.csv",
    "expected/rated.csv",
    "expected/rejected.csv",
    "expected/alerts.csv",
)


def vector_set_folders(root: Path) -> list[Path]:
    """Every folder directly under ``root`` (none when ``root`` is not there), by name."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def vector_set_problem(folder: Path) -> str | None:
    """What a vector set folder lacks, in words naming it; None when it is complete."""
    missing = [name for name in VECTOR_SET_FILES if not (folder / name).exists()]
    if not missing:
        return None
    return f"{folder} is not a complete vector set: no {', '.join(missing)}"


def _same_files(one: Path, other: Path) -> bool:
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file()) and all(
        (one / name).read_bytes() == (other / name).read_bytes() for name in files
    )


def vector_set_params(own_root: Path, shared_root: Path) -> list:
    """``pytest.param``s of the sets under ``own_root``, then of those under ``shared_root``
    that ``own_root`` does not carry byte for byte (id ``shared/<name>``)."""
    # Broken folders are kept: the fixture fails their tests with what is missing, so a
    # bad set is a clear failure, never a collection error (pytest-xdist turns those into
    # an INTERNALERROR).
    own = vector_set_folders(own_root)
    params = [pytest.param(folder, id=folder.name) for folder in own]
    for folder in vector_set_folders(shared_root):
        twin = own_root / folder.name
        # A shared set byte for byte equal to the project's set of its name (the project's
        # sets were copied from there) runs once, as the project's; one that differs runs
        # as well, as shared/<name>.
        if twin in own and _same_files(folder, twin):
            continue
        params.append(pytest.param(folder, id=f"shared/{folder.name}"))
    return params


#: The project's sets, then the shared ones it does not already carry (ids ``basic``,
#: ``shared/<name>``). With none at all, the tests that take a set are skipped by pytest
#: and tests/test_vector_sets.py fails, saying so.
VECTOR_SETS = vector_set_params(VECTORS, SHARED_VECTORS)


@pytest.fixture(scope="module", params=VECTOR_SETS)
def vector_set(request: pytest.FixtureRequest) -> Path:
    """Each vector set folder (plans/, accounts.toml, cdrs.csv, expected/)."""
    folder: Path = request.param
    problem = vector_set_problem(folder)
    if problem:
        pytest.fail(problem, pytrace=False)
    return folder


def run_cdrflow(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``cdrflow`` console script, as a user would."""
    return subprocess.run(
        [str(CDRFLOW), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def self_signed_certificate(folder: Path) -> Path:
    """``folder/cert.pem`` (and its ``key.pem``): a self-signed certificate for 127.0.0.1 and
    localhost made by openssl, as a private CA's would be (the TLS tests)."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(folder / "key.pem"),
         "-out", str(folder / "cert.pem"), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    return folder / "cert.pem"
