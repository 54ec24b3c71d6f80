"""Garbage-collector settings for a worker process (``sluice worker`` and ``faust -A``).

The event path allocates lists, tuples and events by the thousand per batch, nearly none in
cycles, and most die young; but with CPython's defaults (a young collection every 700
allocations) the collector also walked everything a batch holds alive, and the older
generations (the row cache, Faust's app) often enough to cost about half the CPU of the
wordcount path (an in-process run of the agents: 190 CPU-µs per line with the defaults, 90
with these settings), and tens of milliseconds of latency tail (bench/latency.py at 3,500
lines/s: p99 175 ms with the defaults, 118 ms with these).
"""

from __future__ import annotations

import gc

GC_THRESHOLD = (50_000, 20, 100)
"""Allocations between young collections, and the older generations' ratios (CPython's
defaults: 700, 10, 10)."""


def tune_gc() -> None:
    """Collect cycles less often, and freeze the objects alive now (modules, settings, the
    app) out of every collection. Called when the data plane starts: once per process."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
