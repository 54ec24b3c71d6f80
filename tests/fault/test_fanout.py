"""No single valid record can crash-loop a worker.

* A valid line of ~690 KB with 100,000 distinct words (u0 … u99999): its table updates do not fit one
  repartition record under the broker's size limit, so they must be split over several; the
  worker stays alive and the table equals the Counter of every line, the big one included.
* Garbage written straight into ``<app>-wordcount-repartition`` (not JSON; JSON of the wrong
  shape) is dead-lettered as ``invalid_repartition_record``; the worker goes on, exactly.
* An invalid-UTF-8 line a few hundred bytes under the broker's message size limit: its dead
  letter (value plus ``sluice.*`` headers) would be over the limit; the worker must still
  dead-letter it (``invalid_utf8``), trimming the detail or cutting the value with a
  ``sluice.truncated`` header giving the original length, and go on.

Every expected value is folded here from what was produced (``collections.Counter``).
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.devbroker import LocalCluster
from tests.harness import (
    Record,
    Stack,
    changelog_table,
    diff,
    metric_total,
    produce_records,
    read_records,
    scrape,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

VOCAB = [f"w{i}" for i in range(200)] + ["The", "the", "café", "x_y", "42"]
BROKER_MESSAGE_MAX_BYTES = 1048588
"""Kafka's default ``message.max.bytes`` (a whole record batch), which the test broker keeps."""


def tokens(line: str) -> Counter[str]:
    return Counter(re.findall(r"\w+", line.lower()))


def normal_lines(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(0, 12))) for _ in range(n)]


def send_lines(stack: Stack, values: list[bytes], max_request_size: int = 1048576) -> list[tuple[int, int]]:
    topic = stack.inputs["wordcount"]
    return asyncio.run(
        produce_records(
            stack.bootstrap,
            topic,
            [(i % 4, None, v) for i, v in enumerate(values)],
            max_request_size=max_request_size,
        )
    )


def dead_letters(stack: Stack) -> list[Record]:
    return asyncio.run(read_records(stack.bootstrap, stack.dead))


@pytest.fixture
def stack(kafka: LocalCluster, tmp_path: Path) -> Iterator[Stack]:
    with Stack(kafka.bootstrap_servers, tmp_path, jobs=("wordcount",)) as s:
        yield s


def test_one_line_with_100k_distinct_words_is_counted_without_a_crash(stack: Stack) -> None:
    worker = stack.worker("w").start()
    worker.wait_ready()
    before, after = normal_lines(1, 400), normal_lines(2, 400)
    big = " ".join(f"u{i}" for i in range(100_000))
    assert 550_000 < len(big.encode()) < 700_000  # ~690 KB with the spaces
    lines = [*before, big, *after]
    send_lines(stack, [ln.encode() for ln in lines], max_request_size=2 * 1048576)
    truth: Counter[str] = Counter()
    for line in lines:
        truth.update(tokens(line))
    stack.caught_up(alive=[worker], timeout=150)
    assert worker.alive(), worker.tail()
    assert worker.kill(signal.SIGTERM) == 0, worker.tail()
    words = changelog_table(stack.bootstrap, stack.app_id, "wordcount")
    assert words == dict(truth), "wordcount table: " + diff(dict(truth), words)


GARBAGE = [
    b"not a repartition record",
    b'{"hello": "world"}',  # valid JSON, wrong shape
    b"[1, 2, 3]",  # valid JSON, wrong shape
]


