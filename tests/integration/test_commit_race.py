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
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from service.devbroker import LocalCluster
from tests.enginekit import engine_for, running, stop_engine, until
from tests.harness import produce_records

pytestmark = pytest.mark.integration


async def test_a_revocation_between_fetch_and_processing_commits_only_what_was_processed(
    kafka: LocalCluster, tmp_path: Path
) -> None:
    engine, workload = engine_for(kafka.bootstrap_servers, tmp_path, commit_interval_ms=100)
    topic = workload.topic
    tp = TopicPartition(topic, 0)
    run, consumer = await running(engine)
    try:
        await produce_records(kafka.bootstrap_servers, topic, [(0, None, b"x%d" % i) for i in range(100)])

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
        assert await stop_engine(engine, run) is None
    assert seen["position"] == 150 and seen["processed"] == 100
    assert seen["committed"] == 100, "the commit passed records the engine never processed"
