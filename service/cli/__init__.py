"""The ``sluice`` command line: the worker, the local dev broker and Kafka operations.

Exit codes, for every sub-command: 0 success, 1 the operation failed (a Kafka error, a topic
that exists or does not), 2 bad usage or configuration (one line naming what is wrong).
"""

from __future__ import annotations

import sys

import click

from service import __version__
from service.cli.common import SluiceGroup


@click.group(cls=SluiceGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sluice")
def main() -> None:
    """sluice: Kafka stream processing with exact state.

    Settings come from SLUICE_* environment variables (see README, "Settings"); the Kafka
    commands also take --bootstrap-server.

    Exit codes: 0 ok, 1 operation failed, 2 bad usage or configuration.
    """


def _register() -> None:
    # Imported here, not at module top, so `sluice --help` stays fast and nothing heavy
    # (aiokafka, rocksdict) is imported before a sub-command actually needs it.
    from service.cli.consume import consume
    from service.cli.dev import dev
    from service.cli.groups import groups
    from service.cli.offsets import offsets
    from service.cli.produce import produce
    from service.cli.tables import tables
    from service.cli.topics import topics
    from service.cli.traffic import traffic
    from service.cli.worker import worker

    dev.add_command(traffic)
    for command in (worker, dev, topics, produce, consume, groups, offsets, tables):
        main.add_command(command)


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
