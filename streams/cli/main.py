"""The ``cdrflow`` command line: the typer app, the table of commands and ``main()``.

Every command is a plain typer-annotated function in a module of this package; the table
:data:`COMMANDS` says where each lives, and a module is imported only when its command is
asked for (as pip's ``commands_dict``): ``cdrflow rate`` never imports the pipeline's
Kafka and ClickHouse clients (~0.3 s), ``cdrflow --help`` imports every command module.
"""

from __future__ import annotations

import gc
import importlib
import sys
from typing import Final, NamedTuple

import typer


class Command(NamedTuple):
    """Where a command lives: ``module:attribute``, and whether it is a group (a Typer)."""

    target: str
    group: bool = False


#: Every command, in the order ``--help`` lists them.
COMMANDS: Final[dict[str, Command]] = {
    "plans": Command("streams.cli.offline:plans_app", group=True),
    "rate": Command("streams.cli.offline:rate"),
    "generate": Command("streams.cli.offline:generate"),
    "compare": Command("streams.cli.offline:compare"),
    "up": Command("streams.cli.stack:up"),
    "down": Command("streams.cli.stack:down"),
    "status": Command("streams.cli.stack:status"),
    "topics": Command("streams.cli.stack:topics"),
    "blocked": Command("streams.cli.blocked:blocked_app", group=True),
    "load": Command("streams.cli.ingest:load"),
    "ingest": Command("streams.cli.ingest:ingest"),
    "route": Command("streams.cli.route:route"),
    "export": Command("streams.cli.export:export"),
    "worker": Command("streams.cli.worker:worker"),
    "demo": Command("streams.cli.demo:demo"),
    "account": Command("streams.cli.account:account_app", group=True),
    "number": Command("streams.cli.account:number_app", group=True),
    "close-month": Command("streams.cli.account:close_month"),
    "sla-credit": Command("streams.cli.account:sla_credit"),
    "rebuild": Command("streams.cli.rebuild:rebuild"),
    "rerate": Command("streams.cli.rerate:rerate"),
    "invoice": Command("streams.cli.invoice:invoice"),
    "report": Command("streams.cli.report:report_app", group=True),
    "retention": Command("streams.cli.report:retention"),
}
#: The commands that need no server: registered with any command, they import nothing heavy.
OFFLINE: Final = ("plans", "rate", "generate", "compare")


def _new_app() -> typer.Typer:
    return typer.Typer(
        name="cdrflow",
        help="Event-sourced billing and CDR rating for 400 numbers.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )


def build_app(names: tuple[str, ...] | None = None) -> typer.Typer:
    """The command line with the commands ``names`` (the offline ones always; None: every
    command), each module imported now."""
    wanted = set(COMMANDS if names is None else (*OFFLINE, *names))
    app = _new_app()
    for name, command in COMMANDS.items():
        if name not in wanted:
            continue
        module, _, attribute = command.target.partition(":")
        target = getattr(importlib.import_module(module), attribute)
        if command.group:
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)
    return app


_full_app: typer.Typer | None = None


def full_app() -> typer.Typer:
    """Every command (built once)."""
    global _full_app
    if _full_app is None:
        _full_app = build_app()
    return _full_app


def __getattr__(name: str) -> object:
    # PEP 562: `from streams.cli.main import app` gets every command.
    if name == "app":
        return full_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _keep_freed_chunk_buffers() -> None:
    """Have glibc keep the ~32 MB buffers of CDR chunks for the next chunk.

    By default glibc maps each allocation of 32 MB or more afresh and unmaps it when it is
    freed, so every chunk's bytes (read, completed to a line end, parsed) are page-faulted
    in anew: measured on 1M CDRs, 335k page faults, 0.15 s more than with them kept in the
    heap. Only for the `rate` process; nothing happens where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_mmap_threshold, 256 << 20)
    mallopt(m_trim_threshold, 1 << 30)


def main() -> None:
    """Console-script entry point: registers the command asked for (every command for
    ``--help``, no command or one not known) and runs it."""
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "rate":
        # Loading 20k accounts makes tens of thousands of pydantic objects, none of them
        # garbage: the cycle collector's passes over them cost 0.2-0.4 s of a 1M-CDR run
        # (measured). `rate` turns it back on once the catalogue is built.
        gc.disable()
        _keep_freed_chunk_buffers()
    (build_app((command,)) if command in COMMANDS else full_app())()
