"""Faust's ``Table`` over sluice's offset-guarded table partitions.

``table[k]``, ``table[k] = v``, ``table[k] += v``, ``del table[k]``, ``k in table``,
``table.get``, iteration, and windowed tables (``.tumbling()``/``.hopping()`` with Faust's own
``WindowWrapper``: ``.current()``, ``.now()``, ``.value()``, ``.delta()``) behave as in Faust.
Underneath, every write is guarded by the origin of the event being processed
(:mod:`service.app.units`) and lands in the partition's pending overlay, which the engine makes
durable in the changelog before local RocksDB and before the commit (G1-G3). A write outside an
agent raises, as in Faust. Reads outside an agent (web views, timers) find the partition by the
key's hash, as a producer would place the key.

Storage: a key is its text (``str``), or its JSON; a windowed key ``(k, (start, end))`` is
``"<start ms, 15 digits>|<k>"`` so a partition's windows sort by start. A value is JSON (a
``faust.Record`` by its representation, rebuilt on read). Windows close when the table
partition's event-time watermark passes their start plus ``expires`` (:mod:`tables.watermark`),
calling ``on_window_close(key, value)`` first; a write to a closed window is a late event
(``sluice_late_events_total``) and is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
from faust import Table

from service.app.units import BadRecord, Redeliver, current_unit
from service.kafka.murmur2 import partition_for_key
from tables.codec import I64_MIN, U64_MAX, Row
from tables.positions import DUPLICATE, NEW, PARTIAL, Origin
from tables.table import TablePartition, TableSpec, row_verdict

if TYPE_CHECKING:
    from service.app.units import Unit


_PLAIN = (int, float, str, bool, type(None))


def window_key(key: str, start: float) -> str:
    return f"{round(start * 1000):015d}|{key}"


def split_window_key(stored: str) -> tuple[str, int]:
    start, _, key = stored.partition("|")
    return key, int(start)


_SCALARS = (float, bool, type(None))


def _check_storable(value: Any) -> None:
    """Raise :class:`BadRecord` for a value no row can hold (JSON cannot carry it): the failure
    of the event that writes it — not of every commit after it, which would crash-loop the
    worker. An int is checked by range; a string, list or dict is encoded to know."""
    if value.__class__ is int:
        if not I64_MIN <= value <= U64_MAX:
            raise BadRecord("unencodable_value", "an integer past 64 bits: no row can hold it")
    elif value.__class__ not in _SCALARS:
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError as exc:
            raise BadRecord("unencodable_value", f"no row can hold it: {exc}") from None


class SluiceTable(Table[Any, Any]):
    """``app.Table``: a Faust table whose partitions are :class:`tables.table.TablePartition`."""

    app: Any

    def __init__(
        self,
        app: Any,
        *,
        schema_tag: str | None = None,
        watermark_topics: list[Any] | None = None,
        raw_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("store", None)  # always RocksDB + changelog (see README: what is different)
        super().__init__(app, **kwargs)
        self.schema_tag = schema_tag or "faust.v1"
        self.raw_keys = raw_keys
        """Store ``str`` keys as their text (sluice's built-in tables) instead of as Faust does,
        JSON — which is what makes a stock Faust app's changelog readable here."""
        self._text_keys = raw_keys or self.key_serializer == "raw"
        """Whether a ``str`` key is stored as itself (not as JSON): decided once, read per access."""
        self.watermark_topics = list(watermark_topics or ())
        """Topics whose every partition a windowed table's watermark waits for (besides the
        sources it has heard from)."""
        self.partitions_here: dict[int, TablePartition] = {}
        """Table partitions this worker owns (the engine opens, restores and closes them)."""
        self.late_events = 0

    # ------------------------------------------------------------------ identity

    @property
    def spec(self) -> TableSpec:
        foreign = None if self.raw_keys else self._foreign
        return TableSpec(self.name, self.schema_tag, self.help or "", foreign=foreign)

    def _foreign(self, raw: bytes) -> Any:
        """A value stock Faust wrote (bare, no positions): decoded the way Faust reads it."""
        return orjson.loads(raw) if self.value_serializer == "json" else raw.decode("utf-8", "replace")

    def _new_store(self) -> Any:
        return _NoStore()

    @property
    def data(self) -> Any:  # type: ignore[override]  # Faust's own store is never used
        return _NoStore()

    # ------------------------------------------------------------------ key/value codec

    def storage_key(self, key: Any) -> str:
        if key.__class__ is str and self._text_keys:
            return key
        if isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], tuple):
            inner, window = key
            return window_key(self._text(inner), window[0])
        return self._text(key)

    def _text(self, key: Any) -> str:
        if isinstance(key, str) and self._text_keys:
            return key
        if isinstance(key, bytes):
            try:
                return key.decode("utf-8")
            except UnicodeDecodeError:  # replacing would make two keys share one row
                raise BadRecord("invalid_table_key", "a bytes table key must be UTF-8") from None
        if hasattr(key, "to_representation"):
            key = key.to_representation()
        return orjson.dumps(key).decode()

    def route_bytes(self, key: Any) -> bytes:
        """The key as a producer with the default serializers sends it (text for ``str``): the
        partition a key lives in outside any event is the one its records were routed to."""
        if isinstance(key, str):
            return key.encode()
        if isinstance(key, bytes):
            return key
        return self._text(key).encode()

    def to_storage(self, value: Any) -> Any:
        if value.__class__ in _PLAIN:
            return value
        return value.to_representation() if hasattr(value, "to_representation") else value

    def from_storage(self, value: Any) -> Any:
        if value.__class__ is not dict and not isinstance(value, dict):  # only a Record's is rebuilt
            return value
        typ = self.value_type
        if typ is not None and hasattr(typ, "from_data"):
            return typ.from_data(value)
        return value

    # ------------------------------------------------------------------ partitions

    def partition_for(self, stored: str, unit: Unit | None) -> TablePartition:
        """The event's partition inside an agent (tables are co-partitioned with the topics that
        write them, as in Faust); otherwise the key's hash."""
        number = unit.fence if unit is not None else self.partition_of_key(stored)
        part = self.partitions_here.get(number)
        if part is None:
            raise KeyError(f"table {self.name}: partition {number} is not owned by this worker")
        return part

    def partition_of_key(self, stored: str) -> int:
        count = self.partitions or self.app.conf.topic_partitions
        raw = stored.split("|", 1)[1] if self.window is not None and "|" in stored else stored
        if not self.raw_keys and self.key_serializer != "raw" and raw.startswith('"'):
            raw = orjson.loads(raw)
        return partition_for_key(raw.encode(), count)

    def _set_windowed(self, key: Any, value: Any, timestamp: float) -> None:
        """Faust's windowed write; also keeps the partition's stream time (the largest event
        time written), which closes windows when no source reports a watermark."""
        unit = current_unit()
        if unit is not None:
            part = self.partitions_here.get(unit.fence)
            if part is not None:
                ms = round(timestamp * 1000)
                if ms > getattr(part, "stream_time", -1):
                    part.stream_time = ms  # type: ignore[attr-defined]
        super()._set_windowed(key, value, timestamp)

    # ------------------------------------------------------------------ dict protocol

    def __getitem__(self, key: Any) -> Any:
        stored = self.storage_key(key)
        unit = current_unit()
        part = self.partition_for(stored, unit)
        row = part.row(stored)  # once: the guard's check and the value read the same row
        if unit is not None:
            origin = unit.guarded_by()
            if origin.first is not None:
                self._check_combined(origin, row)
        if row is None or row.deleted:
            return self.__missing__(key)
        return self.from_storage(row.value)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._write(key, value, deleted=False)

    def __delitem__(self, key: Any) -> None:
        self._write(key, None, deleted=True)

    def __contains__(self, key: Any) -> bool:
        stored = self.storage_key(key)
        try:
            return self.partition_for(stored, current_unit()).contains(stored)
        except KeyError:
            return False

    def get(self, key: Any, default: Any = None) -> Any:
        stored = self.storage_key(key)
        try:
            part = self.partition_for(stored, current_unit())
        except KeyError:
            return default
        if not part.contains(stored):
            return default
        return self.from_storage(part.get(stored))

    def _write(self, key: Any, value: Any, *, deleted: bool) -> None:
        unit = current_unit()
        if unit is None:
            raise RuntimeError("Cannot modify table key from outside of stream iteration")
        stored = self.storage_key(key)
        part = self.partition_for(stored, unit)
        if self.window is not None and self._closed(part, stored):
            self.app.sluice_metrics.late_events.labels(unit.job).inc()
            return
        origin = unit.write_origin(part, stored)
        if deleted and self.window is not None:
            verdict = part.check(stored, origin)
            previous = part.remove(stored) if verdict is NEW else None
        else:  # the check and the write read the row once
            stored_value = None if deleted else self.to_storage(value)
            _check_storable(stored_value)
            verdict, previous = part.guarded_write(stored, stored_value, origin, deleted=deleted)
        if verdict is DUPLICATE:
            unit.replay = True  # every effect of this event is durable already (see units)
            return
        if verdict is not NEW:
            raise Redeliver()
        unit.wrote(part, stored, previous)

    def _check_combined(self, origin: Origin, row: Row | None) -> None:
        """A combined event whose parts this row applied only some of: deliver its parts one
        by one (the agent computes from a value that must not include them twice)."""
        if row_verdict(origin, row) is PARTIAL:
            raise Redeliver()

    def _closed(self, part: TablePartition, stored: str) -> bool:
        clock = getattr(part, "clock", None)
        expires = self.window.expires if self.window is not None else None
        if clock is None or not expires:
            return False
        _, start = split_window_key(stored)
        return bool(start + int(expires * 1000) <= clock.watermark)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self.keys()))

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def keys(self) -> Iterator[Any]:  # type: ignore[override]
        for key, _ in self._rows():
            yield key

    def items(self) -> Iterator[tuple[Any, Any]]:  # type: ignore[override]
        yield from self._rows()

    def values(self) -> Iterator[Any]:  # type: ignore[override]
        for _, value in self._rows():
            yield value

    def _rows(self) -> Iterator[tuple[Any, Any]]:
        """Every live row of the partitions owned here (pending changes included)."""
        for part in self.partitions_here.values():
            seen = set()
            for stored, row in list(part.pending.items()):
                seen.add(stored)
                if row is not None and not row.deleted and not stored.startswith("\x00"):
                    yield self._user_key(stored), self.from_storage(row.value)
            for stored, row in part.rows():
                if stored not in seen and not row.deleted and not stored.startswith("\x00"):
                    yield self._user_key(stored), self.from_storage(row.value)

    def _user_key(self, stored: str) -> Any:
        if self.window is not None:
            key, start = split_window_key(stored)
            size = self.window.size  # type: ignore[attr-defined]
            return (key, (start / 1000, start / 1000 + size - 0.1))
        return stored

    # ------------------------------------------------------------------ Faust internals

    def _has_key(self, key: Any) -> bool:
        return key in self

    def _get_key(self, key: Any) -> Any:
        return self[key]

    def _set_key(self, key: Any, value: Any) -> None:
        self[key] = value

    def _del_key(self, key: Any) -> None:
        del self[key]

    def _relative_now(self, event: Any = None) -> float:
        return time.time()

    def on_key_get(self, key: Any) -> None:  # sensors: not used
        return None

    def on_key_set(self, key: Any, value: Any) -> None:
        return None

    def on_key_del(self, key: Any) -> None:
        return None


class _NoStore(dict[Any, Any]):
    """Faust's store slot; sluice's rows live in :class:`tables.table.TablePartition`."""

    def reset_state(self) -> None:
        return None
