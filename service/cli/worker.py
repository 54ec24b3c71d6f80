"""``sluice worker``: run the configured jobs until SIGTERM/SIGINT."""

from __future__ import annotations

import click

from service.settings import load_settings


@click.command()
def worker() -> None:
    """Run the stream-processing worker (jobs from SLUICE_JOBS).

    Joins the consumer group SLUICE_APP_ID, restores tables from SLUICE_DATA_DIR and their
    changelog topics, serves /metrics, /healthz and /readyz on SLUICE_WEB_PORT. SIGTERM drains
    in-flight events, commits and leaves the group within SLUICE_SHUTDOWN_TIMEOUT seconds.
    """
    settings = load_settings()
    from service.logs import configure
    from service.worker import run_worker

    configure(settings.log_level)
    raise SystemExit(run_worker(settings))
