"""G8: only the owner writes.

Two workers of one app, four partitions, a 50-word vocabulary so both update the same words.
Worker A commits only every 60 s, so it holds table changes that are neither in the changelog
nor committed; B commits every 100 ms. A is stopped with SIGSTOP while it holds them — either
after applying all it was given (``idle``) or in the middle of a backlog, with fetched records
in memory and possibly a batch or transaction in flight (``busy``). B takes every partition
over after the session timeout and moves on (more lines for the same words, committed), then
A is continued: whatever A still had pending — or does before it learns that it was expelled —
must not reach the changelog, the outputs or the group's offsets. The wordcount table rebuilt
from the changelog must equal the Counter of every produced line, key by key, in both
processing modes; in ``exactly_once`` a ``read_committed`` reader of ``word-counts`` must also
see each word's counts never decrease and end at the truth. A must rejoin and both must stop
cleanly (exit 0) on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from service.devbroker import LocalCluster
from tests.fault.test_scale import describe
from tests.harness import (
    Stack,
    WorkerProcess,
    changelog_table,
    diff,
    group_offsets,
    metric_samples,
    metric_total,
    produce_records,
    read_records,
    scrape,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

VOCAB = [f"v{i}" for i in range(50)]
PARTITIONS = 4
BACKLOG = 24_000  # lines in the "busy" case: seconds of work for A with SLUICE_MAX_BATCH=20


def tokens(line: str) -> Counter[str]:
    return Counter(re.findall(r"\w+", line.lower()))


def send(stack: Stack, seed: int, n: int, truth: Counter[str]) -> None:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(VOCAB) for _ in range(8)) for _ in range(n)]
    topic = stack.inputs["wordcount"]
    asyncio.run(
        produce_records(
            stack.bootstrap, topic, [(i % PARTITIONS, None, ln.encode()) for i, ln in enumerate(lines)]
        )
    )
    for line in lines:
        truth.update(tokens(line))


def processed(worker: WorkerProcess, topic: str) -> dict[int, float]:
    """Input records of ``topic`` the worker's wordcount job finished, per partition."""
    return {
        int(labels["partition"]): value
        for labels, value in metric_samples(scrape(worker), "sluice_events_processed_total")
        if labels.get("topic") == topic and labels.get("job") == "wordcount"
    }


def ready(worker: WorkerProcess) -> bool:
    try:
        return worker.get("/readyz")[0] == 200
    except OSError:
        return False


def gauge(worker: WorkerProcess, name: str) -> float:
    try:
        return metric_total(scrape(worker), name)
    except (OSError, AssertionError):
        return -1


def latest_counts(stack: Stack, isolation_level: str) -> list[tuple[str, int]]:
    """(word, count) of every word-counts record in log order (a word lives in one partition)."""
    records = asyncio.run(read_records(stack.bootstrap, stack.outputs["wordcount"], isolation_level))
    out = []
    for r in records:
        doc = json.loads(r.value or b"null")
        out.append((doc["word"], doc["count"]))
    return out


def outputs_show(stack: Stack, truth: Counter[str]) -> bool:
    """Every word's last output (read_uncommitted: also what an open transaction holds) is its
    count in ``truth``: both workers have applied everything produced so far."""
    last = dict(latest_counts(stack, "read_uncommitted"))
    return last == dict(truth)


