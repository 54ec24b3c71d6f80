"""Issue 7: sluice's metrics as a real Prometheus sees them, and every query we ship.

A real ``prometheus`` (Debian's binary, :mod:`tests.prom`) scrapes real ``sluice worker``
processes on the session broker every second and evaluates ``deploy/prometheus/alerts.yml``.
Everything is asserted through Prometheus' HTTP API, not by parsing ``/metrics``: throughput
rises, lag returns to 0 when traffic stops and rises while a partition is held back, and every
PromQL expression of the Grafana dashboard and of the alerts returns a series once a workload
that exercises every panel (dead letters, late events, a kill -9 and an empty-disk restart for
skipped duplicates and restored records) has run.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pytest

from service.settings import Settings
from tests.fault.test_exact_state import Deployment
from tests.fault.workload import Traffic
from tests.harness import WorkerProcess, produce
from tests.prom import (
    ALERTS,
    PROMETHEUS,
    PROMTOOL,
    Prometheus,
    alert_rules,
    dashboard_queries,
    dashboard_variables,
    expand_grafana,
    without_comparisons,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None, reason="needs Debian's prometheus"),
]


@pytest.fixture
def prom(tmp_path: Path):  # type: ignore[no-untyped-def]
    p = Prometheus(tmp_path / "prometheus")
    try:
        p.start()
        yield p
    finally:
        p.stop()


@pytest.fixture
def deployment(kafka, tmp_path):  # type: ignore[no-untyped-def]
    d = Deployment(kafka.bootstrap_servers, tmp_path)
    try:
        yield d
    finally:
        d.stop_all()


def same_port(worker: WorkerProcess, port: int) -> WorkerProcess:
    """Serve on ``port`` (a restarted pod keeps its address, so Prometheus keeps its series)."""
    worker.port = port
    worker.env["SLUICE_WEB_PORT"] = str(port)
    return worker


def test_promtool_accepts_the_alert_rules() -> None:
    out = subprocess.run([str(PROMTOOL), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_without_comparisons_keeps_the_series_expression() -> None:
    assert without_comparisons('up{job="sluice"} == 0') == 'up{job="sluice"}'
    assert without_comparisons("deriv(x[10m]) > 0\nand x > 1000") == "deriv(x[10m]) and x"
    assert without_comparisons('histogram_quantile(0.99, rate(b{a!="1"}[5m])) > 5') == (
        'histogram_quantile(0.99, rate(b{a!="1"}[5m]))'
    )


def test_every_dashboard_and_alert_query_returns_series(prom: Prometheus, deployment: Deployment) -> None:
    d = deployment
    # Static membership: a restarted worker takes its predecessor's place without waiting for
    # the session timeout, so a kill -9 cycle takes seconds.
    worker = d.worker("w0", SLUICE_INSTANCE_ID="w").start()
    port = worker.port
    prom.set_targets([port])
    worker.wait_ready()
    prom.wait_targets_up(1)
    traffic = Traffic(d.bootstrap, d.lines, d.events, seed=11).start()
    restarts = 0
    try:
        processed = f'sum(sluice_events_processed_total{{topic="{d.lines}"}})'
        before = prom.wait_value(processed, lambda v: v > 0, 30, "events processed")
        prom.wait_value(processed, lambda v: v > before, 30, "events processed rising")
        # kill -9 until a restart replays something the tables already hold (the kill must land
        # between a batch's repartition records and its offsets being durable; usually the first
        # does). Every restart has an empty disk, so the worker Prometheus scrapes last has restored
        # its tables from the changelog (a restart on its own disk may restore nothing).
        while restarts < 8 and (restarts == 0 or _metric(worker, "sluice_duplicates_skipped_total") == 0):
            time.sleep(1.5)
            worker.kill(signal.SIGKILL)
            restarts += 1
            worker = same_port(d.worker(f"w{restarts}", SLUICE_INSTANCE_ID="w"), port).start()
            worker.wait_ready(90)
            time.sleep(2)
    finally:
        truth = traffic.stop()
    print(f"kill -9 restarts: {restarts}")
    # Late events: once every input is caught up, the watermark reaches the newest event time
    # (about now) and closes every older window; an event of 1970 after that is late (counted in
    # totals, not in a window).
    d.caught_up()
    prom.wait_value("max(sluice_watermark_seconds)", lambda v: v > 1_700_000_000, 30, "watermark")
    late = {"key": "late", "value": 2, "ts": 1}
    asyncio.run(produce(d.bootstrap, d.events, [orjson.dumps(late)]))
    truth.add_event(orjson.dumps(late), late)
    d.caught_up()
    assert truth.invalid_events > 0

    # Lag of the input topics returns to 0 once everything is processed.
    for topic in (d.lines, d.events):
        prom.wait_value(
            f'sum(sluice_consumer_lag{{topic="{topic}"}})', lambda v: v == 0, 30, f"lag of {topic}"
        )
    # The workload reached every metric the panels show.
    for expr in (
        "sum(sluice_duplicates_skipped_total)",
        "sum(sluice_restored_records_total)",
        'sum(sluice_late_events_total{job="rollup"})',
        'sum(sluice_dead_letters_total{job="rollup"})',
    ):
        prom.wait_value(expr, lambda v: v > 0, 30, expr)
    # honor_labels: the `job` label of sluice's own metrics survives, the target's is `sluice`.
    jobs = {dict(k)["job"] for k in prom.values("sluice_events_processed_total")}
    assert jobs == {"wordcount", "rollup"}
    assert {dict(k)["job"] for k in prom.values("sluice_commits_total")} == {"sluice"}

    variables = dashboard_variables()
    queries = [(f"panel {title!r}", expand_grafana(expr, variables)) for title, expr in dashboard_queries()]
    assert len(queries) >= 20
    queries += [(f"alert {name}", without_comparisons(expr)) for name, expr in alert_rules()]
    empty = _wait_all_non_empty(prom, queries, timeout=30)
    assert not empty, "queries without a series:\n" + "\n".join(f"{w}: {e}" for w, e in empty)

    # Prometheus evaluated every alert rule without an error (e.g. duplicate label sets).
    rules = prom.rule_states()
    assert {r["name"] for r in rules} == {name for name, _ in alert_rules()}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]

    d.check_tables(truth.words, truth.totals, None)
    assert worker.kill(signal.SIGTERM) == 0, worker.tail()


def _metric(worker: WorkerProcess, name: str) -> float:
    """Sum of every sample of ``name`` on the worker's own /metrics."""
    status, text = worker.get("/metrics")
    assert status == 200
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _wait_all_non_empty(
    prom: Prometheus, queries: list[tuple[str, str]], timeout: float
) -> list[tuple[str, str]]:
    """Queries still empty at the deadline (rates need two samples inside their window)."""
    deadline = time.monotonic() + timeout
    pending = list(queries)
    while pending and time.monotonic() < deadline:
        pending = [(w, e) for w, e in pending if not prom.query(e)]
        if pending:
            time.sleep(1)
    return pending


