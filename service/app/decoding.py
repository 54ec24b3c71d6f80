"""Fetched records to events for the agents: by the topic's codecs, with their origins.

A record of a plain topic becomes one event (its origin carried in its headers when an agent
sent it, :func:`service.app.events.origin_of`); a record of a packed topic becomes one event
per update it carries (:mod:`service.repartition`), and reports the sending source's clock
when it carries one. A record that cannot be decoded is dead-lettered here, with the job of
the first agent reading its topic, and never reaches an agent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition

from service.app.events import make_event, message, origin_of
from service.repartition import decode as decode_packed

if TYPE_CHECKING:
    from service.app.topic import SluiceTopic

Heard = list[tuple[int, str, int, int]]
"""(partition number, source, event time reached, source position) of packed records' clocks."""
DeadLetter = Callable[[TopicPartition, Any, str, str], None]
"""Dead-letters (input partition, record, reason, detail)."""


def base_source(source: str) -> str:
    """The source partition a (possibly tagged, multi-hop) source key starts at."""
    return source.split("@", 1)[0].split(">", 1)[0]


def decode(
    app: Any,
    topic: SluiceTopic,
    tp: TopicPartition,
    records: list[Any],
    source: str,
    heard: Heard,
    dead_letter: DeadLetter,
) -> list[Any]:
    """The events of ``records`` fetched from ``tp`` (whose own source key is ``source``)."""
    if topic.pack:
        return _unpack(app, topic, tp, records, heard, dead_letter)
    out = []
    for record in records:
        msg = message(record, tp)
        try:
            key = topic.decode_key(msg)
            value = topic.decode_value(msg)
        except Exception as exc:
            dead_letter(tp, record, "decode_error", repr(exc))
            continue
        origin = origin_of(record, source)
        out.append(
            make_event(
                app, key, value, record.headers, msg, origin, hop=origin.source != source, packed=False
            )
        )
    return out


def _unpack(
    app: Any,
    topic: SluiceTopic,
    tp: TopicPartition,
    records: list[Any],
    heard: Heard,
    dead_letter: DeadLetter,
) -> list[Any]:
    rebuild = getattr(topic.value_type, "from_data", None)
    out = []
    for record in records:
        try:
            decoded = decode_packed(record.value, record.headers, topic.combine)
        except Exception as exc:
            dead_letter(tp, record, "invalid_repartition_record", repr(exc))
            continue
        msg = message(record, tp)
        for key, payload, origin in decoded.updates:
            value = rebuild(payload) if rebuild is not None else payload
            out.append(make_event(app, key, value, None, msg, origin, hop=True, packed=True))
        if decoded.clock is not None:
            heard.append((tp.partition, base_source(decoded.source), *decoded.clock))
    return out
