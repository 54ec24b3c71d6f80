"""Standby replicas (SLUICE_STANDBY_REPLICAS): a takeover restores only the changelog's tail,
and the state stays exact."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.fault.test_exact_state import Deployment
from tests.fault.workload import Traffic

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def metric_sum(metrics: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", metrics, re.M))


def test_standby_copy_makes_takeover_read_only_the_tail(kafka, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = Deployment(kafka.bootstrap_servers, tmp_path)
    d.env["SLUICE_STANDBY_REPLICAS"] = "1"
    try:
        a = d.worker("a").start()
        b = d.worker("b").start()
        a.wait_ready()
        b.wait_ready()
        traffic = Traffic(d.bootstrap, d.lines, d.events, seed=61).start()
        time.sleep(4)
        truth = traffic.stop()
        d.caught_up()
        time.sleep(2)  # standbys tail the changelogs asynchronously
        for w in (a, b):
            _, metrics = w.get("/metrics")
            assert metric_sum(metrics, "sluice_standby_partitions") > 0, w.tail()
        _, before = b.get("/metrics")
        restored_before = metric_sum(before, "sluice_restored_records_total")
        a.kill(signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, metrics = b.get("/metrics")
            if metric_sum(metrics, "sluice_assigned_partitions") == 16:  # every partition of 4 topics
                break
            time.sleep(0.3)
        else:
            raise AssertionError("b did not take a's partitions")
        b.wait_ready()
        _, after = b.get("/metrics")
        restored = metric_sum(after, "sluice_restored_records_total") - restored_before
        words = sum(1 for _ in truth.words)
        # Without a standby copy, b would restore a's half of the tables from the changelog.
        assert restored < 0.1 * words, (restored, words)
        d.caught_up()
        assert b.kill(signal.SIGTERM) == 0, b.tail()
        d.check_tables(truth.words, truth.totals, b.data_dir)
    finally:
        d.stop_all()
