"""Read a table as its changelog says it is: what a fresh worker with an empty disk recovers.

Operators and tests use this (``sluice tables dump``) to check state without trusting any
worker's local disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.errors import OperationError
from service.kafka.client_config import client_kwargs
from service.settings import Settings
from tables.codec import decode_row, is_sluice_row
from tables.positions import Positions
from tables.table import META_PREFIX


@dataclass(frozen=True)
class TableEntry:
    key: str
    value: Any
    positions: Positions
    partition: int
    offset: int


def bare(value: bytes) -> Any:
    """A value stock Faust wrote: JSON (its default serializer) when it parses, else text."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value.decode("utf-8", "replace")


async def read_table(
    settings: Settings,
    table: str,
    *,
    include_meta: bool = False,
    wanted: set[int] | None = None,
) -> list[TableEntry]:
    """Fold the table's changelog from the beginning to its current end; latest record wins.

    ``wanted`` limits the read to those changelog partitions.
    """
    topic = f"{settings.app_id}-{table}-changelog"
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings, client_id=f"{settings.app_id}-dump"),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    try:
        await consumer.start()
        available = consumer.partitions_for_topic(topic)
        if not available:
            await consumer._client.force_metadata_update()
            available = consumer.partitions_for_topic(topic)
        if not available:
            raise OperationError(f"no changelog topic {topic} (unknown table or SLUICE_APP_ID?)")
        chosen = sorted(available if wanted is None else set(available) & wanted)
        tps = [TopicPartition(topic, p) for p in chosen]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        latest: dict[str, TableEntry | None] = {}
        todo = {tp for tp in tps if ends[tp] > 0}
        while todo:
            fetched = await consumer.getmany(*todo, timeout_ms=1000, max_records=50_000)
            for tp, records in fetched.items():
                for record in records:
                    key = record.key.decode()
                    if record.value is None:
                        latest[key] = None
                        continue
                    if is_sluice_row(record.value):
                        row = decode_row(record.value)[1]
                        latest[key] = TableEntry(key, row.value, row.positions, tp.partition, record.offset)
                    else:  # stock Faust wrote it (a table moved to sluice): its bare value
                        latest[key] = TableEntry(key, bare(record.value), {}, tp.partition, record.offset)
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
    finally:
        await consumer.stop()
    return [
        entry
        for key, entry in sorted(latest.items())
        if entry is not None and (include_meta or not key.startswith(META_PREFIX))
    ]
