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
    from service.app.events import SluiceEvent as Event
    from service.app.outbox import Outbox


class Feed:
    """Events of the batch for one agent's actors.

    With ``concurrency`` above one, actors take events concurrently, but never two of one source
    at once: the guard needs each source's writes to reach a row in order (a later event finished
    first would make the earlier one look applied). Events of different sources run side by side.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.shared = False
        """More than one actor takes from this feed (``concurrency`` > 1)."""
        self._busy: dict[str, int] = {}
        """Source -> units of it in flight (shared feeds only)."""
        self._queue: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.in_flight = 0
        self.outbox: Outbox | None = None
        """Where done units' effects go: the batch being processed (set by the engine)."""
        self.failure: BaseException | None = None
        """Set when an agent cannot go on (not an event's fault): the engine stops."""
        self._singly = 0
        """Events at the front to hand out one at a time (a failed ``take()`` list, retried)."""

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

    def retry_singly(self, events: list[Event]) -> None:
        """A ``take()`` list the agent raised on, rolled back: its events go back to the front
        and are handed out one per ``take()``, so that only the event that fails alone is
        dead-lettered (the agent's code may raise anywhere in its loop, or after it)."""
        self.push_front(events)
        self._singly += len(events)

    def pop(self) -> Event | None:
        if self.shared or self._singly:
            taken = self.pop_many(1)
            return taken[0] if taken else None
        try:
            event = self._queue.popleft()
        except IndexError:
            return None
        self.in_flight += 1
        return event

    def pop_many(self, limit: int) -> list[Event]:
        if self._singly:
            limit = 1
        if self.shared:
            taken = self._take_free(limit)
        else:
            queue = self._queue
            if len(queue) <= limit:  # the common case: all of it, in one copy
                taken = list(queue)
                queue.clear()
            else:
                taken = [queue.popleft() for _ in range(limit)]
            self.in_flight += len(taken)
        if taken and self._singly:
            self._singly -= 1
        return taken

    def _take_free(self, limit: int) -> list[Event]:
        """Up to ``limit`` queued events of one source no other actor is processing, in order."""
        busy = self._busy
        queue = self._queue
        chosen: str | None = None
        taken: list[Event] = []
        index = 0
        while index < len(queue) and len(taken) < limit:
            event = queue[index]
            source = event.origin.source
            if (chosen is None and source not in busy) or source == chosen:
                chosen = source
                del queue[index]
                taken.append(event)
            else:
                index += 1
        if chosen is not None:
            busy[chosen] = busy.get(chosen, 0) + len(taken)
            self.in_flight += len(taken)
        return taken

    async def wait(self) -> None:
        """Until an event this actor may take is queued."""
        while not self._queue or (self.shared and all(e.origin.source in self._busy for e in self._queue)):
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
                    unit.release()
        finally:
            if self.shared:
                busy = self._busy
                for unit in units:
                    source = unit.origin.source
                    left = busy.get(source, 1) - 1
                    if left > 0:
                        busy[source] = left
                    else:
                        busy.pop(source, None)
                self._ready.set()  # an actor waiting for this source may go on
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
        self._singly = 0
        if self.in_flight == 0:
            self._idle.set()
        return dropped
