"""``sluice groups``: list consumer groups, describe offsets and lag (kafka-consumer-groups.sh)."""

from __future__ import annotations

import click

from service.kafka.cli_support import (
    EXIT_CODES_HELP,
    bootstrap_option,
    cli_settings,
    format_table,
    run_kafka,
)


@click.group()
def groups() -> None:
    """List consumer groups and show their offsets, lag and members."""


@groups.command(name="list", epilog=EXIT_CODES_HELP)
@bootstrap_option
def list_(bootstrap_server: str | None) -> None:
    """Print the id of every consumer group, one per line, sorted."""
    settings = cli_settings(bootstrap_server)

    async def main() -> list[str]:
        from service.kafka.connect import admin_client
        from service.kafka.group_admin import list_groups

        async with admin_client(settings) as admin:
            return await list_groups(admin)

    for name in run_kafka(settings, main()):
        click.echo(name)


@groups.command(epilog=EXIT_CODES_HELP)
@click.argument("group", required=False)
@bootstrap_option
def describe(group: str | None, bootstrap_server: str | None) -> None:
    """Show committed offset, log-end offset, lag and owner of each partition of GROUP.

    GROUP defaults to SLUICE_APP_ID (the worker's group). Columns are those of
    kafka-consumer-groups.sh --describe; "-" means none (never committed, or not assigned
    to any member). The group's state goes to stderr when it has no active members.
    Exit 1 if the group does not exist.
    """
    settings = cli_settings(bootstrap_server)
    name = group or settings.app_id

    async def main() -> str:
        from service.kafka.connect import admin_client, plain_consumer
        from service.kafka.group_admin import describe_group

        async with admin_client(settings) as admin, plain_consumer(settings) as consumer:
            found = await describe_group(admin, consumer, name)
        if not found.members:
            click.echo(
                f"Consumer group {name!r} has no active members (state {found.state}).",
                err=True,
            )
        return format_table(
            [
                "GROUP",
                "TOPIC",
                "PARTITION",
                "CURRENT-OFFSET",
                "LOG-END-OFFSET",
                "LAG",
                "CONSUMER-ID",
                "HOST",
                "CLIENT-ID",
            ],
            [
                [
                    found.group,
                    p.topic,
                    p.partition,
                    p.committed,
                    p.log_end,
                    p.lag,
                    p.owner.member_id if p.owner else None,
                    p.owner.host if p.owner else None,
                    p.owner.client_id if p.owner else None,
                ]
                for p in found.partitions
            ],
        )

    click.echo(run_kafka(settings, main()))
