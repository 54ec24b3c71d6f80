"""Where partitions stand (service/engine/progress.py): the rules a commit relies on."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import TopicPartition

from service.engine.progress import Progress

TP = TopicPartition("events", 2)


@dataclass
class Rec:
    offset: int


def test_a_fetch_not_yet_processed_keeps_the_position_from_counting_as_markers() -> None:
    """A fetch returned 230..234 while a rebalance callback commits: the consumer's position
    (235) is past records nobody processed, so the commit must stay at the durable 230."""
    progress = Progress(expected={TP: 230}, durable={TP: 230})
    assert progress.only_markers_ahead(TP)  # nothing returned yet: only markers can lie ahead
    progress.fetched({TP: [Rec(o) for o in range(230, 235)]})
    assert not progress.only_markers_ahead(TP)
    progress.advance(TP, 235)
    assert not progress.only_markers_ahead(TP)  # processed, not yet durable
    progress.made_durable()
    assert progress.only_markers_ahead(TP)


def test_a_forgotten_partition_forgets_what_was_returned() -> None:
    progress = Progress(expected={TP: 0}, durable={TP: 0})
    progress.fetched({TP: [Rec(0)]})
    progress.forget(TP)
    assert TP not in progress.returned
