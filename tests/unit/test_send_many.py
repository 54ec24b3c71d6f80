"""``topic.send_many(items)``: the same sends as one ``await topic.send(key=k, value=v)`` per item
— the same records, the same send indexes (so the same guard positions downstream) — whether the
topic is packed, packed and combined, or plain; and mixed with single sends in one event."""

from __future__ import annotations

import contextlib
import operator
import types
from collections import Counter
from typing import Any

import orjson
import pytest

import service
from service.settings import load_settings

ITEMS = [("the", 2), ("cat", 1), ("end", 1), ("a", 3), ("the", 1)]


def _app() -> tuple[Any, Any]:
    """A fresh app and its ``lines`` topic (raw bytes), for an agent made by the test."""
    app = service.App("unit-send-many", sluice_settings=load_settings(app_id="unit-send-many"))
    return app, app.topic("lines", value_type=bytes, value_serializer="raw")


def _sender_app(kind: str, bulk: bool) -> tuple[Any, Any]:
    """An app whose agent sends ITEMS for each line: one call, or one send per item, between a
    single send before and after (so the indexes of the bulk call must continue the count)."""
    app, lines = _app()
    options: dict[str, Any] = {"plain": {}, "packed": {"pack": True}, "combined": {"combine": operator.add}}[
        kind
    ]
    internal = kind != "plain"
    out = app.topic("out", key_type=str, value_type=int, internal=internal, **options)

    @app.agent(lines, name="sender")
    async def sender(stream: Any) -> None:
        async for _line in stream:
            await out.send(key="first", value=1)
            if bulk:
                await out.send_many(ITEMS)
            else:
                for key, value in ITEMS:
                    await out.send(key=key, value=value)
            await out.send(key="last", value=1)

    return app, sender


async def _sent(kind: str, bulk: bool) -> list[tuple[str, int, Any, Any, dict[str, bytes]]]:
    _app_obj, agent = _sender_app(kind, bulk)
    async with agent.test_context() as ctx:
        await ctx.put_many([b"one", b"two"], partition=1)
    assert ctx.dead_letters == []
    return [(s.topic, s.partition, s.key, s.value, s.headers) for s in ctx.sent]


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both runs' events get one timestamp (packed records carry it)."""
    import service.app.testing

    monkeypatch.setattr(service.app.testing, "time", types.SimpleNamespace(time=lambda: 1_700_000_000.0))


def _entry_parts(entries: list[Any]) -> list[tuple[int, str, int, int]]:
    """``(at, key, value, seq)`` of a packed record's entries (per sending event)."""
    return [(at, key, value, seq) for at, _ts, updates in entries for key, value, seq in updates]


def _key_parts(by_key: dict[str, Any]) -> list[tuple[int, str, int, int]]:
    """``(at, key, value, seq)`` of a folded record's parts header (per key)."""
    return [(at, key, value, seq) for key, sent in by_key.items() for at, seq, value in sent]


@pytest.mark.parametrize("kind", ["plain", "packed", "combined"])
async def test_send_many_sends_what_one_send_per_item_sends(kind: str) -> None:
    one_by_one = await _sent(kind, bulk=False)
    bulk = await _sent(kind, bulk=True)
    assert bulk == one_by_one
    # and what it sends is every send with its index (2 lines x 7 sends)
    if kind == "plain":
        assert [orjson.loads(h["sluice.pos"]) for *_, h in bulk] == [[o, i] for o in (0, 1) for i in range(7)]
    else:
        parts = [
            part
            for *_, value_doc, h in bulk
            for part in (
                _entry_parts(value_doc["e"])
                if kind == "packed"
                else _key_parts(orjson.loads(h["sluice.parts"]))
            )
        ]
        expected = [("first", 1), *ITEMS, ("last", 1)]
        assert sorted(parts) == sorted(
            (at, key, value, seq) for at in (0, 1) for seq, (key, value) in enumerate(expected)
        )


