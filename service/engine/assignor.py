"""The group's assignor: co-partitioned, with optional standby replicas.

Co-partitioned: partition *q* of every subscribed topic goes to the same worker, which also owns
partition *q* of every table. Faust's own assignor does the same, because a table partition is
written while processing events of partition *q* (``table[k]`` writes the partition of the
current event): two workers owning partition *q* of two topics that write one table would both
write its partition *q*. It also makes the fencing unit a partition number
(:mod:`service.engine.fencing`).

Standby replicas (``SLUICE_STANDBY_REPLICAS=N``): besides its owner, each table partition gets N
other workers that keep a copy by tailing its changelog (:class:`service.standby.StandbyReplicator`),
carried to each member in its assignment's user data. All workers of a group must run the same
assignor: Kafka refuses mixed assignment protocols.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata


class CopartitionedAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    name = "sluice-copartitioned"
    version = 0

    def __init__(self, replicas: int = 0, url: str = "") -> None:
        self.replicas = replicas
        self.url = url
        self.standby: set[int] = set()
        """Partition numbers this worker keeps standby copies of (from the last assignment)."""
        self.owners: dict[int, str] = {}
        """Partition number -> the web URL of the worker owning it (for table_route)."""

    def assign(
        self, cluster: Any, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        ordered = sorted(members)
        topics = sorted({t for meta in members.values() for t in meta.subscription})
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in topics}
        numbers = max(counts.values(), default=0)
        owner = {q: ordered[q % len(ordered)] for q in range(numbers)} if ordered else {}
        urls = {m: _url(members[m]) for m in ordered}
        plan: dict[str, dict[str, list[int]]] = {m: {} for m in ordered}
        for topic in topics:
            for q in range(counts[topic]):
                member = owner[q]
                if topic in members[member].subscription:
                    plan[member].setdefault(topic, []).append(q)
        standby: dict[str, list[int]] = {m: [] for m in ordered}
        for q, member in owner.items():
            others = [m for m in ordered if m != member]
            for k in range(min(self.replicas, len(others))):
                standby[others[(q + k) % len(others)]].append(q)
        owners = {str(q): urls[m] for q, m in owner.items()}
        return {
            member: ConsumerProtocolMemberAssignment(
                self.version,
                sorted(plan[member].items()),
                orjson.dumps({"standby": standby[member], "owners": owners}),
            )
            for member in ordered
        }

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(self.version, list(topics), self.url.encode())

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        data = orjson.loads(assignment.user_data) if assignment.user_data else {}
        self.standby = set(data.get("standby", []))
        self.owners = {int(q): url for q, url in data.get("owners", {}).items()}


def _url(meta: ConsumerProtocolMemberMetadata) -> str:
    raw = meta.user_data or b""
    return raw.decode() if isinstance(raw, bytes) else str(raw)
