"""The processing loop: fetch, run jobs, make effects durable, then commit.

One consumer in group ``SLUICE_APP_ID`` reads every job's input topic (stage 1) and
repartition topic (stage 2). For each fetched batch:

1. stage 1 splits input records into repartition records (micro-batched: one record per
   source partition and target partition) and dead letters;
   stage 2 folds repartition records into table partitions through the offset guard and
   collects outputs;
2. **phase A**: repartition records, dead letters and outputs are sent and acknowledged
   (``acks=all``);
3. **phase B**, before every commit (every ``SLUICE_COMMIT_INTERVAL_MS``, on rebalance and on
   shutdown): the rows changed by the batches since the last commit, once per row, and the
   stage-1 positions are sent to the changelogs and acknowledged; only then are they written
   to local RocksDB;
4. the offsets of those batches are committed.

With ``exactly_once`` every batch is one transaction holding all of it, phase B included.

Outputs are acknowledged before the changelog so that a row the changelog has (and the guard
will therefore skip on replay) never lacks its outputs (G1). Nothing is committed whose
effects are not acknowledged, and an exception in job code dead-letters the event instead of
silently acknowledging it (faust-streaming #315, #527). Batches are processed one at a time
under a lock that rebalance callbacks also take, so a commit never passes an in-flight event
(faust-streaming #606) and a revoked partition's last batch is durable and committed before
its next owner starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from service.changelog import read_table
from service.effects import Sender
from service.errors import OperationError, StateError
from service.job import BadRecord, Job, Outputs, Processor
from service.kafka.client_config import client_kwargs
from service.kafka.murmur2 import partition_for_key
from service.metrics import Metrics
from service.ratelimit import RateLimiter
from service.repartition import decode as decode_repartition
from service.repartition import encode as encode_repartition
from service.restore import restore
from service.settings import OnOffsetAhead, ProcessingGuarantee, Settings
from service.standby import StandbyAssignor, StandbyReplicator
from service.topics import ensure_topics, worker_topics
from tables.codec import Row, encode_row
from tables.offsets import OFFSETS, SOURCE_OFFSET_PREFIX, offset_key
from tables.positions import Origin
from tables.store import PartitionStore, claim_data_dir
from tables.table import TablePartition

log = logging.getLogger(__name__)


@dataclass
class JobPartition:
    """Stage 2 of one job on one repartition partition: its tables and processor."""

    job: Job
    partition: int
    tables: dict[str, TablePartition]
    processor: Processor | None = None
    outputs: Outputs = field(default_factory=Outputs)

    def close(self) -> None:
        for table in self.tables.values():
            table.store.close()


@dataclass(frozen=True)
class Route:
    job: Job
    stage: int  # 1: input topic, 2: repartition topic


class Engine:
    """Runs the jobs; see the module docstring for the order of effects and commits."""

    def __init__(self, settings: Settings, jobs: Sequence[Job], metrics: Metrics) -> None:
        self.settings = settings
        self.jobs = list(jobs)
        self.metrics = metrics
        self.state = "starting"
        self.fatal: BaseException | None = None
        self.routes: dict[str, Route] = {}
        for job in self.jobs:
            if job.input_pattern is None:
                self.routes[job.input_topic] = Route(job, 1)
            if job.tables:
                self.routes[job.repartition_topic(settings.app_id)] = Route(job, 2)
        self.parts: dict[tuple[str, int], JobPartition] = {}
        self.processed: dict[TopicPartition, int] = {}
        """Next offset per partition whose effects are durable."""
        self._undurable: dict[TopicPartition, int] = {}
        """Next offset per partition processed since the last phase B (outputs acknowledged,
        table changes still pending)."""
        self._dirty: dict[tuple[str, int], JobPartition] = {}
        """Job partitions with pending table changes since the last phase B."""
        self.committed: dict[TopicPartition, int] = {}
        self._lag_base: dict[TopicPartition, int] = {}
        """Committed offset of assigned partitions nothing was processed from yet (for lag)."""
        self._reported: set[TopicPartition] = set()
        """Partitions whose gauges this worker exports."""
        self._assignor: StandbyAssignor | None = None
        self._standby: StandbyReplicator | None = None
        self.assigned_count = 0
        self._lock = asyncio.Lock()
        self._last_commit = time.monotonic()
        self._partition_counts: dict[str, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
        self._route_key = lru_cache(maxsize=1 << 16)(self._route_key_uncached)
        self._output_partition = lru_cache(maxsize=1 << 16)(partition_for_key)
        rate = settings.max_rate_per_partition
        self._limiter = RateLimiter(rate) if rate else None
        self._metrics_on = settings.metrics_enabled
        self._eos = settings.processing_guarantee is ProcessingGuarantee.EXACTLY_ONCE

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        claim_data_dir(self.settings.data_dir, self.settings.app_id)
        self._partition_counts = await ensure_topics(self.settings, worker_topics(self.settings, self.jobs))
        client = f"{self.settings.app_id}-{socket.gethostname()}-{os.getpid()}"
        kwargs = client_kwargs(self.settings, client_id=client)
        transactional: dict[str, Any] = {}
        if self._eos:
            transactional = {
                # Stable per worker (pod name, or an id kept in the data directory): a restarted
                # worker fences its crashed predecessor and aborts its open transaction at once.
                "transactional_id": f"{self.settings.app_id}-{self._instance()}",
                "transaction_timeout_ms": 15_000,
            }
        self._producer = AIOKafkaProducer(
            **kwargs,
            acks="all",
            enable_idempotence=True,
            max_batch_size=512 * 1024,
            linger_ms=2,
            **transactional,
        )
        strategy: dict[str, Any] = {}
        if self.settings.standby_replicas:
            stateful = [j.repartition_topic(self.settings.app_id) for j in self.jobs if j.tables]
            self._assignor = StandbyAssignor(self.settings.standby_replicas, stateful)
            strategy = {"partition_assignment_strategy": (self._assignor,)}
            self._standby = StandbyReplicator(self.settings, self._store_path)
            await self._standby.start()
        self._consumer = AIOKafkaConsumer(
            **kwargs,
            **strategy,
            group_id=self.settings.app_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_interval_ms=300_000,
            metadata_max_age_ms=self.settings.metadata_max_age_ms,
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=max(100, self.settings.session_timeout_ms // 3),
            group_instance_id=self.settings.instance_id,
        )
        await self._producer.start()
        await self._consumer.start()
        patterns = [j.input_pattern for j in self.jobs if j.input_pattern is not None]
        if patterns:
            names = [re.escape(topic) for topic in self.routes] + [f"(?:{p})" for p in patterns]
            self._consumer.subscribe(pattern=f"^(?:{'|'.join(names)})$", listener=_Listener(self))
        else:
            self._consumer.subscribe(topics=list(self.routes), listener=_Listener(self))
        self.state = "joining"
        log.info("worker started", extra={"jobs": [j.name for j in self.jobs], "client": client})

    def _instance(self) -> str:
        if self.settings.instance_id:
            return self.settings.instance_id
        path = self.settings.data_dir / "INSTANCE_ID"
        if not path.exists():
            path.write_text(uuid.uuid4().hex + "\n")
        return path.read_text().strip()

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Process until :meth:`request_stop`; then drain, commit and leave the group."""
        consumer = self._consumer
        assert consumer is not None
        lag_task = asyncio.create_task(self._lag_loop(), name="sluice-lag")
        stop_wait = asyncio.create_task(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                self._raise_fatal()
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
                    if fetched:
                        await self._process(fetched)
                    if time.monotonic() - self._last_commit >= self.settings.commit_interval_ms / 1000:
                        await self._commit()
            self._raise_fatal()
            async with self._lock:
                await self._commit()
        finally:
            stop_wait.cancel()
            lag_task.cancel()

    async def close(self) -> None:
        """Leave the group and release clients and stores (after :meth:`run` or on failure)."""
        self.state = "stopping"
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        if self._standby is not None:
            await self._standby.stop()
        for part in self.parts.values():
            part.close()
        self.parts.clear()

    def _raise_fatal(self) -> None:
        if self.fatal is not None:
            raise self.fatal

    def route(self, topic: str) -> Route:
        """The job and stage of a topic; topics matching an input pattern are added on first sight."""
        found = self.routes.get(topic)
        if found is None:
            job = next(j for j in self.jobs if j.reads(topic))
            found = self.routes[topic] = Route(job, 1)
        return found

    # ------------------------------------------------------------------ processing

    async def _process(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        if not self._eos:
            await self._process_batch(fetched)
            return
        # exactly_once: the batch's outputs, changelog records and input offsets commit as one
        # Kafka transaction; read_committed consumers (stage 2, restore, downstream) never see
        # the records of a batch whose transaction did not commit.
        producer = self._producer
        assert producer is not None
        await producer.begin_transaction()
        try:
            await self._process_batch(fetched)
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.abort_transaction()
            raise

    async def _process_batch(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        started = time.monotonic()
        sender = Sender(self._producer)
        touched: list[JobPartition] = []
        next_offsets: dict[TopicPartition, int] = {}
        assigned = self._consumer.assignment() if self._consumer is not None else set()
        for tp, records in fetched.items():
            # A rebalance may have run between the fetch and this batch. Records of a partition
            # we lost are left to its new owner; records of one we kept are processed (the
            # consumer may deliver them again from the committed offset: the guard drops them).
            if not records or tp not in assigned:
                continue
            route = self.route(tp.topic)
            if route.stage == 1:
                if self._limiter is not None:
                    records = self._throttle(tp, records)
                    if not records:
                        continue
                self._split(route.job, tp, records, sender)
            else:
                part = self.parts.get((route.job.name, tp.partition))
                if part is None:  # revoked meanwhile; its next owner reads it
                    continue
                self._apply(part, tp, records, sender)
                touched.append(part)
            next_offsets[tp] = records[-1].offset + 1
        for part in touched:
            assert part.processor is not None
            part.processor.end_batch(part.outputs)
            self._send_outputs(part, sender)
        processed = time.monotonic()
        for part in touched:
            self._dirty[(part.job.name, part.partition)] = part
            for table in part.tables.values():
                if table.duplicates_skipped:
                    self.metrics.duplicates_skipped.labels(table.spec.name).inc(table.duplicates_skipped)
                    table.duplicates_skipped = 0
        self._undurable.update(next_offsets)
        if self._eos:  # one transaction per batch: outputs, changelog and offsets at once
            await self._make_durable(sender)
        else:
            await sender.flush()  # phase A: outputs, repartition records, dead letters
        if self._metrics_on:
            for job in self.jobs:
                self.metrics.processing.labels(job.name).observe(processed - started)

    async def _make_durable(self, sender: Sender | None = None) -> None:
        """Phase B: send the changed rows and the stage-1 positions of every batch since the last
        call to the changelogs, wait for the broker, and only then write them to local RocksDB.

        At-least-once runs this before each commit, so a row changed by several batches within
        a commit interval costs one changelog record and one RocksDB write, not one per batch;
        each batch's outputs were acknowledged in its phase A, before any of this. Until then
        the rows live in the tables' ``pending`` overlay, where reads see them.
        """
        sender = sender if sender is not None else Sender(self._producer)
        offsets_topic = OFFSETS.changelog_topic(self.settings.app_id)
        for tp, offset in self._undurable.items():
            if self.route(tp.topic).stage == 1:
                row = encode_row(Row(offset, {}), OFFSETS.schema)
                sender.add(
                    offsets_topic,
                    self._offsets_partition(tp),
                    offset_key(tp.topic, tp.partition).encode(),
                    row,
                )
        changes = []
        for part in self._dirty.values():
            for table in part.tables.values():
                records = list(table.changelog_records())
                if records:
                    topic = table.spec.changelog_topic(self.settings.app_id)
                    for key, value in records:
                        sender.add(topic, table.partition, key, value)
                    changes.append((table, topic, records))
        last = await sender.flush()
        if self._eos:
            assert self._producer is not None
            if self._undurable:
                await self._producer.send_offsets_to_transaction(self._undurable, self.settings.app_id)
            await self._producer.commit_transaction()
            if self._undurable:
                self.committed.update(self._undurable)
                self.metrics.commits.inc()
        for table, topic, records in changes:
            table.persist(records, last[(topic, table.partition)])
        self.processed.update(self._undurable)
        self._undurable.clear()
        self._dirty.clear()

    def _split(self, job: Job, tp: TopicPartition, records: list[Any], sender: Sender) -> None:
        """Stage 1: decode, validate, route each update to the partition owning its key."""
        limit = self.settings.max_record_bytes
        per_target: dict[int, list[list[Any]]] = {}  # target -> entries (service.repartition)
        for record in records:
            value = record.value
            if value is None:
                self._dead_letter(job, record, "null_value", "", sender)
                continue
            if len(value) > limit:
                self._dead_letter(job, record, "oversized", f"{len(value)} > {limit} bytes", sender)
                continue
            try:
                updates = job.split(record.key, value)
            except BadRecord as exc:
                self._dead_letter(job, record, exc.reason, exc.detail, sender)
                continue
            except Exception as exc:  # a bug triggered by this record: keep it, say so
                log.exception("job code failed on a record", extra=_where(job, record))
                self._dead_letter(job, record, "job_error", repr(exc), sender)
                continue
            if not job.tables:  # stateless: no table, no repartition; forward the parsed record
                self._forward(job, record, updates, sender)
                continue
            for index, (key, payload) in enumerate(updates):
                entries = per_target.setdefault(self._route_key(key), [])
                if entries and entries[-1][0] == record.offset:
                    entries[-1][2].append([key, payload, index])
                else:
                    entries.append([record.offset, record.timestamp, [[key, payload, index]]])
        topic = job.repartition_topic(self.settings.app_id)
        for target, entries in per_target.items():
            for value, headers in encode_repartition(tp.topic, tp.partition, entries, job.combine):
                sender.add(topic, target, None, value, headers)
        if self._metrics_on:
            self.metrics.events_processed.labels(job.name, tp.topic, str(tp.partition)).inc(len(records))

    def _forward(self, job: Job, record: Any, updates: Sequence[tuple[str, Any]], sender: Sender) -> None:
        n = self._partition_counts[job.output_topic]
        headers = _source_headers(record.topic, record.partition, record.offset)
        for key, payload in updates:
            kb = key.encode() if key else None
            partition = partition_for_key(kb, n) if kb else record.partition % n
            sender.add(job.output_topic, partition, kb, orjson.dumps(payload), headers)

    def _throttle(self, tp: TopicPartition, records: list[Any]) -> list[Any]:
        """Keep what the rate allows; seek back over the rest and pause until a token is due."""
        assert self._limiter is not None and self._consumer is not None
        taken = self._limiter.admit(tp, len(records))
        if taken == len(records):
            return records
        consumer = self._consumer
        consumer.seek(tp, records[taken].offset)
        consumer.pause(tp)
        self.metrics.rate_limit_pauses.labels(tp.topic, str(tp.partition)).inc()

        def resume() -> None:
            if tp in consumer.assignment():
                consumer.resume(tp)

        asyncio.get_running_loop().call_later(self._limiter.wait(tp), resume)
        return records[:taken]

    def _offsets_partition(self, tp: TopicPartition) -> int:
        return partition_for_key(offset_key(tp.topic, tp.partition).encode(), self.settings.topic_partitions)

    def _route_key_uncached(self, key: str) -> int:
        return partition_for_key(key.encode(), self.settings.topic_partitions)

    def _apply(self, part: JobPartition, tp: TopicPartition, records: list[Any], sender: Sender) -> None:
        """Stage 2: fold each update into the job's tables; the guard drops repeats."""
        processor = part.processor
        assert processor is not None
        out = part.outputs
        now_ms = time.time() * 1000
        latency = self.metrics.event_latency.labels(part.job.name)
        combine = part.job.combine
        for record in records:
            first_ts, updates = decode_repartition(record.value, record.headers, combine)
            for key, payload, origin in updates:
                try:
                    processor.apply(key, payload, origin, out)
                except Exception as exc:
                    log.exception("job code failed on an update", extra={"job": part.job.name})
                    self._dead_letter_update(part.job, origin, key, payload, repr(exc), sender)
            if self._metrics_on:
                latency.observe(max(0.0, (now_ms - first_ts) / 1000))
        # Every table of the job records the position: their changelogs are separate topics, so a
        # crash can leave one table's batch durable and another's not. Resuming from the lowest
        # position re-reads what the lagging table lacks; the guard skips it in the others.
        key = SOURCE_OFFSET_PREFIX + offset_key(tp.topic, tp.partition)
        for table in part.tables.values():
            table.put(key, records[-1].offset + 1)

    def _send_outputs(self, part: JobPartition, sender: Sender) -> None:
        topic = part.job.output_topic
        n = self._partition_counts[topic]
        for key, value, origin in part.outputs.records.values():
            kb = key.encode()
            source_topic, _, source_partition = origin.source.rpartition(":")
            headers = _source_headers(source_topic, source_partition, origin.offset)
            sender.add(topic, self._output_partition(kb, n), kb, orjson.dumps(value), headers)
        part.outputs.records.clear()

    def _dead_letter(self, job: Job, record: Any, reason: str, detail: str, sender: Sender) -> None:
        headers = [
            ("sluice.reason", reason.encode()),
            ("sluice.detail", detail[:500].encode()),
            ("sluice.job", job.name.encode()),
            *_source_headers(record.topic, record.partition, record.offset),
        ]
        topic = self.settings.dead_letter_topic
        sender.add(topic, record.partition % self._partition_counts[topic], record.key, record.value, headers)
        self.metrics.dead_letters.labels(job.name, reason).inc()

    def _dead_letter_update(
        self, job: Job, origin: Origin, key: str, payload: Any, detail: str, sender: Sender
    ) -> None:
        topic, _, partition = origin.source.rpartition(":")
        headers = [
            ("sluice.reason", b"job_error"),
            ("sluice.detail", detail[:500].encode()),
            ("sluice.job", job.name.encode()),
            *_source_headers(topic, partition, origin.offset),
        ]
        dead = self.settings.dead_letter_topic
        n = self._partition_counts[dead]
        sender.add(dead, int(partition) % n, key.encode(), orjson.dumps(payload), headers)
        self.metrics.dead_letters.labels(job.name, "job_error").inc()

    # ------------------------------------------------------------------ commits

    async def _commit(self) -> None:
        """Make every processed batch durable (phase B), then commit the group's offsets."""
        consumer = self._consumer
        assert consumer is not None
        if self._undurable or self._dirty:
            await self._make_durable()
        assigned = consumer.assignment()
        for tp in list(self.processed):
            if tp in assigned:
                # Past transaction markers (exactly_once topics): the consumer's position skips
                # control records that follow the last processed record; nothing lies between.
                position = await consumer.position(tp)
                if position > self.processed[tp]:
                    self.processed[tp] = position
        offsets = {
            tp: offset
            for tp, offset in self.processed.items()
            if tp in assigned and self.committed.get(tp) != offset
        }
        self._last_commit = time.monotonic()
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
        self.committed.update(offsets)
        self.metrics.commits.inc()
        self.metrics.commit_seconds.observe(time.monotonic() - started)
        for tp, offset in offsets.items():
            self.metrics.committed_offset.labels(tp.topic, str(tp.partition)).set(offset)

    # ------------------------------------------------------------------ rebalances

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:
            self.state = "rebalancing"
            try:
                await self._commit()
            except KafkaError as exc:
                log.warning("commit on revocation failed", extra={"error": str(exc)})

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self._lock:
            self.metrics.rebalances.inc()
            self.metrics.assigned_partitions.set(len(assigned))
            self.assigned_count = len(assigned)
            try:
                await self._take_assignment(set(assigned))
            except Exception as exc:  # surfaces in run(); the worker stops without committing
                log.error("cannot take assignment", extra={"error": str(exc)})
                self.fatal = exc
                self._stopping.set()
                return
            self.state = "running"
            log.info(
                "partitions assigned",
                extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)},
            )

    async def _take_assignment(self, assigned: set[TopicPartition]) -> None:
        for tp in list(self.processed):
            if tp not in assigned:
                del self.processed[tp]
                self.committed.pop(tp, None)
        if self._undurable or self._dirty:
            # The revocation's phase B failed: drop what it could not make durable. Every
            # partition resumes below from its durable position, and the replay redoes it.
            for part in self._dirty.values():
                for table in part.tables.values():
                    table.discard_pending()
            self._undurable.clear()
            self._dirty.clear()
        self._lag_base.clear()
        # Partitions that moved away stop being reported here: their new owner reports them.
        for tp in self._reported - assigned:
            labels = (tp.topic, str(tp.partition))
            for gauge in (
                self.metrics.consumer_lag,
                self.metrics.committed_offset,
                self.metrics.log_end_offset,
            ):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        self._reported = set(assigned)
        wanted = {
            (self.route(tp.topic).job.name, tp.partition): self.route(tp.topic).job
            for tp in assigned
            if self.route(tp.topic).stage == 2
        }
        for key in list(self.parts):
            if key not in wanted:
                self.parts.pop(key).close()
        if self._standby is not None and self._assignor is not None:
            # Before the owner opens them: a partition that was a standby here is released first.
            copies = {
                TopicPartition(spec.changelog_topic(self.settings.app_id), tp.partition): spec
                for tp in self._assignor.standby - assigned
                for spec in self.route(tp.topic).job.tables
            }
            await self._standby.retarget(copies)
            self.metrics.standby_partitions.set(len(copies))
        for (name, partition), job in wanted.items():
            if (name, partition) not in self.parts:
                tables = {
                    spec.name: TablePartition(spec, partition, self._open_store(spec.name, partition))
                    for spec in job.tables
                }
                self.parts[(name, partition)] = JobPartition(job, partition, tables)
        # Catch up with the changelog every time, also for partitions kept across the
        # rebalance: another worker may have owned them in between.
        self.state = "restoring"
        every_table = [t for part in self.parts.values() for t in part.tables.values()]
        await restore(self.settings, self.metrics, every_table)
        for table in every_table:
            table.forget_cache()
        for part in self.parts.values():
            assert part.job.processor is not None, f"job {part.job.name} has tables but no processor"
            part.processor = part.job.processor(part.tables)
        await self._resume_positions(assigned)
        for name, child in self._table_sizes().items():
            self.metrics.table_keys.labels(name).set(child)

    async def _table_offsets(self, assigned: set[TopicPartition]) -> dict[TopicPartition, int]:
        """The tables' position per assigned partition (G4): stage 2 from the job's own table
        partition (restored just now), stage 1 from the offsets changelog."""
        held: dict[TopicPartition, int] = {}
        inputs = [tp for tp in assigned if self.route(tp.topic).stage == 1]
        if inputs:
            wanted = {self._offsets_partition(tp) for tp in inputs}
            entries = await read_table(self.settings, OFFSETS.name, wanted=wanted)
            by_key = {e.key: e.value for e in entries}
            for tp in inputs:
                value = by_key.get(offset_key(tp.topic, tp.partition))
                if value is not None:
                    held[tp] = int(value)
        for tp in assigned:
            route = self.route(tp.topic)
            if route.stage == 2:
                part = self.parts[(route.job.name, tp.partition)]
                key = SOURCE_OFFSET_PREFIX + offset_key(tp.topic, tp.partition)
                values = [table.get(key) for table in part.tables.values()]
                if None not in values:
                    held[tp] = min(int(v) for v in values)
        return held

    async def _resume_positions(self, assigned: set[TopicPartition]) -> None:
        """Start each partition where its effects end: the tables' offset wins over a missing or
        older group offset, and a group offset ahead of the tables follows SLUICE_ON_OFFSET_AHEAD."""
        consumer = self._consumer
        assert consumer is not None
        held = await self._table_offsets(assigned)
        for tp in sorted(assigned):
            group = await consumer.committed(tp)
            table = held.get(tp)
            position, reason = resume_position(group, table, self.settings.on_offset_ahead)
            if reason == "group-ahead-of-table":
                assert group is not None and table is not None
                if await records_between(self.settings, tp, table, group) == 0:
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
            if reason == "group-ahead-of-table" and self.settings.on_offset_ahead is OnOffsetAhead.FAIL:
                raise StateError(
                    f"{tp.topic}:{tp.partition}: the group's committed offset {group} is ahead of "
                    f"the tables' {table}: the effects of {group - table} events may be lost "
                    "(group offsets reset or written by another app?). Set SLUICE_ON_OFFSET_AHEAD="
                    "table to reprocess them (the guard skips what was applied) or =group to accept"
                )
            if position is not None and position != group:
                consumer.seek(tp, position)
            if position is not None:
                self.processed[tp] = position

    def _store_path(self, table: str, partition: int) -> Path:
        return self.settings.data_dir / "tables" / table / str(partition)

    def _open_store(self, table: str, partition: int) -> PartitionStore:
        return PartitionStore(self._store_path(table, partition))

    def _table_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for part in self.parts.values():
            for name, table in part.tables.items():
                sizes[name] = sizes.get(name, 0) + table.store.approximate_keys()
        return sizes

    # ------------------------------------------------------------------ lag

    async def _lag_loop(self) -> None:
        """Refresh lag every 2.5 s from the brokers, also for partitions where nothing flows."""
        consumer = self._consumer
        assert consumer is not None
        while True:
            await asyncio.sleep(2.5)
            assigned = list(consumer.assignment())
            if not assigned:
                continue
            try:
                ends = await consumer.end_offsets(assigned)
                for tp in assigned:
                    if tp not in self.processed and tp not in self._lag_base:
                        self._lag_base[tp] = await consumer.committed(tp) or 0
            except KafkaError as exc:
                log.warning("lag refresh failed", extra={"error": str(exc)})
                continue
            for tp, end in ends.items():
                labels = (tp.topic, str(tp.partition))
                self.metrics.log_end_offset.labels(*labels).set(end)
                position = self._undurable.get(tp) or self.processed.get(tp, self._lag_base.get(tp, 0))
                self.metrics.consumer_lag.labels(*labels).set(max(0, end - position))
            for name, size in self._table_sizes().items():
                self.metrics.table_keys.labels(name).set(size)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.engine.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.engine.on_assigned(assigned)


def _where(job: Job, record: Any) -> dict[str, Any]:
    return {"job": job.name, "topic": record.topic, "partition": record.partition, "offset": record.offset}


async def records_between(settings: Settings, tp: TopicPartition, start: int, end: int) -> int:
    """How many committed data records ``tp`` holds in ``[start, end)``: zero when only
    transaction markers (or aborted records) separate a group offset from a table offset."""
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings, client_id=f"{settings.app_id}-check"),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    count = 0
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        deadline = time.monotonic() + 60
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise OperationError(f"cannot read {tp.topic}:{tp.partition} [{start}, {end})")
            fetched = await consumer.getmany(tp, timeout_ms=1000)
            records = fetched.get(tp, [])
            count += sum(1 for r in records if r.offset < end)
            if not records and await consumer.position(tp) < end:
                log_end = (await consumer.end_offsets([tp]))[tp]
                if log_end <= await consumer.position(tp):
                    count += end - log_end  # a group offset past the log's end is no safe position
                    break
    finally:
        await consumer.stop()
    return count


def resume_position(group: int | None, table: int | None, on_ahead: OnOffsetAhead) -> tuple[int | None, str]:
    """Where a partition resumes, and why (G4). ``None``: the consumer's own reset policy."""
    if table is None:
        return group, "no-table-offset" if group is not None else "new"
    if group is None:
        return table, "group-missing"
    if group < table:
        return table, "group-behind-table"
    if group == table:
        return group, "ok"
    return (table if on_ahead is OnOffsetAhead.TABLE else group), "group-ahead-of-table"


def _source_headers(topic: str, partition: int | str, offset: int) -> list[tuple[str, bytes]]:
    """Where a record came from, so a downstream consumer can drop repeats (outputs are
    at-least-once)."""
    return [
        ("sluice.source.topic", topic.encode()),
        ("sluice.source.partition", str(partition).encode()),
        ("sluice.source.offset", str(offset).encode()),
    ]
