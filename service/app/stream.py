"""Faust's ``Stream`` with sluice's iteration: events come from the agent's feed, one unit each.

What an agent writes — ``async for value in stream``, ``stream.events()``, ``stream.items()``,
``stream.filter(...)``, ``stream.take(n, within=...)``, ``stream.group_by(...)``,
``current_event()`` — behaves as in Faust. What changes is underneath: no conductor, no
per-message ack bookkeeping, no ``wait_first`` per message (faust-internals.md: ~200 CPU-µs per
event before any user code); an event costs a deque pop, a contextvar set and a generator step.
When the agent asks for its next value, the previous event's unit is done (its sends and table
writes belong to the batch); see :mod:`service.app.units`.

``take(n, within)`` yields up to ``n`` values as soon as the fetched batch has no more for the
agent (never waiting longer than ``within`` for more, as in Faust); iterating the list it yields
makes each value's event current in turn, so table writes and sends inside
``for value in values:`` are guarded by that value's event (in Faust, table writes in a take
body raise: there is no current event).
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from faust import Stream
from faust.exceptions import ImproperlyConfigured, Skip
from faust.streams import _current_event
from faust.types import FieldDescriptorT
from mode.utils.futures import maybe_async

from service.app.feed import Feed
from service.app.units import Unit, set_unit

if TYPE_CHECKING:
    from faust import Event

UnitFactory = Callable[["Event"], Unit]

_VALUES, _EVENTS, _ITEMS = 0, 1, 2
"""What an iteration yields: values (``async for``), events, or ``(key, value)`` pairs."""


class EventList(list[Any]):
    """The values of a ``take()``: iterating it makes each value's event current."""

    def __init__(self, values: list[Any], units: list[Unit], stream: SluiceStream) -> None:
        super().__init__(values)
        self._units = units
        self._stream = stream

    def __iter__(self) -> Iterator[Any]:
        units = self._units
        if units and units[0].done:
            # The agent took the next list: these events are committed and none of them is made
            # current again (whatever is done meanwhile belongs to the event current, if any).
            yield from list.__iter__(self)
            return
        stream = self._stream
        for value, unit in zip(list.__iter__(self), units, strict=True):
            stream._enter(unit)
            yield value


