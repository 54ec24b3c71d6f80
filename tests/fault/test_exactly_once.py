"""SLUICE_PROCESSING_GUARANTEE=exactly_once across kill -9: a read_committed consumer of
``word-counts`` sees each word's counts strictly increasing (never a repeat) and ending at the
truth; the tables are exact."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from tests.fault.test_exact_state import Deployment
from tests.fault.workload import Traffic

pytestmark = [pytest.mark.integration, pytest.mark.fault]


async def committed_outputs(bootstrap: str, topic: str) -> list[tuple[str, int]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", isolation_level="read_committed"
    )
    await consumer.start()
    out: list[tuple[tuple[int, int], str, int]] = []
    try:
        while batch := await consumer.getmany(timeout_ms=2000):
            for records in batch.values():
                for r in records:
                    doc = json.loads(r.value)
                    out.append(((r.partition, r.offset), doc["word"], doc["count"]))
    finally:
        await consumer.stop()
    out.sort()  # a word's updates all live in one partition, in offset order
    return [(word, count) for _, word, count in out]


def test_exactly_once_outputs_survive_kill_9(kafka, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = Deployment(kafka.bootstrap_servers, tmp_path)
    d.env["SLUICE_PROCESSING_GUARANTEE"] = "exactly_once"
    rng = random.Random(97)
    try:
        w = d.worker("w").start()
        w.wait_ready()
        traffic = Traffic(d.bootstrap, d.lines, d.events, seed=97).start()
        for _ in range(5):
            time.sleep(rng.uniform(0.5, 2.0))
            w.kill(signal.SIGKILL)
            w = d.worker("w").start()
            w.wait_ready(90)
        truth = traffic.stop()
        d.caught_up()
        assert w.kill(signal.SIGTERM) == 0, w.tail()
        d.check_tables(truth.words, truth.totals, w.data_dir)
        last: dict[str, int] = {}
        repeats = []
        for word, count in asyncio.run(
            committed_outputs(d.bootstrap, d.env["SLUICE_WORDCOUNT_OUTPUT_TOPIC"])
        ):
            if count <= last.get(word, 0):
                repeats.append((word, last[word], count))
            last[word] = count
        assert repeats == [], f"{len(repeats)} repeated or decreasing updates, e.g. {repeats[:5]}"
        assert last == dict(truth.words)
    finally:
        d.stop_all()
