"""The one configuration of cdrflow, read from ``CDRFLOW_*`` variables once and passed down.

Two ways to run, and nothing else in the code knows which one it is:

- **embedded** (default): ``cdrflow up`` starts a Kafka-protocol broker, its S3 store and
  a ClickHouse server as child processes under :attr:`Settings.state_dir`, listening on
  127.0.0.1 at the ``*_port`` settings;
- **external**: ``CDRFLOW_KAFKA_BOOTSTRAP`` and ``CDRFLOW_CLICKHOUSE_URL`` name a real
  Kafka and ClickHouse, and nothing is started.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypedDict
from urllib.parse import quote, unquote, urlsplit

from pydantic import AwareDatetime, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from rating.bounds import TimeBounds

#: Where the embedded servers listen; they are for this machine only.
EMBEDDED_HOST = "127.0.0.1"
#: The database cdrflow keeps its tables in unless the ClickHouse URL names another.
DEFAULT_DATABASE = "cdrflow"
#: ClickHouse's native-protocol port when a URL does not give one.
CLICKHOUSE_NATIVE_PORT = 9000
#: Seconds between two sends of a live feed, on the embedded broker and on a Kafka.
EMBEDDED_EDGE_PASS_S = 1.0
EXTERNAL_EDGE_PASS_S = 0.5

Port = Annotated[int, Field(ge=1, le=65535)]


class ClickHouseParams(TypedDict):
    """Connection parameters in the form ``clickhouse_driver.Client(**params)`` takes."""

    host: str
    port: int
    user: str
    password: str
    database: str


class Settings(BaseSettings):
    """Everything cdrflow reads from its environment.

    Each field is read from ``CDRFLOW_<FIELD NAME>`` (for example ``state_dir`` from
    ``CDRFLOW_STATE_DIR``); keyword arguments override the environment.

    Examples
    --------
    >>> s = Settings(state_dir="/tmp/demo-state", kafka_bootstrap=None, clickhouse_url=None)
    >>> s.embedded, s.kafka_servers()
    (True, ['127.0.0.1:19092'])
    >>> s = Settings(
    ...     kafka_bootstrap="k1:9092,k2:9092",
    ...     clickhouse_url="clickhouse://finance:s3cret@ch:9000/billing",
    ... )
    >>> s.embedded, s.kafka_servers(), s.redacted_clickhouse_url()
    (False, ['k1:9092', 'k2:9092'], 'clickhouse://finance@ch:9000/billing')
    """

    # hide_input_in_errors: a bad CDRFLOW_CLICKHOUSE_URL must not print its password.
    model_config = SettingsConfigDict(
        env_prefix="CDRFLOW_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    state_dir: Path = Field(
        Path(".cdrflow"),
        description="Folder of the embedded servers' data, logs and pid files "
        "(relative paths are taken from the current folder when the settings are read).",
    )
    kafka_bootstrap: str | None = Field(
        None, description="Comma-separated host:port of an external Kafka; unset = embedded."
    )
    clickhouse_url: str | None = Field(
        None,
        description="clickhouse://user:password@host:9000/database of an external ClickHouse "
        "(native protocol); unset = embedded.",
    )
    topic_partitions: int = Field(4, ge=1, description="Partitions of each cdrflow topic.")
    alert_webhook: str | None = Field(None, description="URL alerts are POSTed to, if set.")
    finance_password: SecretStr | None = Field(
        None,
        description="Password of the read-only `finance` user of the embedded ClickHouse; "
        "unset = one generated once into STATE/clickhouse/finance.password. Never printed.",
    )
    app_id: str = Field("cdrflow", min_length=1, description="Faust app id / consumer group.")
    producer_max_request_bytes: int = Field(
        1_048_576,
        ge=64 * 1024,
        description=(
            "Largest produce request the worker sends (Kafka's default message limit). An output the "
            "broker refuses for its size blocks its account, not the worker (docs/streaming.md)."
        ),
    )
    state_roll_bytes: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        description=(
            "A partition's state log starts a new generation (a snapshot) once this much was appended "
            "to it, or its live size if larger: what a restart reads (docs/streaming.md)."
        ),
    )
    # rating.horizon.DEFAULT_HORIZON_MONTHS (not imported: settings load without polars;
    # tests/test_horizon.py holds the two equal)
    horizon_months: int = Field(
        1,
        ge=0,
        le=24,
        description=(
            "Months before an account's latest call month that are still rated; older calls are "
            "rejected `late` (docs/rules.md, 'The horizon'). Offline `rate` takes --horizon-months."
        ),
    )
    # rating.bounds.TimeBounds' defaults (tests/test_time_bounds.py holds them equal)
    earliest_call: AwareDatetime = Field(
        datetime(2001, 1, 1, tzinfo=UTC),
        description="Calls charged before this instant are rejected `invalid_time` (docs/rules.md, 'Times that "
        "are no call's'). Offline `rate` takes --earliest-call.",
    )
    latest_call: AwareDatetime = Field(
        datetime(2100, 1, 1, tzinfo=UTC),
        description="Calls charged at or after this instant are rejected `invalid_time`. `rate`: --latest-call.",
    )
    ahead_hours: float = Field(
        24.0,
        ge=0,
        description="Calls charged more than this many hours after their line was read are rejected "
        "`invalid_time` (a switch clock ahead). `rate`: --ahead-hours.",
    )
    topic_prefix: str = Field(
        "", description="Prefix of every topic name the ledger commands use (several pipelines on one broker)."
    )
    tax_rates: Path | None = Field(
        None,
        description="The tax file invoices take the seller and VAT rates from (issue 24); unset = the shipped "
        "tariffs/tax_rates.toml.",
    )

    edge_pass_s: float | None = Field(
        None,
        gt=0,
        description="Seconds between two sends of `ingest --tail` and `route`; unset = 1 on the embedded "
        "broker, 0.5 on an external Kafka (docs/streaming.md, Live feeds: latency).",
    )

    kafka_port: Port = Field(19092, description="Port of the embedded broker.")
    clickhouse_tcp_port: Port = Field(19000, description="Native port of embedded ClickHouse.")
    clickhouse_http_port: Port = Field(18123, description="HTTP port of embedded ClickHouse.")
    s3_port: Port = Field(19500, description="Port of the embedded broker's S3 store.")

    tansu_bin: Path | None = Field(
        None,
        description="The tansu broker binary; unset = .tools/bin/tansu of the project "
        "(what `make setup` installs), then PATH.",
    )

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, value: Path) -> Path:
        # Fixed at read time so pid files and server configs never depend on a later cwd.
        return value.expanduser().absolute()

    @field_validator("finance_password")
    @classmethod
    def _blank_password_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None or not value.get_secret_value() else value

    @field_validator("kafka_bootstrap", "clickhouse_url", "alert_webhook")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        # `CDRFLOW_KAFKA_BOOTSTRAP= cdrflow up` means "not set", as in a shell.
        if value is None or not value.strip():
            return None
        return value.strip()

    @field_validator("clickhouse_url")
    @classmethod
    def _parseable_clickhouse_url(cls, value: str | None) -> str | None:
        # Runs after _blank_is_unset (validators run in the order they are defined).
        if value is not None:
            _parse_clickhouse_url(value)
        return value

    @property
    def embedded(self) -> bool:
        """True when neither an external Kafka nor an external ClickHouse is named."""
        return self.kafka_bootstrap is None and self.clickhouse_url is None

    @property
    def embedded_kafka(self) -> bool:
        """True when the broker is the embedded one (``CDRFLOW_KAFKA_BOOTSTRAP`` unset)."""
        return self.kafka_bootstrap is None

    @property
    def embedded_clickhouse(self) -> bool:
        """True when ClickHouse is the embedded one (``CDRFLOW_CLICKHOUSE_URL`` unset)."""
        return self.clickhouse_url is None

    def edge_pass(self) -> float:
        """Seconds between two sends of a live feed (``edge_pass_s``, or by broker).

        Each send is a message per account it touches and a record batch per ``cdr.raw``
        partition. On the embedded broker (one 2-core machine for everything) a pass every
        1 s: bench/latency_bench.py at 2,000 accounts, p99 append -> ClickHouse 2.4 s at 200
        lines/s and 5.4 s at 2,000 (every 2 s: 3.5 s and 5.8 s; every 0.5 s the worker takes
        a message per line); a Kafka on its own machines, every 0.5 s.

        Examples
        --------
        >>> Settings(kafka_bootstrap=None).edge_pass(), Settings(kafka_bootstrap="k1:9092").edge_pass()
        (1.0, 0.5)
        >>> Settings(kafka_bootstrap="k1:9092", edge_pass_s=0.2).edge_pass()
        0.2
        """
        if self.edge_pass_s is not None:
            return self.edge_pass_s
        return EMBEDDED_EDGE_PASS_S if self.embedded_kafka else EXTERNAL_EDGE_PASS_S

    def time_bounds(self) -> TimeBounds:
        """The charge times rated at all (``rating.bounds``), from the three settings."""
        from rating.bounds import TimeBounds  # polars: only for those that rate

        return TimeBounds(self.earliest_call, self.latest_call, timedelta(hours=self.ahead_hours))

    def kafka_servers(self) -> list[str]:
        """The bootstrap servers as ``host:port`` strings, as kafka-python takes them."""
        if self.kafka_bootstrap is None:
            return [f"{EMBEDDED_HOST}:{self.kafka_port}"]
        return [server.strip() for server in self.kafka_bootstrap.split(",") if server.strip()]

    def clickhouse_params(self) -> ClickHouseParams:
        """Host, port, user, password and database of the pipeline's ClickHouse."""
        if self.clickhouse_url is None:
            return ClickHouseParams(
                host=EMBEDDED_HOST,
                port=self.clickhouse_tcp_port,
                user="default",
                password="",
                database=DEFAULT_DATABASE,
            )
        return _parse_clickhouse_url(self.clickhouse_url)

    def redacted_clickhouse_url(self) -> str:
        """The ClickHouse URL without its password, fit for logs and ``status``."""
        params = self.clickhouse_params()
        return (
            f"clickhouse://{quote(params['user'], safe='')}@{params['host']}:{params['port']}"
            f"/{quote(params['database'], safe='')}"
        )


def _parse_clickhouse_url(url: str) -> ClickHouseParams:
    parts = urlsplit(url)
    expected = "clickhouse://user:password@host:9000/database"
    # Error messages show the URL without its password.
    shown = url.replace(f":{parts.password}@", ":***@") if parts.password else url
    if parts.scheme != "clickhouse" or not parts.hostname:
        raise ValueError(f"expected a URL like {expected}, got {shown!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"query options are not supported in the ClickHouse URL, got {shown!r}")
    try:
        port = parts.port or CLICKHOUSE_NATIVE_PORT
    except ValueError:
        raise ValueError(f"the port of {shown!r} is not a number (expected {expected})") from None
    database = unquote(parts.path.strip("/")) or DEFAULT_DATABASE
    if "/" in database:
        raise ValueError(f"expected one database name after the host, got {shown!r}")
    return ClickHouseParams(
        host=parts.hostname,
        port=port,
        user=unquote(parts.username or "") or "default",
        password=unquote(parts.password or ""),
        database=database,
    )
