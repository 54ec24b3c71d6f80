"""The offset guard, row codec and partition store, on a real RocksDB in a temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents import rollup
from service.errors import StateError
from service.job import Outputs
from tables.codec import Row, decode_row, encode_row
from tables.positions import Origin, after
from tables.rollup import ROLLUP_TOTALS, ROLLUP_WINDOWS
from tables.watermark import PartitionClock
from tables.store import PartitionStore, claim_data_dir
from tables.table import TablePartition, TableSpec

SPEC = TableSpec("t", "count.v1")


def origin(offset: int, index: int = 0, source: str = "lines:0", ts: int = 0) -> Origin:
    return Origin(source, offset, index, ts)


@pytest.fixture
def table(tmp_path: Path) -> TablePartition:
    return TablePartition(SPEC, 0, PartitionStore(tmp_path / "t0"))


def test_guard_orders_by_offset_then_index() -> None:
    last = [10, 1]
    assert not after(10, 1, last)
    assert not after(9, 5, last)
    assert after(10, 2, last)
    assert after(11, 0, last)


def test_codec_round_trip() -> None:
    row = Row({"a": 1}, {"lines:0": [3, 1]})
    assert decode_row(encode_row(row, "s1")) == ("s1", row)


def test_replayed_update_is_skipped_and_counted(table: TablePartition) -> None:
    def add(n: int | None, k: int) -> int:
        return (n or 0) + k

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


def test_delete_and_put_go_last_in_changelog_order(table: TablePartition) -> None:
    table.update("a", origin(1), lambda n, v: v, 1)
    table.update("b", origin(2), lambda n, v: v, 1)
    table.put("\x00meta", 5)
    table.delete("a")
    assert [k for k, _ in table.changelog_records()] == [b"b", b"\x00meta", b"a"]


def test_data_dir_of_another_app_is_refused(tmp_path: Path) -> None:
    claim_data_dir(tmp_path, "one")
    claim_data_dir(tmp_path, "one")
    with pytest.raises(StateError, match="belongs to SLUICE_APP_ID='one'"):
        claim_data_dir(tmp_path, "two")


def _rollup_tables(tmp_path: Path) -> dict[str, TablePartition]:
    return {
        spec.name: TablePartition(spec, 0, PartitionStore(tmp_path / spec.name))
        for spec in (ROLLUP_TOTALS, ROLLUP_WINDOWS)
    }


def test_rollup_processor_closes_windows_on_the_watermark(tmp_path: Path) -> None:
    tables = _rollup_tables(tmp_path)
    late: list[int] = []
    clock = PartitionClock()
    proc = rollup.RollupProcessor(tables, clock, grace_ms=10_000, on_late=lambda: late.append(1))
    out = Outputs()
    proc.apply("k", [1, 1_000], origin(0), out)
    proc.apply("k", [2, 59_000], origin(1), out)
    proc.apply("k", [5, 65_000], origin(2), out)
    clock.heard("events:0", 65_000, 3)
    clock.advance(["events:0"], {"events:0": 10})
    proc.end_batch(out)
    assert out.records == {}  # watermark 65 s < 60 s + 10 s grace
    proc.apply("j", [1, 70_000], origin(3), out)
    clock.heard("events:0", 70_000, 4)
    clock.advance(["events:0"], {"events:0": 10})
    proc.apply("k", [9, 2_000], origin(4), out)  # late: its window has closed
    proc.end_batch(out)
    assert [v for _, v, _ in out.records.values()] == [
        {"key": "k", "window_start": 0, "window_end": 60_000, "count": 2, "sum": 3, "min": 1, "max": 2}
    ]
    assert late == [1]
    assert tables["rollup_totals"].get("k") == {"count": 4, "sum": 17, "min": 1, "max": 9}
