"""Source positions: where an update came from, and the guard that refuses to apply it twice.

A row remembers, per source partition (``"topic:partition"``), the position
``(offset, index)`` of the last update it applied. ``index`` numbers the updates one source
record produces for different rows-or-the-same-row (the third distinct word of a line), so a
line that says "the the" is one update of count 2, and a replay of that line is recognised.

Why positions per source partition, and not the offset of the topic the table reads: updates
reach a table through a repartition topic, and a replayed source record is re-sent there at
*new* offsets. Only the origin position identifies it. The guard is sound because, per
(repartition partition, source partition), origins arrive in ascending order with every
smaller origin arriving first: each producer sends a contiguous ascending run starting at a
durable position (the group's committed offset or the tables' own), and everything before a
durable position has been acknowledged.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

Positions = dict[str, list[int]]
"""``{"topic:partition": [offset, index]}``: the last origin applied, per source partition
(lists, as JSON decodes them, so a row read from RocksDB needs no conversion)."""


class Parts(Protocol):
    """The individual updates a combined update stands for (see :class:`Origin`)."""

    def unseen(self, key: str, after: list[int]) -> tuple[Any, int]:
        """The merged payload of ``key``'s parts after position ``after``, and how many of its
        parts are at or before it."""


class Origin(NamedTuple):
    """The source record an update comes from.

    A *combined* update (see :class:`service.job.Job`'s ``combine``) stands for ``updates``
    updates of one key from one source partition, from position ``first`` to
    ``(offset, seq)``. The guard applies all of them, none, or, when the row's position lies
    between the two, exactly the ones after it, which it asks ``parts`` for.
    """

    source: str  # "topic:partition"
    offset: int
    seq: int
    timestamp_ms: int
    first: list[int] | None = None
    updates: int = 1
    parts: Parts | None = None

    @property
    def position(self) -> list[int]:
        return [self.offset, self.seq]


def after(offset: int, seq: int, last: list[int]) -> bool:
    """True when position ``(offset, seq)`` comes after ``last`` (``[offset, seq]``)."""
    return offset > last[0] or (offset == last[0] and seq > last[1])
