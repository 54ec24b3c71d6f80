"""Phase A in flight while the next batch is processed (:mod:`service.engine.durability`): one
at a time, acknowledged before any commit or phase B, and withdrawn when a stall drops the
work — checked on :class:`Durability` with senders whose flush the test controls."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from service.engine.durability import Durability


class HeldSender:
    """A flush that starts, then waits until the test lets it finish."""

    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name
        self.release = asyncio.Event()

    async def flush(self) -> dict[tuple[str, int], int]:
        self.log.append(f"{self.name} started")
        await self.release.wait()
        self.log.append(f"{self.name} acknowledged")
        return {}


def _durability() -> Durability:
    rt: Any = types.SimpleNamespace(consumer=object(), eos=False)
    return Durability(rt)


async def test_the_next_batch_phase_a_waits_for_the_previous_one() -> None:
    log: list[str] = []
    durability = _durability()
    first, second = HeldSender(log, "a"), HeldSender(log, "b")
    await durability.start_phase_a(first)
    await asyncio.sleep(0)
    starting = asyncio.ensure_future(durability.start_phase_a(second))
    await asyncio.sleep(0.01)
    assert log == ["a started"]  # b is not handed to the producer while a is in flight
    first.release.set()
    await starting
    second.release.set()
    await durability.settle_phase_a()
    assert log == ["a started", "a acknowledged", "b started", "b acknowledged"]


async def test_a_commit_waits_for_phase_a_and_raises_its_failure_before_phase_b() -> None:
    class FailingSender:
        async def flush(self) -> dict[tuple[str, int], int]:
            await asyncio.sleep(0.01)
            raise KafkaTimeoutError()

    durability = _durability()

    async def phase_b() -> None:
        raise AssertionError("phase B ran before phase A was acknowledged")

    durability.phase_b = phase_b  # type: ignore[method-assign]
    await durability.start_phase_a(FailingSender())  # type: ignore[arg-type]
    with pytest.raises(KafkaTimeoutError):
        await durability.commit()


async def test_a_stall_withdraws_the_phase_a_in_flight() -> None:
    log: list[str] = []
    durability = _durability()
    held = HeldSender(log, "a")
    await durability.start_phase_a(held)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    durability.drop_phase_a()
    held.release.set()
    await asyncio.sleep(0.01)
    assert log == ["a started"]  # cancelled: nothing more of it is handed to the producer
    await durability.settle_phase_a()  # and nothing is left to wait for


async def test_a_dropped_phase_a_that_had_failed_is_not_reported_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FailingSender:
        async def flush(self) -> dict[tuple[str, int], int]:
            raise KafkaTimeoutError()

    durability = _durability()
    await durability.start_phase_a(FailingSender())  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    durability.drop_phase_a()
    await durability.settle_phase_a()
    assert "never retrieved" not in caplog.text
