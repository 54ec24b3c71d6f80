"""The Faust apps of ``tests/apps`` through sluice's seam, ``agent.test_context()``: each agent's
real code on in-memory tables, what it sends and dead-letters collected, and the guard (a
replayed event changes nothing).

The apps are built at import, as Faust apps are, from the environment; no broker is needed.
Each test reloads the app modules: an agent's ``test_context()`` can be entered only once per
agent object (see ``test_an_agent_test_context_can_be_entered_twice``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import faust
import orjson
import pytest

import service
from tests.apps import clicks, orders, pageviews
from tests.seam import placed, rows, skipped

PARTITIONS = 4


@pytest.fixture(autouse=True)
def _fresh_apps() -> Iterator[None]:
    """Build every app again, as a new process importing it would."""
    for module in (orders, clicks, pageviews):
        importlib.reload(module)
        assert module.app.conf.topic_partitions == PARTITIONS, "SLUICE_TOPIC_PARTITIONS: default 4"
    yield


# ---------------------------------------------------------------------- orders: agent -> agent


async def test_process_order_sends_the_amount_to_count_agent_keyed_by_customer() -> None:
    async with orders.process_order.test_context() as ctx:
        await ctx.put(orders.Order(order_id="o-1", customer="alice", amount=7), partition=2, offset=11)
        await ctx.put(orders.Order(order_id="o-2", customer="bob", amount=3), partition=2, offset=12)
    assert ctx.dead_letters == []
    target = orders.count_agent.channel.get_topic_name()
    assert target == f"{orders.app.conf.id}-tests.apps.orders.count_agent"  # the agent's own topic
    assert [(s.topic, s.partition, s.key, s.value) for s in ctx.sent] == [
        (target, placed("alice"), b"alice", 7),
        (target, placed("bob"), b"bob", 3),
    ]
    first = ctx.sent[0].headers
    assert (first["sluice.source.topic"], first["sluice.source.partition"]) == (b"orders", b"2")
    assert first["sluice.source.offset"] == b"11"


async def test_count_agent_adds_up_per_customer_and_a_replay_changes_nothing() -> None:
    totals = orders.customer_totals
    async with orders.count_agent.test_context() as ctx:
        await ctx.put(5, key="alice", origin=("orders:0", [1, 0]))
        await ctx.put(7, key="alice", origin=("orders:1", [4, 0]))
        await ctx.put(2, key="bob", origin=("orders:0", [2, 0]))
        await ctx.put(5, key="alice", origin=("orders:0", [1, 0]))  # order 0:1 replayed
        await ctx.put(7, key="alice", origin=("orders:1", [4, 0]))  # order 1:4 replayed
        await ctx.put(1, key="alice", origin=("orders:1", [5, 0]))
        assert totals["alice"] == 13 and totals["bob"] == 2
        assert totals["carol"] == 0  # default=int
        assert skipped(totals) == 2
        assert rows(totals) == {'"alice"': 13, '"bob"': 2}  # keys stored as Faust's JSON
    assert ctx.sent == [] and ctx.dead_letters == []


async def test_an_amount_that_is_not_an_int_is_dead_lettered_and_the_agent_goes_on() -> None:
    totals = orders.customer_totals
    async with orders.count_agent.test_context() as ctx:
        await ctx.put("seven", key="alice", origin=("orders:0", [1, 0]))
        await ctx.put(7, key="alice", origin=("orders:0", [2, 0]))
        assert totals["alice"] == 7
    [letter] = ctx.dead_letters
    assert letter.headers["sluice.reason"] == b"decode_error"
    assert letter.key == b"alice" and letter.value == b'"seven"'


async def test_an_order_that_is_not_json_is_dead_lettered_with_its_bytes() -> None:
    async with orders.process_order.test_context() as ctx:
        await ctx.put(b"{not json", partition=1, offset=3)
        await ctx.put(orders.Order(order_id="o-9", customer="dave", amount=1), partition=1, offset=4)
    [letter] = ctx.dead_letters
    assert letter.value == b"{not json"
    assert letter.headers["sluice.reason"] == b"decode_error"
    assert letter.headers["sluice.source.offset"] == b"3"
    assert [(s.key, s.value) for s in ctx.sent] == [(b"dave", 1)]


# ---------------------------------------------------------------------- clicks: group_by + window


async def test_count_clicks_repartitions_each_click_by_its_user() -> None:
    async with clicks.count_clicks.test_context() as ctx:
        await ctx.put(clicks.Click(user="u1", url="/a"), partition=3, offset=9, timestamp=1_800_000_000.5)
        await ctx.put(clicks.Click(user="u2", url="/b"), partition=3, offset=10, timestamp=1_800_000_001.0)
    assert ctx.dead_letters == []
    topic = f"tests.apps.clicks.count_clicks-{clicks.clicks_topic.get_topic_name()}-Click.user-repartition"
    forwarded = [s for s in ctx.sent if s.topic == topic]
    assert [(s.partition, s.key) for s in forwarded] == [(placed("u1"), b"u1"), (placed("u2"), b"u2")]
    assert [(s.value["user"], s.value["url"]) for s in forwarded] == [("u1", "/a"), ("u2", "/b")]
    # the seam loops the repartition topic back to the grouped stream, as Kafka would
    assert {s.topic for s in ctx.sent} == {topic, "click-counts"}
    assert ctx.sent[0].headers["sluice.source.offset"] == b"9"


async def test_count_clicks_counts_per_user_and_minute_through_the_seam() -> None:
    async with clicks.count_clicks.test_context() as ctx:
        await ctx.put(clicks.Click(user="u1", url="/a"), partition=0, offset=0, timestamp=1_800_000_000.0)
        await ctx.put(clicks.Click(user="u1", url="/b"), partition=1, offset=0, timestamp=1_800_000_030.0)
        assert rows(clicks.user_clicks.table) == {'001800000000000|"u1"': 2}


# ---------------------------------------------------------------------- pageviews: table + page


async def test_count_page_views_counts_per_page_and_a_replay_changes_nothing() -> None:
    views = pageviews.page_views
    async with pageviews.count_page_views.test_context() as ctx:
        for offset, page in enumerate(["home", "about", "home", "home"]):
            await ctx.put(pageviews.PageView(page=page, user=f"u{offset}"), key=page, offset=offset)
        await ctx.put(pageviews.PageView(page="home", user="u2"), key="home", offset=2)  # replayed
        # Outside the agent (as the web view reads it): the partition is found by the key's hash.
        assert views["home"] == 3 and views["about"] == 1 and views["nope"] == 0
        assert skipped(views) == 1
        assert rows(views) == {'"home"': 3, '"about"': 1}
        owner = views.partitions_here[placed("home")]
        assert owner.get('"home"') == 3  # the row lives in the partition the key's records go to
    assert ctx.sent == [] and ctx.dead_letters == []


# ---------------------------------------------------------------------- Faust semantics


class Payment(faust.Record, serializer="json"):
    account: str
    amount: int


async def test_a_record_sent_to_an_agent_of_its_own_topic_arrives_as_the_record() -> None:
    app = service.App("unit-untyped-agent")
    balances = app.Table("balances", default=int)

    @app.agent()  # type: ignore[untyped-decorator]
    async def account_agent(payments: Any) -> None:
        async for payment in payments:
            balances[payment.account] += payment.amount

    async with account_agent.test_context() as ctx:
        await ctx.put(Payment(account="acme", amount=3), key="acme")
        assert ctx.dead_letters == [], ctx.dead_letters[0].headers["sluice.detail"]
        assert balances["acme"] == 3


async def test_an_agent_test_context_can_be_entered_twice() -> None:
    totals = orders.customer_totals
    async with orders.count_agent.test_context() as ctx:
        await ctx.put(5, key="alice", origin=("orders:0", [1, 0]))
        assert totals["alice"] == 5
    async with orders.count_agent.test_context() as ctx:
        await ctx.put(2, key="alice", origin=("orders:0", [1, 0]))
        assert totals["alice"] == 2  # a new context: new, empty in-memory tables


def test_what_count_agent_receives_is_what_faust_would_decode() -> None:
    """The orders app's second hop as stock Faust reads it: ``str`` key, ``int`` value."""
    topic = orders.count_agent.channel
    assert topic.key_type is str and topic.value_type is int
    assert orjson.loads(topic.encode_value(7)) == 7


