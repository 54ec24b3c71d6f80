"""The engine's periodic chores: lag gauges, source log ends for watermarks, purging packed
internal records every reader is past, and the stall detector's ticker.

Each runs as its own task and never holds the processing lock: a chore that fails logs and
tries again at its next turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.errors import KafkaError

from service.engine.runtime import Runtime
from service.kafka.client_config import client_kwargs

log = logging.getLogger(__name__)

LAG_SECONDS = 2.5
ENDS_SECONDS = 1.0
PURGE_SECONDS = 30.0
TICK_SECONDS = 0.1


async def tick(rt: Runtime, stall_after: float) -> None:
    """Record that the event loop runs. A gap between ticks longer than ``stall_after`` means
    the process was stalled (SIGSTOP, a GC or I/O pause) long enough for the group to have
    expelled it: the core then drops its in-flight batch instead of sending it."""
    while True:
        now = time.monotonic()
        if now - rt.last_tick > stall_after:
            rt.stall_seen = now
        rt.last_tick = now
        await asyncio.sleep(TICK_SECONDS)


async def report_lag(rt: Runtime, table_sizes: Callable[[], dict[str, int]]) -> None:
    """Refresh lag every few seconds from the brokers, also for partitions where nothing flows."""
    consumer = rt.consumer
    assert consumer is not None
    base: dict[TopicPartition, int] = {}
    while True:
        await asyncio.sleep(LAG_SECONDS)
        assigned = list(consumer.assignment())
        if not assigned:
            continue
        try:
            ends = await consumer.end_offsets(assigned)
            for tp in assigned:
                if tp not in rt.progress.durable and tp not in base:
                    base[tp] = await consumer.committed(tp) or 0
        except KafkaError as exc:
            log.warning("lag refresh failed", extra={"error": str(exc)})
            continue
        for tp, end in ends.items():
            labels = (tp.topic, str(tp.partition))
            rt.metrics.log_end_offset.labels(*labels).set(end)
            progress = rt.progress
            position = progress.undurable.get(tp) or progress.durable.get(tp, base.get(tp, 0))
            rt.metrics.consumer_lag.labels(*labels).set(max(0, end - position))
        for name, size in table_sizes().items():
            rt.metrics.table_keys.labels(name).set(size)


async def refresh_ends(rt: Runtime) -> None:
    """The log end of every source the watermarks wait for (:mod:`tables.watermark`);
    read_committed, so it is the last stable offset."""
    consumer = rt.consumer
    assert consumer is not None
    tps = rt.workload.clocked_sources()
    if not tps:
        return
    ends = await consumer.end_offsets(tps)
    rt.source_ends = {rt.incarnations.key(tp.topic, tp.partition): end for tp, end in ends.items()}


async def follow_ends(rt: Runtime) -> None:
    while True:
        await asyncio.sleep(ENDS_SECONDS)
        try:
            await refresh_ends(rt)
        except KafkaError as exc:
            log.warning("source end refresh failed", extra={"error": str(exc)})


async def purge_internal(rt: Runtime, internal: Callable[[str], bool]) -> None:
    """Packed internal topics keep records until every reader is past them
    (``retention.ms=-1``, as Kafka Streams does), so no agent can lose unread records; this
    deletes what lies below the group's committed offset of each such partition owned here."""
    while True:
        await asyncio.sleep(PURGE_SECONDS)
        consumer = rt.consumer
        if consumer is None:
            continue
        wanted = {
            tp: offset
            for tp, offset in rt.progress.committed.items()
            if internal(tp.topic) and tp in consumer.assignment() and offset > 0
        }
        if not wanted:
            continue
        admin = AIOKafkaAdminClient(**client_kwargs(rt.settings, client_id=f"{rt.settings.app_id}-purge"))
        try:
            await admin.start()
            await admin.delete_records({tp: RecordsToDelete(offset) for tp, offset in wanted.items()})
        except KafkaError as exc:
            log.warning("internal topic purge failed", extra={"error": str(exc)})
        finally:
            await admin.close()
