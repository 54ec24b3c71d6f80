"""``SLUICE_MAX_BATCH_BYTES``: a fetch is cut to its first bytes (at least one record) and the
rest is sought back, to be fetched again with the next batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from service.engine.batch import within_bytes

A, B = TopicPartition("lines", 0), TopicPartition("lines", 1)


@dataclass
class Rec:
    offset: int
    serialized_value_size: int
    serialized_key_size: int = -1


class Seeks:
    """Where the cut sends each partition back (the consumer's ``seek``)."""

    def __init__(self) -> None:
        self.to: dict[TopicPartition, int] = {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.to[tp] = offset


def cut(
    fetched: dict[TopicPartition, list[Any]], budget: int
) -> tuple[dict[TopicPartition, list[int]], Seeks]:
    seeks = Seeks()
    within_bytes(seeks, fetched, budget)
    return {tp: [r.offset for r in records] for tp, records in fetched.items()}, seeks


def test_a_fetch_within_the_budget_is_kept_whole() -> None:
    kept, seeks = cut({A: [Rec(0, 100), Rec(1, 100)], B: [Rec(5, 100, 10)]}, 310)
    assert kept == {A: [0, 1], B: [5]} and seeks.to == {}


def test_the_rest_of_a_fetch_past_the_budget_is_sought_back() -> None:
    kept, seeks = cut({A: [Rec(0, 100), Rec(1, 100), Rec(2, 100)], B: [Rec(5, 100), Rec(6, 100)]}, 250)
    assert kept == {A: [0, 1]}
    assert seeks.to == {A: 2, B: 5}  # B is read again from its first record


def test_one_record_larger_than_the_budget_still_makes_a_batch() -> None:
    kept, seeks = cut({A: [Rec(0, 5000), Rec(1, 10)]}, 1024)
    assert kept == {A: [0]} and seeks.to == {A: 1}
