"""``sluice topics describe`` on a 3-broker cluster: replicas, ISR, and a leader that moves."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.cluster3]

SLUICE = Path(sys.executable).with_name("sluice")


def sluice(bootstrap: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    proc = subprocess.run(
        [str(SLUICE), *args, "--bootstrap-server", bootstrap],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def partitions(describe_output: str) -> dict[int, tuple[int | None, list[int], list[int]]]:
    """partition -> (leader, replicas, isr) from the PARTITION table of ``topics describe``."""
    lines = describe_output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("PARTITION"))
    table: dict[int, tuple[int | None, list[int], list[int]]] = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        partition, leader, replicas, isr, _offline = line.split()

        def ids(cell: str) -> list[int]:
            return [] if cell == "-" else [int(n) for n in cell.split(",")]

        table[int(partition)] = (None if leader == "none" else int(leader), ids(replicas), ids(isr))
    return table


def test_describe_shows_replicas_isr_and_a_new_leader_after_a_kill(kafka_cluster3) -> None:  # type: ignore[no-untyped-def]
    cluster = kafka_cluster3
    topic = f"cli-rf3-{uuid.uuid4().hex[:10]}"
    sluice(
        cluster.bootstrap_servers, "topics", "create", topic, "--partitions", "3", "--replication-factor", "3"
    )

    before = partitions(sluice(cluster.bootstrap_servers, "topics", "describe", topic))
    nodes = sorted(cluster.node_ids)
    assert sorted(before) == [0, 1, 2]
    for leader, replicas, isr in before.values():
        assert sorted(replicas) == nodes
        assert sorted(isr) == nodes
        assert leader in replicas

    old_leader = before[0][0]
    assert old_leader is not None
    survivors = [n for n in nodes if n != old_leader]
    survivors_bootstrap = ",".join(f"127.0.0.1:{cluster.port_of(n)}" for n in survivors)
    cluster.kill_node(old_leader)
    try:
        deadline = time.monotonic() + 15
        while True:
            after = partitions(sluice(survivors_bootstrap, "topics", "describe", topic))
            leader, replicas, isr = after[0]
            if leader is not None and leader != old_leader:
                break
            assert time.monotonic() < deadline, f"partition 0 still led by {leader} after 15 s"
            time.sleep(0.5)
        assert leader in survivors
        assert sorted(replicas) == nodes  # the assignment stays, the dead replica leaves the ISR
        assert old_leader not in isr
    finally:
        cluster.start_node(old_leader)
