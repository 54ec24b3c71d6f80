"""G4 on a real broker: offsets survive the group (deleted, expired), the audit, code upgrades."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from service.offsets import commit_offsets, delete_group
from service.settings import load_settings
from tests.fault.test_exact_state import Deployment
from tests.fault.workload import Traffic
from tests.harness import SLUICE, WorkerProcess, read_all

pytestmark = [pytest.mark.integration, pytest.mark.fault]


@pytest.fixture
def deployment(kafka, tmp_path: Path):  # type: ignore[no-untyped-def]
    d = Deployment(kafka.bootstrap_servers, tmp_path)
    yield d
    d.stop_all()


def _run_some(d: Deployment, worker: WorkerProcess, seed: int, seconds: float = 2.0) -> Traffic:
    traffic = Traffic(d.bootstrap, d.lines, d.events, seed).start()
    time.sleep(seconds)
    return traffic


def _audit(d: Deployment, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SLUICE, "offsets", "audit", "--bootstrap-server", d.bootstrap, *extra],
        env={**os.environ, "SLUICE_APP_ID": d.app_id, **d.env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _verdicts(output: str) -> dict[tuple[str, int], str]:
    rows = {}
    for line in output.splitlines()[1:]:
        cells = line.split()
        rows[(cells[0], int(cells[1]))] = cells[-1]
    return rows


def test_deleted_group_offsets_resume_from_tables(deployment: Deployment) -> None:
    d = deployment
    w = d.worker("w").start()
    w.wait_ready()
    traffic = _run_some(d, w, seed=11)
    first = traffic.stop()
    d.caught_up()
    assert w.kill(signal.SIGTERM) == 0
    asyncio.run(delete_group(load_settings(brokers=d.bootstrap), d.app_id))
    audit = _audit(d)
    assert audit.returncode == 0, audit.stderr
    verdicts = _verdicts(audit.stdout)
    assert verdicts and set(verdicts.values()) <= {"group-missing", "new"}
    assert verdicts[(d.lines, 0)] == "group-missing"
    more = Traffic(d.bootstrap, d.lines, d.events, seed=12)
    more.truth = first  # keep folding into the same truth
    more.start()
    time.sleep(1.5)
    truth = more.stop()
    w2 = d.worker("w").start()  # same data dir
    w2.wait_ready()
    d.caught_up()
    assert w2.kill(signal.SIGTERM) == 0
    log = w2.log_path.read_text()
    assert '"reason":"group-missing"' in log
    d.check_tables(truth.words, truth.totals, w2.data_dir)
    status = _audit(d)
    assert status.returncode == 0 and set(_verdicts(status.stdout).values()) <= {"ok", "new"}, status.stdout


def test_audit_verdicts_and_ahead_of_table_fails_safe(deployment: Deployment) -> None:
    d = deployment
    w = d.worker("w").start()
    w.wait_ready()
    truth = _run_some(d, w, seed=21, seconds=1.5).stop()
    d.caught_up()
    assert w.kill(signal.SIGTERM) == 0
    settings = load_settings(brokers=d.bootstrap)
    # Constructed cases: partition 0 behind, partition 1 ahead (possible loss); 2, 3 untouched.
    rows = _verdicts(_audit(d).stdout)
    assert rows[(d.lines, 0)] == "ok"
    behind = TopicPartition(d.lines, 0)
    ahead = TopicPartition(d.lines, 1)
    asyncio.run(commit_offsets(settings, d.app_id, {behind: 0, ahead: 10**6}))
    audit = _audit(d)
    assert audit.returncode == 1
    rows = _verdicts(audit.stdout)
    assert rows[(d.lines, 0)] == "group-behind-table"
    assert rows[(d.lines, 1)] == "group-ahead-of-table"
    assert rows[(d.lines, 2)] == "ok"
    # The worker refuses to start on a possible loss (default SLUICE_ON_OFFSET_AHEAD=fail)...
    refused = d.worker("w").start()
    assert refused.wait(90) == 2
    assert "ahead of the tables" in refused.tail()
    # ...and `offsets reset --to table` repairs it.
    reset = subprocess.run(
        [SLUICE, "offsets", "reset", "--to", "table", "--yes", "--bootstrap-server", d.bootstrap],
        env={**os.environ, "SLUICE_APP_ID": d.app_id, **d.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reset.returncode == 0, reset.stderr
    assert set(_verdicts(_audit(d).stdout).values()) <= {"ok", "new"}
    w3 = d.worker("w").start()
    w3.wait_ready()
    d.caught_up()
    assert w3.kill(signal.SIGTERM) == 0
    d.check_tables(truth.words, truth.totals, w3.data_dir)


@pytest.mark.slow
def test_offsets_expire_for_real(kafka_cluster_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A broker with a tiny offsets retention expires the group's offsets while workers are down."""
    cluster = kafka_cluster_factory(
        1, {"offsets.retention.minutes": 1, "offsets.retention.check.interval.ms": 1000}
    )
    d = Deployment(cluster.bootstrap_servers, tmp_path)
    try:
        w = d.worker("w").start()
        w.wait_ready()
        first = _run_some(d, w, seed=31, seconds=1.5).stop()
        d.caught_up()
        assert w.kill(signal.SIGTERM) == 0
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            if set(_verdicts(_audit(d).stdout).values()) <= {"group-missing", "new"}:
                break
            time.sleep(5)
        else:
            pytest.fail("group offsets did not expire")
        more = Traffic(d.bootstrap, d.lines, d.events, seed=32)
        more.truth = first
        more.start()
        time.sleep(1)
        truth = more.stop()
        w2 = d.worker("w").start()
        w2.wait_ready()
        d.caught_up()
        assert w2.kill(signal.SIGTERM) == 0
        d.check_tables(truth.words, truth.totals, w2.data_dir)
    finally:
        d.stop_all()


