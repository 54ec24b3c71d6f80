"""Consumer groups: list them, and describe one like ``kafka-consumer-groups.sh --describe``.

A description joins three sources no single request gives: the group's members and their
assignments (DescribeGroups), its committed offsets (OffsetFetch) and each partition's
log-end offset (ListOffsets, through a group-less consumer). Lag is log-end minus committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.errors import OperationError
from service.kafka.connect import retry_retriable

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient


@dataclass(frozen=True)
class Member:
    member_id: str
    client_id: str
    host: str


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed on this partition
    log_end: int | None  # None: the topic no longer exists
    owner: Member | None  # None: no member of the group has it assigned

    @property
    def lag(self) -> int | None:
        if self.committed is None or self.log_end is None:
            return None
        return max(self.log_end - self.committed, 0)


@dataclass(frozen=True)
class GroupDescription:
    group: str
    state: str
    members: tuple[Member, ...]
    partitions: tuple[PartitionLag, ...]


async def list_groups(admin: AIOKafkaAdminClient) -> list[str]:
    """Names of all consumer groups on all brokers, sorted."""
    groups: list[tuple[Any, ...]] = await retry_retriable(admin.list_consumer_groups)
    return sorted({str(group[0]) for group in groups})


async def describe_group(
    admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, group: str
) -> GroupDescription:
    """Members, committed offsets, log-end offsets and lag of ``group``.

    ``consumer`` must have no group: it only asks for log-end offsets. A group that has
    neither members nor committed offsets does not exist for Kafka (state ``Dead``): that is
    an :class:`OperationError`.
    """
    from aiokafka.structs import TopicPartition

    responses = await retry_retriable(lambda: admin.describe_consumer_groups([group]))
    described = responses[0].to_object()["groups"][0]
    if described["error_code"]:
        from aiokafka.errors import for_code

        name = for_code(described["error_code"]).__name__
        raise OperationError(f"cannot describe consumer group {group!r}: {name}")
    owners, members = _assignments(described)
    committed = await retry_retriable(lambda: admin.list_consumer_group_offsets(group))
    if described["state"] == "Dead" and not committed:
        raise OperationError(f"consumer group {group!r} does not exist")

    offsets = {(tp.topic, tp.partition): meta.offset for tp, meta in committed.items()}
    keys = sorted(set(offsets) | set(owners))
    existing = set(await consumer.topics())
    wanted = [TopicPartition(t, p) for t, p in keys if t in existing]
    ends: dict[Any, int] = await consumer.end_offsets(wanted) if wanted else {}
    partitions = tuple(
        PartitionLag(
            topic=topic,
            partition=partition,
            committed=offsets[(topic, partition)] if offsets.get((topic, partition), -1) >= 0 else None,
            log_end=ends.get(TopicPartition(topic, partition)),
            owner=owners.get((topic, partition)),
        )
        for topic, partition in keys
    )
    return GroupDescription(group, described["state"], members, partitions)


def _assignments(
    described: dict[str, Any],
) -> tuple[dict[tuple[str, int], Member], tuple[Member, ...]]:
    """Which member owns which partition, decoded from the consumer protocol's assignment."""
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    owners: dict[tuple[str, int], Member] = {}
    members: list[Member] = []
    for raw in described["members"]:
        member = Member(raw["member_id"], raw["client_id"], raw["client_host"])
        members.append(member)
        blob = raw["member_assignment"]
        if described["protocol_type"] != "consumer" or not blob:
            continue
        assignment = ConsumerProtocolMemberAssignment.decode(blob)
        for topic, partitions in assignment.assignment:
            for partition in partitions:
                owners[(topic, partition)] = member
    return owners, tuple(members)
