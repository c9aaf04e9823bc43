"""``cdrflow worker``: run the Faust worker of :mod:`streams.worker.app` in this process.

streams.cli.main registers :func:`worker`; tests and `cdrflow demo` run it as ``python -m streams.cli.worker``.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from typing import Annotated, Any, Final

import typer

from streams.cli._common import ExitCode

# Faust's worker takes `warn`, not `warning` (docs/infra.md).
_LEVELS = {"debug": "debug", "info": "info", "warn": "warn", "warning": "warn", "error": "error", "critical": "critical"}


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            if not record.exc_text:  # set through the record: redacted (streams.settings)
                record.exc_text = self.formatException(record.exc_info)
            line["traceback"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


#: gc.set_threshold of the worker process: a young collection every 50,000 allocations
#: (net) instead of 700, a full one at most every 20 x 100 young ones (and, as always, only
#: once a quarter of the old objects are new), so cyclic garbage is still collected, within
#: a minute or two of busy work.
WORKER_GC_THRESHOLDS: Final[tuple[int, int, int]] = (50_000, 20, 100)


def _json_logging(level: str) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": "WARNING" if level == "warn" else level.upper()},
    }


def worker(
    loglevel: Annotated[
        str,
        typer.Option("--loglevel", "-l", help="Log level: debug, info, warn, error or critical."),
    ] = "warn",
    json_logs: Annotated[
        bool, typer.Option("--json-logs", help="Log one JSON object per line (for log collectors).")
    ] = False,
    topic_prefix: Annotated[
        str,
        typer.Option("--topic-prefix", help="Read and write topics under this prefix (tests, shared brokers).", hidden=True),
    ] = "",
) -> None:
    """Run a worker: rate CDRs from Kafka, land results in ClickHouse, send alerts.

    Rates the cdr.raw topic with per-account state kept on the broker (docs/streaming.md),
    sends rated calls, rejections and alerts to their topics and inserts them into
    ClickHouse; alerts are
    logged and POSTed to CDRFLOW_ALERT_WEBHOOK when set. Start several workers (same
    CDRFLOW_APP_ID) to share the partitions. Runs until stopped (Ctrl-C, SIGTERM).

    Example: cdrflow worker --loglevel info
    """
    from pydantic import ValidationError

    from streams.settings import Settings, install_log_redaction

    install_log_redaction()  # every log record of the worker, Faust's included, without secrets
    level = _LEVELS.get(loglevel.lower())
    if level is None:
        print(f"error: --loglevel must be one of {', '.join(sorted(set(_LEVELS.values())))}, got {loglevel!r}", file=sys.stderr)
        raise typer.Exit(ExitCode.BAD_INPUT)
    try:
        settings = Settings()
    except ValidationError as error:
        print(f"error: the CDRFLOW_* settings are not valid:\n{error}", file=sys.stderr)
        raise typer.Exit(ExitCode.BAD_INPUT) from None

    import faust

    from streams.worker.app import build_app

    if level != "debug":
        # kafka-python (the catalogue reads) logs every connection at INFO.
        logging.getLogger("kafka").setLevel(logging.WARNING)
    # Collect the older generations rarely: a worker holds its partitions' state records
    # and Faust's objects (~1 GB in the soak bench) for its whole life, and every full
    # collection walks all of them, mid-batch. latency_bench, 2,000 accounts at 2,000
    # lines/s, same day: p99 append -> ClickHouse 6.9 s with Python's (700, 10, 10), 5.4-5.8 s.
    gc.set_threshold(*WORKER_GC_THRESHOLDS)
    app = build_app(settings, topic_prefix=topic_prefix or settings.topic_prefix)
    # Faust makes its data folder (app.conf.datadir) but not the folders above it.
    (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)
    faust.Worker(
        app,
        loglevel=level,
        logging_config=_json_logging(level) if json_logs else None,
        quiet=level not in ("debug", "info"),
    ).execute_from_commandline()


if __name__ == "__main__":
    typer.run(worker)
