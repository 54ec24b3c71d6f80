"""Offset-guarded tables: the one place where state changes, so every job gets the guard.

A job never writes a row directly: it calls :meth:`TablePartition.update` with the update's
origin and a pure function of the current value. The partition

1. refuses the update when the row already applied that origin (a redelivered or replayed
   event; counted as a skipped duplicate),
2. otherwise computes the new value and records the origin in the row's positions,
3. keeps the changed row in memory (``pending``) until the engine has sent it to the changelog
   and the broker acknowledged it; only then it reaches local RocksDB (:meth:`persist`).

Step 3 is how the trap in G3 is closed: local RocksDB never holds an update the changelog
lacks, so after a crash the next owner, rebuilding from the changelog alone, has every update
the old owner's disk has, and a replayed event finds the same row on both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tables.codec import Row, decode_row, encode_row
from tables.positions import Origin, after
from tables.store import PartitionStore

META_PREFIX = "\x00"
"""Keys starting with NUL are the table's own bookkeeping (stream time, source offsets)."""


@dataclass(frozen=True)
class TableSpec:
    """A table's identity: its name, the shape of its values, and its changelog topic."""

    name: str
    schema: str
    """Tag of the value shape; bump it when a release changes the shape incompatibly."""
    description: str = ""

    def changelog_topic(self, app_id: str) -> str:
        return f"{app_id}-{self.name}-changelog"


class TablePartition:
    """One partition of a table on this worker: reads, guarded updates, pending changes."""

    def __init__(
        self,
        spec: TableSpec,
        partition: int,
        store: PartitionStore,
        cache_rows: int = 50_000,
        cache_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.spec = spec
        self.partition = partition
        self.store = store
        self.pending: dict[str, Row | None] = {}
        """Rows changed since the last persist, in change order; ``None`` is a delete."""
        self._cache: dict[str, Row | None] = {}
        """Decoded persisted rows (``None``: known absent), so a hot key costs no RocksDB read
        and no JSON decode per update. Only persisted rows enter it; bounded by ``cache_rows`` and
        by ``cache_bytes`` of their encoded size (a table of large rows must not grow the heap
        without bound)."""
        self.cache_rows = cache_rows
        self.cache_bytes = cache_bytes
        self._cached_bytes = 0
        self.duplicates_skipped = 0
        self.live_sources: frozenset[str] | None = None
        """The source keys updates can still come from (every partition of the current
        incarnation of the job's inputs); positions of other sources — deleted or re-created
        topics — are dropped from a row when it is rewritten, so rows do not grow without
        bound. ``None``: keep everything."""

    def row(self, key: str) -> Row | None:
        if key in self.pending:
            return self.pending[key]
        try:
            return self._cache[key]
        except KeyError:
            pass
        raw = self.store.get(key.encode())
        row = decode_row(raw)[1] if raw is not None else None
        self._remember(key, row, len(raw) if raw is not None else 0)
        return row

    def forget_cache(self) -> None:
        """Drop decoded rows: the store was written behind this object's back (a restore)."""
        self._cache.clear()
        self._cached_bytes = 0

    def _remember(self, key: str, row: Row | None, size: int) -> None:
        if len(self._cache) >= self.cache_rows or self._cached_bytes + size > self.cache_bytes:
            self.forget_cache()  # cheap and rare: the working set refills it
        self._cache[key] = row
        self._cached_bytes += size + 64

    def get(self, key: str) -> Any:
        row = self.row(key)
        return row.value if row is not None else None

    def update(self, key: str, origin: Origin, fold: Callable[[Any, Any], Any], payload: Any) -> Any:
        """Set the row to ``fold(current, payload)`` unless it already applied ``origin``; return
        the new value, or ``None`` when the update was a duplicate. ``current`` is ``None`` for
        a new row. A combined origin applies only its parts the row has not seen.
        """
        row = self.row(key)
        if row is None:
            positions = {}
            current = None
        else:
            last = row.positions.get(origin.source)
            if last is not None:
                if not after(origin.offset, origin.seq, last):
                    self.duplicates_skipped += origin.updates
                    return None
                first = origin.first
                if first is not None and not after(first[0], first[1], last):
                    assert origin.parts is not None
                    payload, seen = origin.parts.unseen(key, last)
                    self.duplicates_skipped += seen
            positions = dict(row.positions)
            live = self.live_sources
            if live is not None and len(positions) > len(live):
                positions = {source: p for source, p in positions.items() if source in live}
            current = row.value
        value = fold(current, payload)
        positions[origin.source] = origin.position
        self.pending[key] = Row(value, positions)
        return value

    def put(self, key: str, value: Any) -> None:
        """Set a bookkeeping row (stream time, offsets) that is not guarded by origin."""
        row = self.row(key)
        self.pending.pop(key, None)  # re-inserted last: changelog order follows call order
        self.pending[key] = Row(value, row.positions if row is not None else {})

    def delete(self, key: str) -> None:
        self.pending.pop(key, None)  # re-inserted last, after anything the job put before it
        self.pending[key] = None

    def changelog_records(self) -> Iterator[tuple[bytes, bytes | None]]:
        """The pending changes as changelog (key, value) pairs, in change order."""
        schema = self.spec.schema
        for key, row in self.pending.items():
            yield key.encode(), (encode_row(row, schema) if row is not None else None)

    def persist(self, records: list[tuple[bytes, bytes | None]], changelog_offset: int) -> None:
        """The changelog acknowledged ``records`` up to ``changelog_offset``: make them local."""
        self.store.write(records, changelog_offset, self.spec.schema)
        sizes = {key: len(value) if value is not None else 0 for key, value in records}
        for key, row in self.pending.items():
            self._remember(key, row, sizes.get(key.encode(), 0))
        self.pending.clear()

    def discard_pending(self) -> None:
        """Forget the changes not yet made durable (their events will be processed again)."""
        self.pending.clear()

    def rows(self) -> Iterator[tuple[str, Row]]:
        """Every persisted row (pending changes excluded), bookkeeping rows included."""
        for key, raw in self.store.items():
            yield key.decode(), decode_row(raw)[1]
