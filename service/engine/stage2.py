"""Stage 2: fold repartition records into table partitions through the offset guard, move the
watermark, and collect what the job emits.

A repartition record that does not decode is dead-lettered (``invalid_repartition_record``)
with its bytes and position, and the partition goes on: nothing of it was applied. An
exception in job code dead-letters the update (``job_error``) instead of acknowledging it
silently (faust-streaming #315, #527).
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Any

import orjson
from aiokafka import TopicPartition

from service.effects import Sender
from service.engine.deadletters import source_headers
from service.engine.runtime import JobPartition, Runtime
from service.kafka.murmur2 import partition_for_key
from service.repartition import decode as decode_repartition
from tables.offsets import SOURCE_OFFSET_PREFIX, offset_key
from tables.watermark import WATERMARK_KEY

log = logging.getLogger(__name__)


class Stage2:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._output_partition = lru_cache(maxsize=1 << 16)(partition_for_key)

    def process(self, tp: TopicPartition, part: JobPartition, records: list[Any], sender: Sender) -> None:
        processor = part.processor
        assert processor is not None
        rt = self.rt
        job = part.job
        out = part.outputs
        clock = part.clock
        now_ms = time.time() * 1000
        latency = rt.metrics.event_latency.labels(job.name)
        metrics_on = rt.settings.metrics_enabled
        for record in records:
            try:
                decoded = decode_repartition(record.value, record.headers, job.combine)
            except Exception as exc:
                assert rt.dead_letters is not None
                where = (record.topic, record.partition, record.offset)
                rt.dead_letters.send(
                    sender, job.name, "invalid_repartition_record", repr(exc), where, record.key, record.value
                )
                continue
            for key, payload, origin in decoded.updates:
                try:
                    processor.apply(key, payload, origin, out)
                except Exception as exc:
                    log.exception("job code failed on an update", extra={"job": job.name})
                    assert rt.dead_letters is not None
                    topic, _, partition = origin.source.rpartition(":")
                    rt.dead_letters.send(
                        sender,
                        job.name,
                        "job_error",
                        repr(exc),
                        (topic, int(partition), origin.offset),
                        key.encode(),
                        orjson.dumps(payload),
                    )
            if clock is not None and decoded.clock is not None:
                clock.heard(decoded.source, *decoded.clock)
            if metrics_on and decoded.first_ts is not None:
                latency.observe(max(0.0, (now_ms - decoded.first_ts) / 1000))
        # Every table of the job records the position: their changelogs are separate topics, so a
        # crash can leave one table's batch durable and another's not. Resuming from the lowest
        # position re-reads what the lagging table lacks; the guard skips it in the others.
        key = SOURCE_OFFSET_PREFIX + offset_key(tp.topic, tp.partition)
        for table in part.tables.values():
            table.put(key, records[-1].offset + 1)

    def end_batch(self, tp: TopicPartition, part: JobPartition, sender: Sender) -> None:
        """After a batch: move the watermark (its row before the deletions of the windows it
        closes), let the job close what it may, send what it emitted."""
        rt = self.rt
        clock = part.clock
        job = part.job
        if clock is not None:
            clock.advance(rt.sources(job), rt.source_ends)
            if clock.changed:
                assert job.watermark_table is not None
                part.tables[job.watermark_table].put(WATERMARK_KEY, clock.state())
                clock.changed = False
                rt.metrics.watermark.labels(job.watermark_table, str(part.partition)).set(
                    max(0, clock.watermark) / 1000
                )
        assert part.processor is not None
        part.processor.end_batch(part.outputs)
        topic = job.output_topic
        n = rt.partition_counts[topic]
        for key, value, origin in part.outputs.records.values():
            kb = key.encode()
            source_topic, _, source_partition = origin.source.rpartition(":")
            headers = source_headers(source_topic, source_partition, origin.offset)
            sender.add(topic, self._output_partition(kb, n), kb, orjson.dumps(value), headers)
        part.outputs.records.clear()
        for table in part.tables.values():
            if table.duplicates_skipped:
                rt.metrics.duplicates_skipped.labels(table.spec.name).inc(table.duplicates_skipped)
                table.duplicates_skipped = 0
        rt.dirty[tp] = part