@pytest.mark.skipif(
    "max_rate_per_partition" not in Settings.model_fields, reason="SLUICE_MAX_RATE_PER_PARTITION missing"
)
def test_held_back_partitions_show_rising_lag(prom: Prometheus, deployment: Deployment) -> None:
    """At 5 events/s per partition and ~50 produced per second per partition, lag must grow."""
    d = deployment
    worker = d.worker("slow", SLUICE_MAX_RATE_PER_PARTITION="5", SLUICE_JOBS="wordcount").start()
    prom.set_targets([worker.port])
    worker.wait_ready()
    prom.wait_targets_up(1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            while not stop.is_set():
                asyncio.run(produce(d.bootstrap, d.lines, [b"one two three"] * 100, 4))
                stop.wait(0.5)
        except BaseException as exc:
            errors.append(exc)

    feeder = threading.Thread(target=feed, daemon=True)
    lag = f'sum(sluice_consumer_lag{{topic="{d.lines}"}})'
    rate = f'sum(rate(sluice_events_processed_total{{topic="{d.lines}"}}[10s]))'
    feeder.start()
    try:
        seen = [prom.wait_value(lag, lambda v: v > 0, 30, "lag appears")]
        deadline = time.monotonic() + 40
        while len(seen) < 4 and time.monotonic() < deadline:
            now = prom.wait_value(lag, lambda v, last=seen[-1]: v > last, 15, "lag rising")
            seen.append(now)
            assert worker.alive(), worker.tail()
        assert len(seen) >= 4, seen
        assert prom.value(f'up{{instance="127.0.0.1:{worker.port}"}}') == 1
        # The rate really is held: 4 partitions x 5/s, with slack for the burst allowance.
        processing = prom.value(rate)
        assert processing is not None and processing <= 4 * 5 * 2, processing
    finally:
        stop.set()
        feeder.join(30)
    assert not errors, errors
    print(f"lag samples {seen}, processed/s {processing}")
    assert worker.kill(signal.SIGTERM) == 0, worker.tail()
