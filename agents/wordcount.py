"""wordcount: text lines in, a running count per word, count updates out.

The canonical Spark Streaming + Kafka job. Lines arrive unkeyed on any partition of
``lines``; the engine repartitions each line's words by word, so one partition owns each
word's count and the count is exact whatever partition a line arrived on.
"""

from __future__ import annotations

import operator
import re
from collections import Counter
from typing import Any

from service.job import BadRecord, Job, Outputs
from tables.positions import Origin
from tables.table import TablePartition
from tables.wordcount import WORDCOUNT

INPUT_TOPIC = "lines"
OUTPUT_TOPIC = "word-counts"
_WORD = re.compile(r"\w+")


def tokens(line: str) -> Counter[str]:
    """Words of a line with their number of occurrences, in order of first appearance."""
    return Counter(_WORD.findall(line.lower()))


def split(key: bytes | None, value: bytes) -> list[tuple[str, int]]:
    """One update per distinct word of the line: (word, occurrences)."""
    try:
        line = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecord("invalid_utf8", str(exc)) from None
    return list(tokens(line).items())


def add(count: int | None, occurrences: int) -> int:
    """The fold: a word's new count."""
    return (count or 0) + occurrences


def update_record(word: str, count: int) -> dict[str, Any]:
    """What ``word-counts`` receives."""
    return {"word": word, "count": count}


class WordCountProcessor:
    def __init__(self, tables: dict[str, TablePartition], clock: object = None) -> None:
        self.counts = tables[WORDCOUNT.name]

    def apply(self, key: str, payload: Any, origin: Origin, out: Outputs) -> None:
        count = self.counts.update(key, origin, add, payload)
        if count is not None:
            out.emit(key, key, update_record(key, count), origin)

    def end_batch(self, out: Outputs) -> None:
        return None


def build(input_topic: str = INPUT_TOPIC, output_topic: str = OUTPUT_TOPIC) -> Job:
    return Job(
        name="wordcount",
        input_topic=input_topic,
        output_topic=output_topic,
        tables=(WORDCOUNT,),
        split=split,
        processor=WordCountProcessor,
        combine=operator.add,
    )
