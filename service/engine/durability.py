"""Phase B and the commit: make table changes and positions durable, then commit offsets.

At-least-once: each batch's outputs, sends and dead letters are acknowledged in its own phase A
(:mod:`.batch`). Then, before every commit (every ``SLUICE_COMMIT_INTERVAL_MS``, on revocation,
on shutdown), **phase B** sends the rows changed since the last commit — once per row however
many batches changed it — and the input positions they reflect (the ``offsets`` table), and
only when the broker has them writes them to local RocksDB (**phase C**); then the offsets are
committed (**phase D**). Outputs before changelog means a row the guard will skip on replay
never lacks its outputs (G1); changelog before local RocksDB closes G3's trap.

Every partition number's phase B is one Kafka transaction of its fenced producer
(:mod:`.fencing`): rows and positions land together or not at all, and a worker that lost the
partition cannot make its stale rows visible, whatever it believes. A partition whose producer
was fenced drops its pending changes; its next owner replays them.

Exactly-once: every batch is one transaction per partition number holding all of it — outputs,
sends, dead letters, table rows, positions and the input offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from service.effects import Sender
from service.engine.fencing import FENCED_ERRORS
from service.engine.runtime import Runtime
from service.kafka.murmur2 import partition_for_key
from tables.codec import Row, encode_row
from tables.offsets import OFFSETS
from tables.table import TablePartition

log = logging.getLogger(__name__)

Changes = list[tuple[TablePartition, str, list[tuple[bytes, bytes | None]]]]


class Durability:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.last_commit = time.monotonic()
        self._phase_a: asyncio.Future[Any] | None = None
        """The last batch's phase A, while the broker acknowledges it."""

    async def start_phase_a(self, sender: Sender) -> None:
        """Send a batch's phase A (at-least-once) and return without waiting for the broker:
        the next batch is processed meanwhile (the worker was idle for 14% of a wordcount run
        waiting for acknowledgements). The previous batch's is awaited first, so one is in
        flight at a time, and a failure surfaces before anything more is sent or committed:
        :meth:`commit` (every phase B) starts with :meth:`settle_phase_a`. A stall drops it
        (:meth:`drop_phase_a`). (The producer keeps each partition's records in order.)"""
        await self.settle_phase_a()
        self._phase_a = asyncio.ensure_future(sender.flush())

    async def settle_phase_a(self) -> None:
        """Wait for the in-flight phase A; raise what it raised (to every caller that waits)."""
        pending = self._phase_a
        if pending is not None:
            try:
                await pending
            finally:
                if self._phase_a is pending:
                    self._phase_a = None

    def drop_phase_a(self) -> None:
        """The worker was stalled (most likely expelled): hand nothing more of the in-flight
        phase A to the producer — what it already has still goes, as it did when the stall
        came during the wait for it. The batch is processed again from the durable positions
        (the guard drops what reached the tables anyway)."""
        pending, self._phase_a = self._phase_a, None
        if pending is None:
            return
        if not pending.done():
            pending.cancel()
        elif not pending.cancelled():
            pending.exception()  # its outcome no longer matters: nothing of it is committed

    async def abandon_phase_a(self) -> None:
        """Closing after a failure: let the in-flight phase A end (its outcome no longer
        matters: nothing more is committed)."""
        with contextlib.suppress(Exception):
            await self.settle_phase_a()

    def pending(self) -> set[int]:
        """Partition numbers with something for phase B."""
        return {tp.partition for tp in self.rt.progress.undurable} | set(self.rt.dirty)

    def add_phase_b(self, number: int, sender: Sender) -> Changes:
        """Add partition number ``number``'s phase-B records to ``sender``: the positions of its
        input partitions and the changed rows of its table partitions."""
        rt = self.rt
        topic = OFFSETS.changelog_topic(rt.settings.app_id)
        for tp, offset in rt.progress.undurable.items():
            if tp.partition == number:
                key = rt.incarnations.key(tp.topic, tp.partition).encode()
                sender.add(
                    topic, self.offsets_partition(key), key, encode_row(Row(offset, {}), OFFSETS.schema)
                )
        changes: Changes = []
        for table in rt.dirty.get(number, ()):
            records = list(table.changelog_records())
            if records:
                changelog = table.spec.changelog_topic(rt.settings.app_id)
                for key, value in records:
                    sender.add(changelog, table.partition, key, value)
                changes.append((table, changelog, records))
        return changes

    def offsets_partition(self, key: bytes) -> int:
        return partition_for_key(key, self.rt.settings.topic_partitions)

    async def transact(
        self, number: int, sender: Sender, changes: Changes, offsets: dict[TopicPartition, int] | None
    ) -> bool:
        """Send ``sender``'s records in ``number``'s open transaction (and, exactly-once, the
        input offsets), commit it, then persist ``changes`` locally. False when fenced."""
        rt = self.rt
        producer = rt.fences.producer(number)
        try:
            last = await sender.flush()
            if offsets:
                await producer.send_offsets_to_transaction(offsets, rt.settings.app_id)
            await producer.commit_transaction()
        except FENCED_ERRORS:
            self.lost(number)
            return False
        except BaseException:
            with contextlib.suppress(TimeoutError, KafkaError, AssertionError):
                await asyncio.wait_for(producer.abort_transaction(), 10)
            raise
        for table, topic, records in changes:
            table.persist(records, last[(topic, table.partition)])
        rt.dirty.pop(number, None)
        made = rt.progress.made_durable({tp for tp in rt.progress.undurable if tp.partition == number})
        if offsets:
            rt.progress.committed.update(made)
        return True

    async def phase_b(self) -> None:
        """At-least-once phase B: one transaction per partition number, all at once."""
        rt = self.rt
        chosen = [number for number in self.pending() if number in rt.fences]

        async def one(number: int) -> bool:
            producer = rt.fences.producer(number)
            try:
                await producer.begin_transaction()
            except FENCED_ERRORS:
                self.lost(number)
                return False
            sender = Sender(producer)
            return await self.transact(number, sender, self.add_phase_b(number, sender), None)

        if chosen:  # every transaction ends before an error is raised: none outlives the lock
            results = await asyncio.gather(*(one(number) for number in chosen), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    def lost(self, number: int) -> None:
        """``number`` was fenced: another worker owns it now. Drop what is pending for it and
        stop processing it until the next assignment."""
        rt = self.rt
        rt.fences.mark_fenced(number)
        if rt.consumer is not None:
            # Fenced while still a member (the coordinator aborted a transaction that outlived
            # its timeout): only a new assignment tells whether the number is still ours.
            rt.consumer._coordinator.request_rejoin()
        for table in rt.dirty.pop(number, set()):
            table.discard_pending()
        for tp in [tp for tp in rt.progress.expected if tp.partition == number]:
            rt.progress.forget(tp)

    async def commit(self) -> None:
        """Make every processed batch durable (phase B), then commit the group's offsets (D)."""
        rt = self.rt
        consumer = rt.consumer
        assert consumer is not None
        await self.settle_phase_a()  # outputs before changelog and offsets (G1)
        if not rt.eos:
            await self.phase_b()
        progress = rt.progress
        assigned = consumer.assignment()
        for tp in list(progress.durable):
            # Past transaction markers (exactly_once topics): the consumer's position skips
            # control records that follow the last processed record. Only when every record the
            # consumer returned is durable: a fetch that returned while a rebalance callback
            # commits has moved the position past records nobody processed.
            settled = (
                tp in assigned
                and tp.partition in rt.fences
                and tp not in progress.undurable
                and progress.expected.get(tp) == progress.durable[tp]
                and progress.only_markers_ahead(tp)
            )
            if settled:
                position = await consumer.position(tp)
                if position > progress.durable[tp]:
                    progress.durable[tp] = progress.expected[tp] = position
        offsets = {
            tp: offset
            for tp, offset in progress.durable.items()
            if tp in assigned and tp.partition in rt.fences and progress.committed.get(tp) != offset
        }
        self.last_commit = time.monotonic()
        if not offsets:
            return
        started = time.monotonic()
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance is under way: the revocation callback commits, or the next owner
            # replays from the last commit and the guard drops what was already applied.
            log.warning("commit skipped during rebalance", extra={"error": str(exc)})
            return
        progress.committed.update(offsets)
        rt.metrics.commits.inc()
        rt.metrics.commit_seconds.observe(time.monotonic() - started)
        for tp, offset in offsets.items():
            rt.metrics.committed_offset.labels(tp.topic, str(tp.partition)).set(offset)
