"""Any number of jobs may read the same topic.

wordcount and tokenize both default to reading ``lines``. A worker running both on one input
topic must feed every record to both jobs: the wordcount table equals the Counter of the lines,
and ``tokens`` holds exactly one record per line (found by its ``sluice.source.*`` headers)
whose words are that line's Counter. The truth is folded here from what was produced. Both
with the topic created by the worker at start (what a first start on defaults does) and with
the topic already there.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from service.devbroker import LocalCluster
from tests.harness import (
    Record,
    Stack,
    changelog_table,
    create_topic,
    diff,
    produce_records,
    read_records,
    wait_until,
)

pytestmark = [pytest.mark.integration]

VOCAB = [f"w{i}" for i in range(60)] + ["The", "the", "café", "naïve", "x_y", "42"]


def tokens(line: str) -> Counter[str]:
    return Counter(re.findall(r"\w+", line.lower()))


@pytest.mark.parametrize("topic_exists", [False, True], ids=["worker-creates-topic", "topic-exists"])
def test_wordcount_and_tokenize_share_one_input_topic(
    kafka: LocalCluster, tmp_path: Path, topic_exists: bool
) -> None:
    stack = Stack(kafka.bootstrap_servers, tmp_path, jobs=("wordcount", "tokenize"))
    shared = stack.inputs["wordcount"]
    stack.inputs["tokenize"] = shared  # both jobs on their "default" input: one topic
    if topic_exists:
        asyncio.run(create_topic(stack.bootstrap, shared, 4))
    rng = random.Random(4)
    lines = [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(0, 10))) for _ in range(1200)]
    try:
        worker = stack.worker("w").start()
        worker.wait_ready()
        positions = asyncio.run(
            produce_records(
                stack.bootstrap, shared, [(i % 4, None, ln.encode()) for i, ln in enumerate(lines)]
            )
        )
        expected = {pos: tokens(line) for pos, line in zip(positions, lines, strict=True)}
        truth: Counter[str] = Counter()
        for line in lines:
            truth.update(tokens(line))
        stack.caught_up(alive=[worker])

        found: dict[tuple[int, int], list[Record]] = {}

        def all_tokens_out() -> bool:
            found.clear()
            for r in asyncio.run(read_records(stack.bootstrap, stack.outputs["tokenize"])):
                source = (int(r.headers["sluice.source.partition"]), int(r.headers["sluice.source.offset"]))
                found.setdefault(source, []).append(r)
            return len(found) >= len(expected)

        try:
            wait_until(all_tokens_out, 60, "a tokens record for every line", [worker])
        except AssertionError as exc:
            print(f"{exc}: {len(found)} of {len(expected)} lines have a tokens record")
        assert worker.kill(signal.SIGTERM) == 0, worker.tail()

        problems = []
        words = changelog_table(stack.bootstrap, stack.app_id, "wordcount")
        if words != dict(truth):
            problems.append("wordcount table: " + diff(dict(truth), words))
        missing = sorted(set(expected) - set(found))
        if missing:
            problems.append(
                f"{len(missing)} of {len(expected)} lines have no tokens record, e.g. {missing[:5]}"
            )
        extra = sorted(set(found) - set(expected))
        if extra:
            problems.append(f"tokens records for positions nobody produced: {extra[:5]}")
        repeated = {pos: len(rs) for pos, rs in found.items() if len(rs) != 1}
        if repeated:
            problems.append(
                f"{len(repeated)} lines have more than one tokens record, e.g. {list(repeated.items())[:5]}"
            )
        wrong = [
            (pos, dict(expected[pos]), json.loads(rs[0].value or b"null"))
            for pos, rs in sorted(found.items())
            if pos in expected and json.loads(rs[0].value or b"null") != {"words": dict(expected[pos])}
        ]
        if wrong:
            problems.append(f"{len(wrong)} tokens records differ from their line's Counter, e.g. {wrong[:3]}")
        assert not problems, "\n".join(problems)
    finally:
        stack.stop_all()
