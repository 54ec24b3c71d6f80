"""Stage 1: decode and validate input records, and route each table update to the partition
that owns its key (as repartition records), or forward a stateless job's result.

A record that cannot be decoded or validated goes to the dead letters with its reason and the
worker goes on (G5): ``null_value``, ``oversized``, the job's own reasons (``invalid_json`` …),
``job_error`` for an exception in job code, ``ts_out_of_range`` for an event time further than
``SLUICE_MAX_EVENT_TIME_SKEW_MS`` ahead of the record's broker timestamp (one bad ``ts`` must
not close every window), and ``oversized_fanout`` for a record one of whose updates cannot fit
in a repartition record even alone. Nothing of a dead-lettered record is sent anywhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import orjson
from aiokafka import TopicPartition

from service.effects import Sender
from service.engine.deadletters import source_headers
from service.engine.routing import Route
from service.engine.runtime import Runtime
from service.job import BadRecord, Job
from service.kafka.murmur2 import partition_for_key
from service.repartition import MAX_REPARTITION_RECORD, OversizedUpdate
from service.repartition import encode as encode_repartition
from tables.watermark import SourceClocks

log = logging.getLogger(__name__)

LARGE_RECORD = MAX_REPARTITION_RECORD // 4
"""Input values above this have each update's size checked before anything is routed."""


class Stage1:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.clocks = SourceClocks()
        self._route_key = lru_cache(maxsize=1 << 16)(self._route_key_uncached)
        self._skew = rt.settings.max_event_time_skew_ms

    def _route_key_uncached(self, key: str) -> int:
        return partition_for_key(key.encode(), self.rt.settings.topic_partitions)

    def process(
        self, tp: TopicPartition, records: list[Any], routes: Sequence[Route], sender: Sender, position: int
    ) -> None:
        """Every job reading ``tp`` processes ``records``; ``position`` is where the source stands
        after them (for the watermark of jobs with event-time windows)."""
        for route in routes:
            self._split(route.job, tp, records, sender, position)

    def _split(self, job: Job, tp: TopicPartition, records: list[Any], sender: Sender, position: int) -> None:
        settings = self.rt.settings
        limit = settings.max_record_bytes
        event_time = job.event_time
        source = self.rt.incarnations.key(tp.topic, tp.partition)
        per_target: dict[int, list[list[Any]]] = {}  # target -> entries (service.repartition)
        for record in records:
            value = record.value
            if value is None:
                self._dead_letter(job, record, "null_value", "", sender)
                continue
            if len(value) > limit:
                self._dead_letter(job, record, "oversized", f"{len(value)} > {limit} bytes", sender)
                continue
            try:
                updates = job.split(record.key, value)
            except BadRecord as exc:
                self._dead_letter(job, record, exc.reason, exc.detail, sender)
                continue
            except Exception as exc:  # a bug triggered by this record: keep it, say so
                log.exception("job code failed on a record", extra=_where(job, record))
                self._dead_letter(job, record, "job_error", repr(exc), sender)
                continue
            if not job.tables:  # stateless: no table, no repartition; forward the parsed record
                self._forward(job, record, updates, sender)
                continue
            if event_time is not None:
                times = [event_time(payload) for _, payload in updates]
                latest = max(times, default=-1)
                if latest > record.timestamp + self._skew:
                    detail = (
                        f"ts {latest} is more than {self._skew} ms ahead of the record's {record.timestamp}"
                    )
                    self._dead_letter(job, record, "ts_out_of_range", detail, sender)
                    continue
                self.clocks.observe(source, latest)
            if len(value) > LARGE_RECORD and (too_big := _oversized(updates, job.combine is not None)):
                self._dead_letter(job, record, "oversized_fanout", too_big, sender)
                continue
            route_key = self._route_key
            for index, (key, payload) in enumerate(updates):
                entries = per_target.setdefault(route_key(key), [])
                if entries and entries[-1][0] == record.offset:
                    entries[-1][2].append([key, payload, index])
                else:
                    entries.append([record.offset, record.timestamp, [[key, payload, index]]])
        if job.tables:
            self._send(job, tp, per_target, sender, position)
        if self.rt.settings.metrics_enabled and records:
            self.rt.metrics.events_processed.labels(job.name, tp.topic, str(tp.partition)).inc(len(records))

    def _send(
        self,
        job: Job,
        tp: TopicPartition,
        per_target: dict[int, list[list[Any]]],
        sender: Sender,
        position: int,
    ) -> None:
        topic = job.repartition_topic(self.rt.settings.app_id)
        clock = None
        targets: Sequence[int] = list(per_target)
        if job.event_time is not None:  # every table partition hears where this source stands
            clock = self.clocks.report(self.rt.incarnations.key(tp.topic, tp.partition), position)
            targets = range(self.rt.settings.topic_partitions)
        for target in targets:
            entries = per_target.get(target, [])
            try:
                pieces = encode_repartition(
                    tp.topic,
                    tp.partition,
                    entries,
                    job.combine,
                    clock,
                    self.rt.incarnations.current.get(tp.topic, 0),
                )
            except OversizedUpdate as exc:  # _oversized() let it through: a bug, not the input's fault
                raise AssertionError(f"{job.name}: {exc} escaped the fan-out check") from exc
            for value, headers in pieces:
                sender.add(topic, target, None, value, headers)

    def stale_clock(self, job: Job, tp: TopicPartition, position: int) -> bool:
        """Whether ``tp`` moved without records (transaction markers, or nothing reported since
        the assignment) for a job with windows: then an empty batch reports it."""
        source = self.rt.incarnations.key(tp.topic, tp.partition)
        return job.event_time is not None and self.clocks.stale(source, position)

    def _forward(self, job: Job, record: Any, updates: Sequence[tuple[str, Any]], sender: Sender) -> None:
        n = self.rt.partition_counts[job.output_topic]
        headers = source_headers(record.topic, record.partition, record.offset)
        for key, payload in updates:
            kb = key.encode() if key else None
            partition = partition_for_key(kb, n) if kb else record.partition % n
            sender.add(job.output_topic, partition, kb, orjson.dumps(payload), headers)

    def _dead_letter(self, job: Job, record: Any, reason: str, detail: str, sender: Sender) -> None:
        assert self.rt.dead_letters is not None
        where = (record.topic, record.partition, record.offset)
        self.rt.dead_letters.send(sender, job.name, reason, detail, where, record.key, record.value)


def _oversized(updates: Sequence[tuple[str, Any]], combined: bool) -> str:
    """Why one of ``updates`` cannot travel in a repartition record even alone ('' if all can)."""
    factor = 2 if combined else 1
    for key, payload in updates:
        size = (len(orjson.dumps(key)) + len(orjson.dumps(payload)) + 48) * factor
        if size > MAX_REPARTITION_RECORD - 1024:  # room for the record's own fields
            return f"an update of {size} bytes exceeds the {MAX_REPARTITION_RECORD}-byte repartition record"
    return ""


def _where(job: Job, record: Any) -> dict[str, Any]:
    return {"job": job.name, "topic": record.topic, "partition": record.partition, "offset": record.offset}
