"""The jobs' pure logic, without Kafka."""

from __future__ import annotations

import pytest

from agents import rollup, wordcount
from service.job import BadRecord


def test_tokens_follow_the_product_definition() -> None:
    assert dict(wordcount.tokens("The the CAT, naïve café! x_y 42")) == {
        "the": 2,
        "cat": 1,
        "naïve": 1,
        "café": 1,
        "x_y": 1,
        "42": 1,
    }


def test_wordcount_split_gives_one_update_per_distinct_word() -> None:
    assert wordcount.split(None, b"a b a") == [("a", 2), ("b", 1)]
    assert wordcount.split(None, b"  ...  ") == []


def test_wordcount_split_rejects_invalid_utf8() -> None:
    with pytest.raises(BadRecord) as err:
        wordcount.split(None, b"\xff\xfe")
    assert err.value.reason == "invalid_utf8"


def test_wordcount_fold() -> None:
    assert wordcount.add(None, 2) == 2
    assert wordcount.add(5, 1) == 6


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "invalid_json"),
        (b"\xff\xfe", "invalid_utf8"),
        (b"[1]", "not_an_object"),
        (b'{"value": 1, "ts": 1}', "missing_field"),
        (b'{"key": "k", "ts": 1}', "missing_field"),
        (b'{"key": "k", "value": 1}', "missing_field"),
        (b'{"key": 1, "value": 1, "ts": 1}', "wrong_type"),
        (b'{"key": "", "value": 1, "ts": 1}', "wrong_type"),
        (b'{"key": "\\u0000x", "value": 1, "ts": 1}', "wrong_type"),
        (b'{"key": "k", "value": true, "ts": 1}', "wrong_type"),
        (b'{"key": "k", "value": "1", "ts": 1}', "wrong_type"),
        (b'{"key": "k", "value": 1, "ts": 1.5}', "wrong_type"),
        (b'{"key": "k", "value": 1, "ts": -1}', "wrong_type"),
    ],
)
def test_rollup_rejects_bad_events_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(BadRecord) as err:
        rollup.parse(raw)
    assert err.value.reason == reason


def test_rollup_accepts_a_valid_event() -> None:
    assert rollup.parse(b'{"key": "k", "value": 2.5, "ts": 61000}') == ("k", 2.5, 61000)


def test_rollup_fold_and_windows() -> None:
    f = rollup.fold(None, 3)
    f = rollup.fold(f, -1)
    assert f == {"count": 2, "sum": 2, "min": -1, "max": 3}
    assert rollup.window_start(61_000) == 60_000
    assert not rollup.closed(60_000, 129_999, 10_000)
    assert rollup.closed(60_000, 130_000, 10_000)
    assert rollup.window_record("k", 60_000, f) == {
        "key": "k",
        "window_start": 60_000,
        "window_end": 120_000,
        **f,
    }
