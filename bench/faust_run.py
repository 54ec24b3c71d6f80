"""Run the Faust baseline (:mod:`bench.faust_app`) as a subprocess worker and time it.

Timed from the first line the ``split`` agent sees (written by the app to a file) to the
group's lag over the lines topic and the internal words topic being 0, the same end condition
as sluice's. Faust's start-up (several seconds of group join and table recovery) is outside
the interval, as sluice's is. Each run has its own app id and data directory.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.data import Dataset
from bench.lag import LagProbe
from bench.procs import ROOT, child_env, cpu_seconds, stop
from bench.sluice_run import BenchError

FAUST = str(Path(sys.executable).with_name("faust"))


async def _caught_up(bootstrap: str, app_id: str, topics: list[str], limit_s: float) -> float:
    async with LagProbe(bootstrap, app_id, topics) as probe:
        return await probe.wait_zero(limit_s, interval=0.1)


def run_faust(
    bootstrap: str,
    dataset: Dataset,
    workdir: Path,
    timeout: float = 900,
    *,
    module: str = "bench.faust_app",
    on: str = "faust",
) -> dict[str, Any]:
    """Run ``module`` (a Faust app file) on stock Faust (``on="faust"``) or on ``service.App``
    (``on="sluice"``: the same file, the App class swapped)."""
    app_id = f"bench-{on}-{uuid.uuid4().hex[:8]}"
    mark = workdir / f"{app_id}.first"
    log_path = workdir / f"{app_id}.log"
    env = child_env(
        BENCH_FAUST_APP_ID=app_id,
        BENCH_FAUST_BROKERS=bootstrap,
        BENCH_FAUST_TOPIC=dataset.topic,
        BENCH_FAUST_DATA_DIR=str(workdir / app_id),
        BENCH_FAUST_MARK=str(mark),
        BENCH_FAUST_ON=on,
        SLUICE_SESSION_TIMEOUT_MS="30000",
    )
    command = [FAUST, "-A", module, "worker", "-l", "warn", "--without-web"]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while not mark.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise BenchError(f"faust worker never consumed a line (exit {proc.poll()}):\n{tail}")
            time.sleep(0.01)
        cpu0 = cpu_seconds(proc.pid)
        while True:  # written after the first line was taken: retry a read of a partial file
            try:
                t0 = float(mark.read_text())
                break
            except ValueError:
                time.sleep(0.01)
        topics = [dataset.topic, f"{app_id}-words"] if module == "bench.faust_app" else [dataset.topic]
        t1 = asyncio.run(_caught_up(bootstrap, app_id, topics, timeout))
        cpu1 = cpu_seconds(proc.pid)
    finally:
        stop(proc, timeout=30)
    return {"events": dataset.events, "seconds": t1 - t0, "cpu_seconds": cpu1 - cpu0, "app_id": app_id}
