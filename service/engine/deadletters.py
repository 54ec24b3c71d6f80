"""Dead letters: the original record, why it was refused, and where it came from (G5).

A dead letter keeps the source record's key and bytes and adds headers naming the reason, a
detail, the job and the source topic/partition/offset. A dead letter must never be what stops
a worker: when the headers push a record that was just under the broker's size limit over it,
the detail is shortened, and if the value alone is too large for the dead-letter topic it is
cut, with ``sluice.truncated`` giving the original length.
"""

from __future__ import annotations

from service.effects import Headers, Sender
from service.metrics import Metrics

RECORD_LIMIT = 1_048_588 - 4096
"""Bytes a dead letter may take: the broker's default ``message.max.bytes`` less room for the
batch and record framing."""
DETAIL_LIMIT = 500


def source_headers(topic: str, partition: int | str, offset: int) -> Headers:
    """Where a record came from, so a downstream consumer can drop repeats (outputs are
    at-least-once)."""
    return [
        ("sluice.source.topic", topic.encode()),
        ("sluice.source.partition", str(partition).encode()),
        ("sluice.source.offset", str(offset).encode()),
    ]


class DeadLetters:
    def __init__(self, topic: str, partitions: int, metrics: Metrics) -> None:
        self.topic = topic
        self.partitions = partitions
        self.metrics = metrics

    def send(
        self,
        sender: Sender,
        job: str,
        reason: str,
        detail: str,
        source: tuple[str, int, int],
        key: bytes | None,
        value: bytes | None,
    ) -> None:
        _topic, partition, _offset = source
        base = [("sluice.reason", reason.encode()), ("sluice.job", job.encode()), *source_headers(*source)]
        note = detail[:DETAIL_LIMIT].encode()
        room = RECORD_LIMIT - len(key or b"") - sum(len(k) + len(v) + 8 for k, v in base)
        value = value if value is not None else None
        size = len(value or b"")
        headers = list(base)
        if size + len(note) + 24 <= room:
            headers.insert(1, ("sluice.detail", note))
        elif size > room - 64:
            keep = max(0, room - 64)
            headers.append(("sluice.truncated", str(size).encode()))
            value = (value or b"")[:keep]
        sender.add(self.topic, partition % self.partitions, key, value, headers)
        self.metrics.dead_letters.labels(job, reason).inc()
