"""The state the engine's parts share: settings, clients, owned partitions, positions.

The engine is a facade (:class:`service.engine.core.Engine`) over collaborators that each do
one thing — stage 1, stage 2, durability and commits, assignments, lag — and share this one
object instead of reaching into each other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from service.engine.deadletters import DeadLetters
from service.engine.fencing import PartitionProducers
from service.engine.incarnations import Incarnations
from service.engine.progress import Progress
from service.engine.routing import Routing
from service.job import Job, Outputs, Processor
from service.metrics import Metrics
from service.settings import ProcessingGuarantee, Settings
from tables.table import TablePartition
from tables.watermark import PartitionClock


@dataclass
class JobPartition:
    """Stage 2 of one job on one repartition partition: its tables, processor and clock."""

    job: Job
    partition: int
    tables: dict[str, TablePartition]
    clock: PartitionClock | None = None
    processor: Processor | None = None
    outputs: Outputs = field(default_factory=Outputs)

    def discard_pending(self) -> None:
        for table in self.tables.values():
            table.discard_pending()

    def close(self) -> None:
        for table in self.tables.values():
            table.store.close()


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics
    routing: Routing
    fences: PartitionProducers
    incarnations: Incarnations
    progress: Progress = field(default_factory=Progress)
    consumer: AIOKafkaConsumer | None = None
    producer: AIOKafkaProducer | None = None
    """Shared idempotent producer: phase A (outputs, repartition records, dead letters) in
    at-least-once mode. Everything else goes through :attr:`fences`."""
    partition_counts: dict[str, int] = field(default_factory=dict)
    dead_letters: DeadLetters | None = None
    parts: dict[tuple[str, int], JobPartition] = field(default_factory=dict)
    dirty: dict[TopicPartition, JobPartition] = field(default_factory=dict)
    """Stage-2 partitions (by repartition partition) with table changes since the last phase B."""
    source_ends: dict[str, int] | None = None
    """Log end of every source partition of the jobs with event-time windows (watermarks)."""
    last_tick: float = field(default_factory=time.monotonic)
    """When the event loop last ran the engine's ticker (a stall detector, see core)."""
    stall_seen: float = 0.0
    """When the ticker last woke up after a stall."""

    @property
    def eos(self) -> bool:
        return self.settings.processing_guarantee is ProcessingGuarantee.EXACTLY_ONCE

    @property
    def jobs(self) -> list[Job]:
        return self.routing.jobs

    def part_of(self, tp: TopicPartition) -> JobPartition | None:
        job = self.routing.stage2_job(tp.topic)
        return self.parts.get((job.name, tp.partition)) if job is not None else None

    def input_topics(self) -> list[str]:
        """Every input topic of every job (patterns: the matching topics subscribed now)."""
        known = list(self.consumer.subscription()) if self.consumer is not None else []
        topics: dict[str, None] = {}
        for job in self.jobs:
            topics.update(dict.fromkeys(self.routing.input_topics(job, known)))
        return list(topics)

    def sources(self, job: Job) -> list[str]:
        """Every partition of ``job``'s input topics, as source keys (with incarnations)."""
        known = list(self.consumer.subscription()) if self.consumer is not None else []
        return [
            self.incarnations.key(topic, partition)
            for topic in self.routing.input_topics(job, known)
            for partition in range(self.partitions_of(topic))
        ]

    def partitions_of(self, topic: str) -> int:
        count = self.partition_counts.get(topic)
        if count is None and self.consumer is not None:
            count = len(self.consumer.partitions_for_topic(topic) or ())
        return count or 0
