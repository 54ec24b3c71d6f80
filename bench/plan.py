"""What a bench run times: how much data per mode, and one variant to time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """How much data and how many repetitions one mode uses."""

    name: str
    main_lines: int
    faust_lines: int
    ceiling_repeat: int
    distinct_keys: int  # 0: no 1M-key variant
    distinct_repeats: int
    latency_seconds: float
    runs: int


QUICK = Sizes(
    name="quick",
    main_lines=15_000,
    faust_lines=120,
    ceiling_repeat=10,
    distinct_keys=0,
    distinct_repeats=0,
    latency_seconds=6,
    runs=5,
)
FULL = Sizes(
    name="full",
    main_lines=200_000,
    faust_lines=1_000,
    ceiling_repeat=5,
    distinct_keys=1_000_000,
    distinct_repeats=2,
    latency_seconds=20,
    runs=5,
)


@dataclass(frozen=True)
class Variant:
    """One thing to time: ``run`` does one run and returns its numbers (``events``/``seconds``)."""

    key: str
    label: str
    run: Callable[[], dict[str, Any]]
    rate_field: str = "eps"
