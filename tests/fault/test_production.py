"""Issue 9 on real brokers: a broker's death (G7), topic patterns, the per-partition rate limit."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.fault.test_exact_state import Deployment
from tests.fault.workload import Traffic
from tests.harness import changelog_table, produce, unique

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def processed(metrics: str, topic: str) -> dict[int, float]:
    pattern = (
        r"^sluice_events_processed_total\{job=\"[^\"]+\",partition=\"(\d+)\",topic=\""
        + re.escape(topic)
        + r"\"\} (\S+)$"
    )
    return {int(p): float(v) for p, v in re.findall(pattern, metrics, re.M)}


async def leader_of(bootstrap: str, topic: str, partition: int) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for t in await admin.describe_topics([topic]):
            for p in t["partitions"]:
                if p["partition"] == partition:
                    return int(p["leader"])
    finally:
        await admin.close()
    raise AssertionError(f"no leader for {topic}:{partition}")


def wait_progress(worker, topic: str, since: dict[int, float], timeout: float = 60) -> float:  # type: ignore[no-untyped-def]
    """Seconds until the worker processed more input than ``since``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status, metrics = worker.get("/metrics")
        if status == 200 and sum(processed(metrics, topic).values()) > sum(since.values()):
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"no progress on {topic} within {timeout}s:\n{worker.tail()}")


@pytest.mark.cluster3
@pytest.mark.slow
def test_broker_deaths_lose_and_double_nothing(kafka_cluster3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """G7: kill -9 the leader of the input partitions, then of the changelog; exact state.

    The worker creates its topics with the default replication factor, min(3, brokers) = 3.
    """
    cluster = kafka_cluster3
    d = Deployment(cluster.bootstrap_servers, tmp_path)
    pauses = []
    try:
        w = d.worker("w").start()
        w.wait_ready(120)
        traffic = Traffic(d.bootstrap, d.lines, d.events, seed=71, rate=200).start()
        time.sleep(2)
        for topic in (d.lines, f"{d.app_id}-wordcount-changelog"):
            victim = asyncio.run(leader_of(d.bootstrap, topic, 0))
            _, metrics = w.get("/metrics")
            cluster.kill_node(victim, signal.SIGKILL)
            time.sleep(1)
            _, metrics = w.get("/metrics")
            pauses.append(wait_progress(w, d.lines, processed(metrics, d.lines)) + 1)
            time.sleep(2)
            cluster.start_node(victim)
            time.sleep(3)
        truth = traffic.stop()
        d.caught_up()
        assert w.alive(), w.tail()
        assert w.kill(signal.SIGTERM) == 0, w.tail()
        print(f"failover pauses (s): {pauses}")
        d.check_tables(truth.words, truth.totals, w.data_dir)
    finally:
        d.stop_all()
        cluster.ensure_running()


def test_topic_pattern_picks_up_new_topics(kafka, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = Deployment(kafka.bootstrap_servers, tmp_path)
    prefix = unique("src")
    d.env["SLUICE_WORDCOUNT_INPUT_PATTERN"] = re.escape(prefix) + r"-.*"
    d.env["SLUICE_METADATA_MAX_AGE_MS"] = "1000"
    d.env["SLUICE_JOBS"] = "wordcount"
    try:
        first = f"{prefix}-a"
        subprocess_create(d.bootstrap, first)
        w = d.worker("w").start()
        w.wait_ready()
        asyncio.run(produce(d.bootstrap, first, [b"alpha beta"] * 5, 1))
        later = f"{prefix}-b"
        subprocess_create(d.bootstrap, later)  # created while the worker runs
        asyncio.run(produce(d.bootstrap, later, [b"beta gamma"] * 7, 1))
        deadline = time.monotonic() + 60
        expected = {"alpha": 5, "beta": 12, "gamma": 7}
        while time.monotonic() < deadline:
            if changelog_table(d.bootstrap, d.app_id, "wordcount") == expected:
                break
            time.sleep(0.5)
        assert changelog_table(d.bootstrap, d.app_id, "wordcount") == expected, w.tail()
        assert w.kill(signal.SIGTERM) == 0
    finally:
        d.stop_all()


def subprocess_create(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import NewTopic

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 2, 1)])
        finally:
            await admin.close()

    asyncio.run(create())


def test_rate_limit_per_partition(kafka, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rate = 40
    d = Deployment(kafka.bootstrap_servers, tmp_path)
    d.env["SLUICE_MAX_RATE_PER_PARTITION"] = str(rate)
    d.env["SLUICE_JOBS"] = "wordcount"
    try:
        w = d.worker("w").start()
        w.wait_ready()
        asyncio.run(produce(d.bootstrap, d.lines, [b"one two three"] * 4 * rate * 40, 4))
        time.sleep(3)  # past the first second's burst
        _, before = w.get("/metrics")
        t0 = time.monotonic()
        time.sleep(20)
        _, after = w.get("/metrics")
        elapsed = time.monotonic() - t0
        start, end = processed(before, d.lines), processed(after, d.lines)
        for partition in range(4):
            measured = (end[partition] - start.get(partition, 0)) / elapsed
            assert 0.5 * rate <= measured <= 1.1 * rate, (partition, measured)
        assert "sluice_rate_limit_pauses_total" in after
        assert w.kill(signal.SIGTERM) == 0
    finally:
        d.stop_all()
