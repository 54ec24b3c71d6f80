"""Rebalances: what happens when partitions are revoked and assigned.

Revoked: make everything processed durable and commit it (a fenced partition drops its
pending changes instead), then forget every position, so nothing fetched before the new
assignment is processed.

Assigned, in this order: (1) start one fenced producer per owned partition number, which
fences any previous owner (:mod:`.fencing`) — before anything is read; (2) open the owned table
partitions and catch them up with their changelogs (also partitions kept across the rebalance:
another worker may have owned them in between); (3) decide every partition's resume position
(G4: the tables' offset wins over a missing or older group offset) and seek there. Only then
are the partitions' records processed (:mod:`.progress`).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from service.changelog import read_table
from service.engine.assignor import CopartitionedAssignor
from service.engine.durability import Durability
from service.engine.fencing import transaction_timeout_ms
from service.engine.progress import UNKNOWN
from service.engine.resume import records_between, resume_position, wait_stable
from service.engine.runtime import Runtime
from service.errors import StateError
from service.restore import restore
from service.settings import OnOffsetAhead
from service.standby import StandbyReplicator
from tables.offsets import OFFSETS, SOURCE_OFFSET_PREFIX, offset_key
from tables.store import PartitionStore
from tables.table import TablePartition, TableSpec

log = logging.getLogger(__name__)


class Assignments:
    def __init__(
        self,
        rt: Runtime,
        durability: Durability,
        standby: StandbyReplicator | None,
        assignor: CopartitionedAssignor,
    ) -> None:
        self.rt = rt
        self.durability = durability
        self.standby = standby
        self.assignor = assignor
        self.reported: set[TopicPartition] = set()
        """Partitions whose gauges this worker exports."""

    async def revoked(self, stalled: bool) -> None:
        rt = self.rt
        try:
            if stalled:
                self.durability.drop_phase_a()
            else:
                await self.durability.commit()
        except KafkaError as exc:
            log.warning("commit on revocation failed", extra={"error": str(exc)})
        finally:  # whatever the commit raised: nothing of the old assignment goes on
            self.drop_pending()  # what the commit could not make durable is replayed by the next owner
            for tp in list(rt.progress.expected):
                rt.progress.forget(tp)
            rt.progress.generation += 1

    def drop_pending(self) -> None:
        rt = self.rt
        for part in rt.table_partitions():
            part.discard_pending()
        rt.dirty.clear()
        rt.progress.undurable.clear()

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        rt = self.rt
        rt.metrics.rebalances.inc()
        rt.metrics.assigned_partitions.set(len(assigned))
        self.drop_pending()
        for tp in list(rt.progress.expected):
            rt.progress.forget(tp)
        owned = {tp.partition for tp in assigned}
        rt.owned = owned
        await rt.fences.take(owned)
        self._drop_gauges(assigned)
        specs = {
            table.spec.name: (table.spec, table.partitions or rt.settings.topic_partitions)
            for table in rt.workload.tables()
        }
        for name, parts in rt.tables.items():
            for q in list(parts):
                if name not in specs or q not in owned:
                    parts.pop(q).store.close()
        if self.standby is not None:
            # Before the owner opens them: a partition that was a standby here is released first.
            copies: dict[TopicPartition, TableSpec] = {}
            for q in self.assignor.standby - owned:
                for spec, count in specs.values():
                    if q < count:
                        copies[TopicPartition(spec.changelog_topic(rt.settings.app_id), q)] = spec
            await self.standby.retarget(copies)
            rt.metrics.standby_partitions.set(len(copies))
        for name, (spec, count) in specs.items():
            parts = rt.tables.setdefault(name, {})
            for q in owned:
                if q < count and q not in parts:
                    parts[q] = TablePartition(spec, q, PartitionStore(self.store_path(name, q)))
        every_table = rt.table_partitions()
        assert rt.producer is not None
        await rt.incarnations.refresh(sorted({tp.topic for tp in assigned}), rt.producer)
        await restore(rt.settings, rt.metrics, every_table)
        for table in every_table:
            table.forget_cache()
        rt.workload.on_partitions(rt.tables)
        await self._resume(assigned)
        rt.progress.generation += 1

    def store_path(self, table: str, partition: int) -> Path:
        return self.rt.settings.data_dir / "tables" / table / str(partition)

    def _drop_gauges(self, assigned: set[TopicPartition]) -> None:
        """Partitions that moved away stop being reported here: their new owner reports them."""
        metrics = self.rt.metrics
        for tp in self.reported - assigned:
            labels = (tp.topic, str(tp.partition))
            for gauge in (metrics.consumer_lag, metrics.committed_offset, metrics.log_end_offset):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        self.reported = set(assigned)

    async def _table_offsets(self, assigned: set[TopicPartition]) -> dict[TopicPartition, int]:
        """The tables' position per assigned partition (G4), from the offsets changelog; for
        state written before positions lived there, the bookkeeping rows of the tables."""
        rt = self.rt
        held: dict[TopicPartition, int] = {}
        keys = {tp: rt.incarnations.key(tp.topic, tp.partition) for tp in assigned}
        wanted = {self.durability.offsets_partition(key.encode()) for key in keys.values()}
        entries = await read_table(rt.settings, OFFSETS.name, wanted=wanted) if wanted else []
        by_key = {e.key: e.value for e in entries}
        for tp, key in keys.items():
            value = by_key.get(key)
            if value is not None:
                held[tp] = int(value)
        for tp in assigned:
            if tp in held:
                continue
            legacy = SOURCE_OFFSET_PREFIX + offset_key(tp.topic, tp.partition)
            values = [
                parts[tp.partition].get(legacy) for parts in rt.tables.values() if tp.partition in parts
            ]
            found = [int(v) for v in values if v is not None]
            if found:
                held[tp] = min(found)
        return held

    async def _resume(self, assigned: set[TopicPartition]) -> None:
        """Start each partition where its effects end, and seek there (always: a fetch may
        already have moved the consumer to the group's offset or the log start)."""
        rt = self.rt
        consumer = rt.consumer
        assert consumer is not None
        held = await self._table_offsets(assigned)
        committed = await _committed(consumer, assigned)
        ahead = [tp for tp in assigned if tp in held and committed.get(tp, -1) > held[tp]]
        if ahead:
            # A row of the offsets table may be hidden behind another number's open transaction
            # (a worker killed in its phase B): wait for it to end, then read again.
            topic = OFFSETS.changelog_topic(rt.settings.app_id)
            keys = {rt.incarnations.key(tp.topic, tp.partition).encode() for tp in ahead}
            wanted = sorted({self.durability.offsets_partition(key) for key in keys})
            # Its transaction times out, and the coordinator's check for that runs every 10 s.
            limit = transaction_timeout_ms(rt.settings) / 1000 + 15
            if await wait_stable(rt.settings, [TopicPartition(topic, q) for q in wanted], limit):
                held = await self._table_offsets(assigned)
        from_start: list[TopicPartition] = []
        for tp in sorted(assigned):
            group = committed.get(tp)
            table = held.get(tp)
            position, reason = resume_position(group, table, rt.settings.on_offset_ahead)
            if reason == "group-ahead-of-table":
                assert group is not None and table is not None
                if await records_between(rt.settings, tp, table, group) == 0:
                    # Only transaction markers lie between: the consumer's position skipped them.
                    position, reason = group, "ok"
            log.info(
                "resume position",
                extra={
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "group_offset": group,
                    "table_offset": table,
                    "position": position,
                    "reason": reason,
                },
            )
            if reason == "group-ahead-of-table" and rt.settings.on_offset_ahead is OnOffsetAhead.FAIL:
                assert group is not None and table is not None
                raise StateError(
                    f"{tp.topic}:{tp.partition}: the group's committed offset {group} is ahead of "
                    f"the tables' {table}: the effects of {group - table} events may be lost "
                    "(group offsets reset or written by another app?). Set SLUICE_ON_OFFSET_AHEAD="
                    "table to reprocess them (the guard skips what was applied) or =group to accept"
                )
            if position is None:
                from_start.append(tp)
                rt.progress.expected[tp] = UNKNOWN
            else:
                consumer.seek(tp, position)
                rt.progress.expected[tp] = position
                rt.progress.durable[tp] = position
                if group == position:
                    rt.progress.committed[tp] = position
        if from_start:  # one request for all: each awaited reset costs a round trip in the callback
            await consumer.seek_to_beginning(*from_start)


async def _committed(consumer: object, assigned: set[TopicPartition]) -> dict[TopicPartition, int]:
    """The group's committed offsets of ``assigned``, in one request."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is not None and hasattr(coordinator, "fetch_committed_offsets"):
        found = await coordinator.fetch_committed_offsets(assigned)
        return {tp: meta.offset for tp, meta in found.items() if meta is not None and meta.offset >= 0}
    out = {}
    for tp in assigned:
        offset = await consumer.committed(tp)  # type: ignore[attr-defined]
        if offset is not None:
            out[tp] = offset
    return out
