"""The wordcount table: word -> running count."""

from __future__ import annotations

from typing import Any

SCHEMA = "count.v1"


def define(app: Any) -> Any:
    """``app.Table("wordcount")``: counts by word, ``0`` for a word not seen yet."""
    return app.Table(
        "wordcount",
        default=int,
        key_type=str,
        value_type=int,
        schema_tag=SCHEMA,
        raw_keys=True,
        help="word -> running count",
    )
