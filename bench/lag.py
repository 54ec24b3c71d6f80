"""Group lag over several topics, polled cheaply and in an order that makes "0" trustworthy.

Why not ``tests.harness.group_lag``: it opens two new clients per poll (hundreds of ms), which
would add that much noise to every timed run. :class:`LagProbe` keeps one admin client and one
consumer open for the run.

Why the order (committed offsets first, then log-end offsets): sluice commits an input offset
only after that batch's repartition records are acknowledged, so when the input's committed
offsets equal its log end, every repartition record exists. Reading the log ends *after* the
committed offsets means a snapshot with lag 0 on input and repartition topics cannot hide
repartition records still in flight; no second confirmation poll (and its 0.5 s) is needed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError


class LagProbe:
    """Total lag of consumer group ``group`` over ``topics``; a missing commit counts as 0."""

    def __init__(self, bootstrap: str, group: str, topics: Sequence[str]) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.topics = list(topics)
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._tps: list[TopicPartition] = []

    async def __aenter__(self) -> LagProbe:
        await self._admin.start()
        await self._consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def _partitions(self) -> list[TopicPartition]:
        if not self._tps:
            tps: list[TopicPartition] = []
            for topic in self.topics:
                parts = self._consumer.partitions_for_topic(topic)
                if not parts:
                    await self._consumer._client.force_metadata_update()
                    parts = self._consumer.partitions_for_topic(topic)
                if not parts:
                    return []  # not created yet (the worker creates its internal topics)
                tps.extend(TopicPartition(topic, p) for p in sorted(parts))
            self._tps = tps
        return self._tps

    async def lag(self) -> int | None:
        """Total lag now, or None while a topic or the group's coordinator is not there yet."""
        tps = await self._partitions()
        if not tps:
            return None
        try:
            committed = await self._admin.list_consumer_group_offsets(self.group)
            ends = await self._consumer.end_offsets(tps)
        except KafkaError:  # e.g. the group's coordinator is still being chosen: ask again
            return None
        total = 0
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            total += max(0, ends[tp] - done)
        return total

    async def wait_zero(self, limit_s: float, interval: float = 0.05) -> float:
        """Poll until lag is 0; return the wall-clock time (``time.time()``) it was seen."""
        deadline = time.monotonic() + limit_s
        last: int | None = None
        while time.monotonic() < deadline:
            last = await self.lag()
            if last == 0:
                return time.time()
            await asyncio.sleep(interval)
        raise TimeoutError(f"group {self.group} still lags by {last} after {limit_s:.0f} s")
