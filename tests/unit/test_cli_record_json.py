"""``consume --format json``: one object per record, lossless for bytes that are not UTF-8."""

from __future__ import annotations

import json
import os

import pytest

from service.kafka.record_json import decode_bytes, encode_bytes, record_to_json


@pytest.mark.parametrize(
    "data",
    [None, b"", b"plain", "ünïcödé ✓".encode(), b"\xff", b"\xc3\x28", b"a\x00b", os.urandom(64)],
)
def test_round_trip_through_json_text(data: bytes | None) -> None:
    text = json.dumps(encode_bytes(data))
    assert decode_bytes(json.loads(text)) == data


def test_utf8_is_a_plain_string_and_other_bytes_are_base64() -> None:
    assert encode_bytes("é".encode()) == "é"
    assert encode_bytes(b"\xff\xfe") == {"base64": "//4="}
    assert encode_bytes(None) is None


def test_a_string_that_looks_like_base64_stays_a_string() -> None:
    # The object form is only used for non-UTF-8 bytes, so there is no ambiguity.
    assert decode_bytes(encode_bytes(b'{"base64": "//4="}')) == b'{"base64": "//4="}'


@pytest.mark.parametrize("bad", [{"base64": "!!"}, {"b64": "AA=="}, {"base64": "AA==", "x": 1}, 5])
def test_decode_rejects_what_encode_never_produces(bad: object) -> None:
    with pytest.raises(ValueError):
        decode_bytes(bad)


def test_record_line_has_the_documented_fields_in_order() -> None:
    line = record_to_json(
        key=b"\xff",
        value="wert ü".encode(),
        partition=3,
        offset=42,
        timestamp=1_700_000_000_123,
        headers=[("trace", b"\x00\x01"), ("kind", b"text"), ("none", None)],
    )
    assert b"\n" not in line
    obj = json.loads(line)
    assert list(obj) == ["key", "value", "partition", "offset", "timestamp", "headers"]
    assert obj == {
        "key": {"base64": "/w=="},
        "value": "wert ü",
        "partition": 3,
        "offset": 42,
        "timestamp": 1_700_000_000_123,
        "headers": [["trace", "\x00\x01"], ["kind", "text"], ["none", None]],
    }
    assert decode_bytes(obj["headers"][0][1]) == b"\x00\x01"
