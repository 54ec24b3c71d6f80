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
committed offset, and everything before a committed offset has been acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

Positions = dict[str, list[int]]
"""``{"topic:partition": [offset, index]}``: the last origin applied, per source partition
(lists, as JSON decodes them, so a row read from RocksDB needs no conversion)."""


class Origin(NamedTuple):
    """The source record an update comes from.

    A *combined* update (see :class:`service.job.Job`'s ``combine``) stands for several updates
    of one key from one source partition: ``parts`` lists each one's ``[offset, seq, payload]``
    in ascending order, ``offset``/``seq`` are the last one's, and ``combine`` merges payloads.
    The guard then applies all of them, none, or exactly the ones it has not seen.
    """

    source: str  # "topic:partition"
    offset: int
    seq: int
    timestamp_ms: int
    parts: list[list[Any]] | None = None
    combine: Callable[[Any, Any], Any] | None = None

    @property
    def position(self) -> list[int]:
        return [self.offset, self.seq]


def is_new(positions: Positions, origin: Origin) -> bool:
    """True when ``origin`` is newer than anything the row applied from the same source partition."""
    last = positions.get(origin.source)
    if last is None:
        return True
    offset = origin.offset
    return offset > last[0] or (offset == last[0] and origin.seq > last[1])
