"""Baselines B2 and B3: what a plain aiokafka loop does on the same topic.

* ``drain`` (B2): ``getmany`` until every partition is at its log end, touching nothing. The
  most any aiokafka-based worker can reach on this machine.
* ``table`` (B3): the same loop plus the wordcount fold into RocksDB (rocksdict), one
  ``WriteBatch`` per fetch: per fetch, the words are counted in a dict, each distinct word's
  stored count is read once, and the new counts are written in one batch. No guard, no
  changelog, no repartitioning, no commits: the hand-written best case for a single process.

Each runs in its own process (``python -m bench.raw MODE ...``) so its CPU time and memory are
its own and a fresh interpreter does not inherit the bench's heap. It prints one JSON line:
``{"events", "seconds", "cpu_seconds", ...}``; the clock starts right after the partitions
are assigned and positioned, before the first fetch, as sluice's clock starts at ``/readyz``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from rocksdict import Options, Rdict, WriteBatch

WORD = re.compile(r"\w+")


def _open_db(path: Path) -> Rdict:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.increase_parallelism(2)
    return Rdict(str(path), opts)


async def run(mode: str, bootstrap: str, topic: str) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    workdir = tempfile.TemporaryDirectory(prefix="sluice-bench-b3-")
    db = _open_db(Path(workdir.name)) if mode == "table" else None
    events = 0
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:  # metadata of the topic is fetched on demand
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise SystemExit(f"no topic {topic}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        todo = {tp for tp in tps if ends[tp] > 0}
        started, cpu0 = time.monotonic(), time.process_time()
        while todo:
            fetched = await consumer.getmany(*todo, timeout_ms=500)
            if db is not None:
                counts: dict[str, int] = {}
                for records in fetched.values():
                    for record in records:
                        for word in WORD.findall(record.value.decode("utf-8").lower()):
                            counts[word] = counts.get(word, 0) + 1
                batch = WriteBatch(raw_mode=True)
                for word, n in counts.items():
                    key = word.encode()
                    old = db.get(key)
                    batch.put(key, str(n + (int(old) if old is not None else 0)).encode())
                db.write(batch)
            for tp, records in fetched.items():
                events += len(records)
                if records and records[-1].offset + 1 >= ends[tp]:
                    todo.discard(tp)
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu0
        result: dict[str, Any] = {"events": events, "seconds": seconds, "cpu_seconds": cpu}
        if db is not None:  # a cheap self-check: keys and the total of all counts
            keys = total = 0
            for _, value in db.items():
                keys += 1
                total += int(value)
            result.update(keys=keys, tokens=total)
        return result
    finally:
        await consumer.stop()
        if db is not None:
            db.close()
        workdir.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw", description=__doc__)
    parser.add_argument("mode", choices=("drain", "table"))
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.mode, args.bootstrap, args.topic))), flush=True)


if __name__ == "__main__":
    main()
