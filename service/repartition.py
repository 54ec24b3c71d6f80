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

Why the header: the guard needs the individual parts only when a row has applied some of them
and not others, which happens only after a replay whose batches were cut at other offsets than
the first run's. Stage 2 decodes the header in that rare case alone; the common path decodes
one short entry per key instead of one per occurrence (decoding the parts inline was the
largest single cost of stage 2 in the profile).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from tables.offsets import offset_key
from tables.positions import Origin

MAX_REPARTITION_RECORD = 256 * 1024
"""Bytes per repartition record (value and header) before a batch's entries are split."""

PARTS_HEADER = "sluice.parts"

Combine = Callable[[Any, Any], Any]
Entry = list[Any]
"""``[offset, timestamp, [[key, payload, seq], ...]]``: one source record's updates for one target."""
Headers = list[tuple[str, bytes]]
Update = tuple[str, Any, Origin]


def encode(
    topic: str, partition: int, entries: list[Entry], combine: Combine | None
) -> list[tuple[bytes, Headers]]:
    """The records (value, headers) carrying ``entries``, split by source records so that each
    stays under :data:`MAX_REPARTITION_RECORD` (a single source record is never split)."""
    doc: dict[str, Any] = {"t": topic, "p": partition}
    headers: Headers = []
    if combine is None:
        doc["e"] = entries
        size = len(value := orjson.dumps(doc))
    else:
        doc["ts"] = entries[0][1]
        doc["c"] = _fold(entries, combine)
        parts = orjson.dumps(entries)
        headers = [(PARTS_HEADER, parts)]
        size = len(value := orjson.dumps(doc)) + len(parts)
    if size <= MAX_REPARTITION_RECORD or len(entries) == 1:
        return [(value, headers)]
    half = len(entries) // 2
    return encode(topic, partition, entries[:half], combine) + encode(
        topic, partition, entries[half:], combine
    )


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


def decode(value: bytes, headers: Any, combine: Combine | None) -> tuple[int, Iterator[Update]]:
    """The updates of one repartition record with their origins, and its first event time."""
    doc = orjson.loads(value)
    source = offset_key(doc["t"], doc["p"])
    if "c" in doc:
        ts = doc["ts"]
        assert combine is not None, "a combined repartition record for a job without combine"
        parts = HeaderParts(headers, combine)
        return ts, (
            (key, payload, Origin(source, last_offset, last_seq, ts, [first_offset, first_seq], count, parts))
            for key, payload, first_offset, first_seq, last_offset, last_seq, count in doc["c"]
        )
    entries = doc["e"]
    return entries[0][1], (
        (key, payload, Origin(source, offset, seq, ts))
        for offset, ts, updates in entries
        for key, payload, seq in updates
    )


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
