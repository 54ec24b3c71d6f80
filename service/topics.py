"""The topics a worker needs (the app's declared topics and its tables' changelogs), created
at start when missing.

Internal topics (repartition, changelog) must have exactly ``SLUICE_TOPIC_PARTITIONS``
partitions: table partition *q* is fed by repartition partition *q* and backed by changelog
partition *q*. A mismatch is refused at start, because routing keys with a different count
would silently split a key's state across two partitions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.errors import OperationError, StateError
from service.kafka.client_config import client_kwargs
from service.settings import Settings

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    internal: bool
    """Internal topics must have exactly ``partitions``; others just need to exist."""
    config: dict[str, str] = field(default_factory=dict)


async def ensure_topics(settings: Settings, specs: Sequence[TopicSpec]) -> dict[str, int]:
    """Create missing topics; return every topic's partition count."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings, client_id=f"{settings.app_id}-admin"))
    await admin.start()
    try:
        counts = await _partition_counts(admin, [s.name for s in specs])
        missing = [s for s in specs if s.name not in counts]
        if missing:
            rf = settings.replication_factor
            if rf is None:  # as many copies as the cluster allows, up to 3
                rf = min(3, len((await admin.describe_cluster())["brokers"]))
            new = [NewTopic(s.name, s.partitions, rf, topic_configs=_configs(s, rf)) for s in missing]
            response = await admin.create_topics(new)
            for name, code, *rest in response.topic_errors:
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    message = rest[0] if rest else ""
                    raise OperationError(f"cannot create topic {name}: error {code} {message}")
            log.info("created topics", extra={"topics": [s.name for s in missing]})
            # Metadata of a topic created a moment ago may still be partial: trust the request.
            counts.update({s.name: s.partitions for s in missing})
    finally:
        await admin.close()
    for spec in specs:
        if spec.internal and counts.get(spec.name) != spec.partitions:
            raise StateError(
                f"topic {spec.name} has {counts.get(spec.name)} partitions but "
                f"SLUICE_TOPIC_PARTITIONS={spec.partitions}: internal topics must match it"
            )
    return counts


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    # Describe only topics that exist: a metadata request naming a missing topic makes a broker
    # with auto.create.topics.enable (the default) create it with num.partitions partitions.
    existing = set(await admin.list_topics())
    wanted = [name for name in names if name in existing]
    counts: dict[str, int] = {}
    if not wanted:
        return counts
    for topic in await admin.describe_topics(wanted):
        if topic["error_code"] == 0 and topic["partitions"]:
            counts[topic["topic"]] = len(topic["partitions"])
    return counts


def _configs(spec: TopicSpec, replication_factor: int) -> dict[str, str]:
    """Internal topics refuse a write that fewer than two replicas have (when there are two):
    with ``acks=all`` and one in-sync replica left, a broker loss could lose acknowledged state."""
    if not spec.internal:
        return dict(spec.config)
    return {"min.insync.replicas": str(min(2, replication_factor)), **spec.config}
