"""Records to Faust events: decode a fetched record by its topic's codecs, attach its origin.

Faust builds a :class:`faust.types.tuples.Message` and an :class:`faust.Event` per record and
runs them through its conductor; here the engine hands a fetched batch over and this module
makes the events directly (a message is filled slot by slot instead of through its 16-argument
constructor). A record of a packed topic (sluice's internal batched format,
:mod:`service.repartition`) becomes one event per update it carries.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson
from faust import Event
from faust.types.tuples import TP, Message

from tables.positions import Origin

if TYPE_CHECKING:
    from faust.types import AppT

ORIGIN_HEADER = "sluice.origin"
POSITION_HEADER = "sluice.pos"

Decoder = Callable[[Any], Any]


def message(record: Any, tp: TP, key: Any = None, value: Any = None) -> Message:
    """A Faust message for a fetched record, without Faust's constructor."""
    m = Message.__new__(Message)
    m.topic = record.topic
    m.partition = record.partition
    m.offset = record.offset
    m.timestamp = record.timestamp / 1000.0
    m.timestamp_type = record.timestamp_type
    m.headers = record.headers
    m.key = key if key is not None else record.key
    m.value = value if value is not None else record.value
    m.checksum = None
    m.serialized_key_size = record.serialized_key_size
    m.serialized_value_size = record.serialized_value_size
    m.acked = False
    m.refcount = 0
    m.tp = tp
    m.tracked = True
    m.time_in = m.time_out = m.time_total = None
    m.span = None  # type: ignore[attr-defined]
    m.generation_id = None
    return m


class SluiceEvent(Event):
    """A Faust event with where it came from."""

    origin: Origin
    """The source record it stands for (:mod:`tables.positions`)."""
    hop: bool
    """Whether it came through a hop (an agent sent it; its origin was carried)."""
    packed: bool
    """Whether it was unpacked from a packed record (one record, many events)."""


def make_event(
    app: AppT, key: Any, value: Any, headers: Any, msg: Message, origin: Origin, *, hop: bool, packed: bool
) -> SluiceEvent:
    event = SluiceEvent.__new__(SluiceEvent)
    event.app = app
    event.key = key
    event.value = value
    event.message = msg
    event.headers = dict(headers) if headers else {}
    event.acked = False
    event.origin = origin
    event.hop = hop
    event.packed = packed
    return event


def origin_of(record: Any, source: str) -> Origin:
    """The origin a record carries in its headers (sent by an agent), or its own position."""
    headers = record.headers
    if headers:
        if len(headers) > 1:  # sluice's own sends put the origin last (outbox): no search
            name, position = headers[-1]
            carried_name, carried = headers[-2]
            if name == POSITION_HEADER and carried_name == ORIGIN_HEADER:
                return Origin(carried.decode(), orjson.loads(position), record.timestamp)
        carried = None
        position = None
        for name, raw in headers:
            if name == ORIGIN_HEADER:
                carried = raw
            elif name == POSITION_HEADER:
                position = raw
        if carried is not None and position is not None:
            return Origin(carried.decode(), orjson.loads(position), record.timestamp)
    return Origin(source, [record.offset], record.timestamp)


def origin_headers(base: str, source: str, position: list[int]) -> list[tuple[str, bytes]]:
    """Headers of a record sent while processing an event of origin ``position`` under source
    key ``source`` (``base``: the event's own source): the source record it comes from
    (``sluice.source.*``, so any consumer can drop repeats: outputs are at-least-once) and the
    origin (``sluice.origin``; the send's ``sluice.pos`` is added per record) that sluice agents
    downstream are guarded by."""
    topic, partition, origin = _source_headers(base, source)
    return [topic, partition, ("sluice.source.offset", str(position[0]).encode()), origin]


@lru_cache(maxsize=4096)
def _source_headers(base: str, source: str) -> tuple[tuple[str, bytes], ...]:
    """The headers naming a source: the same for every event of one partition."""
    topic, _, partition = base.split(">", 1)[0].partition("#")[0].rpartition(":")
    return (
        ("sluice.source.topic", topic.encode()),
        ("sluice.source.partition", partition.encode()),
        (ORIGIN_HEADER, source.encode()),
    )
