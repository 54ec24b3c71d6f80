"""Repartition records: how stage 1 hands one source partition's updates to the table
partition that owns each key, and how stage 2 reads them back with their origins.

Stage 1 groups a fetched batch's updates per target partition as *entries*, one per source
record: ``[offset, timestamp, [[key, payload, seq], ...]]``. A record carries them as JSON:

* ``{"t": topic, "p": partition, "e": entries}`` for a job without ``combine``: every update
  keeps its own origin ``(offset, seq)``.
* ``{"t", "p", "ts", "c": [[key, payload, first_offset, first_seq, last_offset, last_seq,
  count], ...]}`` for a job with ``combine``: one update per key, the merge of the ``count``
  updates of that key in the record's entries. The entries themselves travel in the
  ``sluice.parts`` header.
* ``"i"``: the source topic's incarnation, when it was re-created (see
  :mod:`service.engine.incarnations`); absent for the first.
* For a job with event-time windows, the last record of a batch for each target also carries
  ``"w"`` and ``"o"``: the event time the source has reached and the source offset it has
  processed up to (see :mod:`tables.watermark`); a batch with no update for a target
  still sends it a record with no updates, so every table partition hears from every source.

Why the header: the guard needs the individual parts only when a row has applied some of them
and not others, which happens only after a replay whose batches were cut at other offsets than
the first run's. Stage 2 decodes the header in that rare case alone; the common path decodes
one short entry per key instead of one per occurrence.

Size: a record stays under :data:`MAX_REPARTITION_RECORD`. Entries are split over several
records, and so are the updates of one source record that fans out widely (a 590 KB line of
100,000 distinct words): every update keeps its own ``(offset, seq)``, so any split keeps the
guard exact. Only a single update larger than the limit cannot be carried
(:class:`OversizedUpdate`); stage 1 dead-letters its source record before sending anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from tables.offsets import source_key
from tables.positions import Origin

MAX_REPARTITION_RECORD = 256 * 1024
"""Bytes per repartition record (value and header) before a batch's entries are split."""

PARTS_HEADER = "sluice.parts"

Combine = Callable[[Any, Any], Any]
Entry = list[Any]
"""``[offset, timestamp, [[key, payload, seq], ...]]``: one source record's updates for one target."""
Headers = list[tuple[str, bytes]]
Update = tuple[str, Any, Origin]


class OversizedUpdate(ValueError):
    """A single update does not fit in a repartition record."""


def encode(
    topic: str,
    partition: int,
    entries: list[Entry],
    combine: Combine | None,
    clock: tuple[int, int] | None = None,
    incarnation: int = 0,
) -> list[tuple[bytes, Headers]]:
    """The records (value, headers) carrying ``entries``, each under
    :data:`MAX_REPARTITION_RECORD`; ``clock`` (``(w, o)``) rides on the last one, so that no
    update of the batch reaches a table partition after the clock that follows it."""
    value, headers = _record(topic, partition, entries, combine, clock, incarnation)
    if len(value) + sum(len(v) for _, v in headers) <= MAX_REPARTITION_RECORD:
        return [(value, headers)]
    if len(entries) > 1:
        half = len(entries) // 2
        first, second = entries[:half], entries[half:]
    else:
        offset, ts, updates = entries[0]
        if len(updates) <= 1:
            raise OversizedUpdate(f"one update needs {len(value)} bytes")
        half = len(updates) // 2
        first, second = [[offset, ts, updates[:half]]], [[offset, ts, updates[half:]]]
    return encode(topic, partition, first, combine, None, incarnation) + encode(
        topic, partition, second, combine, clock, incarnation
    )


def _record(
    topic: str,
    partition: int,
    entries: list[Entry],
    combine: Combine | None,
    clock: tuple[int, int] | None,
    incarnation: int,
) -> tuple[bytes, Headers]:
    doc: dict[str, Any] = {"t": topic, "p": partition}
    if incarnation:
        doc["i"] = incarnation
    headers: Headers = []
    if combine is None or not entries:
        doc["e"] = entries
    else:
        doc["ts"] = entries[0][1]
        doc["c"] = _fold(entries, combine)
        headers = [(PARTS_HEADER, orjson.dumps(entries))]
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
                totals[key] = [key, payload, offset, seq, offset, seq, 1]
            else:
                slot[1] = combine(slot[1], payload)
                slot[4] = offset
                slot[5] = seq
                slot[6] += 1
    return list(totals.values())


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
    source = source_key(str(doc["t"]), int(doc["p"]), int(doc.get("i", 0)))
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
                str(key),
                payload,
                Origin(source, last_offset, last_seq, ts, [first_offset, first_seq], count, parts),
            )
            for key, payload, first_offset, first_seq, last_offset, last_seq, count in doc["c"]
        ]
        return Decoded(source, ts, updates, clock)
    entries = doc["e"]
    updates = [
        (str(key), payload, Origin(source, int(offset), int(seq), int(ts)))
        for offset, ts, items in entries
        for key, payload, seq in items
    ]
    return Decoded(source, int(entries[0][1]) if entries else None, updates, clock)


class HeaderParts:
    """The individual updates behind a record's combined ones, decoded on first use."""

    def __init__(self, headers: Any, combine: Combine) -> None:
        self._headers = headers
        self._combine = combine
        self._by_key: dict[str, list[tuple[int, int, Any]]] | None = None

    def unseen(self, key: str, after: list[int]) -> tuple[Any, int]:
        """The merged payload of ``key``'s parts after position ``after``, and how many parts
        are at or before it (already applied). At least one part is after it: the caller has
        checked that the last one is."""
        by_key = self._by_key if self._by_key is not None else self._decode()
        parts = by_key[key]
        fresh = [p for o, s, p in parts if o > after[0] or (o == after[0] and s > after[1])]
        merged = fresh[0]
        for payload in fresh[1:]:
            merged = self._combine(merged, payload)
        return merged, len(parts) - len(fresh)

    def _decode(self) -> dict[str, list[tuple[int, int, Any]]]:
        data = next((v for k, v in self._headers if k == PARTS_HEADER), None)
        if data is None:
            raise ValueError(f"a combined repartition record without its {PARTS_HEADER} header")
        by_key: dict[str, list[tuple[int, int, Any]]] = {}
        for offset, _ts, updates in orjson.loads(data):
            for key, payload, seq in updates:
                by_key.setdefault(key, []).append((offset, seq, payload))
        self._by_key = by_key
        return by_key
