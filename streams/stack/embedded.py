"""What the embedded stack's users share: its records, its error, and the broker's store.

The worker imports this module (``remove_topic_files``), never the process manager."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from streams.settings import Settings

#: The cluster id tansu stores its topics under (its default; the broker is started without one).
TANSU_CLUSTER = "tansu_cluster"


#: The bucket the broker keeps its log in.
BROKER_BUCKET = "tansu"


class StackError(RuntimeError):
    """A server could not be found, started, reached or stopped; the message says why."""


@dataclass(frozen=True)
class ServerInfo:
    """One server as :func:`up` left it."""

    name: str
    address: str
    pid: int | None = None  # None: external, not ours
    log: Path | None = None
    reused: bool = False  # was running already


@dataclass(frozen=True)
class StackInfo:
    """What :func:`up` did."""

    embedded: bool
    kafka_bootstrap: str
    clickhouse_url: str  # without password
    servers: tuple[ServerInfo, ...]
    topics_created: tuple[str, ...]
    migrations_applied: tuple[str, ...]
    finance_password_file: Path | None
    #: where the `default` (pipeline) user's generated password is (None: given, or external)
    admin_password_file: Path | None = None
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0


def remove_topic_files(settings: Settings, topic: str) -> bool:
    """Remove a deleted topic's files from the embedded broker's S3 folder.

    tansu deletes a topic from its metadata, then fails to delete its objects in the
    local store (localbucket answers 501 to S3's multi-object delete; docs/infra.md), so
    the files would stay forever. Only for a topic the broker no longer lists.
    """
    folder = settings.state_dir / "s3" / BROKER_BUCKET / "clusters" / TANSU_CLUSTER / "topics" / topic
    if folder.parent.name != "topics" or not folder.is_dir():
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True
