"""``sluice produce``: lines from stdin or a file become records (the seed's console producer)."""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, cast

import click

from service.kafka.cli_support import EXIT_CODES_HELP, bootstrap_option, cli_settings, run_kafka

if TYPE_CHECKING:
    from service.kafka.chunk_reader import ChunkSource
    from service.kafka.console_producer import ProduceStats


class _Progress:
    """One self-overwriting status line on a terminal's stderr: records, rate, share of file."""

    def __init__(self, stream: IO[str], total_bytes: int | None, *, live: bool) -> None:
        # Not live when the input is typed on the same terminal: a status line there would
        # be overwritten by the echo of what the user types. The final line is still shown.
        self._stream = stream
        self._total = total_bytes
        self._live = live

    def __call__(self, stats: ProduceStats) -> None:
        if not self._live:
            return
        share = ""
        if self._total:
            share = f"  {min(stats.bytes_read * 100 // self._total, 100):3d}%"
        self._stream.write(
            f"\r{stats.acknowledged} records acknowledged, {stats.sent} sent"
            f"  {_rate(stats)} records/s{share}\x1b[K"
        )
        self._stream.flush()

    def done(self, stats: ProduceStats, topic: str) -> None:
        self._stream.write(
            f"\rProduced {stats.acknowledged} records to {topic} in {stats.elapsed:.2f} s "
            f"({_rate(stats)} records/s)\x1b[K\n"
        )
        self._stream.flush()


def _rate(stats: ProduceStats) -> str:
    rate = stats.acknowledged / stats.elapsed
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.2f}"


@click.command(epilog=EXIT_CODES_HELP + " Interrupted (Ctrl-C): 130, after sending what was read.")
@click.argument("topic")
@click.option(
    "--partitioner",
    type=click.Choice(["round-robin", "hash"]),
    default=None,
    help="round-robin: every record by strict rotation over all partitions, from 0. hash: "
    "keyed records on toPositive(murmur2(key)) % partitions, exactly like the Java client; "
    "unkeyed records by rotation (not the Java client's sticky batching). Default: hash, "
    "which places keyed records by hash and unkeyed ones by rotation.",
)
@click.option(
    "--key-separator",
    metavar="SEP",
    default=None,
    help="Each line is KEY SEP VALUE, split at the first SEP; a line without SEP is an "
    "error. Without this option records have no key.",
)
@click.option(
    "--partition",
    type=click.IntRange(min=0),
    default=None,
    help="Send every record to this partition (not with --partitioner).",
)
@click.option(
    "--acks",
    type=click.Choice(["all", "1", "0"]),
    default="all",
    show_default=True,
    help="Acknowledgement required from the brokers for each record.",
)
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    default="-",
    help="Read lines from this file instead of stdin.",
)
@bootstrap_option
def produce(
    topic: str,
    partitioner: str | None,
    key_separator: str | None,
    partition: int | None,
    acks: str,
    path: str,
    bootstrap_server: str | None,
) -> None:
    """Send each line of stdin (or --file) to TOPIC as one record.

    Lines end at "\\n" only and are sent as raw bytes (no decoding; a "\\r" before the
    newline stays in the value); an empty line is a record with an empty value. Exits 0
    once every record is acknowledged. On a terminal, stderr shows progress and the final
    rate; when stderr is piped, nothing is printed unless something fails.
    """
    from service.kafka.console_producer import ProduceOptions, produce_lines
    from service.kafka.placement import Partitioner

    if partition is not None and partitioner is not None:
        raise click.UsageError("--partition and --partitioner exclude each other")
    if key_separator is not None and not key_separator:
        raise click.BadParameter("must not be empty", param_hint="--key-separator")
    settings = cli_settings(bootstrap_server)
    options = ProduceOptions(
        topic=topic,
        partitioner=Partitioner(partitioner or Partitioner.HASH),
        partition=partition,
        key_separator=key_separator.encode("utf-8") if key_separator is not None else None,
        acks=acks,
    )
    with click.open_file(path, "rb") as source:
        total = _size_of(source)
        progress = _Progress(sys.stderr, total, live=not source.isatty()) if sys.stderr.isatty() else None
        try:
            # Both stdin's buffer and a file opened "rb" are BufferedReaders, which have read1.
            chunks = cast("ChunkSource", source)
            stats = run_kafka(settings, produce_lines(settings, chunks, options, progress))
        except KeyboardInterrupt:
            if progress is not None:
                sys.stderr.write("\n")
            sys.exit(130)
    if progress is not None:
        progress.done(stats, topic)


def _size_of(source: IO[bytes]) -> int | None:
    """Size of a regular file (for the progress percentage); None for pipes and terminals."""
    import os
    import stat

    try:
        info = os.fstat(source.fileno())
    except (OSError, ValueError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None
