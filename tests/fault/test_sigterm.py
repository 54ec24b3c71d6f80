"""Issue 8: SIGTERM under load drains, commits and exits 0; the restart re-processes nothing.

A worker processes a steady stream; SIGTERM arrives while traffic is still flowing. It must
exit 0 within ``SLUICE_SHUTDOWN_TIMEOUT``, leaving the group's committed offsets equal to the
positions its tables hold. More input is produced while it is down, then it restarts on the same
disk. The restarted worker must skip no duplicate (``sluice_duplicates_skipped_total`` 0: no
update applied twice was even attempted) and its stage-1 ``sluice_events_processed_total`` must
equal exactly the input past the committed offsets: the events produced after the shutdown,
plus those the draining worker had not fetched yet (produced during the drain) — none before.
The tables equal the truth at the end.

``SLUICE_MEASURE=1`` adds a measurement (no assertion on time): median SIGTERM → exit under load.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import statistics
import threading
import time

import pytest

from tests.fault.test_exact_state import Deployment
from tests.fault.workload import Traffic, make_event, make_line
from tests.harness import WorkerProcess, changelog_table, group_offsets, produce

pytestmark = [pytest.mark.integration, pytest.mark.fault]

SHUTDOWN_TIMEOUT = 10.0
PARTITIONS = 4


@pytest.fixture
def deployment(kafka, tmp_path):  # type: ignore[no-untyped-def]
    d = Deployment(kafka.bootstrap_servers, tmp_path)
    d.env["SLUICE_SHUTDOWN_TIMEOUT"] = str(SHUTDOWN_TIMEOUT)
    try:
        yield d
    finally:
        d.stop_all()


def sigterm_and_time(worker: WorkerProcess, timeout: float) -> tuple[int, float]:
    """SIGTERM; (exit code, seconds from the signal until the process exited).

    A thread blocked in ``wait()`` stamps the exit, so the time is the process's own, not
    whatever the test does meanwhile.
    """
    proc = worker.proc
    assert proc is not None
    exited: list[float] = []
    waiter = threading.Thread(target=lambda: (proc.wait(), exited.append(time.monotonic())), daemon=True)
    waiter.start()
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    waiter.join(timeout)
    if not exited:
        raise AssertionError(f"worker still running {timeout}s after SIGTERM:\n{worker.tail()}")
    return proc.returncode, exited[0] - started


async def offsets(bootstrap: str, group: str, topics: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """({"topic:partition": committed}, {"topic:partition": log end}) over ``topics``."""
    done, ends = await group_offsets(bootstrap, group, topics)
    key = "{0.topic}:{0.partition}".format
    return {key(tp): offset for tp, offset in done.items()}, {key(tp): end for tp, end in ends.items()}


def metric_sum(worker: WorkerProcess, name: str, labels: str = "") -> float:
    status, text = worker.get("/metrics")
    assert status == 200
    pattern = rf"^{name}(\{{[^}}]*\}})? (\S+)$"
    return sum(float(m.group(2)) for m in re.finditer(pattern, text, re.M) if labels in (m.group(1) or ""))


def test_sigterm_under_load_then_restart_reprocesses_nothing(deployment: Deployment) -> None:
    d = deployment
    inputs = [d.lines, d.events]
    worker = d.worker("w").start()
    worker.wait_ready()
    traffic = Traffic(d.bootstrap, d.lines, d.events, seed=21, rate=800).start()
    try:
        time.sleep(5)
        assert metric_sum(worker, "sluice_events_processed_total") > 0
        code, drain = sigterm_and_time(worker, SHUTDOWN_TIMEOUT + 10)  # traffic still flowing
    finally:
        truth = traffic.stop()
    print(f"SIGTERM -> exit {code} in {drain:.2f}s")
    assert code == 0, worker.tail()
    assert drain < SHUTDOWN_TIMEOUT
    assert "worker stopped" in worker.tail(5)

    committed, ends = asyncio.run(offsets(d.bootstrap, d.app_id, inputs))
    # Every input partition was committed, and exactly where the tables' positions are.
    assert set(committed) == set(ends), (committed, ends)
    held = changelog_table(d.bootstrap, d.app_id, "offsets")
    assert {k: held.get(k) for k in committed} == committed, (held, committed)
    unfetched = {k: ends[k] - committed[k] for k in ends}
    assert all(n >= 0 for n in unfetched.values()), unfetched

    # While it is down: more input, every record of it new.
    rng = random.Random(22)
    more_lines = [make_line(rng) for _ in range(300)]
    more_events = [make_event(rng, 1_700_100_000_000 + i * 100) for i in range(300)]
    asyncio.run(produce(d.bootstrap, d.lines, [ln.encode() for ln in more_lines], PARTITIONS))
    asyncio.run(produce(d.bootstrap, d.events, [raw for raw, _ in more_events], PARTITIONS))
    for line in more_lines:
        truth.add_line(line)
    for raw, doc in more_events:
        truth.add_event(raw, doc)
    _, final_ends = asyncio.run(offsets(d.bootstrap, d.app_id, inputs))
    assert sum(final_ends.values()) - sum(ends.values()) == 600

    again = d.worker("w").start()  # the same data directory
    again.wait_ready(90)
    d.caught_up()
    expected = {
        t: sum(final_ends[k] - committed[k] for k in final_ends if k.startswith(t + ":")) for t in inputs
    }
    got = {t: metric_sum(again, "sluice_events_processed_total", f'topic="{t}"') for t in inputs}
    print(f"unfetched at shutdown {sum(unfetched.values())}, produced after 600, restart processed {got}")
    assert got == expected, f"restart processed {got}, input past the commits {expected}"
    assert metric_sum(again, "sluice_duplicates_skipped_total") == 0
    assert again.kill(signal.SIGTERM) == 0, again.tail()
    d.check_tables(truth.words, truth.totals, again.data_dir)
    assert truth.events == sum(final_ends[k] for k in final_ends if k.startswith(d.events + ":"))


@pytest.mark.skipif(not os.environ.get("SLUICE_MEASURE"), reason="a measurement: SLUICE_MEASURE=1")
def test_measure_drain_time(deployment: Deployment) -> None:
    d = deployment
    rounds = int(os.environ.get("SLUICE_MEASURE_ROUNDS", "5"))
    worker = d.worker("w").start()
    worker.wait_ready(90)  # creates the topics the traffic goes to
    traffic = Traffic(d.bootstrap, d.lines, d.events, seed=23, rate=800).start()
    drains = []
    try:
        for i in range(rounds):
            if i:
                worker = d.worker("w").start()
                worker.wait_ready(90)
            time.sleep(3)
            code, drain = sigterm_and_time(worker, SHUTDOWN_TIMEOUT + 10)
            assert code == 0, worker.tail()
            drains.append(drain)
    finally:
        truth = traffic.stop()
    print(f"drain (SIGTERM -> exit, under load): {[round(t, 2) for t in drains]}")
    print(f"median {statistics.median(drains):.2f}s over {len(drains)}; events {truth.events}")
