"""The built-in agents through their test seam (``agent.test_context()``, service.app.testing):
the real agent code on in-memory tables, with the guard — a replayed event changes nothing, a
failing event is dead-lettered and the agent goes on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.app.builtin import create_app
from service.settings import load_settings


def app_for(*jobs: str, **settings: Any) -> Any:
    return create_app(load_settings(app_id="unit", jobs=jobs, **settings))


async def test_wordcount_split_sends_each_word_with_the_line_origin() -> None:
    app = app_for("wordcount")
    async with app.agents["wordcount"].test_context() as ctx:
        await ctx.put(b"the cat the end", partition=1, offset=7)
    # packed sends are encoded per target partition: one record with every word of the line
    assert {s.topic for s in ctx.sent} == {"unit-wordcount-repartition"}
    assert ctx.dead_letters == []


async def test_wordcount_counts_and_a_replayed_event_changes_nothing() -> None:
    app = app_for("wordcount")
    counts = app.tables["wordcount"]
    async with app.agents["wordcount-count"].test_context() as ctx:
        await ctx.put(2, key="the", origin=("lines:0", [7, 0]))
        await ctx.put(1, key="end", origin=("lines:0", [7, 1]))
        await ctx.put(2, key="the", origin=("lines:0", [7, 0]))  # the same line again: a replay
        await ctx.put(1, key="the", origin=("lines:0", [9, 0]))
        assert counts["the"] == 3 and counts["end"] == 1
        assert sum(p.duplicates_skipped for p in counts.partitions_here.values()) == 1
    outputs = [(s.key, s.value) for s in ctx.sent]
    assert outputs == [
        (b"the", {"word": "the", "count": 2}),
        (b"end", {"word": "end", "count": 1}),
        (b"the", {"word": "the", "count": 3}),
    ]
    assert all(s.headers["sluice.source.topic"] == b"lines" for s in ctx.sent)


async def test_a_line_that_is_not_utf8_is_dead_lettered_and_the_agent_goes_on() -> None:
    app = app_for("wordcount")
    async with app.agents["wordcount"].test_context() as ctx:
        await ctx.put(b"\xff\xfe bad", partition=0, offset=3)
        await ctx.put(b"fine line", partition=0, offset=4)
    [letter] = ctx.dead_letters
    assert letter.headers["sluice.reason"] == b"invalid_utf8"
    assert letter.headers["sluice.source.offset"] == b"3"
    assert letter.value == b"\xff\xfe bad"
    words = {update[0] for sent in ctx.sent for update in sent.value["c"]}
    assert words == {"fine", "line"}  # the next line went through


async def test_a_bad_line_in_a_take_dead_letters_only_itself() -> None:
    """wordcount's split agent takes lines in lists; the bad one raises in the middle of one.
    Every other line of the list is sent exactly once, and only the bad one is dead-lettered."""
    app = app_for("wordcount")
    async with app.agents["wordcount"].test_context() as ctx:
        await ctx.put_many([b"a b", b"c", b"\xff\xfe bad", b"d e", b"f"], partition=2)
    [letter] = ctx.dead_letters
    assert letter.headers["sluice.reason"] == b"invalid_utf8"
    assert letter.headers["sluice.source.offset"] == b"2"
    sent = sorted((u[0], u[2]) for s in ctx.sent for u in s.value["c"])  # (word, first line offset)
    assert sent == [("a", 0), ("b", 0), ("c", 1), ("d", 3), ("e", 3), ("f", 4)]


async def test_a_take_body_that_raises_after_its_loop_is_retried_one_event_at_a_time() -> None:
    """Which event of a take() list failed is not known when the agent raises after its loop:
    the list is rolled back and its events retried one per take(); the one that fails alone is
    dead-lettered, the others are applied once, and the processor the function adds is neither
    added twice by the restart nor run twice on one value."""
    app = app_for("wordcount")
    counts = app.tables["wordcount"]
    agent = app.agents["wordcount-count"]
    original = agent.fun
    calls: list[int] = []

    def doubled(value: int) -> int:
        calls.append(value)
        return value * 2

    async def failing(stream: Any) -> None:
        stream.add_processor(doubled)
        async for events in stream.take_events(100, within=1.0):
            for event in events:
                counts[event.key] += event.value
            if any(event.key == "bad" for event in events):
                raise RuntimeError("a check after the loop")

    agent.fun = failing
    try:
        async with agent.test_context() as ctx:
            await ctx.put_many([1, 5, 2], keys=["a", "bad", "b"], partition=0)
            await ctx.put_many([3], keys=["a"], partition=0)
            assert (counts["a"], counts["b"], "bad" in counts) == (8, 4, False)
    finally:
        agent.fun = original
    assert calls == [1, 5, 2, 1, 5, 2, 3]  # the list, each event alone, then the next batch
    [letter] = ctx.dead_letters
    assert letter.headers["sluice.reason"] == b"job_error"
    assert letter.headers["sluice.detail"] == b"RuntimeError: a check after the loop"


async def test_an_agent_exception_rolls_back_the_event_and_dead_letters_it() -> None:
    app = app_for("wordcount")
    counts = app.tables["wordcount"]
    agent = app.agents["wordcount-count"]
    boom = {"on": True}
    original = agent.fun

    async def failing(stream: Any) -> None:
        async for word, n in stream.items():
            counts[word] += n
            if boom["on"] and word == "bad":
                raise RuntimeError("the agent's own bug")

    agent.fun = failing
    try:
        async with agent.test_context() as ctx:
            await ctx.put(1, key="bad", origin=("lines:0", [1, 0]))
            await ctx.put(1, key="ok", origin=("lines:0", [2, 0]))
            assert "bad" not in counts  # the write was undone
            assert counts["ok"] == 1
            boom["on"] = False
            await ctx.put(1, key="bad", origin=("lines:0", [1, 0]))  # replayed later: applied once
            assert counts["bad"] == 1
    finally:
        agent.fun = original
    [letter] = ctx.dead_letters
    assert letter.headers["sluice.reason"] == b"job_error"
    assert letter.headers["sluice.detail"] == b"RuntimeError: the agent's own bug"


@pytest.mark.parametrize("grace_ms", [0, 10_000])
async def test_rollup_folds_totals_and_windows(grace_ms: int) -> None:
    app = app_for("rollup", window_grace_ms=grace_ms)
    totals, windows = app.tables["rollup_totals"], app.tables["rollup_windows"]
    async with app.agents["rollup-fold"].test_context() as ctx:
        for i, (value, ts) in enumerate([(1, 1_000), (4, 30_000), (2, 61_000)]):
            await ctx.put([value, ts], key="a", origin=("events:0", [i, 0]))
        await ctx.put([4, 30_000], key="a", origin=("events:0", [1, 0]))  # replay: skipped
        assert totals["a"] == {"count": 3, "sum": 7, "min": 1, "max": 4}
        part = windows.partitions_here[0]
        rows = {k: r.value for k, r in part.rows() if not k.startswith("\x00")}
    assert rows == {
        "000000000000000|a": {"count": 2, "sum": 5, "min": 1, "max": 4},
        "000000000060000|a": {"count": 1, "sum": 2, "min": 2, "max": 2},
    }


async def test_rollup_validation_dead_letters_with_the_reason() -> None:
    app = app_for("rollup")
    async with app.agents["rollup"].test_context() as ctx:
        await ctx.put(b'{"key": "k", "value": "x", "ts": 1}', partition=0, offset=0)
        await ctx.put(b'{"key": "k", "value": 1, "ts": 1}', partition=0, offset=1)
    assert [d.headers["sluice.reason"] for d in ctx.dead_letters] == [b"wrong_type"]
    assert len(ctx.sent) >= 1


async def test_a_bytes_table_key_that_is_not_utf8_dead_letters_its_event() -> None:
    """Keys are stored as text: replacing bad bytes would make two keys share one row."""
    app = app_for("wordcount")
    counts = app.tables["wordcount"]
    agent = app.agents["wordcount-count"]
    original = agent.fun

    async def by_bytes(stream: Any) -> None:
        async for word, n in stream.items():
            counts[b"\xff\xfe" if word == "bad" else word.encode()] += n

    agent.fun = by_bytes
    try:
        async with agent.test_context() as ctx:
            await ctx.put(1, key="bad", origin=("lines:0", [1, 0]))
            await ctx.put(2, key="ok", origin=("lines:0", [2, 0]))
            assert counts[b"ok"] == 2 and counts["ok"] == 2
    finally:
        agent.fun = original
    [letter] = ctx.dead_letters
    assert letter.headers["sluice.reason"] == b"invalid_table_key"


async def run_count_agent(
    fun: Any, *puts: tuple[list[int], list[str]], settle: float = 0.0
) -> tuple[Any, Any]:
    """The wordcount-count agent with ``fun`` as its function, given ``puts`` as fetched
    batches of partition 0; returns (table, test context)."""
    app = app_for("wordcount")
    agent = app.agents["wordcount-count"]
    original, agent.fun = agent.fun, fun
    try:
        async with agent.test_context() as ctx:
            await asyncio.sleep(settle)
            for values, keys in puts:
                await asyncio.wait_for(ctx.put_many(values, keys=keys, partition=0), 5)
    finally:
        agent.fun = original
    return app.tables["wordcount"], ctx


async def test_a_failed_take_list_is_rolled_back_last_unit_first() -> None:
    """Two events of one list write one row: undone in reverse, the row is back at its state
    before the list (in order, the failing event's +5 and its guard position would survive)."""

    async def fun(stream: Any) -> None:
        async for events in stream.take_events(100, within=1.0):
            for event in events:
                stream.app.tables["wordcount"][event.key] += event.value
            if any(event.value == 5 for event in events):
                raise RuntimeError("bad value")

    counts, ctx = await run_count_agent(fun, ([5, 1], ["a", "a"]))
    assert [d.headers["sluice.source.offset"] for d in ctx.dead_letters] == [b"0"]
    assert counts["a"] == 1


async def test_a_processor_that_raises_in_a_take_fails_only_its_event() -> None:
    seen: list[int] = []

    def check(value: int) -> int:
        seen.append(value)
        if value == 5:
            raise RuntimeError("processor")
        return value

    async def fun(stream: Any) -> None:
        stream.add_processor(check)
        async for events in stream.take_events(100, within=1.0):
            for event in events:
                stream.app.tables["wordcount"][event.key] += event.value

    counts, ctx = await run_count_agent(fun, ([1, 5, 2], ["a", "a", "a"]))
    assert [d.headers["sluice.source.offset"] for d in ctx.dead_letters] == [b"1"]
    assert counts["a"] == 3
    assert seen == [1, 5, 1, 5, 2]  # the list up to the failure, then one event at a time


async def test_a_function_that_returns_mid_iteration_does_not_stall_the_batch() -> None:
    async def fun(stream: Any) -> None:
        async for word, n in stream.items():
            stream.app.tables["wordcount"][word] += n
            if word == "stop":
                return

    _, ctx = await run_count_agent(fun, ([1], ["stop"]), ([2], ["stop"]))
    assert ctx.dead_letters == []


async def test_a_restart_after_a_setup_failure_adds_the_rest_of_the_chain() -> None:
    """The first run failed between two filters: the restart keeps the first, adds the second."""
    attempts: list[int] = []
    passed: list[int] = []

    async def fun(stream: Any) -> None:
        s = stream.filter(lambda v: v > 0)
        if not attempts:
            attempts.append(1)
            raise RuntimeError("setup failed once (outside any event)")
        s = s.filter(lambda v: v < 100)
        async for n in s:
            passed.append(n)

    await run_count_agent(fun, ([500, -1, 3], ["a", "a", "a"]), settle=0.7)
    assert passed == [3]


async def test_a_done_take_list_lets_go_of_its_sends_and_makes_no_event_current() -> None:
    """When the agent takes the next list, the units behind the last one let go of their sends
    and undo entries (they would survive into the next batch, see service.gctune) and are done:
    iterating the old list gives its values but makes none of its events current again (their
    effects are committed; a write from it would be lost, so it raises as outside any event)."""
    app = app_for("wordcount")
    agent = app.agents["wordcount"]
    words = app.agents["wordcount-count"].channel
    counts = app.tables["wordcount"]
    original = agent.fun
    held: list[Any] = []
    seen: list[Any] = []

    async def holding(stream: Any) -> None:
        async for values in stream.take(100, within=1.0):
            for value in held[-1] if held else ():
                seen.append((value, stream.current_event))
                with pytest.raises(RuntimeError, match="outside of stream iteration"):
                    counts[value.decode()] = 1
            held.append(values)
            for value in values:
                seen.append((value, stream.current_event.value))
                await words.send_many((word, 1) for word in value.decode().split())

    agent.fun = holding
    try:
        async with agent.test_context() as ctx:
            await ctx.put_many([b"a b", b"c"], partition=0)
            units = list(held[0]._units)
            assert len(units) == 2 and all(u.done for u in units)
            assert all(u.packed is None and u.outbox == [] and u.undo == [] for u in units)
            await ctx.put_many([b"d"], partition=0)
    finally:
        agent.fun = original
    assert ctx.dead_letters == []
    assert sorted(u[0] for s in ctx.sent for u in s.value["c"]) == ["a", "b", "c", "d"]
    assert seen == [(b"a b", b"a b"), (b"c", b"c"), (b"a b", None), (b"c", None), (b"d", b"d")]


def test_batch_collector_collects_cyclic_garbage_between_batches() -> None:
    import gc
    import weakref

    from service.gctune import GC_THRESHOLD, YOUNG_EVERY, BatchCollector

    class Node:
        other: Any = None

    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLD)
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        assert gone() is not None  # a cycle: reference counting alone does not free it
        collector = BatchCollector()
        for _ in range(YOUNG_EVERY):
            collector.batch_done()
        assert gone() is None
    finally:
        gc.set_threshold(*thresholds)
