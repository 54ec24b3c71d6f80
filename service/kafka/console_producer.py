"""``sluice produce``'s engine: lines in, records out, placed and acknowledged exactly.

Each record's partition is chosen here (:class:`~service.kafka.placement.Placement`) and
passed explicitly to the producer. Delivery is tracked per record through the send futures:
the command only reports success once every record is acknowledged (per ``--acks``), and
stops at the first failure with the line number that caused it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.errors import OperationError
from service.kafka.chunk_reader import ChunkReader, ChunkSource
from service.kafka.client_config import client_kwargs
from service.kafka.connect import CLI_CLIENT_ID, admin_client
from service.kafka.lines import LineSplitter, split_key
from service.kafka.placement import Partitioner, Placement
from service.kafka.topic_admin import describe_topic
from service.settings import Settings

ACKS = {"all": "all", "1": 1, "0": 0}
PROGRESS_EVERY_S = 0.2


@dataclass(frozen=True)
class ProduceOptions:
    topic: str
    partitioner: Partitioner = Partitioner.HASH
    partition: int | None = None
    key_separator: bytes | None = None
    acks: str = "all"


@dataclass
class ProduceStats:
    """What has happened so far; also what the progress callback is shown."""

    sent: int = 0
    acknowledged: int = 0
    bytes_read: int = 0
    started: float = 0.0

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)


class _Deliveries:
    """Counts acknowledgements and keeps the first failure, from the send futures' callbacks."""

    def __init__(self, stats: ProduceStats) -> None:
        self._stats = stats
        self._settled = 0
        self._all_settled = asyncio.Event()
        self.failure: str | None = None

    def watch(self, future: asyncio.Future[Any], line_no: int) -> None:
        def done(fut: asyncio.Future[Any]) -> None:
            exc = Exception("cancelled") if fut.cancelled() else fut.exception()
            if exc is None:
                self._stats.acknowledged += 1
            elif self.failure is None:
                self.failure = f"line {line_no} was not delivered: {_one_line(exc)}"
            self._settled += 1
            if self._settled == self._stats.sent:
                self._all_settled.set()

        self._all_settled.clear()
        future.add_done_callback(done)

    async def settle(self) -> None:
        """Wait until every watched future has run its callback, then raise any failure.

        ``producer.flush()`` returning means the futures are *resolved*; their callbacks run
        a loop iteration later, so the counts are only final after this.
        """
        if self._settled < self._stats.sent:
            await self._all_settled.wait()
        self.check()

    def check(self) -> None:
        if self.failure is not None:
            raise OperationError(self.failure)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


async def produce_lines(
    settings: Settings,
    source: ChunkSource,
    options: ProduceOptions,
    on_progress: Callable[[ProduceStats], None] | None = None,
) -> ProduceStats:
    """Send every line of ``source`` to ``options.topic``; return the final counts.

    Raises :class:`OperationError` for an unknown topic, a partition out of range, a line
    without the key separator, or a record the brokers did not acknowledge.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    async with admin_client(settings) as admin:
        info = await describe_topic(admin, options.topic)
    if not info.partitions:
        raise OperationError(f"topic {options.topic!r} has no partitions yet")
    if options.partition is not None and options.partition >= len(info.partitions):
        raise OperationError(
            f"partition {options.partition} does not exist: topic {options.topic!r} has "
            f"{len(info.partitions)} partitions (0..{len(info.partitions) - 1})"
        )
    placement = Placement(len(info.partitions), options.partitioner, options.partition)

    stats = ProduceStats(started=time.monotonic())
    deliveries = _Deliveries(stats)
    producer = AIOKafkaProducer(**client_kwargs(settings, client_id=CLI_CLIENT_ID), acks=ACKS[options.acks])
    await producer.start()
    try:
        reader = ChunkReader(source)
        splitter = LineSplitter()
        line_no = 0
        last_progress = 0.0
        while True:
            chunk = await reader.read()
            stats.bytes_read += len(chunk)
            lines = splitter.feed(chunk) if chunk else splitter.finish()
            for line in lines:
                line_no += 1
                key: bytes | None = None
                value = line
                if options.key_separator is not None:
                    try:
                        key, value = split_key(line, options.key_separator)
                    except ValueError:
                        await producer.flush()
                        await deliveries.settle()
                        raise OperationError(
                            f"line {line_no} has no key separator "
                            f"{options.key_separator.decode('utf-8', 'replace')!r}; "
                            f"{stats.acknowledged} earlier records were sent"
                        ) from None
                try:
                    future = await producer.send(
                        options.topic, value, key=key, partition=placement.partition(key)
                    )
                except KafkaError as exc:
                    raise OperationError(f"line {line_no} was not sent: {_one_line(exc)}") from None
                stats.sent += 1
                deliveries.watch(future, line_no)
            deliveries.check()
            now = time.monotonic()
            if on_progress is not None and now - last_progress >= PROGRESS_EVERY_S:
                last_progress = now
                on_progress(stats)
            if not chunk:
                break
        await producer.flush()
        await deliveries.settle()
    finally:
        await producer.stop()
    return stats
