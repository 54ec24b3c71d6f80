"""Where a partition resumes after an assignment (G4), and the reader that tells real gaps
from transaction markers.

The rule compares two positions of one source partition: the group's committed offset and the
offset the tables hold (the next offset whose effects are durable in a changelog). The tables
win over a missing or older group offset; a group offset ahead of the tables follows
``SLUICE_ON_OFFSET_AHEAD``. ``sluice offsets audit`` shows operators the same verdicts.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from service.errors import OperationError
from service.kafka.client_config import client_kwargs
from service.settings import OnOffsetAhead, Settings


def resume_position(group: int | None, table: int | None, on_ahead: OnOffsetAhead) -> tuple[int | None, str]:
    """Where a partition resumes, and why (G4). ``None``: the consumer's own reset policy."""
    if table is None:
        return group, "no-table-offset" if group is not None else "new"
    if group is None:
        return table, "group-missing"
    if group < table:
        return table, "group-behind-table"
    if group == table:
        return group, "ok"
    return (table if on_ahead is OnOffsetAhead.TABLE else group), "group-ahead-of-table"


async def records_between(settings: Settings, tp: TopicPartition, start: int, end: int) -> int:
    """How many committed data records ``tp`` holds in ``[start, end)``: zero when only
    transaction markers (or aborted records) separate a group offset from a table offset."""
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings, client_id=f"{settings.app_id}-check"),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    count = 0
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        deadline = time.monotonic() + 60
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise OperationError(f"cannot read {tp.topic}:{tp.partition} [{start}, {end})")
            fetched = await consumer.getmany(tp, timeout_ms=1000)
            records = fetched.get(tp, [])
            count += sum(1 for r in records if r.offset < end)
            if not records and await consumer.position(tp) < end:
                log_end = (await consumer.end_offsets([tp]))[tp]
                if log_end <= await consumer.position(tp):
                    count += end - log_end  # a group offset past the log's end is no safe position
                    break
    finally:
        await consumer.stop()
    return count


async def wait_stable(settings: Settings, tps: list[TopicPartition], within: float) -> bool:
    """Wait until no open transaction holds back the committed end of ``tps`` (last stable
    offset = high watermark), at most ``within`` seconds; whether it got there.

    The offsets changelog is written by the fenced producers of every partition number: a
    worker killed in the middle of its phase B leaves a transaction open (until its
    transaction timeout, or until the next owner of its number fences it), and a
    read_committed reader then sees none of the rows committed after it, on that partition."""
    if not tps:
        return True
    ends: dict[str, AIOKafkaConsumer] = {
        level: AIOKafkaConsumer(
            **client_kwargs(settings, client_id=f"{settings.app_id}-stable"),
            group_id=None,
            enable_auto_commit=False,
            isolation_level=level,
        )
        for level in ("read_committed", "read_uncommitted")
    }
    deadline = time.monotonic() + within
    try:
        for consumer in ends.values():
            await consumer.start()
        while True:
            stable = await ends["read_committed"].end_offsets(tps)
            high = await ends["read_uncommitted"].end_offsets(tps)
            if all(stable[tp] >= high[tp] for tp in tps):
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.5)
    finally:
        for consumer in ends.values():
            await consumer.stop()
