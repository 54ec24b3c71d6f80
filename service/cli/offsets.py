"""``sluice offsets audit|reset``: the group's offsets against the offsets the tables hold."""

from __future__ import annotations

import sys
from typing import Any

import click

from service.kafka.cli_support import run_kafka
from service.settings import Settings, load_settings

_TO_HELP = "table | earliest | latest | timestamp:<epoch-ms> | offset:<n>"


def _settings(bootstrap: str | None) -> Settings:
    return load_settings(**({"brokers": bootstrap} if bootstrap else {}))


def _app(settings: Settings) -> Any:
    """The app whose topics and tables are audited (the built-in jobs of SLUICE_JOBS)."""
    from service.app.builtin import create_app

    return create_app(settings)


def _fmt(value: int | None) -> str:
    return "-" if value is None else str(value)


@click.group()
def offsets() -> None:
    """Audit and reset the consumer group's offsets against the tables' offsets (G4).

    The worker resumes each partition from the tables' offset when the group's offset is
    missing or behind it, and never from auto.offset.reset while the tables hold a position.
    """


@offsets.command()
@click.option("--group", help="Consumer group (default: SLUICE_APP_ID).")
@click.option("--bootstrap-server", "bootstrap", help="Brokers (default: SLUICE_BROKERS).")
def audit(group: str | None, bootstrap: str | None) -> None:
    """Per source partition: group offset, table offset, log-end offset, lag and a verdict.

    \b
    Verdicts:
      ok                    group and tables agree
      group-missing         no committed offset (expired/deleted): resumes from the tables
      group-behind-table    resumes from the tables; nothing is applied twice
      group-ahead-of-table  POSSIBLE LOSS: events between the two have no durable effects
      no-table-offset       tables hold no position yet: the worker follows the group
      new                   nothing consumed yet

    Exit codes: 0 every partition is safe, 1 a partition is group-ahead-of-table (or the
    operation failed), 2 bad configuration.
    """
    from service.offsets import UNSAFE
    from service.offsets import audit as run_audit

    settings = _settings(bootstrap)
    rows = run_kafka(settings, run_audit(settings, _app(settings), group))
    header = ("TOPIC", "PARTITION", "JOB", "GROUP-OFFSET", "TABLE-OFFSET", "LOG-END", "LAG", "VERDICT")
    table = [header] + [
        (
            r.topic,
            str(r.partition),
            r.job,
            _fmt(r.group),
            _fmt(r.table),
            str(r.log_end),
            str(r.lag),
            r.verdict,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    unsafe = [r for r in rows if r.verdict in UNSAFE]
    if unsafe:
        click.echo(f"sluice: {len(unsafe)} partition(s) are group-ahead-of-table: possible loss", err=True)
        sys.exit(1)


@offsets.command()
@click.option("--to", "target", required=True, help=f"New position: {_TO_HELP}.")
@click.option("--topic", help="Only this source topic (default: every input and repartition topic).")
@click.option("--partition", type=int, help="Only this partition (needs --topic).")
@click.option("--group", help="Consumer group (default: SLUICE_APP_ID).")
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option("--yes", is_flag=True, help="Confirm a reset that re-reads or skips events.")
@click.option("--bootstrap-server", "bootstrap", help="Brokers (default: SLUICE_BROKERS).")
def reset(
    target: str,
    topic: str | None,
    partition: int | None,
    group: str | None,
    dry_run: bool,
    yes: bool,
    bootstrap: str | None,
) -> None:
    """Set the group's committed offsets. Only while no worker of the group is running.

    `--to table` is the repair for expired or wrong group offsets: it writes the tables'
    positions. Any reset that moves a partition backwards (events are read again; the guard
    skips their table updates but outputs are sent again) or forwards (events are skipped:
    their effects are lost) is listed and needs --yes.

    Exit codes: 0 done (or dry run), 1 refused (live members) or failed, 2 bad usage.
    """
    from aiokafka import TopicPartition

    from service.errors import ConfigError, OperationError
    from service.offsets import PartitionAudit, commit_offsets, group_members, offsets_for
    from service.offsets import audit as run_audit

    if not (target in ("table", "earliest", "latest") or target.startswith(("timestamp:", "offset:"))):
        raise ConfigError(f"--to must be {_TO_HELP}, not {target!r}")
    if target.startswith(("timestamp:", "offset:")) and not target.split(":", 1)[1].isdigit():
        raise ConfigError(f"--to {target!r}: the value after ':' must be a whole number")
    if partition is not None and topic is None:
        raise ConfigError("--partition needs --topic")
    settings = _settings(bootstrap)
    group = group or settings.app_id

    async def plan() -> tuple[list[PartitionAudit], dict[TopicPartition, int], int]:
        rows = await run_audit(settings, _app(settings), group)
        chosen = [
            r
            for r in rows
            if (topic is None or r.topic == topic) and (partition is None or r.partition == partition)
        ]
        if not chosen:
            raise OperationError("no matching source partition")
        held = {TopicPartition(r.topic, r.partition): r.table for r in chosen if r.table is not None}
        tps = [TopicPartition(r.topic, r.partition) for r in chosen]
        new = await offsets_for(settings, target, tps, held)
        return chosen, new, await group_members(settings, group)

    chosen, new, members = run_kafka(settings, plan())
    if members:
        raise OperationError(f"group {group} has {members} live member(s): stop its workers first")
    risky = False
    for r in chosen:
        tp = TopicPartition(r.topic, r.partition)
        to = new.get(tp)
        if to is None:
            click.echo(f"{r.topic}:{r.partition}  {_fmt(r.group)} -> unchanged (the tables hold no position)")
            continue
        now = r.group if r.group is not None else r.table
        effect = "no change"
        if now is not None and to < now:
            effect, risky = f"re-reads {now - to} events (table updates skipped by the guard)", True
        elif now is not None and to > now:
            effect, risky = f"SKIPS {to - now} events (their effects are lost)", True
        click.echo(f"{r.topic}:{r.partition}  {_fmt(r.group)} -> {to}  {effect}")
    if dry_run:
        click.echo("dry run: nothing changed")
        return
    if risky and not yes:
        raise ConfigError("this reset re-reads or skips events: add --yes to confirm")
    run_kafka(settings, commit_offsets(settings, group, {tp: off for tp, off in new.items()}))
    click.echo(f"committed {len(new)} offset(s) for group {group}")
