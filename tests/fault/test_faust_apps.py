"""Faust apps moved to sluice by swapping the App class (``tests/apps``), against a real broker:
kill -9 while the worker works through a backlog, restart (once on an empty data directory,
once on a stale one), and the table equals the truth computed here from the input, key by key —
as its changelog has it (what a fresh worker recovers) and as the last worker's RocksDB has it.

The workers are the apps' own processes, started as Faust starts them: ``python -m faust -A
tests.apps.<app> worker`` or ``python tests/apps/<app>.py worker``. Input is paced per partition
(``SLUICE_MAX_RATE_PER_PARTITION``) so that the kills land while the backlog is being worked
through, whatever the machine's speed; the internal hops (agent-to-agent, group_by) run unpaced.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.harness import (
    WorkerProcess,
    changelog_table,
    create_topic,
    diff,
    group_offsets,
    local_table,
    metric_total,
    produce_records,
    read_records,
    scrape,
    unique,
    wait_caught_up,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
RATE = "1000"
"""Input events per second and partition while the kills happen (``SLUICE_MAX_RATE_PER_PARTITION``)."""

UNPACED = "1000000"
"""The last run only finishes the backlog."""

FAUST_A = [sys.executable, "-m", "faust", "-A"]
"""``faust -A <module> worker``; the other form runs the app module as a script."""


def script(app: str) -> list[str]:
    return [sys.executable, f"tests/apps/{app}.py"]


class AppWorker(WorkerProcess):
    """One worker of a Faust app of ``tests/apps``, run as Faust runs it, with the ``SLUICE_*``
    environment of :class:`tests.harness.WorkerProcess` (and the web port given as a flag)."""

    def __init__(
        self, command: list[str], data_dir: Path, deployment: Deployment, name: str, **env: str
    ) -> None:
        super().__init__(
            deployment.bootstrap,
            data_dir,
            deployment.app_id,
            deployment.tmp / f"{name}.log",
            **{**deployment.env, **env},
        )
        self.command = [*command, "worker", "-l", "info", "--web-port", str(self.port)]

    def start(self) -> AppWorker:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log, stderr=log)
        return self


class Deployment:
    """One app id and its topics on the shared broker; workers of one app module."""

    def __init__(self, bootstrap: str, tmp: Path, app: str, **env: str) -> None:
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.app = app
        self.app_id = unique(app)
        self.input = unique(f"{app}-in")
        self.dead = unique(f"{app}-dead")
        self.env = {
            f"{app.upper()}_APP_ID": self.app_id,
            f"{app.upper()}_TOPIC": self.input,
            "SLUICE_DEAD_LETTER_TOPIC": self.dead,
            "SLUICE_TOPIC_PARTITIONS": str(PARTITIONS),
            "SLUICE_MAX_RATE_PER_PARTITION": RATE,
            **env,
        }
        self.workers: list[AppWorker] = []

    def worker(self, command: list[str], data_dir: str, name: str, **env: str) -> AppWorker:
        w = AppWorker(command, self.tmp / data_dir, self, name, **env)
        self.workers.append(w)
        return w.start()

    def committed(self, topic: str) -> int:
        done, _ = asyncio.run(group_offsets(self.bootstrap, self.app_id, [topic]))
        return sum(done.values())

    def kill_at(self, worker: AppWorker, total: int, fraction: float, timeout: float = 120) -> int:
        """kill -9 ``worker`` once the group has committed ``fraction`` of the input; return
        how much of it was committed then (asserted short of all of it: mid-backlog)."""
        wait_until(
            lambda: self.committed(self.input) >= fraction * total,
            timeout,
            f"{fraction:.0%} of {self.input} committed",
            [worker],
        )
        worker.kill(signal.SIGKILL)
        done = self.committed(self.input)
        assert done < total, f"the backlog was done before the kill ({done} of {total})"
        return done

    def sources(self) -> list[str]:
        """The topics the group consumes: the input and the app's internal topics (an agent's own
        topic is ``<app id>-<agent name>``, a group_by topic names the topic it regroups)."""
        return asyncio.run(topics_of(self.bootstrap, self.app_id, self.input))

    def caught_up(self, expected_sources: int, timeout: float = 180) -> None:
        sources = self.sources()
        assert len(sources) == expected_sources, sources
        wait_caught_up(self.bootstrap, self.app_id, sources, timeout)

    def table(self, name: str) -> dict[str, Any]:
        return changelog_table(self.bootstrap, self.app_id, name)

    def dead_letters(self) -> list[Any]:
        return asyncio.run(read_records(self.bootstrap, self.dead))

    def stop_all(self) -> None:
        for w in self.workers:
            if w.alive():
                w.kill(signal.SIGKILL)


async def topics_of(bootstrap: str, app_id: str, input_topic: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = await admin.list_topics()
    finally:
        await admin.close()
    return sorted(
        name
        for name in names
        if (name.startswith(f"{app_id}-") or input_topic in name) and not name.endswith("-changelog")
    )


@pytest.fixture
def deployments(kafka: Any, tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    made: list[Deployment] = []

    def make(app: str, **env: str) -> Deployment:
        d = Deployment(kafka.bootstrap_servers, tmp_path, app, **env)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop_all()


def backlog(bootstrap: str, topic: str, records: Iterable[tuple[int | None, bytes | None, bytes]]) -> None:
    asyncio.run(create_topic(bootstrap, topic, PARTITIONS))
    asyncio.run(produce_records(bootstrap, topic, records))


def check_exact(expected: dict[str, int], actual: dict[str, Any], where: str) -> None:
    assert actual == expected, f"{where}: " + diff(expected, actual)


def replays_skipped(worker: AppWorker) -> int:
    """Table updates the guard refused in this worker's life (events replayed after a kill)."""
    return int(metric_total(scrape(worker), "sluice_duplicates_skipped_total"))


