"""Faust's ``Topic`` with sluice's send: a send made while an agent processes an event is part
of that event's unit — held until the agent is done with the event, sent with the batch, and
carrying the event's origin in its headers (``sluice.origin``, ``sluice.pos``) so whatever reads
it downstream is guarded by the original event's position (:mod:`service.app.units`).

Outside an agent (a timer, a task, a web view, a command) a send goes out at once through the
worker's producer and is awaited, as in Faust.

sluice options of ``app.topic(...)``:

* ``pack=True`` — an internal topic only sluice agents read: the sends of a batch are packed
  per target partition into few records (:mod:`service.repartition`), which costs a fraction of
  a record per send. ``combine=fn`` (an associative merge of two values of one key, e.g.
  ``operator.add``; it may change its first argument, which is a copy) further merges each
  key's values per batch, with the individual parts kept for the guard; a key whose merge
  raises or cannot be carried (an integer past 64 bits) travels unmerged. ``watermarks=True``
  makes every sending source report the event time it has reached to every partition (what
  windowed tables close on, :mod:`tables.watermark`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson
from faust import Topic

from service.app.events import message
from service.app.packing import PackedSends
from service.app.units import BadRecord
from service.app.units import _current as _unit
from service.kafka.murmur2 import partition_for_key

if TYPE_CHECKING:
    from faust.types import Message

_SENT: asyncio.Future[Any] | None = None


def _sent() -> asyncio.Future[Any]:
    """What every in-unit send returns: a completed future whose result is a completed future.

    Faust's ``await topic.send(...)`` gives a future of the record's metadata; here the record
    leaves with the batch, so ``await`` gives a completed one (result ``None``). A plain
    function returning a completed future is awaited without making a coroutine per send,
    which is most of a send's cost when an agent sends once per word; awaiting a completed
    future never touches its loop."""
    global _SENT
    if _SENT is None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        done.set_result(None)
        _SENT = loop.create_future()
        _SENT.set_result(done)
    return _SENT


def _check_timestamp(timestamp: float) -> None:
    """A send's timestamp a Kafka record can carry (milliseconds in 64 bits), or the sending
    event's bad input — not a batch that fails when it is encoded, again after every restart."""
    try:
        ms = int(timestamp * 1000)
    except (TypeError, ValueError, OverflowError):
        raise BadRecord("invalid_timestamp", f"not a time in seconds: {timestamp!r}") from None
    if not -(1 << 63) <= ms < 1 << 63:
        raise BadRecord("invalid_timestamp", f"{timestamp!r} s is past what a record carries")


