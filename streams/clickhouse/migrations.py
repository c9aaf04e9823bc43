"""Apply versioned ClickHouse schema files, each once, in order.

A migration is a file ``NNNN_name.sql`` (four digits, then a lowercase name) in the
migrations folder (``schemas/migrations/`` by default). Its statements are separated by
a ``;`` at the end of a line. The runner records every applied file, with a checksum of
its text, in the table ``schema_migrations`` of the client's database, and refuses to go
on if an applied file was edited afterwards: a change to the schema is a new file.

ClickHouse has no transactional DDL: when a statement fails, the statements before it
stay applied and the file is not recorded, so the next run starts that file again. Write
statements that can run twice where the server allows it (``CREATE TABLE IF NOT EXISTS``,
``DROP TABLE IF EXISTS``; ClickHouse 18.16 has no ``ADD COLUMN IF NOT EXISTS``, so keep
an ``ALTER`` alone in its file). Use unqualified table names: the database is the
client's (the one named by ``CDRFLOW_CLICKHOUSE_URL``, ``cdrflow`` by default). No
``INSERT ... VALUES`` with inline values: over the native protocol it hangs (the server
waits for a data block), so it is refused; ``INSERT ... SELECT`` works.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from clickhouse_driver import Client

import schemas

#: Where the project's migrations live (package data of ``schemas``).
MIGRATIONS_DIR = Path(schemas.__file__).resolve().parent / "migrations"

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_STATEMENT_END = re.compile(r";[ \t]*(?:\r?\n|$)")
_COMMENT_LINE = re.compile(r"^\s*--.*$", re.MULTILINE)
_INLINE_INSERT = re.compile(r"^\s*INSERT\b.*\bVALUES\b", re.IGNORECASE | re.DOTALL)

# MergeTree with ORDER BY runs on ClickHouse 18.16 and on current versions alike.
_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime
) ENGINE = MergeTree ORDER BY version
"""


class MigrationError(RuntimeError):
    """A migration file is misnamed, was changed after it was applied, or failed."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        """The file's statements: split at each ``;`` that ends a line.

        Parts holding only blank lines and ``--`` comments are dropped (ClickHouse refuses
        an empty query).
        """
        return [part.strip() for part in _STATEMENT_END.split(self.sql) if not _is_blank(part)]


def read_migrations(directory: Path) -> list[Migration]:
    """The migration files of ``directory``, in version order.

    Raises
    ------
    MigrationError
        When a ``.sql`` file is not named ``NNNN_name.sql`` or two files share a version.
    """
    migrations: dict[int, Migration] = {}
    for path in sorted(Path(directory).glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(
                f"{path}: migration files must be named NNNN_name.sql "
                "(four digits, an underscore, lowercase letters, digits or underscores)"
            )
        version = int(match["version"])
        if version in migrations:
            raise MigrationError(
                f"{path}: version {version:04d} is also used by {migrations[version].path.name}"
            )
        migration = Migration(version, match["name"], path, path.read_text())
        for number, statement in enumerate(migration.statements(), start=1):
            if _INLINE_INSERT.match(_COMMENT_LINE.sub("", statement)):
                # clickhouse-driver sends the query, then the server waits for a data block
                # that never comes: the statement hangs until the client's timeout.
                raise MigrationError(
                    f"{path}: statement {number} is an INSERT ... VALUES with inline values, "
                    "which hangs over the native protocol; write INSERT ... SELECT instead"
                )
        migrations[version] = migration
    return [migrations[version] for version in sorted(migrations)]


def apply_migrations(client: Client, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the migrations of ``directory`` not applied yet; return their file names.

    Parameters
    ----------
    client
        A ``clickhouse_driver.Client`` connected to the target database.
    directory
        The folder of ``NNNN_name.sql`` files.

    Examples
    --------
    >>> from clickhouse_driver import Client  # doctest: +SKIP
    >>> apply_migrations(Client("127.0.0.1", port=19000, database="cdrflow"))  # doctest: +SKIP
    ['0001_cdr.sql', '0002_rated_calls.sql']
    """
    migrations = read_migrations(directory)
    client.execute(_CREATE_TABLE)
    applied = dict(client.execute("SELECT version, checksum FROM schema_migrations"))
    for migration in migrations:
        if migration.version in applied and applied[migration.version] != migration.checksum:
            raise MigrationError(
                f"{migration.path}: this migration was applied already and its text has "
                "changed since; put schema changes in a new migration file"
            )
    done: list[str] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        for number, statement in enumerate(migration.statements(), start=1):
            try:
                client.execute(statement)
            except Exception as error:
                # ClickHouse appends its server's stack trace: not for people.
                reason = str(error).split("Stack trace:")[0].strip()
                raise MigrationError(
                    f"{migration.path}: statement {number} failed: {reason}"
                ) from error
        record = (migration.version, migration.name, migration.checksum, datetime.now(UTC))
        client.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES", [record]
        )
        done.append(migration.path.name)
    return done


def _is_blank(sql: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in sql.splitlines())
