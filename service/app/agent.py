"""Faust's ``Agent`` run by sluice: actors over the agent's feed, and what happens when one raises.

An actor is a task running the agent function over a :class:`~service.app.stream.SluiceStream`
(``concurrency`` actors share one feed). When the function raises, the event in flight is rolled
back — its table writes undone, its sends dropped — and dead-lettered with ``reason=job_error``
and the exception's last line (``BadRecord`` names its own reason), and the function is started
again on the next event: the agent keeps running and nothing failed is acknowledged
(faust-streaming #315, #527). A ``take()`` list is rolled back whole and its events retried one per
``take()``, so only the event that fails alone is dead-lettered. The event in flight is the
grouped stream's when the function iterates a ``group_by``; started again, the function gets the
chain (processors, groups) it built the first time instead of a second one. A combined event
that met a row which applied only some of its parts (:class:`~service.app.units.Redeliver`) is
rolled back and its parts are delivered one by one instead.

sluice options of ``@app.agent(...)``: ``job=`` the label of the agent's metrics and dead
letters (default: the agent's name).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import traceback
from collections.abc import AsyncIterator
from typing import Any, cast

import orjson
from faust import Agent, Event
from faust.exceptions import ImproperlyConfigured

from service.app.events import SluiceEvent, make_event
from service.app.feed import Feed
from service.app.stream import SluiceStream
from service.app.units import BadRecord, Redeliver, Unit
from tables.positions import Origin

log = logging.getLogger(__name__)

MAX_FAILURES = 10
"""Consecutive failures of an agent's own code (outside any event) before the worker stops."""


