"""Test harness for real workers: start them as processes, kill them, and read the truth.

Workers run as ``sluice worker`` subprocesses with their own ``SLUICE_*`` environment, so a
test kills exactly what an operator would (``kill -9``, SIGTERM). State is read two ways,
independently of the worker: from the changelog (what a fresh worker would recover) and from
a stopped worker's RocksDB (what a restarted one would start from).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.changelog import read_table
from service.settings import load_settings
from tables.codec import decode_row
from tables.store import PartitionStore
from tables.table import META_PREFIX
from tests.kafka_fixtures import free_port

SLUICE = str(Path(sys.executable).with_name("sluice"))


FAUST_WORKER = [sys.executable, "-m", "faust", "-A", "service.main", "worker", "-l", "info"]
"""The same worker as ``sluice worker``, started the way Faust starts apps."""


class WorkerProcess:
    """One ``sluice worker`` subprocess (or ``command``, e.g. :data:`FAUST_WORKER`)."""

    def __init__(
        self,
        bootstrap: str,
        data_dir: Path,
        app_id: str,
        log_path: Path,
        command: list[str] | None = None,
        **env: str,
    ) -> None:
        self.command = command or [SLUICE, "worker"]
        self.data_dir = data_dir
        self.port = free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "SLUICE_BROKERS": bootstrap,
            "SLUICE_APP_ID": app_id,
            "SLUICE_DATA_DIR": str(data_dir),
            "SLUICE_WEB_PORT": str(self.port),
            "SLUICE_WEB_HOST": "127.0.0.1",
            "SLUICE_COMMIT_INTERVAL_MS": "100",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=log)
        return self

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                body = resp.read()
                return resp.status, (json.loads(body) if path != "/metrics" else body.decode())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.tail()}")
            try:
                status, _ = self.get("/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.tail()}")

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 40) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def produce(bootstrap: str, topic: str, values: Iterable[bytes], partitions: int | None = None) -> None:
    """Send ``values`` unkeyed, spread over ``partitions`` in rotation, acks=all."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        if partitions:  # metadata of a topic created a moment ago can still be partial
            for _ in range(100):
                if len(await producer.partitions_for(topic)) >= partitions:
                    break
                await producer.client.force_metadata_update()
                await asyncio.sleep(0.1)
        futures = []
        for i, value in enumerate(values):
            partition = i % partitions if partitions else None
            futures.append(await producer.send(topic, value, partition=partition))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    """Every record of ``topic`` from the beginning: (key, value, headers)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out = []
    try:
        while batch := await consumer.getmany(timeout_ms=1500):
            for records in batch.values():
                out.extend((r.key, r.value, dict(r.headers)) for r in records)
    finally:
        await consumer.stop()
    return out


async def group_offsets(
    bootstrap: str, group: str, topics: list[str]
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """(committed offset, log-end offset) per partition of ``topics``; a partition without a
    committed offset is absent from the first."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        meta = await admin.describe_topics(topics)
    finally:
        await admin.close()
    tps = [TopicPartition(t["topic"], p["partition"]) for t in meta for p in t["partitions"]]
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    done = {tp: meta.offset for tp, meta in committed.items() if tp in ends and meta.offset >= 0}
    return done, ends


async def group_lag(bootstrap: str, group: str, topics: list[str]) -> int:
    """Total of log-end minus committed over every partition of ``topics`` (missing = whole log)."""
    done, ends = await group_offsets(bootstrap, group, topics)
    return sum(end - done.get(tp, 0) for tp, end in ends.items())


def wait_caught_up(bootstrap: str, group: str, topics: list[str], timeout: float = 120) -> None:
    """Wait until the group has committed everything in ``topics`` (stage 1 and stage 2)."""
    deadline = time.monotonic() + timeout
    lag = -1
    while time.monotonic() < deadline:
        lag = asyncio.run(group_lag(bootstrap, group, topics))
        if lag == 0:
            # The repartition topics may still receive stage-1 output committed a moment ago.
            time.sleep(0.5)
            if asyncio.run(group_lag(bootstrap, group, topics)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"group {group} still lags by {lag} after {timeout}s")


