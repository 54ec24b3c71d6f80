"""Units of work: what an agent is processing, and where its effects wait until it is done.

A *unit* is one event, or one list of events an agent took with ``stream.take()``. While an
agent works on a unit, everything it does lands in the unit:

* **table writes** go to the table partitions' pending overlay at once (later reads see them),
  with an undo entry here, each guarded by the unit's origin (:mod:`tables.table`);
* **sends** wait here, in order, with the origin in their headers.

When the agent asks for its next unit (or returns), the unit is *done*: its sends join the
fetched batch's outgoing records, its undo entries are dropped. If the agent raises instead, the
unit is *rolled back* — writes undone, sends dropped — and its event is dead-lettered
(``job_error``; ``BadRecord`` gives its own reason; a ``take()`` list's events are retried one
at a time first, :mod:`service.app.agent`); the agent is started again on the next unit. So an
event is applied wholly or not at all, and nothing is acknowledged that failed (faust-streaming
#315, #527); the engine commits a batch's offsets only when every unit of it is done (#606, with
any ``concurrency``).

Origins: an event read from a topic nobody in this app wrote carries its own position
``(topic:partition, [offset])``; a record an agent sent carries, in ``sluice.origin`` headers,
the origin of the unit it was sent from plus the send's index in the unit. A table write
made while processing a unit is guarded by that origin, extended by the write's index in the
unit — so a deterministic agent replayed after a crash changes nothing, however many hops the
data went through.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tables.positions import Origin

if TYPE_CHECKING:
    from faust import Event

    from tables.table import TablePartition


_UNCHANGED: Any = object()


class BadRecord(Exception):
    """Raised by agent code about the event itself: it goes to the dead letters with ``reason``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Redeliver(BaseException):
    """A combined event met a row that applied only some of its parts (a replay cut at other
    offsets than the first run): the unit is rolled back and its parts are delivered one by one.
    A ``BaseException`` so that an agent's ``except Exception`` cannot swallow it."""


class Unit:
    """One event an agent is processing, and what processing it has done so far.

    ``__slots__`` and containers made on first use: a unit is made per event, and most units
    of a stateless agent write nothing, and most of a counting agent's send nothing twice.
    """

    __slots__ = (
        "dirty",
        "done",
        "event",
        "fence",
        "folded",
        "hop",
        "job",
        "origin",
        "outbox",
        "packed",
        "raw",
        "replay",
        "sends",
        "tag",
        "undo",
        "via",
        "write_base",
        "writes",
    )

    def __init__(
        self, event: Event, origin: Origin, fence: int, via: str, tag: str, hop: bool, job: str
    ) -> None:
        self.event = event
        self.origin = origin
        self.fence = fence
        """The partition number whose fenced producer and table partitions the effects belong to
        (the event's partition: tables are co-partitioned with the topics that write them)."""
        self.via = via
        """``topic:partition`` the event was read from."""
        self.tag = tag
        """The agent's origin tag (see :mod:`service.app.agent`)."""
        self.hop = hop
        """Whether the event came through a hop (its origin was carried in headers)."""
        self.job = job
        """The agent's metrics and dead-letter label."""
        self.write_base: Origin | None = None
        """The origin table writes are guarded by: the event's, under a source key naming the
        agent when it is tagged (two agents reading one topic and writing one row must not look
        like a replay of each other). Made on the first write (most units of a stateless agent
        write nothing)."""
        self.sends = 0
        self.replay = False
        """A table write found the event already applied: the event is a replay, and all its
        effects — the writes and the sends before them — are durable already (sends are
        acknowledged before the rows, and a partition's rows are one transaction), so its sends
        are dropped instead of repeating outputs computed from rows that already include it."""
        self.writes: dict[tuple[int, str], int] | None = None
        self.undo: list[tuple[TablePartition, str, Any]] = []
        self.outbox: list[Any] = []
        """Plain sends, in order."""
        self.packed: dict[Any, dict[int, list[list[Any]]]] | None = None
        """Sends to packed topics, grouped as they are sent: topic -> target partition ->
        ``[timestamp, [(key, payload, index), ...]]`` runs in send order (so the outbox takes a
        unit's sends per target, not per send: a line's fifteen words are one entry each)."""
        self.folded: list[Any] | None = None
        """Sends to folding topics, one entry per send call (:data:`service.app.folding.Bulk`)."""
        self.dirty: set[TablePartition] | None = None
        self.done = False
        """Its effects were handed to the batch (:meth:`release`): it cannot be current again."""
        self.raw: Any = _UNCHANGED
        """The event's value before the stream's processors replaced it in a ``take()``: put
        back when the unit is retried (processors must not run twice on one value)."""

    def write_origin(self, table: TablePartition, key: str) -> Origin:
        """The origin of this unit's next write of ``key`` in ``table``: the event's own for the
        first, then one level deeper (``[..., 1]``, ``[..., 2]``) for rewrites of the same row."""
        writes = self.writes
        if writes is None:
            writes = self.writes = {}
        slot = (id(table), key)
        index = writes.get(slot, 0)
        writes[slot] = index + 1
        base = self.write_base or self.guarded_by()
        return base if index == 0 else base.extend(index)

    def guarded_by(self) -> Origin:
        base = self.write_base
        if base is None:
            origin, tag = self.origin, self.tag
            base = self.write_base = (
                Origin(
                    origin.source + tag,
                    origin.position,
                    origin.timestamp_ms,
                    origin.first,
                    origin.updates,
                    origin.parts,
                )
                if tag
                else origin
            )
        return base

    def wrote(self, table: TablePartition, key: str, previous: Any) -> None:
        self.undo.append((table, key, previous))
        if self.dirty is None:
            self.dirty = set()
        self.dirty.add(table)

    def fold(self, bulk: Any) -> None:
        folded = self.folded
        if folded is None:
            self.folded = [bulk]
        else:
            folded.append(bulk)

    def send_source(self) -> str:
        """The source key records sent for this unit carry: the event's, naming the path when the
        event came through a hop, and the sending agent when it is tagged."""
        source = self.origin.source
        if self.hop:
            source = f"{source}>{self.via}"
        return source + self.tag

    def send_origin(self, index: int) -> Origin:
        """The origin of this unit's ``index``-th send: the event's, one level deeper."""
        return Origin(self.send_source(), [*self.origin.position, index], self.origin.timestamp_ms)

    def release(self) -> None:
        """The unit is done and its effects are the batch's: let go of its sends and undo
        entries. The agent may hold its event (a take list lives until the next one), and
        whatever a unit holds past its batch is walked by every young collection of the
        garbage collector (see :mod:`service.gctune`): for a wordcount line, its words."""
        self.done = True
        self.packed = None
        self.folded = None
        self.outbox.clear()
        self.undo.clear()

    def rollback(self) -> None:
        for table, key, previous in reversed(self.undo):
            table.restore_pending(key, previous)
        self.undo.clear()
        self.outbox.clear()
        self.packed = None
        self.folded = None
        self.dirty = None
        if self.raw is not _UNCHANGED:
            self.event.value = self.raw
            self.raw = _UNCHANGED


_current: contextvars.ContextVar[Unit | None] = contextvars.ContextVar("sluice_unit", default=None)


def current_unit() -> Unit | None:
    """The unit the calling agent task is processing (``None`` outside agents)."""
    return _current.get()


def set_unit(unit: Unit | None) -> None:
    _current.set(unit)


Callback = Callable[[], None]