def test_garbage_in_the_repartition_topic_is_dead_lettered(stack: Stack) -> None:
    worker = stack.worker("w").start()
    worker.wait_ready()  # the repartition topic exists now (the worker created it)
    first, second = normal_lines(3, 300), normal_lines(4, 300)
    send_lines(stack, [ln.encode() for ln in first])
    garbage = [(p, None, value) for p in range(4) for value in GARBAGE]
    placed = asyncio.run(produce_records(stack.bootstrap, stack.repartition("wordcount"), garbage))
    send_lines(stack, [ln.encode() for ln in second])
    truth: Counter[str] = Counter()
    for line in first + second:
        truth.update(tokens(line))
    stack.caught_up(alive=[worker])
    expected = {pos: value for pos, (_, _, value) in zip(placed, garbage, strict=True)}

    letters: dict[tuple[int, int], Record] = {}

    def all_dead_lettered() -> bool:
        letters.clear()
        for r in dead_letters(stack):
            if r.headers.get("sluice.source.topic") == stack.repartition("wordcount").encode():
                pos = (int(r.headers["sluice.source.partition"]), int(r.headers["sluice.source.offset"]))
                letters[pos] = r
        return set(expected) <= set(letters)

    wait_until(all_dead_lettered, 30, "every garbage record dead-lettered", [worker])
    metrics = scrape(worker)
    assert worker.kill(signal.SIGTERM) == 0, worker.tail()
    problems = []
    for pos, value in expected.items():
        r = letters[pos]
        if r.headers.get("sluice.reason") != b"invalid_repartition_record":
            problems.append(f"{pos}: reason {r.headers.get('sluice.reason')!r}")
        if r.value != value:
            problems.append(f"{pos}: value {r.value!r}, produced {value!r}")
    counted = metric_total(metrics, "sluice_dead_letters_total", reason="invalid_repartition_record")
    if counted < len(expected):
        problems.append(f"sluice_dead_letters_total{{reason=invalid_repartition_record}} = {counted}")
    words = changelog_table(stack.bootstrap, stack.app_id, "wordcount")
    if words != dict(truth):
        problems.append("wordcount table: " + diff(dict(truth), words))
    assert not problems, "\n".join(problems)


def test_invalid_utf8_line_near_the_size_limit_is_dead_lettered(stack: Stack) -> None:
    worker = stack.worker("w").start()
    worker.wait_ready()
    # The record batch of this one record (61 bytes of batch header, ~11 of record framing) fits
    # the broker's limit with ~80 bytes to spare; the same value with the dead letter's headers
    # (reason, job, source topic/partition/offset — before any detail) cannot.
    size = BROKER_MESSAGE_MAX_BYTES - 150
    bad = b"\xff\xfe" + b"abc " * ((size - 2) // 4)
    bad += b"x" * (size - len(bad))
    assert len(bad) == size
    minimal_headers = sum(
        len(k) + len(v) + 2
        for k, v in [
            ("sluice.reason", b"invalid_utf8"),
            ("sluice.job", b"wordcount"),
            ("sluice.source.topic", stack.inputs["wordcount"].encode()),
            ("sluice.source.partition", b"0"),
            ("sluice.source.offset", b"400"),
        ]
    )
    assert size + 61 + 11 <= BROKER_MESSAGE_MAX_BYTES < size + 61 + minimal_headers
    first, second = normal_lines(5, 400), normal_lines(6, 400)
    values = [ln.encode() for ln in first] + [bad] + [ln.encode() for ln in second]
    positions = send_lines(stack, values, max_request_size=2 * 1048576)
    bad_pos = positions[len(first)]
    truth: Counter[str] = Counter()
    for line in first + second:
        truth.update(tokens(line))
    stack.caught_up(alive=[worker])

    found: list[Record] = []

    def dead_lettered() -> bool:
        found[:] = [
            r
            for r in dead_letters(stack)
            if (r.headers.get("sluice.source.partition"), r.headers.get("sluice.source.offset"))
            == (str(bad_pos[0]).encode(), str(bad_pos[1]).encode())
        ]
        return bool(found)

    wait_until(dead_lettered, 30, f"a dead letter for {bad_pos}", [worker])
    assert worker.alive(), worker.tail()
    assert worker.kill(signal.SIGTERM) == 0, worker.tail()
    problems = []
    others = len(dead_letters(stack)) - len(found)
    if others:  # a valid line fetched with the bad one must not share its fate
        problems.append(f"{others} other dead letters")
    for r in found:
        if r.headers.get("sluice.reason") != b"invalid_utf8":
            problems.append(f"reason {r.headers.get('sluice.reason')!r}")
        if r.headers.get("sluice.source.topic") != stack.inputs["wordcount"].encode():
            problems.append(f"source topic {r.headers.get('sluice.source.topic')!r}")
        value = r.value or b""
        if "sluice.truncated" in r.headers:
            if int(r.headers["sluice.truncated"]) != size or len(value) >= size:
                problems.append(f"truncated to {len(value)} bytes, header {r.headers['sluice.truncated']!r}")
        elif value != bad:
            problems.append(
                f"value of {len(value)} bytes differs from the line and no sluice.truncated header"
            )
    words = changelog_table(stack.bootstrap, stack.app_id, "wordcount")
    if words != dict(truth):
        problems.append("wordcount table: " + diff(dict(truth), words))
    assert not problems, "\n".join(problems)