def changelog_table(bootstrap: str, app_id: str, table: str) -> dict[str, Any]:
    settings = load_settings(brokers=bootstrap, app_id=app_id)
    return {e.key: e.value for e in asyncio.run(read_table(settings, table))}


def local_table(data_dir: Path, table: str) -> dict[str, Any]:
    """Rows in a stopped worker's RocksDB, every partition of ``table``."""
    rows: dict[str, Any] = {}
    base = data_dir / "tables" / table
    if not base.exists():
        return rows
    for part in sorted(base.iterdir()):
        store = PartitionStore(part)
        try:
            for key, raw in store.items():
                name = key.decode()
                if not name.startswith(META_PREFIX):
                    rows[name] = decode_row(raw)[1].value
        finally:
            store.close()
    return rows


def diff(expected: dict[str, Any], actual: dict[str, Any], limit: int = 10) -> str:
    keys = sorted(set(expected) | set(actual))
    bad = [(k, expected.get(k), actual.get(k)) for k in keys if expected.get(k) != actual.get(k)]
    return f"{len(bad)} keys differ, e.g. {bad[:limit]}"


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def read_ready(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first stdout line of ``sluice dev broker``, or fail with its stderr."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            proc.kill()
            pytest.fail(f"no ready line within {timeout} s; stderr: {proc.communicate()[1]}")
    line = proc.stdout.readline()
    if not line:
        pytest.fail(f"sluice dev broker exited {proc.wait()}; stderr: {proc.communicate()[1]}")
    return line.rstrip("\n")


# ---------------------------------------------------------------------- helpers for the G8/G9 tests
# (added for tests/fault/test_zombie.py, test_watermarks.py, test_resume.py, test_fanout.py and
# tests/integration/test_shared_topics.py; nothing above depends on them)

STATEFUL_JOBS = frozenset({"wordcount", "rollup"})
"""Jobs with tables, hence a repartition topic ``<app>-<job>-repartition``."""


class Stack:
    """One app id running ``jobs`` with topics of its own on a shared broker.

    ``inputs`` / ``outputs`` name each job's topics (unique by default; a test may point two jobs
    at one topic before starting a worker). Workers get ``env`` and their own overrides.
    """

    def __init__(self, bootstrap: str, tmp: Path, jobs: Iterable[str] = ("wordcount",), **env: str) -> None:
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.jobs = tuple(jobs)
        self.app_id = unique("app")
        self.inputs = {job: unique(f"{job}-in") for job in self.jobs}
        self.outputs = {job: unique(f"{job}-out") for job in self.jobs}
        self.dead = unique("dead")
        self.env = {"SLUICE_SESSION_TIMEOUT_MS": "6000", **env}
        self.workers: list[WorkerProcess] = []

    def worker_env(self, **env: str) -> dict[str, str]:
        out = {"SLUICE_JOBS": ",".join(self.jobs), "SLUICE_DEAD_LETTER_TOPIC": self.dead}
        for job in self.jobs:
            out[f"SLUICE_{job.upper()}_INPUT_TOPIC"] = self.inputs[job]
            out[f"SLUICE_{job.upper()}_OUTPUT_TOPIC"] = self.outputs[job]
        return {**out, **self.env, **env}

    def worker(self, name: str, command: list[str] | None = None, **env: str) -> WorkerProcess:
        w = WorkerProcess(
            self.bootstrap,
            self.tmp / name,
            self.app_id,
            self.tmp / f"{name}.log",
            command,
            **self.worker_env(**env),
        )
        self.workers.append(w)
        return w

    def repartition(self, job: str) -> str:
        return f"{self.app_id}-{job}-repartition"

    def sources(self) -> list[str]:
        """Every topic the group consumes: the inputs and the repartition topics."""
        topics = list(dict.fromkeys(self.inputs[job] for job in self.jobs))
        return topics + [self.repartition(job) for job in self.jobs if job in STATEFUL_JOBS]

    def caught_up(self, alive: Iterable[WorkerProcess] = (), timeout: float = 120) -> None:
        """Wait until the group has committed every source topic to its end (checked twice,
        0.5 s apart); fail at once if a worker of ``alive`` exits."""
        watched = list(alive)

        def zero() -> bool:
            if asyncio.run(group_lag(self.bootstrap, self.app_id, self.sources())) != 0:
                return False
            time.sleep(0.5)
            return asyncio.run(group_lag(self.bootstrap, self.app_id, self.sources())) == 0

        wait_until(zero, timeout, f"group {self.app_id} caught up", watched)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        for w in self.workers:
            if w.alive():
                w.kill(signal.SIGKILL)
            if w.proc is not None:
                with contextlib.suppress(ProcessLookupError, OSError):
                    os.kill(w.proc.pid, signal.SIGCONT)  # a SIGSTOPped one must be able to die


def wait_until(
    condition: Callable[[], object], timeout: float, what: str, alive: Iterable[WorkerProcess] = ()
) -> None:
    """Poll ``condition`` until it is truthy; fail after ``timeout`` seconds, or at once (with the
    log tail) when a worker of ``alive`` exits."""
    watched = list(alive)
    deadline = time.monotonic() + timeout
    while True:
        for w in watched:
            if not w.alive():
                code = w.proc.returncode if w.proc is not None else None
                raise AssertionError(f"{what}: worker {w.data_dir.name} exited {code}:\n{w.tail()}")
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached after {timeout}s")
        time.sleep(0.3)


def scrape(worker: WorkerProcess) -> str:
    """The worker's /metrics text."""
    status, text = worker.get("/metrics")
    assert status == 200, f"/metrics answered {status}"
    return str(text)


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``name`` in a Prometheus text exposition: (labels, value)."""
    out = []
    for m in re.finditer(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
        out.append((labels, float(m.group(2))))
    return out


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when there is none)."""
    return sum(
        value
        for have, value in metric_samples(text, name)
        if all(have.get(k) == v for k, v in labels.items())
    )


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


async def create_topic(
    bootstrap: str, topic: str, partitions: int, config: dict[str, str] | None = None
) -> None:
    """Create ``topic`` (RF 1) unless it exists."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=config or {})])
    finally:
        await admin.close()


async def produce_records(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[int | None, bytes | None, bytes | None]],
    max_request_size: int = 1048576,
) -> list[tuple[int, int]]:
    """Send (partition, key, value) records in order, acks=all, idempotent (so order within a
    partition is kept); return each record's (partition, offset)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        max_request_size=max_request_size,
        max_batch_size=max(16384, min(max_request_size, 1 << 20)),
    )
    await producer.start()
    try:
        for _ in range(100):  # metadata of a topic created a moment ago can still be partial
            if await producer.partitions_for(topic):
                break
            await producer.client.force_metadata_update()
            await asyncio.sleep(0.1)
        futures = [
            await producer.send(topic, value, key=key, partition=partition)
            for partition, key, value in records
        ]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metas]


