"""``sluice consume``'s engine: read records, hand each to a printer, commit what was printed.

Without a group the consumer assigns itself the partitions (all, or ``--partition``) and
never commits: looking at a topic must not move anybody's offsets. With a group it
subscribes, takes part in rebalances, and commits exactly the records already printed,
after printing them (at-least-once towards stdout; a crash between print and commit shows a
record again rather than skipping it). A rebalance that takes partitions away first commits
what was printed from them, so two consumers of one group never both print a record.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.errors import OperationError
from service.kafka.client_config import client_kwargs
from service.kafka.connect import CLI_CLIENT_ID, admin_client
from service.kafka.topic_admin import describe_topic
from service.settings import Settings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, ConsumerRecord
    from aiokafka.structs import TopicPartition

POLL_MS = 500


@dataclass(frozen=True)
class ConsumeOptions:
    topic: str
    group: str | None = None
    from_beginning: bool = False
    max_messages: int | None = None
    timeout_ms: int | None = None
    partition: int | None = None


class StopConsuming(Exception):
    """Raised by a printer whose output is gone (closed pipe): stop quietly, commit nothing more."""


Printer = Callable[["list[ConsumerRecord[bytes, bytes]]"], None]


async def consume_records(settings: Settings, options: ConsumeOptions, printer: Printer) -> int:
    """Consume until ``max_messages``, ``timeout_ms`` of silence, or cancellation; return the count.

    ``printer`` is called with each batch (in offset order per partition) and must have
    written it out (flushed) when it returns: the offsets are committed right after.
    Cancellation (Ctrl-C, SIGTERM) is the normal way to stop an unbounded consume: it ends
    the loop, the consumer leaves its group, and the count is returned.
    """
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    async with admin_client(settings) as admin:
        info = await describe_topic(admin, options.topic)
    count = len(info.partitions)
    if options.partition is not None and options.partition >= count:
        raise OperationError(
            f"partition {options.partition} does not exist: topic {options.topic!r} has "
            f"{count} partitions (0..{count - 1})"
        )

    consumer = AIOKafkaConsumer(
        **client_kwargs(settings, client_id=CLI_CLIENT_ID),
        group_id=options.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if options.from_beginning else "latest",
    )
    committer = _Committer(consumer) if options.group else None
    await consumer.start()
    try:
        if committer is not None:
            consumer.subscribe([options.topic], listener=committer.listener())
        else:
            wanted = [options.partition] if options.partition is not None else range(count)
            tps = [TopicPartition(options.topic, p) for p in wanted]
            consumer.assign(tps)
            if options.from_beginning:
                await consumer.seek_to_beginning(*tps)
            else:
                await consumer.seek_to_end(*tps)
        return await _loop(consumer, options, printer, committer)
    finally:
        await consumer.stop()


async def _loop(
    consumer: AIOKafkaConsumer,
    options: ConsumeOptions,
    printer: Printer,
    committer: _Committer | None,
) -> int:
    printed = 0
    silence_s = options.timeout_ms / 1000 if options.timeout_ms is not None else None
    last_record = time.monotonic()
    try:
        while options.max_messages is None or printed < options.max_messages:
            wait_ms = POLL_MS
            if silence_s is not None:
                left = last_record + silence_s - time.monotonic()
                if left <= 0:
                    break
                wait_ms = max(1, min(POLL_MS, int(left * 1000)))
            limit = None if options.max_messages is None else options.max_messages - printed
            batches = await consumer.getmany(timeout_ms=wait_ms, max_records=limit)
            records = [r for tp in sorted(batches, key=_tp_order) for r in batches[tp]]
            if not records:
                continue
            last_record = time.monotonic()
            try:
                printer(records)
            except StopConsuming:
                break
            printed += len(records)
            if committer is not None:
                await committer.commit_printed(records)
    except asyncio.CancelledError:
        # Interrupted: what was printed is already committed; leave the group cleanly.
        pass
    return printed


def _tp_order(tp: TopicPartition) -> tuple[str, int]:
    return (tp.topic, tp.partition)


class _Committer:
    """Commits printed offsets, also from the rebalance listener when partitions are revoked."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self._pending: dict[TopicPartition, int] = {}

    async def commit_printed(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        from aiokafka.structs import TopicPartition

        for record in records:
            self._pending[TopicPartition(record.topic, record.partition)] = record.offset + 1
        await self._flush(None)

    async def _flush(self, only: set[TopicPartition] | None) -> None:
        from aiokafka.errors import CommitFailedError, KafkaError

        offsets = {tp: off for tp, off in self._pending.items() if only is None or tp in only}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError as exc:
            # The group moved on (we were too slow, or were kicked out): the next owner
            # will see these records again. Say so, but keep consuming.
            print(f"sluice: warning: commit failed, records may repeat: {exc}", file=sys.stderr)
        except KafkaError as exc:
            if not exc.retriable:
                raise
            print(f"sluice: warning: commit failed, records may repeat: {exc}", file=sys.stderr)
        for tp in offsets:
            if self._pending.get(tp) == offsets[tp]:
                del self._pending[tp]

    def listener(self) -> Any:
        """A ConsumerRebalanceListener that commits before partitions change hands."""
        from aiokafka.abc import ConsumerRebalanceListener

        committer = self

        class CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
                await committer._flush(set(revoked))

            async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
                return None

        return CommitOnRevoke()
