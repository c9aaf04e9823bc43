"""The one configuration of cdrflow, read from ``CDRFLOW_*`` variables once and passed down.

Two ways to run, and nothing else in the code knows which one it is:

- **embedded** (default): ``cdrflow up`` starts a Kafka-protocol broker, its S3 store and
  a ClickHouse server as child processes under :attr:`Settings.state_dir`, listening on
  127.0.0.1 at the ``*_port`` settings;
- **external**: ``CDRFLOW_KAFKA_BOOTSTRAP`` and ``CDRFLOW_CLICKHOUSE_URL`` name a real
  Kafka and ClickHouse, and nothing is started.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypedDict
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from pydantic import AwareDatetime, Field, SecretStr, field_validator, model_validator
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
    #: TLS on the native protocol (ClickHouse's ``tcp_port_secure``), checked against ``ca_certs``
    secure: bool
    verify: bool
    ca_certs: str | None


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@dataclass(frozen=True)
class KafkaAccess:
    """Where the brokers are and how to talk to them: what every Kafka client is made from.

    kafka-python, aiokafka and Faust name the same things differently; :meth:`kafka_python`
    and :meth:`aiokafka` give each its keyword arguments (Faust takes aiokafka's through
    its ``broker_credentials``: streams.worker.app). The password is a ``SecretStr``:
    printing the object shows ``**********``.

    Examples
    --------
    >>> access = KafkaAccess(("k1:9093",), "SASL_SSL", "SCRAM-SHA-512", "cdrflow", SecretStr("pw"))
    >>> options = access.kafka_python()
    >>> options["security_protocol"], options["sasl_mechanism"], options["sasl_plain_username"]
    ('SASL_SSL', 'SCRAM-SHA-512', 'cdrflow')
    >>> "pw" in repr(access)
    False
    >>> KafkaAccess(("127.0.0.1:19092",)).aiokafka()
    {'bootstrap_servers': ['127.0.0.1:19092'], 'security_protocol': 'PLAINTEXT'}
    """

    servers: tuple[str, ...]
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    def _sasl_options(self) -> dict[str, Any]:
        if not self.sasl:
            return {}
        return {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_username,
            "sasl_plain_password": self.sasl_password.get_secret_value() if self.sasl_password else None,
        }

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments of kafka-python's ``KafkaProducer``, ``KafkaConsumer`` and
        ``KafkaAdminClient`` (bootstrap servers included)."""
        options: dict[str, Any] = {"bootstrap_servers": list(self.servers), "security_protocol": self.security_protocol}
        if self.tls:
            options.update(
                ssl_cafile=self.ssl_cafile,
                ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
                ssl_check_hostname=self.ssl_check_hostname,
            )
        return {**options, **self._sasl_options()}

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments of aiokafka's consumer, producer and admin client."""
        options: dict[str, Any] = {"bootstrap_servers": list(self.servers), "security_protocol": self.security_protocol}
        if self.tls:
            options["ssl_context"] = self.ssl_context()
        return {**options, **self._sasl_options()}

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the brokers' certificates (None without TLS): the system's
        CAs, or ``ssl_cafile``; a client certificate when ``ssl_certfile`` is given."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ssl_cafile)
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context


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
    clickhouse_password: SecretStr | None = Field(
        None,
        description="Password of the pipeline's ClickHouse user: on a cluster it replaces the URL's "
        "(keep secrets out of URLs); embedded, the `default` user's, else one generated once into "
        "STATE/clickhouse/admin.password (mode 0600). Never printed.",
    )
    clickhouse_password_file: Path | None = Field(
        None, description="A file holding CDRFLOW_CLICKHOUSE_PASSWORD (a Docker or Kubernetes secret)."
    )
    clickhouse_secure: bool = Field(
        False, description="TLS to ClickHouse's native port (its tcp_port_secure, usually 9440)."
    )
    clickhouse_ca_file: Path | None = Field(
        None, description="CA certificate(s) that signed ClickHouse's; unset = the system's."
    )
    clickhouse_verify: bool = Field(True, description="Check ClickHouse's certificate (never turn off in production).")

    kafka_security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (a managed Kafka: SASL_SSL)."
    )
    kafka_sasl_mechanism: SaslMechanism = Field("PLAIN", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password. Never printed.")
    kafka_sasl_password_file: Path | None = Field(None, description="A file holding the SASL password.")
    kafka_ssl_cafile: Path | None = Field(None, description="CA certificate(s) of the brokers; unset = the system's.")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate (mutual TLS).")
    kafka_ssl_keyfile: Path | None = Field(None, description="Client certificate's key (mutual TLS).")
    kafka_ssl_check_hostname: bool = Field(True, description="Check that the broker's certificate names its host.")

    topic_replication_factor: int | None = Field(
        None,
        ge=1,
        description="Replicas of each topic cdrflow creates; unset = 1 on the embedded broker, 3 on a "
        "Kafka cluster (docs/operations.md: the topics).",
    )
    topic_min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description="min.insync.replicas of each topic: a write is acknowledged once this many replicas "
        "have it (acks=all); unset = 1 embedded, 2 on a cluster (at most the replication factor).",
    )

    alert_webhook: str | None = Field(
        None, description="URL alerts are POSTed to, if set. Logged without its password or query."
    )
    alert_webhook_token: SecretStr | None = Field(
        None, description="Sent as `Authorization: Bearer <token>` with each alert. Never printed."
    )
    alert_webhook_token_file: Path | None = Field(None, description="A file holding the webhook token.")
    alert_webhook_timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for the webhook to answer one POST (connect included)."
    )
    alert_webhook_tries: int = Field(
        4, ge=1, le=20, description="POSTs of one alert before it is given up (logged; it stays in ClickHouse)."
    )
    finance_password: SecretStr | None = Field(
        None,
        description="Password of the read-only `finance` user of the embedded ClickHouse; "
        "unset = one generated once into STATE/clickhouse/finance.password. Never printed.",
    )
    finance_password_file: Path | None = Field(None, description="A file holding CDRFLOW_FINANCE_PASSWORD.")
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

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        # CDRFLOW_<SECRET>_FILE names a file holding the secret (a Docker or Kubernetes
        # secret): read here, so that the secret itself is in no variable and no command line.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in _SECRET_FIELDS:
            path = data.get(f"{name}_file")
            if path in (None, ""):
                continue
            try:
                data[name] = Path(path).expanduser().read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as error:
                reason = getattr(error, "strerror", None) or error
                raise ValueError(f"CDRFLOW_{name.upper()}_FILE: cannot read {path} ({reason})") from None
        return data

    @field_validator("finance_password", "clickhouse_password", "kafka_sasl_password", "alert_webhook_token")
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

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.embedded_kafka and self.kafka_security_protocol != "PLAINTEXT":
            raise ValueError(
                f"CDRFLOW_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs CDRFLOW_KAFKA_BOOTSTRAP: "
                "the embedded broker listens on 127.0.0.1 in PLAINTEXT only"
            )
        if self.kafka_security_protocol.startswith("SASL_") and (
            not self.kafka_sasl_username or self.kafka_sasl_password is None
        ):
            raise ValueError(
                f"CDRFLOW_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs CDRFLOW_KAFKA_SASL_USERNAME "
                "and CDRFLOW_KAFKA_SASL_PASSWORD (or CDRFLOW_KAFKA_SASL_PASSWORD_FILE)"
            )
        if self.alert_webhook_token is not None and self.alert_webhook and urlsplit(self.alert_webhook).password:
            raise ValueError("CDRFLOW_ALERT_WEBHOOK has a user:password and CDRFLOW_ALERT_WEBHOOK_TOKEN is set: "
                             "a request carries one Authorization, choose one")
        if self.embedded_clickhouse and self.clickhouse_secure:
            raise ValueError("CDRFLOW_CLICKHOUSE_SECURE needs CDRFLOW_CLICKHOUSE_URL: the embedded ClickHouse "
                             "listens on 127.0.0.1 without TLS")
        if self.min_insync_replicas() > self.replication_factor():
            raise ValueError(
                f"CDRFLOW_TOPIC_MIN_INSYNC_REPLICAS ({self.min_insync_replicas()}) is more than the replication "
                f"factor ({self.replication_factor()}): no write could be acknowledged"
            )
        _remember_secrets(self.secret_values())
        return self

    def secret_values(self) -> list[str]:
        """Every secret these settings hold (passwords, tokens, a URL's password): what
        :func:`redact` hides wherever text leaves the process."""
        values = [
            secret.get_secret_value()
            for secret in (self.clickhouse_password, self.kafka_sasl_password, self.alert_webhook_token,
                           self.finance_password)
            if secret is not None
        ]
        for url in (self.clickhouse_url, self.alert_webhook):
            if url:
                values.extend(_url_secrets(url))
        return [value for value in values if value]

    @property
    def clickhouse_admin_password_file(self) -> Path:
        """Where the embedded ClickHouse's generated ``default`` password is kept (mode 0600)."""
        return self.state_dir / "clickhouse" / "admin.password"

    def replication_factor(self) -> int:
        """Replicas of each topic cdrflow creates (``topic_replication_factor``, else by broker)."""
        if self.topic_replication_factor is not None:
            return self.topic_replication_factor
        return 1 if self.embedded_kafka else CLUSTER_REPLICATION_FACTOR

    def min_insync_replicas(self) -> int:
        """``min.insync.replicas`` of each topic cdrflow creates.

        Examples
        --------
        >>> Settings(kafka_bootstrap=None).min_insync_replicas()
        1
        >>> Settings(kafka_bootstrap="k1:9092").min_insync_replicas()
        2
        >>> Settings(kafka_bootstrap="k1:9092", topic_replication_factor=1).min_insync_replicas()
        1
        """
        if self.topic_min_insync_replicas is not None:
            return self.topic_min_insync_replicas
        return min(CLUSTER_MIN_INSYNC_REPLICAS, self.replication_factor()) if not self.embedded_kafka else 1

    def kafka_access(self) -> KafkaAccess:
        """The brokers and their security settings: what every Kafka client is made from."""
        return KafkaAccess(
            servers=tuple(self.kafka_servers()),
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None,
            ssl_certfile=str(self.kafka_ssl_certfile) if self.kafka_ssl_certfile else None,
            ssl_keyfile=str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
            ssl_check_hostname=self.kafka_ssl_check_hostname,
        )

    def redacted_webhook(self) -> str | None:
        """The alert webhook's URL fit for logs: no password, query values hidden."""
        return None if self.alert_webhook is None else redact_url(self.alert_webhook)

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
        """Host, port, user, password, database and TLS of the pipeline's ClickHouse.

        Embedded, the user is ``default`` with ``CDRFLOW_CLICKHOUSE_PASSWORD`` or the
        password ``cdrflow up`` generated (empty before the first ``up``: then the server
        refuses, as it should).
        """
        tls = {
            "secure": self.clickhouse_secure,
            "verify": self.clickhouse_verify,
            "ca_certs": str(self.clickhouse_ca_file) if self.clickhouse_ca_file else None,
        }
        if self.clickhouse_url is None:
            if self.clickhouse_password is not None:
                password = self.clickhouse_password.get_secret_value()
            else:
                try:
                    password = self.clickhouse_admin_password_file.read_text().strip()
                except OSError:
                    password = ""
                _remember_secrets([password])
            return ClickHouseParams(
                host=EMBEDDED_HOST,
                port=self.clickhouse_tcp_port,
                user="default",
                password=password,
                database=DEFAULT_DATABASE,
                **tls,  # type: ignore[typeddict-item]
            )
        params = _parse_clickhouse_url(self.clickhouse_url)
        if self.clickhouse_password is not None:
            params["password"] = self.clickhouse_password.get_secret_value()
        return ClickHouseParams(**params, **tls)  # type: ignore[typeddict-item]

    def redacted_clickhouse_url(self) -> str:
        """The ClickHouse URL without its password, fit for logs and ``status``."""
        params = self.clickhouse_params()
        return (
            f"clickhouse://{quote(params['user'], safe='')}@{params['host']}:{params['port']}"
            f"/{quote(params['database'], safe='')}" + (" (TLS)" if params["secure"] else "")
        )


