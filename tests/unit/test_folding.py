"""Folding topics (``combine=fn`` without watermarks, :mod:`service.app.folding`): the records
decode to what per-event records (the path topics with watermarks still take) decode to —
updates, origins, timestamps and parts — whatever the sends; a bad item behaves as it would in
one send per item; a record whose parts header does not hold a redelivered key is dead-lettered.

The per-event path is reached by clearing the topic's ``folds`` flag: the same app, the same
sends, the other encoder."""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

import service
from service.app.testing import _Record
from service.kafka.murmur2 import partition_for_key
from service.repartition import decode
from service.settings import load_settings

Body = Callable[[Any, bytes], Awaitable[None]]
PARTITIONS = 4


def _home(word: str) -> int:
    return partition_for_key(word.encode(), PARTITIONS)


A = next(f"k{i}" for i in range(50) if _home(f"k{i}") == 0)
B = next(f"k{i}" for i in range(50) if _home(f"k{i}") == 1)


def _merge(old: dict[str, int], new: dict[str, int]) -> dict[str, int]:
    return {**old, **new}


def _mutating_merge(old: list[int], new: list[int]) -> list[int]:
    old.extend(new)  # changes its first argument: the parts must not show it
    return old


async def _run(
    body: Body,
    lines: list[bytes],
    *,
    folds: bool,
    combine: Any = operator.add,
    timestamps: list[float] | None = None,
) -> tuple[list[Any], list[Any]]:
    """What ``body`` sends for ``lines`` (one batch of partition 0), decoded, and the dead letters."""
    app = service.App("unit-folding", sluice_settings=load_settings(app_id="unit-folding"))
    source = app.topic("lines", value_type=bytes, value_serializer="raw")
    out = app.topic("out", key_type=str, internal=True, combine=combine, partitions=PARTITIONS)
    assert out.folds
    out.folds = folds

    @app.agent(source, name="sender")
    async def sender(stream: Any) -> None:
        async for line in stream:
            with contextlib.suppress(ValueError, TypeError):  # an agent that catches a bad call
                await body(out, line)

    async with sender.test_context(partitions=PARTITIONS) as ctx:
        await ctx.put_many(lines, partition=0, timestamps=timestamps or [1.0 + i for i in range(len(lines))])
    updates = []
    for sent in ctx.sent:
        decoded = decode(sent.raw, list(sent.headers.items()), combine)
        for key, payload, origin in decoded.updates:
            parts = origin.parts.split(key) if origin.parts is not None else None
            updates.append(
                (
                    sent.partition,
                    key,
                    payload,
                    origin.position,
                    origin.first,
                    origin.updates,
                    origin.timestamp_ms,
                    parts,
                )
            )
    letters = [(d.headers["sluice.reason"], d.headers["sluice.source.offset"]) for d in ctx.dead_letters]
    return sorted(updates, key=repr), letters


async def _same(body: Body, lines: list[bytes], **options: Any) -> list[Any]:
    folded = await _run(body, lines, folds=True, **options)
    assert folded == await _run(body, lines, folds=False, **options)
    return folded[0]


async def _words(out: Any, line: bytes) -> None:
    await out.send_many([(word, 1) for word in line.decode().split()])


async def test_records_carry_each_targets_first_timestamp() -> None:
    """Three lines at three event times, words on two partitions: each partition's record
    carries the time of the first line that sent to it."""
    updates = await _same(_words, [A.encode(), B.encode(), f"{A} {B}".encode()], timestamps=[1.0, 2.0, 3.0])
    assert {(partition, key, ts) for partition, key, *_, ts, _parts in updates} == {
        (0, A, 1000),
        (1, B, 2000),
    }


async def test_explicit_timestamps_and_partitions_are_kept() -> None:
    async def body(out: Any, line: bytes) -> None:
        await out.send(key=A, value=1, timestamp=5.0)
        await out.send(key=A, value=2, timestamp=9.0, partition=3)
        await out.send(key=B, value=4, timestamp=7.0)
        await out.send(key=A, value=8, partition=0)

    updates = await _same(body, [b"x", b"y"])
    assert {(partition, key, payload) for partition, key, payload, *_ in updates} == {
        (0, A, 18),
        (3, A, 4),
        (1, B, 8),
    }


@pytest.mark.parametrize(
    ("combine", "items"),
    [
        (_merge, [("k", {"a": 1}), ("k", {"b": 2}), ("j", {"c": 3})]),
        (_mutating_merge, [("k", [1]), ("k", [2]), ("k", [3])]),
        (operator.add, [("k", True), ("k", 2**63), ("k", -(2**63)), ("k", 1.5)]),
        (operator.add, [(7, 1), (None, 2), ("ü", 3)]),
    ],
    ids=[
        "dicts",
        "a-combine-that-changes-its-argument",
        "bool-and-64-bit-edges",
        "keys-that-are-not-ascii-text",
    ],
)
async def test_values_and_keys_the_fast_check_does_not_clear(combine: Any, items: list[Any]) -> None:
    async def body(out: Any, _line: bytes) -> None:
        await out.send_many(items)

    updates = await _same(body, [b"one", b"two"], combine=combine)
    if combine is _mutating_merge:  # each part as sent, not as the merge left it
        [(*_, parts)] = updates
        assert [payload for _position, payload in parts] == [[1], [2], [3], [1], [2], [3]]


