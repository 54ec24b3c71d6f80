"""How a row travels: its value and its positions in one JSON document.

One document per row means one RocksDB value and one changelog record: the value and the
positions it reflects are written together and can never disagree (G2). ``"s"`` is the
schema tag of the table, so a release that changes a table's value shape incompatibly is
refused at start instead of misreading old rows mid-stream.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from tables.positions import Positions


class Row(NamedTuple):
    value: Any
    positions: Positions


def encode_row(row: Row, schema: str) -> bytes:
    return orjson.dumps({"s": schema, "v": row.value, "p": row.positions})


def decode_row(data: bytes) -> tuple[str, Row]:
    """Return the schema tag and the row (positions as ``[offset, seq]`` pairs)."""
    doc = orjson.loads(data)
    return doc.get("s", ""), Row(doc["v"], doc["p"])
