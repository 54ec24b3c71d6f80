"""Offset-guarded table partitions: the one place where state changes, so every agent gets the
guard.

Agents write through :class:`service.app.table.Table` (Faust's ``app.Table``), which calls
:meth:`TablePartition.write` with the origin of the event being processed. The partition

1. refuses a write whose origin the row has already applied (a redelivered or replayed event;
   counted as a skipped duplicate) — see :func:`tables.positions.verdict`;
2. otherwise records the origin in the row's positions next to the new value;
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
from tables.positions import DUPLICATE, NEW, Origin, verdict
from tables.store import Store

META_PREFIX = "\x00"
"""Keys starting with NUL are the table's own bookkeeping (watermarks, topic ids)."""

MISSING: Any = object()
"""Undo value of a key that had no pending change."""


@dataclass(frozen=True)
class TableSpec:
    """A table's identity: its name, the shape of its values, and its changelog topic."""

    name: str
    schema: str
    """Tag of the value shape; bump it when a release changes the shape incompatibly."""
    description: str = ""
    foreign: Callable[[bytes], Any] | None = None
    """How to read a changelog value stock Faust wrote (no positions): accepted as the
    starting state when set."""

    def changelog_topic(self, app_id: str) -> str:
        return f"{app_id}-{self.name}-changelog"


def row_verdict(origin: Origin, row: Row | None) -> str:
    """:func:`tables.positions.verdict` of ``origin`` for a row already read (``None``: none)."""
    return verdict(origin, row.positions.get(origin.source) if row is not None else None)


class TablePartition:
    """One partition of a table on this worker: reads, guarded writes, pending changes."""

    def __init__(
        self,
        spec: TableSpec,
        partition: int,
        store: Store,
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
        and no JSON decode per update. Only persisted rows enter it; bounded by ``cache_rows``
        and by ``cache_bytes`` of their encoded size."""
        self.cache_rows = cache_rows
        self.cache_bytes = cache_bytes
        self._cached_bytes = 0
        self.duplicates_skipped = 0
        self.live_sources: frozenset[str] | None = None
        """Source keys updates can still come from; positions of other sources (deleted or
        re-created topics) are dropped from a row when it is rewritten, so rows do not grow
        without bound. ``None``: keep everything."""

    # ------------------------------------------------------------------ reads

    def row(self, key: str) -> Row | None:
        row: Row | None = self.pending.get(key, MISSING)  # one lookup: a hot key is pending or cached
        if row is not MISSING:
            return row
        row = self._cache.get(key, MISSING)
        if row is not MISSING:
            return row
        raw = self.store.get(key.encode())
        row = decode_row(raw)[1] if raw is not None else None
        self._remember(key, row, len(raw) if raw is not None else 0)
        return row

    def get(self, key: str) -> Any:
        row = self.row(key)
        return row.value if row is not None and not row.deleted else None

    def contains(self, key: str) -> bool:
        row = self.row(key)
        return row is not None and not row.deleted

    def forget_cache(self) -> None:
        """Drop decoded rows: the store was written behind this object's back (a restore)."""
        self._cache.clear()
        self._cached_bytes = 0

    def _remember(self, key: str, row: Row | None, size: int) -> None:
        cost = size + 64  # the encoded row and the entry around it
        if len(self._cache) >= self.cache_rows or self._cached_bytes + cost > self.cache_bytes:
            self.forget_cache()  # cheap and rare: the working set refills it
        self._cache[key] = row
        self._cached_bytes += cost

    # ------------------------------------------------------------------ writes

    def verdict(self, key: str, origin: Origin) -> str:
        """:func:`tables.positions.verdict` of ``origin`` for ``key``'s row."""
        return row_verdict(origin, self.row(key))

    def check(self, key: str, origin: Origin) -> str:
        """:meth:`verdict`, counting a duplicate as skipped."""
        found = self.verdict(key, origin)
        if found is DUPLICATE:
            self.duplicates_skipped += origin.updates
        return found

    def write(self, key: str, value: Any, origin: Origin, *, deleted: bool = False) -> Any:
        """Set ``key`` to ``value`` (or a tombstone) having applied ``origin`` (the caller
        checked it is new); return the previous pending entry (for :meth:`restore_pending`)."""
        return self._put(key, self.row(key), value, origin, deleted)

    def guarded_write(
        self, key: str, value: Any, origin: Origin, *, deleted: bool = False
    ) -> tuple[str, Any]:
        """:meth:`check`, then :meth:`write` if ``origin`` is new, reading the row once: the
        verdict and the previous pending entry (``MISSING`` when nothing was written)."""
        row = self.row(key)
        found = row_verdict(origin, row)
        if found is not NEW:
            if found is DUPLICATE:
                self.duplicates_skipped += origin.updates
            return found, MISSING
        return found, self._put(key, row, value, origin, deleted)

    def _put(self, key: str, row: Row | None, value: Any, origin: Origin, deleted: bool) -> Any:
        positions = dict(row.positions) if row is not None else {}
        live = self.live_sources
        if live is not None and len(positions) > len(live):
            positions = {source: p for source, p in positions.items() if source in live}
        positions[origin.source] = origin.position
        previous = self.pending.pop(key, MISSING)
        self.pending[key] = Row(None if deleted else value, positions, deleted)
        return previous

    def update(self, key: str, origin: Origin, fold: Callable[[Any, Any], Any], payload: Any) -> Any:
        """Guarded ``row = fold(row, payload)``; a combined origin applies only its unseen parts.
        Returns the new value, or ``None`` for a duplicate."""
        found = self.check(key, origin)
        if found is DUPLICATE:
            return None
        if found != "new":
            assert origin.parts is not None
            row = self.row(key)
            assert row is not None
            payload, seen = origin.parts.unseen(key, row.positions[origin.source])
            self.duplicates_skipped += seen
        value = fold(self.get(key), payload)
        self.write(key, value, origin)
        return value

    def put(self, key: str, value: Any) -> Any:
        """Set a bookkeeping row (watermarks) that is not guarded by origin; returns the
        previous pending entry."""
        row = self.row(key)
        previous = self.pending.pop(key, MISSING)  # re-inserted last: changelog order follows calls
        self.pending[key] = Row(value, row.positions if row is not None else {})
        return previous

    def remove(self, key: str) -> Any:
        """Delete ``key`` outright (no tombstone: windows, which the watermark protects);
        returns the previous pending entry."""
        previous = self.pending.pop(key, MISSING)
        self.pending[key] = None
        return previous

    def restore_pending(self, key: str, previous: Any) -> None:
        """Undo a write: put back the pending entry it replaced."""
        if previous is MISSING:
            self.pending.pop(key, None)
        else:
            self.pending[key] = previous

    # ------------------------------------------------------------------ durability

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
        """Every persisted row (pending changes excluded), bookkeeping rows and tombstones
        included."""
        for key, raw in self.store.items():
            yield key.decode(), decode_row(raw)[1]
