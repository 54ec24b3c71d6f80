"""Topic administration: create, list, describe (metadata and configs), delete.

Thin over AIOKafkaAdminClient, whose methods return raw protocol responses with per-topic
error codes instead of raising: these helpers check every code and turn the ones an operator
meets (topic exists, replication factor too large, unknown topic, bad config) into a
one-line :class:`OperationError`.

Reads are retried while they fail with retriable errors (a broker that just died is still in
the metadata for a few seconds and requests sent to it fail); creates and deletes only while
the request provably was not sent, since repeating them is not harmless.

Metadata is always requested for *all* topics and filtered here. Asking the broker about one
named topic would, with ``auto.create.topics.enable=true`` (Kafka's default), create it: a
typo in ``sluice topics describe`` must never create a topic.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.errors import OperationError
from service.kafka.connect import retry_retriable, retry_unsent

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

LEGAL_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")

_TOPIC_ALREADY_EXISTS = 36
_INVALID_REPLICATION_FACTOR = 38
_UNKNOWN_TOPIC = 3

# DescribeConfigs v1+ "config_source" values, named as kafka-configs.sh names them.
_CONFIG_SOURCES = {
    1: "topic",
    2: "broker",
    3: "cluster-default",
    4: "broker-static",
    5: "default",
    6: "broker-logger",
}


@dataclass(frozen=True)
class PartitionInfo:
    partition: int
    leader: int | None  # None: no leader right now (election pending, all replicas down)
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    offline: tuple[int, ...]


@dataclass(frozen=True)
class TopicInfo:
    name: str
    internal: bool
    partitions: tuple[PartitionInfo, ...]

    @property
    def replication_factor(self) -> int:
        return max((len(p.replicas) for p in self.partitions), default=0)


@dataclass(frozen=True)
class ConfigEntry:
    name: str
    value: str | None  # None for sensitive values, which brokers never return
    source: str
    sensitive: bool


def _error_name(code: int) -> str:
    from aiokafka.errors import for_code

    return str(for_code(code).__name__)


async def all_topics(admin: AIOKafkaAdminClient) -> dict[str, TopicInfo]:
    """Every topic the cluster knows, by name (no auto-creation, see module docstring)."""
    topics: list[dict[str, Any]] = await retry_retriable(lambda: admin.describe_topics(None))
    out: dict[str, TopicInfo] = {}
    for topic in topics:
        partitions = tuple(
            sorted(
                (
                    PartitionInfo(
                        partition=p["partition"],
                        leader=p["leader"] if p["leader"] >= 0 else None,
                        replicas=tuple(p["replicas"]),
                        isr=tuple(p["isr"]),
                        offline=tuple(p.get("offline_replicas", ())),
                    )
                    for p in topic["partitions"]
                ),
                key=lambda p: p.partition,
            )
        )
        out[topic["topic"]] = TopicInfo(topic["topic"], bool(topic["is_internal"]), partitions)
    return out


async def describe_topic(admin: AIOKafkaAdminClient, name: str) -> TopicInfo:
    """Partitions of ``name`` with leader, replicas and ISR; ``OperationError`` if unknown."""
    info = (await all_topics(admin)).get(name)
    if info is None:
        raise OperationError(f"unknown topic {name!r}")
    return info


async def broker_count(admin: AIOKafkaAdminClient) -> int:
    """Brokers currently registered and alive, as the metadata reports them."""
    cluster: dict[str, Any] = await retry_retriable(admin.describe_cluster)
    return len(cluster["brokers"])


async def create_topic(
    admin: AIOKafkaAdminClient,
    name: str,
    *,
    partitions: int,
    replication_factor: int,
    configs: Mapping[str, str],
) -> None:
    """Create ``name``; explain the usual refusals in one line."""
    from aiokafka.admin import NewTopic

    brokers = await broker_count(admin)
    if replication_factor > brokers:
        raise OperationError(_rf_message(replication_factor, brokers))
    new_topic = NewTopic(name, partitions, replication_factor, topic_configs=dict(configs))
    response = await retry_unsent(lambda: admin.create_topics([new_topic]))
    for result in response.to_object()["topic_errors"]:
        code = result["error_code"]
        message = result.get("error_message") or ""
        if code == 0:
            continue
        if code == _TOPIC_ALREADY_EXISTS:
            raise OperationError(f"topic {name!r} already exists")
        if code == _INVALID_REPLICATION_FACTOR:
            # Brokers can be fenced between our count and the request: trust the broker.
            raise OperationError(f"invalid replication factor {replication_factor}: {message}")
        detail = f": {message}" if message else ""
        raise OperationError(f"cannot create topic {name!r}: {_error_name(code)}{detail}")


def _rf_message(replication_factor: int, brokers: int) -> str:
    return (
        f"replication factor {replication_factor} is larger than the number of available brokers ({brokers})"
    )


async def wait_for_leaders(admin: AIOKafkaAdminClient, name: str, timeout_s: float) -> bool:
    """Wait until every partition of ``name`` has a leader, so the next command can use it.

    CreateTopics returns once the controller has recorded the topic, which can be a moment
    before brokers serve it; a ``produce`` right after ``create`` would otherwise retry.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        info = (await all_topics(admin)).get(name)
        if info and info.partitions and all(p.leader is not None for p in info.partitions):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)


async def topic_configs(admin: AIOKafkaAdminClient, name: str) -> list[ConfigEntry]:
    """All configs of topic ``name`` (DescribeConfigs), sorted by name, with their source."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    resource = ConfigResource(ConfigResourceType.TOPIC, name)
    responses = await retry_retriable(lambda: admin.describe_configs([resource]))
    entries: list[ConfigEntry] = []
    for response in responses:
        for resource in response.to_object()["resources"]:
            code = resource["error_code"]
            if code == _UNKNOWN_TOPIC:
                raise OperationError(f"unknown topic {name!r}")
            if code:
                detail = resource.get("error_message") or ""
                raise OperationError(f"cannot read configs of {name!r}: {_error_name(code)} {detail}".strip())
            for entry in resource["config_entries"]:
                sensitive = bool(entry.get("is_sensitive"))
                source = entry.get("config_source")
                entries.append(
                    ConfigEntry(
                        name=entry["config_names"],
                        value=None if sensitive else entry["config_value"],
                        source=_CONFIG_SOURCES.get(source, "unknown")
                        if isinstance(source, int)
                        else ("default" if entry.get("is_default") else "unknown"),
                        sensitive=sensitive,
                    )
                )
    return sorted(entries, key=lambda e: e.name)


async def delete_topic(admin: AIOKafkaAdminClient, name: str) -> None:
    """Delete ``name``; ``OperationError`` if it does not exist or the broker refuses."""
    response = await retry_unsent(lambda: admin.delete_topics([name]))
    for result in response.to_object()["topic_error_codes"]:
        code = result["error_code"]
        if code == _UNKNOWN_TOPIC:
            raise OperationError(f"unknown topic {name!r}")
        if code:
            raise OperationError(f"cannot delete topic {name!r}: {_error_name(code)}")
