"""One fetched batch: admission, the agents, then phase A (at-least-once) or one transaction per
partition number (exactly-once).

Phase A of a batch is acknowledged while the next batch is processed: the worker computes
instead of waiting for the broker (:meth:`.durability.Durability.start_phase_a`). Nothing is
committed before it is acknowledged.

Which records are processed: those of partitions still assigned and not fenced, from their
resume position on (:mod:`.progress`), within the per-partition rate limit; plus an empty
batch for an input that reports its position to watermarks and moved without records
(transaction markers), so the watermark hears where it stands. A stall detected before
anything is sent drops the batch (see :mod:`.core`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from service.effects import Sender
from service.engine.durability import Durability
from service.engine.fencing import FENCED_ERRORS
from service.engine.progress import UNKNOWN
from service.engine.runtime import Runtime
from service.ratelimit import RateLimiter

log = logging.getLogger(__name__)


class Batches:
    def __init__(
        self,
        rt: Runtime,
        durability: Durability,
        stalled: Callable[[float], bool],
        drop: Callable[[str], None],
    ) -> None:
        self.rt = rt
        self.durability = durability
        self.stalled = stalled
        self.drop = drop
        rate = rt.settings.max_rate_per_partition
        self._limiter = RateLimiter(rate) if rate else None
        self._reported: dict[TopicPartition, int] = {}

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
            if tp not in assigned or tp.partition not in rt.fences:
                continue
            expected = rt.progress.expected.get(tp)
            if records and expected is not None and expected != UNKNOWN and records[0].offset < expected:
                # The consumer went back without being asked (nothing in the engine seeks below
                # ``expected``): a re-created input topic starts at 0 again, or the log was
                # truncated. The first must not be skipped as "already processed".
                await rt.incarnations.verify(tp.topic)
                log.warning(
                    "records below the resume position skipped",
                    extra={"topic": tp.topic, "partition": tp.partition, "first": records[0].offset},
                )
            records = rt.progress.admit(tp, records)
            if not records:
                continue
            if self._limiter is not None and not rt.workload.internal(tp.topic):
                records = self._throttle(tp, records)
                if not records:
                    continue
            batch[tp] = (records, records[-1].offset + 1)
        await self._idle_inputs(assigned, batch)
        if not batch:
            return
        senders = await self._senders(batch)
        shared = senders.get(None)

        def sender_for(number: int) -> Sender:
            return shared if shared is not None else senders[number]

        assert rt.dead_letters is not None
        dirty = await rt.workload.process(batch, sender_for, rt.dead_letters)
        for number, parts in dirty.items():
            rt.dirty.setdefault(number, set()).update(parts)
        self._count_duplicates()
        if self.stalled(started):
            await self._abort(senders)
            self.drop("stalled while processing a batch")
            return
        for tp, (_, position) in batch.items():
            rt.progress.advance(tp, position)
            self._reported[tp] = position
        if shared is not None:
            await self.durability.start_phase_a(shared)  # outputs, sends, dead letters
        else:
            await self._commit_transactions(senders)

    def _count_duplicates(self) -> None:
        for part in self.rt.table_partitions():
            if part.duplicates_skipped:
                self.rt.metrics.duplicates_skipped.labels(part.spec.name).inc(part.duplicates_skipped)
                part.duplicates_skipped = 0

    async def _idle_inputs(self, assigned: set[TopicPartition], batch: dict[TopicPartition, Any]) -> None:
        """Inputs that report to watermarks and moved without records report in an empty batch."""
        rt = self.rt
        consumer = rt.consumer
        assert consumer is not None
        for tp in rt.workload.clocked_inputs():
            if tp in batch or tp not in assigned or tp.partition not in rt.fences:
                continue
            expected = rt.progress.expected.get(tp)
            if expected is None or expected == UNKNOWN:
                continue
            position = await consumer.position(tp)
            if position >= expected and self._reported.get(tp) != position:
                batch[tp] = ([], position)

    async def _senders(self, batch: dict[TopicPartition, Any]) -> dict[int | None, Sender]:
        """At-least-once: one shared sender (phase A). Exactly-once: one per partition number, in
        a transaction of that number's fenced producer."""
        rt = self.rt
        if not rt.eos:
            assert rt.producer is not None
            return {None: Sender(rt.producer)}
        senders: dict[int | None, Sender] = {}
        for number in sorted({tp.partition for tp in batch}):
            producer = rt.fences.producer(number)
            try:
                await producer.begin_transaction()
            except FENCED_ERRORS:
                self.durability.lost(number)
                for tp in [tp for tp in batch if tp.partition == number]:
                    del batch[tp]
                continue
            senders[number] = Sender(producer)
        return senders

    async def _abort(self, senders: dict[int | None, Sender]) -> None:
        """Exactly-once: end the transactions a dropped batch began (a producer left in one
        cannot begin the next)."""
        for number in senders:
            if number is not None:
                with contextlib.suppress(KafkaError, AssertionError, asyncio.TimeoutError):
                    await asyncio.wait_for(self.rt.fences.producer(number).abort_transaction(), 10)

    async def _commit_transactions(self, senders: dict[int | None, Sender]) -> None:
        """Exactly-once: each partition number's batch, its phase B and its input offsets,
        committed as one transaction; all at once."""
        rt = self.rt

        async def one(number: int, sender: Sender) -> None:
            changes = self.durability.add_phase_b(number, sender)
            offsets = {tp: o for tp, o in rt.progress.undurable.items() if tp.partition == number}
            if await self.durability.transact(number, sender, changes, offsets or None) and offsets:
                rt.metrics.commits.inc()

        await asyncio.gather(*(one(n, s) for n, s in senders.items() if n is not None))

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


def within_bytes(
    consumer: Any, fetched: dict[TopicPartition, list[Any]], budget: int, served: dict[TopicPartition, int]
) -> None:
    """Keep the first ``budget`` bytes of keys and values of a fetch (at least one record) and
    seek the rest back (``SLUICE_MAX_BATCH_BYTES``): a batch is processed without yielding the
    event loop, and its time grows with its bytes, not its record count (a thousand 1 KB lines
    cost ten times as much as a thousand 100-byte ones), while heartbeats and the stall check
    wait. Partitions are served least recently served first (``served``: the fetch number
    each was last served in), so a partition whose records arrive behind others' is not cut
    every time."""
    used = 0
    turn = max(served.values(), default=0) + 1
    for tp in sorted(fetched, key=lambda tp: served.get(tp, -1)):
        records = fetched[tp]
        keep = 0
        for record in records:
            size = max(record.serialized_value_size, 0) + max(record.serialized_key_size, 0)
            if used and used + size > budget:
                break
            used += size
            keep += 1
        if keep:
            served[tp] = turn
        if keep < len(records):
            consumer.seek(tp, records[keep].offset)
            if keep:
                fetched[tp] = records[:keep]
            else:
                del fetched[tp]
