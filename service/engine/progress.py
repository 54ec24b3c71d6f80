"""Where each partition stands: what to process next, what was processed, what is durable,
what is committed — and the rule that records fetched before a resume decision are not processed.

aiokafka installs a new assignment and wakes its fetcher before ``on_partitions_assigned``
runs, so a fetch can return records read from the group's committed offset (or from the log
start when there is none) although the resume rule then seeks elsewhere (G4). Processing them
would lose the records between the two positions, or move stored positions backwards. So a
partition's records are processed only once its resume position is decided (``expected``),
only from that position on, and a fetch that straddled an assignment is discarded whole and
its partitions sought back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

UNKNOWN = -1
"""``expected`` value of a partition that starts wherever the consumer's reset policy puts it."""


@dataclass
class Progress:
    expected: dict[TopicPartition, int] = field(default_factory=dict)
    """Partitions whose resume position is decided, and the next offset to process
    (:data:`UNKNOWN` until the first record when the consumer's reset policy decides)."""
    undurable: dict[TopicPartition, int] = field(default_factory=dict)
    """Next offset per partition processed since the last phase B (outputs acknowledged,
    table changes still pending)."""
    durable: dict[TopicPartition, int] = field(default_factory=dict)
    """Next offset per partition whose effects are durable."""
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    returned: dict[TopicPartition, int] = field(default_factory=dict)
    """Next offset after the last record the consumer returned per partition, noted as the
    fetch returns (its position moved there whether or not the records are processed)."""
    generation: int = 0
    """Bumped whenever positions are decided anew (assignment, revocation, a dropped batch):
    a fetch started under an older generation is not processed."""

    def admit(self, tp: TopicPartition, records: list[Any]) -> list[Any]:
        """The records of ``tp`` to process: none before the resume decision, none before the
        expected offset (a redelivery of what this worker already processed)."""
        expected = self.expected.get(tp)
        if expected is None or not records:
            return []
        if expected == UNKNOWN:  # the consumer's reset policy chose the start: nothing lies before
            self.durable.setdefault(tp, records[0].offset)
        elif records[0].offset < expected:
            records = [r for r in records if r.offset >= expected]
        return records

    def fetched(self, records: dict[TopicPartition, list[Any]]) -> None:
        for tp, batch in records.items():
            if batch:
                self.returned[tp] = batch[-1].offset + 1

    def only_markers_ahead(self, tp: TopicPartition) -> bool:
        """Whether every record the consumer returned for ``tp`` is durable, so that a consumer
        position past the durable one can only be past transaction markers (or records a
        read_committed fetch dropped), never past records not processed yet."""
        return self.returned.get(tp, 0) <= self.durable.get(tp, -1)

    def advance(self, tp: TopicPartition, next_offset: int) -> None:
        """``tp`` was processed up to ``next_offset`` (exclusive); positions never go back."""
        if next_offset > self.undurable.get(tp, -1):
            self.undurable[tp] = next_offset
        if next_offset > self.expected.get(tp, UNKNOWN):
            self.expected[tp] = next_offset

    def made_durable(self, tps: set[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Move the undurable positions of ``tps`` (all when ``None``) to durable; return them."""
        chosen = {tp: o for tp, o in self.undurable.items() if tps is None or tp in tps}
        for tp, offset in chosen.items():
            if offset > self.durable.get(tp, -1):
                self.durable[tp] = offset
            del self.undurable[tp]
        return chosen

    def forget(self, tp: TopicPartition) -> None:
        """``tp`` is no longer processed here (revoked, fenced, or its batch dropped)."""
        self.expected.pop(tp, None)
        self.returned.pop(tp, None)
        self.undurable.pop(tp, None)
        self.durable.pop(tp, None)
        self.committed.pop(tp, None)

    def rewind(self) -> dict[TopicPartition, int]:
        """Drop every position not yet durable; return where each decided partition must be
        sought back to (its durable position)."""
        self.undurable.clear()
        self.generation += 1
        back = {}
        for tp in self.expected:
            durable = self.durable.get(tp)
            if durable is not None:
                self.expected[tp] = durable
                back[tp] = durable
        return back
