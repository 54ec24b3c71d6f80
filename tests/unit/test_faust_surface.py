"""``tests/apps/surface.py`` through sluice's seam, ``agent.test_context()``: the filter + yield
agent (``window_readings``) on in-memory tables, what it yields to its sink collected, and the
guard (a replayed reading changes nothing and yields nothing again). No broker.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Iterator
from typing import Any

import pytest

import service
from tests.apps import surface
from tests.seam import placed, rows, skipped

PARTITIONS = 4


@pytest.fixture(autouse=True)
def _fresh_app() -> Iterator[None]:
    """Build the app again, as a new process importing it would."""
    importlib.reload(surface)
    assert surface.app.conf.topic_partitions == PARTITIONS, "SLUICE_TOPIC_PARTITIONS: default 4"
    yield


async def put_reading(ctx: Any, sensor: str, value: int, ts: float, offset: int) -> None:
    """A reading as the producer sends it: keyed by its sensor, its event time as the record's."""
    reading = surface.Reading(sensor=sensor, value=value, ts=ts)
    await ctx.put(reading, key=sensor, partition=placed(sensor), offset=offset, timestamp=ts)


def yielded(ctx: Any) -> list[tuple[str, int, int, dict[str, Any]]]:
    """What the agent sent: (topic, partition, source offset, value without Faust's type tag)."""
    out = []
    for sent in ctx.sent:
        value = {k: v for k, v in sent.value.items() if k != "__faust"}
        out.append((sent.topic, sent.partition, int(sent.headers["sluice.source.offset"]), value))
    return out


def accepted(sensor: str, value: int, ts: float, window_total: int, earlier_total: int) -> dict[str, Any]:
    return {
        "sensor": sensor,
        "value": value,
        "ts": ts,
        "window_total": window_total,
        "earlier_total": earlier_total,
    }


async def test_window_readings_yields_each_valid_reading_to_its_sink_and_filters_the_rest() -> None:
    sink = surface.accepted_topic.get_topic_name()
    async with surface.window_readings.test_context() as ctx:
        await put_reading(ctx, "s1", 3, 1000.5, offset=0)  # windows 990, 995, 1000
        await put_reading(ctx, "s1", -2, 1003.0, offset=1)  # a sensor error: filtered out
        await put_reading(ctx, "s1", 4, 1006.0, offset=2)  # windows 995, 1000, 1005
        await put_reading(ctx, "s2", 5, 1001.0, offset=0)  # windows 990, 995, 1000
        assert rows(surface.sensor_hops.table) == {
            '000000000990000|"s1"': 3,
            '000000000995000|"s1"': 7,
            '000000001000000|"s1"': 7,
            '000000001005000|"s1"': 4,
            '000000000990000|"s2"': 5,
            '000000000995000|"s2"': 5,
            '000000001000000|"s2"': 5,
        }
    assert ctx.dead_letters == []
    s1, s2 = placed("s1"), placed("s2")
    # a yielded value has no key: it goes to the event's partition (plus the send's index, 0)
    assert yielded(ctx) == [
        (sink, s1, 0, accepted("s1", 3, 1000.5, window_total=3, earlier_total=3)),
        (sink, s1, 2, accepted("s1", 4, 1006.0, window_total=4, earlier_total=7)),
        (sink, s2, 0, accepted("s2", 5, 1001.0, window_total=5, earlier_total=5)),
    ]
    assert all(sent.key is None and sent.headers["sluice.source.topic"] == b"readings" for sent in ctx.sent)


async def test_a_replayed_reading_changes_no_window_and_is_not_yielded_again() -> None:
    hops = surface.sensor_hops.table
    async with surface.window_readings.test_context() as ctx:
        await put_reading(ctx, "s1", 3, 1000.5, offset=7)
        await put_reading(ctx, "s1", 3, 1000.5, offset=7)  # replayed after a crash
        await put_reading(ctx, "s1", 2, 1001.0, offset=8)
        assert rows(hops) == {
            '000000000990000|"s1"': 5,
            '000000000995000|"s1"': 5,
            '000000001000000|"s1"': 5,
        }
        assert skipped(hops) == 3  # the replay's write of each of its three windows
    assert [offset for _, _, offset, _ in yielded(ctx)] == [7, 8]


async def test_count_readings_counts_only_valid_readings() -> None:
    counts = surface.reading_counts
    async with surface.count_readings.test_context() as ctx:
        for offset, (sensor, value) in enumerate([("s1", 1), ("s1", -1), ("s2", 0), ("s1", 9)]):
            await put_reading(ctx, sensor, value, 1000.0 + offset, offset=offset)
        assert rows(counts) == {'"s1"': 2, '"s2"': 1}
        assert counts["s1"] == 2 and counts["never-seen"] == 0  # read outside the agent, default=int
    assert ctx.sent == [] and ctx.dead_letters == []


# ---------------------------------------------------------------------- concurrency and awaits


async def test_concurrency_2_with_an_await_applies_both_events_of_a_partition() -> None:
    """Minimal reproduction: two events of one partition in flight at once, the first one's I/O
    slower. Faust applies both; the count must be 2."""
    app = service.App("unit-concurrency-await")
    topic = app.topic("calls", key_type=str, value_type=float)
    calls = app.Table("calls", default=int)

    @app.agent(topic, concurrency=2)  # type: ignore[untyped-decorator]
    async def call_out(latencies: Any) -> None:
        async for latency in latencies:
            await asyncio.sleep(latency)  # an I/O call
            calls["k"] += 1

    async with call_out.test_context() as ctx:
        # Both events queued together, as one fetched batch: each actor takes one.
        await asyncio.gather(
            ctx.put(0.05, key="k", partition=0, offset=0),
            ctx.put(0.0, key="k", partition=0, offset=1),
        )
        assert calls["k"] == 2
        assert skipped(calls) == 0
