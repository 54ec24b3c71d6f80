"""Input for the fault tests, and the truth computed from it independently of sluice.

The truth is a plain fold of what was produced: ``collections.Counter`` of the tokens for
wordcount, count/sum/min/max per key for rollup, and the set of invalid records. Nothing
here imports the job code, so a bug in a job cannot make its own expected value.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.harness import produce

VOCAB = [f"w{i}" for i in range(300)] + ["the", "The", "THE", "naïve", "café", "x_y", "42"]


@dataclass
class Truth:
    words: Counter[str] = field(default_factory=Counter)
    totals: dict[str, dict[str, int]] = field(default_factory=dict)
    invalid_events: int = 0
    lines: int = 0
    events: int = 0

    def add_line(self, line: str) -> None:
        self.lines += 1
        self.words.update(re.findall(r"\w+", line.lower()))

    def add_event(self, raw: bytes, valid: dict[str, Any] | None) -> None:
        self.events += 1
        if valid is None:
            self.invalid_events += 1
            return
        key, value = valid["key"], valid["value"]
        f = self.totals.get(key)
        if f is None:
            self.totals[key] = {"count": 1, "sum": value, "min": value, "max": value}
        else:
            f["count"] += 1
            f["sum"] += value
            f["min"] = min(f["min"], value)
            f["max"] = max(f["max"], value)


def make_line(rng: random.Random) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(rng.randint(0, 12))) + rng.choice(["", ".", "!"])


BAD_EVENTS = [
    b"not json",
    b"\xff\xfe\xfd",
    b"[1, 2, 3]",
    b'{"key": "k", "value": 1}',
    b'{"key": 5, "value": 1, "ts": 1}',
    b'{"key": "k", "value": "one", "ts": 1}',
    b'{"key": "k", "value": 1, "ts": -5}',
    b'{"key": "", "value": 1, "ts": 1}',
]


def make_event(rng: random.Random, ts: int) -> tuple[bytes, dict[str, Any] | None]:
    if rng.random() < 0.05:
        return rng.choice(BAD_EVENTS), None
    doc = {"key": f"k{rng.randint(0, 40)}", "value": rng.randint(-1000, 1000), "ts": ts}
    return orjson.dumps(doc), doc


class Traffic:
    """Produces lines and events in a background thread until stopped; records the truth."""

    def __init__(self, bootstrap: str, lines_topic: str, events_topic: str, seed: int, rate: int = 400):
        self.bootstrap = bootstrap
        self.lines_topic = lines_topic
        self.events_topic = events_topic
        self.rng = random.Random(seed)
        self.rate = rate
        self.truth = Truth()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> Truth:
        self._stop.set()
        self._thread.join(60)
        if self.error is not None:
            raise self.error
        return self.truth

    def _run(self) -> None:
        try:
            asyncio.run(self._produce())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    async def _produce(self) -> None:
        ts = 1_700_000_000_000
        while not self._stop.is_set():
            lines = [make_line(self.rng) for _ in range(self.rate // 10)]
            events = []
            for _ in range(self.rate // 10):
                ts += self.rng.randint(0, 400)
                events.append(make_event(self.rng, ts))
            await produce(self.bootstrap, self.lines_topic, [ln.encode() for ln in lines], 4)
            await produce(self.bootstrap, self.events_topic, [raw for raw, _ in events], 4)
            for line in lines:
                self.truth.add_line(line)
            for raw, doc in events:
                self.truth.add_event(raw, doc)
            await asyncio.sleep(0.1)
