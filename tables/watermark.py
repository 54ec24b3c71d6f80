"""Event-time watermarks: windows close on the slowest live input, not on the fastest (G9).

Closing windows on *stream time* (the largest event time a table partition has seen) makes
results depend on failures: while a crashed worker's inputs wait for the takeover, the other
inputs push stream time past their windows, and the backlog arrives late and is dropped.

Here every source partition (one partition of a job's input topic) tells every table partition
how far it has come. Stage 1 sends, with every batch, a record to every repartition partition
carrying ``w``, the largest event time the source has reached, and ``o``, the source offset it
has processed up to (its consumer position, past any transaction markers); a source with no
new records but a moved position sends the same as a marker. A table partition keeps the
latest ``[w, o]`` per source (:class:`PartitionClock`) in a bookkeeping row of its windows
table, so it survives restarts and takeovers.

The watermark of a table partition is the minimum ``w`` over the sources that still have
records *pending* (their log end, read from the brokers, is past the ``o`` they reported, or
they were never heard from); a source with nothing pending does not hold it back. When no
source has anything pending it is the largest ``w``. It never goes backwards. Events whose
window ended (plus the grace period) at or before the watermark are late.

Why an event that was on time at its source cannot be turned late: within a source, event
times are in order, and records reach a table partition in the order the source sent them;
every earlier record of the source carried a ``w`` no larger than the event's own time, so
while the event is pending the watermark cannot pass it — whatever crashed meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tables.table import META_PREFIX

WATERMARK_KEY = META_PREFIX + "watermark"

NONE = -1
"""Event time of a source that has reached nothing yet."""


class SourceClocks:
    """Stage 1: the event time each source partition has reached, and what was last reported."""

    def __init__(self) -> None:
        self.reached: dict[str, int] = {}
        self.reported: dict[str, int] = {}
        """Source -> the position last sent to every table partition."""

    def observe(self, source: str, ts: int) -> None:
        if ts > self.reached.get(source, NONE):
            self.reached[source] = ts

    def report(self, source: str, position: int) -> tuple[int, int]:
        """The ``(w, o)`` to send now for ``source`` at ``position``; remembered as reported."""
        self.reported[source] = position
        return self.reached.get(source, NONE), position

    def stale(self, source: str, position: int) -> bool:
        """Whether ``source`` moved (e.g. past transaction markers) since it last reported."""
        return self.reported.get(source) != position


class PartitionClock:
    """Stage 2: per source ``[w, o]`` as last heard, and the watermark they allow."""

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        state = state or {}
        self.sources: dict[str, list[int]] = {s: list(v) for s, v in state.get("s", {}).items()}
        self.watermark: int = int(state.get("wm", NONE))
        self.changed = False

    def state(self) -> dict[str, Any]:
        return {"s": self.sources, "wm": self.watermark}

    def heard(self, source: str, w: int, position: int) -> None:
        """A record of ``source`` arrived carrying ``(w, o)``; neither ever goes backwards."""
        known = self.sources.get(source)
        if known is None:
            self.sources[source] = [w, position]
            self.changed = True
        elif w > known[0] or position > known[1]:
            known[0] = max(known[0], w)
            known[1] = max(known[1], position)
            self.changed = True

    def advance(self, sources: Iterable[str], ends: Mapping[str, int] | None) -> bool:
        """Recompute the watermark over ``sources`` (every partition of the job's inputs) given
        their log ends (``None``: not known yet, so every source counts as pending). Returns
        whether it moved."""
        pending: list[int] = []
        reached: list[int] = []
        for source in sources:
            w, position = self.sources.get(source, (NONE, -1))
            reached.append(w)
            end = None if ends is None else ends.get(source)
            if end is None or end > max(position, 0):
                pending.append(w)
        candidate = min(pending) if pending else max(reached, default=NONE)
        if candidate > self.watermark:
            self.watermark = candidate
            self.changed = True
            return True
        return False
