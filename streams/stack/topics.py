"""The topics as a contract: what cdrflow wants of each topic, and what the cluster has.

:func:`wanted_topics` lists every topic cdrflow makes (``schemas.topics``: the ones ``cdrflow
up`` creates, the worker's state generations, Faust's own) with the partitions,
replication and configs it wants; :func:`check_topics` compares them with the cluster's
own (Metadata for partitions and replicas, DescribeConfigs for the configs) and sorts what
differs into **problems** (a config that can lose data: a log that expires or is
compacted, fewer replicas or in-sync replicas than the settings ask, unclean leader
election) and **warnings** (a partition count other than the settings', a config the
broker does not report). ``cdrflow topics --check`` fails on a problem; ``cdrflow
status`` lists both.

The embedded broker (tansu) answers DescribeConfigs with the configs a topic was created
with (measured 2026-12-07: ``config_filter`` "all"; "modified" gives nothing) and none of
its defaults; it expires nothing whatever they say. Kafka answers every config.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from kafka.admin import ConfigResource, ConfigResourceType

from schemas.topics import FAUST_TOPICS, STATE_TOPIC, TOPICS, Topic, state_topic_pattern
from streams.kafka.client import _kafka_admin, topic_name
from streams.settings import Settings

Severity = Literal["problem", "warning"]

#: Kafka's defaults, for a config a broker leaves out of its answer (it then goes by them).
_KAFKA_DEFAULTS: Final[dict[str, str]] = {"cleanup.policy": "delete", "retention.ms": "604800000",
                                          "retention.bytes": "-1"}


@dataclass(frozen=True)
class WantedTopic:
    """One topic as cdrflow wants it."""

    name: str
    role: str
    partitions: int
    replication: int
    configs: dict[str, str]
    carries: str
    #: made by: `cdrflow up`, the worker (state generations) or Faust
    made_by: str = "cdrflow up"


@dataclass(frozen=True)
class Finding:
    """One difference between a wanted topic and the cluster's."""

    topic: str
    severity: Severity
    message: str


@dataclass
class TopicsReport:
    """What :func:`check_topics` found: each topic as wanted and as the cluster has it."""

    wanted: list[WantedTopic]
    #: topic -> {"partitions", "replication", "configs"} as the cluster reports them
    actual: dict[str, dict[str, Any]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "problem"]

    def as_json(self) -> dict[str, Any]:
        return {
            "topics": [
                {**asdict(topic), "cluster": self.actual.get(topic.name)} for topic in self.wanted
            ],
            "problems": [asdict(f) for f in self.problems],
            "warnings": [asdict(f) for f in self.findings if f.severity == "warning"],
        }


def wanted_topics(settings: Settings, *, state_topics: Sequence[str] = ()) -> list[WantedTopic]:
    """Every topic cdrflow wants, under the settings' topic prefix: those ``cdrflow up``
    creates, then the given state generations (or their pattern), then Faust's own."""
    prefix = settings.topic_prefix
    replicas, insync = settings.replication_factor(), settings.min_insync_replicas()

    def wanted(name: str, topic: Topic, partitions: int, made_by: str) -> WantedTopic:
        return WantedTopic(name, topic.role, partitions, replicas, topic.created_with(insync), topic.carries, made_by)

    out = [
        wanted(topic_name(name, prefix), topic, topic.partitions or settings.topic_partitions, "cdrflow up")
        for name, topic in TOPICS.items()
    ]
    shown = list(state_topics) or [topic_name(STATE_TOPIC.name.replace("<app_id>", settings.app_id), prefix)]
    out += [wanted(name, STATE_TOPIC, 1, "the worker") for name in shown]
    out += [
        WantedTopic(topic_name(name.replace("<app_id>", settings.app_id), prefix), "faust", 0, replicas, {},
                    "Faust's own (an empty table's changelog, its assignor's leader topic): no cdrflow data", "Faust")
        for name in FAUST_TOPICS
    ]
    return out


