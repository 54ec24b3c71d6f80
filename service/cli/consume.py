"""``sluice consume``: print a topic's records (the seed's console consumer)."""

from __future__ import annotations

import os
import sys
from collections.abc import Coroutine
from typing import IO, TYPE_CHECKING, Any

import click

from service.kafka.cli_support import EXIT_CODES_HELP, bootstrap_option, cli_settings, run_kafka

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord

_FORMAT_HELP = (
    "value: the raw value bytes and a newline (a null value prints as 'null'). json: one "
    'object per record, {"key", "value", "partition", "offset", "timestamp", "headers"}, '
    "timestamp in epoch ms, headers a list of [name, value]. Key, value and header values "
    "are null when absent, a string when the bytes are valid UTF-8, else "
    '{"base64": "<standard base64>"}: lossless and round-trippable.'
)


class _Printer:
    """Writes a batch to stdout and flushes it, so offsets are committed only for output
    that has really left the process."""

    def __init__(self, out: IO[bytes], as_json: bool) -> None:
        self._out = out
        self._as_json = as_json

    def __call__(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        from service.kafka.console_consumer import StopConsuming
        from service.kafka.record_json import record_to_json

        chunks: list[bytes] = []
        for r in records:
            if self._as_json:
                chunks.append(
                    record_to_json(
                        key=r.key,
                        value=r.value,
                        partition=r.partition,
                        offset=r.offset,
                        timestamp=r.timestamp,
                        headers=r.headers,
                    )
                )
            else:
                chunks.append(b"null" if r.value is None else r.value)
            chunks.append(b"\n")
        try:
            self._out.write(b"".join(chunks))
            self._out.flush()
        except BrokenPipeError:
            # The reader went away (`| head`): end quietly, and keep Python from
            # complaining again when it flushes stdout at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise StopConsuming from None


@click.command(epilog=EXIT_CODES_HELP + " Ending by --timeout-ms, --max-messages or Ctrl-C is success (0).")
@click.argument("topic")
@click.option(
    "--group",
    default=None,
    help="Consume as this consumer group: partitions are shared with the group's other "
    "members and offsets are committed after the records are printed. Without it, all "
    "partitions are read and nothing is committed.",
)
@click.option(
    "--from-beginning",
    is_flag=True,
    help="Start at the earliest offset (with --group: only where the group has no "
    "committed offset). Default: only records that arrive from now on.",
)
@click.option("--max-messages", type=click.IntRange(min=1), default=None, help="Exit after N records.")
@click.option(
    "--timeout-ms",
    type=click.IntRange(min=1),
    default=None,
    help="Exit (0) when no record arrived for this long. Default: run until Ctrl-C.",
)
@click.option(
    "--partition",
    type=click.IntRange(min=0),
    default=None,
    help="Read only this partition (not with --group).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["value", "json"]),
    default="value",
    show_default=True,
    help=_FORMAT_HELP,
)
@bootstrap_option
def consume(
    topic: str,
    group: str | None,
    from_beginning: bool,
    max_messages: int | None,
    timeout_ms: int | None,
    partition: int | None,
    fmt: str,
    bootstrap_server: str | None,
) -> None:
    """Print the records of TOPIC to stdout, one per line."""
    from service.kafka.console_consumer import ConsumeOptions, consume_records

    if group is not None and partition is not None:
        raise click.UsageError("--partition and --group exclude each other")
    settings = cli_settings(bootstrap_server)
    options = ConsumeOptions(
        topic=topic,
        group=group,
        from_beginning=from_beginning,
        max_messages=max_messages,
        timeout_ms=timeout_ms,
        partition=partition,
    )
    printer = _Printer(sys.stdout.buffer, as_json=fmt == "json")
    import asyncio
    import contextlib

    # Interrupted before the consume loop started: nothing was read, nothing to commit.
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        run_kafka(settings, _with_sigterm(consume_records(settings, options, printer)))


async def _with_sigterm(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` so that SIGTERM stops it like Ctrl-C does: cleanly, leaving the group."""
    import asyncio
    import signal

    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
