"""One consumed record as one JSON line, lossless for arbitrary bytes.

Encoding of every byte field (key, value, header values): ``null`` when absent; a JSON
string when the bytes are valid UTF-8 (the common case stays readable and greppable); else
an object ``{"base64": "<standard base64>"}``. The three shapes cannot be confused, so
:func:`decode_bytes` restores the exact bytes. Escaping tricks such as ``surrogateescape``
were rejected: lone surrogates are not valid in strict JSON and many parsers reject them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any

import orjson

JsonBytes = str | dict[str, str] | None


def encode_bytes(data: bytes | None) -> JsonBytes:
    """Bytes as a JSON value: ``None``, a ``str`` if UTF-8, else ``{"base64": ...}``."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def decode_bytes(value: object) -> bytes | None:
    """The inverse of :func:`encode_bytes`; ``ValueError`` for anything it cannot produce."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"base64"} and isinstance(value["base64"], str):
        try:
            return base64.b64decode(value["base64"], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"invalid base64: {exc}") from None
    raise ValueError(f"not an encoded byte string: {value!r}")


def record_to_json(
    *,
    key: bytes | None,
    value: bytes | None,
    partition: int,
    offset: int,
    timestamp: int,
    headers: Iterable[tuple[str, bytes | None]],
) -> bytes:
    """The JSON line (without newline) for one record; keys in the documented order."""
    out: dict[str, Any] = {
        "key": encode_bytes(key),
        "value": encode_bytes(value),
        "partition": partition,
        "offset": offset,
        "timestamp": timestamp,
        "headers": [[name, encode_bytes(data)] for name, data in headers],
    }
    return orjson.dumps(out)
