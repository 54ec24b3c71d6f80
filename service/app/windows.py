"""Closing windows on the watermark (G9), for windowed tables.

Each owned partition of a windowed table keeps a heap of its open windows and a
:class:`tables.watermark.PartitionClock` restored from its bookkeeping row. After every batch,
the clock hears the sources' reports that arrived, the watermark moves to the slowest source
with records pending, and every window whose start plus ``expires`` it has reached is closed:
``on_window_close(key, value)`` runs (its sends carry the window's last origin), then the row
is deleted. The watermark row is written before the deletions it justifies, so after any crash
a durable deletion implies a durable watermark that closes it: a replayed event of a closed
window is late, and a window is never re-opened with part of its events.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from mode.utils.futures import maybe_async

from service.app.units import Unit, set_unit
from tables.positions import Origin
from tables.table import META_PREFIX, TablePartition
from tables.watermark import WATERMARK_KEY, PartitionClock

if TYPE_CHECKING:
    from service.app.table import SluiceTable


class WindowIndex:
    """The open windows of one table partition, by start."""

    def __init__(self, part: TablePartition) -> None:
        self.heap: list[tuple[int, str]] = []
        self.known: set[str] = set()
        for stored, row in part.rows():
            if not stored.startswith(META_PREFIX) and not row.deleted:
                self.add(stored)

    def add(self, stored: str) -> None:
        if stored not in self.known:
            self.known.add(stored)
            heapq.heappush(self.heap, (int(stored.split("|", 1)[0]), stored))

    def due(self, before: int) -> list[str]:
        """Windows starting at or before ``before`` (ms), oldest first; forgotten here."""
        out = []
        while self.heap and self.heap[0][0] <= before:
            _, stored = heapq.heappop(self.heap)
            self.known.discard(stored)
            out.append(stored)
        return out


def attach(part: TablePartition) -> None:
    """Give a freshly restored windowed partition its clock and window index."""
    part.clock = PartitionClock(part.get(WATERMARK_KEY))  # type: ignore[attr-defined]
    part.windows = WindowIndex(part)  # type: ignore[attr-defined]


async def close_due(
    table: SluiceTable,
    part: TablePartition,
    sources: Iterable[str],
    ends: Mapping[str, int] | None,
    new_unit: Any,
) -> list[Unit]:
    """Move the watermark; close every window it passed. Returns the units of the closings
    (their sends and deletions), for the batch."""
    clock: PartitionClock = part.clock  # type: ignore[attr-defined]
    index: WindowIndex = part.windows  # type: ignore[attr-defined]
    for stored in list(part.pending):
        if not stored.startswith(META_PREFIX) and part.pending[stored] is not None:
            index.add(stored)
    sources = list(sources)
    clock.advance(sources, ends)
    stream_time = getattr(part, "stream_time", -1)
    if not sources and stream_time > clock.watermark:
        # Nothing reports a watermark here (a table not fed through a topic with watermarks):
        # windows close on the largest event time written, as in Faust.
        clock.watermark = stream_time
        clock.changed = True
    units: list[Unit] = []
    if not clock.changed:
        return units
    part.put(WATERMARK_KEY, clock.state())
    clock.changed = False
    expires = table.window.expires if table.window is not None else None
    if not expires:
        return units
    for stored in index.due(clock.watermark - int(expires * 1000)):
        row = part.row(stored)
        if row is None or row.deleted:
            continue
        unit: Unit = new_unit(part.partition, _last_origin(row.positions))
        set_unit(unit)
        try:
            callback = table._on_window_close
            if callback is not None:
                await maybe_async(callback(table._user_key(stored), table.from_storage(row.value)))
        finally:
            set_unit(None)
        previous = part.remove(stored)
        unit.wrote(part, stored, previous)
        units.append(unit)
    return units


def _last_origin(positions: Mapping[str, list[int]]) -> Origin:
    """Some origin that contributed to a window, for the closing's sends (their source headers)."""
    if not positions:
        return Origin("", [0], 0)
    source, position = max(positions.items(), key=lambda item: item[1])
    return Origin(source, list(position), 0)
