"""Which jobs read a topic, and in which stage.

A job reads its input topic (or every topic matching its input pattern) in stage 1 and its own
repartition topic in stage 2. Any number of jobs may read the same input topic: each of them
sees every record, as two Faust agents on one topic do, and the group commits a record's
offset only after every job reading it has made its effects durable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.job import Job


@dataclass(frozen=True)
class Route:
    job: Job
    stage: int  # 1: input topic, 2: repartition topic


class Routing:
    """Topic -> the routes reading it; topics matching a pattern are added on first sight."""

    def __init__(self, jobs: Sequence[Job], app_id: str) -> None:
        self.jobs = list(jobs)
        self.app_id = app_id
        self._routes: dict[str, tuple[Route, ...]] = {}
        for job in self.jobs:
            if job.input_pattern is None:
                self._add(job.input_topic, Route(job, 1))
            if job.tables:
                self._add(job.repartition_topic(app_id), Route(job, 2))

    def _add(self, topic: str, route: Route) -> None:
        self._routes[topic] = (*self._routes.get(topic, ()), route)

    @property
    def topics(self) -> list[str]:
        """The topics named explicitly (not through a pattern), each once."""
        return list(self._routes)

    @property
    def patterns(self) -> list[str]:
        return [j.input_pattern for j in self.jobs if j.input_pattern is not None]

    def routes(self, topic: str) -> tuple[Route, ...]:
        found = self._routes.get(topic)
        if found is None:
            found = self._routes[topic] = tuple(Route(j, 1) for j in self.jobs if j.reads(topic))
        return found

    def stage(self, topic: str) -> int:
        routes = self.routes(topic)
        return routes[0].stage if routes else 0

    def stage2_job(self, topic: str) -> Job | None:
        routes = self.routes(topic)
        return routes[0].job if routes and routes[0].stage == 2 else None

    def input_topics(self, job: Job, known: Sequence[str]) -> list[str]:
        """The input topics of ``job`` among ``known`` topics (its one topic, or the matches)."""
        if job.input_pattern is None:
            return [job.input_topic]
        return sorted(t for t in known if job.reads(t))
