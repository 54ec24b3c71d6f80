"""Event time in the data plane: which inputs report to watermarked topics, which sources a
windowed table waits for, and closing the windows a batch's watermark passed.

A source's clock travels with its packed records (:mod:`service.repartition`): once a unit of
input partition ``via`` sends to a topic with ``watermarks=True``, every later batch of ``via``
reports its position there, with or without sends, so every partition of the topic hears from
every source (:mod:`tables.watermark`). A windowed table's partition closes a window when its
watermark — the least event time its sources have reached — passes the window's end.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition

from service.app.units import Unit
from service.app.windows import attach, close_due
from tables.positions import Origin

if TYPE_CHECKING:
    from service.app.dataplane import DataPlane
    from service.app.outbox import Outbox
    from service.app.table import SluiceTable
    from service.app.topic import SluiceTopic


class Clocks:
    """The data plane's event-time bookkeeping (one per worker)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.routes: dict[TopicPartition, set[tuple[SluiceTopic, str]]] = {}
        """Input partition -> (watermarked topic, source) its agents report to."""

    def learn_route(self, via: str, topic: SluiceTopic, source: str) -> None:
        """Events of ``via`` (``topic:partition``) sent to a watermarked topic under ``source``:
        from now on every batch of ``via`` reports its position there."""
        name, _, partition = via.rpartition(":")
        self.routes.setdefault(TopicPartition(name, int(partition)), set()).add((topic, source))

    def report(self, batch: dict[TopicPartition, tuple[list[Any], int]], outbox: Outbox) -> None:
        """Every input of the batch with a route reports the position it reached."""
        for tp, (_, position) in batch.items():
            for topic, source in self.routes.get(tp, ()):
                outbox.report(topic, source, tp.partition, position)

    def heard(self, heard: list[tuple[int, str, int, int]]) -> None:
        """Clocks that packed records carried reach the table partitions of their number."""
        for number, source, reached, position in heard:
            for table in self.plane.tables():
                part = table.partitions_here.get(number)
                if part is not None and getattr(part, "clock", None) is not None:
                    part.clock.heard(source, reached, position)  # type: ignore[attr-defined]

    async def close_windows(self, outbox: Outbox) -> None:
        plane = self.plane
        ends = plane.engine.rt.source_ends
        for table in plane.tables():
            if table.window is None:
                continue
            sources = self.watermark_sources(table)
            for number, part in table.partitions_here.items():
                if getattr(part, "clock", None) is None:
                    continue
                new_unit = partial(_window_unit, table.name)
                for unit in await close_due(table, part, sources, ends, new_unit):
                    outbox.take(unit)
                outbox.dirty.setdefault(number, set()).add(part)
                watermark = part.clock.watermark  # type: ignore[attr-defined]
                plane.metrics.watermark.labels(table.name, str(number)).set(max(0, watermark) / 1000)

    def watermark_sources(self, table: SluiceTable) -> list[str]:
        """Sources the table's watermark waits for: every partition of the topics it declares
        (``watermark_topics``), and every source heard so far."""
        plane = self.plane
        rt = plane.engine.rt
        out: dict[str, None] = {}
        for topic in getattr(table, "watermark_topics", ()):
            name = topic.get_topic_name()
            for partition in range(plane.partitions_of(name)):
                out[rt.incarnations.key(name, partition)] = None
        for part in table.partitions_here.values():
            clock = getattr(part, "clock", None)
            if clock is not None:
                out.update(dict.fromkeys(clock.sources))
        return list(out)

    def sources(self) -> list[TopicPartition]:
        """Input partitions whose log end the watermarks need."""
        out: dict[TopicPartition, None] = {}
        for table in self.plane.tables():
            if table.window is None:
                continue
            for source in self.watermark_sources(table):
                rest, _, _ = source.partition("#")
                topic, _, partition = rest.rpartition(":")
                out[TopicPartition(topic, int(partition))] = None
        return list(out)

    @staticmethod
    def attach(tables: list[SluiceTable]) -> None:
        """Windowed tables' partitions get their clocks (after assignment and restore)."""
        for table in tables:
            if table.window is not None:
                for part in table.partitions_here.values():
                    attach(part)


def _window_unit(job: str, partition: int, origin: Origin) -> Unit:
    """The unit a closing window's effects (its emitted output, its removed rows) belong to,
    labelled in metrics and dead letters by the table's name."""
    return Unit(None, origin, partition, "", "", False, job)  # type: ignore[arg-type]
