"""The embedded ClickHouse server's config and users: the pipeline's ``default`` user and the
read-only ``finance`` user whose password is generated once (only its SHA-256 is written)."""

from __future__ import annotations

import os
import secrets
import shutil
from hashlib import sha256
from pathlib import Path
from xml.sax.saxutils import escape

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


def _write_clickhouse_config(settings: Settings) -> None:
    """Write config.xml and users.xml (when changed) and the finance password (once)."""
    home = _clickhouse_dir(settings)
    logs = settings.state_dir / "logs"
    for folder in (home / "data", home / "tmp", home / "user_files", logs):
        folder.mkdir(parents=True, exist_ok=True)
    password_file = _finance_password_file(settings)
    if settings.finance_password is not None:
        # Given by the operator (CDRFLOW_FINANCE_PASSWORD): only its hash is written.
        password = settings.finance_password.get_secret_value()
        where = "CDRFLOW_FINANCE_PASSWORD"
    else:
        if not password_file.exists():
            # Generated once; kept with the data it protects.
            password_file.touch(mode=0o600)
            password_file.write_text(secrets.token_urlsafe(18) + "\n")
        password = password_file.read_text().strip()
        where = f"password in {escape(str(password_file))}"
    password_hash = sha256(password.encode()).hexdigest()

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
        <!-- The pipeline: all rights, from this machine only. -->
        <default>
            <password></password>
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
    if not path.exists() or path.read_text() != text:
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        partial.replace(path)


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
