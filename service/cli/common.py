"""What every sub-command shares: turning sluice errors into one line and an exit code."""

from __future__ import annotations

from typing import Any

import click

from service.errors import SluiceError


class SluiceGroup(click.Group):
    """A click group that reports :class:`SluiceError` as one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SluiceError as exc:
            click.echo(f"sluice: {exc}", err=True)
            ctx.exit(exc.exit_code)
