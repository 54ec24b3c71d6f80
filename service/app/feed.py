"""A feed: the events of one fetched batch waiting for one agent, and when it is done with them.

The engine pushes a batch's events for an agent into its feed and waits until the feed is
*drained*: nothing queued and no unit in flight (every event taken was finished — the agent
asked for the next one — or rolled back and dead-lettered). Only then are the batch's effects
made durable and its offsets committed, so a commit never passes an event an agent has not
finished with, whatever its ``concurrency`` (faust-streaming #606).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from service.app.units import Unit

if TYPE_CHECKING:
    from faust import Event

    from service.app.outbox import Outbox


class Feed:
    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.in_flight = 0
        self.outbox: Outbox | None = None
        """Where done units' effects go: the batch being processed (set by the engine)."""
        self.failure: BaseException | None = None
        """Set when an agent cannot go on (not an event's fault): the engine stops."""

    def push(self, events: Iterable[Event]) -> None:
        self._queue.extend(events)
        if self._queue:
            self._idle.clear()
            self._ready.set()

    def push_front(self, events: list[Event]) -> None:
        """Events to process before anything queued (the parts of a split combined event)."""
        self._queue.extendleft(reversed(events))
        if events:
            self._idle.clear()
            self._ready.set()

    def pop(self) -> Event | None:
        try:
            event = self._queue.popleft()
        except IndexError:
            return None
        self.in_flight += 1
        return event

    def pop_many(self, limit: int) -> list[Event]:
        taken: list[Event] = []
        queue = self._queue
        while queue and len(taken) < limit:
            taken.append(queue.popleft())
        self.in_flight += len(taken)
        return taken

    async def wait(self) -> None:
        """Until events are queued."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()

    def finish(self, units: list[Unit], committed: bool) -> None:
        """``units`` are done (their effects handed to the outbox) or abandoned."""
        try:
            if committed and units:
                outbox = self.outbox
                assert outbox is not None, f"feed {self.name}: a unit finished outside a batch"
                for unit in units:
                    outbox.take(unit)
        finally:
            self.in_flight -= len(units)
            if self.in_flight <= 0 and not self._queue:
                self.in_flight = 0
                self._idle.set()

    def fail(self, exc: BaseException) -> None:
        """The agent cannot go on: the engine stops the worker (nothing of the batch commits)."""
        self.failure = exc
        self._idle.set()

    @property
    def idle(self) -> bool:
        return self._idle.is_set()

    async def drained(self) -> None:
        await self._idle.wait()

    def clear(self) -> list[Any]:
        """Drop everything queued (the batch is abandoned: a stall or a revocation)."""
        dropped = list(self._queue)
        self._queue.clear()
        if self.in_flight == 0:
            self._idle.set()
        return dropped