def no_dead_letters(d: Deployment) -> None:
    letters = d.dead_letters()
    if letters:
        first = letters[0].headers
        raise AssertionError(
            f"{len(letters)} dead letters, the first: {first.get('sluice.reason')!r} "
            f"{first.get('sluice.detail')!r}"
        )


def stop(worker: AppWorker) -> None:
    """Healthy, then SIGTERM: drained, committed, exit 0."""
    status, body = worker.get("/healthz")
    assert status == 200 and body["ok"], body
    code = worker.kill(signal.SIGTERM)
    assert code == 0, f"SIGTERM: exit {code}\n{worker.tail()}"


# ---------------------------------------------------------------------- orders


def test_orders_agent_to_agent_totals_are_exact_across_kill_9(
    deployments: Callable[..., Deployment],
) -> None:
    """``process_order`` sends each order's amount to ``count_agent`` (its own topic), which adds
    it to ``customer_totals``; two kill -9s mid-backlog (run 2 on an empty disk, run 3 back on
    run 1's stale disk); the table is the sum of the amounts per customer."""
    d = deployments("orders")
    rng = random.Random(11)
    total = 48_000
    orders: list[dict[str, Any]] = [
        {"order_id": f"o-{i}", "customer": f"customer-{rng.randrange(300)}", "amount": rng.randint(1, 500)}
        for i in range(total)
    ]
    backlog(d.bootstrap, d.input, ((None, None, json.dumps(o).encode()) for o in orders))
    truth: Counter[str] = Counter()
    for o in orders:
        truth[json.dumps(o["customer"])] += o["amount"]

    command = [*FAUST_A, "tests.apps.orders"]
    w = d.worker(command, "disk-a", "run1")
    w.wait_ready(90)
    first = d.kill_at(w, total, 0.2)
    w = d.worker(command, "disk-b", "run2")  # an empty data directory
    w.wait_ready(90)
    second = d.kill_at(w, total, 0.55)
    w = d.worker(command, "disk-a", "run3", SLUICE_MAX_RATE_PER_PARTITION=UNPACED)  # run 1's disk
    w.wait_ready(90)
    d.caught_up(expected_sources=2)
    print(f"orders: killed at {first} and {second} of {total}; run 3 skipped {replays_skipped(w)} replays")
    stop(w)

    assert d.sources() == sorted([d.input, f"{d.app_id}-tests.apps.orders.count_agent"])
    no_dead_letters(d)
    check_exact(dict(truth), d.table("customer_totals"), "changelog customer_totals")
    check_exact(dict(truth), local_table(w.data_dir, "customer_totals"), "run 3's RocksDB")


# ---------------------------------------------------------------------- clicks


