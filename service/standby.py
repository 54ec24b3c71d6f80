"""Standby replicas: warm copies of table partitions another worker owns.

With ``SLUICE_STANDBY_REPLICAS=N`` the group's assignor
(:class:`service.engine.assignor.CopartitionedAssignor`) gives each table partition, besides its
owner, N other workers that keep a copy of it by tailing its changelog into their local RocksDB
(:class:`StandbyReplicator`). When the owner dies, the
partition moves to a worker that most likely holds a copy, and its restore reads only the
changelog's tail instead of the whole partition.

The trade-off: every standby costs a worker the disk and the changelog traffic of the copy
(N times the state in the whole group); in exchange a takeover is as fast as a restart on the
same disk. A standby copy is written only from committed changelog records, so it obeys the
same rule as the owner's: local RocksDB is always a prefix of the changelog.

All workers of a group must run with the same assignor: a worker with standbys and one
without cannot join the same group (Kafka refuses mixed assignment protocols).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from service.errors import StateError
from service.kafka.client_config import client_kwargs
from service.restore import check_stored_offset, stock_faust_row
from service.settings import Settings
from tables.store import PartitionStore
from tables.table import TableSpec

log = logging.getLogger(__name__)


class StandbyReplicator:
    """Tails the changelogs of this worker's standby table partitions into local RocksDB."""

    def __init__(self, settings: Settings, store_path: Any) -> None:
        self.settings = settings
        self._store_path = store_path  # (table name, partition) -> Path
        self._stores: dict[TopicPartition, tuple[TableSpec, PartitionStore]] = {}
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def partitions(self) -> int:
        return len(self._stores)

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            **client_kwargs(self.settings, client_id=f"{self.settings.app_id}-standby"),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._tail(), name="sluice-standby")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        async with self._lock:
            for _, store in self._stores.values():
                store.close()
            self._stores.clear()
        if self._consumer is not None:
            await self._consumer.stop()

    async def retarget(self, wanted: Mapping[TopicPartition, TableSpec]) -> None:
        """Replicate exactly ``wanted`` (changelog partition -> table); release the others
        first, so an owner can open a partition's RocksDB that was a standby a moment ago."""
        assert self._consumer is not None
        async with self._lock:
            for tp in list(self._stores):
                if tp not in wanted:
                    self._stores.pop(tp)[1].close()
            for tp, spec in wanted.items():
                if tp not in self._stores:
                    path: Path = self._store_path(spec.name, tp.partition)
                    self._stores[tp] = (spec, PartitionStore(path))
            if self._stores:
                ends = await self._consumer.end_offsets(list(self._stores))
                starts = await self._consumer.beginning_offsets(list(self._stores))
                for tp, (spec, store) in list(self._stores.items()):
                    try:
                        check_stored_offset(spec.name, tp, store.changelog_offset(), starts[tp], ends[tp])
                    except StateError as exc:
                        log.error("standby copy refused", extra={"error": str(exc)})
                        self._stores.pop(tp)[1].close()
            self._consumer.assign(list(self._stores))
            for tp, (_, store) in self._stores.items():
                self._consumer.seek(tp, store.changelog_offset() + 1)
        if wanted:
            log.info(
                "standby partitions", extra={"partitions": sorted(f"{t.topic}:{t.partition}" for t in wanted)}
            )

    async def _tail(self) -> None:
        assert self._consumer is not None
        while True:
            if not self._stores:
                await asyncio.sleep(0.5)
                continue
            async with self._lock:
                fetched = await self._consumer.getmany(timeout_ms=500, max_records=20_000)
                for tp, records in fetched.items():
                    entry = self._stores.get(tp)
                    if entry is None or not records:
                        continue
                    spec, store = entry
                    rows = [(r.key, stock_faust_row(spec, r.value)) for r in records]
                    store.write(rows, records[-1].offset, spec.schema)
