"""Garbage collection for a worker process (``sluice worker`` and ``faust -A``): at batch
boundaries, not in the middle of a batch.

The event path allocates lists, tuples, events and units by the thousand per batch, nearly none
in cycles, and they all die together when the batch is done. CPython collects the young
generation when the *net* number of live containers grows past a threshold, which in a worker
happens in the middle of a batch — precisely when the batch holds tens of thousands of live
objects (a wordcount batch's packed sends) — so every young collection walked them all and
moved them to the older generations, to be walked again there. Measured with ``py-spy
--native`` on the wordcount bench (200k lines): 13% of the worker's CPU in ``gc_collect_main``,
nearly all of it triggered mid-batch, with thresholds of (50000, 20, 100). (CPython's defaults,
700/10/10, cost about half the CPU of the same path.)

So the automatic collector only stands by (a threshold only a very large batch reaches), and
the engine collects between batches, when the batch's sends and units are freed (a done unit
lets go of them, :meth:`service.app.units.Unit.release`): the young generation every
:data:`YOUNG_EVERY` batches (an idle worker's empty fetches count: at least every 16 s), the
middle one every :data:`OLD_EVERY`, everything every :data:`FULL_EVERY`. Not after every batch:
what the agents still hold then (the events of the list each took last) is walked by every
young collection, and a batch's garbage is freed by reference counting anyway — only cycles
wait for a collection. Measured the same way with a young collection after every batch of
10,000 lines: 7% of the CPU; every 8 batches, 3.1%; every 32, 1.2% (what survives a batch —
mostly rows entering the row cache — is walked once either way, but more of it is replaced
and freed before a rarer collection). A cycle still referenced when a young collection runs
waits for the next collection of its generation, as it would with CPython's own schedule.
"""

from __future__ import annotations

import gc

GC_THRESHOLD = (1_000_000, 10, 10)
"""Net container allocations before CPython collects on its own (a batch that big is the
only case), and its ratios for the older generations."""
YOUNG_EVERY = 32
"""Batches between collections of the young generation."""
OLD_EVERY = 128
"""Batches between collections of the middle generation."""
FULL_EVERY = 1024
"""Batches between full collections (the row caches live in the oldest generation)."""


def tune_gc() -> None:
    """Freeze the objects alive now (modules, settings, the app) out of every collection and
    set the stand-by thresholds. Called when the data plane starts: once per process."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


class BatchCollector:
    """Collects between batches (see the module's docstring); :meth:`batch_done` after each."""

    def __init__(self) -> None:
        self.batches = 0

    def batch_done(self) -> None:
        self.batches += 1
        if self.batches % FULL_EVERY == 0:
            gc.collect(2)
        elif self.batches % OLD_EVERY == 0:
            gc.collect(1)
        elif self.batches % YOUNG_EVERY == 0:
            gc.collect(0)
