"""Unit tests of agents without a broker: ``agent.test_context()``, sluice's version of Faust's
seam (:meth:`faust.Agent.test_context`).

The context gives the app's tables in-memory partitions (same guard, same positions, no
RocksDB, no changelog), runs the agent's real code over events made from the values put in, and
collects what the agent would have sent and dead-lettered. ``put()`` processes one event the way
a worker does (one unit: done when the agent asks for the next) and then makes the tables'
changes "durable" (as a commit would), so a second ``put()`` with the same offset is a replay the
guard skips.

    async with wordcount_agent.test_context() as ctx:
        await ctx.put(b"the the end", partition=0, offset=7)
        await ctx.put(b"the the end", partition=0, offset=7)  # replayed: skipped
        assert counts_table["the"] == 2
        assert ctx.sent[-1].value == {"word": "end", "count": 1}
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import orjson
from aiokafka import TopicPartition

from service.app.outbox import Outbox
from service.app.windows import attach
from service.engine.deadletters import DeadLetters
from service.repartition import encode as encode_packed
from tables.store import MemoryStore
from tables.table import TablePartition

if TYPE_CHECKING:
    from service.app.agent import SluiceAgent


@dataclass(frozen=True)
class Sent:
    topic: str
    partition: int
    key: bytes | None
    value: Any
    """The value, decoded from JSON when it is JSON."""
    headers: dict[str, bytes]
    raw: bytes | None = None


@dataclass
class _Record:
    """What a fetched Kafka record carries, for the app's decoder."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: int
    timestamp_type: int = 0
    serialized_key_size: int = 0
    serialized_value_size: int = 0


class _Capture:
    """A sender that keeps what it is given (decoding JSON values for convenience)."""

    def __init__(self, sink: list[Sent]) -> None:
        self.sink = sink

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Any = None,
        timestamp: Any = None,
    ) -> None:
        try:
            decoded: Any = orjson.loads(value) if value is not None else None
        except orjson.JSONDecodeError:
            decoded = value
        self.sink.append(Sent(topic, partition, key, decoded, dict(headers or []), value))