def test_upgrade_with_changed_job_code_continues_exactly(deployment: Deployment) -> None:
    """A new release (here: an extra output field) restarts from the same state and offsets."""
    d = deployment
    w = d.worker("w").start()
    w.wait_ready()
    traffic = _run_some(d, w, seed=41, seconds=1.5)
    assert w.kill(signal.SIGTERM) == 0
    # The "new release": same tables, same data dir, a job module with a changed output.
    plugin = d.tmp / "plugin"
    plugin.mkdir()
    (plugin / "sitecustomize.py").write_text(
        "import agents.wordcount as wc\n"
        "_old = wc.update_record\n"
        "wc.update_record = lambda word, count: {**_old(word, count), 'release': 2}\n"
    )
    w2 = d.worker("w", PYTHONPATH=str(plugin)).start()
    w2.wait_ready()
    truth = traffic.stop()
    d.caught_up()
    assert w2.kill(signal.SIGTERM) == 0
    d.check_tables(truth.words, truth.totals, w2.data_dir)
    outputs = asyncio.run(read_all(d.bootstrap, d.env["SLUICE_WORDCOUNT_OUTPUT_TOPIC"]))
    assert any(b'"release":2' in value for _, value, _ in outputs)  # the new code ran


def test_incompatible_table_schema_is_refused_at_start(deployment: Deployment) -> None:
    d = deployment
    w = d.worker("w").start()
    w.wait_ready()
    _run_some(d, w, seed=51, seconds=1).stop()
    d.caught_up()
    assert w.kill(signal.SIGTERM) == 0
    plugin = d.tmp / "plugin2"
    plugin.mkdir()
    (plugin / "sitecustomize.py").write_text("import tables.wordcount as t\nt.SCHEMA = 'count.v2'\n")
    for name in ("w", "fresh"):  # local RocksDB, and an empty disk restoring from the changelog
        refused = d.worker(name, PYTHONPATH=str(plugin)).start()
        assert refused.wait(90) == 2
        assert "schema 'count.v1', this release expects 'count.v2'" in refused.tail()
