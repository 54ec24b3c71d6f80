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
    fetched: dict[TopicPartition, list[Any]], budget: int, served: dict[TopicPartition, int] | None = None
) -> tuple[dict[TopicPartition, list[int]], Seeks]:
    seeks = Seeks()
    within_bytes(seeks, fetched, budget, served if served is not None else {})
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


def test_a_partition_cut_last_time_is_served_first() -> None:
    """B arrives behind A in every fetch; A's records alone fill the budget. B is cut once,
    then served first: neither partition waits for the other to be drained."""
    served: dict[TopicPartition, int] = {}
    kept, _ = cut({A: [Rec(0, 200), Rec(1, 200)], B: [Rec(5, 200)]}, 400, served)
    assert kept == {A: [0, 1]}
    kept, seeks = cut({A: [Rec(2, 200), Rec(3, 200)], B: [Rec(5, 200)]}, 400, served)
    assert kept == {B: [5], A: [2]} and seeks.to == {A: 3}
    kept, _ = cut({A: [Rec(3, 200), Rec(4, 200)], B: [Rec(6, 200), Rec(7, 200)]}, 400, served)
    assert kept == {A: [3, 4]}  # both served last time: the fetch's order decides
