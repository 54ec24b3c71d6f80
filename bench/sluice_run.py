"""sluice variants: a real ``sluice worker`` process on a pre-loaded topic, timed from outside.

Each run gets a unique ``SLUICE_APP_ID`` (so a fresh group, fresh repartition and changelog
topics) and an empty data directory, exactly what a new deployment would see.

What is timed: from ``/readyz`` turning 200 (joined and restored: the next thing the engine
does is its first fetch) to the moment the group's lag over the input *and* repartition topics
is 0 (see :mod:`bench.lag` for why that is sound). Events are input lines. The worker's own
CPU time over the same interval comes from ``/proc/<pid>/stat``.

After every run the ``wordcount`` table, folded from its changelog by
:func:`service.changelog.read_table` (what a fresh worker would recover), must equal the
truth of the pre-loaded lines; a difference raises :class:`BenchError` and ends the bench,
because a fast wrong answer is not a result.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.data import Dataset
from bench.lag import LagProbe
from bench.procs import cpu_seconds, rss_mb, stop
from service.changelog import read_table
from service.devbroker.ports import free_port
from service.kafka.client_config import client_kwargs
from service.settings import load_settings

SLUICE = str(Path(sys.executable).with_name("sluice"))
OUTPUT_TOPIC = "bench-word-counts"
DEAD_LETTER_TOPIC = "bench-dead-letters"


class BenchError(RuntimeError):
    """A measurement could not be trusted (wrong table, worker died); the bench stops."""


@dataclass
class Worker:
    """One ``sluice worker`` subprocess and where to reach it."""

    bootstrap: str
    app_id: str
    data_dir: Path
    input_topic: str
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        env = {
            **os.environ,
            "SLUICE_BROKERS": self.bootstrap,
            "SLUICE_APP_ID": self.app_id,
            "SLUICE_DATA_DIR": str(self.data_dir),
            "SLUICE_WEB_HOST": "127.0.0.1",
            "SLUICE_WEB_PORT": str(self.port),
            "SLUICE_JOBS": "wordcount",
            "SLUICE_WORDCOUNT_INPUT_TOPIC": self.input_topic,
            "SLUICE_WORDCOUNT_OUTPUT_TOPIC": OUTPUT_TOPIC,
            "SLUICE_DEAD_LETTER_TOPIC": DEAD_LETTER_TOPIC,
            **self.extra_env,
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([SLUICE, "worker"], env=env, stdout=log, stderr=log)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def repartition_topic(self) -> str:
        return f"{self.app_id}-wordcount-repartition"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout: float = 90, interval: float = 0.01) -> float:
        """Poll ``/readyz`` until 200; return the wall-clock time it answered so."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(f"sluice worker exited {self.proc.returncode}:\n{self.tail()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return time.time()
            except OSError:
                pass
            time.sleep(interval)
        raise BenchError(f"sluice worker not ready after {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> int:
        assert self.proc is not None
        return stop(self.proc)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The worker's JSON log lines whose ``event`` is ``event``."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if event in line:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if doc.get("event") == event:
                    found.append(doc)
        return found


def new_worker(bootstrap: str, dataset: Dataset, workdir: Path, prefix: str = "bench-wc") -> Worker:
    app_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return Worker(
        bootstrap=bootstrap,
        app_id=app_id,
        data_dir=workdir / app_id / "data",
        input_topic=dataset.topic,
        log_path=workdir / f"{app_id}.log",
    )


def check_table(bootstrap: str, app_id: str, truth: Counter[str]) -> None:
    """Raise :class:`BenchError` unless the changelog's ``wordcount`` equals ``truth``."""
    settings = load_settings(brokers=bootstrap, app_id=app_id)
    table = {entry.key: entry.value for entry in asyncio.run(read_table(settings, "wordcount"))}
    if table != dict(truth):
        keys = sorted(set(table) | set(truth))
        bad = [(k, truth.get(k), table.get(k)) for k in keys if truth.get(k) != table.get(k)]
        raise BenchError(
            f"wordcount table of {app_id} is wrong: {len(bad)} of {len(keys)} words differ "
            f"(word, expected, got): {bad[:10]}"
        )


async def _wait_caught_up(worker: Worker, topics: list[str], limit_s: float) -> float:
    async with LagProbe(worker.bootstrap, worker.app_id, topics) as p:
        return await p.wait_zero(limit_s)


def check_tokens(bootstrap: str, topic: str, dataset: Dataset) -> None:
    """Raise :class:`BenchError` unless ``topic`` has one record per line whose words add up."""
    settings = load_settings(brokers=bootstrap)

    async def fold() -> tuple[int, Counter[str]]:
        consumer = AIOKafkaConsumer(
            **client_kwargs(settings, client_id="bench-check"), group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        try:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            records, words = 0, Counter[str]()
            todo = {tp for tp in tps if ends[tp] > 0}
            deadline = time.monotonic() + 300
            while todo and time.monotonic() < deadline:
                for batch in (await consumer.getmany(*todo, timeout_ms=1000)).values():
                    for record in batch:
                        records += 1
                        words.update(orjson.loads(record.value)["words"])
                # By position, not by the last record's offset: with exactly_once the log ends
                # in a transaction marker that no record carries.
                todo = {tp for tp in todo if await consumer.position(tp) < ends[tp]}
            return records, words
        finally:
            await consumer.stop()

    records, words = asyncio.run(fold())
    if records != dataset.events or words != dataset.truth:
        raise BenchError(
            f"tokenize output {topic}: {records} records for {dataset.events} lines, "
            f"{sum(words.values())} words for {dataset.tokens}; counts equal: {words == dataset.truth}"
        )


def run_wordcount(
    bootstrap: str,
    dataset: Dataset,
    workdir: Path,
    *,
    job: str = "wordcount",
    metrics: bool = True,
    guarantee: str = "at_least_once",
    check: bool = True,
    timeout: float = 600,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One timed run; returns events, seconds, cpu_seconds, rss_mb and the app id.

    ``job``: ``wordcount`` (lag 0 on input and repartition topics; the table checked against
    the truth) or the stateless ``tokenize`` (lag 0 on the input; its output topic must hold
    one record per line whose words add up to the truth). ``metrics=False`` runs with
    ``SLUICE_METRICS_ENABLED=false``; ``guarantee`` sets ``SLUICE_PROCESSING_GUARANTEE``.
    ``profile``: attach py-spy to the worker for the timed interval and write its raw
    collapsed stacks there (it samples from outside, but takes CPU the worker then lacks, so a
    profiled run's time is not used as a measurement).
    """
    worker = new_worker(bootstrap, dataset, workdir, prefix=f"bench-{job[:5]}")
    output = f"{worker.app_id}-out"
    worker.extra_env["SLUICE_JOBS"] = job
    worker.extra_env["SLUICE_METRICS_ENABLED"] = "true" if metrics else "false"
    worker.extra_env["SLUICE_PROCESSING_GUARANTEE"] = guarantee
    topics = [worker.input_topic]
    if job == "wordcount":
        topics.append(worker.repartition_topic)
    else:
        worker.extra_env["SLUICE_TOKENIZE_INPUT_TOPIC"] = dataset.topic
        worker.extra_env["SLUICE_TOKENIZE_OUTPUT_TOPIC"] = output
    worker.start()
    spy: subprocess.Popen[bytes] | None = None
    try:
        t0 = worker.wait_ready()
        cpu0 = cpu_seconds(worker.pid)
        if profile is not None:
            spy = _start_py_spy(worker.pid, profile)
        t1 = asyncio.run(_wait_caught_up(worker, topics, timeout))
        cpu1 = cpu_seconds(worker.pid)
        rss = rss_mb(worker.pid)
    finally:
        if spy is not None:  # py-spy writes its output on SIGINT (Ctrl-C), not on SIGTERM
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                stop(spy)
        code = worker.stop()
    if code != 0:
        raise BenchError(f"sluice worker {worker.app_id} exited {code} on SIGTERM:\n{worker.tail()}")
    if check and job == "wordcount":
        check_table(bootstrap, worker.app_id, dataset.truth)
    elif check:
        check_tokens(bootstrap, output, dataset)
    return {
        "events": dataset.events,
        "seconds": t1 - t0,
        "cpu_seconds": cpu1 - cpu0,
        "rss_mb": rss,
        "app_id": worker.app_id,
    }


def _start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        raise BenchError(f"{py_spy} missing: .venv/bin/pip install py-spy (or run without --profile)")
    command = [str(py_spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "-o", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.3)
    if proc.poll() is not None:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise BenchError(f"py-spy could not attach to {pid}: {err.strip()}")
    return proc


def run_restore(bootstrap: str, app_id: str, input_topic: str, workdir: Path) -> dict[str, Any]:
    """Start a worker with an empty data dir on ``app_id`` (whose changelog holds the rows).

    Returns ``records`` restored and two rates: the engine's own (records / the seconds in its
    ``restored tables`` log line) and end to end (process start to ``/readyz`` 200, which adds
    interpreter start, topic checks and the group join).
    """
    worker = Worker(
        bootstrap=bootstrap,
        app_id=app_id,
        data_dir=workdir / app_id / f"restore-{uuid.uuid4().hex[:6]}",
        input_topic=input_topic,
        log_path=workdir / f"{app_id}-restore.log",
    )
    started = time.time()
    worker.start()
    try:
        ready = worker.wait_ready()
    finally:
        code = worker.stop()
    if code != 0:
        raise BenchError(f"restoring worker {app_id} exited {code}:\n{worker.tail()}")
    lines = worker.log_events("restored tables")
    if not lines:
        raise BenchError(f"restoring worker {app_id} logged no 'restored tables':\n{worker.tail()}")
    records = sum(int(doc["records"]) for doc in lines)
    seconds = sum(float(doc["seconds"]) for doc in lines)
    return {
        "records": records,
        "seconds": seconds,
        "rows_per_s": records / seconds if seconds > 0 else None,
        "ready_seconds": ready - started,
        "wall_rows_per_s": records / (ready - started),
    }