#: Replicas and min.insync.replicas of cdrflow's topics on a Kafka cluster unless set: a
#: write is acknowledged once two of three brokers have it, so one broker can be lost.
CLUSTER_REPLICATION_FACTOR = 3
CLUSTER_MIN_INSYNC_REPLICAS = 2
#: The secret fields that can also be read from a file (``CDRFLOW_<NAME>_FILE``).
_SECRET_FIELDS = ("clickhouse_password", "kafka_sasl_password", "alert_webhook_token", "finance_password")
#: Secrets of every Settings made in this process (shorter ones would hide ordinary words).
_KNOWN_SECRETS: set[str] = set()
_MIN_SECRET_LENGTH = 4
_HIDDEN = "***"


def _remember_secrets(values: Iterable[str]) -> None:
    _KNOWN_SECRETS.update(value for value in values if len(value) >= _MIN_SECRET_LENGTH)


def _url_secrets(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [unquote(parts.password)] if parts.password else []
    if parts.password:
        found.append(parts.password)
    found += [value for _key, value in parse_qsl(parts.query) if value]
    return found


def redact_url(url: str) -> str:
    """A URL without its password and with its query values hidden (tokens often ride there).

    Examples
    --------
    >>> redact_url("https://ops:s3cret@hooks.example.com/alerts?token=abc&team=billing")
    'https://ops:***@hooks.example.com/alerts?token=***&team=***'
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", f":{_HIDDEN}@", 1)
    query = urlencode([(key, _HIDDEN) for key, _value in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str) -> str:
    """``text`` with every secret of the settings read in this process replaced by ``***``.

    The command line's error messages and every log record go through it
    (:func:`install_log_redaction`), so a secret that a library puts in an error (a
    URL, a failed login) never reaches a terminal or a log file.

    Examples
    --------
    >>> _ = Settings(kafka_bootstrap=None, clickhouse_url=None, finance_password="correct-horse")
    >>> redact("login failed for finance:correct-horse")
    'login failed for finance:***'
    """
    if not _KNOWN_SECRETS or not text:
        return text
    for secret in sorted(_KNOWN_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, _HIDDEN)
    return text


class _RedactedRecord(logging.LogRecord):
    """A log record whose message and traceback text go through :func:`redact`.

    Both are redacted where they are read or set (``getMessage``; ``exc_text``, which
    formatters fill in), not when the record is made: ``logging.makeLogRecord`` and some
    handlers set a record's fields after it is made.
    """

    def getMessage(self) -> str:  # noqa: N802 - logging's name
        return redact(super().getMessage())

    @property
    def exc_text(self) -> str | None:
        return self.__dict__.get("_redacted_exc_text")

    @exc_text.setter
    def exc_text(self, value: str | None) -> None:
        self.__dict__["_redacted_exc_text"] = None if value is None else redact(value)


def install_log_redaction() -> None:
    """Make every log record of this process pass through :func:`redact` (idempotent).

    Installed as the record class (``logging.setLogRecordFactory``), so it covers every
    logger and handler, Faust's and the client libraries' included.
    """
    if logging.getLogRecordFactory() is not _RedactedRecord:
        logging.setLogRecordFactory(_RedactedRecord)


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
    return {  # type: ignore[return-value]  # the TLS keys come from the settings
        "host": parts.hostname,
        "port": port,
        "user": unquote(parts.username or "") or "default",
        "password": unquote(parts.password or ""),
        "database": database,
    }
