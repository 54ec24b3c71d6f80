"""What the engine runs: the app's agents and tables, seen through one narrow interface.

The engine (fetch, admission, durability, fencing, resume, restore, lag) knows nothing of Faust;
:class:`service.app.dataplane.DataPlane` implements this protocol for a ``service.App``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from aiokafka import TopicPartition

from service.effects import Sender
from service.engine.deadletters import DeadLetters
from service.topics import TopicSpec
from tables.table import TablePartition, TableSpec


class Table(Protocol):
    """A table as the engine sees it: its spec and partition count."""

    @property
    def spec(self) -> TableSpec: ...

    partitions: int | None


class Workload(Protocol):
    def subscriptions(self) -> tuple[list[str], list[str]]:
        """The topics and the topic patterns the agents read."""

    def topic_specs(self) -> list[TopicSpec]:
        """Every topic the app declared (created at start when missing)."""

    def tables(self) -> list[Any]:
        """The app's tables (each with a ``spec`` and ``partitions``)."""

    async def process(
        self,
        batch: dict[TopicPartition, tuple[list[Any], int]],
        sender_for: Callable[[int], Sender],
        dead_letters: DeadLetters,
    ) -> dict[int, set[TablePartition]]:
        """Run a fetched batch through the agents; their records go to ``sender_for(partition
        number)``; return the table partitions changed, by partition number."""

    def on_partitions(self, tables: dict[str, dict[int, TablePartition]]) -> None:
        """The table partitions this worker owns now, restored."""

    def clocked_sources(self) -> list[TopicPartition]:
        """Input partitions whose log end the watermarks need."""

    def clocked_inputs(self) -> set[TopicPartition]:
        """Input partitions that report their position to watermarks (see batch)."""

    def partitions_of(self, topic: str) -> int: ...

    def internal(self, topic: str) -> bool:
        """Whether the app owns ``topic`` (a repartition or agent topic, not a source)."""
