"""The data plane: sluice's engine run as a service of the Faust app, feeding its agents.

It replaces Faust's consumer, conductor, table manager and producer buffer (BootStrategy in
:mod:`service.app.base`). For every fetched batch the engine asks :meth:`DataPlane.process` to
run it: records become events (:mod:`service.app.decoding`), each agent reading a topic gets
them in its feed, and the batch is done when every feed is drained. Then the sources' clocks
move and windows close on the watermark (:mod:`service.app.clocks`), the packed sends are
encoded (:mod:`service.app.outbox`), and the engine makes it all durable and commits
(:mod:`service.engine`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from aiokafka import TopicPartition
from mode import Service

from service.app.clocks import Clocks
from service.app.decoding import Heard
from service.app.decoding import decode as decode_records
from service.app.feed import Feed
from service.app.outbox import Outbox
from service.effects import Sender
from service.engine import Engine
from service.engine.deadletters import DeadLetters
from service.gctune import tune_gc
from service.metrics import Metrics
from service.repartition import MAX_REPARTITION_RECORD
from service.settings import Settings
from service.topics import TopicSpec
from tables.table import TablePartition

if TYPE_CHECKING:
    from service.app.agent import SluiceAgent
    from service.app.table import SluiceTable
    from service.app.topic import SluiceTopic

log = logging.getLogger(__name__)


PACKED_MAX_MESSAGE_BYTES = str(max(1_048_588, MAX_REPARTITION_RECORD + 64 * 1024))
"""``max.message.bytes`` of packed topics: Kafka's default, or more than a repartition record."""


