"""Local RocksDB for one partition of one table, and the data directory's ownership check.

Layout: ``<data_dir>/APP_ID`` names the app that owns the directory;
``<data_dir>/tables/<table>/<partition>/`` is one RocksDB per table partition, so handing a
partition to another worker never touches the others. User keys are stored under ``k``,
bookkeeping under ``m``: the changelog offset this copy reflects and the schema tag.

Local writes happen only *after* the changelog records they carry were acknowledged by the
broker (see :mod:`tables.table`), so this copy is always a prefix of the changelog: a worker
restarting on it and a fresh worker rebuilding from the changelog alone end in the same state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from rocksdict import Options, Rdict, WriteBatch

from service.errors import StateError

_KEY = b"k"
_META_CHANGELOG = b"m:changelog-offset"
_META_SCHEMA = b"m:schema"


class Store(Protocol):
    """What a table partition needs of its local copy (RocksDB, or memory in unit tests)."""

    path: Path

    def get(self, key: bytes) -> bytes | None: ...

    def changelog_offset(self) -> int: ...

    def schema(self) -> str | None: ...

    def write(
        self, changes: Iterable[tuple[bytes, bytes | None]], changelog_offset: int, schema: str
    ) -> None: ...

    def items(self) -> Iterator[tuple[bytes, bytes]]: ...

    def approximate_keys(self) -> int: ...

    def close(self) -> None: ...


def claim_data_dir(data_dir: Path, app_id: str) -> None:
    """Refuse a data directory written under another app id; claim a new one for ``app_id``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    marker = data_dir / "APP_ID"
    if marker.exists():
        owner = marker.read_text().strip()
        if owner != app_id:
            raise StateError(
                f"data directory {data_dir} belongs to SLUICE_APP_ID={owner!r}, not {app_id!r}: "
                "point SLUICE_DATA_DIR at another directory or set the matching app id"
            )
        return
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(app_id + "\n")
    tmp.replace(marker)


WRITE_BUFFER_BYTES = 8 * 1024 * 1024
"""Per partition store. RocksDB's default (64 MiB, two of them) times a dozen table partitions
per worker is most of a gigabyte of memtables; the changelog, not the memtable, is what makes
writes durable here, so small buffers cost little."""


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.increase_parallelism(2)
    opts.set_write_buffer_size(WRITE_BUFFER_BYTES)
    opts.set_max_write_buffer_number(2)
    return opts


class PartitionStore:
    """One table partition's RocksDB: rows by key plus the changelog offset they reflect."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = Rdict(str(path), _options())

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(_KEY + key)
        return value

    def changelog_offset(self) -> int:
        """Offset of the last changelog record reflected here, or -1 for an empty copy."""
        raw = self._db.get(_META_CHANGELOG)
        return int(raw) if raw is not None else -1

    def schema(self) -> str | None:
        raw = self._db.get(_META_SCHEMA)
        return raw.decode() if raw is not None else None

    def write(
        self,
        changes: Iterable[tuple[bytes, bytes | None]],
        changelog_offset: int,
        schema: str,
    ) -> None:
        """Apply ``changes`` (``None`` deletes) and record the changelog offset, atomically."""
        batch = WriteBatch(raw_mode=True)
        for key, value in changes:
            if value is None:
                batch.delete(_KEY + key)
            else:
                batch.put(_KEY + key, value)
        batch.put(_META_CHANGELOG, str(changelog_offset).encode())
        batch.put(_META_SCHEMA, schema.encode())
        self._db.write(batch)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every row, in key order."""
        it = self._db.iter()
        it.seek(_KEY)
        while it.valid():
            key: bytes = it.key()
            if not key.startswith(_KEY):
                break
            yield key[1:], it.value()
            it.next()

    def approximate_keys(self) -> int:
        value: int | None = self._db.property_int_value("rocksdb.estimate-num-keys")
        return max(0, (value or 0) - 2)

    def close(self) -> None:
        self._db.close()


class MemoryStore:
    """A table partition kept in memory, with :class:`PartitionStore`'s interface: for unit
    tests through ``agent.test_context()``, where no RocksDB and no changelog exist."""

    def __init__(self) -> None:
        self.path = Path("<memory>")
        self._rows: dict[bytes, bytes] = {}
        self._offset = -1
        self._schema: str | None = None

    def get(self, key: bytes) -> bytes | None:
        return self._rows.get(key)

    def changelog_offset(self) -> int:
        return self._offset

    def schema(self) -> str | None:
        return self._schema

    def write(
        self, changes: Iterable[tuple[bytes, bytes | None]], changelog_offset: int, schema: str
    ) -> None:
        for key, value in changes:
            if value is None:
                self._rows.pop(key, None)
            else:
                self._rows[key] = value
        self._offset = changelog_offset
        self._schema = schema

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        yield from sorted(self._rows.items())

    def approximate_keys(self) -> int:
        return len(self._rows)

    def close(self) -> None:
        self._rows.clear()
