"""After an assignment, processing starts at the resume position (G4).

The resume rule (group offset against the tables' offset) decides where a partition starts.
Records the consumer fetched from another position before that decision — the group's
committed offset, or the log start when the group has none — must not be processed: that
would lose the records in between, move stored positions backwards, or re-apply what the
tables hold. ``SLUICE_MAX_BATCH=50`` with several hundred records per partition makes every
such early fetch a strict part of the partition.

(a) Group offsets moved past the tables' (``sluice offsets reset --to offset:<log end>``) and
    ``SLUICE_ON_OFFSET_AHEAD=table``: the worker re-reads the gap; the table equals the truth,
    each line applied once (no skipped duplicates), and the audit is clean afterwards. Once
    with the reset at the log end, once with more lines arriving after the reset.
(b) The group deleted, no new input: the restart resumes from the tables and re-applies
    nothing (``sluice_duplicates_skipped_total`` stays 0); afterwards the audit finds no
    partition ahead of the tables, a second restart starts normally and the table is exact.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from service.devbroker import LocalCluster
from tests.harness import (
    SLUICE,
    Stack,
    WorkerProcess,
    changelog_table,
    delete_group,
    diff,
    group_offsets,
    metric_total,
    produce_records,
    scrape,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

VOCAB = [f"w{i}" for i in range(150)] + ["The", "the", "café", "x_y", "42"]
PER_PARTITION = 400  # lines per partition and round: several times SLUICE_MAX_BATCH


def tokens(line: str) -> Counter[str]:
    return Counter(re.findall(r"\w+", line.lower()))


@pytest.fixture
def stack(kafka: LocalCluster, tmp_path: Path) -> Iterator[Stack]:
    with Stack(kafka.bootstrap_servers, tmp_path, jobs=("wordcount",), SLUICE_MAX_BATCH="50") as s:
        yield s


def send_round(stack: Stack, seed: int, truth: Counter[str]) -> None:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 12))) for _ in range(4 * PER_PARTITION)]
    asyncio.run(
        produce_records(
            stack.bootstrap,
            stack.inputs["wordcount"],
            [(i % 4, None, ln.encode()) for i, ln in enumerate(lines)],
        )
    )
    for line in lines:
        truth.update(tokens(line))


def run_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SLUICE, *args, "--bootstrap-server", stack.bootstrap],
        env={**os.environ, "SLUICE_APP_ID": stack.app_id, **stack.worker_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )


def verdicts(audit_stdout: str) -> dict[tuple[str, int], str]:
    rows = {}
    for line in audit_stdout.splitlines()[1:]:
        cells = line.split()
        if len(cells) >= 3 and cells[1].isdigit():
            rows[(cells[0], int(cells[1]))] = cells[-1]
    return rows


def duplicates(worker: WorkerProcess) -> float:
    return metric_total(scrape(worker), "sluice_duplicates_skipped_total")


def log_size(worker: WorkerProcess) -> int:
    return worker.log_path.stat().st_size if worker.log_path.exists() else 0


def resume_reasons(worker: WorkerProcess, topic: str, since: int) -> dict[int, str]:
    """The first resume verdict the worker logged per partition of ``topic`` (its first
    assignment), reading its log from byte ``since`` (the log file is shared by restarts)."""
    reasons: dict[int, str] = {}
    with worker.log_path.open("rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    for line in text.splitlines():
        if '"resume position"' in line and f'"topic":"{topic}"' in line:
            partition = re.search(r'"partition":(\d+)', line)
            reason = re.search(r'"reason":"([^"]+)"', line)
            if partition and reason:
                reasons.setdefault(int(partition.group(1)), reason.group(1))
    return reasons


@pytest.mark.parametrize("more_after_reset", [False, True], ids=["reset-to-log-end", "input-after-reset"])
def test_group_reset_past_the_tables_rereads_the_gap(stack: Stack, more_after_reset: bool) -> None:
    """``input-after-reset``: lines also arrive after the reset, so the group's offset is no longer
    the log end: a fetch from it returns records that lie after the gap."""
    truth: Counter[str] = Counter()
    lines_topic = stack.inputs["wordcount"]
    w = stack.worker("w").start()
    w.wait_ready()
    send_round(stack, 1, truth)
    stack.caught_up(alive=[w])
    assert w.kill(signal.SIGTERM) == 0, w.tail()

    send_round(stack, 2, truth)  # the gap: the tables hold none of it
    _, ends = asyncio.run(group_offsets(stack.bootstrap, stack.app_id, [lines_topic]))
    for p in range(4):
        end = ends[TopicPartition(lines_topic, p)]
        assert end == 2 * PER_PARTITION
        reset = run_cli(
            stack,
            "offsets",
            "reset",
            "--to",
            f"offset:{end}",
            "--topic",
            lines_topic,
            "--partition",
            str(p),
            "--yes",
        )
        assert reset.returncode == 0, reset.stdout + reset.stderr
    audit = run_cli(stack, "offsets", "audit")
    rows = verdicts(audit.stdout)
    assert audit.returncode == 1 and all(
        rows.get((lines_topic, p)) == "group-ahead-of-table" for p in range(4)
    ), audit.stdout + audit.stderr
    if more_after_reset:
        send_round(stack, 3, truth)

    w2 = stack.worker("w", SLUICE_ON_OFFSET_AHEAD="table")
    since = log_size(w2)
    w2.start()
    w2.wait_ready(90)
    stack.caught_up(alive=[w2])
    skipped = duplicates(w2)
    assert w2.kill(signal.SIGTERM) == 0, w2.tail()
    reasons = resume_reasons(w2, lines_topic, since)
    assert reasons == dict.fromkeys(range(4), "group-ahead-of-table"), reasons
    problems = []
    words = changelog_table(stack.bootstrap, stack.app_id, "wordcount")
    if words != dict(truth):
        problems.append("wordcount table (the gap must be counted): " + diff(dict(truth), words))
    # The tables held none of the gap: reading it from the tables' offset applies each line once.
    if skipped != 0:
        problems.append(f"sluice_duplicates_skipped_total = {skipped}: lines were applied twice")
    audit = run_cli(stack, "offsets", "audit")
    if audit.returncode != 0:
        problems.append(
            f"offsets audit after the restart exited {audit.returncode}:\n{audit.stdout}{audit.stderr}"
        )
    assert not problems, "\n".join(problems)


def test_deleted_group_resumes_from_the_tables_without_reapplying(stack: Stack) -> None:
    truth: Counter[str] = Counter()
    lines_topic = stack.inputs["wordcount"]
    w = stack.worker("w").start()
    w.wait_ready()
    send_round(stack, 3, truth)
    stack.caught_up(alive=[w])
    assert w.kill(signal.SIGTERM) == 0, w.tail()
    asyncio.run(delete_group(stack.bootstrap, stack.app_id))
    done, _ = asyncio.run(group_offsets(stack.bootstrap, stack.app_id, stack.sources()))
    assert done == {}, f"the group still has offsets: {done}"

    # Restart with no new input: nothing may be applied again.
    w2 = stack.worker("w")
    since = log_size(w2)
    w2.start()
    w2.wait_ready(90)
    stack.caught_up(alive=[w2])  # the restart commits its resume positions
    time.sleep(3)  # a few commit intervals and fetches with nothing new to do
    skipped = duplicates(w2)
    assert w2.alive(), w2.tail()
    assert w2.kill(signal.SIGTERM) == 0, w2.tail()
    reasons = resume_reasons(w2, lines_topic, since)
    problems = []
    if reasons != dict.fromkeys(range(4), "group-missing"):
        problems.append(f"resume verdicts of {lines_topic}: {reasons}")
    if skipped != 0:
        problems.append(f"sluice_duplicates_skipped_total = {skipped} after a restart with no new input")
    audit = run_cli(stack, "offsets", "audit")
    if audit.returncode != 0:
        problems.append(f"offsets audit exited {audit.returncode}:\n{audit.stdout}{audit.stderr}")
    assert not problems, "\n".join(problems)

    # A second restart starts normally and the table is still exact.
    w3 = stack.worker("w").start()
    w3.wait_ready(90)
    stack.caught_up(alive=[w3])
    assert w3.kill(signal.SIGTERM) == 0, w3.tail()
    words = changelog_table(stack.bootstrap, stack.app_id, "wordcount")
    assert words == dict(truth), "wordcount table: " + diff(dict(truth), words)