async def test_a_str_subclass_key_is_sent_as_its_text() -> None:
    class Word(str):
        __slots__ = ()

    async def body(out: Any, _line: bytes) -> None:
        await out.send(key=Word("red"), value=1)

    updates = await _same(body, [b"one"])
    assert [(partition, key) for partition, key, *_ in updates] == [(_home("red"), "red")]


@pytest.mark.parametrize(
    "items",
    [
        [("a", 1), ("b", 2, 3), ("c", 1)],
        [("a", 1), ("b",), ("c", 1)],
        [("a", 1), None, ("c", 1)],
        [("a", 1).__iter__, ("b", 2, 3), ("c", 1)],  # made anew per run (below): read once
    ],
    ids=["a-triple", "a-single", "none", "an-item-read-once"],
)
@pytest.mark.parametrize("as_generator", [False, True])
async def test_an_item_that_is_not_a_pair_leaves_the_items_before_it_sent(
    items: list[Any], as_generator: bool
) -> None:
    """As one send per item: "a" is sent, the bad item raises (the agent catches it), "c" is
    never sent, and the next send takes the next index."""

    async def body(out: Any, _line: bytes) -> None:
        fresh = [item() if callable(item) else item for item in items]
        try:
            await out.send_many(iter(fresh) if as_generator else fresh)
        finally:
            await out.send(key="z", value=1)

    updates = await _same(body, [b"one"])
    assert [(key, position) for _p, key, _v, position, *_ in updates] == [("a", [0, 0]), ("z", [0, 1])]


async def test_a_refused_item_before_a_failing_iterable_is_what_raises() -> None:
    """The iterable fails after an item that is refused: the refusal is what one send per item
    would have raised first, and it dead-letters the event."""

    def items() -> Any:
        yield ("fine", 1)
        yield ("big", 2**64)
        raise RuntimeError("never reached by one send per item")

    async def body(out: Any, line: bytes) -> None:
        if line == b"bad":
            await out.send_many(items())
        await out.send(key="ok", value=1)

    for folds in (True, False):
        updates, letters = await _run(body, [b"bad", b"good"], folds=folds)
        assert letters == [(b"unencodable_value", b"0")]
        assert [key for _p, key, *_ in updates] == ["ok"]


def _raising_merge(_old: int, _new: int) -> int:
    raise ZeroDivisionError("this merge cannot be made")


@pytest.mark.parametrize(
    ("combine", "items"),
    [
        (operator.add, [("k", 2**64 - 1), ("k", 1), ("j", 5)]),
        (_raising_merge, [("k", 1), ("k", 2), ("j", 5)]),
    ],
    ids=["a-sum-past-64-bits", "a-combine-that-raises"],
)
async def test_a_merge_that_cannot_be_carried_travels_unmerged(combine: Any, items: list[Any]) -> None:
    """Instead of failing the batch (again after every restart), the key's parts travel one per
    record, each its own update; the other keys are merged as usual."""

    async def body(out: Any, _line: bytes) -> None:
        await out.send_many(items)

    updates, letters = await _run(body, [b"one"], folds=True, combine=combine)
    assert letters == []
    got = sorted(
        ((key, payload, position, count) for _p, key, payload, position, _f, count, *_ in updates),
        key=lambda update: (update[0], update[2]),
    )
    first, second = items[0][1], items[1][1]
    assert got == [("j", 5, [0, 2], 1), ("k", first, [0, 0], 1), ("k", second, [0, 1], 1)]


