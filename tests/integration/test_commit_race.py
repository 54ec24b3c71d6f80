"""A commit made by a rebalance callback never passes records nobody processed (G1, G4).

aiokafka runs ``on_partitions_revoked`` in its coordinator task: it can run after a fetch has
returned (the consumer's position already past the fetched records) and before the engine's
loop takes the lock to process them. The revocation commits what is durable — and must not
mistake the position for "past transaction markers only". This forces that interleaving
against the real broker: the real engine and consumer, a workload that processes records
without effects, and the revocation called the moment a fetch returns (as the coordinator
task may), then reads the group's committed offset back from the broker.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from service.devbroker import LocalCluster
from service.engine.core import Engine
from service.metrics import Metrics
from service.settings import load_settings
from service.topics import TopicSpec
from tests.harness import produce_records

pytestmark = pytest.mark.integration


class NoEffects:
    """A workload (service.engine.workload.Workload) that reads one topic and writes nothing."""

    def __init__(self, topic: str, dead: str) -> None:
        self.topic = topic
        self.dead = dead
        self.processed = 0

    def subscriptions(self) -> tuple[list[str], list[str]]:
        return [self.topic], []

    def topic_specs(self) -> list[TopicSpec]:
        return [TopicSpec(self.topic, 1, False), TopicSpec(self.dead, 1, False)]

    def tables(self) -> list[Any]:
        return []

    async def process(
        self, batch: dict[TopicPartition, Any], sender_for: Any, dead_letters: Any
    ) -> dict[int, Any]:
        self.processed += sum(len(records) for records, _ in batch.values())
        return {}

    def on_partitions(self, tables: Any) -> None:
        pass

    def clocked_sources(self) -> list[TopicPartition]:
        return []

    def clocked_inputs(self) -> set[TopicPartition]:
        return set()

    def partitions_of(self, topic: str) -> int:
        return 1

    def internal(self, topic: str) -> bool:
        return False


async def until(condition: Any, seconds: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not reached after {seconds}s")
        await asyncio.sleep(0.1)


async def test_a_revocation_between_fetch_and_processing_commits_only_what_was_processed(
    kafka: LocalCluster, tmp_path: Path
) -> None:
    run_id = uuid.uuid4().hex[:8]
    topic = f"race-in-{run_id}"
    settings = load_settings(
        brokers=kafka.bootstrap_servers,
        app_id=f"race-{run_id}",
        data_dir=tmp_path,
        dead_letter_topic=f"race-dead-{run_id}",
        commit_interval_ms=100,
    )
    workload = NoEffects(topic, settings.dead_letter_topic)
    engine = Engine(settings, workload, Metrics(process=False))  # type: ignore[arg-type]
    tp = TopicPartition(topic, 0)
    await engine.start()
    run = asyncio.create_task(engine.run())
    try:
        await produce_records(kafka.bootstrap_servers, topic, [(0, None, b"x%d" % i) for i in range(100)])
        consumer = engine.rt.consumer
        assert consumer is not None

        async def committed_100() -> bool:
            return await consumer.committed(tp) == 100

        await until(committed_100, 60, "the first 100 records committed")

        seen: dict[str, int] = {}
        fetch = engine._fetch

        async def fetch_then_revoke() -> dict[TopicPartition, list[Any]]:
            fetched = await fetch()
            if fetched.get(tp) and not seen:
                seen["position"] = await consumer.position(tp)
                seen["processed"] = workload.processed
                await engine.on_revoked(sorted(consumer.assignment()))
                seen["committed"] = await consumer.committed(tp)
            return fetched

        engine._fetch = fetch_then_revoke  # type: ignore[method-assign]
        await asyncio.sleep(1.5)  # the fetch in flight (500 ms at most) ends; the next is this one
        await produce_records(kafka.bootstrap_servers, topic, [(0, None, b"y%d" % i) for i in range(50)])

        async def revoked() -> bool:
            return "committed" in seen

        await until(revoked, 30, "a fetch of the next 50 records")
    finally:
        engine.request_stop()
        await asyncio.wait_for(run, 30)
        await engine.close()
    assert seen["position"] == 150 and seen["processed"] == 100
    assert seen["committed"] == 100, "the commit passed records the engine never processed"
