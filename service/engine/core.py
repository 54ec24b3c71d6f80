"""The processing loop: fetch, run the agents, make effects durable, then commit.

One consumer in group ``SLUICE_APP_ID`` reads every topic the app's agents read. For each
fetched batch (:mod:`.batch`):

1. the agents process it (:class:`service.engine.workload.Workload`, the app's data plane);
2. **phase A**: their sends, outputs and dead letters are sent and acknowledged (``acks=all``),
   while the next batch is processed;
3. **phase B** and the commit, every ``SLUICE_COMMIT_INTERVAL_MS``, once phase A is
   acknowledged (:mod:`.durability`).

Nothing is committed whose effects are not acknowledged, and an exception in agent code
dead-letters the event instead of silently acknowledging it (faust-streaming #315, #527).
Batches are processed one at a time under a lock that rebalance callbacks also take, so a
commit never passes an in-flight event (faust-streaming #606) and a revoked partition's last
batch is durable and committed before its next owner starts (:mod:`.assignment`).

A worker that was stalled longer than its session timeout allows has most likely been
expelled: it drops the batch in flight and everything pending instead of writing it (the
fenced producers of :mod:`.fencing` make sure stale table state can never land; this also
keeps most stale outputs out).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from service.engine import background
from service.engine.assignment import Assignments
from service.engine.assignor import CopartitionedAssignor
from service.engine.batch import Batches, within_bytes
from service.engine.deadletters import DeadLetters
from service.engine.durability import Durability
from service.engine.fencing import PartitionProducers, producer_kwargs
from service.engine.incarnations import Incarnations
from service.engine.progress import UNKNOWN
from service.engine.runtime import Runtime
from service.engine.workload import Workload
from service.gctune import BatchCollector
from service.kafka.client_config import client_kwargs
from service.metrics import Metrics
from service.settings import Settings
from service.standby import StandbyReplicator
from service.topics import TopicSpec, ensure_topics
from tables.offsets import OFFSETS
from tables.store import claim_data_dir

log = logging.getLogger(__name__)


class Engine:
    """Runs the workload; see the module docstring for the order of effects and commits."""

    def __init__(self, settings: Settings, workload: Workload, metrics: Metrics, url: str = "") -> None:
        self.settings = settings
        self.metrics = metrics
        self.rt = Runtime(settings, metrics, workload, PartitionProducers(settings), Incarnations(settings))
        self.durability = Durability(self.rt)
        self.batches = Batches(self.rt, self.durability, self._stalled, self._drop)
        self._collector = BatchCollector()
        self._served: dict[TopicPartition, int] = {}
        self.assignor = CopartitionedAssignor(settings.standby_replicas, url)
        self.assignments: Assignments | None = None
        self.state = "starting"
        self.fatal: BaseException | None = None
        self.assigned_count = 0
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._standby: StandbyReplicator | None = None
        self._stall_after = max(1.0, settings.session_timeout_ms * 2 / 3 / 1000)
        """A loop stall longer than this may have cost the membership (session timeout less one
        heartbeat interval)."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        rt = self.rt
        settings = self.settings
        claim_data_dir(settings.data_dir, settings.app_id)
        specs = [*rt.workload.topic_specs(), *self._table_topics()]
        rt.partition_counts = await ensure_topics(settings, specs)
        rt.dead_letters = DeadLetters(
            settings.dead_letter_topic, rt.partition_counts[settings.dead_letter_topic], self.metrics
        )
        client = f"{settings.app_id}-{socket.gethostname()}-{os.getpid()}"
        kwargs = client_kwargs(settings, client_id=client)
        rt.producer = AIOKafkaProducer(**kwargs, **producer_kwargs())
        if settings.standby_replicas:
            self._standby = StandbyReplicator(settings, self._store_path)
            await self._standby.start()
        self.assignments = Assignments(rt, self.durability, self._standby, self.assignor)
        rt.consumer = AIOKafkaConsumer(
            **kwargs,
            partition_assignment_strategy=(self.assignor,),
            group_id=settings.app_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_interval_ms=300_000,
            fetch_max_bytes=max(settings.max_batch_bytes, 1 << 20),  # not much more than a batch
            # A partition's fetch may fill a batch: at 1 MiB (the client's default) a batch of
            # short lines was cut where one fetch response ended and the next began, so most
            # batches held two partitions' pieces, and a batch's sends folded half as well.
            max_partition_fetch_bytes=max(settings.max_batch_bytes, 1 << 20),
            metadata_max_age_ms=settings.metadata_max_age_ms,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(100, settings.session_timeout_ms // 3),
            group_instance_id=settings.instance_id,
        )
        await rt.producer.start()
        await rt.consumer.start()
        topics, patterns = rt.workload.subscriptions()
        if patterns:
            names = [re.escape(topic) for topic in topics] + [f"(?:{p})" for p in patterns]
            rt.consumer.subscribe(pattern=f"^(?:{'|'.join(names)})$", listener=_Listener(self))
        else:
            rt.consumer.subscribe(topics=topics, listener=_Listener(self))
        self.state = "joining"
        log.info("worker started", extra={"topics": topics, "patterns": patterns, "client": client})

    def _table_topics(self) -> list[TopicSpec]:
        """Changelogs of every table and of the offsets table, compacted, with exactly the
        tables' partitions (partition q of a table is backed by partition q of its changelog)."""
        settings = self.settings
        specs = [
            # Written every commit: small segments keep the compacted log short to read on assignment.
            TopicSpec(
                OFFSETS.changelog_topic(settings.app_id),
                settings.topic_partitions,
                internal=True,
                config={
                    "cleanup.policy": "compact",
                    "segment.ms": "60000",
                    "min.cleanable.dirty.ratio": "0.1",
                },
            )
        ]
        for table in self.rt.workload.tables():
            specs.append(
                TopicSpec(
                    table.spec.changelog_topic(settings.app_id),
                    table.partitions or settings.topic_partitions,
                    internal=True,
                    config={"cleanup.policy": "compact"},
                )
            )
        return specs

    def _store_path(self, table: str, partition: int) -> Path:
        return self.settings.data_dir / "tables" / table / str(partition)

    def request_stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        """Process until :meth:`request_stop`; then drain, commit and leave the group."""
        rt = self.rt
        consumer = rt.consumer
        assert consumer is not None
        tasks = [
            asyncio.create_task(background.tick(rt, self._stall_after), name="sluice-tick"),
            asyncio.create_task(background.report_lag(rt, self._table_sizes), name="sluice-lag"),
            asyncio.create_task(background.purge_internal(rt, rt.workload.internal), name="sluice-purge"),
            asyncio.create_task(background.follow_ends(rt), name="sluice-ends"),
        ]
        stop_wait = asyncio.create_task(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                self._raise_fatal()
                generation = rt.progress.generation
                started = time.monotonic()
                fetch = asyncio.ensure_future(self._fetch())
                await asyncio.wait({fetch, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    break
                fetched = fetch.result()
                async with self._lock:
                    self._raise_fatal()
                    if rt.progress.generation != generation:
                        self._refetch(fetched)  # positions were decided anew meanwhile
                    else:
                        await self.batches.run(fetched, started)
                    if (
                        time.monotonic() - self.durability.last_commit
                        >= self.settings.commit_interval_ms / 1000
                    ):
                        if self._stalled(started):
                            self._drop("stalled before commit")
                        else:
                            await self.durability.commit()
                del fetched, fetch
                self._collector.batch_done()  # between batches, not in one (service.gctune)
            self._raise_fatal()
            async with self._lock:
                await self.durability.commit()
        finally:
            stop_wait.cancel()
            for task in tasks:
                task.cancel()

    async def close(self) -> None:
        """Leave the group and release clients and stores (after :meth:`run` or on failure)."""
        self.state = "stopping"
        rt = self.rt
        await self.durability.abandon_phase_a()
        if rt.consumer is not None:
            await rt.consumer.stop()
        if rt.producer is not None:
            await rt.producer.stop()
        await rt.fences.release()
        if self._standby is not None:
            await self._standby.stop()
        for part in rt.table_partitions():
            part.store.close()
        rt.tables.clear()

    async def _fetch(self) -> dict[TopicPartition, list[Any]]:
        """One fetch, noted the moment it returns (no other task runs in between): a rebalance
        callback may commit before the loop gets to it (see ``Progress.only_markers_ahead``)."""
        consumer = self.rt.consumer
        assert consumer is not None
        fetched: dict[TopicPartition, list[Any]] = await consumer.getmany(
            timeout_ms=500, max_records=self.settings.max_batch
        )
        within_bytes(consumer, fetched, self.settings.max_batch_bytes, self._served)
        self.rt.progress.fetched(fetched)
        return fetched

    def _raise_fatal(self) -> None:
        if self.fatal is not None:
            raise self.fatal

    # ------------------------------------------------------------------ stalls

    def _stalled(self, since: float) -> bool:
        """Whether the event loop stopped running, since ``since``, for longer than the group
        tolerates (SIGSTOP, a long pause): seen by the ticker, or the ticker has not run since."""
        rt = self.rt
        return rt.stall_seen > since or time.monotonic() - rt.last_tick > self._stall_after

    def _drop(self, why: str) -> None:
        """Forget everything not yet durable and seek back to the durable positions: the
        batches since the last commit are processed again (the guard skips what was applied)."""
        rt = self.rt
        consumer = rt.consumer
        assert consumer is not None and self.assignments is not None
        log.warning("dropping in-flight and pending work", extra={"reason": why})
        self.durability.drop_phase_a()
        self.assignments.drop_pending()
        for tp, offset in rt.progress.rewind().items():
            if tp in consumer.assignment():
                consumer.seek(tp, offset)
        rt.last_tick = time.monotonic()

    def _refetch(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        """A fetch that straddled a new resume decision: seek its partitions back, process nothing."""
        rt = self.rt
        consumer = rt.consumer
        assert consumer is not None
        assigned = consumer.assignment()
        for tp, records in fetched.items():
            expected = rt.progress.expected.get(tp)
            if tp not in assigned or expected is None or not records:
                continue
            consumer.seek(tp, expected if expected != UNKNOWN else records[0].offset)

    def _table_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for name, parts in self.rt.tables.items():
            sizes[name] = sum(part.store.approximate_keys() for part in parts.values())
        return sizes

    # ------------------------------------------------------------------ rebalances

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:
            self.state = "rebalancing"
            assert self.assignments is not None
            await self.assignments.revoked(self._stalled(self.durability.last_commit))

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self._lock:
            assert self.assignments is not None
            self.assigned_count = len(assigned)
            self.state = "restoring"
            try:
                await self.assignments.assigned(set(assigned))
                await background.refresh_ends(self.rt)
            except Exception as exc:  # surfaces in run(); the worker stops without committing
                log.error("cannot take assignment", extra={"error": str(exc)}, exc_info=True)
                self.fatal = exc
                self._stopping.set()
                return
            for name, size in self._table_sizes().items():
                self.metrics.table_keys.labels(name).set(size)
            self.state = "running"
            log.info(
                "partitions assigned",
                extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)},
            )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.engine.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.engine.on_assigned(assigned)
