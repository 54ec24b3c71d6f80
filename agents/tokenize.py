"""tokenize: the stateless job. Text lines in; each line's words out, one record per line.

No table and no repartition: stage 1 parses and forwards. It is the baseline that shows what
the engine costs without state (the benchmark's ``sluice_stateless_eps``), and the template
for a job that only filters, enriches or reshapes records.
"""

from __future__ import annotations

from typing import Any

from agents.wordcount import split as split_words
from service.job import Job

INPUT_TOPIC = "lines"
OUTPUT_TOPIC = "tokens"


def split(key: bytes | None, value: bytes) -> list[tuple[str, Any]]:
    """One output per line: ``{"words": {word: occurrences}}``, keyed like the input."""
    return [(key.decode("utf-8", "replace") if key else "", {"words": dict(split_words(key, value))})]


def build(input_topic: str = INPUT_TOPIC, output_topic: str = OUTPUT_TOPIC) -> Job:
    return Job(
        name="tokenize",
        input_topic=input_topic,
        output_topic=output_topic,
        tables=(),
        split=split,
    )
