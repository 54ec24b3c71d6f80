"""The app sluice ships: ``service.App`` with the built-in jobs named in ``SLUICE_JOBS``.

``service.main`` builds it from the environment at import (for ``faust -A service.main``);
everything else (``sluice worker``, the CLI, tests, benchmarks) calls :func:`create_app`, so
nothing is built at import time anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.errors import ConfigError
from service.settings import Settings

JOBS = ("wordcount", "tokenize", "rollup")


def job_registrars() -> dict[str, Callable[[Any, Settings], Any]]:
    from agents import rollup, tokenize, wordcount

    return {"wordcount": wordcount.register, "tokenize": tokenize.register, "rollup": rollup.register}


def check_jobs(settings: Settings) -> None:
    unknown = [name for name in settings.jobs if name not in JOBS]
    if unknown or not settings.jobs:
        raise ConfigError(
            f"invalid setting SLUICE_JOBS: unknown job(s) {', '.join(unknown) or '(none given)'}"
            f" (known: {', '.join(JOBS)})"
        )


def create_app(settings: Settings | None = None, **options: Any) -> Any:
    """A ``service.App`` running the jobs of ``settings.jobs`` (``SLUICE_*`` when ``None``)."""
    from service.app.base import App

    if settings is not None:
        options.setdefault("sluice_settings", settings)
    app = App(**options)
    check_jobs(app.sluice_settings)
    registrars = job_registrars()
    for name in app.sluice_settings.jobs:
        registrars[name](app, app.sluice_settings)
    return app
