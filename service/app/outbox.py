"""The outbox of a fetched batch: where done units leave their sends, dead letters and changed
table partitions, until the engine makes them durable.

Plain sends become records of the batch's senders (the shared one in at-least-once mode, the
partition's transactional one in exactly-once). Sends to a packed topic are grouped per
(topic, target partition, source) and become few records when the batch ends
(:mod:`service.repartition`), carrying each source's event-time progress for topics with
watermarks; sends to a folding topic are merged per key (:mod:`service.app.folding`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from service.app.events import POSITION_HEADER, origin_headers
from service.app.folding import Folds
from service.effects import Sender
from service.engine.deadletters import DeadLetters
from service.repartition import Headers, OversizedUpdate
from service.repartition import encode as encode_packed
from tables.table import TablePartition

if TYPE_CHECKING:
    from service.app.topic import SluiceTopic
    from service.app.units import Unit

PackKey = tuple[str, str, int]
"""(topic, source key, fence): one source's sends to one topic, then per target partition."""


@dataclass
class _Pack:
    topic: SluiceTopic
    targets: dict[int, list[list[Any]]] = field(default_factory=dict)
    """Target partition -> entries (:mod:`service.repartition`)."""


class Outbox:
    def __init__(self, sender_for: Callable[[int], Sender], dead_letters: DeadLetters) -> None:
        self.sender_for = sender_for
        self.dead_letters = dead_letters
        self.dirty: dict[int, set[TablePartition]] = {}
        self._packs: dict[PackKey, _Pack] = {}
        self.folds = Folds()
        self.reached: dict[str, int] = {}
        """Event time each source reached in sends to topics with watermarks."""
        self.on_clock: Callable[[str, Any, str], None] | None = None
        """Told when a unit of ``via`` sends to a watermarked topic under a source."""
        self.clocked: dict[tuple[str, str], tuple[SluiceTopic, int, int]] = {}
        """(topic, source) -> the topic, fence and source position to report (watermarks)."""

    def _pack(self, topic: SluiceTopic, source: str, fence: int) -> _Pack:
        slot = (topic.name, source, fence)
        pack = self._packs.get(slot)
        if pack is None:
            pack = self._packs[slot] = _Pack(topic)
        return pack

    def take(self, unit: Unit) -> None:
        """A unit is done: its effects join the batch (a replay's are durable already)."""
        if unit.replay:
            return
        items = unit.outbox
        if items or unit.packed or unit.folded:
            source = unit.send_source()
            prefix = unit.origin.position
            at = prefix[0] if len(prefix) == 1 else prefix
            if items:
                self._plain(unit, items, source, prefix)
            if unit.packed:
                self._packed(unit, unit.packed, source, at)
            if unit.folded:
                self.folds.take(unit.folded, source, at, unit.fence)
        if unit.dirty:
            self.dirty.setdefault(unit.fence, set()).update(unit.dirty)

    def _plain(self, unit: Unit, items: list[Any], source: str, prefix: list[int]) -> None:
        sender = self.sender_for(unit.fence)
        headers = origin_headers(unit.origin.source.split("@", 1)[0], source, prefix)
        for name, partition, key, value, extra, index, timestamp in items:
            pos = (POSITION_HEADER, orjson.dumps([*prefix, index]))
            sender.add(name, partition, key, value, [*extra, *headers, pos], timestamp)

    def _packed(
        self, unit: Unit, packed: dict[Any, dict[int, list[list[Any]]]], source: str, at: Any
    ) -> None:
        """Each target's runs become entries (``[at, ts, updates]``) after the batch's others
        from ``source``: a source's updates stay in the order of their positions."""
        for topic, by_target in packed.items():
            targets = self._pack(topic, source, unit.fence).targets
            for target, runs in by_target.items():
                entries = targets.get(target)
                if entries is None:
                    entries = targets[target] = []
                for ts, updates in runs:
                    if entries and entries[-1][0] == at and entries[-1][1] == ts:
                        entries[-1][2].extend(updates)
                    else:
                        entries.append([at, ts, updates])
                    if topic.watermarks:
                        self._clock(unit, topic, source, ts)

    def _clock(self, unit: Unit, topic: SluiceTopic, source: str, ts: int) -> None:
        """A send to a topic with watermarks: the source reached ``ts``, and the input the unit
        came from reports its position to the topic from now on."""
        if ts > self.reached.get(source, -1):
            self.reached[source] = ts
        if self.on_clock is not None and (topic.name, source) not in self.clocked:
            self.on_clock(unit.via, topic, source)

    def report(self, topic: SluiceTopic, source: str, fence: int, position: int) -> None:
        """``source`` has processed up to ``position``: every partition of ``topic`` hears it."""
        self.clocked[(topic.get_topic_name(), source)] = (topic, fence, position)

    def finish(self, partitions_of: Callable[[str], int], reached: dict[str, int]) -> None:
        """Encode the packed sends (and the watermark reports) into the senders."""
        clocks: dict[tuple[str, str], tuple[int, int]] = {}
        for (name, source), (topic, fence, position) in self.clocked.items():
            clocks[(name, source)] = (reached.get(source, -1), position)
            targets = self._pack(topic, source, fence).targets
            for target in range(partitions_of(name)):
                targets.setdefault(target, [])
        for (name, source, fence), pack in self._packs.items():
            clock = clocks.get((name, source))
            sender = self.sender_for(fence)
            for target, entries in pack.targets.items():
                try:
                    pieces = encode_packed(source, entries, pack.topic.combine, clock)
                except OversizedUpdate as exc:
                    raise AssertionError(
                        f"{name}: {exc}: a send larger than a record reached the outbox"
                    ) from exc
                for value, headers in pieces:
                    sender.add(name, target, None, value, headers)
        self._packs.clear()
        self.clocked.clear()
        self.folds.finish(self._add_packed)

    def _add_packed(self, fence: int, name: str, target: int, value: bytes, headers: Headers) -> None:
        self.sender_for(fence).add(name, target, None, value, headers)