async def test_an_item_that_raises_keeps_the_indexes_of_one_send_per_item() -> None:
    """An iterable that fails after two items, caught by the agent, then one more send: the
    indexes are those of one send per item (0, 1, then 2 — not 0 again)."""
    app, lines = _app()
    out = app.topic("out", key_type=str, value_type=int, internal=True, combine=operator.add)

    def failing() -> Any:
        yield ("x", 1)
        yield ("y", 1)
        raise ValueError("the third item cannot be made")

    @app.agent(lines, name="sender")
    async def sender(stream: Any) -> None:
        async for _line in stream:
            with contextlib.suppress(ValueError):
                await out.send_many(failing())
            await out.send(key="x", value=1)

    async with sender.test_context() as ctx:
        await ctx.put(b"one", partition=1, offset=5)
    parts = sorted(
        (key, seq)
        for s in ctx.sent
        for _at, key, _v, seq in _key_parts(orjson.loads(s.headers["sluice.parts"]))
    )
    assert parts == [("x", 0), ("x", 2), ("y", 1)]


async def test_send_many_to_a_plain_topic_in_an_agent_is_recorded_without_await() -> None:
    app, lines = _app()
    out = app.topic("out", key_type=str, value_type=int)

    @app.agent(lines, name="sender")
    async def sender(stream: Any) -> None:
        async for _line in stream:
            out.send_many([("a", 1), ("b", 2)])  # not awaited: recorded all the same, as send is

    async with sender.test_context() as ctx:
        await ctx.put(b"one", partition=0, offset=3)
    assert [(s.key, s.value) for s in ctx.sent] == [(b"a", 1), (b"b", 2)]


@pytest.mark.parametrize("bulk", [False, True])
async def test_an_update_too_large_for_a_record_dead_letters_its_event(bulk: bool) -> None:
    """A key no repartition record can carry: the event is dead-lettered as oversized_fanout
    (none of its sends go out) and the next event goes through — instead of the whole batch
    failing when it is encoded, again after every restart."""
    app, lines = _app()
    out = app.topic("out", key_type=str, value_type=int, internal=True, combine=operator.add)

    @app.agent(lines, name="sender")
    async def sender(stream: Any) -> None:
        async for line in stream:
            items = [("small", 1), (line.decode(), 1)]
            if bulk:
                await out.send_many(items)
            else:
                for key, value in items:
                    await out.send(key=key, value=value)

    huge = b"w" * 600_000
    async with sender.test_context() as ctx:
        await ctx.put_many([huge, b"fine"], partition=0)
    [letter] = ctx.dead_letters
    assert letter.headers["sluice.reason"] == b"oversized_fanout"
    assert letter.headers["sluice.source.offset"] == b"0"
    keys = sorted(u[0] for s in ctx.sent for u in s.value["c"])
    assert keys == ["fine", "small"]  # the bad event's "small" was rolled back with it


def _last(_old: Any, new: Any) -> Any:
    return new


PACKINGS = pytest.mark.parametrize("options", [{"pack": True}, {"combine": _last}], ids=["packed", "folded"])


def _updates(sent: list[Any]) -> list[tuple[str, Any]]:
    """``(key, value)`` of every send in packed or folded records, from the parts for folded."""
    out: list[tuple[str, Any]] = []
    for s in sent:
        if "e" in s.value:
            out += [(key, value) for _at, _ts, ups in s.value["e"] for key, value, _seq in ups]
        else:
            out += [
                (key, value) for _at, key, value, _seq in _key_parts(orjson.loads(s.headers["sluice.parts"]))
            ]
    return out


async def test_a_dicts_items_send_what_a_list_of_pairs_sends() -> None:
    """``send_many(counter.items())`` (read as the dict's columns, no pair made per item) and
    ``send_many(list_of_pairs)`` send the same records."""

    async def sent(as_items: bool) -> list[Any]:
        app, lines = _app()
        out = app.topic("out", key_type=str, value_type=int, internal=True, combine=operator.add)

        @app.agent(lines, name="sender")
        async def sender(stream: Any) -> None:
            async for line in stream:
                words = Counter(line.decode().split())
                await out.send_many(words.items() if as_items else list(words.items()))

        async with sender.test_context() as ctx:
            await ctx.put_many([b"a b a", b"c a", b""], partition=2)
        return [(s.topic, s.partition, s.value, s.headers) for s in ctx.sent]

    assert await sent(True) == await sent(False)
    assert await sent(True) != []


