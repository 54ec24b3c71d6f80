"""The Faust baseline: wordcount as a faust-streaming 0.15 user writes it, nothing added.

Two agents, because a Faust table must be updated from a stream partitioned by the table's
key: ``split`` reads the lines and sends each distinct word of a line, with its occurrences,
to an internal topic keyed by the word (Faust's documented way to repartition); ``count``
reads that topic and adds to a RocksDB-backed table (``store="rocksdb://"``, changelog on).
No offset guard, no batching of the sends: per-event updates, as in Faust's own examples.

Run by :mod:`bench.faust_run` as ``faust -A bench.faust_app worker`` with its settings in
``BENCH_FAUST_*`` variables. ``BENCH_FAUST_ON=sluice`` runs this same file on ``service.App``
(the one-line change a Faust user makes; issue 15's "same file" comparison). The only
instrumentation is one file write on the very first line, giving the wall-clock time
consumption started (Faust has no readiness endpoint that says "assigned and about to fetch").
``broker_commit_interval`` is lowered from 2.8 s to sluice's 0.2 s so that "group lag 0" is
observed as promptly for both.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import faust

if os.environ.get("BENCH_FAUST_ON") == "sluice":
    import service

    App: Any = service.App
else:
    App = faust.App

WORD = re.compile(r"\w+")

APP_ID = os.environ.get("BENCH_FAUST_APP_ID", "bench-faust")
BROKERS = os.environ.get("BENCH_FAUST_BROKERS", "127.0.0.1:9092")
TOPIC = os.environ.get("BENCH_FAUST_TOPIC", "lines")
DATA_DIR = os.environ.get("BENCH_FAUST_DATA_DIR", "/tmp/bench-faust")
MARK = Path(os.environ.get("BENCH_FAUST_MARK", "/tmp/bench-faust.first"))
PARTITIONS = 4

app = App(
    APP_ID,
    broker=",".join(f"kafka://{b}" for b in BROKERS.split(",")),
    store="rocksdb://",
    datadir=DATA_DIR,
    topic_partitions=PARTITIONS,
    broker_commit_interval=float(os.environ.get("BENCH_FAUST_COMMIT_INTERVAL", "0.2")),
    web_enabled=False,
)
lines_topic = app.topic(TOPIC, value_type=bytes, value_serializer="raw", partitions=PARTITIONS)
words_topic = app.topic(
    f"{APP_ID}-words", key_type=str, value_serializer="json", partitions=PARTITIONS, internal=True
)
word_counts = app.Table("wordcount", default=int, partitions=PARTITIONS)

_first_seen = False


def _mark_first() -> None:
    """Record when consumption started (once; a few microseconds, outside the timed loop)."""
    MARK.write_text(repr(time.time()))


@app.agent(lines_topic)
async def split(lines: faust.StreamT[bytes]) -> None:
    """Stage 1: each distinct word of a line, with its occurrences, keyed by the word."""
    global _first_seen
    async for line in lines:
        if not _first_seen:
            _first_seen = True
            _mark_first()
        for word, n in Counter(WORD.findall(line.decode("utf-8").lower())).items():
            await words_topic.send(key=word, value=n)


@app.agent(words_topic)
async def count(words: faust.StreamT[Any]) -> None:
    """Stage 2: the table update, once per (line, word)."""
    async for word, n in words.items():
        word_counts[word] += n
