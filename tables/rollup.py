"""The rollup tables: running figures per key, and open 60-second windows per key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

WINDOW_SECONDS = 60


def _none() -> None:
    return None


def define_totals(app: Any) -> Any:
    """``rollup_totals``: key -> ``{"count", "sum", "min", "max"}`` over every valid event."""
    return app.Table(
        "rollup_totals",
        default=_none,
        key_type=str,
        schema_tag="figures.v1",
        raw_keys=True,
        help=define_totals.__doc__,
    )


def define_windows(
    app: Any,
    grace_ms: int,
    sources: list[Any],
    on_close: Callable[[Any, Any], Any],
    event_time: Callable[[Any], float],
) -> Any:
    """``rollup_windows``: per key and 60 s tumbling window of event time, the same figures;
    a window closes (``on_close``) once the watermark of its partition has passed its end plus
    the grace period, i.e. its start plus ``expires``."""
    table = app.Table(
        "rollup_windows",
        default=_none,
        key_type=str,
        schema_tag="window-figures.v1",
        raw_keys=True,
        on_window_close=on_close,
        watermark_topics=sources,
        help="key and 60 s window -> figures of an open window; plus the watermark",
    )
    return table.tumbling(WINDOW_SECONDS, expires=WINDOW_SECONDS + grace_ms / 1000).relative_to(event_time)
