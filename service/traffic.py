"""Sample traffic for the demo and the compose stack: text lines and JSON events at a rate.

It keeps its own fold of what it produced (word counts, valid events), so the demo can say
whether the worker's table equals the input without trusting the worker.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaProducer

from service.kafka.client_config import client_kwargs
from service.settings import Settings

WORDS = [
    "kafka",
    "stream",
    "partition",
    "offset",
    "broker",
    "consumer",
    "producer",
    "table",
    "state",
    "commit",
    "replica",
    "leader",
    "spark",
    "sluice",
    "window",
    "event",
    "lag",
    "metric",
    "changelog",
    "rocksdb",
    "exactly",
    "once",
    "durable",
    "group",
    "topic",
]
_WORD = re.compile(r"\w+")


@dataclass
class Produced:
    lines: int = 0
    events: int = 0
    bad_events: int = 0
    words: Counter[str] = field(default_factory=Counter)


class TrafficGenerator:
    """Sends ``rate`` lines/s to the wordcount input and ``rate`` events/s to the rollup input."""

    def __init__(self, settings: Settings, rate: int, bad_ratio: float = 0.01, seed: int = 7) -> None:
        self.settings = settings
        self.rate = rate
        self.bad_ratio = bad_ratio
        self.rng = random.Random(seed)
        self.produced = Produced()

    def line(self) -> str:
        words = [self.rng.choice(WORDS) for _ in range(self.rng.randint(3, 12))]
        return " ".join(words).capitalize() + "."

    def event(self, now_ms: int) -> bytes:
        if self.rng.random() < self.bad_ratio:
            self.produced.bad_events += 1
            return self.rng.choice([b"not json", b'{"key": "k"}', b"\xff\xfe"])
        doc = {"key": f"sensor-{self.rng.randint(1, 20)}", "value": self.rng.randint(0, 100), "ts": now_ms}
        return orjson.dumps(doc)

    async def run(self, seconds: float | None, progress: bool = False) -> Produced:
        producer = AIOKafkaProducer(
            **client_kwargs(self.settings, client_id="sluice-traffic"), acks="all", linger_ms=20
        )
        try:
            await producer.start()
            started = time.monotonic()
            tick = 0.1
            while seconds is None or time.monotonic() - started < seconds:
                n = max(1, int(self.rate * tick))
                now_ms = int(time.time() * 1000)
                futures = []
                for _ in range(n):
                    text = self.line()
                    futures.append(await producer.send(self.settings.wordcount_input_topic, text.encode()))
                    self.produced.words.update(_WORD.findall(text.lower()))
                    futures.append(await producer.send(self.settings.rollup_input_topic, self.event(now_ms)))
                await asyncio.gather(*futures)
                self.produced.lines += n
                self.produced.events += n
                await asyncio.sleep(max(0.0, tick - (time.monotonic() - started) % tick))
        finally:
            await producer.stop()
        return self.produced
