"""G9: event-time results do not depend on failures.

A backlog of rollup events is produced first: four partitions, event time strictly increasing
within each partition and spanning ~15 minutes on every one, 30 keys. The closed windows
(60 s tumbling, closed at end + ``SLUICE_WINDOW_GRACE_MS``) are computed here from that input
(count/sum/min/max per key and window). Then:

* run 1: one worker processes the whole backlog;
* run 2 (another app id, same input): two rate-limited workers; one is killed with SIGKILL
  mid-backlog and left down past the session timeout, so that the other takes its partitions
  over while its own inputs race ahead in event time; then it is restarted.

Both runs must emit exactly the windows the input closes, figure for figure (a window emitted
again after a crash must carry the same figures), ``sluice_late_events_total`` must stay 0 on
every worker, and ``sluice_watermark_seconds{table="rollup_windows"}`` must exist and never go
back on a worker. A second test puts one event a week ahead of now among normal ones: it is
dead-lettered as ``ts_out_of_range`` and closes nothing.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from service.devbroker import LocalCluster
from tests.harness import (
    Stack,
    WorkerProcess,
    changelog_table,
    create_topic,
    diff,
    group_offsets,
    metric_samples,
    produce_records,
    read_records,
    unique,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

WINDOW_MS = 60_000
GRACE_MS = 10_000
T0 = 1_700_000_040_000  # a whole minute (epoch ms)
KEYS = [f"k{i:02d}" for i in range(30)]
PARTITIONS = 4

Event = tuple[int, str, int, int]  # partition, key, value, ts
WindowId = tuple[str, int]  # key, window start


def backlog(per_partition: int, step_ms: int, seed: int) -> list[Event]:
    """Events per partition with strictly increasing ts; each partition ends with one event
    per key (1 ms apart), so every table partition hears every source's last event time."""
    rng = random.Random(seed)
    events: list[Event] = []
    for p in range(PARTITIONS):
        ts = T0 + p * 7  # partitions a few ms apart, same pace
        for _ in range(per_partition - len(KEYS)):
            events.append((p, rng.choice(KEYS), rng.randint(-1000, 1000), ts))
            ts += step_ms
        for key in KEYS:
            events.append((p, key, rng.randint(-1000, 1000), ts))
            ts += 1
    return events


def truth_windows(events: list[Event]) -> dict[WindowId, dict[str, Any]]:
    """Every window the input closes (end + grace <= the largest event time): its record."""
    max_ts = max(ts for *_, ts in events)
    windows: dict[WindowId, dict[str, Any]] = {}
    for _, key, value, ts in events:
        start = ts - ts % WINDOW_MS
        f = windows.get((key, start))
        if f is None:
            windows[(key, start)] = {"count": 1, "sum": value, "min": value, "max": value}
        else:
            f["count"] += 1
            f["sum"] += value
            f["min"] = min(f["min"], value)
            f["max"] = max(f["max"], value)
    return {
        (key, start): {"key": key, "window_start": start, "window_end": start + WINDOW_MS, **f}
        for (key, start), f in windows.items()
        if start + WINDOW_MS + GRACE_MS <= max_ts
    }