async def test_a_group_by_agent_that_raises_dead_letters_the_event_and_goes_on() -> None:
    """The event in flight is the grouped stream's; the agent restarts without forwarding twice."""
    agent = clicks.count_clicks
    original = agent.fun

    async def failing(stream: Any) -> None:
        async for click in stream.group_by(clicks.Click.user):
            clicks.user_clicks[click.user] += 1
            if click.url == "/boom":
                raise RuntimeError("boom")

    agent.fun = failing
    try:
        async with agent.test_context() as ctx:
            for offset, (user, url) in enumerate([("u1", "/a"), ("u1", "/boom"), ("u1", "/c"), ("u2", "/d")]):
                click = clicks.Click(user=user, url=url)
                await ctx.put(click, partition=0, offset=offset, timestamp=1_800_000_000.0 + offset)
            assert rows(clicks.user_clicks.table) == {'001800000000000|"u1"': 2, '001800000000000|"u2"': 1}
    finally:
        agent.fun = original
    [letter] = ctx.dead_letters
    assert letter.headers["sluice.reason"] == b"job_error"
    forwarded = [s for s in ctx.sent if s.topic.endswith("-Click.user-repartition")]
    assert [s.value["url"] for s in forwarded] == ["/a", "/boom", "/c", "/d"]