class SluiceAgent(Agent):
    app: Any

    def __init__(
        self, fun: Any, *, job: str | None = None, origin_tag: str | None = None, **kwargs: Any
    ) -> None:
        if kwargs.get("isolated_partitions"):
            raise ImproperlyConfigured(
                "sluice: isolated_partitions is not supported (every agent sees all its partitions)"
            )
        super().__init__(fun, **kwargs)
        self.job = job or self.name
        self.origin_tag = f"@{self.name}" if origin_tag is None else origin_tag
        """Appended to the source key of what this agent sends, so two agents reading one topic
        and sending to one place never share origins (the built-in jobs keep the plain key)."""
        self.feeds: dict[str, Feed] = {}
        """Topic name -> the feed of the stream reading it."""
        self.pattern_feeds: dict[str, tuple[re.Pattern[str], Feed]] = {}
        """A channel subscribed by pattern: its feed takes every matching topic."""
        self._sluice_tasks: list[asyncio.Task[None]] = []
        self.streams_started = 0

    # ------------------------------------------------------------------ feeds and streams

    def info(self) -> Any:
        """What :meth:`clone` copies (Faust's, plus sluice's options)."""
        return {**super().info(), "job": self.job, "origin_tag": self.origin_tag}

    def feed_for(self, topics: list[str]) -> Feed:
        feed = Feed(f"{self.name}:{','.join(topics)}")
        for topic in topics:
            self.feeds[topic] = feed
        return feed

    def new_stream(self, channel: Any, feed: Feed) -> SluiceStream:
        stream = SluiceStream(channel, app=self.app, prefix=self.name, beacon=self.beacon)
        stream.feed = feed
        stream.grouped = {}
        stream.chain_base = stream.chain_seen = len(stream._processors)
        stream.agent = self
        job, tag = self.job, self.origin_tag

        def new_unit(event: Event) -> Unit:
            msg = event.message
            assert isinstance(event, SluiceEvent)
            return Unit(
                event, event.origin, msg.partition, f"{msg.topic}:{msg.partition}", tag, event.hop, job
            )

        stream.new_unit = new_unit

        def started() -> None:
            self.streams_started += 1

        stream.on_first_iteration = started
        return stream

    def stream(self, channel: Any = None, active_partitions: Any = None, **kwargs: Any) -> SluiceStream:
        channel = channel if channel is not None else self.channel
        pattern = getattr(channel, "pattern", None)
        if pattern:
            found = self.pattern_feeds.get(pattern.pattern)
            if found is None:
                found = self.pattern_feeds[pattern.pattern] = (
                    pattern,
                    Feed(f"{self.name}:{pattern.pattern}"),
                )
            return self.new_stream(channel, found[1])
        names = list(channel.topics) or [channel.get_topic_name()]
        feed = self.feeds.get(names[0]) or self.feed_for(names)
        return self.new_stream(channel, feed)

    def regroup(self, source: SluiceStream, topic: Any, key: Any) -> SluiceStream:
        """``source.group_by(key)``: ``source`` forwards to ``topic`` (a task drains it), and the
        stream returned reads ``topic``."""
        if self.concurrency > 1:
            raise ImproperlyConfigured("Agent with concurrency>1 cannot use stream.group_by!")
        name = topic.get_topic_name()
        if name in source.grouped:  # the function started again: its group exists
            return source.grouped[name]
        self.app.data_plane.add_topic(topic)
        source.forward_to(topic, key)
        grouped = source.grouped[name] = self.new_stream(topic, self.feed_for([name]))
        self._sluice_tasks.append(
            asyncio.create_task(self._actor(source, _drain), name=f"sluice-groupby-{self.name}")
        )
        return grouped

    # ------------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        stream = self.stream()
        stream.feed.shared = self.concurrency > 1
        for index in range(self.concurrency):
            actor = stream if index == 0 else self.new_stream(self.channel, stream.feed)
            self._sluice_tasks.append(
                asyncio.create_task(self._actor(actor, self.fun), name=f"sluice-agent-{self.name}")
            )

    async def on_stop(self) -> None:
        for task in self._sluice_tasks:
            task.cancel()
        for task in self._sluice_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._sluice_tasks.clear()

    # ------------------------------------------------------------------ actors

    async def _actor(self, stream: SluiceStream, fun: Any) -> None:
        failures = 0
        started = False
        while True:
            try:
                if started and fun is not _drain:
                    stream.restarting()
                started = True
                result = fun(stream)
                if isinstance(result, AsyncIterator):
                    async for value in result:
                        await self._delegate_to_sinks(value)
                else:
                    await result
                for iterated, _ in stream.in_flight_here(fun is not _drain):
                    iterated.finish(True)  # the function was done with the event it left
                log.warning("agent function returned; started again", extra={"agent": self.name})
                await asyncio.sleep(0.1)
            except Redeliver:
                for iterated, _ in stream.in_flight_here(fun is not _drain):
                    self._redeliver(iterated)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._fail(stream.in_flight_here(fun is not _drain), exc):
                    failures = 0
                    continue
                failures += 1
                if failures >= MAX_FAILURES:  # not an event's fault: the worker stops (exit 1)
                    stream.feed.fail(exc)
                    return
                await asyncio.sleep(0.5)

    def _fail(self, in_flight: list[tuple[SluiceStream, list[Unit]]], exc: Exception) -> bool:
        """Roll back the event in flight and dead-letter it (a ``take()`` list: roll back all and
        retry them singly); the actor starts again. False when no event was in flight: the
        agent's own code failed, not an event's."""
        if not in_flight:
            log.error(
                "agent failed outside any event; restarting it", exc_info=exc, extra={"agent": self.name}
            )
            return False
        for stream, units in in_flight:
            for unit in reversed(units):  # a later unit's undo restores what an earlier one wrote
                unit.rollback()
            if len(units) > 1:  # a take() list: retried one event per take, to find the failing one
                stream.feed.retry_singly([cast(SluiceEvent, unit.event) for unit in units])
                log.warning(
                    "agent raised on a take() list; its events are retried one at a time",
                    extra={"agent": self.name, "events": len(units), "error": repr(exc)},
                )
            else:
                self._dead_letter(stream, units[0], exc)
            stream.finish(committed=False)
        return True

    def _dead_letter(self, stream: SluiceStream, unit: Unit, exc: Exception) -> None:
        if isinstance(exc, BadRecord):
            reason, detail = exc.reason, exc.detail
        else:
            reason = "job_error"
            detail = traceback.format_exception_only(exc)[-1].strip()
            log.exception("agent raised on an event; dead-lettered", extra={"agent": self.name})
        outbox = stream.feed.outbox
        if outbox is not None:
            key, value, where = dead_letter_of(unit)
            sender = outbox.sender_for(unit.fence)
            outbox.dead_letters.send(sender, self.job, reason, detail, where, key, value)

    def _redeliver(self, stream: SluiceStream) -> None:
        units = stream.in_flight
        events: list[SluiceEvent] = []
        for unit in reversed(units):
            unit.rollback()
        for unit in units:
            assert isinstance(unit.event, SluiceEvent)
            try:
                events.extend(split_combined(unit.event))
            except Exception as exc:  # parts that do not hold the event's: not a sluice record
                self._dead_letter(stream, unit, BadRecord("invalid_repartition_record", repr(exc)))
        stream.feed.push_front(events)
        stream.finish(committed=False)

    def test_context(self, *, partitions: int = 0, **kwargs: Any) -> Any:  # type: ignore[override]
        """sluice's unit-test seam (:mod:`service.app.testing`): the agent's code over in-memory
        tables, with what it sends and dead-letters collected."""
        from service.app.testing import TestContext

        return TestContext(self, partitions)

    # ------------------------------------------------------------------ unsupported

    async def ask(self, *args: Any, **kwargs: Any) -> Any:
        raise ImproperlyConfigured("sluice: agent.ask() (request/reply) is not supported; use agent.send()")

    cast = ask_nowait = map = kvmap = join = kvjoin = ask  # type: ignore[assignment]