async def read_records(
    bootstrap: str, topic: str, isolation_level: str = "read_uncommitted", within_s: float = 60
) -> list[Record]:
    """Every record of ``topic`` up to its current end (the last stable offset for
    ``read_committed``), by position, so transaction markers cannot stall the read."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level=isolation_level,
        max_partition_fetch_bytes=4 * 1048576,
    )
    await consumer.start()
    out: list[Record] = []
    try:
        partitions = consumer.partitions_for_topic(topic)
        for _ in range(50):
            if partitions:
                break
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
            await asyncio.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in sorted(partitions or ())]
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        todo = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + within_s
        while todo:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end within {within_s}s")
            fetched = await consumer.getmany(*todo, timeout_ms=1000)
            for tp, batch in fetched.items():
                out.extend(
                    Record(r.partition, r.offset, r.timestamp, r.key, r.value, dict(r.headers))
                    for r in batch
                    if r.offset < ends[tp]
                )
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
    finally:
        await consumer.stop()
    out.sort(key=lambda r: (r.partition, r.offset))
    return out


async def delete_group(bootstrap: str, group: str) -> None:
    """Delete a consumer group and its committed offsets (kafka-consumer-groups --delete)."""
    from aiokafka.protocol.admin import DeleteGroupsRequest

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        node = await admin.find_coordinator(group)
        response = await admin._send_request_to_node(node, DeleteGroupsRequest([group]))
    finally:
        await admin.close()
    for name, code in response.results:
        assert code == 0, f"cannot delete group {name}: error {code}"