@dataclass
class TestContext:
    agent: SluiceAgent
    partitions: int = 0
    """Partitions of the agent's topic and the tables (default: ``topic_partitions``)."""
    sent: list[Sent] = field(default_factory=list)
    dead_letters: list[Sent] = field(default_factory=list)
    _offsets: dict[int, int] = field(default_factory=dict)

    async def __aenter__(self) -> TestContext:
        self.agent = cast("SluiceAgent", self.agent.clone())  # a fresh agent each time, as Faust's does
        app = self.agent.app
        self.partitions = self.partitions or app.conf.topic_partitions
        for table in app.tables.values():
            count = table.partitions or self.partitions
            table.partitions_here = {q: TablePartition(table.spec, q, MemoryStore()) for q in range(count)}
            if table.window is not None:
                for part in table.partitions_here.values():
                    attach(part)
        await self.agent.start()
        return self

    async def __aexit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        await self.agent.stop()

    async def put(
        self,
        value: Any = None,
        key: Any = None,
        *,
        partition: int | None = None,
        offset: int | None = None,
        timestamp: float | None = None,
        headers: dict[str, bytes] | None = None,
        origin: tuple[str, list[int]] | None = None,
    ) -> None:
        """Process one event of the agent's topic (``value`` as the agent's topic would decode
        it; ``offset``: defaults to the next one of the partition; ``origin``: a source key and
        position the event carries, as if an agent had sent it)."""
        await self._process([self._record(value, key, partition, offset, timestamp, headers, origin)])

    async def put_many(
        self,
        values: list[Any],
        *,
        keys: list[Any] | None = None,
        partition: int | None = None,
        timestamps: list[float] | None = None,
    ) -> None:
        """Process ``values`` (with ``keys``, event ``timestamps`` in seconds) as one fetched
        batch of one partition, at its next offsets, so that a ``take()`` gets them together."""
        keys = keys if keys is not None else [None] * len(values)
        times: list[float | None] = list(timestamps) if timestamps is not None else [None] * len(values)
        first = self._record(values[0], keys[0], partition, None, times[0], None, None)
        rest = [
            self._record(value, key, first.partition, None, ts, None, None)
            for value, key, ts in zip(values[1:], keys[1:], times[1:], strict=True)
        ]
        await self._process([first, *rest])

    def _record(
        self,
        value: Any,
        key: Any,
        partition: int | None,
        offset: int | None,
        timestamp: float | None,
        headers: dict[str, bytes] | None,
        origin: tuple[str, list[int]] | None,
    ) -> _Record:
        agent = self.agent
        topic: Any = agent.channel
        name = topic.get_topic_name()
        if partition is None:  # where a producer would place the key
            raw_key = str(key).encode() if topic.pack and key is not None else topic.encode_key(key)
            partition = topic.partition_of(raw_key, self.partitions, 0)
        if offset is None:
            offset = self._offsets.get(partition, -1) + 1
        self._offsets[partition] = max(offset, self._offsets.get(partition, -1))
        ts = int((timestamp if timestamp is not None else time.time()) * 1000)
        extra = list((headers or {}).items())
        if topic.pack:
            source, position = origin or (f"{name}:{partition}", [offset, 0])
            entries = [
                [
                    position[:-1][0] if len(position) == 2 else position[:-1],
                    ts,
                    [[str(key), value, position[-1]]],
                ]
            ]
            [(raw, extra)] = encode_packed(source, entries, topic.combine, None)
            return _Record(name, partition, offset, None, raw, extra, ts)
        if origin is not None:
            extra += [("sluice.origin", origin[0].encode()), ("sluice.pos", orjson.dumps(origin[1]))]
        return _Record(name, partition, offset, topic.encode_key(key), topic.encode_value(value), extra, ts)

    async def _process(self, records: list[_Record]) -> None:
        agent = self.agent
        app = agent.app
        name = records[0].topic
        ts = records[-1].timestamp
        capture: Any = _Capture(self.sent)
        outbox = Outbox(lambda _number: capture, DeadLetters("dead-letters", 1, app.sluice_metrics))
        outbox.dead_letters = _DeadLetters(self.dead_letters, app)
        start = len(self.sent)  # what earlier puts sent came back already
        await self._run(name, records, outbox)
        # What the agent sent to a topic it reads itself (a group_by's repartition topic) comes
        # back to it, as through Kafka.
        while True:
            outbox.finish(lambda _t: self.partitions, outbox.reached)
            loop_back = [s for s in self.sent[start:] if s.topic in agent.feeds and s.topic != name]
            start = len(self.sent)
            if not loop_back:
                break
            for sent in loop_back:
                offset = self._offsets.get(-1, -1) + 1
                self._offsets[-1] = offset
                again = _Record(
                    sent.topic, sent.partition, offset, sent.key, sent.raw, list(sent.headers.items()), ts
                )
                await self._run(sent.topic, [again], outbox)
        for parts in outbox.dirty.values():
            for part in parts:
                rows = list(part.changelog_records())
                part.persist(rows, part.store.changelog_offset() + len(rows))

    async def _run(self, name: str, records: list[_Record], outbox: Outbox) -> None:
        agent = self.agent
        record = records[0]
        tp = TopicPartition(name, record.partition)
        events = agent.app.data_plane.decode(tp, records, f"{name}:{record.partition}", outbox, [])
        feed = agent.feeds[name]
        feed.outbox = outbox
        feed.push(events)
        await asyncio.wait_for(feed.drained(), 10)


class _DeadLetters(DeadLetters):
    def __init__(self, sink: list[Sent], app: Any) -> None:
        super().__init__("dead-letters", 1, app.sluice_metrics)
        self.sink = sink

    def send(
        self,
        sender: Any,
        job: str,
        reason: str,
        detail: str,
        source: tuple[str, int, int],
        key: bytes | None,
        value: bytes | None,
    ) -> None:
        topic, partition, offset = source
        headers = {
            "sluice.reason": reason.encode(),
            "sluice.detail": detail.encode(),
            "sluice.job": job.encode(),
            "sluice.source.topic": topic.encode(),
            "sluice.source.partition": str(partition).encode(),
            "sluice.source.offset": str(offset).encode(),
        }
        self.sink.append(Sent(self.topic, 0, key, value, headers))
