"""The local broker for real: ``sluice dev broker`` as a process, and the pytest fixtures.

Checks what the rest of the suite relies on: the one ``ready`` line, a broker that Kafka
clients (kcat, aiokafka) can use, no JVM left after SIGTERM or after the parent is killed, and
a 3-node cluster that still takes acks=all writes after a node is killed and restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.devbroker import LocalCluster
from tests.harness import read_ready
from tests.kafka_fixtures import free_port_block

pytestmark = pytest.mark.integration

SLUICE = str(Path(sys.executable).with_name("sluice"))
READY_TIMEOUT = 60.0


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (killed, not yet reaped by init) counts as gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


def _kcat_brokers(bootstrap: str) -> list[tuple[int, str]]:
    out = subprocess.run(
        ["kcat", "-b", bootstrap, "-L", "-J", "-m", "15"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return sorted((b["id"], b["name"]) for b in json.loads(out)["brokers"])


def _pids(data_dir: Path, brokers: int) -> list[int]:
    return [int((data_dir / f"node-{i}.pid").read_text()) for i in range(1, brokers + 1)]


@pytest.mark.parametrize("brokers", [1, 3])
def test_dev_broker_ready_line_kcat_and_sigterm(brokers: int, tmp_path: Path) -> None:
    port = free_port_block(brokers)
    proc = subprocess.Popen(
        [
            SLUICE,
            "dev",
            "broker",
            "--port",
            str(port),
            "--brokers",
            str(brokers),
            "--data-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        expected = ",".join(f"127.0.0.1:{port + i}" for i in range(brokers))
        assert read_ready(proc, READY_TIMEOUT) == f"ready {expected}"
        pids = _pids(tmp_path, brokers)
        assert _kcat_brokers(f"127.0.0.1:{port}") == [
            (i + 1, f"127.0.0.1:{port + i}") for i in range(brokers)
        ]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert out == ""  # exactly one line on stdout, already read
        assert _wait_gone(pids, 5) == []
        assert not list(tmp_path.glob("*.pid"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_jvm_dies_with_a_killed_parent(tmp_path: Path) -> None:
    port = free_port_block(1)
    proc = subprocess.Popen(
        [SLUICE, "dev", "broker", "--port", str(port), "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        read_ready(proc, READY_TIMEOUT)
        pids = _pids(tmp_path, 1)
        proc.kill()  # kill -9: no handler, no finally, no atexit in the parent
        proc.wait()
        assert _wait_gone(pids, 10) == [], "the broker JVM outlived its killed parent"
    finally:
        for pid in _pids(tmp_path, 1) if (tmp_path / "node-1.pid").exists() else []:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_kafka_fixture_serves_aiokafka(kafka: LocalCluster) -> None:
    topic = f"devbroker-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, b"v1", key=b"k1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=f"g-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        record = await consumer.getone()
        await consumer.commit()
        assert (record.key, record.value, record.partition) == (b"k1", b"v1", meta.partition)
    finally:
        await consumer.stop()


async def test_cluster3_survives_kill_and_restart_of_a_node(kafka_cluster3: LocalCluster) -> None:
    topic = f"rf3-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_cluster3.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=3)])
    finally:
        await admin.close()

    old_pid = kafka_cluster3.pid_of(2)
    assert old_pid is not None
    kafka_cluster3.kill_node(2)
    assert kafka_cluster3.pid_of(2) is None and not _alive(old_pid)
    kafka_cluster3.start_node(2)
    assert kafka_cluster3.pid_of(2) not in (None, old_pid)

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_cluster3.bootstrap_servers, acks="all", request_timeout_ms=30000
    )
    await producer.start()
    try:
        for partition in range(3):
            meta = await producer.send_and_wait(topic, b"after-restart", partition=partition)
            assert meta.offset == 0
    finally:
        await producer.stop()
    assert [node for node, _ in _kcat_brokers(kafka_cluster3.bootstrap_servers)] == [1, 2, 3]


def test_ensure_running_resumes_a_frozen_node_and_restarts_a_dead_one(kafka_cluster3: LocalCluster) -> None:
    kafka_cluster3.ensure_running()
    frozen = kafka_cluster3.pid_of(1)
    kafka_cluster3.kill_node(1, signal.SIGSTOP)
    kafka_cluster3.kill_node(3)
    kafka_cluster3.ensure_running()
    assert kafka_cluster3.pid_of(1) == frozen
    assert "State:\tT" not in Path(f"/proc/{frozen}/status").read_text()
    assert kafka_cluster3.pid_of(3) is not None
