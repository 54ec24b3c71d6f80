"""``sluice dev traffic``: sample lines and JSON events for trying the jobs out."""

from __future__ import annotations

import click

from service.kafka.cli_support import run_kafka
from service.settings import load_settings


@click.command()
@click.option(
    "--rate",
    default=200,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Lines per second, and as many JSON events per second.",
)
@click.option(
    "--seconds", type=click.FloatRange(min=0.1), help="Stop after this long (default: run until killed)."
)
@click.option("--bootstrap-server", "bootstrap", help="Brokers (default: SLUICE_BROKERS).")
def traffic(rate: int, seconds: float | None, bootstrap: str | None) -> None:
    """Produce text lines to SLUICE_WORDCOUNT_INPUT_TOPIC and JSON events (about 1% malformed,
    for the dead-letter path) to SLUICE_ROLLUP_INPUT_TOPIC.

    Exit codes: 0 done, 1 Kafka error, 2 bad configuration.
    """
    settings = load_settings(**({"brokers": bootstrap} if bootstrap else {}))
    from service.traffic import TrafficGenerator

    produced = run_kafka(settings, TrafficGenerator(settings, rate).run(seconds))
    click.echo(f"produced {produced.lines} lines, {produced.events} events ({produced.bad_events} malformed)")
