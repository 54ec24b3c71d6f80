"""The app factory: a worker built from settings, with nothing done at import time."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from agents import rollup, tokenize, wordcount
from service.engine import Engine
from service.errors import ConfigError
from service.job import Job
from service.metrics import Metrics
from service.settings import Settings


def job_catalog(settings: Settings, metrics: Metrics) -> dict[str, Callable[[], Job]]:
    """Every job this release ships, by name, built lazily from settings."""
    late = metrics.late_events.labels("rollup")
    return {
        "wordcount": lambda: wordcount.build(settings.wordcount_input_topic, settings.wordcount_output_topic),
        "tokenize": lambda: tokenize.build(settings.tokenize_input_topic, settings.tokenize_output_topic),
        "rollup": lambda: rollup.build(
            settings.window_grace_ms,
            on_late=late.inc,
            input_topic=settings.rollup_input_topic,
            output_topic=settings.rollup_output_topic,
        ),
    }


def build_jobs(settings: Settings, metrics: Metrics) -> list[Job]:
    catalog = job_catalog(settings, metrics)
    unknown = [name for name in settings.jobs if name not in catalog]
    if unknown or not settings.jobs:
        raise ConfigError(
            f"invalid setting SLUICE_JOBS: unknown job(s) {', '.join(unknown) or '(none given)'}"
            f" (known: {', '.join(catalog)})"
        )
    patterns = {"wordcount": settings.wordcount_input_pattern, "rollup": settings.rollup_input_pattern}
    return [dataclasses.replace(catalog[name](), input_pattern=patterns.get(name)) for name in settings.jobs]


@dataclass
class App:
    settings: Settings
    metrics: Metrics
    engine: Engine


def create_app(settings: Settings, metrics: Metrics | None = None) -> App:
    """Build the worker: metrics, jobs, engine. Starts nothing."""
    metrics = metrics if metrics is not None else Metrics()
    return App(settings, metrics, Engine(settings, build_jobs(settings, metrics), metrics))