async def test_a_send_to_a_partition_other_than_its_keys_goes_there() -> None:
    """A folding topic keeps an explicit partition: the key's update goes to that partition,
    apart from the same key's updates placed by the key."""
    app, lines = _app()
    out = app.topic("out", key_type=str, value_type=int, internal=True, combine=operator.add)

    @app.agent(lines, name="sender")
    async def sender(stream: Any) -> None:
        async for _line in stream:
            await out.send(key="k", value=1)
            await out.send(key="k", value=10, partition=elsewhere)

    async with sender.test_context() as ctx:
        home = out.placement()("k")
        elsewhere = (home + 1) % ctx.partitions
        await ctx.put_many([b"x", b"y"], partition=0)
    by_partition = {s.partition: [(u[0], u[1], u[6]) for u in s.value["c"]] for s in ctx.sent}
    assert by_partition == {home: [("k", 2, 2)], elsewhere: [("k", 20, 2)]}


@pytest.mark.parametrize(
    ("key", "value"),
    [("big", 2**64), ("surrogate-\udcff", 1), ("fine", {"n": 2**70})],
    ids=["int-past-64-bits", "lone-surrogate-key", "nested-int-past-64-bits"],
)
@PACKINGS
async def test_a_value_json_cannot_carry_dead_letters_its_event(key: str, value: Any, options: Any) -> None:
    """Refused at the send (unencodable_value), not when the batch is encoded: the next event
    goes through."""
    app, lines = _app()
    out = app.topic("out", key_type=str, internal=True, **options)

    @app.agent(lines, name="sender")
    async def sender(stream: Any) -> None:
        async for line in stream:
            if line == b"bad":
                await out.send(key=key, value=value)
            await out.send(key="ok", value=1)

    async with sender.test_context() as ctx:
        await ctx.put_many([b"bad", b"good"], partition=0)
    [letter] = ctx.dead_letters
    assert letter.headers["sluice.reason"] == b"unencodable_value"
    assert [key for key, _ in _updates(ctx.sent)] == ["ok"]


@PACKINGS
async def test_a_container_is_sent_as_it_was_when_sent(options: Any) -> None:
    """The record is encoded with the batch, later: an agent that changes a dict after sending
    it sends each state it sent (as Faust, which serializes at the send)."""
    app, lines = _app()
    out = app.topic("out", key_type=str, internal=True, **options)

    @app.agent(lines, name="sender")
    async def sender(stream: Any) -> None:
        state: dict[str, list[str]] = {"seen": []}
        async for line in stream:
            state["seen"].append(line.decode())
            await out.send(key="k", value=state)

    async with sender.test_context() as ctx:
        await ctx.put_many([b"a", b"b", b"c"], partition=0)
    assert [value["seen"] for _, value in _updates(ctx.sent)] == [["a"], ["a", "b"], ["a", "b", "c"]]


async def test_a_large_update_fits_a_plain_packed_record_once() -> None:
    """Only a combined record carries an update twice: a 500 KB value on a packed topic
    without combine is carried (on a combined one it is refused as oversized_fanout)."""
    app, lines = _app()
    out = app.topic("out", key_type=str, internal=True, pack=True)

    @app.agent(lines, name="sender")
    async def sender(stream: Any) -> None:
        async for _line in stream:
            await out.send(key="k", value="v" * 500_000)

    async with sender.test_context() as ctx:
        await ctx.put(b"one", partition=0, offset=0)
    assert ctx.dead_letters == []
    assert [len(u[1]) for s in ctx.sent for _at, _ts, ups in s.value["e"] for u in ups] == [500_000]
