"""The records of a folding topic (:mod:`service.app.folding`): one merged update per key and
target partition, its parts listed per key in the ``sluice.parts`` header
(``{key: [[at, seq, payload], ...]}``). Read by :func:`service.repartition.decode` like the
per-event layout; :mod:`service.repartition` describes both.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from itertools import repeat
from operator import itemgetter
from typing import Any

import orjson

from service import repartition
from service.repartition import PARTS_HEADER, Combine, Headers, OversizedUpdate, merged

_AT, _SEQ, _VALUE, _LAST = itemgetter(0), itemgetter(1), itemgetter(2), itemgetter(-1)


def encode_folded(
    source: str,
    ts_of: Callable[[tuple[Any, int, Any]], int],
    parts: dict[str, list[tuple[Any, int, Any]]],
    combine: Combine,
    *,
    ints: bool = False,
    merge: bool = True,
) -> list[tuple[bytes, Headers]]:
    """The records carrying a batch's sends to one target of a folding topic
    (:mod:`service.app.folding`): ``parts`` is key -> ``(at, seq, payload)`` of each send in
    position order. One combined update per key; the parts header lists the parts per key
    (``{key: [[at, seq, payload], ...]}``). Split like :func:`encode` when over the limit.
    A record's ``ts`` is ``ts_of`` its earliest part (what the first entry of a per-event
    record carries).

    The updates are computed a column at a time with builtins (no Python frame per key):
    ``ints`` (every payload an ``int``) lets ``operator.add`` merge with ``sum``."""
    header = orjson.dumps(parts)
    each = list(parts.values())
    firsts, lasts = list(map(_AT, each)), list(map(_LAST, each))
    ts = ts_of(min(firsts)) if firsts else 0
    payloads = map(map, repeat(_VALUE), each)
    if ints and combine is operator.add:
        totals = map(sum, payloads)
    else:
        totals = map(merged, repeat(combine), payloads)
    try:
        updates = list(
            zip(
                parts,
                totals,
                map(_AT, firsts),
                map(_SEQ, firsts),
                map(_AT, lasts),
                map(_SEQ, lasts),
                map(len, each),
                strict=True,
            )
        )
        value = orjson.dumps({"s": source, "ts": ts, "c": updates})
    except Exception:  # a merge that raises, or that JSON cannot carry (an int past 64 bits)
        if not merge:
            raise
        return _unmerged(source, ts_of, parts, combine)
    size = len(value) + len(header)
    if size <= repartition.MAX_REPARTITION_RECORD:
        return [(value, [(PARTS_HEADER, header)])]
    pieces = -(-size * 5 // (repartition.MAX_REPARTITION_RECORD * 4))
    keys = list(parts)
    if len(keys) > 1:
        step = -(-len(keys) // min(pieces, len(keys)))
        chunks = [{key: parts[key] for key in keys[i : i + step]} for i in range(0, len(keys), step)]
    else:
        [(key, sent)] = parts.items()
        if len(sent) <= 1:
            raise OversizedUpdate(f"one update needs {size} bytes")
        step = -(-len(sent) // min(pieces, len(sent)))
        chunks = [{key: sent[i : i + step]} for i in range(0, len(sent), step)]
    return [piece for chunk in chunks for piece in encode_folded(source, ts_of, chunk, combine, ints=ints)]


def _unmerged(
    source: str,
    ts_of: Callable[[tuple[Any, int, Any]], int],
    parts: dict[str, list[tuple[Any, int, Any]]],
    combine: Combine,
) -> list[tuple[bytes, Headers]]:
    """A batch with keys whose merge cannot be carried (it raises, or JSON cannot hold it):
    those keys' parts travel one per record, unmerged — each was checked at its send — and
    the other keys as usual. Failing the batch instead would fail it again after every restart.
    Each record still holds one update per key, which is what the guard relies on."""
    mergeable: dict[str, list[tuple[Any, int, Any]]] = {}
    apart: dict[str, list[tuple[Any, int, Any]]] = {}
    for key, sent in parts.items():
        try:
            orjson.dumps(merged(combine, map(_VALUE, sent)))
        except Exception:
            apart[key] = sent
        else:
            mergeable[key] = sent
    out = encode_folded(source, ts_of, mergeable, combine, merge=False) if mergeable else []
    for key, sent in apart.items():
        for part in sent:
            out += encode_folded(source, ts_of, {key: [part]}, combine, merge=False)
    return out
