"""How a row travels: its value and its positions in one JSON document.

One document per row means one RocksDB value and one changelog record: the value and the
positions it reflects are written together and can never disagree (G2). ``"s"`` is the
schema tag of the table, so a release that changes a table's value shape incompatibly is
refused at start instead of misreading old rows mid-stream. ``"x": 1`` marks a deleted row
that keeps its positions (a *tombstone*), so an event replayed after its key was deleted is
still recognised.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from tables.positions import Positions

I64_MIN, U64_MAX = -(1 << 63), (1 << 64) - 1
"""The integers JSON (orjson) carries: a row's, or a packed record's."""


class Row(NamedTuple):
    value: Any
    positions: Positions
    deleted: bool = False


def encode_row(row: Row, schema: str) -> bytes:
    if row.deleted:
        return orjson.dumps({"s": schema, "v": None, "p": row.positions, "x": 1})
    return orjson.dumps({"s": schema, "v": row.value, "p": row.positions})


def decode_row(data: bytes) -> tuple[str, Row]:
    """Return the schema tag and the row."""
    doc = orjson.loads(data)
    return doc.get("s", ""), Row(doc["v"], doc["p"], bool(doc.get("x")))


def is_sluice_row(data: bytes) -> bool:
    """Whether a changelog value is a sluice row (stock Faust writes the bare value)."""
    return data.startswith(b'{"s":')
