"""End-to-end latency at half the measured maximum rate: produce → the line's counts visible.

A running, caught-up worker gets lines at a steady ``rate`` for ``seconds``; the bench
consumes the job's output topic at the same time, stamping each output record's arrival.

When is a line (source partition ``p``, offset ``o``) done? Its words' updates go to the
table partitions ``q`` their keys route to, and each ``q`` receives the updates from ``p`` in
offset order and emits, per batch, one output per changed word carrying that word's latest
origin (possibly from another source partition: sluice coalesces). So once *any* output of
partition ``q`` with an origin ``(p, o' >= o)`` has arrived, ``q`` has applied the line and
its outputs (acknowledged with that batch's) are visible. The line is done when that holds for
every ``q`` its words route to; latency = that arrival minus the line's produce time, both on
this process's wall clock. This is what a downstream consumer sees. The worker's own
``sluice_event_latency_seconds`` histogram (event timestamp to "handed to the producer",
before acks, one observation per repartition record) is read from ``/metrics`` and reported
next to it for comparison.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import re
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.data import PARTITIONS, WORD, create_topic
from bench.lag import LagProbe
from bench.sluice_run import BenchError, Worker
from service.kafka.murmur2 import partition_for_key

_BUCKET = re.compile(r'^sluice_event_latency_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\} (\S+)$', re.M)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def histogram_quantile(metrics_text: str, q: float) -> float | None:
    """Prometheus-style quantile (linear within the bucket) of the event-latency histogram."""
    buckets: dict[float, float] = defaultdict(float)
    for le, count in _BUCKET.findall(metrics_text):
        buckets[float(le)] += float(count)
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total == 0:
        return None
    target = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= target:
            if bound == float("inf"):
                return prev_bound
            share = (target - prev_count) / (count - prev_count) if count > prev_count else 1.0
            return prev_bound + (bound - prev_bound) * share
        prev_bound, prev_count = bound, count
    return prev_bound


def table_partition(word: str) -> int:
    """The table partition owning ``word`` (the engine routes keys with Kafka's murmur2)."""
    return partition_for_key(word.encode(), PARTITIONS)


class _Arrivals:
    """Per (table partition, source partition): the highest origin offset seen, over time."""

    def __init__(self) -> None:
        self.progress: dict[tuple[int, int], tuple[list[int], list[float]]] = {}
        self.records = 0

    def add(self, table_part: int, source_partition: int, offset: int, arrived: float) -> None:
        offsets, times = self.progress.setdefault((table_part, source_partition), ([], []))
        if not offsets or offset > offsets[-1]:  # a running maximum, so it can be bisected
            offsets.append(offset)
            times.append(arrived)
        self.records += 1

    def done_at(self, table_part: int, source_partition: int, offset: int) -> float | None:
        """When ``table_part`` was first seen past ``offset`` of ``source_partition``."""
        entry = self.progress.get((table_part, source_partition))
        if entry is None:
            return None
        offsets, times = entry
        i = bisect.bisect_left(offsets, offset)
        return times[i] if i < len(offsets) else None


async def _consume_outputs(bootstrap: str, topic: str, arrivals: _Arrivals, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=5
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=50)
            arrived = time.time()
            for records in fetched.values():
                for record in records:
                    headers = dict(record.headers)
                    arrivals.add(
                        table_partition(record.key.decode()),
                        int(headers["sluice.source.partition"]),
                        int(headers["sluice.source.offset"]),
                        arrived,
                    )
    finally:
        await consumer.stop()


async def _produce(
    bootstrap: str, topic: str, lines: list[bytes], rate: float, seconds: float
) -> list[tuple[int, int, float, bytes]]:
    """Send lines at ``rate``/s for ``seconds``; return (partition, offset, sent_at, line)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    sent: list[tuple[int, float, bytes, asyncio.Future[Any]]] = []
    try:
        for _ in range(100):
            if len(await producer.partitions_for(topic) or ()) >= PARTITIONS:
                break
            await producer.client.force_metadata_update()
            await asyncio.sleep(0.1)
        started = time.monotonic()
        i = 0
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate)
            while i < due:
                line = lines[i % len(lines)]
                now = time.time()
                p = i % PARTITIONS
                fut = await producer.send(topic, line, partition=p, timestamp_ms=int(now * 1000))
                sent.append((p, now, line, fut))
                i += 1
            await asyncio.sleep(0.005)
        metas = await asyncio.gather(*(fut for *_, fut in sent))
    finally:
        await producer.stop()
    return [(p, meta.offset, now, line) for (p, now, line, _), meta in zip(sent, metas, strict=True)]


async def _run(worker: Worker, lines: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    output = worker.extra_env["SLUICE_WORDCOUNT_OUTPUT_TOPIC"]
    arrivals = _Arrivals()
    stop = asyncio.Event()
    consumer = asyncio.create_task(_consume_outputs(worker.bootstrap, output, arrivals, stop))
    await asyncio.sleep(0.5)  # the consumer is assigned before the first line is sent
    produced = await _produce(worker.bootstrap, worker.input_topic, lines, rate, seconds)
    async with LagProbe(worker.bootstrap, worker.app_id, [worker.input_topic, worker.repartition_topic]) as p:
        await p.wait_zero(120)
    await asyncio.sleep(1.0)  # outputs acknowledged before the commit are fetched by now
    stop.set()
    await consumer
    latencies: list[float] = []
    missing = 0
    for partition, offset, sent_at, line in produced:
        targets = {table_partition(word) for word in WORD.findall(line.decode("utf-8").lower())}
        done = [arrivals.done_at(q, partition, offset) for q in targets]
        if any(d is None for d in done):
            missing += 1
            continue
        latencies.append(max(d for d in done if d is not None) - sent_at)
    if not latencies or missing > len(produced) // 100:
        raise BenchError(f"latency run: {missing} of {len(produced)} lines never showed in {output}")
    return {
        "lines": len(produced),
        "achieved_rate": len(produced) / seconds,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
        "lines_without_output": missing,
        "output_records": arrivals.records,
    }


def run_latency(
    bootstrap: str, lines: list[bytes], rate: float, seconds: float, workdir: Path
) -> dict[str, Any]:
    """Start a worker on an empty topic, feed it ``rate`` lines/s for ``seconds``, measure."""
    tag = uuid.uuid4().hex[:8]
    topic = f"bench-latency-{tag}"
    app_id = f"bench-lat-{tag}"
    asyncio.run(create_topic(bootstrap, topic))
    worker = Worker(
        bootstrap=bootstrap,
        app_id=app_id,
        data_dir=workdir / app_id / "data",
        input_topic=topic,
        log_path=workdir / f"{app_id}.log",
        extra_env={"SLUICE_WORDCOUNT_OUTPUT_TOPIC": f"{topic}-out"},
    ).start()
    try:
        worker.wait_ready()
        result = asyncio.run(_run(worker, lines, rate, seconds))
        status, body = worker.get("/metrics")
        hist = histogram_quantile(body.decode(), 0.99) if status == 200 else None
        result["histogram_p99_ms"] = hist * 1000 if hist is not None else None
    finally:
        worker.stop()
    result["rate"] = rate
    return result