async def _drain(stream: SluiceStream) -> None:
    async for _ in stream:
        pass


def dead_letter_of(unit: Unit) -> tuple[bytes | None, bytes | None, tuple[str, int, int]]:
    """What a dead letter keeps of a unit's event: the record's own key and bytes and position,
    or — for an event unpacked from a packed record — its key and value as JSON and its origin."""
    event = unit.event
    msg = event.message
    if not getattr(event, "packed", False):
        return msg.key, msg.value, (msg.topic, msg.partition, msg.offset)
    origin: Origin = unit.origin
    topic, _, partition = origin.source.split("@", 1)[0].split(">", 1)[0].partition("#")[0].rpartition(":")
    value = event.value.to_representation() if hasattr(event.value, "to_representation") else event.value
    key = event.key if isinstance(event.key, str) else orjson.dumps(event.key).decode()
    try:
        where = (topic, int(partition), int(origin.position[0]))
    except (ValueError, TypeError, IndexError):  # an origin that names no source: the record's own
        where = (msg.topic, msg.partition, msg.offset)
    return key.encode(), orjson.dumps(value, default=repr), where


def split_combined(event: SluiceEvent) -> list[SluiceEvent]:
    """A combined event as the individual events it stands for (or itself)."""
    origin = event.origin
    if origin.first is None or origin.parts is None:
        return [event]
    out = []
    rebuild = getattr(event.value, "from_data", None)
    parts = origin.parts.split(str(event.key))
    if not parts:
        raise ValueError(f"no parts for key {event.key!r} in the record's parts header")
    for position, payload in parts:
        value = rebuild(payload) if rebuild is not None else payload
        part_origin = Origin(origin.source, position, origin.timestamp_ms)
        out.append(
            make_event(
                event.app,
                event.key,
                value,
                event.headers,
                event.message,
                part_origin,
                hop=event.hop,
                packed=True,
            )
        )
    return out
