"""rollup: JSON events in; running figures per key, and per key and 60-second window.

Input: ``{"key": str, "value": number, "ts": epoch-ms}`` on ``events``, on any partition.
``rollup_totals`` holds count/sum/min/max per key over every valid event. ``rollup_windows``
holds the same figures per key and tumbling window of event time; a window is emitted to
``rollups`` once the table partition's watermark (the event time every source partition with
records pending has reached, :mod:`tables.watermark`) has passed its end plus the
grace period, then deleted. Closing on the watermark, not on the largest event time seen,
makes the closed windows the same whether or not a worker crashed on the way (G9).

The engine writes the watermark row of the windows table before the deletions of the windows
it closes, so after any crash a durable deletion implies a durable watermark that closes it:
a replayed event of a closed window is recognised as late, and a window is never re-opened
with part of its events.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import orjson

from service.job import BadRecord, Job, Outputs
from tables.positions import Origin, Positions
from tables.rollup import ROLLUP_TOTALS, ROLLUP_WINDOWS
from tables.table import META_PREFIX, TablePartition
from tables.watermark import PartitionClock

INPUT_TOPIC = "events"
OUTPUT_TOPIC = "rollups"
WINDOW_MS = 60_000

Figures = dict[str, float]


def parse(value: bytes) -> tuple[str, float, int]:
    """Validate one event; raise :class:`BadRecord` naming what is wrong."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRecord("invalid_utf8", str(exc)) from None
        raise BadRecord("invalid_json", str(exc)) from None
    if not isinstance(doc, dict):
        raise BadRecord("not_an_object", type(doc).__name__)
    for name in ("key", "value", "ts"):
        if name not in doc:
            raise BadRecord("missing_field", name)
    key, number, ts = doc["key"], doc["value"], doc["ts"]
    if not isinstance(key, str) or not key or key.startswith(META_PREFIX):
        raise BadRecord("wrong_type", "key must be a non-empty string")
    if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
        raise BadRecord("wrong_type", "value must be a finite number")
    if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
        raise BadRecord("wrong_type", "ts must be a non-negative integer (epoch ms)")
    return key, number, ts


def split(key: bytes | None, value: bytes) -> list[tuple[str, list[Any]]]:
    event_key, number, ts = parse(value)
    return [(event_key, [number, ts])]


def event_time(payload: list[Any]) -> int:
    return int(payload[1])


def fold(figures: Figures | None, value: float) -> Figures:
    """count/sum/min/max with one more value."""
    if figures is None:
        return {"count": 1, "sum": value, "min": value, "max": value}
    return {
        "count": figures["count"] + 1,
        "sum": figures["sum"] + value,
        "min": min(figures["min"], value),
        "max": max(figures["max"], value),
    }


def window_start(ts: int) -> int:
    return ts - ts % WINDOW_MS


def window_key(start: int, key: str) -> str:
    return f"{start:015d}|{key}"


def closed(start: int, watermark: int, grace_ms: int) -> bool:
    """A window closes once the watermark reaches its end plus the grace period."""
    return start + WINDOW_MS + grace_ms <= watermark


def window_record(key: str, start: int, figures: Figures) -> dict[str, Any]:
    """What ``rollups`` receives for a closed window."""
    return {"key": key, "window_start": start, "window_end": start + WINDOW_MS, **figures}


class RollupProcessor:
    def __init__(
        self, tables: dict[str, TablePartition], clock: PartitionClock | None, grace_ms: int, on_late: Any
    ) -> None:
        assert clock is not None, "rollup closes windows on a watermark"
        self.totals = tables[ROLLUP_TOTALS.name]
        self.windows = tables[ROLLUP_WINDOWS.name]
        self.clock = clock
        self.grace_ms = grace_ms
        self.on_late = on_late
        self.open: list[tuple[int, str]] = [
            (int(k.split("|", 1)[0]), k.split("|", 1)[1])
            for k, _ in self.windows.rows()
            if not k.startswith(META_PREFIX)
        ]
        heapq.heapify(self.open)

    def apply(self, key: str, payload: Any, origin: Origin, out: Outputs) -> None:
        number, ts = payload
        self.totals.update(key, origin, fold, number)
        start = window_start(ts)
        if closed(start, self.clock.watermark, self.grace_ms):
            self.on_late()
            return
        wkey = window_key(start, key)
        is_open = self.windows.row(wkey) is not None
        applied = self.windows.update(wkey, origin, fold, number)
        if applied is not None and not is_open:
            heapq.heappush(self.open, (start, key))

    def end_batch(self, out: Outputs) -> None:
        watermark = self.clock.watermark
        while self.open and closed(self.open[0][0], watermark, self.grace_ms):
            start, key = heapq.heappop(self.open)
            wkey = window_key(start, key)
            row = self.windows.row(wkey)
            if row is None:
                continue
            origin = _last_origin(row.positions)
            out.emit(("w", start, key), key, window_record(key, start, row.value), origin)
            self.windows.delete(wkey)


def _last_origin(positions: Positions) -> Origin:
    """Some origin that contributed to a window, for the output's source headers."""
    source, (offset, index) = max(positions.items(), key=lambda item: item[1])
    return Origin(source, offset, index, 0)


def build(
    grace_ms: int,
    on_late: Any = lambda: None,
    input_topic: str = INPUT_TOPIC,
    output_topic: str = OUTPUT_TOPIC,
) -> Job:
    return Job(
        name="rollup",
        input_topic=input_topic,
        output_topic=output_topic,
        tables=(ROLLUP_TOTALS, ROLLUP_WINDOWS),
        split=split,
        processor=lambda tables, clock: RollupProcessor(tables, clock, grace_ms, on_late),
        event_time=event_time,
        watermark_table=ROLLUP_WINDOWS.name,
    )
