"""Fenced transactional producers under the interleavings that broke them (G4, G8), against the
real broker: the real engine and consumer with a workload that has no effects
(:mod:`tests.enginekit`), each interleaving forced at the one call where it happens.

* exactly_once: a batch dropped after a stall had begun its transactions; the next batch could
  not begin them again and the worker died.
* Another partition number's transaction left open on the offsets changelog (a worker killed in
  its phase B) hides the rows committed after it from a read_committed reader: the next owner
  read an old table offset, saw the group ahead of it, and exited 2.
* A fence while this worker is still the partition's owner (the coordinator aborted a
  transaction that outlived its timeout): the partition stopped for good, with no rebalance.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from service.devbroker import LocalCluster
from service.engine.fencing import transaction_timeout_ms, transactional_id
from service.kafka.client_config import client_kwargs
from tables.offsets import OFFSETS
from tests.enginekit import engine_for, equals, running, stop_engine, until
from tests.harness import produce_records

pytestmark = pytest.mark.integration


async def produce(kafka: LocalCluster, topic: str, tag: bytes, n: int) -> None:
    await produce_records(kafka.bootstrap_servers, topic, [(0, None, tag + b"%d" % i) for i in range(n)])


async def test_exactly_once_batch_dropped_after_a_stall_leaves_no_transaction_open(
    kafka: LocalCluster, tmp_path: Path
) -> None:
    engine, workload = engine_for(
        kafka.bootstrap_servers, tmp_path, commit_interval_ms=100, processing_guarantee="exactly_once"
    )
    tp = TopicPartition(workload.topic, 0)
    run, consumer = await running(engine)
    try:
        await produce(kafka, workload.topic, b"a", 10)
        await until(lambda: equals(consumer.committed(tp), 10), 60, "10 committed")
        stalled, fired = engine.batches.stalled, []

        def stalled_once(since: float) -> bool:  # a pause under the session timeout, once
            if not fired:
                fired.append(1)
                return True
            return stalled(since)

        engine.batches.stalled = stalled_once
        await produce(kafka, workload.topic, b"b", 10)

        async def done() -> bool:
            return run.done() or await consumer.committed(tp) == 20

        await until(done, 30, "20 committed")
    finally:
        error = await stop_engine(engine, run)
    assert fired and error is None, f"the worker died after a dropped batch: {error!r}"


@pytest.mark.parametrize("left_open", [False, True])
async def test_a_transaction_left_open_on_the_offsets_changelog_does_not_stop_the_next_owner(
    kafka: LocalCluster, tmp_path: Path, left_open: bool
) -> None:
    first, workload = engine_for(kafka.bootstrap_servers, tmp_path / "a", commit_interval_ms=100)
    app = first.settings.app_id
    tp = TopicPartition(workload.topic, 0)
    run, consumer = await running(first)
    other: AIOKafkaProducer | None = None
    try:
        await produce(kafka, workload.topic, b"a", 100)
        await until(lambda: equals(consumer.committed(tp), 100), 60, "100 committed")
        shared = first.durability.offsets_partition(first.rt.incarnations.key(tp.topic, 0).encode())
        if left_open:  # the worker owning partition number 3 was killed in its phase B
            other = AIOKafkaProducer(
                **client_kwargs(first.settings, client_id="other-worker"),
                acks="all",
                enable_idempotence=True,
                transactional_id=transactional_id(app, 3),
                transaction_timeout_ms=transaction_timeout_ms(first.settings),
            )
            await other.start()
            await other.begin_transaction()
            sent = await other.send(OFFSETS.changelog_topic(app), b"5", key=b"elsewhere:3", partition=shared)
            await sent
        await produce(kafka, workload.topic, b"b", 50)
        await until(lambda: equals(consumer.committed(tp), 150), 60, "150 committed")
        assert await stop_engine(first, run) is None
        second, _ = engine_for(kafka.bootstrap_servers, tmp_path / "b", app=app, commit_interval_ms=100)
        run, _ = await running(second)

        async def assigned() -> bool:
            return second.fatal is not None or second.state == "running"

        await until(assigned, 60, "the next owner assigned")
        fatal = second.fatal
        assert await stop_engine(second, run) is None or fatal is not None
    finally:
        if other is not None:
            await other.stop()
    assert fatal is None, f"the next owner refused: {fatal}"


async def test_a_fence_while_still_the_owner_rejoins_and_goes_on(kafka: LocalCluster, tmp_path: Path) -> None:
    engine, workload = engine_for(kafka.bootstrap_servers, tmp_path, commit_interval_ms=100)
    app = engine.settings.app_id
    tp = TopicPartition(workload.topic, 0)
    run, consumer = await running(engine)
    try:
        await produce(kafka, workload.topic, b"a", 10)
        await until(lambda: equals(consumer.committed(tp), 10), 60, "10 committed")
        # What the coordinator does to a transaction past its timeout: bump the epoch of the
        # partition's transactional id. This worker is still the member owning partition 0.
        bump = AIOKafkaProducer(
            **client_kwargs(engine.settings, client_id="epoch-bump"),
            acks="all",
            enable_idempotence=True,
            transactional_id=transactional_id(app, 0),
        )
        await bump.start()
        await bump.stop()
        await produce(kafka, workload.topic, b"b", 10)
        await until(lambda: equals(consumer.committed(tp), 20), 60, "20 committed after the fence")
    finally:
        assert await stop_engine(engine, run) is None
