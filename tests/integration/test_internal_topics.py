"""Issue 13, item 6, against the real broker (one worker, wordcount):

* repartition topics keep records until every reader is past them (``retention.ms=-1``) and are
  purged below the group's committed offset; internal topics carry ``min.insync.replicas`` =
  min(2, RF) at topic level;
* an input topic deleted and re-created is read from its start (positions know the topic's
  id), not skipped as records the tables already hold;
* a local table copy the changelog cannot continue (the changelog was deleted and re-created)
  is refused at start with one line naming it, exit 2, and nothing is guessed.

Every count is compared with ``collections.Counter`` of the lines produced.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from service.devbroker import LocalCluster
from service.kafka.topic_admin import topic_configs as described
from tests.harness import (
    Stack,
    changelog_table,
    create_topic,
    diff,
    produce_records,
    read_records,
    wait_until,
)

pytestmark = pytest.mark.integration

VOCAB = [f"w{i}" for i in range(50)] + ["the", "café"]


@pytest.fixture
def stack(kafka: LocalCluster, tmp_path: Path) -> Iterator[Stack]:
    with Stack(kafka.bootstrap_servers, tmp_path, jobs=("wordcount",)) as s:
        yield s


def lines_of(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 8))) for _ in range(n)]


def send(stack: Stack, lines: list[str]) -> None:
    topic = stack.inputs["wordcount"]
    asyncio.run(create_topic(stack.bootstrap, topic, 4))
    asyncio.run(
        produce_records(stack.bootstrap, topic, [(i % 4, None, ln.encode()) for i, ln in enumerate(lines)])
    )


def counted(lines: list[str]) -> dict[str, int]:
    truth: Counter[str] = Counter()
    for line in lines:
        truth.update(re.findall(r"\w+", line.lower()))
    return dict(truth)


async def topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    """The configs set on ``topic`` itself (not broker defaults)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {e.name: e.value or "" for e in await described(admin, topic) if e.source == "topic"}
    finally:
        await admin.close()


async def log_starts(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: offset for tp, offset in (await consumer.beginning_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def recreate(bootstrap: str, topic: str, partitions: int, config: dict[str, str] | None = None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    for _ in range(100):  # deletion is asynchronous on the broker
        try:
            await create_topic(bootstrap, topic, partitions, config)
            return
        except Exception:
            await asyncio.sleep(0.2)
    raise AssertionError(f"{topic} not re-created")


def test_repartition_topic_is_kept_and_purged_below_the_commit(stack: Stack) -> None:
    lines = lines_of(1, 400)
    worker = stack.worker("w").start()
    worker.wait_ready()
    send(stack, lines)
    stack.caught_up(alive=[worker])
    repartition = stack.repartition("wordcount")
    configs = asyncio.run(topic_configs(stack.bootstrap, repartition))
    assert configs.get("retention.ms") == "-1", configs
    assert configs.get("max.message.bytes") == "1048588", configs  # set: not the broker default
    assert configs.get("min.insync.replicas") == "1", configs  # min(2, RF 1)
    changelog = f"{stack.app_id}-wordcount-changelog"
    assert asyncio.run(topic_configs(stack.bootstrap, changelog)).get("min.insync.replicas") == "1"

    def purged() -> bool:
        starts = asyncio.run(log_starts(stack.bootstrap, repartition, 4))
        return all(start > 0 for start in starts.values())

    wait_until(purged, 120, "repartition records below the commit deleted", [worker])  # every 30 s
    assert worker.kill(signal.SIGTERM) == 0
    words = changelog_table(stack.bootstrap, stack.app_id, "wordcount")
    assert words == counted(lines), diff(counted(lines), words)


def test_a_recreated_input_topic_is_read_from_its_start(stack: Stack) -> None:
    before, after = lines_of(2, 200), lines_of(3, 120)
    worker = stack.worker("w").start()
    worker.wait_ready()
    send(stack, before)
    stack.caught_up(alive=[worker])
    assert worker.kill(signal.SIGTERM) == 0
    asyncio.run(recreate(stack.bootstrap, stack.inputs["wordcount"], 4))
    send(stack, after)  # offsets 0..29 per partition again, below the 50 the tables hold
    worker = stack.worker("w").start()
    worker.wait_ready()
    stack.caught_up(alive=[worker])
    assert worker.kill(signal.SIGTERM) == 0
    expected = counted(before + after)
    words = changelog_table(stack.bootstrap, stack.app_id, "wordcount")
    assert words == expected, diff(expected, words)


def test_a_local_copy_past_a_recreated_changelog_is_refused_in_one_line(stack: Stack) -> None:
    worker = stack.worker("w").start()
    worker.wait_ready()
    send(stack, lines_of(4, 200))
    stack.caught_up(alive=[worker])
    assert worker.kill(signal.SIGTERM) == 0
    changelog = f"{stack.app_id}-wordcount-changelog"
    asyncio.run(recreate(stack.bootstrap, changelog, 4, {"cleanup.policy": "compact"}))
    again = stack.worker("w").start()
    started = time.monotonic()
    assert again.wait(90) == 2, again.tail()
    errors = [ln for ln in again.tail(400).splitlines() if ln.startswith("sluice:")]
    assert len(errors) == 1 and "the changelog ends at 0" in errors[0], again.tail()
    assert "move the partition's directory out of SLUICE_DATA_DIR" in errors[0]
    assert time.monotonic() - started < 90


def test_batches_cut_to_a_tiny_byte_budget_count_exactly(stack: Stack) -> None:
    """``SLUICE_MAX_BATCH_BYTES=1024``: nearly every fetch is cut and the rest sought back (lines
    and repartition records alike; a repartition record larger than the budget is a batch of
    its own): the table is still the Counter of the lines, and nothing is dead-lettered."""
    lines = lines_of(5, 1500)
    send(stack, lines)
    worker = stack.worker("w", SLUICE_MAX_BATCH_BYTES="1024").start()
    worker.wait_ready()
    stack.caught_up(alive=[worker], timeout=180)
    assert worker.kill(signal.SIGTERM) == 0
    words = changelog_table(stack.bootstrap, stack.app_id, "wordcount")
    assert words == counted(lines), diff(counted(lines), words)
    assert asyncio.run(read_records(stack.bootstrap, stack.dead)) == []
