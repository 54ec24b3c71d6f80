"""The watermark rule (tables.watermark): the slowest source with records pending holds it back,
a source with nothing pending does not, it never goes backwards, and it survives a restart."""

from __future__ import annotations

from tables.watermark import NONE, PartitionClock, SourceClocks

SOURCES = ["events:0", "events:1", "events:2"]


def test_a_source_never_heard_from_holds_the_watermark_while_its_log_has_records() -> None:
    clock = PartitionClock()
    clock.heard("events:0", 5_000, 10)
    clock.heard("events:1", 9_000, 10)
    assert not clock.advance(SOURCES, {"events:0": 20, "events:1": 20, "events:2": 3})
    assert clock.watermark == NONE  # events:2 has 3 records nobody reported on


def test_the_slowest_pending_source_decides_and_a_caught_up_source_does_not() -> None:
    clock = PartitionClock()
    clock.heard("events:0", 5_000, 10)
    clock.heard("events:1", 9_000, 20)
    clock.heard("events:2", 1_000, 7)
    ends = {"events:0": 15, "events:1": 25, "events:2": 7}  # events:2 processed everything
    assert clock.advance(SOURCES, ends)
    assert clock.watermark == 5_000
    clock.heard("events:0", 12_000, 15)  # caught up too
    clock.advance(SOURCES, {**ends, "events:0": 15})
    assert clock.watermark == 9_000


def test_no_source_pending_lets_it_reach_the_largest_event_time() -> None:
    clock = PartitionClock()
    clock.heard("events:0", 5_000, 10)
    clock.heard("events:1", 9_000, 20)
    clock.advance(SOURCES, {"events:0": 10, "events:1": 20, "events:2": 0})
    assert clock.watermark == 9_000


def test_unknown_log_ends_count_as_pending() -> None:
    clock = PartitionClock()
    clock.heard("events:0", 5_000, 10)
    assert not clock.advance(["events:0", "events:1"], None)
    assert clock.watermark == NONE


def test_it_never_goes_backwards_and_restores_from_its_state() -> None:
    clock = PartitionClock()
    clock.heard("events:0", 5_000, 10)
    clock.advance(["events:0"], {"events:0": 10})
    clock.heard("events:0", 3_000, 8)  # a replayed record from before a crash
    clock.advance(["events:0"], {"events:0": 10})
    assert clock.watermark == 5_000
    again = PartitionClock(clock.state())
    assert again.watermark == 5_000 and again.sources == {"events:0": [5_000, 10]}


def test_source_clocks_report_what_was_reached_and_notice_a_moved_position() -> None:
    clocks = SourceClocks()
    clocks.observe("events:0", 7_000)
    clocks.observe("events:0", 6_000)  # out of order: the reached time stays
    assert clocks.stale("events:0", 12)
    assert clocks.report("events:0", 12) == (7_000, 12)
    assert not clocks.stale("events:0", 12)
    assert clocks.stale("events:0", 13)  # moved past a transaction marker
