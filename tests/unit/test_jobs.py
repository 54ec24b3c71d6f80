"""The built-in jobs' pure logic, without Kafka."""

from __future__ import annotations

import pytest

from agents import rollup, wordcount
from service.app.units import BadRecord


def test_tokens_follow_the_product_definition() -> None:
    assert dict(wordcount.tokens("The the CAT, naïve café! x_y 42")) == {
        "the": 2,
        "cat": 1,
        "naïve": 1,
        "café": 1,
        "x_y": 1,
        "42": 1,
    }


def test_words_of_a_line_are_one_update_per_distinct_word() -> None:
    assert list(wordcount.words_of(b"a b a", 100).items()) == [("a", 2), ("b", 1)]
    assert wordcount.words_of(b"  ...  ", 100) == {}


@pytest.mark.parametrize(
    ("raw", "reason"), [(b"\xff\xfe", "invalid_utf8"), (None, "null_value"), (b"x" * 11, "oversized")]
)
def test_words_of_a_bad_line_name_the_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(BadRecord) as err:
        wordcount.words_of(raw, 10)
    assert err.value.reason == reason


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


def test_rollup_fold_and_window_record() -> None:
    f = rollup.fold(None, 3)
    f = rollup.fold(f, -1)
    assert f == {"count": 2, "sum": 2, "min": -1, "max": 3}
    assert rollup.window_record("k", 60_000, f) == {
        "key": "k",
        "window_start": 60_000,
        "window_end": 120_000,
        **f,
    }
