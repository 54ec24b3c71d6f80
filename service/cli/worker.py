"""``sluice worker``: run the app (the jobs of SLUICE_JOBS) until SIGTERM/SIGINT."""

from __future__ import annotations

import click

from service.settings import load_settings


@click.command()
def worker() -> None:
    """Run the stream-processing worker: service.App with the jobs of SLUICE_JOBS.

    The same app as `faust -A service.main worker`. Joins the consumer group SLUICE_APP_ID,
    restores tables from SLUICE_DATA_DIR and their changelog topics, serves /metrics, /healthz
    and /readyz (and Faust's pages) on SLUICE_WEB_PORT. SIGTERM drains in-flight events,
    commits and leaves the group within SLUICE_SHUTDOWN_TIMEOUT seconds.

    Exit codes: 0 stopped cleanly, 1 runtime failure (nothing uncommitted is lost: a restart
    replays it), 2 bad configuration or untrusted state (one line says which).
    """
    settings = load_settings()
    from service.app.builtin import check_jobs, create_app
    from service.logs import configure
    from service.worker import run_worker

    check_jobs(settings)  # an unknown job is a config error: exit 2 now
    configure(settings.log_level)
    raise SystemExit(run_worker(create_app(settings)))
