"""The offsets table: per source partition, the next offset whose effects are durable (G4).

Stage 2 keeps its position inside the job's own table partition (a bookkeeping row written in
the same changelog batch as the rows it reflects). Stage 1 has no table of its own, so its
positions live here, keyed ``"topic:partition"``. Both are written to their changelogs after
the batch's outputs are acknowledged and before its offsets are committed, so the group's
committed offset is never ahead of the table's in a healthy system.
"""

from tables.table import META_PREFIX, TableSpec

OFFSETS = TableSpec(
    name="offsets",
    schema="source-offsets.v1",
    description='"topic:partition" -> next input offset whose effects are durable',
)
SOURCE_OFFSET_PREFIX = META_PREFIX + "source-offset:"
"""Bookkeeping row of a job's first table: ``<prefix><topic>:<partition>`` -> next offset."""


TOPIC_ID_PREFIX = META_PREFIX + "topic-id:"
"""Bookkeeping row of the offsets table: ``<prefix><topic>`` -> ``{"id": topic id, "inc": n}``,
the incarnation of an input topic the worker last saw (see :mod:`service.engine.incarnations`)."""


def offset_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def source_key(topic: str, partition: int, incarnation: int = 0) -> str:
    """A source partition as positions and the offsets table name it: ``topic:partition``, and
    ``topic:partition#n`` for the n-th re-creation of the topic, so that positions of a deleted
    topic never make its successor's records look applied."""
    base = f"{topic}:{partition}"
    return f"{base}#{incarnation}" if incarnation else base


def parse_source_key(key: str) -> tuple[str, int, int]:
    """``(topic, partition, incarnation)`` of a :func:`source_key`."""
    rest, _, inc = key.partition("#")
    topic, _, partition = rest.rpartition(":")
    return topic, int(partition), int(inc or 0)
