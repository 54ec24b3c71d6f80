"""Stage 1 → stage 2 through the repartition record format, on a real RocksDB table.

The combined format carries one update per key and the individual updates in a header; these
tests prove the guard gets the count exact from it when a replay cuts its batches at other
offsets than the first run did, and when a batch is split over several records.
"""

from __future__ import annotations

import operator
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agents import wordcount
from service import folded_records, repartition
from service.repartition import decode, encode
from tables.store import PartitionStore
from tables.table import TablePartition, TableSpec

SPEC = TableSpec("counts", "count.v1")
WORDS = [f"w{i}" for i in range(30)]


@pytest.fixture
def table(tmp_path: Path) -> TablePartition:
    return TablePartition(SPEC, 0, PartitionStore(tmp_path / "t0"))


def entries_of(lines: list[tuple[int, bytes]]) -> list[list[Any]]:
    """What stage 1 builds for one target from (offset, line) records: every word routed here."""
    return [
        [
            offset,
            1000 + offset,
            [[key, n, seq] for seq, (key, n) in enumerate(wordcount.words_of(line, 10**9).items())],
        ]
        for offset, line in lines
    ]


def folded(entries: list[list[Any]]) -> dict[str, list[tuple[Any, int, Any]]]:
    """The same sends as a folding topic's outbox holds them: per key, in position order."""
    parts: dict[str, list[tuple[Any, int, Any]]] = {}
    for at, _ts, updates in entries:
        for key, payload, seq in updates:
            parts.setdefault(key, []).append((at, seq, payload))
    return parts


def encode_combined(kind: str, entries: list[list[Any]]) -> list[tuple[bytes, repartition.Headers]]:
    """A combined batch as records: per sending event (``encode``) or folded per key."""
    if kind == "entries":
        return encode("lines:0", entries, operator.add)
    times = {at: ts for at, ts, _ in entries}
    return folded_records.encode_folded("lines:0", lambda part: times[part[0]], folded(entries), operator.add)


ENCODERS = pytest.mark.parametrize("kind", ["entries", "folded"])


def apply(table: TablePartition, entries: list[list[Any]], kind: str = "entries") -> None:
    for value, headers in encode_combined(kind, entries):
        for key, payload, origin in decode(value, headers, operator.add).updates:
            table.update(key, origin, add, payload)


def add(count: int | None, n: int) -> int:
    return (count or 0) + n


def counts(table: TablePartition) -> dict[str, int]:
    return {key: row.value for key, row in table.pending.items() if row is not None}


def batches(records: list[tuple[int, bytes]], rng: random.Random) -> list[list[tuple[int, bytes]]]:
    """``records`` cut at random points, as fetches of different sizes would."""
    out, i = [], 0
    while i < len(records):
        n = rng.randint(1, 12)
        out.append(records[i : i + n])
        i += n
    return out


@ENCODERS
def test_combined_record_carries_one_update_per_key_and_the_parts_header(kind: str) -> None:
    entries = entries_of([(10, b"a b a"), (11, b"b"), (12, b"a")])
    [(value, headers)] = encode_combined(kind, entries)
    assert [name for name, _ in headers] == [repartition.PARTS_HEADER]
    decoded = decode(value, headers, operator.add)
    got = {key: (p, origin.first, origin.position, origin.updates) for key, p, origin in decoded.updates}
    assert decoded.first_ts == 1010
    assert decoded.clock is None
    # "a b a" is one update {a: 2} (seq 0) and {b: 1} (seq 1)
    assert got == {"a": (3, [10, 0], [12, 0], 2), "b": (2, [10, 1], [11, 0], 2)}
    parts = decoded.updates[0][2].parts
    assert parts is not None
    assert parts.split("a") == [([10, 0], 2), ([12, 0], 1)]
    assert parts.unseen("a", [10, 0]) == (1, 1)


def test_folded_records_carry_what_entry_records_carry() -> None:
    """Random lines: the folded encoding decodes to the same updates, origins and parts."""
    rng = random.Random(3)
    lines = [(o, " ".join(rng.choices(WORDS, k=rng.randint(1, 9))).encode()) for o in range(200)]
    entries = entries_of(lines)

    def seen(kind: str) -> list[Any]:
        [(value, headers)] = encode_combined(kind, entries)
        updates = decode(value, headers, operator.add).updates
        return sorted(
            (key, p, o.first, o.position, o.updates, o.timestamp_ms, o.parts.split(key) if o.parts else None)
            for key, p, o in updates
        )

    assert seen("folded") == seen("entries")


