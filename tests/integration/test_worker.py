"""The worker end to end on a real broker: settings in, outputs, tables, dump, config errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.harness import SLUICE, WorkerProcess, changelog_table, produce, read_all, unique, wait_caught_up

pytestmark = pytest.mark.integration


def test_wordcount_and_rollup_through_settings(kafka, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka.bootstrap_servers
    app = unique("app")
    env = {
        "SLUICE_WORDCOUNT_INPUT_TOPIC": unique("lines"),
        "SLUICE_WORDCOUNT_OUTPUT_TOPIC": unique("counts"),
        "SLUICE_ROLLUP_INPUT_TOPIC": unique("events"),
        "SLUICE_ROLLUP_OUTPUT_TOPIC": unique("rollups"),
        "SLUICE_DEAD_LETTER_TOPIC": unique("dead"),
        "SLUICE_WINDOW_GRACE_MS": "0",
    }
    worker = WorkerProcess(bootstrap, tmp_path / "data", app, tmp_path / "w.log", **env).start()
    try:
        worker.wait_ready()
        lines = [b"the quick brown fox", b"The lazy dog", b"the end"]
        events = [
            orjson.dumps({"key": "a", "value": v, "ts": ts})
            for v, ts in [(1, 1_000), (4, 30_000), (2, 61_000), (7, 200_000)]
        ]
        asyncio.run(produce(bootstrap, env["SLUICE_WORDCOUNT_INPUT_TOPIC"], lines, 4))
        # One partition, so event time arrives in order: across partitions a later event could
        # overtake an earlier one and (grace 0) make it late, which is correct but not this test.
        asyncio.run(produce(bootstrap, env["SLUICE_ROLLUP_INPUT_TOPIC"], events, 1))
        topics = [
            env["SLUICE_WORDCOUNT_INPUT_TOPIC"],
            env["SLUICE_ROLLUP_INPUT_TOPIC"],
            f"{app}-wordcount-repartition",
            f"{app}-rollup-repartition",
        ]
        wait_caught_up(bootstrap, app, topics)
        expected = Counter(w for line in lines for w in line.decode().lower().split())
        assert changelog_table(bootstrap, app, "wordcount") == dict(expected)

        counts = asyncio.run(read_all(bootstrap, env["SLUICE_WORDCOUNT_OUTPUT_TOPIC"]))
        latest = {}
        for key, value, headers in counts:
            latest[key.decode()] = json.loads(value)["count"]
            assert headers["sluice.source.topic"] == env["SLUICE_WORDCOUNT_INPUT_TOPIC"].encode()
        assert latest == dict(expected)

        windows = [
            json.loads(v) for _, v, _ in asyncio.run(read_all(bootstrap, env["SLUICE_ROLLUP_OUTPUT_TOPIC"]))
        ]
        assert sorted(windows, key=lambda w: w["window_start"]) == [
            {"key": "a", "window_start": 0, "window_end": 60_000, "count": 2, "sum": 5, "min": 1, "max": 4},
            {
                "key": "a",
                "window_start": 60_000,
                "window_end": 120_000,
                "count": 1,
                "sum": 2,
                "min": 2,
                "max": 2,
            },
        ]

        dump = subprocess.run(
            [SLUICE, "tables", "dump", "rollup_totals", "--bootstrap-server", bootstrap],
            env={**os.environ, "SLUICE_APP_ID": app},
            capture_output=True,
            check=True,
        )
        rows = [json.loads(line) for line in dump.stdout.splitlines()]
        assert [(r["key"], r["value"]) for r in rows] == [("a", {"count": 4, "sum": 14, "min": 1, "max": 7})]
        status, metrics = worker.get("/metrics")
        assert status == 200 and "sluice_events_processed_total" in metrics
        assert worker.get("/healthz")[0] == 200
    finally:
        assert worker.kill(signal.SIGTERM) == 0, worker.tail()


def test_bad_setting_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for name, value in [
        ("SLUICE_WEB_PORT", "notaport"),
        ("SLUICE_BROKERS", "nohostport"),
        ("SLUICE_JOBS", "nope"),
    ]:
        result = subprocess.run(
            [SLUICE, "worker"],
            env={**os.environ, name: value, "SLUICE_DATA_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0], result.stderr


def test_data_dir_of_another_app_id_is_refused(kafka, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "APP_ID").write_text("someone-else\n")
    worker = WorkerProcess(
        kafka.bootstrap_servers, tmp_path / "data", unique("app"), tmp_path / "w.log"
    ).start()
    assert worker.wait(60) == 2
    assert "someone-else" in worker.tail()


def test_stateless_tokenize_forwards_each_line(kafka, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka.bootstrap_servers
    app = unique("app")
    env = {
        "SLUICE_JOBS": "tokenize",
        "SLUICE_TOKENIZE_INPUT_TOPIC": unique("lines"),
        "SLUICE_TOKENIZE_OUTPUT_TOPIC": unique("tokens"),
        "SLUICE_DEAD_LETTER_TOPIC": unique("dead"),
    }
    worker = WorkerProcess(bootstrap, tmp_path / "data", app, tmp_path / "w.log", **env).start()
    try:
        worker.wait_ready()
        lines = [b"a b a", b"C c", b"\xff bad"]
        asyncio.run(produce(bootstrap, env["SLUICE_TOKENIZE_INPUT_TOPIC"], lines, 1))
        wait_caught_up(bootstrap, app, [env["SLUICE_TOKENIZE_INPUT_TOPIC"]])
        out = asyncio.run(read_all(bootstrap, env["SLUICE_TOKENIZE_OUTPUT_TOPIC"]))
        assert [json.loads(v) for _, v, _ in out] == [{"words": {"a": 2, "b": 1}}, {"words": {"c": 2}}]
        assert [h["sluice.source.offset"] for _, _, h in out] == [b"0", b"1"]
        dead = asyncio.run(read_all(bootstrap, env["SLUICE_DEAD_LETTER_TOPIC"]))
        assert [(v, h["sluice.reason"]) for _, v, h in dead] == [(b"\xff bad", b"invalid_utf8")]
    finally:
        assert worker.kill(signal.SIGTERM) == 0, worker.tail()
