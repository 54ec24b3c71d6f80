"""The state the engine's parts share: settings, clients, owned partitions, positions.

The engine is a facade (:class:`service.engine.core.Engine`) over collaborators that each do
one thing — batches, durability and commits, assignments, background chores — and share this
one object instead of reaching into each other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from service.engine.deadletters import DeadLetters
from service.engine.fencing import PartitionProducers
from service.engine.incarnations import Incarnations
from service.engine.progress import Progress
from service.engine.workload import Workload
from service.metrics import Metrics
from service.settings import ProcessingGuarantee, Settings
from tables.table import TablePartition


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics
    workload: Workload
    fences: PartitionProducers
    incarnations: Incarnations
    progress: Progress = field(default_factory=Progress)
    consumer: AIOKafkaConsumer | None = None
    producer: AIOKafkaProducer | None = None
    """Shared idempotent producer: phase A (outputs, sends, dead letters) in at-least-once
    mode, and sends made outside agents. Everything else goes through :attr:`fences`."""
    partition_counts: dict[str, int] = field(default_factory=dict)
    dead_letters: DeadLetters | None = None
    tables: dict[str, dict[int, TablePartition]] = field(default_factory=dict)
    """Table name -> the partitions this worker owns."""
    owned: set[int] = field(default_factory=set)
    """Partition numbers this worker owns (every topic's partition with that number, and every
    table's: the assignment is co-partitioned)."""
    dirty: dict[int, set[TablePartition]] = field(default_factory=dict)
    """Partition number -> table partitions with changes since the last phase B."""
    source_ends: dict[str, int] | None = None
    """Log end of every source the watermarks wait for (by source key)."""
    last_tick: float = field(default_factory=time.monotonic)
    """When the event loop last ran the engine's ticker (a stall detector, see core)."""
    stall_seen: float = 0.0
    """When the ticker last woke up after a stall."""

    @property
    def eos(self) -> bool:
        return self.settings.processing_guarantee is ProcessingGuarantee.EXACTLY_ONCE

    def partitions_of(self, topic: str) -> int:
        count = self.partition_counts.get(topic)
        if count is None and self.consumer is not None:
            count = len(self.consumer.partitions_for_topic(topic) or ())
        return count or 0

    def table_partitions(self) -> list[TablePartition]:
        return [part for parts in self.tables.values() for part in parts.values()]
