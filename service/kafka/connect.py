"""Opening and closing aiokafka clients, and turning their exceptions into sluice errors.

Every CLI command goes through here so that all of them fail the same way: one line on
stderr, exit code 1, instead of a traceback from inside the client library.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from service.errors import OperationError
from service.kafka.client_config import client_kwargs
from service.settings import Settings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient

T = TypeVar("T")

CLI_CLIENT_ID = "sluice-cli"


def quiet_client_logs(settings: Settings) -> None:
    """Keep aiokafka's own log lines off stderr unless SLUICE_LOG_LEVEL=DEBUG.

    The client logs every connection retry as a warning; for a command-line tool that turns
    one clear error line into a screenful. At DEBUG the service's JSON logging is enabled.
    """
    if settings.log_level.upper() == "DEBUG":
        from service.logs import configure

        configure(settings.log_level)
    else:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def operation_error(exc: BaseException, settings: Settings) -> OperationError:
    """A one-line :class:`OperationError` for an exception raised by aiokafka."""
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

    if isinstance(exc, KafkaConnectionError):
        detail = _one_line(exc)
        if "Unable to bootstrap" in detail:  # aiokafka's wording when every address failed
            detail = "no broker answered (check --bootstrap-server/SLUICE_BROKERS and security settings)"
        return OperationError(f"cannot connect to Kafka at {settings.bootstrap_servers}: {detail}")
    if isinstance(exc, KafkaTimeoutError | asyncio.TimeoutError):
        return OperationError(f"Kafka did not answer in time ({settings.bootstrap_servers})")
    return OperationError(_one_line(exc))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client, closed on exit whatever happens."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_kwargs(settings, client_id=CLI_CLIENT_ID))
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


@asynccontextmanager
async def plain_consumer(settings: Settings, **extra: Any) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer without a group (manual assignment, never commits)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        **client_kwargs(settings, client_id=CLI_CLIENT_ID),
        group_id=None,
        enable_auto_commit=False,
        **extra,
    )
    try:
        await consumer.start()
        yield consumer
    finally:
        await consumer.stop()


async def retry_retriable(
    call: Callable[[], Awaitable[T]], *, timeout_s: float = 15.0, backoff_s: float = 0.25
) -> T:
    """``await call()``, repeated while it raises a *retriable* Kafka error, for ``timeout_s``.

    Needed for requests that legitimately fail for a moment on a healthy cluster: the group
    coordinator is "not available" until ``__consumer_offsets`` exists, and leadership moves
    after a broker dies.
    """
    from aiokafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(backoff_s)


async def retry_unsent(
    call: Callable[[], Awaitable[T]], *, timeout_s: float = 15.0, backoff_s: float = 0.25
) -> T:
    """``await call()``, repeated only while the target node was not ready to take it.

    aiokafka raises NodeNotReadyError before writing anything, so the request provably never
    left and repeating a non-idempotent one (CreateTopics) cannot apply it twice. A lost
    connection *after* sending is not retried: the broker may have acted on it.
    """
    from aiokafka.errors import NodeNotReadyError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except NodeNotReadyError:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(backoff_s)
