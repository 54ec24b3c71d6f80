"""The rollup tables: running figures per key, and open 60-second windows per key."""

from tables.table import TableSpec

ROLLUP_TOTALS = TableSpec(
    name="rollup_totals",
    schema="figures.v1",
    description='key -> {"count", "sum", "min", "max"} over every valid event',
)
ROLLUP_WINDOWS = TableSpec(
    name="rollup_windows",
    schema="window-figures.v1",
    description='"<window_start>|<key>" -> figures of an open window; plus the stream time',
)
