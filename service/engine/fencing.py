"""One transactional producer per owned partition: how a worker that lost a partition is
stopped from writing it again (G8).

A worker paused past its session timeout (SIGSTOP, a long GC or I/O stall, a network split)
is expelled from the group while it still believes it owns its partitions. When it resumes it
would flush its pending rows to the changelogs before learning that it was expelled, and in a
compacted changelog the last record per key wins: the stale row would replace the new owner's
for good. Checking membership before writing narrows that window but cannot close it.

What closes it is Kafka's producer fencing. The assignment is co-partitioned (partition *q* of
every topic, and of every table, goes to one worker: :mod:`service.engine.assignor`), and every
write that belongs to partition number *q* — its table rows and input positions (phase B), and
in ``exactly_once`` everything its batches produce — goes through a transactional producer whose
``transactional.id`` is ``<app>-p<q>``. A new owner starts that producer before it restores
anything: ``InitProducerId`` aborts whatever transaction the old owner left
open and bumps the producer epoch, so every later send, commit or offset commit of the old
owner fails with ``ProducerFenced`` — at the broker, whatever the old owner believes. Its
changes never become visible to ``read_committed`` readers (restore, standbys, stage 2, the
dump) and are dropped by the log cleaner. Whatever the old owner committed before the fence is
a legitimate write of a real owner, and the new owner's restore, which starts after the fence,
reads it.

Producers are created afresh at every assignment (a partition kept across a rebalance may have
had another owner in between: after an expulsion the old producer is already fenced).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
    UnknownProducerId,
)

from service.kafka.client_config import client_kwargs
from service.settings import Settings

log = logging.getLogger(__name__)

FENCED_ERRORS: tuple[type[KafkaError], ...] = (
    ProducerFenced,
    InvalidProducerEpoch,
    UnknownProducerId,
    TransactionalIdAuthorizationFailed,
)
"""Errors meaning "another worker owns this partition now": drop its pending state, do not retry."""

TRANSACTION_TIMEOUT_MS = 15_000


def transaction_timeout_ms(settings: Settings) -> int:
    """How long the coordinator keeps a fenced producer's transaction open: 15 s, or longer than
    the session timeout (a transaction the coordinator aborts while its worker is still a member
    would fence a partition nobody else owns), within the broker's default maximum (15 min)."""
    return min(max(TRANSACTION_TIMEOUT_MS, settings.session_timeout_ms + 5_000), 900_000)


def transactional_id(app_id: str, number: int) -> str:
    return f"{app_id}-p{number}"


def producer_kwargs() -> dict[str, object]:
    """What every producer of the worker shares: acknowledged by every in-sync replica, no
    duplicates from retries, large batches (the engine builds them itself): one holds a
    repartition record of up to :data:`service.repartition.MAX_REPARTITION_RECORD` and stays
    under a broker's default ``message.max.bytes`` (1 MiB)."""
    return {"acks": "all", "enable_idempotence": True, "max_batch_size": 1_000_000, "linger_ms": 2}


class PartitionProducers:
    """The fenced producers of the partition numbers this worker owns."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producers: dict[int, AIOKafkaProducer] = {}
        self.fenced: set[int] = set()
        """Partition numbers whose producer was fenced: another worker owns them now."""

    def __contains__(self, number: int) -> bool:
        return number in self._producers and number not in self.fenced

    def producer(self, number: int) -> AIOKafkaProducer:
        return self._producers[number]

    async def take(self, owned: Iterable[int]) -> None:
        """Stop every producer, then start (and so fence any previous owner of) one per
        partition number of ``owned``. Must run before anything is restored or processed."""
        await self.release()
        wanted = sorted(set(owned))
        base = client_kwargs(self.settings, client_id=f"{self.settings.app_id}-fence")
        for number in wanted:
            self._producers[number] = AIOKafkaProducer(
                **base,
                **producer_kwargs(),
                transactional_id=transactional_id(self.settings.app_id, number),
                transaction_timeout_ms=transaction_timeout_ms(self.settings),
            )
        results = await asyncio.gather(*(p.start() for p in self._producers.values()), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.release()
            raise failed[0]
        if wanted:
            log.info("fenced previous owners", extra={"partitions": wanted})

    def mark_fenced(self, number: int) -> None:
        if number not in self.fenced:
            log.warning(
                "partition fenced: another worker owns it now; its pending changes are dropped",
                extra={"partition": number},
            )
        self.fenced.add(number)

    async def release(self) -> None:
        """Stop every producer (a fenced one fails fast; nothing pending is committed)."""
        producers, self._producers = self._producers, {}
        self.fenced.clear()
        for producer in producers.values():
            with contextlib.suppress(KafkaError, asyncio.TimeoutError):
                await asyncio.wait_for(producer.stop(), 10)