def check_topics(settings: Settings, *, timeout_s: float = 15.0) -> TopicsReport:
    """Compare every topic cdrflow wants with the cluster's (raises the client's
    ``KafkaError`` when the broker does not answer)."""
    admin = _kafka_admin(settings.kafka_access(), timeout_s)
    try:
        existing = set(admin.list_topics())
        pattern = re.compile(state_topic_pattern(settings.app_id, settings.topic_prefix))
        states = sorted(name for name in existing if pattern.fullmatch(name))
        report = TopicsReport(wanted_topics(settings, state_topics=states))
        checked = [t for t in report.wanted if t.made_by != "Faust" and t.name in existing]
        for topic in report.wanted:
            if topic.name not in existing and topic.made_by == "cdrflow up":
                report.findings.append(Finding(topic.name, "problem", "missing: run `cdrflow up`, which creates it"))
        if checked:
            described = {t["name"]: t for t in admin.describe_topics([t.name for t in checked])}
            answer = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, t.name, configs=None) for t in checked], config_filter="all"
            ).get("topic", {})
            for topic in checked:
                partitions = described.get(topic.name, {}).get("partitions", [])
                configs = {key: entry.get("value") for key, entry in answer.get(topic.name, {}).items()}
                actual = {
                    "partitions": len(partitions),
                    "replication": min((len(p["replica_nodes"]) for p in partitions), default=0),
                    "configs": configs,
                }
                report.actual[topic.name] = actual
                report.findings += compare(topic, actual)
    finally:
        admin.close()
    return report


def compare(wanted: WantedTopic, actual: dict[str, Any]) -> list[Finding]:
    """What of ``actual`` (partitions, replication, configs as DescribeConfigs gave them)
    differs from ``wanted``, and whether it can lose data.

    Examples
    --------
    >>> from streams.settings import Settings
    >>> raw = wanted_topics(Settings(kafka_bootstrap=None))[0]
    >>> found = compare(raw, {"partitions": 4, "replication": 1,
    ...                       "configs": {"cleanup.policy": "delete", "retention.ms": "604800000"}})
    >>> [(f.severity, f.message) for f in found]  # doctest: +NORMALIZE_WHITESPACE
    [('problem', 'retention.ms is 604800000 (7.0 days): its records are deleted after that; cdrflow wants -1
      (kept forever)'),
     ('warning', 'retention.bytes is not reported by the broker (cdrflow wants -1)'),
     ('warning', 'min.insync.replicas is not reported by the broker (cdrflow wants 1)')]
    """
    found: list[Finding] = []

    def problem(message: str) -> None:
        found.append(Finding(wanted.name, "problem", message))

    def warning(message: str) -> None:
        found.append(Finding(wanted.name, "warning", message))

    if wanted.made_by == "cdrflow up" and actual["partitions"] != wanted.partitions:
        warning(f"{actual['partitions']} partitions, cdrflow wants {wanted.partitions} (left as it is: changing "
                "it would move accounts between partitions)")
    if actual["replication"] < wanted.replication:
        problem(f"{actual['replication']} replica(s), the settings say {wanted.replication}: a broker lost can "
                "lose its records")
    configs: dict[str, str | None] = actual["configs"]
    policy = configs.get("cleanup.policy")
    wanted_policy = wanted.configs.get("cleanup.policy", "delete")
    if policy is None:
        warning(f"cleanup.policy is not reported by the broker (cdrflow wants {wanted_policy})")
    elif wanted_policy == "delete" and "compact" in policy:
        problem(f"cleanup.policy is {policy}: compaction keeps only the last record of each key, and every record "
                "of this topic counts; cdrflow wants delete with retention -1")
    deletes = (policy or _KAFKA_DEFAULTS["cleanup.policy"]) != "compact"
    for key in ("retention.ms", "retention.bytes"):
        value = configs.get(key)
        if value is None:
            warning(f"{key} is not reported by the broker (cdrflow wants {wanted.configs.get(key, '-1')})")
        elif deletes and value != "-1":
            problem(f"{key} is {value}{_readable(key, value)}: its records are deleted after that; cdrflow wants -1 "
                    "(kept forever)")
    insync = configs.get("min.insync.replicas")
    wanted_insync = int(wanted.configs.get("min.insync.replicas", "1"))
    if insync is None:
        warning(f"min.insync.replicas is not reported by the broker (cdrflow wants {wanted_insync})")
    elif _int(insync) < wanted_insync:
        problem(f"min.insync.replicas is {insync}, the settings say {wanted_insync}: a write is acknowledged before "
                "enough replicas hold it")
    if configs.get("unclean.leader.election.enable") == "true":
        problem("unclean.leader.election.enable is true: an out-of-date replica can become leader and drop records")
    return found


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _readable(key: str, value: str) -> str:
    number = _int(value)
    if key == "retention.ms" and number > 0:
        return f" ({number / 86_400_000:.1f} days)" if number >= 86_400_000 else f" ({number / 1000:g} s)"
    if key == "retention.bytes" and number > 0:
        return f" ({number / 2**20:,.0f} MB a partition)"
    return ""
