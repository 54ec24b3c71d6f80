"""Per-partition rate limit (``SLUICE_MAX_RATE_PER_PARTITION``), like Spark's
``spark.streaming.kafka.maxRatePerPartition``.

A token bucket per input partition holding at most one second of events. The engine takes as
many fetched records as there are tokens, seeks the partition back to the first record it did
not take, and pauses the partition until a token is due: the loop never sleeps, so other
partitions keep flowing.
"""

from __future__ import annotations

import time
from collections.abc import Hashable


class RateLimiter:
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens: dict[Hashable, float] = {}
        self._stamp: dict[Hashable, float] = {}

    def admit(self, key: Hashable, wanted: int, now: float | None = None) -> int:
        """How many of ``wanted`` events may be processed now; spends their tokens."""
        now = time.monotonic() if now is None else now
        tokens = self._tokens.get(key, self.rate)
        tokens = min(self.rate, tokens + (now - self._stamp.get(key, now)) * self.rate)
        taken = min(wanted, int(tokens))
        self._tokens[key] = tokens - taken
        self._stamp[key] = now
        return taken

    def wait(self, key: Hashable) -> float:
        """Seconds until the next token for ``key`` is due."""
        return max(0.0, (1.0 - self._tokens.get(key, self.rate)) / self.rate)
