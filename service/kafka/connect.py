"""Opening and closing aiokafka clients, and turning their exceptions into sluice errors.

Every CLI command goes through here so that all of them fail the same way: one line on
stderr, exit code 1, instead of a traceback from inside the client library.

A client that cannot bootstrap is the one case where the library's exception says too little:
aiokafka logs why each address failed and then raises a bare "Unable to bootstrap". A wrong
SASL password and a PLAINTEXT client talking to a TLS port are configuration mistakes, not
outages, so :func:`diagnose_connection` asks the broker once more, itself, and names the
setting to fix; those failures exit 2 (configuration) and a broker that is simply down keeps
exit 1. The worker maps its start-up failures through the same function.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from service.errors import ConfigError, OperationError, SluiceError
from service.kafka.client_config import client_kwargs
from service.settings import Settings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient

T = TypeVar("T")

CLI_CLIENT_ID = "sluice-cli"

PROBE_TIMEOUT_S = 10.0
"""How long :func:`diagnose_connection` waits for each address: TCP connect, then the handshake."""


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


async def connection_error(exc: BaseException, settings: Settings) -> SluiceError:
    """The one-line error for a client that failed to start: a diagnosed ConfigError, or as before.

    Only a failed bootstrap (:class:`KafkaConnectionError`) is diagnosed; anything else, and a
    bootstrap failure that is not a configuration matter (nothing listens, the broker hangs),
    becomes :func:`operation_error`'s exit-1 error.
    """
    from aiokafka.errors import KafkaConnectionError

    if isinstance(exc, KafkaConnectionError):
        diagnosed = await diagnose_connection(settings)
        if diagnosed is not None:
            return diagnosed
    return operation_error(exc, settings)


async def diagnose_connection(
    settings: Settings, *, timeout_s: float = PROBE_TIMEOUT_S
) -> ConfigError | None:
    """Why no client can talk to the brokers, when the cause is a setting; else None.

    Each bootstrap address gets, in parallel, one TCP connect and then one connection made the
    way every client makes it (TLS, ApiVersions, SASL, then a Metadata request, which a SASL
    listener refuses to an unauthenticated client). None when any address answers (the failure
    was passing) or none is a configuration matter: nothing listens, or it did not answer
    within ``timeout_s`` (a frozen broker must not read as a wrong protocol). Every message
    names the address and the setting to check, never the password.
    """
    kwargs = client_kwargs(settings, client_id=CLI_CLIENT_ID)
    addresses = [_host_port(entry) for entry in settings.brokers]
    outcomes = await asyncio.gather(
        *(_probe(host, port, kwargs, settings, timeout_s) for host, port in addresses)
    )
    if any(outcome is True for outcome in outcomes):
        return None
    return next((outcome for outcome in outcomes if isinstance(outcome, ConfigError)), None)


def _host_port(entry: str) -> tuple[str, int]:
    host, _, port = entry.rpartition(":")
    return host.strip("[]"), int(port)


async def _probe(
    host: str, port: int, kwargs: dict[str, Any], settings: Settings, timeout_s: float
) -> ConfigError | bool:
    """True: the address answered as configured. False: not a configuration matter."""
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
    except (OSError, TimeoutError):
        return False  # nothing listens there: the broker is down or the address is wrong
    try:
        async with asyncio.timeout(timeout_s):
            conn = await create_conn(
                host,
                port,
                client_id=kwargs["client_id"],
                request_timeout_ms=int(timeout_s * 1000),
                ssl_context=kwargs.get("ssl_context"),
                security_protocol=kwargs["security_protocol"],
                sasl_mechanism=kwargs.get("sasl_mechanism"),
                sasl_plain_username=kwargs.get("sasl_plain_username"),
                sasl_plain_password=kwargs.get("sasl_plain_password"),
            )
            try:
                await conn.send(MetadataRequest([]))
            finally:
                conn.close()
    except Exception as exc:
        return _classify(exc, f"{host}:{port}", settings)
    return True


def _classify(exc: BaseException, address: str, settings: Settings) -> ConfigError | bool:
    """A ConfigError naming the setting behind ``exc``, or False when ``exc`` is no such sign.

    A broker that *closes* the connection (or breaks the TLS handshake) right after accepting
    it is alive and refusing what it was sent: the client speaks another protocol than the
    listener. A timeout is not taken as that sign, see :func:`diagnose_connection`.
    """
    from aiokafka.errors import (
        IllegalSaslStateError,
        KafkaConnectionError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )

    protocol = settings.security_protocol.value
    mechanism = settings.sasl_mechanism.value
    if isinstance(exc, SaslAuthenticationFailed):
        return ConfigError(
            f"authentication failed at {address}: the broker refused user {settings.sasl_username!r} "
            f"with {mechanism}: check SLUICE_SASL_USERNAME and SLUICE_SASL_PASSWORD/SLUICE_SASL_PASSWORD_FILE"
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return ConfigError(
            f"the broker at {address} does not accept SASL mechanism {mechanism}: check SLUICE_SASL_MECHANISM"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or _one_line(exc)
        return ConfigError(
            f"the TLS certificate of the broker at {address} was not accepted ({reason}): "
            "check SLUICE_SSL_CAFILE and that the address matches the certificate"
        )
    if isinstance(exc, ConnectionRefusedError | TimeoutError):
        return False  # the broker went away after the TCP probe, or hangs: not a setting
    mismatch = ConfigError(
        f"the broker at {address} did not answer as {protocol}: check SLUICE_SECURITY_PROTOCOL"
    )
    if isinstance(exc, IllegalSaslStateError | ssl.SSLError | KafkaConnectionError | ConnectionError):
        return mismatch
    if isinstance(exc, asyncio.IncompleteReadError | EOFError):
        return mismatch
    return False


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
