"""The local broker for real: ``sluice dev broker`` as a process, and the pytest fixtures.

Checks what the rest of the suite relies on: the one ``ready`` line, a broker that Kafka
clients (kcat, aiokafka) can use, no JVM left after SIGTERM or after the parent is killed, and
a 3-node cluster that still takes acks=all writes after a node is killed and restarted. Then
the failure rehearsal a developer runs by hand: ``stop``/``kill``/``start``/``status`` typed on
the command's stdin, a node JVM killed from outside, and an end of stdin that changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
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


# -- failure rehearsal: commands on the stdin of ``sluice dev broker`` --------------------------

_SAID = "sluice dev broker: "
_STATUS_RE = re.compile(r"sluice dev broker: node (\d) port (\d+) (?:running pid (\d+)|stopped)")
_ANSWER_TIMEOUT = 10.0


class _DevBroker:
    """``sluice dev broker`` as a subprocess: commands to its stdin, its stderr read line by line.

    A thread drains stderr into a queue, so that a test waits for one line with a timeout and
    can tell that a command got exactly one answer. ``close`` ends the command and every node
    JVM it ever reported, also when the test failed half-way.
    """

    def __init__(self, brokers: int, data_dir: Path) -> None:
        self.brokers = brokers
        self.port = free_port_block(brokers)
        self.data_dir = data_dir
        self.pids: set[int] = set()
        self._lines: queue.Queue[str] = queue.Queue()
        options = ["--port", str(self.port), "--brokers", str(brokers), "--data-dir", str(data_dir)]
        self.proc = subprocess.Popen(
            [SLUICE, "dev", "broker", *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._pump = threading.Thread(target=self._drain, daemon=True)

    def start(self) -> str:
        """Wait for the ready line and the banner after it; return the bootstrap servers."""
        ready = read_ready(self.proc, READY_TIMEOUT)
        self._pump.start()  # only now: read_ready reads stderr itself when start-up fails
        assert "commands on stdin: status, stop N, kill N, start N" in self.line()
        return ready.removeprefix("ready ")

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line.rstrip("\n"))

    def line(self, timeout: float = _ANSWER_TIMEOUT) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no stderr line from sluice dev broker within {timeout} s")

    def quiet(self) -> bool:
        """True when nothing more was said on stderr (the previous answers were complete)."""
        time.sleep(0.5)
        return self._lines.empty()

    def send(self, command: str, timeout: float = _ANSWER_TIMEOUT) -> str:
        """One command and its one answer line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.line(timeout)
        assert self.quiet(), f"more than one answer to {command!r}"
        return answer

    def status(self) -> dict[int, int | None]:
        """``status``: the pid of each running node, None for a stopped one."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("status\n")
        self.proc.stdin.flush()
        pids: dict[int, int | None] = {}
        for node_id in range(1, self.brokers + 1):
            match = _STATUS_RE.fullmatch(self.line())
            assert match is not None and int(match[1]) == node_id
            assert int(match[2]) == self.port + node_id - 1
            pids[node_id] = int(match[3]) if match[3] else None
        self.pids |= {pid for pid in pids.values() if pid is not None}
        return pids

    def terminate(self) -> tuple[int, str]:
        """SIGTERM, as a script ends the command: its exit code and what it printed on stdout."""
        assert self.proc.stdout is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        return code, self.proc.stdout.read()

    def close(self) -> None:
        """Kill the command, then any node JVM of its data dir still alive (normally none)."""
        for pid_file in self.data_dir.glob("node-*.pid"):
            with contextlib.suppress(OSError, ValueError):
                self.pids.add(int(pid_file.read_text()))
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.pids:
            with contextlib.suppress(OSError):
                if _alive(pid) and str(self.data_dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


async def _create_rf3_topic(bootstrap: str) -> str:
    """A topic of 3 partitions, RF 3, min ISR 2: acks=all writes need 2 of the 3 nodes."""
    topic = f"rehearsal-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        config = {"min.insync.replicas": "2"}
        await admin.create_topics([NewTopic(topic, 3, 3, topic_configs=config)])
    finally:
        await admin.close()
    return topic


async def _write_each_partition(bootstrap: str, topic: str) -> list[int]:
    """One acks=all record to each partition of ``topic``; the offsets they got."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=30000)
    await producer.start()
    try:
        for _ in range(100):  # metadata of a topic created a moment ago can still be partial
            if len(await producer.partitions_for(topic)) == 3:
                break
            await producer.client.force_metadata_update()
            await asyncio.sleep(0.1)
        return [(await producer.send_and_wait(topic, b"v", partition=p)).offset for p in range(3)]
    finally:
        await producer.stop()


