"""What the Kafka operations commands (topics, produce, consume, groups, offsets, tables, dev
traffic) share.

Here rather than in ``service/cli/common.py`` because it is specific to commands that talk
to Kafka: the ``--bootstrap-server`` option, running one coroutine with aiokafka's errors
turned into one-line :class:`OperationError` s, and Kafka-tool-style aligned tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import click

from service.errors import SluiceError
from service.settings import Settings, load_settings

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = "Exit codes: 0 ok, 1 the Kafka operation failed, 2 bad usage or configuration."


def bootstrap_option(func: F) -> F:
    """``--bootstrap-server HOST:PORT[,...]``, overriding SLUICE_BROKERS."""
    return click.option(
        "--bootstrap-server",
        "bootstrap_server",
        metavar="HOST:PORT[,...]",
        default=None,
        help="Brokers to contact first (default: SLUICE_BROKERS).",
    )(func)


def cli_settings(bootstrap_server: str | None) -> Settings:
    """Settings from the environment, with ``--bootstrap-server`` taking precedence."""
    if bootstrap_server is None:
        return load_settings()
    return load_settings(brokers=bootstrap_server)


def run_kafka(settings: Settings, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion; aiokafka failures become one-line errors: a client that could
    not bootstrap is diagnosed (:func:`service.kafka.connect.connection_error`: a wrong setting
    exits 2), any other Kafka failure is an ``OperationError`` (exit 1)."""
    from aiokafka.errors import KafkaConnectionError, KafkaError

    from service.kafka.connect import connection_error, operation_error, quiet_client_logs

    async def diagnosed() -> T:
        try:
            return await main
        except KafkaConnectionError as exc:
            raise await connection_error(exc, settings) from None

    quiet_client_logs(settings)
    try:
        return asyncio.run(diagnosed())
    except SluiceError:
        raise
    except (TimeoutError, KafkaError) as exc:
        raise operation_error(exc, settings) from None


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces, like the Kafka shell tools print.

    ``None`` cells print as ``-``, the Kafka tools' mark for "no value".
    """
    cells = [list(headers)] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)
