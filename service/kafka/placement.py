"""Which partition each produced record goes to: strict rotation or the key's murmur2 hash.

Why sluice places records itself (passing ``partition=`` to the producer) instead of leaving
it to the client: aiokafka's default puts unkeyed records on a *random* partition, so "600
lines over 6 partitions" gives roughly, not exactly, 100 each. Load tests and replay tools
need exact, reproducible placement; keyed records must match the Java client (see
:mod:`service.kafka.murmur2`).
"""

from __future__ import annotations

from enum import StrEnum

from service.kafka.murmur2 import partition_for_key


class Partitioner(StrEnum):
    """``round-robin``: every record by rotation. ``hash``: keyed by murmur2, unkeyed by rotation."""

    ROUND_ROBIN = "round-robin"
    HASH = "hash"


class RoundRobin:
    """Strict rotation over partitions 0..N-1, starting at 0.

    Over all partitions, not only those with a live leader: skipping unavailable ones would
    make the distribution depend on broker health at the moment of sending. A record for a
    partition without a leader simply waits in the producer until one is elected.
    """

    def __init__(self, num_partitions: int) -> None:
        if num_partitions < 1:
            raise ValueError("num_partitions must be at least 1")
        self._num_partitions = num_partitions
        self._next = 0

    def __call__(self) -> int:
        partition = self._next
        self._next = (partition + 1) % self._num_partitions
        return partition


class Placement:
    """The partition for each record, from the CLI's ``--partitioner`` / ``--partition``.

    ``fixed`` (``--partition``) wins over everything. Under ``hash`` (also the default when no
    partitioner is named), a record with a key goes to ``toPositive(murmur2(key)) % N`` and a
    record without one joins the rotation: the Java client's "sticky" batching of unkeyed
    records is a throughput trick, not a contract, and rotation keeps the spread exact.
    """

    def __init__(
        self,
        num_partitions: int,
        partitioner: Partitioner = Partitioner.HASH,
        fixed: int | None = None,
    ) -> None:
        if fixed is not None and not 0 <= fixed < num_partitions:
            raise ValueError(f"partition {fixed} is not in 0..{num_partitions - 1}")
        self.num_partitions = num_partitions
        self._partitioner = partitioner
        self._fixed = fixed
        self._rotation = RoundRobin(num_partitions)

    def partition(self, key: bytes | None) -> int:
        """The partition of the next record, whose key is ``key`` (``None``: no key)."""
        if self._fixed is not None:
            return self._fixed
        if self._partitioner is Partitioner.HASH and key is not None:
            return partition_for_key(key, self.num_partitions)
        return self._rotation()
