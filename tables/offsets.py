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


def offset_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"
