"""How a unit records its sends to a packed topic, the part of :class:`service.app.topic.SluiceTopic`
that packs: per target partition and timestamp (``Unit.packed``), or — for a folding topic —
as each send call's keys and values (``Unit.folded``, :mod:`service.app.folding`). Each update
is checked at its send, so that one that cannot be encoded or carried is the sending event's
bad input (dead-lettered), not a batch that fails when it is encoded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from service.app.folding import DICT_ITEMS, SMALL_KEY, plain_updates, split_pairs
from service.app.units import BadRecord
from service.repartition import MAX_REPARTITION_RECORD
from tables.codec import I64_MIN, U64_MAX

_PLAIN = (int, float, str, list, dict, bool, type(None))
_SEQUENCES = {tuple, list}


class PackedSends:
    """Mixed into :class:`service.app.topic.SluiceTopic`, which provides these."""

    folds: bool
    combine: Callable[[Any, Any], Any] | None
    _place: Callable[[str], int] | None

    def placement(self) -> Callable[[str], int]:
        raise NotImplementedError

    def _pack(self, unit: Any, items: Iterable[tuple[Any, Any]], partition: int | None, ts: int) -> None:
        """Record sends to a packed topic in the unit (see ``Unit.packed``): one per item, each
        with its own index (taken per item, as a send does: an item that raises used its own)."""
        if self.folds:
            self._fold(unit, items, partition, ts)
            return
        place = self._place or self.placement()
        runs: dict[int, list[Any]] = {}
        for key, value in items:
            index = unit.sends
            unit.sends = index + 1
            key_text, value = self._update(unit, key, value)
            target = partition if partition is not None else place(key_text)
            updates = runs.get(target)
            if updates is None:
                updates = runs[target] = self._run(unit, target, ts)
            updates.append((key_text, value, index))  # a tuple: the cheapest to make

    def _fold(self, unit: Any, items: Iterable[tuple[Any, Any]], partition: int | None, ts: int) -> None:
        """Sends to a folding topic: kept as the call's keys and values (``Unit.folded``) when
        the C-speed check clears them all, else one item at a time as :meth:`_pack` does — so
        that an item that is not a pair, or that is refused, or an iterable that fails, leaves
        the items before it sent and raises, as one send per item would."""
        if items.__class__ is DICT_ITEMS:  # a dict's (a Counter's) items: no pair made per item
            mapping = items.mapping  # type: ignore[attr-defined]
            if mapping:
                self._fold_columns(unit, tuple(mapping), tuple(mapping.values()), partition, ts)
            return
        failure: BaseException | None = None
        if isinstance(items, list | tuple):
            pairs: Sequence[Any] = items
        else:
            pairs = []
            try:
                pairs.extend(items)  # keeps what came before an item the iterable failed to make
            except BaseException as exc:  # raised after the items before it are sent
                failure = exc
        if pairs:
            self._fold_pairs(unit, pairs, partition, ts)
        if failure is not None:
            raise failure

    def _fold_pairs(self, unit: Any, pairs: Sequence[Any], partition: int | None, ts: int) -> None:
        if not set(map(type, pairs)) <= _SEQUENCES:  # items that may be read only once: one by one
            self._fold_each(unit, pairs, partition, ts)
            return
        try:
            keys, values = split_pairs(pairs)
        except (TypeError, ValueError):  # an item that is not a pair: raised at that item
            self._fold_each(unit, pairs, partition, ts)
        else:
            self._fold_columns(unit, keys, values, partition, ts)

    def _fold_columns(
        self, unit: Any, keys: Sequence[Any], values: Sequence[Any], partition: int | None, ts: int
    ) -> None:
        first = unit.sends
        if plain_updates(keys, values):
            unit.sends = first + len(keys)
            unit.fold((self, keys, values, first, ts, partition, True))
        else:
            self._fold_each(unit, zip(keys, values, strict=True), partition, ts)

    def _fold_each(self, unit: Any, items: Iterable[Any], partition: int | None, ts: int) -> None:
        first = unit.sends
        texts: list[str] = []
        settled: list[Any] = []
        try:
            for key, value in items:
                unit.sends += 1  # an item that raises used its index, as a send does
                key_text, value = self._update(unit, key, value)
                texts.append(key_text)
                settled.append(value)
        finally:  # the items before one that raised are sent, as separate sends would be
            if texts:
                unit.fold((self, texts, settled, first, ts, partition, False))

    def _update(self, unit: Any, key: Any, value: Any) -> tuple[str, Any]:
        """A packed send's key as text and its value as the record will carry it."""
        if key.__class__ is str:
            key_text = key
        elif isinstance(key, str):  # a str subclass (an enum of str): its text, as a plain send's
            key_text = str.__str__(key)
        else:
            key_text = orjson.dumps(key).decode()
        if value.__class__ not in _PLAIN and hasattr(value, "to_representation"):
            value = value.to_representation()
        if not (
            value.__class__ is int
            and I64_MIN <= value <= U64_MAX
            and len(key_text) <= SMALL_KEY
            and key_text.isascii()
        ):
            value = self._settle(unit, key_text, value)
        return key_text, value

    def _settle(self, unit: Any, key: str, value: Any) -> Any:
        """A packed send's update the fast check (a short ASCII key, a 64-bit integer) did not
        clear, encoded now: a value JSON cannot carry (a lone surrogate, an integer past 64
        bits) or an update no repartition record can carry is this event's bad input, dead-
        lettered, not a batch that fails when it is encoded, and again after every restart.
        Returns the value to keep: a container as it was when sent (the record is encoded with
        the batch, later, and the agent may change the object meanwhile)."""
        try:
            encoded = orjson.dumps([key, value, 0])
        except orjson.JSONEncodeError as exc:
            raise BadRecord("unencodable_value", str(exc)) from None
        copies = 2 if self.combine is not None else 1  # a combined record: folded, and in its parts
        around = 2 * len(unit.send_source()) + 3 * len(orjson.dumps(unit.origin.position)) + 256
        size = copies * len(encoded) + around
        if size > MAX_REPARTITION_RECORD:
            raise BadRecord("oversized_fanout", f"one update needs {size} of {MAX_REPARTITION_RECORD} bytes")
        if value.__class__ is dict or value.__class__ is list:
            return orjson.loads(encoded)[1]
        return value

    def _run(self, unit: Any, target: int, ts: int) -> list[Any]:
        """The list a unit's next send to ``target`` with timestamp ``ts`` joins (see
        ``Unit.packed``): the last run's when its timestamp is the same, else a new run's."""
        packed = unit.packed
        if packed is None:
            packed = unit.packed = {}
        targets = packed.get(self)
        if targets is None:
            targets = packed[self] = {}
        runs = targets.get(target)
        if runs is None:
            updates: list[Any] = []
            targets[target] = [[ts, updates]]
            return updates
        if runs[-1][0] == ts:
            return runs[-1][1]  # type: ignore[no-any-return]
        updates = []
        runs.append([ts, updates])
        return updates
