"""The embedded ClickHouse server's config and users: the pipeline's ``default`` user and the
read-only ``finance`` user, each with a password generated once into a file of mode 0600
under the state folder (or given: ``CDRFLOW_CLICKHOUSE_PASSWORD``,
``CDRFLOW_FINANCE_PASSWORD``); only their SHA-256 is written to users.xml. Both users
connect from this machine only, and the server listens on 127.0.0.1 only."""

from __future__ import annotations

import os
import secrets
import shutil
from hashlib import sha256
from pathlib import Path
from xml.sax.saxutils import escape

from pydantic import SecretStr

from streams.settings import EMBEDDED_HOST, Settings
from streams.stack.embedded import StackError


def finance_password(settings: Settings) -> str | None:
    """The embedded ClickHouse's ``finance`` password (``CDRFLOW_FINANCE_PASSWORD``, else
    the generated one), or None before the first ``up``."""
    if settings.finance_password is not None:
        return settings.finance_password.get_secret_value()
    path = _finance_password_file(settings)
    return path.read_text().strip() if path.exists() else None


def _clickhouse_server_command() -> list[str]:
    # Debian's package ships /usr/sbin/clickhouse-server; upstream's one /usr/bin/clickhouse.
    for path in (
        shutil.which("clickhouse-server"),
        "/usr/sbin/clickhouse-server",
        "/usr/bin/clickhouse-server",
    ):
        if path and os.access(path, os.X_OK):
            return [path]
    if os.access("/usr/bin/clickhouse", os.X_OK):
        return ["/usr/bin/clickhouse", "server"]
    raise StackError(
        "the ClickHouse server is not installed (no clickhouse-server in PATH, /usr/sbin or "
        "/usr/bin): run `make setup` (scripts/setup-servers.sh)"
    )


def _clickhouse_dir(settings: Settings) -> Path:
    return settings.state_dir / "clickhouse"


def _finance_password_file(settings: Settings) -> Path:
    return _clickhouse_dir(settings) / "finance.password"


def _password(given: SecretStr | None, variable: str, path: Path) -> tuple[str, str]:
    """A user's password and where it is said to be: given by the operator (only its hash
    is written), else generated once into ``path`` (mode 0600), kept with the data it protects."""
    if given is not None:
        return given.get_secret_value(), variable
    if not path.exists():
        write_secret_file(path, secrets.token_urlsafe(18) + "\n")
    return path.read_text().strip(), f"password in {escape(str(path))}"


def write_secret_file(path: Path, text: str) -> None:
    """Create ``path`` readable and writable by its owner only (0600) and write ``text``;
    refused if it exists (a secret is never written through a link planted there)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _write_clickhouse_config(settings: Settings) -> None:
    """Write config.xml and users.xml (when changed) and the passwords (once)."""
    home = _clickhouse_dir(settings)
    logs = settings.state_dir / "logs"
    for folder in (home / "data", home / "tmp", home / "user_files", logs):
        folder.mkdir(parents=True, exist_ok=True)
    password, where = _password(settings.finance_password, "CDRFLOW_FINANCE_PASSWORD", _finance_password_file(settings))
    password_hash = sha256(password.encode()).hexdigest()
    admin, admin_where = _password(
        settings.clickhouse_password, "CDRFLOW_CLICKHOUSE_PASSWORD", settings.clickhouse_admin_password_file
    )
    admin_hash = sha256(admin.encode()).hexdigest()

    def path(folder: Path) -> str:
        return escape(str(folder)) + "/"

    config = f"""<?xml version="1.0"?>
<!-- Written by cdrflow up (streams/stack/clickhouse_config.py); rewritten on each up. -->
<yandex>
    <logger>
        <level>warning</level>
        <log>{escape(str(logs / "clickhouse-server.log"))}</log>
        <errorlog>{escape(str(logs / "clickhouse-server.err.log"))}</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>
    <listen_host>{EMBEDDED_HOST}</listen_host>
    <tcp_port>{settings.clickhouse_tcp_port}</tcp_port>
    <http_port>{settings.clickhouse_http_port}</http_port>
    <path>{path(home / "data")}</path>
    <tmp_path>{path(home / "tmp")}</tmp_path>
    <user_files_path>{path(home / "user_files")}</user_files_path>
    <format_schema_path>{path(home / "format_schemas")}</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <!-- DateTime values read the same on every machine. -->
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
"""
    users = f"""<?xml version="1.0"?>
<!-- Written by cdrflow up (streams/stack/clickhouse_config.py); rewritten on each up. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>10000000000</max_memory_usage>
        </default>
        <readonly>
            <readonly>1</readonly>
        </readonly>
    </profiles>
    <users>
        <!-- The pipeline: all rights, from this machine only; {admin_where}. -->
        <default>
            <password_sha256_hex>{admin_hash}</password_sha256_hex>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <!-- Finance: SELECT only (readonly=1); {where}. -->
        <finance>
            <password_sha256_hex>{password_hash}</password_sha256_hex>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>readonly</profile>
            <quota>default</quota>
        </finance>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""
    _write_if_changed(home / "config.xml", config)
    _write_if_changed(home / "users.xml", users)


def _write_if_changed(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` when it differs, through a new file of mode 0600."""
    if not path.exists() or path.read_text() != text:
        partial = path.with_name(path.name + ".partial")
        partial.unlink(missing_ok=True)
        write_secret_file(partial, text)
        partial.replace(path)


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
