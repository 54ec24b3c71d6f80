"""``sluice topics``: create, list, describe and delete topics (the seed's kafka-topics.sh)."""

from __future__ import annotations

import sys

import click

from service.errors import ConfigError, OperationError
from service.kafka.cli_support import (
    EXIT_CODES_HELP,
    bootstrap_option,
    cli_settings,
    format_table,
    run_kafka,
)


def _parse_configs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    configs: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", ctx=ctx, param=param)
        configs[name.strip()] = value
    return configs


def _check_topic_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from service.kafka.topic_admin import LEGAL_TOPIC_NAME

    if not LEGAL_TOPIC_NAME.match(value) or value in {".", ".."}:
        raise click.BadParameter(
            f"{value!r}: a topic name is 1-249 of the characters A-Z a-z 0-9 . _ -",
            ctx=ctx,
            param=param,
        )
    return value


@click.group()
def topics() -> None:
    """Create, list, describe and delete Kafka topics."""


@topics.command(epilog=EXIT_CODES_HELP)
@click.argument("name", callback=_check_topic_name)
@click.option("--partitions", type=click.IntRange(1, 1_000_000), required=True)
@click.option("--replication-factor", type=click.IntRange(1, 32767), required=True)
@click.option(
    "--config",
    "configs",
    multiple=True,
    metavar="NAME=VALUE",
    callback=_parse_configs,
    help="A topic config such as retention.ms=86400000; repeat for several.",
)
@bootstrap_option
def create(
    name: str,
    partitions: int,
    replication_factor: int,
    configs: dict[str, str],
    bootstrap_server: str | None,
) -> None:
    """Create topic NAME.

    Fails (exit 1) if the topic exists, if the replication factor is larger than the number
    of live brokers, or if a config is unknown or invalid. Waits up to 10 s for every
    partition to have a leader, so that a command run next can use the topic at once.
    """
    settings = cli_settings(bootstrap_server)

    async def main() -> bool:
        from service.kafka.connect import admin_client
        from service.kafka.topic_admin import create_topic, wait_for_leaders

        async with admin_client(settings) as admin:
            await create_topic(
                admin,
                name,
                partitions=partitions,
                replication_factor=replication_factor,
                configs=configs,
            )
            return await wait_for_leaders(admin, name, timeout_s=10.0)

    ready = run_kafka(settings, main())
    click.echo(f"Created topic {name}.")
    if not ready:
        click.echo(f"sluice: warning: not every partition of {name} has a leader yet", err=True)


@topics.command(name="list", epilog=EXIT_CODES_HELP)
@click.option("--exclude-internal", is_flag=True, help="Leave out __consumer_offsets and such.")
@bootstrap_option
def list_(exclude_internal: bool, bootstrap_server: str | None) -> None:
    """Print the name of every topic, one per line, sorted."""
    settings = cli_settings(bootstrap_server)

    async def main() -> list[str]:
        from service.kafka.connect import admin_client
        from service.kafka.topic_admin import all_topics

        async with admin_client(settings) as admin:
            found = await all_topics(admin)
        return sorted(n for n, t in found.items() if not (exclude_internal and t.internal))

    for name in run_kafka(settings, main()):
        click.echo(name)


@topics.command(epilog=EXIT_CODES_HELP)
@click.argument("name")
@bootstrap_option
def describe(name: str, bootstrap_server: str | None) -> None:
    """Show topic NAME: partitions with leader, replicas and in-sync replicas, then configs.

    A partition without a leader shows LEADER "none". Replicas that are offline are listed
    under OFFLINE. Config SOURCE tells where a value comes from: "topic" (set on this
    topic), "broker"/"broker-static"/"cluster-default" (broker settings) or "default".
    Exit 1 if the topic does not exist.
    """
    settings = cli_settings(bootstrap_server)

    async def main() -> str:
        from service.kafka.connect import admin_client
        from service.kafka.topic_admin import describe_topic, topic_configs

        async with admin_client(settings) as admin:
            info = await describe_topic(admin, name)
            configs = await topic_configs(admin, name)

        def ids(nodes: tuple[int, ...]) -> str:
            return ",".join(str(n) for n in nodes) or "-"

        header = (
            f"Topic: {info.name}  PartitionCount: {len(info.partitions)}  "
            f"ReplicationFactor: {info.replication_factor}" + ("  Internal: true" if info.internal else "")
        )
        partitions = format_table(
            ["PARTITION", "LEADER", "REPLICAS", "ISR", "OFFLINE"],
            [
                [
                    p.partition,
                    "none" if p.leader is None else p.leader,
                    ids(p.replicas),
                    ids(p.isr),
                    ids(p.offline),
                ]
                for p in info.partitions
            ],
        )
        config_table = format_table(
            ["CONFIG", "VALUE", "SOURCE"],
            [[c.name, "(sensitive)" if c.sensitive else c.value, c.source] for c in configs],
        )
        return f"{header}\n\n{partitions}\n\n{config_table}"

    click.echo(run_kafka(settings, main()))


@topics.command(epilog=EXIT_CODES_HELP)
@click.argument("name")
@click.option("--yes", is_flag=True, help="Delete without asking.")
@bootstrap_option
def delete(name: str, yes: bool, bootstrap_server: str | None) -> None:
    """Delete topic NAME and all its records.

    Without --yes it asks for confirmation on a terminal, and refuses (exit 2) when standard
    input is not a terminal, so a script cannot delete a topic by accident. Answering "no"
    exits 1. Exit 1 also if the topic does not exist.
    """
    settings = cli_settings(bootstrap_server)

    async def exists() -> None:
        from service.kafka.connect import admin_client
        from service.kafka.topic_admin import describe_topic

        async with admin_client(settings) as admin:
            await describe_topic(admin, name)

    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"refusing to delete topic {name!r} without --yes: stdin is not a terminal")
        run_kafka(settings, exists())
        if not click.confirm(f"Delete topic {name!r} and all its records?", default=False):
            raise OperationError(f"not deleting topic {name!r}")

    async def main() -> None:
        from service.kafka.connect import admin_client
        from service.kafka.topic_admin import delete_topic

        async with admin_client(settings) as admin:
            await delete_topic(admin, name)

    run_kafka(settings, main())
    click.echo(f"Deleted topic {name}.")
