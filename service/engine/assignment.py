"""Rebalances: what happens when partitions are revoked and assigned.

Revoked: make everything processed durable and commit it (a fenced partition drops its
pending changes instead), then forget every position, so nothing fetched before the new
assignment is processed.

Assigned, in this order: (1) start one fenced producer per owned partition, which fences any
previous owner (:mod:`service.engine.fencing`) — before anything is read; (2) open the table
partitions and catch them up with their changelogs (also partitions kept across the
rebalance: another worker may have owned them in between); (3) decide every partition's resume
position (G4: the tables' offset wins over a missing or older group offset) and seek there.
Only then are the partitions' records processed (:mod:`service.engine.progress`).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from service.changelog import read_table
from service.engine.durability import Durability
from service.engine.progress import UNKNOWN
from service.engine.resume import records_between, resume_position
from service.engine.runtime import JobPartition, Runtime
from service.errors import StateError
from service.restore import restore
from service.settings import OnOffsetAhead
from service.standby import StandbyAssignor, StandbyReplicator
from tables.offsets import OFFSETS, SOURCE_OFFSET_PREFIX, offset_key
from tables.store import PartitionStore
from tables.table import TablePartition
from tables.watermark import WATERMARK_KEY, PartitionClock

log = logging.getLogger(__name__)


class Assignments:
    def __init__(
        self,
        rt: Runtime,
        durability: Durability,
        standby: StandbyReplicator | None,
        assignor: StandbyAssignor | None,
    ) -> None:
        self.rt = rt
        self.durability = durability
        self.standby = standby
        self.assignor = assignor
        self.reported: set[TopicPartition] = set()
        """Partitions whose gauges this worker exports."""

    async def revoked(self, stalled: bool) -> None:
        rt = self.rt
        if stalled:
            self.drop_pending()
        else:
            try:
                await self.durability.commit()
            except KafkaError as exc:
                log.warning("commit on revocation failed", extra={"error": str(exc)})
        self.drop_pending()  # what the commit could not make durable is replayed by the next owner
        for tp in list(rt.progress.expected):
            rt.progress.forget(tp)
        rt.progress.generation += 1

    def drop_pending(self) -> None:
        rt = self.rt
        for part in rt.parts.values():
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
        await rt.fences.take(assigned)
        self._drop_gauges(assigned)
        wanted = {}
        for tp in assigned:
            job = rt.routing.stage2_job(tp.topic)
            if job is not None:
                wanted[(job.name, tp.partition)] = job
        for key in list(rt.parts):
            if key not in wanted:
                rt.parts.pop(key).close()
        if self.standby is not None and self.assignor is not None:
            # Before the owner opens them: a partition that was a standby here is released first.
            copies = {}
            for tp in self.assignor.standby - assigned:
                job = rt.routing.stage2_job(tp.topic)
                for spec in job.tables if job is not None else ():
                    copies[TopicPartition(spec.changelog_topic(rt.settings.app_id), tp.partition)] = spec
            await self.standby.retarget(copies)
            rt.metrics.standby_partitions.set(len(copies))
        for (name, partition), job in wanted.items():
            if (name, partition) not in rt.parts:
                tables = {
                    spec.name: TablePartition(
                        spec, partition, PartitionStore(self.store_path(spec.name, partition))
                    )
                    for spec in job.tables
                }
                rt.parts[(name, partition)] = JobPartition(job, partition, tables)
        assert rt.producer is not None
        await rt.incarnations.refresh(rt.input_topics(), rt.producer)
        every_table = [t for part in rt.parts.values() for t in part.tables.values()]
        await restore(rt.settings, rt.metrics, every_table)
        for table in every_table:
            table.forget_cache()
        for part in rt.parts.values():
            job = part.job
            assert job.processor is not None, f"job {job.name} has tables but no processor"
            if job.watermark_table is not None:
                part.clock = PartitionClock(part.tables[job.watermark_table].get(WATERMARK_KEY))
            part.processor = job.processor(part.tables, part.clock)
            live = frozenset(rt.sources(job))
            for table in part.tables.values():
                table.live_sources = live
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
        """The tables' position per assigned partition (G4): stage 2 from the job's own table
        partition (restored just now), stage 1 from the offsets changelog."""
        rt = self.rt
        held: dict[TopicPartition, int] = {}
        inputs = [tp for tp in assigned if rt.routing.stage(tp.topic) == 1]
        if inputs:
            wanted = {self.durability.offsets_partition(tp) for tp in inputs}
            entries = await read_table(rt.settings, OFFSETS.name, wanted=wanted)
            by_key = {e.key: e.value for e in entries}
            for tp in inputs:
                value = by_key.get(rt.incarnations.key(tp.topic, tp.partition))
                if value is not None:
                    held[tp] = int(value)
        for tp in assigned:
            part = rt.part_of(tp)
            if part is not None:
                key = SOURCE_OFFSET_PREFIX + offset_key(tp.topic, tp.partition)
                values = [table.get(key) for table in part.tables.values()]
                if None not in values:
                    held[tp] = min(int(v) for v in values)
        return held

    async def _resume(self, assigned: set[TopicPartition]) -> None:
        """Start each partition where its effects end, and seek there (always: a fetch may
        already have moved the consumer to the group's offset or the log start)."""
        rt = self.rt
        consumer = rt.consumer
        assert consumer is not None
        held = await self._table_offsets(assigned)
        for tp in sorted(assigned):
            group = await consumer.committed(tp)
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
                raise StateError(
                    f"{tp.topic}:{tp.partition}: the group's committed offset {group} is ahead of "
                    f"the tables' {table}: the effects of {group - table} events may be lost "
                    "(group offsets reset or written by another app?). Set SLUICE_ON_OFFSET_AHEAD="
                    "table to reprocess them (the guard skips what was applied) or =group to accept"
                )
            if position is None:
                await consumer.seek_to_beginning(tp)
                rt.progress.expected[tp] = UNKNOWN
            else:
                consumer.seek(tp, position)
                rt.progress.expected[tp] = position
                rt.progress.durable[tp] = position
                if group == position:
                    rt.progress.committed[tp] = position