class SluiceTopic(PackedSends, Topic):
    app: Any
    pack = False
    combine: Callable[[Any, Any], Any] | None = None
    watermarks = False
    folds = False
    """Sends are folded per key as units finish (``combine`` without watermarks,
    :mod:`service.app.folding`)."""
    _name: str | None = None
    _place: Callable[[str], int] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fast_key = self._fast(self.key_type, self.key_serializer, "raw")
        self._fast_value = self._fast(self.value_type, self.value_serializer, "json")

    def configure_sluice(
        self, *, pack: bool, combine: Callable[[Any, Any], Any] | None, watermarks: bool
    ) -> None:
        if (pack or combine is not None or watermarks) and not self.internal:
            raise ValueError(
                f"sluice: topic {self.get_topic_name()}: pack/combine/watermarks need internal=True "
                "(only sluice agents can read a packed topic)"
            )
        self.pack = pack or combine is not None or watermarks
        self.combine = combine
        self.watermarks = watermarks
        self.folds = combine is not None and not watermarks

    # ------------------------------------------------------------------ codecs

    def _fast(self, typ: Any, serializer: Any, default: str) -> str | None:
        """Which encoding a plain type needs, when Faust's codec machinery can be skipped."""
        serializer = serializer or (
            self.app.conf.key_serializer if default == "raw" else self.app.conf.value_serializer
        )
        if typ in (None, str, bytes) and serializer == "raw":
            return "raw"
        if typ in (None, int, float, str, dict, list) and serializer == "json":
            return "json"
        return None

    def encode_key(self, key: Any, serializer: Any = None) -> bytes | None:
        if key is None:
            return None
        if serializer is None and self._fast_key == "raw":
            if isinstance(key, str):
                return key.encode()
            if isinstance(key, bytes):
                return key
        if serializer is None and self._fast_key == "json" and isinstance(key, (str, int, float)):
            return orjson.dumps(key)
        encoded, _ = self.prepare_key(key, serializer or self.key_serializer)
        return encoded if isinstance(encoded, bytes | None) else bytes(encoded)

    def encode_value(self, value: Any, serializer: Any = None) -> bytes | None:
        if value is None:
            return None
        if (
            serializer is None
            and self._fast_value == "json"
            and isinstance(value, (int, float, str, dict, list))
        ):
            return orjson.dumps(value)
        if serializer is None and self._fast_value == "raw":
            if isinstance(value, bytes):
                return value
            if isinstance(value, str):
                return value.encode()
        encoded, _ = self.prepare_value(value, serializer or self.value_serializer)
        return encoded if isinstance(encoded, bytes | None) else bytes(encoded)

    def decode_key(self, msg: Message) -> Any:
        raw = msg.key
        if raw is None:
            return None
        if self._fast_key == "raw":
            return raw.decode() if self.key_type is str else raw
        return self.schema.loads_key(self.app, msg, loads=self.app.serializers.loads_key)

    def decode_value(self, msg: Message) -> Any:
        raw = msg.value
        if raw is None:
            return None
        fast = self._fast_value
        if fast == "json" and self.value_type in (None, dict, list) and b'"__faust"' not in raw:
            return orjson.loads(raw)  # no Record inside to rebuild (Faust's blessed keys)
        if fast == "raw":
            return raw.decode() if self.value_type is str else raw
        return self.schema.loads_value(self.app, msg, loads=self.app.serializers.loads_value)

    # ------------------------------------------------------------------ sends

    def partition_of(self, key: bytes | None, count: int, spread: int) -> int:
        """The Java client's placement for a key (murmur2), and for no key a placement that a
        replay repeats (``spread``: the sending event's partition plus the send's index)."""
        return partition_for_key(key, count) if key is not None else spread % count

    def placement(self) -> Callable[[str], int]:
        """Where a packed send's key goes, cached per key (a word goes where it always goes)."""
        place = self._place
        if place is None:
            count = self.app.data_plane.partitions_of(self.name)
            place = self._place = lru_cache(maxsize=1 << 16)(
                lambda key: partition_for_key(key.encode(), count)
            )
        return place

    @property
    def name(self) -> str:
        name = self._name
        if name is None:
            name = self._name = self.get_topic_name()
        return name

    def send(  # type: ignore[override]  # awaitable as Faust's (see _sent)
        self,
        *,
        key: Any = None,
        value: Any = None,
        partition: int | None = None,
        timestamp: float | None = None,
        headers: Any = None,
        schema: Any = None,
        key_serializer: Any = None,
        value_serializer: Any = None,
        callback: Any = None,
        force: bool = False,
    ) -> Awaitable[Any]:
        unit = _unit.get()
        if unit is None:
            return self.app.data_plane.send_now(self, key, value, partition, timestamp, headers)  # type: ignore[no-any-return]
        if timestamp is not None:
            _check_timestamp(timestamp)
        if self.pack:
            ts = unit.origin.timestamp_ms if timestamp is None else int(timestamp * 1000)
            self._pack(unit, ((key, value),), partition, ts)
            return _SENT or _sent()
        index = unit.sends
        unit.sends = index + 1
        kb = self.encode_key(key, key_serializer)
        vb = self.encode_value(value, value_serializer)
        if partition is None:
            count = self.app.data_plane.partitions_of(self.name)
            partition = self.partition_of(kb, count, unit.fence + index)
        encoded: Any = ()
        if headers:
            extra = headers.items() if isinstance(headers, dict) else headers
            encoded = [(k, v.encode() if isinstance(v, str) else v) for k, v in extra]
        unit.outbox.append((self.name, partition, kb, vb, encoded, index, timestamp))
        return _SENT or _sent()

    def send_many(self, items: Iterable[tuple[Any, Any]]) -> Awaitable[Any]:
        """``await topic.send(key=k, value=v)`` for each ``(k, v)`` of ``items``, in order, in
        one call (a sluice extension: Faust has no bulk send).

        The same sends, indexes and guard as one call each; for a packed topic it is the cheap
        way to send many keys from one event (a line's words): one call instead of one per key,
        which was most of the cost of stage 1 of a wordcount."""
        unit = _unit.get()
        if unit is None:
            return self._send_each(items)
        if not self.pack:
            for key, value in items:
                self.send(key=key, value=value)  # in a unit: recorded at once, as a send is
            return _SENT or _sent()
        self._pack(unit, items, None, unit.origin.timestamp_ms)
        return _SENT or _sent()

    async def _send_each(self, items: Iterable[tuple[Any, Any]]) -> None:
        for key, value in items:
            await self.send(key=key, value=value)

    def send_soon(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("sluice: use `await topic.send(...)` (send_soon bypasses the unit)")

    async def maybe_declare(self) -> None:
        """Topics are created by the worker at start (all of them at once)."""

    async def declare(self) -> None:
        await self.app.data_plane.declare([self])

    def event_message(self, record: Any, tp: Any) -> Message:
        return message(record, tp)
