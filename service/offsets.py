"""Group offsets against table offsets (G4): the audit and the reset behind ``sluice offsets``.

For every source partition a worker reads (job inputs and repartition topics) there are two
positions: the group's committed offset, and the offset the tables hold (the next offset whose
effects are durable in a changelog). The worker resumes by :func:`service.engine.resume_position`;
the audit shows operators, per partition, what that rule would do and whether it is safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import DeleteGroupsRequest

from service.changelog import read_table
from service.engine import records_between, resume_position
from service.engine.incarnations import Incarnations
from service.errors import OperationError
from service.kafka.client_config import client_kwargs
from service.kafka.topic_ids import topic_ids
from service.settings import OnOffsetAhead, Settings
from tables.offsets import OFFSETS, SOURCE_OFFSET_PREFIX, parse_source_key

UNSAFE = frozenset({"group-ahead-of-table"})
"""Verdicts under which a restart would lose (or, with ``=table``, repeat) effects."""

VERDICTS = {
    "ok": "group and tables agree",
    "group-missing": "no committed offset (expired or deleted): the worker resumes from the tables",
    "group-behind-table": "the worker resumes from the tables; nothing is applied twice",
    "group-ahead-of-table": "possible loss: events between the two offsets have no durable effects",
    "no-table-offset": "the tables hold no position yet: the worker follows the group",
    "new": "nothing consumed yet: starts at the earliest offset",
}


@dataclass(frozen=True)
class PartitionAudit:
    topic: str
    partition: int
    job: str
    group: int | None
    table: int | None
    log_end: int
    verdict: str

    @property
    def lag(self) -> int:
        position = self.table if self.table is not None else (self.group or 0)
        return max(0, self.log_end - position)


def source_topics(app: Any, existing: set[str]) -> dict[str, str]:
    """Every topic the app's agents read (existing topics matching a pattern included), with the
    job label of the first agent reading it."""
    topics: dict[str, str] = {}
    for agent in app.agents.values():
        channel = agent.channel
        pattern = getattr(channel, "pattern", None)
        names = [t for t in existing if pattern.fullmatch(t)] if pattern else list(channel.topics)
        for name in names:
            topics.setdefault(name, agent.job)
    return topics


async def current_incarnations(settings: Settings, topics: list[str]) -> dict[str, int]:
    """The incarnation a worker would read of each of ``topics`` now (see
    :mod:`service.engine.incarnations`): the recorded one, or the next when the topic's id changed."""
    ids = await topic_ids(settings, topics)
    known = await Incarnations(settings).registry(topics)
    out = {}
    for topic in topics:
        entry = known.get(topic)
        if entry is None:
            out[topic] = 0
        else:
            inc = int(str(entry.get("inc", 0)))
            out[topic] = inc if entry.get("id") == ids.get(topic) else inc + 1
    return out


async def table_offsets(settings: Settings, app: Any) -> dict[TopicPartition, int]:
    """Every position the tables hold, read from the changelogs (not from any worker): the
    offsets table (only the incarnation of each topic that exists now), and for state written
    before positions lived there, the bookkeeping rows of the tables (the lowest)."""
    held: dict[TopicPartition, int] = {}
    rows = []
    for entry in await read_table(settings, OFFSETS.name):
        rows.append((*parse_source_key(entry.key), int(entry.value)))
    current = await current_incarnations(settings, sorted({topic for topic, *_ in rows}))
    for topic, partition, inc, offset in rows:
        if current.get(topic, 0) == inc:
            held[TopicPartition(topic, partition)] = offset
    legacy: dict[TopicPartition, list[int]] = {}
    for table in app.tables.values():
        try:
            entries = await read_table(settings, table.name, include_meta=True)
        except OperationError:  # not created yet
            continue
        for entry in entries:
            if entry.key.startswith(SOURCE_OFFSET_PREFIX):
                name, _, number = entry.key[len(SOURCE_OFFSET_PREFIX) :].rpartition(":")
                legacy.setdefault(TopicPartition(name, int(number)), []).append(int(entry.value))
    for tp, values in legacy.items():
        held.setdefault(tp, min(values))
    return held


async def audit(settings: Settings, app: Any, group: str | None = None) -> list[PartitionAudit]:
    group = group or settings.app_id
    admin = AIOKafkaAdminClient(**client_kwargs(settings, client_id=f"{settings.app_id}-audit"))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        topics = source_topics(app, existing)
        described = await admin.describe_topics([t for t in topics if t in existing])
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    tps = sorted(TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"])
    ends = await _end_offsets(settings, tps)
    held = await table_offsets(settings, app)
    out = []
    for tp in tps:
        meta = committed.get(tp)
        group_offset = meta.offset if meta is not None and meta.offset >= 0 else None
        _, verdict = resume_position(group_offset, held.get(tp), OnOffsetAhead.FAIL)
        if verdict == "group-ahead-of-table":
            assert group_offset is not None
            if await records_between(settings, tp, held[tp], group_offset) == 0:
                verdict = "ok"  # only transaction markers between the two
        out.append(
            PartitionAudit(
                tp.topic, tp.partition, topics[tp.topic], group_offset, held.get(tp), ends[tp], verdict
            )
        )
    return out


async def _end_offsets(settings: Settings, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(**client_kwargs(settings, client_id=f"{settings.app_id}-audit"))
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        return ends
    finally:
        await consumer.stop()


async def group_members(settings: Settings, group: str) -> int:
    admin = AIOKafkaAdminClient(**client_kwargs(settings, client_id=f"{settings.app_id}-offsets"))
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    members = 0
    for entry in described:
        for g in entry.groups:
            members += len(g[5]) if len(g) > 5 else 0
    return members


async def commit_offsets(settings: Settings, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Write committed offsets for a group with no live member (a standalone commit)."""
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings, client_id=f"{settings.app_id}-offsets"),
        group_id=group,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def offsets_for(
    settings: Settings, target: str, tps: list[TopicPartition], held: dict[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Resolve ``--to`` (table, earliest, latest, timestamp:<ms>, offset:<n>) per partition."""
    if target == "table":
        return {tp: held[tp] for tp in tps if tp in held}
    if target.startswith("offset:"):
        return {tp: int(target.split(":", 1)[1]) for tp in tps}
    consumer = AIOKafkaConsumer(**client_kwargs(settings, client_id=f"{settings.app_id}-offsets"))
    await consumer.start()
    try:
        if target == "earliest":
            found: dict[TopicPartition, int] = await consumer.beginning_offsets(tps)
            return found
        if target == "latest":
            found = await consumer.end_offsets(tps)
            return found
        if target.startswith("timestamp:"):
            ms = int(target.split(":", 1)[1])
            times = await consumer.offsets_for_times(dict.fromkeys(tps, ms))
            ends = await consumer.end_offsets(tps)
            return {tp: (t.offset if t is not None else ends[tp]) for tp, t in times.items()}
    finally:
        await consumer.stop()
    raise OperationError(f"unknown --to target {target!r}")


async def delete_group(settings: Settings, group: str) -> None:
    """Delete a consumer group and its committed offsets (kafka-consumer-groups --delete)."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings, client_id=f"{settings.app_id}-offsets"))
    await admin.start()
    try:
        node = await admin.find_coordinator(group)
        response = await admin._send_request_to_node(node, DeleteGroupsRequest([group]))
    finally:
        await admin.close()
    for name, code in response.results:
        if code != 0:
            raise OperationError(f"cannot delete group {name}: error {code}")
