"""One fetched batch through both stages, phase A (at-least-once) or one transaction per
input partition (exactly-once).

Which records are processed: those of partitions still assigned and not fenced, from their
resume position on (:mod:`.progress`), within the per-partition rate limit; plus an empty
batch for a source of a job with windows that moved without records, so its watermark hears
where it stands. A stall detected before anything is sent drops the batch (see :mod:`.core`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition

from service.effects import Sender
from service.engine.durability import Durability
from service.engine.fencing import FENCED_ERRORS
from service.engine.progress import UNKNOWN
from service.engine.runtime import Runtime
from service.engine.stage1 import Stage1
from service.engine.stage2 import Stage2
from service.ratelimit import RateLimiter

log = logging.getLogger(__name__)


class Batches:
    def __init__(
        self,
        rt: Runtime,
        stage1: Stage1,
        stage2: Stage2,
        durability: Durability,
        stalled: Callable[[float], bool],
        drop: Callable[[str], None],
    ) -> None:
        self.rt = rt
        self.stage1 = stage1
        self.stage2 = stage2
        self.durability = durability
        self.stalled = stalled
        self.drop = drop
        rate = rt.settings.max_rate_per_partition
        self._limiter = RateLimiter(rate) if rate else None

    async def run(self, fetched: dict[TopicPartition, list[Any]], started: float) -> None:
        rt = self.rt
        consumer = rt.consumer
        assert consumer is not None
        assigned = consumer.assignment()
        batch: dict[TopicPartition, tuple[list[Any], int]] = {}
        for tp, records in fetched.items():
            # A rebalance may have run between the fetch and this batch: records of a partition
            # we lost are left to its next owner; records fetched before the resume decision
            # are not processed (progress.admit).
            if tp not in assigned or tp not in rt.fences:
                continue
            expected = rt.progress.expected.get(tp)
            if records and expected is not None and expected != UNKNOWN and records[0].offset < expected:
                # The consumer went back without being asked (nothing in the engine seeks below
                # ``expected``): a re-created input topic starts at 0 again, or the log was
                # truncated. The first must not be skipped as "already processed".
                if rt.routing.stage(tp.topic) == 1:
                    await rt.incarnations.verify(tp.topic)
                log.warning(
                    "records below the resume position skipped",
                    extra={
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "first": records[0].offset,
                        "expected": expected,
                    },
                )
            records = rt.progress.admit(tp, records)
            if not records:
                continue
            if self._limiter is not None and rt.routing.stage(tp.topic) == 1:
                records = self._throttle(tp, records)
                if not records:
                    continue
            batch[tp] = (records, records[-1].offset + 1)
        await self._idle_sources(assigned, batch)
        if not batch:
            return
        began = time.monotonic()
        senders = await self._senders(batch)
        shared = senders.get(None)
        touched = []
        for tp, (records, position) in batch.items():
            sender = shared if shared is not None else senders[tp]
            if rt.routing.stage(tp.topic) == 1:
                self.stage1.process(tp, records, rt.routing.routes(tp.topic), sender, position)
            else:
                part = rt.part_of(tp)
                assert part is not None
                self.stage2.process(tp, part, records, sender)
                touched.append((tp, part))
        for tp, part in touched:
            self.stage2.end_batch(tp, part, shared if shared is not None else senders[tp])
        processed = time.monotonic()
        if self.stalled(started):
            self.drop("stalled while processing a batch")
            return
        for tp, (records, position) in batch.items():
            if records or rt.routing.stage(tp.topic) == 1:
                rt.progress.advance(tp, position)
        if shared is not None:
            await shared.flush()  # phase A: outputs, repartition records, dead letters
        else:
            await self._commit_transactions(senders)
        if self.rt.settings.metrics_enabled:
            for job in self.rt.jobs:
                self.rt.metrics.processing.labels(job.name).observe(processed - began)

    async def _idle_sources(self, assigned: set[TopicPartition], batch: dict[TopicPartition, Any]) -> None:
        """Sources of jobs with windows that moved without records (transaction markers, or
        nothing reported since the assignment) report where they stand in an empty batch."""
        rt = self.rt
        consumer = rt.consumer
        assert consumer is not None
        for tp in assigned:
            if tp in batch or tp not in rt.fences or rt.routing.stage(tp.topic) != 1:
                continue
            expected = rt.progress.expected.get(tp)
            if expected is None or expected == UNKNOWN:
                continue
            jobs = [r.job for r in rt.routing.routes(tp.topic)]
            if not any(job.event_time is not None for job in jobs):
                continue
            position = await consumer.position(tp)
            if position >= expected and any(self.stage1.stale_clock(job, tp, position) for job in jobs):
                batch[tp] = ([], position)

    async def _senders(self, batch: dict[TopicPartition, Any]) -> dict[TopicPartition | None, Sender]:
        """At-least-once: one shared sender (phase A). Exactly-once: one per partition, in a
        transaction of that partition's fenced producer."""
        rt = self.rt
        if not rt.eos:
            assert rt.producer is not None
            return {None: Sender(rt.producer)}
        senders: dict[TopicPartition | None, Sender] = {}
        for tp in list(batch):
            producer = rt.fences.producer(tp)
            try:
                await producer.begin_transaction()
            except FENCED_ERRORS:
                self.durability.lost(tp)
                del batch[tp]
                continue
            senders[tp] = Sender(producer)
        return senders

    async def _commit_transactions(self, senders: dict[TopicPartition | None, Sender]) -> None:
        """Exactly-once: each partition's batch, its phase B and its input offset, committed as
        one transaction; all partitions at once."""
        rt = self.rt

        async def one(tp: TopicPartition, sender: Sender) -> None:
            changes = self.durability.add_phase_b(tp, sender)
            offset = rt.progress.undurable.get(tp)
            offsets = {tp: offset} if offset is not None else None
            if await self.durability.transact(tp, sender, changes, offsets) and offsets:
                self.rt.metrics.commits.inc()

        await asyncio.gather(*(one(tp, s) for tp, s in senders.items() if tp is not None))

    def _throttle(self, tp: TopicPartition, records: list[Any]) -> list[Any]:
        """Keep what the rate allows; seek back over the rest and pause until a token is due."""
        assert self._limiter is not None and self.rt.consumer is not None
        taken = self._limiter.admit(tp, len(records))
        if taken == len(records):
            return records
        consumer = self.rt.consumer
        consumer.seek(tp, records[taken].offset)
        consumer.pause(tp)
        self.rt.metrics.rate_limit_pauses.labels(tp.topic, str(tp.partition)).inc()

        def resume() -> None:
            if tp in consumer.assignment():
                consumer.resume(tp)

        asyncio.get_running_loop().call_later(self._limiter.wait(tp), resume)
        return records[:taken]