class DataPlane(Service):
    """The engine, as a service of the app (started by the worker, stopped on shutdown)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        super().__init__()
        self.app = app
        self.settings: Settings = app.sluice_settings
        self.metrics = metrics
        self._engine: Engine | None = None
        self.topics: dict[str, SluiceTopic] = {}
        """Every topic the app declared, by name."""
        self._feeds: dict[str, list[tuple[Feed, SluiceAgent]]] = {}
        self.clocks = Clocks(self)
        self.failure: BaseException | None = None
        self._run: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the app's side

    def declare_topic(self, topic: SluiceTopic) -> None:
        for name in topic.topics or ():
            self.topics.setdefault(name, topic)

    def add_topic(self, topic: SluiceTopic) -> None:
        """A topic declared after the worker started (group_by at the agent's start)."""
        self.declare_topic(topic)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("sluice: the worker has not started")
        return self._engine

    @property
    def state(self) -> str:
        return self._engine.state if self._engine is not None else "starting"

    def ready(self) -> bool:
        return self._engine is not None and self._engine.state == "running"

    def partitions_of(self, topic: str) -> int:
        engine = self._engine
        count = engine.rt.partitions_of(topic) if engine is not None else 0
        topic_obj = self.topics.get(topic)
        return (
            count
            or (topic_obj.partitions if topic_obj is not None and topic_obj.partitions else 0)
            or (self.settings.topic_partitions)
        )

    def internal(self, topic: str) -> bool:
        found = self.topics.get(topic)
        return bool(found is not None and found.internal)

    async def send_now(
        self,
        topic: SluiceTopic,
        key: Any,
        value: Any,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> Any:
        """A send outside any agent (timer, task, view, command): at once, acknowledged."""
        producer = self.engine.rt.producer
        if producer is None:
            raise RuntimeError("sluice: the worker is not started; sends need a running worker")
        name = topic.get_topic_name()
        kb = topic.encode_key(key)
        vb = topic.encode_value(value)
        if partition is None:
            partition = topic.partition_of(kb, self.partitions_of(name), 0)
        items = list(headers.items()) if isinstance(headers, dict) else list(headers or ())
        encoded = [(k, v.encode() if isinstance(v, str) else v) for k, v in items]
        ts = int(timestamp * 1000) if timestamp is not None else None
        future = await producer.send(name, vb, key=kb, partition=partition, timestamp_ms=ts, headers=encoded)
        return await future

    # ------------------------------------------------------------------ what the engine asks

    def agents(self) -> list[SluiceAgent]:
        return list(self.app.agents.values())

    def tables(self) -> list[SluiceTable]:
        return list(self.app.tables.values())

    def subscriptions(self) -> tuple[list[str], list[str]]:
        """Topics (and patterns) the agents read."""
        names: dict[str, None] = {}
        patterns: dict[str, None] = {}
        self._feeds.clear()
        for agent in self.agents():
            for name, feed in agent.feeds.items():
                names[name] = None
                self._feeds.setdefault(name, []).append((feed, agent))
            patterns.update(dict.fromkeys(agent.pattern_feeds))
        return list(names), list(patterns)

    def topic_specs(self) -> list[TopicSpec]:
        n = self.settings.topic_partitions
        specs = [TopicSpec(self.settings.dead_letter_topic, n, internal=False)]
        changelogs = {f"{self.settings.app_id}-{table.name}-changelog" for table in self.tables()}
        for name, topic in self.topics.items():
            if name in changelogs:  # the engine declares changelogs itself (compacted)
                continue
            partitions = topic.partitions or n
            # A packed topic's records are read by sluice only, kept until read, and may be as
            # large as MAX_REPARTITION_RECORD whatever the broker's own default allows.
            config = (
                {"retention.ms": "-1", "max.message.bytes": PACKED_MAX_MESSAGE_BYTES}
                if topic.internal and topic.pack
                else {}
            )
            specs.append(TopicSpec(name, partitions, internal=bool(topic.internal), config=config))
        return specs

    def feeds_for(self, topic: str) -> list[tuple[Feed, SluiceAgent]]:
        found = self._feeds.get(topic)
        if found is None:  # a topic matching a pattern, seen for the first time
            found = [
                (feed, agent)
                for agent in self.agents()
                for regex, feed in agent.pattern_feeds.values()
                if regex.fullmatch(topic)
            ]
            self._feeds[topic] = found
        return found

    def topic_of(self, name: str) -> SluiceTopic:
        topic = self.topics.get(name)
        if topic is not None:
            return topic
        for agent in self.agents():
            channel: Any = agent.channel
            pattern = getattr(channel, "pattern", None)
            if pattern and pattern.fullmatch(name):
                return cast("SluiceTopic", channel)
        raise KeyError(name)

    # ------------------------------------------------------------------ a batch

    async def process(
        self,
        batch: dict[TopicPartition, tuple[list[Any], int]],
        sender_for: Callable[[int], Sender],
        dead_letters: DeadLetters,
    ) -> dict[int, set[TablePartition]]:
        rt = self.engine.rt
        outbox = Outbox(sender_for, dead_letters)
        outbox.on_clock = self.clocks.learn_route
        feeds_used: dict[int, Feed] = {}
        jobs: dict[str, int] = {}
        """Agent job -> the broker timestamp of its batch's first record (event latency)."""
        heard: Heard = []
        for tp, (records, _) in batch.items():
            source = rt.incarnations.key(tp.topic, tp.partition)
            feeds = self.feeds_for(tp.topic)
            if records:
                events = self.decode(tp, records, source, outbox, heard)
                for feed, agent in feeds:
                    feed.outbox = outbox
                    feed.push(events)
                    feeds_used[id(feed)] = feed
                    jobs.setdefault(agent.job, records[0].timestamp)
                    if self.settings.metrics_enabled:
                        processed = self.metrics.events_processed.labels(
                            agent.job, tp.topic, str(tp.partition)
                        )
                        processed.inc(len(records))
        began = time.monotonic()
        await self._drain(feeds_used.values())
        if self.settings.metrics_enabled:
            spent = time.monotonic() - began
            now_ms = time.time() * 1000
            for job, first_ms in jobs.items():
                self.metrics.processing.labels(job).observe(spent)
                self.metrics.event_latency.labels(job).observe(max(0.0, (now_ms - first_ms) / 1000))
        self.clocks.report(batch, outbox)
        self.clocks.heard(heard)
        await self.clocks.close_windows(outbox)
        outbox.finish(self.partitions_of, outbox.reached)
        return outbox.dirty

    def decode(
        self, tp: TopicPartition, records: list[Any], source: str, outbox: Outbox, heard: Heard
    ) -> list[Any]:
        """Events of a fetched batch of ``tp`` (see :mod:`service.app.decoding`)."""

        def dead_letter(tp: TopicPartition, record: Any, reason: str, detail: str) -> None:
            jobs = [agent.job for _, agent in self.feeds_for(tp.topic)] or ["sluice"]
            where = (record.topic, record.partition, record.offset)
            outbox.dead_letters.send(
                outbox.sender_for(tp.partition), jobs[0], reason, detail, where, record.key, record.value
            )

        return decode_records(self.app, self.topic_of(tp.topic), tp, records, source, heard, dead_letter)

    async def _drain(self, feeds: Iterable[Feed]) -> None:
        waits = [feed.drained() for feed in feeds if not feed.idle]
        if waits:
            await asyncio.gather(*waits)

    def clocked_sources(self) -> list[TopicPartition]:
        """Input partitions whose log end the watermarks need."""
        return self.clocks.sources()

    def clocked_inputs(self) -> set[TopicPartition]:
        """Input partitions that report to watermarked topics even in a batch without records."""
        return set(self.clocks.routes)

    def on_partitions(self, tables: dict[str, dict[int, TablePartition]]) -> None:
        """The engine opened and restored the table partitions this worker owns now."""
        for table in self.tables():
            table.partitions_here = tables.get(table.name, {})
        self.clocks.attach(self.tables())

    # ------------------------------------------------------------------ service

    async def on_start(self) -> None:
        tune_gc()
        self.settings = self.app.final_settings()
        conf = self.app.conf
        url = (
            str(conf.canonical_url)
            if conf.canonical_url
            else f"http://{self.settings.web_host}:{self.settings.web_port}"
        )
        self._engine = Engine(self.settings, self, self.metrics, url)
        for agent in self.agents():  # every job's series exists from the start, at 0
            self.metrics.late_events.labels(agent.job)
        await self._agents_ready()
        await self.engine.start()
        self._run = asyncio.create_task(self._serve(), name="sluice-engine")

    async def _agents_ready(self, within: float = 10.0) -> None:
        """Let every agent reach its stream (a group_by declares its topic on the way)."""
        for _ in range(int(within / 0.05)):
            if all(agent.streams_started >= 1 for agent in self.agents()):
                return
            await asyncio.sleep(0.05)

    async def _serve(self) -> None:
        try:
            await self.engine.run()
        except BaseException as exc:
            self.failure = exc
            raise
        finally:
            self.app.sluice_stopped.set()

    async def on_stop(self) -> None:
        if self._engine is None:
            return
        self.engine.request_stop()
        if self._run is not None:
            try:
                await self._run
            except BaseException as exc:  # reported by the worker
                self.failure = self.failure or exc
        await self.engine.close()