@pytest.mark.cluster3
def test_dev_broker_commands_kill_and_restart_a_node(tmp_path: Path) -> None:
    broker = _DevBroker(3, tmp_path)
    try:
        bootstrap = broker.start()
        topic = asyncio.run(_create_rf3_topic(bootstrap))
        before = broker.status()
        killed = before[2]
        assert killed is not None and None not in before.values()

        answer = broker.send("kill 2")
        assert answer == f"{_SAID}node 2 killed (SIGKILL); still running: 1, 3; 'start 2' restarts it"
        assert not _alive(killed)
        assert asyncio.run(_write_each_partition(bootstrap, topic)) == [0, 0, 0]
        assert broker.status() == {1: before[1], 2: None, 3: before[3]}

        assert broker.send("reboot 2").startswith(f"{_SAID}unknown command 'reboot 2'; commands: ")
        assert broker.send("kill 4") == f"{_SAID}kill needs one node id of 1, 2, 3, not 4"
        assert broker.send("stop 2") == f"{_SAID}node 2 is not running"

        answer = broker.send("start 2", timeout=READY_TIMEOUT)
        assert re.fullmatch(rf"{_SAID}node 2 running again \(pid \d+\)", answer), answer
        after = broker.status()
        assert after[1] == before[1] and after[3] == before[3]
        assert after[2] not in (None, killed)
        assert [node for node, _ in _kcat_brokers(bootstrap)] == [1, 2, 3]
        assert asyncio.run(_write_each_partition(bootstrap, topic)) == [1, 1, 1]

        assert broker.proc.stdin is not None
        broker.proc.stdin.close()  # end of input: the commands end, the cluster does not
        time.sleep(2)
        assert broker.proc.poll() is None
        assert asyncio.run(_write_each_partition(bootstrap, topic)) == [2, 2, 2]

        code, out = broker.terminate()
        assert (code, out) == (0, "")  # stdout: the ready line, already read, and nothing else
        assert broker.quiet()
        assert _wait_gone(sorted(broker.pids), 5) == []
    finally:
        broker.close()


@pytest.mark.cluster3
def test_dev_broker_keeps_serving_when_a_node_is_killed_from_outside(tmp_path: Path) -> None:
    broker = _DevBroker(3, tmp_path)
    try:
        bootstrap = broker.start()
        topic = asyncio.run(_create_rf3_topic(bootstrap))
        before = broker.status()
        victim = before[3]
        assert victim is not None

        os.kill(victim, signal.SIGKILL)
        assert broker.line() == (
            f"{_SAID}node 3 (port {broker.port + 2}) exited unexpectedly (killed by SIGKILL); "
            f"still running: 1, 2; 'start 3' restarts it (log: {tmp_path / 'node-3.log'})"
        )
        assert broker.quiet() and broker.proc.poll() is None
        assert asyncio.run(_write_each_partition(bootstrap, topic)) == [0, 0, 0]
        assert broker.status() == {1: before[1], 2: before[2], 3: None}

        assert broker.send("start 3", timeout=READY_TIMEOUT).startswith(f"{_SAID}node 3 running again")
        assert broker.send("stop 1", timeout=30) == (
            f"{_SAID}node 1 stopped (SIGTERM); still running: 2, 3; 'start 1' restarts it"
        )
        assert asyncio.run(_write_each_partition(bootstrap, topic)) == [1, 1, 1]
        assert broker.status()[1] is None

        code, out = broker.terminate()
        assert (code, out) == (0, "")
        assert _wait_gone(sorted(broker.pids), 5) == []
    finally:
        broker.close()


def test_dev_broker_with_one_node_exits_1_when_it_dies(tmp_path: Path) -> None:
    broker = _DevBroker(1, tmp_path)
    try:
        broker.start()
        pid = broker.status()[1]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert broker.proc.wait(timeout=30) == 1
        assert broker.line() == (
            f"sluice: Kafka node 1 exited unexpectedly (killed by SIGKILL); see {tmp_path / 'node-1.log'}"
        )
        assert broker.quiet()
    finally:
        broker.close()
