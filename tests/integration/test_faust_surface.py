"""The rest of Faust's surface on ``service.App`` (``tests/apps/surface.py``), against a real broker.

One worker of the app, started as Faust starts it (``python -m faust -A tests.apps.surface worker
-l info --web-port P``), works through a known backlog of sensor readings (keyed by sensor, some
negative: filtered out); once the group has committed all of it, each test checks one feature
against a truth computed here from the input:

* ``stream.filter`` + ``concurrency=2`` + ``Table(default=int)`` ``+=``: ``reading_counts``; and
  ``sensor_totals``, written the same way by an agent that awaits an I/O call first (two
  actors never run events of one source at once, so the guard sees each source in order);
* ``.hopping(size, step, expires=)`` ``.relative_to_field(Reading.ts)`` ``+=``: every reading in
  size/step windows, per (window start, sensor) in the changelog;
* an agent that yields to ``sink=[topic]``, with ``.value()`` and ``.delta()`` of the window:
  the sink holds exactly one record per accepted reading (deduplicated by source position);
* ``stream.take(n, within=)``: the summaries add up to every reading;
* ``app.timer`` sending outside any agent; ``app.crontab`` declared (start-up is unaffected);
* ``app.page`` + ``app.topic_route(match_info=)`` reading both tables;
* ``@app.command()`` through ``faust -A`` and through ``app.main()``; SIGTERM exits 0.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import signal
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.apps.surface import BATCH_MAX, WINDOW_SIZE, WINDOW_STEP
from tests.harness import (
    Record,
    WorkerProcess,
    changelog_table,
    create_topic,
    diff,
    read_records,
    unique,
    wait_caught_up,
    wait_until,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
TOTAL = 3000
SENSORS = 50
FAUST_A = [sys.executable, "-m", "faust", "-A", "tests.apps.surface"]


# ---------------------------------------------------------------------- the input and its truth


@dataclass(frozen=True)
class Reading:
    sensor: str
    value: int
    ts_ms: int

    @property
    def ts(self) -> float:
        return self.ts_ms / 1000

    @property
    def valid(self) -> bool:
        return self.value >= 0

    def encoded(self) -> bytes:
        return json.dumps({"sensor": self.sensor, "value": self.value, "ts": self.ts}).encode()


def readings(seed: int = 23) -> list[Reading]:
    """Event times over two minutes ten minutes ago, in no particular order; one in ten negative."""
    rng = random.Random(seed)
    base_ms = (int(time.time()) - 600) * 1000
    return [
        Reading(
            f"sensor-{rng.randrange(SENSORS)}",
            -rng.randint(1, 9) if rng.random() < 0.1 else rng.randint(0, 100),
            base_ms + rng.randrange(120_000),
        )
        for _ in range(TOTAL)
    ]


def window_starts(ts: float) -> list[float]:
    """Starts of every hopping window (size, step) holding ``ts``: k * step in (ts - size, ts]."""
    first = math.floor((ts - WINDOW_SIZE) / WINDOW_STEP) + 1
    starts = [k * WINDOW_STEP for k in range(first, math.floor(ts / WINDOW_STEP) + 1)]
    assert len(starts) == WINDOW_SIZE / WINDOW_STEP and all(ts - WINDOW_SIZE < s <= ts for s in starts)
    return starts


def window_key(start: float, sensor: str) -> str:
    return f"{round(start * 1000):015d}|{json.dumps(sensor)}"


@dataclass
class Truth:
    counts: Counter[str] = field(default_factory=Counter)
    """Valid readings per sensor (keys as Faust stores them: JSON)."""
    totals: Counter[str] = field(default_factory=Counter)
    """Sum of the valid readings' values per sensor."""
    hops: Counter[str] = field(default_factory=Counter)
    """Sum of values per (window start, sensor), keyed as sluice stores windowed keys."""
    accepted: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    """(partition, offset) of each valid reading -> the record ``window_readings`` yields for it."""
    values_total: int = 0


def truth_of(backlog: list[Reading], placed: list[tuple[int, int]]) -> Truth:
    """The truth, in input order: a sensor's readings are in one partition, processed in order, so
    the window totals a reading sees are the running sums up to it."""
    truth = Truth()
    for reading, where in zip(backlog, placed, strict=True):
        truth.values_total += reading.value
        if not reading.valid:
            continue
        truth.counts[json.dumps(reading.sensor)] += 1
        truth.totals[json.dumps(reading.sensor)] += reading.value
        for start in window_starts(reading.ts):
            truth.hops[window_key(start, reading.sensor)] += reading.value
        latest = math.floor(reading.ts / WINDOW_STEP) * WINDOW_STEP
        truth.accepted[where] = {
            "sensor": reading.sensor,
            "value": reading.value,
            "ts": reading.ts,
            "window_total": truth.hops[window_key(latest, reading.sensor)],
            "earlier_total": truth.hops[window_key(latest - WINDOW_STEP, reading.sensor)],
        }
    return truth


