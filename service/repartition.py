"""Packed records: how the sends of a batch to an internal topic travel as few Kafka records,
and how the agents reading it get them back as events with their origins.

The outbox groups a batch's sends to a packed topic per (target partition, source) as
*entries*, one per sending event: ``[at, timestamp, [[key, payload, seq], ...]]`` where ``at`` is
the sending event's offset (or its whole position after more than one hop) and ``seq`` the
send's index in it. A record carries them as JSON:

* ``{"s": source, "e": entries}``: every update keeps its own origin ``(at, seq)``.
* ``{"s", "ts", "c": [[key, payload, first_at, first_seq, last_at, last_seq, count], ...]}``
  for a topic with ``combine``: one update per key, the merge of the ``count`` updates of that
  key in the record's entries. The entries themselves travel in the ``sluice.parts`` header:
  per sending event as above, or — from a topic without watermarks, whose sends are folded per
  key as units finish (:mod:`service.folded_records`) — per key,
  ``{key: [[at, seq, payload], ...]}``.
* For a topic with watermarks, the last record of a batch for each target also carries ``"w"``
  and ``"o"``: the event time the source has reached and the source offset it has processed up
  to (see :mod:`tables.watermark`); a batch with no update for a target still sends it a record
  with no updates, so every partition hears from every source.

Records written before the source key was carried (``{"t": topic, "p": partition, "i": n}``)
are still read.

Why the header: the guard needs the individual parts only when a row has applied some of them
and not others, which happens only after a replay whose batches were cut at other offsets than
the first run's. The agent gets the combined update, and only in that rare case its parts one
by one (:class:`service.app.units.Redeliver`); the common path decodes one short entry per key
instead of one per occurrence.

Size: a record stays under :data:`MAX_REPARTITION_RECORD`. Entries are split over several
records, and so are the updates of one source record that fans out widely (a 590 KB line of
100,000 distinct words): every update keeps its own ``(at, seq)``, so any split keeps the guard
exact. Only a single update larger than the limit cannot be carried (:class:`OversizedUpdate`);
the send that would make it is refused with ``BadRecord("oversized_fanout")`` and its event is
dead-lettered, nothing of it sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from copy import copy
from dataclasses import dataclass
from functools import reduce
from typing import Any

import orjson

from tables.offsets import source_key
from tables.positions import Origin

MAX_REPARTITION_RECORD = 900 * 1024
"""Bytes per repartition record (value and header) before a batch's entries are split: under a
broker's default ``message.max.bytes`` (1 MiB) and the producer's batch size, and as large as
that allows, because a split record is folded on its own — at 256 KiB the parts header of a
10,000-line wordcount batch split it four ways and the counting agent saw 2.3 updates a line
instead of 1.2."""

PARTS_HEADER = "sluice.parts"

Combine = Callable[[Any, Any], Any]
Entry = list[Any]
"""``[offset, timestamp, [[key, payload, seq], ...]]``: one source record's updates for one target."""
Headers = list[tuple[str, bytes]]
Update = tuple[str, Any, Origin]


class OversizedUpdate(ValueError):
    """A single update does not fit in a repartition record."""


