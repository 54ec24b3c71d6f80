"""G1, G2, G3, G5 against a real broker: kill -9, takeover by an empty disk, malformed input.

Every check compares key by key with the truth folded from what the test produced
(:mod:`tests.fault.workload`), both as the changelog has it (what a fresh worker recovers)
and as the surviving worker's RocksDB has it.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from tests.fault.workload import BAD_EVENTS, Traffic
from tests.harness import (
    WorkerProcess,
    changelog_table,
    diff,
    local_table,
    produce,
    unique,
    wait_caught_up,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

KILL_CYCLES = int(os.environ.get("SLUICE_TEST_KILL_CYCLES", "10"))


class Deployment:
    """One app id with its own topics on the shared broker, and helpers to check it."""

    def __init__(self, bootstrap: str, tmp: Path) -> None:
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.app_id = unique("app")
        self.lines = unique("lines")
        self.events = unique("events")
        self.dead = unique("dead")
        self.env = {
            "SLUICE_WORDCOUNT_INPUT_TOPIC": self.lines,
            "SLUICE_WORDCOUNT_OUTPUT_TOPIC": unique("word-counts"),
            "SLUICE_ROLLUP_INPUT_TOPIC": self.events,
            "SLUICE_ROLLUP_OUTPUT_TOPIC": unique("rollups"),
            "SLUICE_DEAD_LETTER_TOPIC": self.dead,
            "SLUICE_SESSION_TIMEOUT_MS": "6000",
        }
        self.workers: list[WorkerProcess] = []

    def worker(self, name: str, **env: str) -> WorkerProcess:
        w = WorkerProcess(
            self.bootstrap,
            self.tmp / name,
            self.app_id,
            self.tmp / f"{name}.log",
            **{**self.env, **env},
        )
        self.workers.append(w)
        return w

    def topics(self) -> list[str]:
        return [
            self.lines,
            self.events,
            f"{self.app_id}-wordcount-repartition",
            f"{self.app_id}-rollup-repartition",
        ]

    def caught_up(self) -> None:
        wait_caught_up(self.bootstrap, self.app_id, self.topics())

    def check_tables(
        self, truth_words: dict[str, int], truth_totals: dict[str, object], data_dir: Path | None
    ) -> None:
        words = changelog_table(self.bootstrap, self.app_id, "wordcount")
        assert words == dict(truth_words), "changelog wordcount: " + diff(dict(truth_words), words)
        totals = changelog_table(self.bootstrap, self.app_id, "rollup_totals")
        assert totals == truth_totals, "changelog rollup_totals: " + diff(truth_totals, totals)  # type: ignore[arg-type]
        if data_dir is not None:
            local = local_table(data_dir, "wordcount")
            assert local == dict(truth_words), "local wordcount: " + diff(dict(truth_words), local)
            local_totals = local_table(data_dir, "rollup_totals")
            assert local_totals == truth_totals, "local rollup_totals: " + diff(truth_totals, local_totals)  # type: ignore[arg-type]

    def dead_letters(self) -> list[tuple[dict[str, bytes], bytes]]:
        async def read() -> list[tuple[dict[str, bytes], bytes]]:
            consumer = AIOKafkaConsumer(
                self.dead, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest"
            )
            await consumer.start()
            out = []
            try:
                while True:
                    batch = await consumer.getmany(timeout_ms=2000)
                    if not batch:
                        return out
                    for records in batch.values():
                        out.extend((dict(r.headers), r.value) for r in records)
            finally:
                await consumer.stop()

        return asyncio.run(read())

    def stop_all(self) -> None:
        for w in self.workers:
            if w.alive():
                w.kill(signal.SIGKILL)


@pytest.fixture
def deployment(kafka, tmp_path):  # type: ignore[no-untyped-def]
    d = Deployment(kafka.bootstrap_servers, tmp_path)
    yield d
    d.stop_all()


def test_kill_9_cycles_leave_exact_state(deployment: Deployment) -> None:
    """G1+G2: kill -9 at random moments while traffic flows; state equals the fold of the input."""
    seed = int(os.environ.get("SLUICE_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    worker = deployment.worker("w").start()
    worker.wait_ready()
    traffic = Traffic(deployment.bootstrap, deployment.lines, deployment.events, seed).start()
    kills = 0
    for _ in range(KILL_CYCLES):
        time.sleep(rng.uniform(0.3, 2.5))
        worker.kill(signal.SIGKILL)
        kills += 1
        worker = deployment.worker("w").start()
        worker.wait_ready(90)
    time.sleep(1)
    truth = traffic.stop()
    deployment.caught_up()
    assert worker.kill(signal.SIGTERM) == 0, worker.tail()
    print(f"seed={seed} kills={kills} lines={truth.lines} events={truth.events}")
    assert truth.lines > 0 and truth.events > 0
    deployment.check_tables(truth.words, truth.totals, worker.data_dir)
    # G5: every invalid event is in the dead-letter topic (at least once; replays may repeat),
    # and nothing valid is.
    letters = deployment.dead_letters()
    positions = {(h["sluice.source.partition"], h["sluice.source.offset"]) for h, _ in letters}
    assert len(positions) == truth.invalid_events
    assert all(value in BAD_EVENTS for _, value in letters)


def test_empty_disk_takeover_recovers_from_changelog(deployment: Deployment) -> None:
    """G3: crash mid-stream, then a worker with an empty data directory takes over; exact."""
    first = deployment.worker("a").start()
    first.wait_ready()
    traffic = Traffic(deployment.bootstrap, deployment.lines, deployment.events, seed=3).start()
    time.sleep(3)
    first.kill(signal.SIGKILL)
    second = deployment.worker("b").start()  # a different, empty data directory
    second.wait_ready(90)
    time.sleep(2)
    truth = traffic.stop()
    deployment.caught_up()
    assert second.kill(signal.SIGTERM) == 0, second.tail()
    deployment.check_tables(truth.words, truth.totals, second.data_dir)
    # The crashed worker's own disk must not hold an update the changelog lacks (G3's trap):
    # restarting it must converge on the same state.
    again = deployment.worker("a").start()
    again.wait_ready(90)
    deployment.caught_up()
    assert again.kill(signal.SIGTERM) == 0, again.tail()
    deployment.check_tables(truth.words, truth.totals, again.data_dir)


def test_two_workers_one_killed_the_other_takes_over(deployment: Deployment) -> None:
    """G6 + G2: two workers share partitions; kill -9 one mid-stream; the other ends exact."""
    a = deployment.worker("a").start()
    b = deployment.worker("b").start()
    a.wait_ready()
    b.wait_ready()
    traffic = Traffic(deployment.bootstrap, deployment.lines, deployment.events, seed=5).start()
    time.sleep(3)
    a.kill(signal.SIGKILL)
    time.sleep(3)
    truth = traffic.stop()
    deployment.caught_up()
    assert b.kill(signal.SIGTERM) == 0, b.tail()
    deployment.check_tables(truth.words, truth.totals, None)
    # b now owns every partition; its local copy of each must match too.
    assert local_table(b.data_dir, "wordcount") == dict(truth.words)


def test_malformed_records_all_dead_lettered(deployment: Deployment) -> None:
    """G5: 1,000 malformed records: each in the dead-letter topic with a reason; worker alive."""
    worker = deployment.worker("w", SLUICE_MAX_RECORD_BYTES="4096").start()
    worker.wait_ready()
    kinds = [*BAD_EVENTS, b"x" * 5000, b'{"key": "k", "value": true, "ts": 1}', b"null"]
    bad = [kinds[i % len(kinds)] for i in range(1000)]
    good = [b'{"key": "ok", "value": 2, "ts": 10}'] * 10
    asyncio.run(produce(deployment.bootstrap, deployment.events, bad + good, 4))
    asyncio.run(produce(deployment.bootstrap, deployment.lines, [b"\xff\xfe not utf8"] * 7, 4))
    deployment.caught_up()
    assert worker.alive()
    status, metrics = worker.get("/metrics")
    assert status == 200
    counted = sum(
        float(m.group(1))
        for m in re.finditer(r'^sluice_dead_letters_total\{job="rollup",[^}]*\} (\S+)$', metrics, re.M)
    )
    assert counted == 1000
    letters = deployment.dead_letters()
    assert len(letters) == 1007
    assert sorted(v for h, v in letters if h["sluice.job"] == b"rollup") == sorted(bad)
    assert all(h["sluice.reason"] for h, _ in letters)
    reasons = {h["sluice.reason"].decode() for h, _ in letters}
    assert {"invalid_json", "invalid_utf8", "oversized", "missing_field", "wrong_type"} <= reasons
    assert changelog_table(deployment.bootstrap, deployment.app_id, "rollup_totals") == {
        "ok": {"count": 10, "sum": 20, "min": 2, "max": 2}
    }
    assert worker.kill(signal.SIGTERM) == 0