def truth_totals(events: list[Event]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for _, key, value, _ in events:
        f = totals.setdefault(key, {"count": 0, "sum": 0, "min": value, "max": value})
        f["count"] += 1
        f["sum"] += value
        f["min"] = min(f["min"], value)
        f["max"] = max(f["max"], value)
    return totals


def assert_no_close_call(events: list[Event]) -> None:
    """No window's end + grace lies within a second of the last event time: whether such a
    window closes would depend on which source's last event a table partition heard last."""
    max_ts = max(ts for *_, ts in events)
    for start in range(T0 - WINDOW_MS, max_ts + WINDOW_MS, WINDOW_MS):
        assert not (max_ts - 1000 < start + WINDOW_MS + GRACE_MS <= max_ts + 1000), start


def encode(key: str, value: int, ts: int) -> bytes:
    return json.dumps({"key": key, "value": value, "ts": ts}).encode()


def produce_events(bootstrap: str, topic: str, events: list[Event]) -> list[tuple[int, int]]:
    asyncio.run(create_topic(bootstrap, topic, PARTITIONS))
    return asyncio.run(
        produce_records(bootstrap, topic, [(p, None, encode(k, v, ts)) for p, k, v, ts in events])
    )


def closed_windows(stack: Stack, problems: list[str], label: str) -> dict[WindowId, dict[str, Any]]:
    """The windows on the run's rollups topic; a window emitted twice must be identical."""
    seen: dict[WindowId, dict[str, Any]] = {}
    for r in asyncio.run(read_records(stack.bootstrap, stack.outputs["rollup"])):
        doc = json.loads(r.value or b"null")
        wid = (doc["key"], doc["window_start"])
        if wid in seen and seen[wid] != doc:
            problems.append(
                f"{label}: window {wid} emitted twice with different figures: {seen[wid]} / {doc}"
            )
        seen.setdefault(wid, doc)
    return seen


def compare_windows(
    label: str,
    expected: dict[WindowId, dict[str, Any]],
    got: dict[WindowId, dict[str, Any]],
    problems: list[str],
) -> None:
    fields = ("key", "window_start", "window_end", "count", "sum", "min", "max")
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = [
        (wid, expected[wid], {f: got[wid].get(f) for f in fields})
        for wid in sorted(set(expected) & set(got))
        if any(got[wid].get(f) != expected[wid][f] for f in fields)
    ]
    if missing:
        problems.append(
            f"{label}: {len(missing)} of {len(expected)} closed windows missing, e.g. {missing[:5]}"
        )
    if extra:
        problems.append(
            f"{label}: {len(extra)} windows emitted that the input does not close, e.g. {extra[:5]}"
        )
    if wrong:
        problems.append(f"{label}: {len(wrong)} windows with wrong figures, e.g. {wrong[:3]}")


@dataclass
class Sample:
    late: float | None
    watermarks: dict[str, float]


@dataclass
class Scraper:
    """Scrapes the watched workers' /metrics every second (and on demand)."""

    watched: dict[str, WorkerProcess] = field(default_factory=dict)
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Scraper:
        threading.Thread(target=self._run, name="scraper", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def watch(self, name: str, worker: WorkerProcess) -> None:
        with self._lock:
            self.watched[name] = worker
            self.samples.setdefault(name, [])

    def unwatch(self, name: str) -> None:
        with self._lock:
            self.watched.pop(name, None)

    def scrape(self, name: str) -> Sample | None:
        worker = self.watched.get(name)
        if worker is None or not worker.alive():
            return None
        try:
            status, text = worker.get("/metrics")
        except OSError:
            return None
        if status != 200:
            return None
        late = [
            v
            for labels, v in metric_samples(text, "sluice_late_events_total")
            if labels.get("job") == "rollup"
        ]
        marks = {
            labels.get("partition", "?"): v
            for labels, v in metric_samples(text, "sluice_watermark_seconds")
            if labels.get("table") == "rollup_windows"
        }
        sample = Sample(sum(late) if late else None, marks)
        with self._lock:
            self.samples[name].append(sample)
        return sample

    def final(self, name: str) -> Sample:
        """Scrape before stopping or killing the worker; fail when it does not answer."""
        sample = self.scrape(name)
        assert sample is not None, f"worker {name} does not answer /metrics"
        return sample

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                names = list(self.watched)
            for name in names:
                self.scrape(name)

    def check(self, problems: list[str]) -> None:
        for name, samples in self.samples.items():
            if not samples:
                problems.append(f"{name}: never scraped")
                continue
            if samples[-1].late is None:
                problems.append(f"{name}: no sluice_late_events_total{{job=rollup}} series")
            late = [s.late for s in samples if s.late]
            if late:
                problems.append(f"{name}: sluice_late_events_total rose to {max(late)}")
            last: dict[str, float] = {}
            for s in samples:
                for partition, mark in s.watermarks.items():
                    before = last.get(partition, float("-inf"))
                    if mark < before:
                        problems.append(
                            f"{name}: watermark of partition {partition} went back: {before} -> {mark}"
                        )
                    last[partition] = mark
        if not any(s.watermarks for samples in self.samples.values() for s in samples):
            problems.append('no sluice_watermark_seconds{table="rollup_windows"} series on any worker')


def wait_windows(stack: Stack, expected: int, alive: list[WorkerProcess]) -> None:
    """Wait (bounded) until the rollups topic holds at least ``expected`` distinct windows."""

    def enough() -> bool:
        records = asyncio.run(read_records(stack.bootstrap, stack.outputs["rollup"]))
        ids = {(d["key"], d["window_start"]) for d in (json.loads(r.value or b"null") for r in records)}
        return len(ids) >= expected

    try:
        wait_until(enough, 45, "every closed window emitted", alive)
    except AssertionError as exc:
        if any(not w.alive() for w in alive):
            raise
        print(exc)  # the comparison below says which windows are missing


def rollup_stack(kafka: LocalCluster, tmp: Path, events_topic: str, **env: str) -> Stack:
    tmp.mkdir(parents=True, exist_ok=True)
    stack = Stack(kafka.bootstrap_servers, tmp, jobs=("rollup",), SLUICE_WINDOW_GRACE_MS=str(GRACE_MS), **env)
    stack.inputs["rollup"] = events_topic
    return stack


def processed_events(stack: Stack) -> int:
    done, _ = asyncio.run(group_offsets(stack.bootstrap, stack.app_id, [stack.inputs["rollup"]]))
    return sum(done.values())


def assigned(worker: WorkerProcess) -> float:
    try:
        status, text = worker.get("/metrics")
    except OSError:
        return -1
    if status != 200:
        return -1
    values = [v for _, v in metric_samples(str(text), "sluice_assigned_partitions")]
    return values[0] if values else -1


@pytest.mark.slow
def test_closed_windows_do_not_depend_on_a_kill(kafka: LocalCluster, tmp_path: Path) -> None:
    events = backlog(per_partition=6000, step_ms=150, seed=9)
    assert_no_close_call(events)
    expected = truth_windows(events)
    assert len(expected) >= 12 * len(KEYS)
    events_topic = unique("events")
    produce_events(kafka.bootstrap_servers, events_topic, events)
    problems: list[str] = []
    scraper = Scraper().start()
    stacks = []
    try:
        # Run 1: one worker, the whole backlog.
        one = rollup_stack(kafka, tmp_path / "run1", events_topic)
        stacks.append(one)
        solo = one.worker("solo").start()
        scraper.watch("run1/solo", solo)
        solo.wait_ready()
        one.caught_up(alive=[solo], timeout=150)
        wait_windows(one, len(expected), [solo])
        final = scraper.final("run1/solo")
        assert solo.kill(signal.SIGTERM) == 0, solo.tail()
        scraper.unwatch("run1/solo")
        first = closed_windows(one, problems, "run 1")
        compare_windows("run 1", expected, first, problems)
        max_ts = max(ts for *_, ts in events)
        lowest = max(start + WINDOW_MS + GRACE_MS for _, start in expected)
        for partition in map(str, range(PARTITIONS)):
            mark = final.watermarks.get(partition)
            if mark is None or not lowest / 1000 <= mark <= max_ts / 1000 + 0.001:
                problems.append(
                    f"run 1: final watermark of partition {partition} is {mark}, expected within "
                    f"[{lowest / 1000}, {max_ts / 1000}] (closes the last window, never past the input)"
                )

        # Run 2: two rate-limited workers, one killed mid-backlog and restarted late.
        two = rollup_stack(kafka, tmp_path / "run2", events_topic, SLUICE_MAX_RATE_PER_PARTITION="150")
        stacks.append(two)
        a = two.worker("a").start()
        b = two.worker("b").start()
        scraper.watch("run2/a#1", a)
        scraper.watch("run2/b", b)
        a.wait_ready()
        b.wait_ready()
        wait_until(
            lambda: processed_events(two) >= 0.3 * len(events), 120, "30% of the backlog committed", [a, b]
        )
        scraper.final("run2/a#1")
        a.kill(signal.SIGKILL)
        scraper.unwatch("run2/a#1")
        killed_at = time.monotonic()
        wait_until(lambda: assigned(b) == 2 * PARTITIONS, 60, "b owns every partition", [b])
        b.wait_ready(60)
        time.sleep(max(0.0, killed_at + 12 - time.monotonic()))  # b's own inputs race ahead meanwhile
        assert processed_events(two) < len(events), "the backlog ran out before the restart"
        a2 = two.worker("a").start()  # the same data directory
        scraper.watch("run2/a#2", a2)
        a2.wait_ready(90)
        two.caught_up(alive=[a2, b], timeout=150)
        wait_windows(two, len(expected), [a2, b])
        for name, w in (("run2/a#2", a2), ("run2/b", b)):
            scraper.final(name)
            assert w.kill(signal.SIGTERM) == 0, w.tail()
            scraper.unwatch(name)
        second = closed_windows(two, problems, "run 2")
        compare_windows("run 2", expected, second, problems)
        if first != second:
            differ = sorted(wid for wid in set(first) | set(second) if first.get(wid) != second.get(wid))
            problems.append(f"runs 1 and 2 differ in {len(differ)} windows, e.g. {differ[:5]}")
    finally:
        scraper.stop()
        for stack in stacks:
            stack.stop_all()
    scraper.check(problems)
    assert not problems, "\n".join(problems)


def test_event_a_week_ahead_is_dead_lettered_and_closes_nothing(kafka: LocalCluster, tmp_path: Path) -> None:
    events = backlog(per_partition=1000, step_ms=300, seed=11)
    assert_no_close_call(events)
    future_ts = int(time.time() * 1000) + 7 * 86_400_000
    at = 500  # the future event is the 501st record of partition 0
    records = [(p, None, encode(k, v, ts)) for p, k, v, ts in events]
    first_of_p0 = next(i for i, (p, *_) in enumerate(events) if p == 0)
    records.insert(first_of_p0 + at, (0, None, encode(KEYS[0], 5, future_ts)))
    events_topic = unique("events")
    asyncio.run(create_topic(kafka.bootstrap_servers, events_topic, PARTITIONS))
    positions = asyncio.run(produce_records(kafka.bootstrap_servers, events_topic, records))
    future_pos = positions[first_of_p0 + at]
    assert future_pos == (0, at)
    expected = truth_windows(events)
    problems: list[str] = []
    stack = rollup_stack(kafka, tmp_path, events_topic)
    scraper = Scraper().start()
    try:
        w = stack.worker("w").start()
        scraper.watch("w", w)
        w.wait_ready()
        stack.caught_up(alive=[w])
        wait_windows(stack, len(expected), [w])
        final = scraper.final("w")
        assert w.kill(signal.SIGTERM) == 0, w.tail()
    finally:
        scraper.stop()
        stack.stop_all()
    letters = [
        r
        for r in asyncio.run(read_records(stack.bootstrap, stack.dead))
        if (r.headers.get("sluice.source.partition"), r.headers.get("sluice.source.offset"))
        == (b"0", str(at).encode())
    ]
    if not letters:
        problems.append(f"no dead letter for the event a week ahead at {future_pos}")
    for r in letters:
        if r.headers.get("sluice.reason") != b"ts_out_of_range":
            problems.append(f"dead letter of the future event: reason {r.headers.get('sluice.reason')!r}")
    got = closed_windows(stack, problems, "with a future event")
    compare_windows("with a future event", expected, got, problems)
    max_ts = max(ts for *_, ts in events)
    for partition, mark in final.watermarks.items():
        if mark > max_ts / 1000 + 0.001:
            problems.append(
                f"watermark of partition {partition} is {mark}, past the last valid event {max_ts / 1000}"
            )
    totals = changelog_table(stack.bootstrap, stack.app_id, "rollup_totals")
    truth = truth_totals(events)
    if totals != truth:
        problems.append("rollup_totals: " + diff(dict(truth), totals))
    scraper.check(problems)
    assert not problems, "\n".join(problems)
