"""rollup: JSON events in; running figures per key, and per key and 60-second window.

Input: ``{"key": str, "value": number, "ts": epoch-ms}`` on ``events``, on any partition. The
first agent validates each event (anything else goes to the dead letters with its reason) and
sends it to the repartition topic keyed by ``key``. The second folds it into ``rollup_totals``
(count/sum/min/max per key) and into ``rollup_windows`` (the same per key and tumbling window of
event time). A window is emitted to ``rollups`` and deleted once the table partition's
watermark — the event time every source partition with records pending has reached
(:mod:`tables.watermark`) — has passed its end plus ``SLUICE_WINDOW_GRACE_MS``. Closing on the
watermark, not on the largest event time seen, makes the closed windows the same whether or not
a worker crashed on the way (G9). An event time more than ``SLUICE_MAX_EVENT_TIME_SKEW_MS``
ahead of its record's broker timestamp is dead-lettered (``ts_out_of_range``): one bad ``ts``
must not close every window.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import orjson

from agents.wordcount import input_topic
from service.app.units import BadRecord
from service.settings import Settings

if TYPE_CHECKING:
    from service.app.base import App
from tables import rollup as table_def
from tables.table import META_PREFIX

WINDOW_MS = table_def.WINDOW_SECONDS * 1000

Figures = dict[str, float]


def parse(value: bytes | None) -> tuple[str, float, int]:
    """Validate one event; raise :class:`BadRecord` naming what is wrong."""
    if value is None:
        raise BadRecord("null_value")
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


def window_record(key: str, start: int, figures: Figures) -> dict[str, Any]:
    """What ``rollups`` receives for a closed window."""
    return {"key": key, "window_start": start, "window_end": start + WINDOW_MS, **figures}


def event_time(event: Any) -> float:
    """Where an update's event time is (seconds, as Faust's windows count): its ``ts``."""
    return float(event.value[1]) / 1000


def register(app: App, settings: Settings) -> tuple[Any, Any]:
    """Declare rollup's topics, tables and agents on ``app``; return the two agents."""
    limit = settings.max_record_bytes
    skew = settings.max_event_time_skew_ms
    events = input_topic(app, settings, settings.rollup_input_topic, settings.rollup_input_pattern)
    by_key = app.topic(f"{settings.app_id}-rollup-repartition", internal=True, key_type=str, watermarks=True)
    rollups = app.topic(settings.rollup_output_topic, key_type=str)

    async def emit(window: Any, figures: Figures) -> None:
        key, (start, _end) = window
        start_ms = round(start * 1000)
        await rollups.send(key=key, value=window_record(key, start_ms, figures))

    totals = table_def.define_totals(app)
    windows = table_def.define_windows(app, settings.window_grace_ms, [events], emit, event_time)

    @app.agent(events, name="rollup", job="rollup", origin_tag="")
    async def validate(stream: Any) -> None:
        """Valid events to the partition that owns their key; the rest to the dead letters."""
        async for event in stream.events():
            value = event.value
            if value is not None and len(value) > limit:
                raise BadRecord("oversized", f"{len(value)} > {limit} bytes")
            key, number, ts = parse(value)
            broker_ms = int(event.message.timestamp * 1000)
            if ts > broker_ms + skew:
                raise BadRecord(
                    "ts_out_of_range", f"ts {ts} is more than {skew} ms ahead of the record's {broker_ms}"
                )
            await by_key.send(key=key, value=[number, ts], timestamp=ts / 1000)

    @app.agent(by_key, name="rollup-fold", job="rollup", origin_tag="")
    async def fold_events(stream: Any) -> None:
        """Fold an event into its key's totals and its window."""
        async for event in stream.events():
            key = event.key
            number, _ts = event.value
            totals[key] = fold(totals[key], number)
            windows[key] = fold(windows[key].value(), number)

    return validate, fold_events
