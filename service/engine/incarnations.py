"""Which incarnation of each input topic the worker reads: a topic deleted and re-created under
the same name starts its offsets at 0 again, and positions kept for the old one would make the
new one's records look already applied (skipped as duplicates) and its offsets look processed.

Kafka gives every topic a unique id (KIP-516, :mod:`service.kafka.topic_ids`). The offsets table
keeps, per input topic, the id last seen and an incarnation number; when the id differs, the
number goes up by one. Source keys carry it (``lines:0#1``, :func:`tables.offsets.source_key`),
so positions, the stage-1 offsets and the watermark clocks of the new incarnation start afresh,
and the old ones are pruned from rows as they are rewritten. The first incarnation keeps the
plain ``topic:partition`` form, which is what state written before this existed uses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer

from service.changelog import read_table
from service.errors import OperationError
from service.kafka.murmur2 import partition_for_key
from service.kafka.topic_ids import topic_ids
from service.settings import Settings
from tables.codec import Row, encode_row
from tables.offsets import OFFSETS, TOPIC_ID_PREFIX, source_key

log = logging.getLogger(__name__)


class Incarnations:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.current: dict[str, int] = {}
        self.ids: dict[str, str] = {}

    def key(self, topic: str, partition: int) -> str:
        return source_key(topic, partition, self.current.get(topic, 0))

    def _partition(self, topic: str) -> int:
        return partition_for_key((TOPIC_ID_PREFIX + topic).encode(), self.settings.topic_partitions)

    async def registry(self, topics: Iterable[str]) -> dict[str, dict[str, object]]:
        """The incarnations the offsets table records for ``topics``."""
        names = set(topics)
        wanted = {self._partition(t) for t in names}
        entries = await read_table(self.settings, OFFSETS.name, include_meta=True, wanted=wanted)
        found = {}
        for entry in entries:
            topic = entry.key[len(TOPIC_ID_PREFIX) :]
            if entry.key.startswith(TOPIC_ID_PREFIX) and topic in names and isinstance(entry.value, dict):
                found[topic] = entry.value
        return found

    async def refresh(self, topics: Iterable[str], producer: AIOKafkaProducer) -> None:
        """Learn the incarnation of ``topics``; record a new one (id changed) or a first sight."""
        names = sorted(set(topics))
        if not names:
            return
        ids = await topic_ids(self.settings, names)
        known = await self.registry(names)
        writes = []
        for topic in names:
            tid = ids.get(topic)
            if tid is None:
                continue
            entry = known.get(topic)
            inc = int(str(entry.get("inc", 0))) if entry is not None else 0
            if entry is None or entry.get("id") != tid:
                if entry is not None:
                    inc += 1
                    log.warning(
                        "input topic was deleted and re-created: positions of its previous "
                        "incarnation are ignored",
                        extra={"topic": topic, "old_id": entry.get("id"), "new_id": tid, "incarnation": inc},
                    )
                writes.append((topic, {"id": tid, "inc": inc}))
            self.current[topic] = inc
            self.ids[topic] = tid
        futures = []
        for topic, value in writes:
            row = encode_row(Row(value, {}), OFFSETS.schema)
            key = (TOPIC_ID_PREFIX + topic).encode()
            futures.append(
                await producer.send(
                    OFFSETS.changelog_topic(self.settings.app_id),
                    row,
                    key=key,
                    partition=self._partition(topic),
                )
            )
        for future in futures:
            await future

    async def verify(self, topic: str) -> None:
        """Raise when ``topic`` is no longer the incarnation this worker reads (re-created while
        it ran): a restart picks the new one up."""
        ids = await topic_ids(self.settings, [topic])
        known = self.ids.get(topic)
        if known is not None and ids.get(topic) not in (None, known):
            raise OperationError(
                f"input topic {topic} was deleted and re-created while the worker ran; "
                "the restart reads the new topic from its start"
            )