async def produce_keyed(bootstrap: str, topic: str, backlog: list[Reading]) -> list[tuple[int, int]]:
    """Each reading keyed by its sensor (the default partitioner: murmur2, as Java's), with its
    event time as the record's timestamp; acks=all, idempotent, in order. Returns (partition,
    offset) per reading."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for _ in range(100):  # metadata of a topic created a moment ago can still be partial
            if len(await producer.partitions_for(topic)) >= PARTITIONS:
                break
            await producer.client.force_metadata_update()
            await asyncio.sleep(0.1)
        futures = [
            await producer.send(topic, r.encoded(), key=r.sensor.encode(), timestamp_ms=r.ts_ms)
            for r in backlog
        ]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metas]


# ---------------------------------------------------------------------- the worker


class SurfaceWorker(WorkerProcess):
    """The app's worker as Faust runs it, with the ``SLUICE_*`` environment of the harness."""

    def start(self) -> SurfaceWorker:
        command = [*FAUST_A, "worker", "-l", "info", "--web-port", str(self.port)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=log)
        return self


@dataclass
class Run:
    bootstrap: str
    app_id: str
    topics: dict[str, str]
    """SURFACE_* variable -> topic name."""
    worker: SurfaceWorker
    backlog: list[Reading]
    truth: Truth

    def read(self, variable: str) -> list[Record]:
        return asyncio.run(read_records(self.bootstrap, self.topics[variable]))