def click_time(i: int, total: int, base_ms: int) -> int:
    """Event times spread over 20 minutes from ``base_ms``."""
    return base_ms + (i * 20 * 60_000) // total


def test_clicks_group_by_into_a_tumbling_window_is_exact_across_kill_9(
    deployments: Callable[..., Deployment],
) -> None:
    """``count_clicks`` regroups unkeyed clicks by ``Click.user`` and counts them per user and
    one-minute window of event time; two kill -9s mid-backlog. The windowed table equals the
    count per (window start, user), and every count a window reached was sent (``.current()``),
    none beyond it."""
    output = unique("click-counts")
    d = deployments("clicks", CLICKS_OUTPUT_TOPIC=output)
    rng = random.Random(13)
    total = 40_000
    base_ms = (int(time.time() * 1000) // 60_000 - 30) * 60_000
    users = [f"user-{rng.randrange(120)}" for _ in range(total)]
    records = []
    truth: Counter[str] = Counter()
    window_of: dict[str, tuple[str, int]] = {}
    for i, user in enumerate(users):
        ts = click_time(i, total, base_ms)
        url = f"/page/{i}"
        value = json.dumps({"user": user, "url": url}).encode()
        records.append((i % PARTITIONS, None, value, ts))
        start = ts - ts % 60_000
        truth[f"{start:015d}|{json.dumps(user)}"] += 1
        window_of[url] = (user, start)
    asyncio.run(create_topic(d.bootstrap, d.input, PARTITIONS))
    asyncio.run(produce_timed(d.bootstrap, d.input, records))

    command = script("clicks")
    w = d.worker(command, "disk-a", "run1")
    w.wait_ready(90)
    first = d.kill_at(w, total, 0.2)
    w = d.worker(command, "disk-b", "run2")  # an empty data directory
    w.wait_ready(90)
    second = d.kill_at(w, total, 0.55)
    w = d.worker(command, "disk-a", "run3", SLUICE_MAX_RATE_PER_PARTITION=UNPACED)
    w.wait_ready(90)
    d.caught_up(expected_sources=2)
    replays = replays_skipped(w)
    print(f"clicks: killed at {first} and {second} of {total}; {len(truth)} windows; replays {replays}")
    stop(w)

    [regrouped] = [t for t in d.sources() if t != d.input]
    assert regrouped.endswith(f"-{d.input}-Click.user-repartition")
    no_dead_letters(d)
    check_exact(dict(truth), d.table("user_clicks"), "changelog user_clicks")
    check_exact(dict(truth), local_table(w.data_dir, "user_clicks"), "run 3's RocksDB")

    # Outputs are at-least-once: a count may repeat, but each window's counts are exactly 1..n.
    reached: defaultdict[tuple[str, int], set[int]] = defaultdict(set)
    urls = set()
    for record in asyncio.run(read_records(d.bootstrap, output)):
        sent = json.loads(record.value or b"null")
        urls.add(sent["url"])
        user, start = window_of[sent["url"]]
        assert sent["user"] == user
        reached[(user, start)].add(sent["count"])
    assert urls == set(window_of), f"{len(set(window_of) - urls)} clicks without an output"
    wrong = {
        (user, start): sorted(counts)
        for (user, start), counts in reached.items()
        if counts != set(range(1, truth[f"{start:015d}|{json.dumps(user)}"] + 1))
    }
    assert not wrong, f"{len(wrong)} windows sent other counts than 1..n, e.g. {list(wrong.items())[:3]}"


async def produce_timed(bootstrap: str, topic: str, records: list[tuple[int, None, bytes, int]]) -> None:
    """Send (partition, key, value, timestamp ms) records, acks=all."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for _ in range(100):
            if await producer.partitions_for(topic):
                break
            await producer.client.force_metadata_update()
            await asyncio.sleep(0.1)
        futures = [
            await producer.send(topic, value, key=key, partition=partition, timestamp_ms=ts)
            for partition, key, value, ts in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


# ---------------------------------------------------------------------- pageviews


def page_count(worker: AppWorker, page: str) -> tuple[int, Any]:
    return worker.get(f"/count/{urllib.parse.quote(page, safe='')}/")


def test_pageviews_table_and_table_route_with_two_workers_across_kill_9(
    deployments: Callable[..., Deployment],
) -> None:
    """Two workers (one started with ``faust -A``, one as a script) share ``page_views``; each
    is killed -9 once mid-backlog and restarted (one on an empty disk). Then the table equals the
    views per page, and ``/count/{page}/`` answers every page's count on either worker (the
    router forwards a key it does not own to its owner)."""
    d = deployments("pageviews", SLUICE_MAX_RATE_PER_PARTITION="500")  # two workers start slower
    rng = random.Random(17)
    total = 40_000
    pages = [f"page-{rng.randrange(150)}" for _ in range(total)]
    backlog(
        d.bootstrap,
        d.input,
        (
            (None, page.encode(), json.dumps({"page": page, "user": f"u-{i % 37}"}).encode())
            for i, page in enumerate(pages)
        ),
    )
    truth = Counter(json.dumps(page) for page in pages)

    a_cmd, b_cmd = [*FAUST_A, "tests.apps.pageviews"], script("pageviews")
    a = d.worker(a_cmd, "disk-a1", "a1")
    b = d.worker(b_cmd, "disk-b", "b1")
    a.wait_ready(90)
    b.wait_ready(90)
    first = d.kill_at(a, total, 0.2)
    a = d.worker(a_cmd, "disk-a2", "a2")  # an empty data directory
    a.wait_ready(90)
    second = d.kill_at(b, total, 0.55)
    b = d.worker(b_cmd, "disk-b", "b2")  # its own disk, stale
    b.wait_ready(90)
    d.caught_up(expected_sources=1)
    replays = replays_skipped(a) + replays_skipped(b)
    print(f"pageviews: killed at {first} and {second} of {total}; replays skipped {replays}")
    a.wait_ready(60)
    b.wait_ready(60)

    no_dead_letters(d)
    check_exact(dict(truth), d.table("page_views"), "changelog page_views")
    owned = {w.port: w.get("/readyz")[1]["assigned_partitions"] for w in (a, b)}
    assert all(owned.values()), f"both workers own partitions: {owned}"
    asked = [*sorted({json.loads(k) for k in truth})[:40], "never-viewed"]
    for worker in (a, b):
        for page in asked:
            status, body = page_count(worker, page)
            assert status == 200, (page, status, body)
            assert body == {page: truth.get(json.dumps(page), 0)}, (worker.port, page, body)
    stop(a)
    stop(b)


# ---------------------------------------------------------------------- joining a new group


class Expelled(AssertionError):
    """The worker lost its group membership right after its assignment."""


def test_a_new_app_stays_in_its_group_with_a_six_second_session_timeout(
    deployments: Callable[..., Deployment],
) -> None:
    d = deployments("orders", SLUICE_SESSION_TIMEOUT_MS="6000", SLUICE_TOPIC_PARTITIONS="8")
    w = d.worker([*FAUST_A, "tests.apps.orders"], "disk", "run")
    w.wait_ready(60)
    time.sleep(8)  # beyond the session timeout, past the first heartbeats
    log = w.log_path.read_text()
    if "Heartbeat failed: local member_id was not recognized" in log:
        raise Expelled(f"expelled after its assignment; assignments: {log.count('partitions assigned')}")
    assert w.get("/readyz")[0] == 200


# ---------------------------------------------------------------------- table_route's owner URLs


@pytest.fixture(scope="module")
def lone_pageviews(kafka: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppWorker]:
    """One pageviews worker owning every partition, bound as by default (``0.0.0.0``, also what
    deploy/k8s/configmap.yaml sets)."""
    d = Deployment(kafka.bootstrap_servers, tmp_path_factory.mktemp("lone"), "pageviews")
    w = d.worker([*FAUST_A, "tests.apps.pageviews"], "disk", "lone", SLUICE_WEB_HOST="0.0.0.0")
    try:
        w.wait_ready(90)
        yield w
    finally:
        d.stop_all()


def test_the_owner_url_a_worker_publishes_is_routable(lone_pageviews: AppWorker) -> None:
    status, routes = lone_pageviews.get("/router/")
    assert status == 200
    hosts = {urllib.parse.urlsplit(url).hostname for url in routes}
    assert "0.0.0.0" not in hosts, routes


def test_router_lists_every_partition_a_worker_owns(lone_pageviews: AppWorker) -> None:
    status, routes = lone_pageviews.get("/router/")
    assert status == 200
    assert list(routes.values()) == [{"page_views": list(range(PARTITIONS))}], routes
