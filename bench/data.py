"""The benchmark's input: deterministic text lines, their true word counts, and a fast loader.

Why synthetic text: the suite must run offline and give the same input every time, so that
two runs differ only by the code under test. Two shapes:

* ``vocabulary``: lines of ~100 bytes drawn from 10k distinct words with Zipf-like weights
  (rank ``r`` has weight ``1/r``, as in natural text: a few words are very frequent, most are
  rare), with a capitalised first word and some punctuation so that ``lower()`` and the
  tokenizer do real work;
* ``distinct``: every one of N (1M in the full run) distinct keys occurs a few times, in
  shuffled order, to measure state size and RSS rather than hot-key folding.

The truth is computed with the job's stated tokenizer, ``re.findall(r"\\w+", line.lower())``,
independently of the job's code, so a tokenizer bug in the job shows up as a mismatch.

Lines are loaded with one aiokafka batch builder per partition (not ``send()`` per record),
because pre-loading a million lines record by record would take longer than the benchmark.
"""

from __future__ import annotations

import asyncio
import random
import re
import string
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

WORD = re.compile(r"\w+")
LINE_BYTES = 100
PARTITIONS = 4
"""Partitions of every benchmark topic: sluice's default ``SLUICE_TOPIC_PARTITIONS``."""

_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"
_PUNCTUATION = (",", ".", ";", "!", "?")


@dataclass(frozen=True)
class Dataset:
    """One pre-loaded topic and what a correct wordcount must hold after reading it."""

    name: str
    topic: str
    lines: list[bytes]
    truth: Counter[str]

    @property
    def events(self) -> int:
        return len(self.lines)

    @property
    def tokens(self) -> int:
        return sum(self.truth.values())


def truth_of(lines: list[bytes]) -> Counter[str]:
    """The exact wordcount of ``lines``, by the job's documented tokenizer."""
    counts: Counter[str] = Counter()
    for line in lines:
        counts.update(WORD.findall(line.decode("utf-8").lower()))
    return counts


def vocabulary(size: int, seed: int = 10) -> list[str]:
    """``size`` distinct pronounceable lowercase words of 2-4 syllables (3-12 letters)."""
    rng = random.Random(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        syllables = rng.choice((2, 2, 3, 3, 3, 4))
        word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
        if rng.random() < 0.3:
            word += rng.choice(_CONSONANTS)
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def vocabulary_lines(count: int, vocab_size: int = 10_000, seed: int = 11) -> list[bytes]:
    """``count`` lines of about :data:`LINE_BYTES` bytes over a Zipf-weighted vocabulary."""
    words = vocabulary(vocab_size)
    cum = list(accumulate(1.0 / rank for rank in range(1, vocab_size + 1)))
    rng = random.Random(seed)
    # Drawing all words in one call is ~20x faster than one call per line.
    pool = rng.choices(words, cum_weights=cum, k=count * 20)
    lines: list[bytes] = []
    i = 0
    for _ in range(count):
        parts: list[str] = []
        size = 0
        while size < LINE_BYTES - 8:
            word = pool[i]
            i += 1
            if i == len(pool):
                i = 0
            if rng.random() < 0.05:
                word += rng.choice(_PUNCTUATION)
            parts.append(word)
            size += len(word) + 1
        parts[0] = parts[0].capitalize()
        lines.append(" ".join(parts).encode())
    return lines


def _base36(n: int) -> str:
    digits = string.digits + string.ascii_lowercase
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def distinct_key_lines(keys: int, repeats: int = 3, seed: int = 12) -> list[bytes]:
    """Lines of ~100 bytes in which each of ``keys`` distinct words occurs ``repeats`` times."""
    rng = random.Random(seed)
    names = [f"k{_base36(i)}" for i in range(keys)]
    lines: list[bytes] = []
    for _ in range(repeats):
        order = names[:]
        rng.shuffle(order)
        parts: list[str] = []
        size = 0
        for word in order:
            parts.append(word)
            size += len(word) + 1
            if size >= LINE_BYTES - 8:
                lines.append(" ".join(parts).encode())
                parts, size = [], 0
        if parts:
            lines.append(" ".join(parts).encode())
    return lines


def make_dataset(name: str, topic: str, lines: list[bytes]) -> Dataset:
    return Dataset(name=name, topic=topic, lines=lines, truth=truth_of(lines))


async def create_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    """Create ``topic`` (uncompacted, replication 1) unless it exists."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def load(bootstrap: str, topic: str, lines: list[bytes], partitions: int = PARTITIONS) -> None:
    """Append ``lines`` unkeyed to ``topic``, line ``i`` on partition ``i % partitions``."""
    await create_topic(bootstrap, topic, partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        for _ in range(100):  # a topic created a moment ago may not be in metadata yet
            if len(await producer.partitions_for(topic) or ()) >= partitions:
                break
            await producer.client.force_metadata_update()
            await asyncio.sleep(0.1)
        builders = [producer.create_batch() for _ in range(partitions)]
        pending = []
        for i, line in enumerate(lines):
            p = i % partitions
            if builders[p].append(key=None, value=line, timestamp=None) is None:
                pending.append(await producer.send_batch(builders[p], topic, partition=p))
                builders[p] = producer.create_batch()
                builders[p].append(key=None, value=line, timestamp=None)
            if len(pending) >= 64:
                await asyncio.gather(*pending)
                pending.clear()
        for p, builder in enumerate(builders):
            if builder.record_count():
                pending.append(await producer.send_batch(builder, topic, partition=p))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
