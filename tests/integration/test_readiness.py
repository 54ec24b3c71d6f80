"""Issue 7: ``/readyz`` holds traffic while a fresh worker restores a large table.

A first worker counts ~200k distinct words, so the wordcount changelog holds ~200k rows. It
stops, its disk is deleted, and a fresh worker (empty disk, same app id) starts: from the
moment its process starts, ``/readyz`` is polled as fast as it answers. It must say 503 with a
JSON reason — ``restoring`` among them — before its first 200, and the rows it restored must be
the whole table, equal to the truth key by key.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tests.harness import WorkerProcess, diff, local_table, produce, remove, unique, wait_caught_up

pytestmark = pytest.mark.integration

DISTINCT_WORDS = 200_000
WORDS_PER_LINE = 100


def poll_readyz(worker: WorkerProcess, timeout: float) -> list[tuple[float, int, dict[str, object]]]:
    """(seconds since start, status, body) of every answer until the first 200; no sleeps."""
    assert worker.proc is not None
    started = time.monotonic()
    seen: list[tuple[float, int, dict[str, object]]] = []
    url = f"http://127.0.0.1:{worker.port}/readyz"
    while time.monotonic() - started < timeout:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited {worker.proc.returncode}:\n{worker.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                seen.append((time.monotonic() - started, resp.status, json.loads(resp.read())))
                return seen
        except urllib.error.HTTPError as exc:
            seen.append((time.monotonic() - started, exc.code, json.loads(exc.read())))
        except OSError:  # not listening yet
            time.sleep(0.01)
    raise AssertionError(f"not ready after {timeout}s; answers: {_summary(seen)}\n{worker.tail()}")


def _summary(seen: list[tuple[float, int, dict[str, object]]]) -> list[tuple[int, object, float]]:
    """Runs of equal (status, reason) with the time each run started."""
    runs: list[tuple[int, object, float]] = []
    for at, status, body in seen:
        reason = body.get("reason")
        if not runs or runs[-1][:2] != (status, reason):
            runs.append((status, reason, round(at, 3)))
    return runs


def test_readyz_is_503_restoring_until_a_large_table_is_restored(kafka, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka.bootstrap_servers
    app_id, lines = unique("ready"), unique("lines")
    env = {
        "SLUICE_JOBS": "wordcount",
        "SLUICE_WORDCOUNT_INPUT_TOPIC": lines,
        "SLUICE_WORDCOUNT_OUTPUT_TOPIC": unique("word-counts"),
        "SLUICE_DEAD_LETTER_TOPIC": unique("dead"),
        "SLUICE_SESSION_TIMEOUT_MS": "6000",
    }
    truth: Counter[str] = Counter()
    text = []
    for i in range(DISTINCT_WORDS // WORDS_PER_LINE):
        words = [f"r{i * WORDS_PER_LINE + j}" for j in range(WORDS_PER_LINE)]
        truth.update(words)
        text.append(" ".join(words).encode())
    assert len(truth) == DISTINCT_WORDS

    first = WorkerProcess(bootstrap, tmp_path / "first", app_id, tmp_path / "first.log", **env).start()
    fresh: WorkerProcess | None = None
    try:
        first.wait_ready()
        asyncio.run(produce(bootstrap, lines, text, 4))
        wait_caught_up(bootstrap, app_id, [lines, f"{app_id}-wordcount-repartition"], timeout=120)
        assert first.kill(signal.SIGTERM) == 0, first.tail()
        remove(first.data_dir)

        fresh = WorkerProcess(bootstrap, tmp_path / "fresh", app_id, tmp_path / "fresh.log", **env)
        fresh.data_dir = first.data_dir  # the same, now empty, place
        fresh.env["SLUICE_DATA_DIR"] = str(first.data_dir)
        fresh.start()
        seen = poll_readyz(fresh, timeout=60)
        runs = _summary(seen)
        print(f"readyz: {len(seen)} answers, runs {runs}")

        *before, (_, last_status, last_body) = seen
        assert last_status == 200 and last_body.get("ready") is True, last_body
        assert before, "ready at the first answer: restoring was never reported"
        assert all(status == 503 and body.get("ready") is False for _, status, body in before), runs
        reasons = [body.get("reason") for _, _, body in before]
        assert all(isinstance(r, str) and r for r in reasons), runs
        assert "restoring" in reasons, runs
        # Once restoring, never back to joining: restoring is the last step before ready.
        assert "joining" not in reasons[reasons.index("restoring") :], runs

        status, metrics = fresh.get("/metrics")
        assert status == 200
        restored = sum(
            float(m.group(1))
            for m in re.finditer(r'^sluice_restored_records_total\{table="wordcount"\} (\S+)$', metrics, re.M)
        )
        assert restored >= DISTINCT_WORDS, restored
        assert fresh.kill(signal.SIGTERM) == 0, fresh.tail()
        local = local_table(fresh.data_dir, "wordcount")
        assert local == dict(truth), "restored wordcount: " + diff(dict(truth), local)
    finally:
        for w in (first, fresh):
            if w is not None and w.alive():
                w.kill(signal.SIGKILL)