@pytest.fixture(scope="module")
def run(kafka: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The backlog produced, one worker started on it, and the group caught up."""
    bootstrap = kafka.bootstrap_servers
    tmp = tmp_path_factory.mktemp("surface")
    app_id = unique("surface")
    topics = {
        "SURFACE_TOPIC": unique("readings"),
        "SURFACE_SINK_TOPIC": unique("accepted"),
        "SURFACE_BATCHES_TOPIC": unique("batches"),
        "SURFACE_TICKS_TOPIC": unique("ticks"),
        "SLUICE_DEAD_LETTER_TOPIC": unique("surface-dead"),
    }
    backlog = readings()
    asyncio.run(create_topic(bootstrap, topics["SURFACE_TOPIC"], PARTITIONS))
    placed = asyncio.run(produce_keyed(bootstrap, topics["SURFACE_TOPIC"], backlog))
    worker = SurfaceWorker(
        bootstrap,
        tmp / "data",
        app_id,
        tmp / "worker.log",
        SURFACE_APP_ID=app_id,
        SLUICE_TOPIC_PARTITIONS=str(PARTITIONS),
        **topics,
    ).start()
    try:
        worker.wait_ready(60)
        wait_caught_up(bootstrap, app_id, [topics["SURFACE_TOPIC"]], 60)
        yield Run(bootstrap, app_id, topics, worker, backlog, truth_of(backlog, placed))
    finally:
        if worker.alive():
            worker.kill(signal.SIGKILL)


def by_source(
    records: list[Record], *, headers_required: bool = True
) -> tuple[dict[Any, dict[str, Any]], int]:
    """Records by the source position in their ``sluice.source.*`` headers (outputs are
    at-least-once: a repeat must equal the first), and how many repeats there were. A record
    without those headers (a send no event made, when ``headers_required`` is false) stands for
    itself."""
    out: dict[Any, dict[str, Any]] = {}
    repeats = 0
    for record in records:
        headers = record.headers
        where: Any
        if "sluice.source.offset" in headers:
            where = (int(headers["sluice.source.partition"]), int(headers["sluice.source.offset"]))
        else:
            assert not headers_required, f"no source headers: {record}"
            where = ("record", record.partition, record.offset)
        value = json.loads(record.value or b"null")
        value.pop("__faust", None)
        if where in out:
            repeats += 1
            assert out[where] == value, f"{where} sent twice, differently: {out[where]} vs {value}"
        out[where] = value
    return out, repeats


# ---------------------------------------------------------------------- the tests


def test_no_reading_was_dead_lettered(run: Run) -> None:
    letters = run.read("SLUICE_DEAD_LETTER_TOPIC")
    assert not letters, [
        (r.headers.get("sluice.reason"), r.headers.get("sluice.detail")) for r in letters[:3]
    ]


def test_filter_and_concurrency_2_count_each_sensors_valid_readings(run: Run) -> None:
    assert run.truth.counts and sum(run.truth.counts.values()) < TOTAL  # some were filtered out
    actual = changelog_table(run.bootstrap, run.app_id, "reading_counts")
    assert actual == dict(run.truth.counts), diff(dict(run.truth.counts), actual)


def test_concurrency_2_with_io_in_the_agent_adds_every_valid_reading(run: Run) -> None:
    actual = changelog_table(run.bootstrap, run.app_id, "sensor_totals")
    assert actual == dict(run.truth.totals), diff(dict(run.truth.totals), actual)


def test_hopping_window_relative_to_field_holds_every_reading_in_size_over_step_windows(run: Run) -> None:
    actual = changelog_table(run.bootstrap, run.app_id, "sensor_hops")
    assert actual == dict(run.truth.hops), diff(dict(run.truth.hops), actual)


def test_the_sink_holds_exactly_what_the_agent_yielded_with_value_and_delta(run: Run) -> None:
    records = run.read("SURFACE_SINK_TOPIC")
    sent, repeats = by_source(records)
    expected = run.truth.accepted
    missing = sorted(set(expected) - set(sent))
    extra = sorted(set(sent) - set(expected))
    assert not missing and not extra, f"{len(missing)} missing, e.g. {missing[:3]}; extra {extra[:3]}"
    wrong = [
        (where, expected[where], sent[where]) for where in sorted(expected) if sent[where] != expected[where]
    ]
    assert not wrong, f"{len(wrong)} yielded records differ (expected, sent), e.g. {wrong[:3]}"
    print(f"sink: {len(records)} records, {repeats} repeats, {len(expected)} accepted readings")


def test_take_summaries_add_up_to_every_reading(run: Run) -> None:
    # A summary sent after the list was iterated carries the last reading's source headers.
    summaries, repeats = by_source(run.read("SURFACE_BATCHES_TOPIC"), headers_required=False)
    counts = [s["count"] for s in summaries.values()]
    assert all(1 <= n <= BATCH_MAX for n in counts), sorted(set(counts))
    assert sum(counts) == TOTAL, f"{len(counts)} summaries count {sum(counts)} readings, not {TOTAL}"
    assert sum(s["total"] for s in summaries.values()) == run.truth.values_total
    print(f"take: {len(counts)} lists, the largest {max(counts)}, {repeats} repeats")


def test_the_timer_sends_ticks_outside_any_agent(run: Run) -> None:
    ticks: list[Record] = []

    def ticked() -> bool:
        ticks[:] = run.read("SURFACE_TICKS_TOPIC")
        return len(ticks) >= 2

    wait_until(ticked, 20, "two ticks", [run.worker])
    ats = [json.loads(r.value or b"null")["at"] for r in ticks]
    assert all(time.time() - 300 < at <= time.time() for at in ats), ats
    assert all("sluice.source.offset" not in r.headers for r in ticks)  # no event caused them


def test_the_page_answers_through_topic_route(run: Run) -> None:
    last_of: dict[str, Reading] = {}
    for reading in run.backlog:
        if reading.valid:
            last_of[reading.sensor] = reading
    asked = sorted(last_of)[:12]
    for sensor in [*asked, "never-seen"]:
        last = last_of.get(sensor)
        at = last.ts if last is not None else time.time()
        start = math.floor(at / WINDOW_STEP) * WINDOW_STEP
        expected = {
            "sensor": sensor,
            "count": run.truth.counts.get(json.dumps(sensor), 0),
            "window": run.truth.hops.get(window_key(start, sensor), 0),
        }
        path = f"/sensors/{urllib.parse.quote(sensor, safe='')}/?at={at}"
        status, body = run.worker.get(path)
        assert (status, body) == (200, expected), path


def faust_command(run: Run, *command: str) -> subprocess.CompletedProcess[str]:
    env = {**run.worker.env, "SLUICE_DATA_DIR": str(run.worker.data_dir.parent / "command")}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "command",
    [[*FAUST_A, "topics"], [sys.executable, "tests/apps/surface.py", "topics"]],
    ids=["faust -A", "app.main()"],
)
def test_the_apps_command_prints_its_topics_and_exits_0(run: Run, command: list[str]) -> None:
    done = faust_command(run, *command)
    assert done.returncode == 0, done.stderr[-2000:]
    topics = run.topics
    assert done.stdout.splitlines() == [
        f"reads: {topics['SURFACE_TOPIC']}",
        f"writes: {topics['SURFACE_SINK_TOPIC']}",
        f"writes: {topics['SURFACE_BATCHES_TOPIC']}",
        f"writes: {topics['SURFACE_TICKS_TOPIC']}",
    ], done.stdout


def test_sigterm_stops_the_worker_with_exit_0(run: Run) -> None:
    """Last: the timer, the crontab and the three agents stop with the worker."""
    status, body = run.worker.get("/healthz")
    assert status == 200 and body["ok"], body
    code = run.worker.kill(signal.SIGTERM)
    assert code == 0, f"SIGTERM: exit {code}\n{run.worker.tail()}"
