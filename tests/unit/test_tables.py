"""The offset guard, row codec and partition store, on a real RocksDB in a temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import StateError
from tables.codec import Row, decode_row, encode_row
from tables.positions import DUPLICATE, NEW, PARTIAL, Origin, verdict
from tables.store import PartitionStore, claim_data_dir
from tables.table import TablePartition, TableSpec

SPEC = TableSpec("t", "count.v1")


def origin(offset: int, index: int = 0, source: str = "lines:0", ts: int = 0) -> Origin:
    return Origin(source, [offset, index], ts)


@pytest.fixture
def table(tmp_path: Path) -> TablePartition:
    return TablePartition(SPEC, 0, PartitionStore(tmp_path / "t0"))


def add(n: int | None, k: int) -> int:
    return (n or 0) + k


def test_positions_compare_lexicographically_deeper_after_shallower() -> None:
    last = [10, 1]
    assert verdict(origin(10, 1), last) == DUPLICATE
    assert verdict(origin(9, 5), last) == DUPLICATE
    assert verdict(origin(10, 2), last) == NEW
    assert verdict(origin(11, 0), last) == NEW
    assert verdict(Origin("lines:0", [10, 1, 1], 0), last) == NEW  # a second write of one row
    combined = Origin("lines:0", [12, 0], 0, first=[9, 0], updates=3)
    assert verdict(combined, last) == PARTIAL
    assert verdict(combined, [8, 0]) == NEW
    assert verdict(combined, [12, 0]) == DUPLICATE


def test_codec_round_trip() -> None:
    row = Row({"a": 1}, {"lines:0": [3, 1]})
    assert decode_row(encode_row(row, "s1")) == ("s1", row)
    tombstone = Row(None, {"lines:0": [3, 1]}, deleted=True)
    assert decode_row(encode_row(tombstone, "s1")) == ("s1", tombstone)


def test_replayed_update_is_skipped_and_counted(table: TablePartition) -> None:
    assert table.update("w", origin(5), add, 1) == 1
    assert table.update("w", origin(5), add, 1) is None
    assert table.update("w", origin(4), add, 1) is None
    assert table.update("w", origin(5, 1), add, 1) == 2
    assert table.update("w", origin(0, source="lines:1"), add, 1) == 3
    assert table.duplicates_skipped == 2


def test_local_store_only_sees_persisted_changes(table: TablePartition, tmp_path: Path) -> None:
    table.update("w", origin(1), lambda n, v: v, 7)
    assert table.store.get(b"w") is None  # pending until the changelog acknowledged it
    records = list(table.changelog_records())
    table.persist(records, changelog_offset=41)
    assert table.get("w") == 7
    assert table.store.changelog_offset() == 41
    table.store.close()
    reopened = TablePartition(SPEC, 0, PartitionStore(tmp_path / "t0"))
    assert reopened.get("w") == 7
    assert reopened.row("w") == Row(7, {"lines:0": [1, 0]})
    assert reopened.update("w", origin(1), lambda n, v: v, 0) is None


def test_a_deleted_key_keeps_its_positions(table: TablePartition) -> None:
    table.write("k", 3, origin(1))
    table.write("k", None, origin(2), deleted=True)
    assert not table.contains("k") and table.get("k") is None
    assert table.check("k", origin(2)) == DUPLICATE  # a replay after the delete is still known
    assert table.check("k", origin(3)) == NEW


def test_undo_restores_the_pending_entry(table: TablePartition) -> None:
    first = table.write("k", 1, origin(1))
    second = table.write("k", 2, origin(2))
    table.restore_pending("k", second)
    assert table.get("k") == 1
    table.restore_pending("k", first)
    assert "k" not in table.pending


def test_put_and_remove_go_last_in_changelog_order(table: TablePartition) -> None:
    table.update("a", origin(1), lambda n, v: v, 1)
    table.update("b", origin(2), lambda n, v: v, 1)
    table.put("\x00meta", 5)
    table.remove("a")
    assert [k for k, _ in table.changelog_records()] == [b"b", b"\x00meta", b"a"]


def test_positions_of_gone_sources_are_pruned_when_a_row_is_rewritten(table: TablePartition) -> None:
    table.live_sources = frozenset({"lines:0", "lines:1"})
    table.write("k", 1, origin(1, source="old:0"))
    table.write("k", 2, origin(1, source="old:1"))
    table.write("k", 3, origin(1, source="old:2"))
    table.write("k", 4, origin(1, source="lines:0"))  # more entries than live sources: pruned
    row = table.row("k")
    assert row is not None and set(row.positions) == {"lines:0"}


def test_data_dir_of_another_app_is_refused(tmp_path: Path) -> None:
    claim_data_dir(tmp_path, "one")
    claim_data_dir(tmp_path, "one")
    with pytest.raises(StateError, match="belongs to SLUICE_APP_ID='one'"):
        claim_data_dir(tmp_path, "two")


def test_the_row_cache_stays_within_its_byte_bound(tmp_path: Path) -> None:
    part = TablePartition(SPEC, 0, PartitionStore(tmp_path / "big"), cache_bytes=64 * 1024)
    for i in range(2_000):  # rows of ~1 KB each: 2 MB persisted, far over the 64 KB bound
        part.write(f"k{i}", "x" * 1_000, origin(i))
    records = list(part.changelog_records())
    part.persist(records, len(records))
    for i in range(2_000):
        assert part.get(f"k{i}") == "x" * 1_000
        assert part._cached_bytes <= 64 * 1024
    assert 0 < len(part._cache) < 2_000
