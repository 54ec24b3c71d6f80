"""``topic.send_many(items)``: the same sends as one ``await topic.send(key=k, value=v)`` per item
— the same records, the same send indexes (so the same guard positions downstream) — whether the
topic is packed, packed and combined, or plain; and mixed with single sends in one event."""

from __future__ import annotations

import operator
import types
from typing import Any

import orjson
import pytest

import service
from service.settings import load_settings

ITEMS = [("the", 2), ("cat", 1), ("end", 1), ("a", 3), ("the", 1)]


def _app(kind: str, bulk: bool) -> tuple[Any, Any]:
    """An app whose agent sends ITEMS for each line: one call, or one send per item, between a
    single send before and after (so the indexes of the bulk call must continue the count)."""
    app = service.App("unit-send-many", sluice_settings=load_settings(app_id="unit-send-many"))
    options: dict[str, Any] = {"plain": {}, "packed": {"pack": True}, "combined": {"combine": operator.add}}[
        kind
    ]
    internal = kind != "plain"
    out = app.topic("out", key_type=str, value_type=int, internal=internal, **options)
    lines = app.topic("lines", value_type=bytes, value_serializer="raw")

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
    _app_obj, agent = _app(kind, bulk)
    async with agent.test_context() as ctx:
        await ctx.put_many([b"one", b"two"], partition=1)
    assert ctx.dead_letters == []
    return [(s.topic, s.partition, s.key, s.value, s.headers) for s in ctx.sent]


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both runs' events get one timestamp (packed records carry it)."""
    import service.app.testing

    monkeypatch.setattr(service.app.testing, "time", types.SimpleNamespace(time=lambda: 1_700_000_000.0))


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
            (at, key, value, seq)
            for *_, value_doc, h in bulk
            for at, _ts, updates in (value_doc["e"] if kind == "packed" else orjson.loads(h["sluice.parts"]))
            for key, value, seq in updates
        ]
        expected = [("first", 1), *ITEMS, ("last", 1)]
        assert sorted(parts) == sorted(
            (at, key, value, seq) for at in (0, 1) for seq, (key, value) in enumerate(expected)
        )
