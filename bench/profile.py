"""Summarise a py-spy profile of the worker: where its CPU goes, by self time.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``). Self time
(samples whose innermost frame is the item) points at the per-event costs to remove; the
inclusive view of sluice's own functions shows which step of the loop they sit under.
Idle samples (the event loop waiting in ``select``) are counted apart, so the percentages
are of the worker's busy time.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_IDLE = ("EpollSelector.select", "select (selectors.py")
_LINE = re.compile(r":\d+\)$")
_OWN_CODE = ("service/", "tables/", "agents/")


def _function(frame: str) -> str:
    """``func (path.py:123)`` -> ``func (path.py)``: lines of one function add up."""
    return _LINE.sub(")", frame)


def summarise(raw: Path, top: int = 10) -> dict[str, object]:
    """Top ``top`` functions and source lines by self time, and sluice functions by inclusive time."""
    own: Counter[str] = Counter()
    own_lines: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        innermost = stack.split(";")[-1]
        if innermost.startswith(_IDLE):
            idle += n
            continue
        frames = [_function(frame) for frame in stack.split(";")]
        busy += n
        own[frames[-1]] += n
        own_lines[innermost] += n
        for frame in set(frames):
            if any(f"({part}" in frame for part in _OWN_CODE):
                inclusive[frame] += n
    if busy == 0:
        return {"busy_samples": 0, "idle_samples": idle, "self": [], "self_lines": [], "sluice_inclusive": []}
    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "self": [(frame, round(100 * n / busy, 1)) for frame, n in own.most_common(top)],
        "self_lines": [(frame, round(100 * n / busy, 1)) for frame, n in own_lines.most_common(top)],
        # Frames under which (nearly) everything runs (CLI, worker, run loop) say nothing.
        "sluice_inclusive": [
            (frame, round(100 * n / busy, 1)) for frame, n in inclusive.most_common() if n < 0.9 * busy
        ][:top],
    }
