"""The processing loop: fetch, run jobs, make effects durable, then commit.

One consumer in group ``SLUICE_APP_ID`` reads every job's input topic (stage 1) and
repartition topic (stage 2). For each fetched batch:

1. stage 1 splits input records into repartition records (micro-batched: one record per
   source partition and target partition) and dead letters (:mod:`.stage1`); stage 2 folds
   repartition records into table partitions through the offset guard and collects outputs
   (:mod:`.stage2`); :mod:`.batch` runs both over a fetched batch;
2. **phase A**: repartition records, dead letters and outputs are sent and acknowledged
   (``acks=all``);
3. **phase B** and the commit, every ``SLUICE_COMMIT_INTERVAL_MS`` (:mod:`.durability`).

Nothing is committed whose effects are not acknowledged, and an exception in job code
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from service.engine import background
from service.engine.assignment import Assignments
from service.engine.batch import Batches
from service.engine.deadletters import DeadLetters
from service.engine.durability import Durability
from service.engine.fencing import PartitionProducers, producer_kwargs
from service.engine.incarnations import Incarnations
from service.engine.progress import UNKNOWN
from service.engine.routing import Routing
from service.engine.runtime import Runtime
from service.engine.stage1 import Stage1
from service.engine.stage2 import Stage2
from service.job import Job
from service.kafka.client_config import client_kwargs
from service.metrics import Metrics
from service.settings import Settings
from service.standby import StandbyAssignor, StandbyReplicator
from service.topics import ensure_topics, worker_topics
from tables.store import claim_data_dir

log = logging.getLogger(__name__)


class Engine:
    """Runs the jobs; see the module docstring for the order of effects and commits."""

    def __init__(self, settings: Settings, jobs: Sequence[Job], metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.rt = Runtime(
            settings,
            metrics,
            Routing(jobs, settings.app_id),
            PartitionProducers(settings),
            Incarnations(settings),
        )
        self.durability = Durability(self.rt)
        self.batches = Batches(
            self.rt, Stage1(self.rt), Stage2(self.rt), self.durability, self._stalled, self._drop
        )
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

    @property
    def jobs(self) -> list[Job]:
        return self.rt.jobs

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        rt = self.rt
        settings = self.settings
        claim_data_dir(settings.data_dir, settings.app_id)
        rt.partition_counts = await ensure_topics(settings, worker_topics(settings, self.jobs))
        rt.dead_letters = DeadLetters(
            settings.dead_letter_topic, rt.partition_counts[settings.dead_letter_topic], self.metrics
        )
        client = f"{settings.app_id}-{socket.gethostname()}-{os.getpid()}"
        kwargs = client_kwargs(settings, client_id=client)
        rt.producer = AIOKafkaProducer(**kwargs, **producer_kwargs())
        strategy: dict[str, Any] = {}
        assignor = None
        if settings.standby_replicas:
            stateful = [j.repartition_topic(settings.app_id) for j in self.jobs if j.tables]
            assignor = StandbyAssignor(settings.standby_replicas, stateful)
            strategy = {"partition_assignment_strategy": (assignor,)}
            self._standby = StandbyReplicator(settings, self._store_path)
            await self._standby.start()
        self.assignments = Assignments(rt, self.durability, self._standby, assignor)
        rt.consumer = AIOKafkaConsumer(
            **kwargs,
            **strategy,
            group_id=settings.app_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_interval_ms=300_000,
            metadata_max_age_ms=settings.metadata_max_age_ms,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(100, settings.session_timeout_ms // 3),
            group_instance_id=settings.instance_id,
        )
        await rt.producer.start()
        await rt.consumer.start()
        routing = rt.routing
        if routing.patterns:
            names = [re.escape(topic) for topic in routing.topics] + [f"(?:{p})" for p in routing.patterns]
            rt.consumer.subscribe(pattern=f"^(?:{'|'.join(names)})$", listener=_Listener(self))
        else:
            rt.consumer.subscribe(topics=routing.topics, listener=_Listener(self))
        self.state = "joining"
        log.info("worker started", extra={"jobs": [j.name for j in self.jobs], "client": client})

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
            asyncio.create_task(background.purge_repartition(rt), name="sluice-purge"),
        ]
        if any(job.event_time is not None for job in self.jobs):
            tasks.append(asyncio.create_task(background.follow_ends(rt), name="sluice-ends"))
        stop_wait = asyncio.create_task(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                self._raise_fatal()
                generation = rt.progress.generation
                started = time.monotonic()
                fetch = asyncio.ensure_future(
                    consumer.getmany(timeout_ms=500, max_records=self.settings.max_batch)
                )
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
        if rt.consumer is not None:
            await rt.consumer.stop()
        if rt.producer is not None:
            await rt.producer.stop()
        await rt.fences.release()
        if self._standby is not None:
            await self._standby.stop()
        for part in rt.parts.values():
            part.close()
        rt.parts.clear()

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
        for part in self.rt.parts.values():
            for name, table in part.tables.items():
                sizes[name] = sizes.get(name, 0) + table.store.approximate_keys()
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
                log.error("cannot take assignment", extra={"error": str(exc)})
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
