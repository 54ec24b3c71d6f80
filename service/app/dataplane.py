"""The data plane: sluice's engine run as a service of the Faust app, feeding its agents.

It replaces Faust's consumer, conductor, table manager and producer buffer (BootStrategy in
:mod:`service.app.base`). For every fetched batch the engine asks :meth:`DataPlane.process` to
run it: records become events (:mod:`service.app.events`), each agent reading a topic gets them
in its feed, and the batch is done when every feed is drained. Then windows close on the
watermark (:mod:`service.app.windows`), the packed sends are encoded, and the engine makes it
all durable and commits (:mod:`service.engine`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from aiokafka import TopicPartition
from mode import Service

from service.app.events import make_event, message, origin_of
from service.app.feed import Feed
from service.app.outbox import Outbox
from service.app.units import Unit
from service.app.windows import attach, close_due
from service.effects import Sender
from service.engine import Engine
from service.engine.deadletters import DeadLetters
from service.gctune import tune_gc
from service.metrics import Metrics
from service.repartition import decode as decode_packed
from service.settings import Settings
from service.topics import TopicSpec
from tables.positions import Origin
from tables.table import TablePartition

if TYPE_CHECKING:
    from service.app.agent import SluiceAgent
    from service.app.table import SluiceTable
    from service.app.topic import SluiceTopic

log = logging.getLogger(__name__)


def base_source(source: str) -> str:
    """The source partition a (possibly tagged, multi-hop) source key starts at."""
    return source.split("@", 1)[0].split(">", 1)[0]


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
        self.clock_routes: dict[TopicPartition, set[tuple[SluiceTopic, str]]] = {}
        """Input partition -> (watermarked topic, source) its agents report to."""
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
            config = {"retention.ms": "-1"} if topic.internal and topic.pack else {}
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
        outbox.on_clock = self.learn_route
        feeds_used: dict[int, Feed] = {}
        jobs: dict[str, int] = {}
        """Agent job -> the broker timestamp of its batch's first record (event latency)."""
        heard: list[tuple[int, str, int, int]] = []
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
        for tp, (_, position) in batch.items():
            for topic, source in self.clock_routes.get(tp, ()):
                outbox.report(topic, source, tp.partition, position)
        for number, source, w, o in heard:
            for table in self.tables():
                part = table.partitions_here.get(number)
                if part is not None and getattr(part, "clock", None) is not None:
                    part.clock.heard(source, w, o)  # type: ignore[attr-defined]
        await self._close_windows(outbox)
        outbox.finish(self.partitions_of, outbox.reached)
        return outbox.dirty

    def decode(
        self,
        tp: TopicPartition,
        records: list[Any],
        source: str,
        outbox: Outbox,
        heard: list[tuple[int, str, int, int]],
    ) -> list[Any]:
        topic = self.topic_of(tp.topic)
        app = self.app
        out = []
        if topic.pack:
            for record in records:
                try:
                    decoded = decode_packed(record.value, record.headers, topic.combine)
                except Exception as exc:
                    self._dead_letter(outbox, tp, record, "invalid_repartition_record", repr(exc))
                    continue
                msg = message(record, tp)
                for key, payload, origin in decoded.updates:
                    rebuild = getattr(topic.value_type, "from_data", None)
                    value = rebuild(payload) if rebuild is not None else payload
                    event = make_event(app, key, value, None, msg, origin, hop=True, packed=True)
                    out.append(event)
                if decoded.clock is not None:
                    heard.append((tp.partition, base_source(decoded.source), *decoded.clock))
            return out
        for record in records:
            msg = message(record, tp)
            try:
                key = topic.decode_key(msg)
                value = topic.decode_value(msg)
            except Exception as exc:
                self._dead_letter(outbox, tp, record, "decode_error", repr(exc))
                continue
            origin = origin_of(record, source)
            event = make_event(
                app, key, value, record.headers, msg, origin, hop=origin.source != source, packed=False
            )
            out.append(event)
        return out

    def _dead_letter(self, outbox: Outbox, tp: TopicPartition, record: Any, reason: str, detail: str) -> None:
        jobs = [agent.job for _, agent in self.feeds_for(tp.topic)] or ["sluice"]
        where = (record.topic, record.partition, record.offset)
        outbox.dead_letters.send(
            outbox.sender_for(tp.partition), jobs[0], reason, detail, where, record.key, record.value
        )

    async def _drain(self, feeds: Iterable[Feed]) -> None:
        waits = [feed.drained() for feed in feeds if not feed.idle]
        if waits:
            await asyncio.gather(*waits)

    async def _close_windows(self, outbox: Outbox) -> None:
        ends = self.engine.rt.source_ends
        for table in self.tables():
            if table.window is None:
                continue
            sources = self.watermark_sources(table)
            for number, part in table.partitions_here.items():
                if getattr(part, "clock", None) is None:
                    continue

                def new_unit(partition: int, origin: Origin, _table: Any = table) -> Unit:
                    return Unit(None, origin, partition, "", "", False, "rollup")  # type: ignore[arg-type]

                for unit in await close_due(table, part, sources, ends, new_unit):
                    outbox.take(unit)
                outbox.dirty.setdefault(number, set()).add(part)
                watermark = part.clock.watermark  # type: ignore[attr-defined]
                self.metrics.watermark.labels(table.name, str(number)).set(max(0, watermark) / 1000)

    def watermark_sources(self, table: SluiceTable) -> list[str]:
        """Sources the table's watermark waits for: every partition of the topics it declares
        (``watermark_topics``), and every source heard so far."""
        rt = self.engine.rt
        out: dict[str, None] = {}
        for topic in getattr(table, "watermark_topics", ()):
            name = topic.get_topic_name()
            for partition in range(self.partitions_of(name)):
                out[rt.incarnations.key(name, partition)] = None
        for part in table.partitions_here.values():
            clock = getattr(part, "clock", None)
            if clock is not None:
                out.update(dict.fromkeys(clock.sources))
        return list(out)

    def clocked_sources(self) -> list[TopicPartition]:
        """Input partitions whose log end the watermarks need."""
        out: dict[TopicPartition, None] = {}
        for table in self.tables():
            if table.window is None:
                continue
            for source in self.watermark_sources(table):
                rest, _, _ = source.partition("#")
                topic, _, partition = rest.rpartition(":")
                out[TopicPartition(topic, int(partition))] = None
        return list(out)

    def on_partitions(self, tables: dict[str, dict[int, TablePartition]]) -> None:
        """The engine opened and restored the table partitions this worker owns now."""
        for table in self.tables():
            table.partitions_here = tables.get(table.name, {})
            if table.window is not None:
                for part in table.partitions_here.values():
                    attach(part)

    def learn_route(self, via: str, topic: SluiceTopic, source: str) -> None:
        """Events of ``via`` (``topic:partition``) sent to a watermarked topic under ``source``:
        from now on every batch of ``via`` reports its position there."""
        name, _, partition = via.rpartition(":")
        self.clock_routes.setdefault(TopicPartition(name, int(partition)), set()).add((topic, source))

    def clocked_inputs(self) -> set[TopicPartition]:
        return set(self.clock_routes)

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
