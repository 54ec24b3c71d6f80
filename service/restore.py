"""Bring table partitions up to date with their changelog before they process anything.

A partition's local RocksDB records the changelog offset it reflects; restore reads the
changelog from the next offset to the end and writes it locally in one RocksDB batch per
fetch. An empty data directory (a new worker, a lost disk) starts at the beginning. Because
local writes only ever follow acknowledged changelog records, the result is the same either
way: the changelog is the state, the local copy a cache of a prefix of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.errors import StateError
from service.kafka.client_config import client_kwargs
from service.metrics import Metrics
from service.settings import Settings
from tables.codec import Row, encode_row, is_sluice_row
from tables.table import TablePartition, TableSpec

log = logging.getLogger(__name__)


async def restore(settings: Settings, metrics: Metrics, partitions: Sequence[TablePartition]) -> int:
    """Catch every table partition up with its changelog; return the records applied."""
    if not partitions:
        return 0
    by_tp = {TopicPartition(p.spec.changelog_topic(settings.app_id), p.partition): p for p in partitions}
    for part in partitions:
        stored = part.store.schema()
        if stored is not None and stored != part.spec.schema:
            raise _schema_error(part.spec, stored)
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings, client_id=f"{settings.app_id}-restore"),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    started = time.monotonic()
    applied = 0
    try:
        consumer.assign(list(by_tp))
        ends = await consumer.end_offsets(list(by_tp))
        starts = await consumer.beginning_offsets(list(by_tp))
        todo: dict[TopicPartition, TablePartition] = {}
        for tp, part in by_tp.items():
            offset = part.store.changelog_offset()
            check_stored_offset(part.spec.name, tp, offset, starts[tp], ends[tp])
            start = offset + 1
            if ends[tp] > start:
                consumer.seek(tp, start)
                todo[tp] = part
        while todo:
            fetched = await consumer.getmany(*todo, timeout_ms=500, max_records=20_000)
            for tp, records in fetched.items():
                part = todo[tp]
                prefix = b'{"s":' + orjson.dumps(part.spec.schema)
                changes = []
                for record in records:
                    value = record.value
                    if value is not None and not value.startswith(prefix):
                        value = _foreign(part.spec, value)
                    changes.append((record.key, value))
                part.store.write(changes, records[-1].offset, part.spec.schema)
                applied += len(changes)
                metrics.restored_records.labels(part.spec.name).inc(len(changes))
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    del todo[tp]
    finally:
        await consumer.stop()
    if applied:
        elapsed = time.monotonic() - started
        log.info(
            "restored tables",
            extra={
                "records": applied,
                "seconds": round(elapsed, 3),
                "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in by_tp),
            },
        )
    return applied


def check_stored_offset(table: str, tp: TopicPartition, stored: int, log_start: int, log_end: int) -> None:
    """Refuse a local copy the changelog cannot continue: one past its end (the changelog was
    deleted or re-created, or belongs to another cluster) or before its start (records it lacks
    were deleted). Guessing would silently mix two histories."""
    if stored < 0:
        return
    where = (
        f"table {table} partition {tp.partition}: the local copy reflects {tp.topic} up to offset {stored}"
    )
    if stored + 1 > log_end:
        raise StateError(
            f"{where}, but the changelog ends at {log_end} (deleted or re-created?): move the "
            "partition's directory out of SLUICE_DATA_DIR to rebuild it from the changelog"
        )
    if stored + 1 < log_start:
        raise StateError(
            f"{where}, but the changelog now starts at {log_start}: records in between were "
            "deleted; move the partition's directory out of SLUICE_DATA_DIR to rebuild it"
        )


def stock_faust_row(spec: TableSpec, value: bytes | None) -> bytes | None:
    """A changelog value as this release stores it: a bare value stock Faust wrote becomes a row
    without positions (the table's starting state) when the table accepts those; anything else
    is kept as it is (restore refuses another schema)."""
    if value is None or is_sluice_row(value) or spec.foreign is None:
        return value
    return encode_row(Row(spec.foreign(value), {}), spec.schema)


def _foreign(spec: TableSpec, value: bytes) -> bytes:
    """A changelog value of another schema: refused, unless stock Faust wrote it."""
    converted = stock_faust_row(spec, value)
    if converted is value or converted is None:
        found = orjson.loads(value).get("s", "?") if is_sluice_row(value) else "(not a sluice row)"
        raise _schema_error(spec, found)
    return converted


def _schema_error(spec: TableSpec, found: str) -> StateError:
    return StateError(
        f"table {spec.name} holds rows of schema {found!r}, this release expects "
        f"{spec.schema!r}: migrate the table or run under a new SLUICE_APP_ID"
    )
