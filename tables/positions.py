"""Source positions: where an update came from, and the guard that refuses to apply it twice.

A row remembers, per *source* (``"topic:partition"``, see below), the position of the last
update it applied. A position is a list of integers compared lexicographically:

* ``[offset]`` — an event read from a topic no agent of the app wrote (a *source* topic);
* ``[offset, k]`` — the ``k``-th record an agent sent while processing that event, and so on
  one level deeper per hop (the record an agent sends while processing ``[o, k]`` is
  ``[o, k, k2]``);
* a row written twice while one event is processed gets ``[..., 1]``, ``[..., 2]`` for the
  second and third write (the first keeps the event's own position).

Why positions of the source, and not the offset of the topic a table reads: updates reach a
table through other topics, and a replayed source record is re-sent at *new* offsets there.
Only the origin identifies it. The guard is sound because, per (table partition, source), origins
arrive in ascending order with every smaller origin arriving first: each producer sends a
contiguous ascending run starting at a durable position (the group's committed offset or the
tables' own), and everything before a durable position has been acknowledged. A source key
names the path when there is more than one (``events:3@agent>topic:1``, see
:mod:`service.app.units`), so each key has one ordered producer.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

Position = list[int]
Positions = dict[str, Position]
"""``{source: position}``: the last origin applied, per source (lists, as JSON decodes them, so
a row read from RocksDB needs no conversion)."""


class Parts(Protocol):
    """The individual updates a combined update stands for (see :class:`Origin`)."""

    def unseen(self, key: str, after: Position) -> tuple[Any, int]:
        """The merged payload of ``key``'s parts after position ``after``, and how many of its
        parts are at or before it."""

    def split(self, key: str) -> list[tuple[Position, Any]]:
        """Every part of ``key``: its position and payload, in order."""


class Origin(NamedTuple):
    """The source record an update comes from.

    A *combined* update (records of a topic with ``combine``, :mod:`service.repartition`)
    stands for ``updates`` updates of one key from one source, from position ``first`` to
    ``position``. The guard applies all of them, none, or, when the row's position lies between
    the two, exactly the ones after it (``parts`` knows them).
    """

    source: str
    position: Position
    timestamp_ms: int
    first: Position | None = None
    updates: int = 1
    parts: Parts | None = None

    def extend(self, index: int) -> Origin:
        """The origin of the ``index``-th write of one row (or send) made for this origin."""
        return self._replace(position=[*self.position, index], first=None, updates=1, parts=None)


NEW, DUPLICATE, PARTIAL = "new", "duplicate", "partial"


def verdict(origin: Origin, last: Position | None) -> str:
    """Whether a row whose last position for ``origin.source`` is ``last`` has applied none of
    ``origin`` (NEW), all of it (DUPLICATE) or, for a combined origin, only some (PARTIAL)."""
    if last is None or (origin.first if origin.first is not None else origin.position) > last:
        return NEW
    if origin.position > last:
        return PARTIAL
    return DUPLICATE
