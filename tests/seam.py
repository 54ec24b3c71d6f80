"""What unit tests read back from an agent's test context (``agent.test_context()``)."""

from __future__ import annotations

from typing import Any

from service.kafka.murmur2 import partition_for_key


def rows(table: Any) -> dict[str, Any]:
    """Every live row of the test context's partitions, as stored (keys as Faust stores them)."""
    out: dict[str, Any] = {}
    for part in table.partitions_here.values():
        for key, row in part.rows():
            if not key.startswith("\x00") and not row.deleted:
                out[key] = row.value
    return out


def skipped(table: Any) -> int:
    """Updates the table's guard refused (replays) over every partition of the test context."""
    return sum(part.duplicates_skipped for part in table.partitions_here.values())


def placed(key: str, partitions: int = 4) -> int:
    """The partition a Kafka producer puts ``key`` in (murmur2, as the Java client)."""
    return partition_for_key(key.encode(), partitions)
