"""Issue 8: scaling out and in under traffic; every partition has exactly one live owner.

Eight partitions per topic. One worker, then two, then three while traffic flows; then one is
killed with SIGKILL and one stopped with SIGTERM. After every step, once the group is stable,
the group's member assignments (DescribeGroups, decoded) must give each partition of the input
and repartition topics to exactly one member, every member must be a live worker (matched by
the pid in its client id) and every live worker a member, and each worker's own
``sluice_assigned_partitions`` must equal what the group gave it. At the end the tables equal
the truth folded from the produced input, in the changelog and in the survivor's RocksDB.

``SLUICE_MEASURE=1`` adds a measurement (no assertion on time): median time from a worker
joining a running one until every partition is owned again and both answer ``/readyz`` 200.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import statistics
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from tests.fault.test_exact_state import Deployment
from tests.fault.workload import Traffic
from tests.harness import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.fault]

PARTITIONS = 8


@dataclass
class GroupView:
    state: str
    owners: dict[int, list[tuple[str, int]]]  # worker pid -> assigned partitions
    unknown_members: list[str]  # client ids that are no worker's

    def owner_count(self) -> Counter[tuple[str, int]]:
        return Counter(tp for tps in self.owners.values() for tp in tps)


async def describe(bootstrap: str, group: str) -> GroupView:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = (await admin.describe_consumer_groups([group]))[0]
    finally:
        await admin.close()
    described = response.to_object()["groups"][0]
    owners: dict[int, list[tuple[str, int]]] = {}
    unknown = []
    for member in described["members"]:
        client = member["client_id"]
        pid = client.rsplit("-", 1)[-1]
        if not client.startswith(group + "-") or not pid.isdigit():
            unknown.append(client)
            continue
        tps = owners.setdefault(int(pid), [])
        if member["member_assignment"]:
            assignment = ConsumerProtocolMemberAssignment.decode(member["member_assignment"])
            tps.extend((topic, p) for topic, parts in assignment.assignment for p in parts)
    return GroupView(described["state"], owners, unknown)


def gauge(worker: WorkerProcess, name: str) -> dict[str, float]:
    """Samples of ``name`` on a worker's /metrics: {label text: value}."""
    status, text = worker.get("/metrics")
    assert status == 200
    return {
        m.group(1) or "": float(m.group(2))
        for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M)
    }


def wait_owned_once(d: Deployment, live: list[WorkerProcess], timeout: float = 90) -> float:
    """Wait until the group is stable with exactly ``live`` and each partition owned once.

    Returns the seconds it took. Fails with the last view of the group and of the workers.
    """
    expected = {(topic, p) for topic in d.topics() for p in range(PARTITIONS)}
    pids = {w.proc.pid for w in live if w.proc is not None}
    started = time.monotonic()
    problem = "never described"
    while time.monotonic() - started < timeout:
        for w in live:
            assert w.alive(), f"worker {w.data_dir.name} died:\n{w.tail()}"
        view = asyncio.run(describe(d.bootstrap, d.app_id))
        counts = view.owner_count()
        if view.state != "Stable":
            problem = f"group state {view.state}"
        elif view.unknown_members:
            problem = f"members that are no worker: {view.unknown_members}"
        elif set(view.owners) != pids:
            problem = f"member pids {sorted(view.owners)} != live worker pids {sorted(pids)}"
        elif set(counts) != expected or any(n != 1 for n in counts.values()):
            doubled = sorted(tp for tp, n in counts.items() if n > 1)
            missing, extra = sorted(expected - set(counts)), sorted(set(counts) - expected)
            problem = f"missing {missing}, doubled {doubled}, extra {extra}"
        else:
            problem = _workers_disagree(live, view)
            if not problem:
                return time.monotonic() - started
        time.sleep(0.3)
    raise AssertionError(f"after {timeout}s: {problem}")


def _workers_disagree(live: list[WorkerProcess], view: GroupView) -> str:
    """'' when every worker is ready and its own gauge counts what the group gave it."""
    for w in live:
        status, body = w.get("/readyz")
        if status != 200:
            return f"worker {w.data_dir.name} not ready: {body}"
        assert w.proc is not None
        own = gauge(w, "sluice_assigned_partitions").get("", -1)
        given = len(view.owners[w.proc.pid])
        if own != given:
            return f"worker {w.data_dir.name} reports {own} partitions, the group gave it {given}"
    return ""


