"""Sends to a folding topic (``combine=fn`` without watermarks): kept per unit as two lists,
folded per key when the batch is encoded.

Why a path of its own: a wordcount line sends about ten words. Kept as one tuple per send in
the unit, moved per send into the batch's entries and folded per send again when the batch was
encoded, the words cost three Python steps each — a third of the worker's CPU. Here a unit
keeps a send call's keys and values as they came (checked in C-speed passes: ``map`` over
builtins), a done unit's sends join the batch's per-key parts in one loop (:meth:`Folds.take`),
and the merge happens once per key of the batch, a column at a time, not per send
(:func:`service.folded_records.encode_folded`). The records carry the same updates, origins,
timestamps and parts as per-event records; only the parts header lists them per key instead
of per sending event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

from service.folded_records import encode_folded
from service.repartition import Headers
from tables.codec import I64_MIN, U64_MAX

if TYPE_CHECKING:
    from service.app.topic import SluiceTopic

Bulk = tuple[Any, Sequence[Any], Sequence[Any], int, int, int | None, bool]
"""(topic, keys, values, index of the first send, timestamp, explicit partition or ``None``,
whether every value is an ``int``): one send call's updates, in the order sent, with
consecutive indexes."""

SMALL_KEY = 16_384
"""Characters of a packed send's key below which, with an integer value, the update surely fits
a repartition record (no need to encode it to know)."""


def plain_updates(keys: Any, values: Any) -> bool:
    """Whether every update surely encodes and fits a record: ``str`` keys short and ASCII,
    ``int`` values in 64 bits. Each check is one pass of a builtin over the list (no Python
    frame per item); anything else takes the checked path, one item at a time."""
    if set(map(type, keys)) != {str} or set(map(type, values)) != {int}:
        return False
    text = "".join(keys)  # every key as short as the whole, and ASCII if the whole is
    return len(text) <= SMALL_KEY and text.isascii() and min(values) >= I64_MIN and max(values) <= U64_MAX


DICT_ITEMS: type[Any] = type({}.items())


def split_pairs(pairs: Sequence[tuple[Any, Any]]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """``(keys, values)`` of ``(key, value)`` pairs (at least one); raises ``ValueError`` for
    anything that is not a pair, as unpacking each would."""
    keys, values = zip(*pairs, strict=True)  # a pair of another length: ValueError
    return keys, values


class _Fold:
    __slots__ = ("ints", "parts", "times", "topic")

    def __init__(self, topic: SluiceTopic) -> None:
        self.topic = topic
        self.ints = True
        """Every value is an ``int`` (so ``operator.add`` merges with ``sum``)."""
        self.parts: dict[Any, list[tuple[Any, int, Any]]] = {}
        """Key (or ``(partition, key)`` sent to a partition other than the key's) ->
        ``(at, index, value)`` of each send, in the order of their positions."""
        self.times: dict[Any, list[tuple[int, int]]] = {}
        """``at`` (a tuple for a whole position) -> ``(first index, timestamp)`` of each send
        call: a record carries the timestamp of its earliest part's send, as per-event
        records did (:meth:`ts_of`)."""

    def ts_of(self, part: tuple[Any, int, Any]) -> int:
        at, index = part[0], part[1]
        calls = self.times[at if at.__class__ is int else tuple(at)]
        ts = calls[0][1]
        for first, call_ts in calls:
            if first > index:
                break
            ts = call_ts
        return ts


class Folds:
    """A batch's sends to folding topics, per (topic, source key, fence)."""

    def __init__(self) -> None:
        self._folds: dict[tuple[str, str, int], _Fold] = {}

    def take(self, bulks: list[Bulk], source: str, at: Any, fence: int) -> None:
        """A done unit's sends (``at``: its offset, or its whole position after more than one
        hop) join the batch's, after the batch's earlier ones from ``source``."""
        for topic, keys, values, first, ts, partition, ints in bulks:
            slot = (topic.name, source, fence)
            fold = self._folds.get(slot)
            if fold is None:
                fold = self._folds[slot] = _Fold(topic)
            if not ints:
                fold.ints = False
            fold.times.setdefault(at if at.__class__ is int else tuple(at), []).append((first, ts))
            if partition is not None:
                place = topic.placement()
                keys = [key if place(key) == partition else (partition, key) for key in keys]
            # One loop; measured faster than the same with map() over a defaultdict's
            # __getitem__ and list.append (1.6 against 2.4 µs for a bench line's words).
            join = fold.parts.setdefault
            for key, part in zip(keys, zip(repeat(at), range(first, first + len(keys)), values), strict=True):
                join(key, []).append(part)

    def finish(self, add: Callable[[int, str, int, bytes, Headers], None]) -> None:
        """Encode every target partition's updates: ``add(fence, topic, target, value, headers)``
        per record."""
        for (name, source, fence), fold in self._folds.items():
            place = fold.topic.placement()
            by_target: dict[int, dict[str, list[tuple[Any, int, Any]]]] = {}
            for key, parts in fold.parts.items():
                if key.__class__ is tuple:
                    target, key = key
                else:
                    target = place(key)
                group = by_target.get(target)
                if group is None:
                    group = by_target[target] = {}
                group[key] = parts
            combine = fold.topic.combine
            assert combine is not None  # a folding topic has one
            for target, group in by_target.items():
                for value, headers in encode_folded(source, fold.ts_of, group, combine, ints=fold.ints):
                    add(fence, name, target, value, headers)
        self._folds.clear()
