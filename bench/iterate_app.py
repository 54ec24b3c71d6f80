"""The framework's own cost per event: one agent that only iterates its stream.

``async for _ in stream: pass`` over the pre-loaded lines, run as ``faust -A
bench.iterate_app worker`` on stock ``faust.App`` or (``BENCH_FAUST_ON=sluice``) on
``service.App``. CPU-µs per event of this worker minus the raw aiokafka drain's is what the
framework costs before any user code (issue 14's goal for sluice: at most 10 µs; Faust measured
180-220 in faust-internals.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import faust

if os.environ.get("BENCH_FAUST_ON") == "sluice":
    import service

    App: Any = service.App
else:
    App = faust.App

APP_ID = os.environ.get("BENCH_FAUST_APP_ID", "bench-iterate")
BROKERS = os.environ.get("BENCH_FAUST_BROKERS", "127.0.0.1:9092")
TOPIC = os.environ.get("BENCH_FAUST_TOPIC", "lines")
DATA_DIR = os.environ.get("BENCH_FAUST_DATA_DIR", "/tmp/bench-iterate")
MARK = Path(os.environ.get("BENCH_FAUST_MARK", "/tmp/bench-iterate.first"))

app = App(
    APP_ID,
    broker=",".join(f"kafka://{b}" for b in BROKERS.split(",")),
    datadir=DATA_DIR,
    topic_partitions=4,
    broker_commit_interval=float(os.environ.get("BENCH_FAUST_COMMIT_INTERVAL", "0.2")),
    web_enabled=False,
)
lines_topic = app.topic(TOPIC, value_type=bytes, value_serializer="raw", partitions=4)


def _mark_first() -> None:
    """Record when consumption started (once, outside the timed loop's steady state)."""
    MARK.write_text(repr(time.time()))


@app.agent(lines_topic)
async def iterate(lines: Any) -> None:
    """Nothing but the iteration (one file write on the first line: when consumption started)."""
    first = True
    async for _ in lines:
        if first:
            first = False
            _mark_first()
