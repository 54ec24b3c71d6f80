"""``faust -A service.main worker`` and ``sluice worker`` are one worker (issue 14).

The two take over from each other on one data directory while working through a backlog:
``faust -A`` is killed with SIGKILL part-way, ``sluice worker`` goes on and is killed too,
``faust -A`` finishes. The wordcount table — in the changelog (what an empty disk recovers)
and in the last worker's RocksDB — equals ``collections.Counter`` of the lines produced.
The module ``faust -A`` loads builds the app from the environment at import, with the
built-in jobs' agents and tables (checked in a fresh interpreter, as ``faust`` imports it).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.devbroker import LocalCluster
from tests.harness import (
    FAUST_WORKER,
    Stack,
    WorkerProcess,
    changelog_table,
    create_topic,
    diff,
    group_offsets,
    local_table,
    produce_records,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

VOCAB = [f"w{i}" for i in range(300)] + ["the", "café", "x_y", "42"]
LINES = 40_000


@pytest.fixture
def stack(kafka: LocalCluster, tmp_path: Path) -> Iterator[Stack]:
    # 4 x 600 lines/s: the backlog takes ~17 s, so each kill lands part-way through it.
    paced = {"SLUICE_MAX_RATE_PER_PARTITION": "600"}
    with Stack(kafka.bootstrap_servers, tmp_path, jobs=("wordcount",), **paced) as s:
        yield s


def committed_lines(stack: Stack) -> int:
    done, _ = asyncio.run(group_offsets(stack.bootstrap, stack.app_id, [stack.inputs["wordcount"]]))
    return sum(done.values())


def run_until(stack: Stack, worker: WorkerProcess, lines: int) -> None:
    worker.start()
    worker.wait_ready(90)
    wait_until(lambda: committed_lines(stack) >= lines, 120, f"{lines} lines committed", [worker])


def test_faust_a_and_sluice_worker_take_over_from_each_other_across_kill_9(stack: Stack) -> None:
    rng = random.Random(14)
    lines = [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(0, 12))) for _ in range(LINES)]
    truth: Counter[str] = Counter()
    for line in lines:
        truth.update(re.findall(r"\w+", line.lower()))
    topic = stack.inputs["wordcount"]
    records = [(i % 4, None, line.encode()) for i, line in enumerate(lines)]
    asyncio.run(create_topic(stack.bootstrap, topic, 4))
    asyncio.run(produce_records(stack.bootstrap, topic, records))

    first = stack.worker("w", FAUST_WORKER)
    run_until(stack, first, LINES // 4)
    assert first.kill(signal.SIGKILL) == -signal.SIGKILL
    second = stack.worker("w")  # the same data directory
    run_until(stack, second, LINES // 2)
    assert second.kill(signal.SIGKILL) == -signal.SIGKILL
    third = stack.worker("w", FAUST_WORKER)
    third.start()
    third.wait_ready(90)
    stack.caught_up(alive=[third], timeout=180)
    assert third.kill(signal.SIGTERM) == 0, third.tail()

    expected = dict(truth)
    changelog = changelog_table(stack.bootstrap, stack.app_id, "wordcount")
    assert changelog == expected, "changelog: " + diff(expected, changelog)
    local = local_table(stack.tmp / "w", "wordcount")
    assert local == expected, "RocksDB: " + diff(expected, local)


def test_service_main_is_the_faust_app_with_the_jobs_agents_and_tables(tmp_path: Path) -> None:
    probe = (
        "import json, faust, service.main as m; assert isinstance(m.app, faust.App); "
        "print(json.dumps([sorted(m.app.agents), sorted(m.app.tables)]))"
    )
    env = {
        **os.environ,
        "SLUICE_JOBS": "wordcount,rollup,tokenize",
        "SLUICE_DATA_DIR": str(tmp_path / "data"),
    }
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    agents, tables = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"wordcount", "wordcount-count", "tokenize"} <= set(agents), agents
    assert {"wordcount", "rollup_totals", "rollup_windows"} <= set(tables), tables
