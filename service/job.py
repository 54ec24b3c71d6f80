"""What a job is, to the engine: two pure steps wired to topics and tables.

A job reads an input topic whose records may arrive on any partition. The engine runs it in
two stages, like Spark's shuffle or Kafka Streams' repartition:

1. **split** (stateless, per input record): decode and validate the record and say which
   table keys it updates, with what payload. A record that cannot be decoded raises
   :class:`BadRecord`; the engine dead-letters it with its reason.
2. **apply** (per table partition): the engine routes each (key, payload) to the partition
   owning ``key``, and the job's :class:`Processor` folds it into its tables through
   :meth:`tables.table.TablePartition.update`, which carries the offset guard. What it emits
   goes to the job's output topic.

The job's logic stays pure functions of (event, current row) -> (new row, outputs); the
agent module under ``agents/`` only wires them to these two hooks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tables.positions import Origin
from tables.table import TablePartition, TableSpec

if TYPE_CHECKING:
    from tables.watermark import PartitionClock


class BadRecord(Exception):
    """The record itself is at fault: it goes to the dead-letter topic with ``reason``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Outputs:
    """Records a processor emits during one batch, coalesced by ``slot``.

    A later emit to the same slot replaces the earlier one (wordcount sends a word's latest
    count once per batch, not once per occurrence); distinct slots are all sent, in order.
    """

    records: dict[Hashable, tuple[str, Any, Origin]] = field(default_factory=dict)

    def emit(self, slot: Hashable, key: str, value: Any, origin: Origin) -> None:
        self.records.pop(slot, None)
        self.records[slot] = (key, value, origin)


class Processor(Protocol):
    """A job's stage-2 logic bound to one partition of its tables."""

    def apply(self, key: str, payload: Any, origin: Origin, out: Outputs) -> None:
        """Fold one update into the tables (through ``TablePartition.update``)."""

    def end_batch(self, out: Outputs) -> None:
        """Called after each batch: e.g. close windows that stream time has passed."""


Split = Callable[[bytes | None, bytes], Sequence[tuple[str, Any]]]
"""(record key, record value) -> [(table key, payload), ...]; raises :class:`BadRecord`."""


@dataclass(frozen=True)
class Job:
    """A job as the engine runs it."""

    name: str
    input_topic: str
    output_topic: str
    tables: tuple[TableSpec, ...]
    """No tables: a stateless job; what ``split`` returns goes straight to ``output_topic``."""
    split: Split
    processor: Callable[[dict[str, TablePartition], PartitionClock | None], Processor] | None = None
    """Builds the stage-2 processor over one partition of each of the job's tables (and, for a
    job with event-time windows, that partition's watermark clock)."""
    combine: Callable[[Any, Any], Any] | None = None
    """An associative merge of two payloads of one key (wordcount: ``+``). With it, stage 1
    sends one update per key per fetched batch instead of one per event, listing the origins it
    stands for, so stage 2 folds each key once per batch; the guard still sees every origin."""
    event_time: Callable[[Any], int] | None = None
    """For a job with event-time windows: the event time (epoch ms) of an update's payload.
    Stage 1 then reports each source's progress to every table partition, and stage 2 closes
    windows on the watermark (see :mod:`tables.watermark`)."""
    watermark_table: str | None = None
    """The table whose bookkeeping row keeps the watermark (the one holding the windows)."""
    input_pattern: str | None = None
    """A regex of input topics, instead of ``input_topic``; matching topics created later are
    picked up at the next metadata refresh, without a restart."""

    def reads(self, topic: str) -> bool:
        """Whether ``topic`` is one of this job's inputs."""
        if self.input_pattern is None:
            return topic == self.input_topic
        return re.fullmatch(self.input_pattern, topic) is not None

    def repartition_topic(self, app_id: str) -> str:
        return f"{app_id}-{self.name}-repartition"
