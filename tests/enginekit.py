"""The real engine with a workload that has no effects, for tests that force an interleaving of
fetches, rebalance callbacks and commits against the real broker (tests/integration)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from service.engine.core import Engine
from service.metrics import Metrics
from service.settings import load_settings
from service.topics import TopicSpec


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


def engine_for(
    bootstrap: str, data_dir: Path, app: str | None = None, **settings: Any
) -> tuple[Engine, NoEffects]:
    """An engine reading ``<app>-in`` (one partition) with :class:`NoEffects`."""
    app = app or f"kit-{uuid.uuid4().hex[:8]}"
    loaded = load_settings(
        brokers=bootstrap, app_id=app, data_dir=data_dir, dead_letter_topic=f"{app}-dead", **settings
    )
    workload = NoEffects(f"{app}-in", loaded.dead_letter_topic)
    return Engine(loaded, workload, Metrics(process=False)), workload  # type: ignore[arg-type]


async def running(engine: Engine) -> tuple[asyncio.Task[None], Any]:
    """Start ``engine`` and its ``run()`` loop; return the task and the engine's consumer."""
    await engine.start()
    run = asyncio.create_task(engine.run())
    consumer = engine.rt.consumer
    assert consumer is not None
    return run, consumer


async def stop_engine(engine: Engine, run: asyncio.Task[None]) -> BaseException | None:
    """Stop ``engine`` (its ``run()`` task) and close it; what ``run()`` raised, if anything."""
    engine.request_stop()
    error: BaseException | None = None
    try:
        await asyncio.wait_for(run, 30)
    except BaseException as exc:  # the test reports it
        error = exc
    await engine.close()
    return error


async def equals(value: Any, expected: Any) -> bool:
    return bool((await value) == expected)