async def test_a_combine_that_changes_its_argument_splits_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records split for size are encoded again after a merge: the parts must still be the
    values as sent (the merge starts from a copy), on both paths."""
    from service import repartition

    monkeypatch.setattr(repartition, "MAX_REPARTITION_RECORD", 400)

    async def body(out: Any, line: bytes) -> None:
        await out.send_many([(f"k{i % 3}", [int(line), i]) for i in range(40)])

    for folds in (True, False):  # each path splits its own way
        updates, letters = await _run(body, [b"1", b"2", b"3"], folds=folds, combine=_mutating_merge)
        assert letters == []
        assert len(updates) > 3  # split: even one key's parts take more than one record
        sent = {
            (key, *position): payload
            for _p, key, _v, _l, _f, _n, _ts, parts in updates
            for position, payload in parts
        }
        assert sent == {(f"k{i % 3}", o, i): [o + 1, i] for o in range(3) for i in range(40)}
        for _p, _key, merged, _last, _first, count, _ts, parts in updates:
            assert len(parts) == count
            assert merged == [x for _position, payload in parts for x in payload]


@pytest.mark.parametrize(
    "value",
    [2**64, {1: 2}, {"n": 2**70}, b"raw", "lone \udcff", {1, 2}],
    ids=[
        "int-past-64-bits",
        "dict-with-an-int-key",
        "nested-int-past-64-bits",
        "bytes",
        "lone-surrogate",
        "set",
    ],
)
async def test_a_value_no_row_can_hold_dead_letters_the_event_that_writes_it(value: Any) -> None:
    """It fails the event that writes it, not every commit after it (a crash loop)."""
    app = service.App("unit-folding-rows", sluice_settings=load_settings(app_id="unit-folding-rows"))
    numbers = app.topic("numbers", key_type=str, value_type=int)
    table = app.Table("rows", default=int, partitions=1)

    @app.agent(numbers, name="rows")
    async def rows(stream: Any) -> None:
        async for event in stream.events():
            table[event.key] = value if event.value == 0 else event.value

    async with rows.test_context(partitions=1) as ctx:
        for number in (0, 7):
            await ctx.put(number, key="k", partition=0)
    assert [d.headers["sluice.reason"] for d in ctx.dead_letters] == [b"unencodable_value"]
    assert table["k"] == 7


@pytest.mark.parametrize(
    "options", [{"combine": operator.add}, {"pack": True}, {}], ids=["folded", "packed", "plain"]
)
@pytest.mark.parametrize("timestamp", [1.7e18, float("nan")], ids=["nanoseconds-as-seconds", "nan"])
async def test_a_timestamp_no_record_can_carry_dead_letters_its_event(options: Any, timestamp: float) -> None:
    app = service.App("unit-folding-ts", sluice_settings=load_settings(app_id="unit-folding-ts"))
    source = app.topic("lines", value_type=bytes, value_serializer="raw")
    out = app.topic("out", key_type=str, value_type=int, internal=bool(options), **options)

    @app.agent(source, name="sender")
    async def sender(stream: Any) -> None:
        async for line in stream:
            await out.send(key="k", value=1, timestamp=timestamp if line == b"bad" else None)

    async with sender.test_context() as ctx:
        await ctx.put_many([b"bad", b"good"], partition=0)
    assert [d.headers["sluice.reason"] for d in ctx.dead_letters] == [b"invalid_timestamp"]
    assert len(ctx.sent) == 1


async def test_a_merge_that_cannot_be_carried_travels_unmerged_on_the_per_event_path_too() -> None:
    async def body(out: Any, _line: bytes) -> None:
        await out.send_many([("k", 2**64 - 1), ("k", 1), ("j", 5)])

    updates, letters = await _run(body, [b"one"], folds=False)
    assert letters == []
    assert sorted((key, payload, position) for _p, key, payload, position, *_ in updates) == [
        ("j", 5, [0, 2]),
        ("k", 1, [0, 1]),
        ("k", 2**64 - 1, [0, 0]),
    ]


@pytest.mark.parametrize(
    ("source", "parts"),
    [("bogus", {"k": [[2, 0, 1]]}), ("lines:0", {"k": []}), ("lines:0", {"x": []})],
    ids=["a-source-that-names-no-partition", "no-parts-for-the-key", "a-header-without-the-key"],
)
async def test_a_packed_record_that_is_not_sluices_is_dead_lettered(source: str, parts: Any) -> None:
    """Dead-lettered with its reason, and the agent goes on (an actor that died would leave the
    batch waiting forever; an event with no parts would vanish)."""
    app = service.App("unit-folding-bogus", sluice_settings=load_settings(app_id="unit-folding-bogus"))
    words = app.topic(
        "words", internal=True, key_type=str, value_type=int, combine=operator.add, partitions=1
    )
    table = app.Table("counts", default=int, partitions=1)

    @app.agent(words, name="count")
    async def count(stream: Any) -> None:
        async for event in stream.events():
            table[event.key] += event.value

    def record(offset: int, src: str, updates: list[Any], header: Any) -> _Record:
        value = orjson.dumps({"s": src, "ts": 1, "c": updates})
        return _Record("words", 0, offset, None, value, [("sluice.parts", orjson.dumps(header))], 1)

    async with count.test_context(partitions=1) as ctx:
        await ctx._process([record(0, source, [["k", 1, 1, 0, 1, 0, 1]], {"k": [[1, 0, 1]]})])
        await ctx._process(
            [
                record(1, source, [["k", 2, 1, 0, 2, 0, 2]], parts),  # partial for the row, if it has one
                record(2, "lines:0", [["j", 5, 3, 0, 3, 0, 1]], {"j": [[3, 0, 5]]}),
            ]
        )
    reasons = [d.headers["sluice.reason"] for d in ctx.dead_letters]
    assert reasons and set(reasons) == {b"invalid_repartition_record"}
    assert {key: table[key] for key in ("k", "j")} == {"k": 1 if source == "lines:0" else 0, "j": 5}