@pytest.fixture
def deployment(kafka, tmp_path):  # type: ignore[no-untyped-def]
    d = Deployment(kafka.bootstrap_servers, tmp_path)
    d.env["SLUICE_TOPIC_PARTITIONS"] = str(PARTITIONS)
    try:
        yield d
    finally:
        d.stop_all()


def test_scale_out_and_in_each_partition_one_owner(deployment: Deployment) -> None:
    d = deployment
    a = d.worker("a").start()
    a.wait_ready()
    traffic = Traffic(d.bootstrap, d.lines, d.events, seed=8, rate=200).start()
    steps: list[tuple[str, float]] = []
    try:
        steps.append(("1 worker", wait_owned_once(d, [a])))
        b = d.worker("b").start()
        steps.append(("+b: 2 workers", wait_owned_once(d, [a, b])))
        c = d.worker("c").start()
        steps.append(("+c: 3 workers", wait_owned_once(d, [a, b, c])))
        time.sleep(1)
        b.kill(signal.SIGKILL)
        steps.append(("kill -9 b", wait_owned_once(d, [a, c])))
        started = time.monotonic()
        assert c.kill(signal.SIGTERM) == 0, c.tail()
        print(f"SIGTERM c: exited in {time.monotonic() - started:.2f}s")
        steps.append(("SIGTERM c", wait_owned_once(d, [a])))
        time.sleep(1)
    finally:
        truth = traffic.stop()
    print("stable after: " + ", ".join(f"{step} {t:.1f}s" for step, t in steps))
    d.caught_up()
    assert a.kill(signal.SIGTERM) == 0, a.tail()
    assert truth.lines > 0 and truth.events > 0
    # a owns every partition again: its RocksDB must hold the whole table, exactly.
    d.check_tables(truth.words, truth.totals, a.data_dir)


@pytest.mark.skipif(not os.environ.get("SLUICE_MEASURE"), reason="a measurement: SLUICE_MEASURE=1")
def test_measure_rebalance_time(deployment: Deployment) -> None:
    d = deployment
    rounds = int(os.environ.get("SLUICE_MEASURE_ROUNDS", "5"))
    a = d.worker("a").start()
    a.wait_ready()
    traffic = Traffic(d.bootstrap, d.lines, d.events, seed=9, rate=200).start()
    joins = []
    try:
        wait_owned_once(d, [a])
        for i in range(rounds):
            b = d.worker(f"b{i}").start()
            joins.append(wait_owned_once(d, [a, b]))
            assert b.kill(signal.SIGTERM) == 0, b.tail()
            wait_owned_once(d, [a])
    finally:
        traffic.stop()
    print(f"rebalance (start of a 2nd worker -> all owned, both ready): {[round(t, 2) for t in joins]}")
    print(f"median {statistics.median(joins):.2f}s over {len(joins)}")


def test_revoked_partitions_leave_the_partition_gauges(deployment: Deployment) -> None:
    """After a rebalance a worker exports lag and offsets only for partitions it still owns.

    A partition that moved keeps its last values on its previous owner otherwise: summed over
    workers (the dashboard's "Total lag", the SluiceNoCommits alert's lag term) it is counted
    twice, and frozen.
    """
    d = deployment
    a = d.worker("a").start()
    a.wait_ready()
    traffic = Traffic(d.bootstrap, d.lines, d.events, seed=10, rate=200).start()
    try:
        time.sleep(4)  # a processes, commits and refreshes lag on every partition
        b = d.worker("b").start()
        wait_owned_once(d, [a, b])
        time.sleep(3)  # a lag refresh (every 2.5 s) on both
        view = asyncio.run(describe(d.bootstrap, d.app_id))
    finally:
        traffic.stop()
    stale = {}
    for w in (a, b):
        assert w.proc is not None
        owned = set(view.owners[w.proc.pid])
        for name in ("sluice_consumer_lag", "sluice_committed_offset", "sluice_log_end_offset"):
            exported = {_tp(labels) for labels in gauge(w, name)}
            if exported - owned:
                stale[f"{w.data_dir.name} {name}"] = sorted(exported - owned)
    assert not stale, f"gauges of partitions the worker no longer owns: {stale}"


def _tp(labels: str) -> tuple[str, int]:
    pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
    return pairs["topic"], int(pairs["partition"])