class SluiceStream(Stream[Any]):
    app: Any
    channel: Any
    feed: Feed
    agent: Any = None
    """The agent whose actor iterates this stream."""
    new_unit: UnitFactory
    """Set by the agent that owns the stream (see :class:`service.app.agent.Agent`)."""

    _units: list[Unit]

    grouped: dict[str, SluiceStream]
    """Topic name -> the stream a ``group_by`` of this one reads (set by the agent)."""
    chain_base = 0
    """Processors the stream was made with (none of the agent function's)."""
    chain_seen = 0
    """Processors the agent function has added since it (last) started."""

    def add_processor(self, processor: Any) -> None:
        """As Faust's, except when the function was started again: the chain it builds again
        (``filter``, processors, ``group_by``) exists up to where the first run got, and only
        what is past that is added (the function is assumed to build the same chain)."""
        self.chain_seen += 1
        if self.chain_seen > len(self._processors):
            super().add_processor(processor)

    def restarting(self) -> None:
        """The actor starts the agent's function again over this stream and its groups."""
        self.chain_seen = self.chain_base
        for child in self.grouped.values():
            child.restarting()

    def in_flight_here(self, function: bool) -> list[tuple[SluiceStream, list[Unit]]]:
        """(stream, its units in flight) of what an actor iterates: the agent's function
        (``function``) iterates this stream or, once it called ``group_by``, the grouped
        streams; the task that forwards to a group iterates this one."""
        if function and self.grouped:
            return [found for child in self.grouped.values() for found in child.in_flight_here(True)]
        return [(self, self.in_flight)] if self.in_flight else []

    def _enter(self, unit: Unit) -> None:
        event = unit.event
        set_unit(unit)
        _current_event.set(weakref.ref(event))
        self.current_event = event

    def _leave(self) -> None:
        set_unit(None)
        _current_event.set(None)
        self.current_event = None

    @property
    def in_flight(self) -> list[Unit]:
        """Units handed to the agent and not yet done: rolled back if the agent raises."""
        return getattr(self, "_units", [])

    def finish(self, committed: bool) -> list[Unit]:
        units, self._units = self.in_flight, []
        self._leave()
        self.feed.finish(units, committed)
        return units

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._sluice_aiter(_VALUES)

    def events(self) -> AsyncIterator[Any]:
        """As Faust's: the events whose value passed the processors (one generator, where
        Faust's ``items()`` stacks three)."""
        return self._sluice_aiter(_EVENTS)

    def items(self) -> AsyncIterator[tuple[Any, Any]]:
        """As Faust's: ``(event.key, event.value)``."""
        return self._sluice_aiter(_ITEMS)

    on_first_iteration: Callable[[], None] | None = None
    """Called when the agent first asks for a value (the app waits for every agent's)."""

    def _sluice_first_iteration(self) -> None:
        if self.on_first_iteration is not None:
            self.on_first_iteration()
            self.on_first_iteration = None

    def _begin(self) -> None:
        """A new iteration: an event the last one left in flight (``break``) is done."""
        self._sluice_first_iteration()
        if self.in_flight:
            self.finish(True)

    async def _sluice_aiter(self, kind: int) -> AsyncIterator[Any]:
        self._begin()
        feed = self.feed
        new_unit = self.new_unit
        processors = self._processors
        while True:
            event = feed.pop()
            if event is None:
                self._leave()
                await feed.wait()
                continue
            unit = new_unit(event)
            self._units = [unit]
            self._enter(unit)
            value = event.value
            if processors:
                try:
                    for processor in processors:
                        value = await maybe_async(processor(value))
                except Skip:
                    self.finish(True)
                    continue
            self.events_total += 1
            if kind == _VALUES:
                yield value
            elif kind == _ITEMS:
                yield event.key, event.value
            else:
                yield event
            self._units = []  # the next event (or _leave before waiting) replaces the context
            feed.finish([unit], True)

    async def take(self, max_: int, within: Any) -> AsyncIterator[list[Any]]:  # type: ignore[override]
        async for units in self._take(max_):
            yield EventList([u.event.value for u in units], units, self)

    async def take_events(self, max_: int, within: Any) -> AsyncIterator[list[Any]]:  # type: ignore[override]
        async for units in self._take(max_):
            yield EventList([u.event for u in units], units, self)

    noack_take = take  # type: ignore[assignment]

    async def _take(self, max_: int) -> AsyncIterator[list[Unit]]:
        self._begin()
        feed = self.feed
        new_unit = self.new_unit
        processors = self._processors
        while True:
            events = feed.pop_many(max_)
            if not events:
                self._leave()
                await feed.wait()
                continue
            units = [new_unit(event) for event in events]
            if processors:
                units = await self._process(units)
                if not units:
                    continue
            self._units = units
            self._leave()
            self.events_total += len(units)
            yield units
            self.finish(True)

    async def _process(self, units: list[Unit]) -> list[Unit]:
        """Run the processors over a take's units; the ones a processor skips are done. All are
        in flight meanwhile: a processor that raises fails the whole list (retried singly)."""
        processors = self._processors
        self._units = units
        kept: list[Unit] = []
        skipped: list[Unit] = []
        for unit in units:
            self._enter(unit)
            event = unit.event
            try:
                value = unit.raw = event.value
                for processor in processors:
                    value = await maybe_async(processor(value))
                event.value = value
            except Skip:
                skipped.append(unit)
                continue
            kept.append(unit)
        if skipped:
            self._units = skipped
            self.finish(True)
        return kept

    async def ack(self, event: Any) -> bool:
        """Commits are the engine's: an event is done when the agent asks for the next one."""
        return True

    def noack(self) -> SluiceStream:
        return self

    def through(self, channel: Any) -> Any:
        raise ImproperlyConfigured(
            "sluice: stream.through() is not supported; send to the topic and read it in another agent"
        )

    def join(self, *fields: Any) -> Any:
        raise ImproperlyConfigured("sluice: stream joins are not supported; keep the other side in a table")

    left_join = inner_join = outer_join = join

    def combine(self, *nodes: Any, **kwargs: Any) -> Any:
        raise ImproperlyConfigured("sluice: combining streams is not supported; use one agent per topic")

    def group_by(
        self,
        key: Any,
        *,
        name: str | None = None,
        topic: Any = None,
        partitions: int | None = None,
    ) -> Any:
        """Repartition by a new key: this stream forwards every value to the repartition topic
        (keyed by ``key``, carrying the event's origin), and the stream returned reads it."""
        if not name:
            if isinstance(key, FieldDescriptorT):
                name = key.ident
            else:
                raise TypeError("group_by with callback must set name=topic_suffix")
        if topic is None:
            prefix = ""
            if self.prefix and not self.channel.has_prefix:
                prefix = self.prefix + "-"
            topic = self.channel.derive(
                prefix=prefix,
                suffix=f"-{name}-repartition",
                partitions=partitions or self.app.conf.topic_partitions,
                internal=True,
            )
        agent = self.agent
        if agent is None:
            raise ImproperlyConfigured("sluice: group_by works on an agent's stream")
        return agent.regroup(self, topic, key)

    def forward_to(self, topic: Any, key: Any) -> None:
        """Install the processor that sends each value to ``topic`` under its new key."""

        async def format_key(key: Any, value: Any) -> Any:
            if isinstance(key, FieldDescriptorT):
                return key.getattr(value)
            return await maybe_async(key(value))

        async def repartition(value: Any) -> Any:
            event = self.current_event
            timestamp = event.message.timestamp if event is not None else None
            await topic.send(key=await format_key(key, value), value=value, timestamp=timestamp)
            raise Skip()

        self.add_processor(repartition)