def encode(
    source: str,
    entries: list[Entry],
    combine: Combine | None,
    clock: tuple[int, int] | None = None,
) -> list[tuple[bytes, Headers]]:
    """The records (value, headers) carrying ``entries``, each under
    :data:`MAX_REPARTITION_RECORD`; ``clock`` (``(w, o)``) rides on the last one, so that no
    update of the batch reaches a table partition after the clock that follows it."""
    try:
        value, headers = _record(source, entries, combine, clock)
    except Exception:  # a merge that raises, or that JSON cannot carry (an int past 64 bits)
        if combine is None:
            raise
        # Unmerged, each update with its own origin (each was checked at its send): failing
        # the batch would fail it again after every restart.
        return encode(source, entries, None, clock)
    size = len(value) + sum(len(v) for _, v in headers)
    if size <= MAX_REPARTITION_RECORD:
        return [(value, headers)]
    # Cut into as many pieces as the size says (with room to spare) at once, not in halves: a
    # record is folded and encoded again at every level of halving.
    pieces = -(-size * 5 // (MAX_REPARTITION_RECORD * 4))
    if len(entries) > 1:
        step = -(-len(entries) // min(pieces, len(entries)))
        chunks = [entries[i : i + step] for i in range(0, len(entries), step)]
    else:
        offset, ts, updates = entries[0]
        if len(updates) <= 1:
            raise OversizedUpdate(f"one update needs {len(value)} bytes")
        step = -(-len(updates) // min(pieces, len(updates)))
        chunks = [[[offset, ts, updates[i : i + step]]] for i in range(0, len(updates), step)]
    last = len(chunks) - 1
    return [
        piece
        for i, chunk in enumerate(chunks)
        for piece in encode(source, chunk, combine, clock if i == last else None)
    ]


def _record(
    source: str, entries: list[Entry], combine: Combine | None, clock: tuple[int, int] | None
) -> tuple[bytes, Headers]:
    doc: dict[str, Any] = {"s": source}
    headers: Headers = []
    if combine is None or not entries:
        doc["e"] = entries
    else:
        headers = [(PARTS_HEADER, orjson.dumps(entries))]  # before a combine may change a part
        doc["ts"] = entries[0][1]
        doc["c"] = _fold(entries, combine)
    if clock is not None:
        doc["w"], doc["o"] = clock
    return orjson.dumps(doc), headers


def _fold(entries: list[Entry], combine: Combine) -> list[list[Any]]:
    """One ``[key, payload, first_offset, first_seq, last_offset, last_seq, count]`` per key."""
    totals: dict[str, list[Any]] = {}
    for offset, _ts, updates in entries:
        for key, payload, seq in updates:
            slot = totals.get(key)
            if slot is None:
                totals[key] = [key, fresh(payload), offset, seq, offset, seq, 1]
            else:
                slot[1] = combine(slot[1], payload)
                slot[4] = offset
                slot[5] = seq
                slot[6] += 1
    return list(totals.values())


_IMMUTABLE = (int, float, str, bytes, bool, type(None))


def fresh(payload: Any) -> Any:
    """``payload``, or a copy of it a merge may change: a combine may change its first argument
    (``a.extend(b)``), and the parts must stay as sent — they are encoded again when a record
    is split, and delivered one by one when a row applied only some of them."""
    return payload if payload.__class__ in _IMMUTABLE else copy(payload)


def merged(combine: Combine, payloads: Iterable[Any]) -> Any:
    """``payloads`` merged left to right, starting from a :func:`fresh` first."""
    each = iter(payloads)
    return reduce(combine, each, fresh(next(each)))


@dataclass(frozen=True)
class Decoded:
    source: str
    first_ts: int | None
    """Event timestamp of the first source record in it (``None``: no updates)."""
    updates: list[Update]
    clock: tuple[int, int] | None
    """``(w, o)`` of the source, when the job keeps event-time windows."""


def decode(value: bytes, headers: Any, combine: Combine | None) -> Decoded:
    """The updates of one repartition record with their origins. Raises ``ValueError`` (or
    ``KeyError``/``TypeError``) for a record that is not one; nothing is applied from it."""
    doc = orjson.loads(value)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    source = doc["s"] if "s" in doc else source_key(str(doc["t"]), int(doc["p"]), int(doc.get("i", 0)))
    if source.__class__ is not str or ":" not in source:
        raise ValueError(f"not a source key: {source!r}")
    clock = (int(doc["w"]), int(doc["o"])) if "w" in doc else None
    if "c" in doc:
        if combine is None:
            raise ValueError("a combined repartition record for a job without combine")
        if not any(name == PARTS_HEADER for name, _ in headers or ()):
            raise ValueError(f"a combined repartition record without its {PARTS_HEADER} header")
        ts = int(doc["ts"])
        parts = HeaderParts(headers, combine)
        updates = [
            (
                key if key.__class__ is str else str(key),
                payload,
                Origin(
                    source,
                    # _pos's common case inline: two ints as JSON decodes them, per update
                    [last_at, last_seq]
                    if last_at.__class__ is int and last_seq.__class__ is int
                    else _pos(last_at, last_seq),
                    ts,
                    [first_at, first_seq]
                    if first_at.__class__ is int and first_seq.__class__ is int
                    else _pos(first_at, first_seq),
                    count if count.__class__ is int else int(count),
                    parts,
                ),
            )
            for key, payload, first_at, first_seq, last_at, last_seq, count in doc["c"]
        ]
        return Decoded(source, ts, updates, clock)
    entries = doc["e"]
    updates = [
        (str(key), payload, Origin(source, _pos(at, seq), int(ts)))
        for at, ts, items in entries
        for key, payload, seq in items
    ]
    return Decoded(source, int(entries[0][1]) if entries else None, updates, clock)


def _pos(at: int | list[int], seq: int) -> list[int]:
    """A position from an entry's ``at`` (the sending event's offset, or its whole position
    after more than one hop) and the send's index."""
    if at.__class__ is int and seq.__class__ is int:  # as JSON decodes them: nothing to check
        return [at, seq]
    return [int(at), int(seq)] if isinstance(at, int) else [*at, int(seq)]


class HeaderParts:
    """The individual updates behind a record's combined ones, decoded on first use."""

    def __init__(self, headers: Any, combine: Combine) -> None:
        self._headers = headers
        self._combine = combine
        self._by_key: dict[str, list[tuple[list[int], Any]]] | None = None

    def unseen(self, key: str, after: list[int]) -> tuple[Any, int]:
        """The merged payload of ``key``'s parts after position ``after``, and how many parts
        are at or before it (already applied). At least one part is after it: the caller has
        checked that the last one is."""
        parts = self.split(key)
        unseen = [payload for position, payload in parts if position > after]
        return merged(self._combine, unseen), len(parts) - len(unseen)

    def split(self, key: str) -> list[tuple[list[int], Any]]:
        by_key = self._by_key if self._by_key is not None else self._decode()
        return by_key[key]

    def _decode(self) -> dict[str, list[tuple[list[int], Any]]]:
        data = next((v for k, v in self._headers if k == PARTS_HEADER), None)
        if data is None:
            raise ValueError(f"a combined repartition record without its {PARTS_HEADER} header")
        doc = orjson.loads(data)
        by_key: dict[str, list[tuple[list[int], Any]]] = {}
        if isinstance(doc, dict):  # per key (service.folded_records)
            for key, sent in doc.items():
                by_key[key] = [(_pos(at, seq), payload) for at, seq, payload in sent]
        else:  # per sending event (encode)
            for at, _ts, updates in doc:
                for key, payload, seq in updates:
                    by_key.setdefault(key, []).append((_pos(at, seq), payload))
        self._by_key = by_key
        return by_key
