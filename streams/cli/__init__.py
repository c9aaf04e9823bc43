"""The ``cdrflow`` command line (entry point ``streams.cli:main``): typer commands only.

Nothing imports this package but the entry point. It sets two variables of the process
before anything imports polars or numpy, then hands on :func:`main` and (lazily) ``app``.
"""

import os

# polars allocates through jemalloc (configured by `_RJEM_MALLOC_CONF`). As built into the
# wheel it hands freed pages back to the kernel so soon that a rating run faults the same
# memory in again for every chunk: measured on 1M CDRs, 660k page faults and 1.6 s of
# system time; keeping freed pages for 5 s brings that to ~400k and ~1.0 s. jemalloc reads
# the variable when polars loads, so it is set before the first polars import; a value the
# user set wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:5000,muzzy_decay_ms:5000")
# numpy (the CSV parser's line offsets) starts OpenBLAS with a thread and buffers per core
# when it is imported: 40-50 ms of every start measured, for linear algebra that nothing
# here does. One thread makes the import that much shorter; a value the user set wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main() -> None:
    """Console-script entry point (``cdrflow``)."""
    from streams.cli.main import main as run

    run()


def __getattr__(name: str) -> object:
    # PEP 562: `from streams.cli import app` gets every command.
    if name == "app":
        from streams.cli.main import full_app

        return full_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