def settle(stack: Stack, workers: list[WorkerProcess], problems: list[str]) -> list[WorkerProcess]:
    """Wait until the live workers have committed everything; a worker that exits meanwhile is
    a problem (with its last words), and the others carry on. Returns the live ones."""
    live = [w for w in workers if w.alive()]
    while True:
        for w in workers:
            if not w.alive() and not any(p.startswith(f"worker {w.data_dir.name} ") for p in problems):
                said = " / ".join(w.tail(3).splitlines()[-2:])
                code = w.proc.returncode if w.proc is not None else None
                problems.append(f"worker {w.data_dir.name} exited {code} after A was continued: {said}")
        live = [w for w in workers if w.alive()]
        if not live:
            return live
        try:
            stack.caught_up(alive=live, timeout=150)
            return live
        except AssertionError:
            if all(w.alive() for w in live):
                raise


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["idle", "busy"])
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_stopped_worker_never_overwrites_the_new_owner(
    kafka: LocalCluster, tmp_path: Path, guarantee: str, moment: str
) -> None:
    """``idle``: A has applied everything it was given and holds it uncommitted (60 s commit
    interval). ``busy``: A is stopped in the middle of a backlog (fetched records in memory,
    a batch or transaction possibly in flight)."""
    stack = Stack(
        kafka.bootstrap_servers,
        tmp_path,
        jobs=("wordcount",),
        SLUICE_PROCESSING_GUARANTEE=guarantee,
        SLUICE_SESSION_TIMEOUT_MS="6000",
        SLUICE_MAX_BATCH="20",  # many small batches: a zombie's next batch is a strict prefix
    )
    lines_topic, rep = stack.inputs["wordcount"], stack.repartition("wordcount")
    every = 2 * PARTITIONS  # partitions of the input and of the repartition topic
    truth: Counter[str] = Counter()
    try:
        a = stack.worker("a", SLUICE_COMMIT_INTERVAL_MS="60000").start()
        a.wait_ready()
        send(stack, 1, 400, truth)
        wait_until(lambda: outputs_show(stack, truth), 60, "A applied the first lines", [a])

        b = stack.worker("b", SLUICE_COMMIT_INTERVAL_MS="100").start()
        b.wait_ready()

        def split() -> bool:
            na, nb = gauge(a, "sluice_assigned_partitions"), gauge(b, "sluice_assigned_partitions")
            return na > 0 and nb > 0 and na + nb == every and ready(a) and ready(b)

        wait_until(split, 90, "A and B share the partitions", [a, b])
        assert a.proc is not None
        view = asyncio.run(describe(stack.bootstrap, stack.app_id))
        owned = {TopicPartition(t, p) for t, p in view.owners.get(a.proc.pid, [])}
        assert {tp.topic for tp in owned} == {lines_topic, rep}, f"A owns {owned}"
        mine = sorted(tp.partition for tp in owned if tp.topic == lines_topic)
        rebalances = gauge(a, "sluice_rebalances_total")
        if moment == "idle":
            # A applies the second lines and holds them: outputs sent, rows and offsets not durable.
            send(stack, 2, 400, truth)
            wait_until(lambda: outputs_show(stack, truth), 60, "A and B applied the second lines", [a, b])
            committed, ends = asyncio.run(group_offsets(stack.bootstrap, stack.app_id, [lines_topic, rep]))
            held = {tp: (committed.get(tp, 0), ends[tp]) for tp in owned if committed.get(tp, 0) < ends[tp]}
            print(f"{guarantee}/idle: A owns {sorted(owned)}; committed < log end (markers count): {held}")
            if guarantee == "at_least_once":
                assert any(tp.topic == rep for tp in held), (
                    f"A holds no unflushed table changes: committed {committed}, ends {ends}"
                )
            os.kill(a.proc.pid, signal.SIGSTOP)
        else:
            # A is stopped in the middle of a backlog: batches fetched, in flight or not yet durable.
            base = processed(a, lines_topic)
            _, before = asyncio.run(group_offsets(stack.bootstrap, stack.app_id, [lines_topic]))
            send(stack, 2, BACKLOG, truth)
            _, after = asyncio.run(group_offsets(stack.bootstrap, stack.app_id, [lines_topic]))
            share = sum(
                after[TopicPartition(lines_topic, p)] - before[TopicPartition(lines_topic, p)] for p in mine
            )
            progress: dict[int, float] = {}

            def mid_backlog() -> bool:
                progress.clear()
                progress.update(processed(a, lines_topic))
                return sum(progress.get(p, 0) - base.get(p, 0) for p in mine) >= 0.1 * share

            wait_until(mid_backlog, 60, "A is in the middle of its backlog", [a, b])
            os.kill(a.proc.pid, signal.SIGSTOP)
            done = sum(progress.get(p, 0) - base.get(p, 0) for p in mine)
            committed, _ = asyncio.run(group_offsets(stack.bootstrap, stack.app_id, [lines_topic]))
            print(f"{guarantee}/busy: A stopped after {done} of its {share} lines; committed {committed}")
            assert done < share, f"A processed its whole share ({share} lines) before it was stopped"
            if guarantee == "at_least_once":
                assert any(
                    committed.get(TopicPartition(lines_topic, p), 0) < progress.get(p, 0) for p in mine
                ), f"A holds no unflushed changes: processed {progress}, committed {committed}"

        wait_until(
            lambda: gauge(b, "sluice_assigned_partitions") == every and ready(b),
            90,
            "B owns every partition",
            [b],
        )
        send(stack, 3, 800, truth)  # the same words: B moves every row A holds past A's version
        stack.caught_up(alive=[b])

        os.kill(a.proc.pid, signal.SIGCONT)
        problems: list[str] = []

        def rejoined() -> bool:
            if not (a.alive() and b.alive()):
                return True  # reported below
            na, nb = gauge(a, "sluice_assigned_partitions"), gauge(b, "sluice_assigned_partitions")
            return (
                gauge(a, "sluice_rebalances_total") > rebalances
                and na + nb == every
                and ready(a)
                and ready(b)
            )

        wait_until(rejoined, 90, "A rejoined the group")
        send(stack, 4, 400, truth)
        live = settle(stack, [a, b], problems)  # A commits every 60 s
        for w in live:
            assert w.kill(signal.SIGTERM) == 0, w.tail()

        words = changelog_table(stack.bootstrap, stack.app_id, "wordcount")
        if words != dict(truth):
            problems.append("changelog wordcount: " + diff(dict(truth), words))
        if guarantee == "exactly_once":
            last: dict[str, int] = {}
            decreases = []
            for word, count in latest_counts(stack, "read_committed"):
                if count < last.get(word, 0):
                    decreases.append((word, last[word], count))
                last[word] = count
            if decreases:
                problems.append(f"{len(decreases)} decreasing committed outputs, e.g. {decreases[:5]}")
            if last != dict(truth):
                problems.append("last committed output per word: " + diff(dict(truth), dict(last)))
        assert not problems, "\n".join(problems)
    finally:
        stack.stop_all()
