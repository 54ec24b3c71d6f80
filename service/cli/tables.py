"""``sluice tables dump NAME``: a table rebuilt from its changelog, as JSON lines."""

from __future__ import annotations

import sys

import click
import orjson

from service.kafka.cli_support import run_kafka
from service.settings import load_settings


@click.group()
def tables() -> None:
    """Inspect tables (state is read from changelog topics, not from a worker)."""


@tables.command()
@click.argument("name")
@click.option("--bootstrap-server", "bootstrap", help="Brokers (default: SLUICE_BROKERS).")
@click.option("--include-meta", is_flag=True, help="Also print bookkeeping rows (stream time, offsets).")
def dump(name: str, bootstrap: str | None, include_meta: bool) -> None:
    """Print table NAME of app SLUICE_APP_ID as JSON lines rebuilt from its changelog topic.

    One line per key: {"key", "value", "partition", "offset"} where partition/offset locate the
    row's changelog record. This is exactly what a fresh worker with an empty data directory
    would recover. Tables: wordcount, rollup_totals, rollup_windows.

    Exit codes: 0 ok, 1 no such changelog topic or Kafka error, 2 bad configuration.
    """
    overrides = {"brokers": bootstrap} if bootstrap else {}
    settings = load_settings(**overrides)
    from service.changelog import read_table

    entries = run_kafka(settings, read_table(settings, name, include_meta=include_meta))
    out = sys.stdout.buffer
    for e in entries:
        line = {"key": e.key, "value": e.value, "partition": e.partition, "offset": e.offset}
        out.write(orjson.dumps(line) + b"\n")
    out.flush()
