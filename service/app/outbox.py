"""The outbox of a fetched batch: where done units leave their sends, dead letters and changed
table partitions, until the engine makes them durable.

Plain sends become records of the batch's senders (the shared one in at-least-once mode, the
partition's transactional one in exactly-once). Sends to a packed topic are grouped per
(topic, target partition, source) and become few records when the batch ends
(:mod:`service.repartition`), carrying each source's event-time progress for topics with
watermarks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from service.app.events import POSITION_HEADER, origin_headers
from service.effects import Sender
from service.engine.deadletters import DeadLetters
from service.repartition import OversizedUpdate
from service.repartition import encode as encode_packed
from tables.table import TablePartition

if TYPE_CHECKING:
    from service.app.topic import SluiceTopic
    from service.app.units import Unit

PackKey = tuple[str, int, str, int]
"""(topic, target partition, source key, fence)."""


@dataclass
class _Pack:
    topic: SluiceTopic
    entries: list[list[Any]] = field(default_factory=list)


class Outbox:
    def __init__(self, sender_for: Callable[[int], Sender], dead_letters: DeadLetters) -> None:
        self.sender_for = sender_for
        self.dead_letters = dead_letters
        self.dirty: dict[int, set[TablePartition]] = {}
        self._packs: dict[PackKey, _Pack] = {}
        self.reached: dict[str, int] = {}
        """Event time each source reached in sends to topics with watermarks."""
        self.on_clock: Callable[[str, Any, str], None] | None = None
        """Told when a unit of ``via`` sends to a watermarked topic under a source."""
        self.clocked: dict[tuple[str, str], tuple[SluiceTopic, int, int]] = {}
        """(topic, source) -> the topic, fence and source position to report (watermarks)."""

    def take(self, unit: Unit) -> None:
        """A unit is done: its effects join the batch (a replay's are durable already)."""
        if unit.replay:
            return
        items = unit.outbox
        if items:
            source = unit.send_source()
            origin = unit.origin
            prefix = origin.position
            at: Any = prefix[0] if len(prefix) == 1 else prefix
            fence = unit.fence
            headers: list[tuple[str, bytes]] | None = None
            packs = self._packs
            for item in items:
                topic = item[0]
                if topic is None:  # a plain record
                    _, name, partition, key, value, extra, index, timestamp = item
                    if headers is None:
                        headers = origin_headers(origin.source.split("@", 1)[0], source, prefix)
                    pos = (POSITION_HEADER, orjson.dumps([*prefix, index]))
                    self.sender_for(fence).add(
                        name, partition, key, value, [*extra, *headers, pos], timestamp
                    )
                    continue
                _, target, key, payload, index, ts = item
                name = topic.name
                slot = (name, target, source, fence)
                pack = packs.get(slot)
                if pack is None:
                    pack = packs[slot] = _Pack(topic)
                entries = pack.entries
                if entries and entries[-1][0] == at:
                    entries[-1][2].append([key, payload, index])
                else:
                    entries.append([at, ts, [[key, payload, index]]])
                if topic.watermarks:
                    if ts > self.reached.get(source, -1):
                        self.reached[source] = ts
                    if self.on_clock is not None and (name, source) not in self.clocked:
                        self.on_clock(unit.via, topic, source)
        if unit.dirty:
            self.dirty.setdefault(unit.fence, set()).update(unit.dirty)

    def report(self, topic: SluiceTopic, source: str, fence: int, position: int) -> None:
        """``source`` has processed up to ``position``: every partition of ``topic`` hears it."""
        self.clocked[(topic.get_topic_name(), source)] = (topic, fence, position)

    def finish(self, partitions_of: Callable[[str], int], reached: dict[str, int]) -> None:
        """Encode the packed sends (and the watermark reports) into the senders."""
        clocks: dict[tuple[str, str], tuple[int, int]] = {}
        for (name, source), (topic, fence, position) in self.clocked.items():
            clocks[(name, source)] = (reached.get(source, -1), position)
            for target in range(partitions_of(name)):
                self._packs.setdefault((name, target, source, fence), _Pack(topic))
        for (name, target, source, fence), pack in self._packs.items():
            clock = clocks.get((name, source))
            try:
                pieces = encode_packed(source, pack.entries, pack.topic.combine, clock)
            except OversizedUpdate as exc:
                raise AssertionError(
                    f"{name}: {exc}: a send larger than a record reached the outbox"
                ) from exc
            sender = self.sender_for(fence)
            for value, headers in pieces:
                sender.add(name, target, None, value, headers)
        self._packs.clear()
        self.clocked.clear()
