"""Turning the producer's input bytes into records: lines, and ``key SEP value`` splitting.

Input is handled as bytes end to end, never decoded, so a value that is not UTF-8 reaches
Kafka unchanged. Lines end at ``\\n`` only, like kcat's default: a ``\\r`` before it is part of
the value, because stripping it would alter binary payloads.
"""

from __future__ import annotations

from collections.abc import Iterator


class LineSplitter:
    """Cuts a stream of arbitrary chunks into complete lines, keeping the unfinished tail.

    The producer reads its input in chunks of whatever size the OS hands over (so an
    interactive terminal sends each line as soon as it is typed, and a large file is read in
    big blocks); a line may therefore straddle two chunks.
    """

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """Yield every line completed by ``chunk``, without its ``\\n``."""
        data = self._tail + chunk if self._tail else chunk
        *complete, self._tail = data.split(b"\n")
        yield from complete

    def finish(self) -> Iterator[bytes]:
        """At end of input: the last line if it had no final newline."""
        if self._tail:
            yield self._tail
            self._tail = b""


def split_key(line: bytes, separator: bytes) -> tuple[bytes, bytes]:
    """Split ``line`` at the first ``separator`` into ``(key, value)``.

    Only the first one counts, so values may contain the separator. A line without it is an
    error rather than a record with a null key: a silently unkeyed record would land on the
    wrong partition and break per-key ordering.
    """
    key, found, value = line.partition(separator)
    if not found:
        raise ValueError("no key separator")
    return key, value