@ENCODERS
def test_replay_with_other_batch_cuts_counts_every_line_once(table: TablePartition, kind: str) -> None:
    rng = random.Random(7)
    records = [(o, " ".join(rng.choices(WORDS, k=rng.randint(1, 8))).encode()) for o in range(300)]
    truth = Counter(w for _, line in records for w in line.decode().split())
    # The first owner applies up to offset 199 and crashes; its group commit had reached 120.
    for batch in batches(records[:200], rng):
        apply(table, entries_of(batch), kind)
    # The next owner re-reads from 120 in batches cut elsewhere: some rows have applied part of
    # a batch (the guard asks the header for the rest), some all of it, some none.
    for batch in batches(records[120:], rng):
        apply(table, entries_of(batch), kind)
    assert counts(table) == dict(truth)
    replayed = sum(1 for _, line in records[120:200] for _ in set(line.decode().split()))
    assert table.duplicates_skipped == replayed


@ENCODERS
def test_a_batch_split_over_several_records_keeps_the_count(
    table: TablePartition, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setattr(repartition, "MAX_REPARTITION_RECORD", 200)
    records = [(o, b"w1 w2 w1 w3") for o in range(40)]
    entries = entries_of(records)
    pieces = encode_combined(kind, entries)
    assert len(pieces) > 4
    assert all(len(v) + sum(len(h) for _, h in hs) <= 200 for v, hs in pieces)
    apply(table, entries, kind)
    apply(table, entries_of(records[10:30]), kind)  # a replay inside it
    assert counts(table) == {"w1": 80, "w2": 40, "w3": 40}


def test_a_folded_part_over_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repartition, "MAX_REPARTITION_RECORD", 100)
    with pytest.raises(repartition.OversizedUpdate):
        folded_records.encode_folded("lines:0", lambda _part: 1, {"x" * 200: [(1, 0, 1)]}, operator.add)


def test_records_without_combine_keep_each_update_origin() -> None:
    entries = entries_of([(5, b"x y"), (6, b"x")])
    [(value, headers)] = encode("lines:0", entries, None)
    assert headers == []
    decoded = decode(value, headers, None)
    assert decoded.first_ts == 1005
    assert [(k, p, o.position) for k, p, o in decoded.updates] == [
        ("x", 1, [5, 0]),
        ("y", 1, [5, 1]),
        ("x", 1, [6, 0]),
    ]


@pytest.mark.parametrize("combine", [operator.add, None])
def test_one_line_fanning_out_past_the_limit_is_split_and_stays_exact(
    table: TablePartition, combine: repartition.Combine | None
) -> None:
    """A 590 KB line of 100,000 distinct words: its updates travel in several records, each
    under the limit, and a replay of the same line (cut the same or not) changes nothing."""
    line = " ".join(f"u{i}" for i in range(100_000)).encode()
    entries = entries_of([(3, b"a b"), (4, line), (5, b"a")])
    pieces = encode("lines:0", entries, combine)
    assert len(pieces) > 2
    assert all(len(v) + sum(len(h) for _, h in hs) <= repartition.MAX_REPARTITION_RECORD for v, hs in pieces)
    for _ in range(2):  # the second pass is a replay: every update is a duplicate
        for value, headers in pieces:
            for key, payload, origin in decode(value, headers, combine).updates:
                table.update(key, origin, add, payload)
    got = counts(table)
    assert len(got) == 100_002
    assert got["a"] == 2 and got["b"] == 1 and got["u99999"] == 1


def test_a_single_update_over_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repartition, "MAX_REPARTITION_RECORD", 100)
    with pytest.raises(repartition.OversizedUpdate):
        encode("lines:0", [[1, 1, [["x" * 200, 1, 0]]]], None)


def test_the_source_clock_rides_on_the_last_piece_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """An update must never reach a table partition after the clock that follows it: the
    watermark would count it late (tables.watermark)."""
    monkeypatch.setattr(repartition, "MAX_REPARTITION_RECORD", 200)
    pieces = encode("events:2", entries_of([(o, b"w1 w2") for o in range(30)]), None, (5000, 30))
    clocks = [decode(v, h, None).clock for v, h in pieces]
    assert clocks[-1] == (5000, 30) and all(c is None for c in clocks[:-1])


def test_a_marker_carries_the_clock_and_no_update() -> None:
    [(value, headers)] = encode("events:1", [], operator.add, (1234, 77))
    decoded = decode(value, headers, operator.add)
    assert (decoded.source, decoded.updates, decoded.first_ts, decoded.clock) == (
        "events:1",
        [],
        None,
        (1234, 77),
    )


@pytest.mark.parametrize(
    ("value", "headers"),
    [
        (b"not json", []),
        (b"[1, 2]", []),
        (b'{"t": "lines", "p": 0}', []),
        (b'{"t": "lines", "p": 0, "e": [[1, 2, [["k", 1]]]]}', []),
        (b'{"t": "lines", "p": 0, "ts": 1, "c": [["k", 1, 0, 0, 0, 0, 1]]}', []),  # no parts header
    ],
)
def test_a_record_that_is_not_a_repartition_record_raises_before_anything_applies(
    value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        decode(value, headers, operator.add)
